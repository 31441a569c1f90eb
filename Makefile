# buildfleet developer targets. `make run` starts a scheduler and a local worker; `make test`
# installs what the tests need and runs every test.
GO      ?= go
BIN     ?= bin
TOOLS   := $(CURDIR)/.tools
SHELL   := /bin/bash

.PHONY: all build run test test-deps release-deps release snapshot unit fmt lint generate bench clean

all: build

# Static binaries (CGO_ENABLED=0, as the releases), stamped with the commit (-buildvcs=auto
# overrides a GOFLAGS=-buildvcs=false in the environment or `go env`).
build:
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -o $(BIN)/ ./cmd/scheduler ./cmd/worker ./cmd/bootstrap

run: build
	./scripts/run-local.sh

test-deps:
	./scripts/install-test-deps.sh

# The whole suite: unit tests with the race detector, then the end-to-end tests.
test: test-deps
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)
	PATH="$(TOOLS)/bin:$$PATH" $(GO) test -count=1 -race -timeout 15m $$($(GO) list ./... | grep -v /e2e)
	PATH="$(TOOLS)/bin:$$PATH" $(GO) test -count=1 -timeout 20m ./e2e/

unit:
	$(GO) test -count=1 -short ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

lint:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)

generate: test-deps
	PATH="$(TOOLS)/bin:$$PATH" bash proto/generate.sh

# Every benchmark runs a baseline sub-benchmark first and reports buildfleet's figures next to it
# as x-baseline ratios (cost over the baseline's: 2.0 is twice as slow or as large), so each
# package's baseline and figures come from the same go test process; the e2e benchmark reports
# a remote Bazel build against a local one run in the same rounds (x-local). About 5 minutes on
# 2 cores.
BENCH := $(GO) test -run '^$$' -timeout 15m
bench:
	@echo; echo "=== storage: ByteStream write/read vs a bare gRPC server (file+sha256, file); FindMissingBlobs 10k/50k vs map on pre-parsed keys+proto; scheduler RSS around 1 GiB of traffic; GetActionResult vs empty unary RPC; ObjectStore*: the S3 tier (versitygw) vs the disk store ==="
	$(BENCH) -bench . -benchtime=1s ./storage/
	@echo; echo "=== runner: 10k-file input root, cold vs a loop writing the files, warm vs a loop hardlinking them ==="
	$(BENCH) -bench . -benchtime=3x ./runner/
	@echo; echo "=== scheduler: no-op actions vs 2 empty unary RPCs per action over bufconn ==="
	$(BENCH) -bench . -benchtime=2s ./scheduler/
	@echo; echo "=== worker: no-op and /bin/true actions vs 2 empty unary RPCs (+ exec /bin/true) per action over loopback ==="
	$(BENCH) -bench 'NoopActions|TrueActions' -benchtime=2s ./worker/
	@echo; echo "=== worker: RSS idle and busy vs a minimal Go process holding one idle gRPC connection ==="
	$(BENCH) -bench 'WorkerRSS' -benchtime=1x ./worker/
	@echo; echo "=== cluster: no-op Execute through a follower vs straight to the leader (real etcd) ==="
	$(BENCH) -bench . -benchtime=2000x ./cluster/
	@echo; echo "=== e2e: Bazel 4.2.3, 300-genrule layered DAG, remote (one worker, 8 slots, this machine) vs local wall time, 3 rounds (x-local) ==="
	PATH="$(TOOLS)/bin:$$PATH" $(BENCH) -bench BazelLayeredDAG -benchtime=3x ./e2e/

# Releases (goreleaser, see .goreleaser.yaml and the README's "Releases"): `make release` on a
# commit tagged vX.Y.Z writes the release directory to dist/ (archives, raw binaries, .deb, .rpm,
# SHA256SUMS) without publishing it; `make snapshot` does the same for any commit, versioned
# X.Y.Z-SNAPSHOT-COMMIT. goreleaser reads the commit's date only from a checkout with a git
# remote, so a checkout without one gets itself as origin, through the environment.
# --parallelism 1: goreleaser puts binaries into an archive in the order their builds finish, so
# parallel builds give tarballs whose bytes depend on timing; one build at a time keeps the order
# of .goreleaser.yaml (go build itself still uses every core).
GORELEASER := PATH="$(TOOLS)/bin:$$PATH" $(if $(shell git remote 2>/dev/null),,GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=remote.origin.url GIT_CONFIG_VALUE_0=$(CURDIR)) goreleaser
release-deps:
	./scripts/install-release-deps.sh

release: release-deps
	$(GORELEASER) release --clean --parallelism 1 --skip=publish

snapshot: release-deps
	$(GORELEASER) release --clean --parallelism 1 --snapshot

clean:
	rm -rf $(BIN) dist

# buildfleet developer targets. `make run` starts a scheduler and a local worker; `make test`
# installs what the tests need and runs every test.
GO      ?= go
BIN     ?= bin
TOOLS   := $(CURDIR)/.tools
SHELL   := /bin/bash

.PHONY: all build run test test-deps unit e2e race fmt lint generate bench clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/scheduler ./cmd/worker ./cmd/bootstrap

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

bench:
	$(GO) test -run '^$$' -bench . -benchtime=3x -timeout 30m ./storage/ ./runner/ ./worker/ ./scheduler/

clean:
	rm -rf $(BIN)

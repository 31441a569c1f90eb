# The worker image: a static Go worker on Debian with the tools actions need.
#   docker build -f deploy/docker/worker.Dockerfile -t ghcr.io/buildfleet/worker:0.1.0 .
#   docker build -f deploy/docker/worker.Dockerfile --build-arg CI_PACKAGES="python3 python3-venv git openjdk-17-jdk-headless" .
# CI_PACKAGES are the OS packages the builds' actions expect (the bootstrapper's default list);
# the worker binary itself needs none of them.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/worker ./cmd/worker

FROM debian:12.11-slim
ARG CI_PACKAGES="python3 python3-venv bash coreutils findutils grep sed gawk diffutils tar gzip unzip zip ca-certificates"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${CI_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*
# Actions run as this unprivileged user (uid 10001, as in deploy/kubernetes' securityContext).
RUN groupadd --system --gid 10001 buildfleet \
 && useradd --system --uid 10001 --gid buildfleet --home-dir /home/buildfleet --create-home \
      --shell /usr/sbin/nologin buildfleet \
 && install -d -o buildfleet -g buildfleet /var/cache/buildfleet-worker /toolchain/caches
COPY --from=build /out/worker /usr/local/bin/worker
USER 10001:10001
ENV HOME=/home/buildfleet
VOLUME ["/var/cache/buildfleet-worker", "/toolchain/caches"]
# SIGTERM (docker stop, pod deletion) starts the drain; give it --drain-timeout plus a margin.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/worker"]

# The scheduler image: a static Go scheduler on Debian slim (CA certificates for the bucket's
# HTTPS endpoints), run as the unprivileged user 10001 of deploy/kubernetes' securityContext.
#   docker build -f deploy/docker/scheduler.Dockerfile -t ghcr.io/buildfleet/scheduler:0.1.0 --build-arg VERSION=0.1.0 .

FROM golang:1.26.8-bookworm AS build
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags="-s -w -buildid= -X github.com/buildfleet/buildfleet/internal/version.version=${VERSION}" \
      -o /out/scheduler ./cmd/scheduler

FROM debian:12.11-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 buildfleet \
 && useradd --system --uid 10001 --gid buildfleet --home-dir /var/lib/buildfleet-scheduler \
      --shell /usr/sbin/nologin buildfleet \
 && install -d -o buildfleet -g buildfleet /var/lib/buildfleet-scheduler
COPY --from=build /out/scheduler /usr/local/bin/scheduler
USER 10001:10001
VOLUME ["/var/lib/buildfleet-scheduler"]
EXPOSE 8980 9090
# SIGTERM (docker stop, pod deletion) drains the RPCs in flight within --shutdown-grace; a
# leader resigns so that another replica takes over at once.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/scheduler"]

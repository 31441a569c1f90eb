#!/bin/sh
# buildfleet package: before removal (deb: "remove"; rpm: 0) stop and disable the services and
# the scheduler's socket (which would otherwise keep listening for a service that is gone); an
# upgrade leaves them running (a running worker is restarted by the operator, draining first).
set -e
case "$1" in
  remove|0)
    if [ -d /run/systemd/system ]; then
      systemctl disable --now buildfleet-worker.service buildfleet-scheduler.socket buildfleet-scheduler.service >/dev/null 2>&1 || true
    fi
    ;;
esac

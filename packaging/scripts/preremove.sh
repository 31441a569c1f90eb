#!/bin/sh
# buildfleet package: before removal (deb: "remove"; rpm: 0) stop the services; an upgrade
# leaves them running (a running worker is restarted by the operator, draining first).
set -e
case "$1" in
  remove|0)
    if [ -d /run/systemd/system ]; then
      systemctl disable --now buildfleet-worker.service buildfleet-scheduler.service >/dev/null 2>&1 || true
    fi
    ;;
esac

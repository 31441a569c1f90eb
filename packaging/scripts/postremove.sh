#!/bin/sh
# buildfleet package: after removal. A purge (deb) also deletes the worker's cache, which is
# only a cache, and the worker account's home (what actions left in ~); the accounts, the
# scheduler's storage and /toolchain/caches are kept.
set -e
if [ "$1" = purge ]; then
  rm -rf /var/cache/buildfleet-worker /var/lib/buildfleet-worker
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi

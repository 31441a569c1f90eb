#!/bin/sh
# buildfleet package: after removal. A purge (deb) also deletes the worker's cache, which is
# only a cache, and the worker account's home (what actions left in ~); the accounts, the
# scheduler's storage and /toolchain/caches are kept.
set -e
if [ "$1" = purge ]; then
  rm -rf /var/cache/buildfleet-worker /var/lib/buildfleet-worker
fi
# The .deb lists /usr/local and /usr/local/bin (nfpm writes every parent directory into it), so
# dpkg deletes them when they are left empty; they are the system's (base-files creates them),
# and a minimal image may have had nothing else there: put them back.
[ -d /usr/local/bin ] || install -d -m 0755 /usr/local/bin
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi

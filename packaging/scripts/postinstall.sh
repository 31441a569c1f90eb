#!/bin/sh
# buildfleet package: after install or upgrade (deb: "configure"; rpm: 1 or 2). Creates the
# accounts and directories the units expect; enables and starts nothing.
set -e
nologin=$(command -v nologin 2>/dev/null || echo /usr/sbin/nologin)
# The worker's account, as the bootstrapper creates it: actions run as it.
if ! getent passwd buildfleet >/dev/null; then
  useradd --system --user-group --create-home --home-dir /var/lib/buildfleet-worker --shell "$nologin" buildfleet
fi
if ! getent passwd buildfleet-scheduler >/dev/null; then
  useradd --system --user-group --no-create-home --home-dir /var/lib/buildfleet-scheduler --shell "$nologin" buildfleet-scheduler
fi
install -d -o buildfleet -g buildfleet -m 0755 /var/cache/buildfleet-worker /toolchain/caches
chgrp buildfleet /etc/buildfleet/worker.env && chmod 0640 /etc/buildfleet/worker.env
chgrp buildfleet-scheduler /etc/buildfleet/scheduler.env && chmod 0640 /etc/buildfleet/scheduler.env
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi

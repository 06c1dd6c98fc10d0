#!/usr/bin/env bash
# Debian packages the tests need: kcat (a non-Python Kafka client proves the wire format),
# prometheus (promtool checks and unit-tests dashboards/alerts.yml; the prometheus binary
# runs the local stack's Prometheus), and chromium with chromium-driver (the ops console's
# tests drive a real headless browser; never a downloaded one).
# Installs only what is missing, and only when it can (root with apt-get).
set -euo pipefail

missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  missing+=(prometheus)  # Debian's package ships both binaries
fi
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: missing ${missing[*]} and cannot apt-get here; tests needing them will fail" >&2
  exit 0
fi
echo "install-system-deps: apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# prometheus's postinst starts its service (invoke-rc.d ... start || exit 1). We only want
# the binaries: a system Prometheus on :9090 would take the port the stack's own Prometheus
# uses, and where it cannot start (no init system, port taken) the postinst fails and with it
# apt-get (exit 100). A policy-rc.d that answers 101 ("action forbidden") makes invoke-rc.d
# and deb-systemd-invoke skip the start and succeed; an existing one is left alone.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# install-system-deps: no service starts during this install\nexit 101\n' \
    >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null

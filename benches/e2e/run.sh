#!/usr/bin/env bash
# End-to-end benchmark: corral beside nginx and HAProxy on this machine, same
# upstreams, same worker counts, alternated over rounds; prints a table of
# medians and ratios to nginx. Not a test: CI never runs it.
#
#   benches/e2e/run.sh [--rounds N] [--duration SECONDS] [--workers N] [--only SCENARIO]
#
# Installs nginx, HAProxy, wrk and h2load from Debian's packages if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
if [ ${#need[@]} -gt 0 ]; then
    sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    export DEBIAN_FRONTEND=noninteractive
    sudo_if_needed apt-get update -q
    sudo_if_needed apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# Debian starts the packaged nginx and HAProxy; the harness runs its own.
for svc in nginx haproxy; do
    (service "$svc" stop || true) >/dev/null 2>&1
done

cargo build --release
# 10 000 idle connections per contender, plus the harness's own sockets.
ulimit -n 65536 || true
exec python3 benches/e2e/harness.py --corral target/release/corral "$@"

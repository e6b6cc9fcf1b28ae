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

. benches/e2e/packages.sh
need_packages nginx=nginx-light haproxy=haproxy wrk=wrk h2load=nghttp2-client
# Debian starts the packaged nginx and HAProxy; the harness runs its own.
for svc in nginx haproxy; do
    (service "$svc" stop || true) >/dev/null 2>&1
done

# The profile corral ships with (see Cargo.toml), wherever CARGO_TARGET_DIR puts it.
cargo build --profile dist
# 10 000 idle connections per contender, plus the harness's own sockets.
ulimit -n 65536 || true
exec python3 benches/e2e/harness.py --corral "${CARGO_TARGET_DIR:-target}/dist/corral" "$@"

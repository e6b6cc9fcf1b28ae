#!/usr/bin/env bash
# Instructions per request in one corral worker, counted by callgrind while
# the worker serves a fixed number of requests. Unlike time, the count does
# not move with the machine's noise, so it can tell apart changes of a few
# per cent that the side-by-side harness (run.sh) cannot. Not a test: CI
# never runs it.
#
#   benches/e2e/instructions.sh [--corral PATH] [--requests N] [keepalive|h2c|fresh]...
#
# Installs valgrind, nginx and h2load from Debian's packages if missing.
# The count covers only the load: it is zeroed once corral answers and read
# once the load generator is done, so start-up is left out.
set -euo pipefail
cd "$(dirname "$0")/../.."

corral=target/release/corral
requests=10000
scenarios=()
while [ $# -gt 0 ]; do
    case "$1" in
        --corral) corral=$2; shift 2 ;;
        --requests) requests=$2; shift 2 ;;
        keepalive|h2c|fresh) scenarios+=("$1"); shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(keepalive h2c fresh)

. benches/e2e/packages.sh
need_packages valgrind=valgrind nginx=nginx-light h2load=nghttp2-client
[ "$corral" != target/release/corral ] || cargo build --release

dir=$(mktemp -d /tmp/corral-instructions.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port)
port=$(free_port)
cleanup() {
    [ -f "$dir/upstream.pid" ] && kill "$(cat "$dir/upstream.pid")" 2>/dev/null || true
    pkill -f "callgrind-out-file=$dir/" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/upstream.conf" <<EOF
daemon on; worker_processes 1; pid $dir/upstream.pid; error_log $dir/upstream.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $dir/b; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f; uwsgi_temp_path $dir/u; scgi_temp_path $dir/s;
  server { listen 127.0.0.1:$up; location / { return 200 "hello from the benchmark upstream, a fixed body of about one hundred bytes, same for all...\n"; } }
}
EOF
nginx -e "$dir/upstream.err" -c "$dir/upstream.conf" -p "$dir"

# One worker, and a heartbeat timeout that callgrind's slowness cannot trip.
cat >"$dir/corral.toml" <<EOF
[runtime]
workers = 1
heartbeat_timeout = "60s"
[[listeners]]
name = "bench"
listen = "127.0.0.1:$port"
[[routes]]
upstream = "app"
[[upstreams]]
name = "app"
servers = [{ addr = "127.0.0.1:$up" }]
EOF

fresh_client() {
    python3 - "$1" "$port" <<'EOF'
import socket, sys, threading
n, port = int(sys.argv[1]), int(sys.argv[2])
request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
def run(count):
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(request)
            while s.recv(65536):
                pass
threads = [threading.Thread(target=run, args=(n // 4,)) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
EOF
}

for scenario in "${scenarios[@]}"; do
    CORRAL_LOG=warn setsid valgrind --tool=callgrind --trace-children=yes \
        --callgrind-out-file="$dir/cg.%p" "$corral" run --config "$dir/corral.toml" \
        >"$dir/corral.log" 2>&1 &
    master=$!
    for _ in $(seq 300); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
    curl -sf -o /dev/null "http://127.0.0.1:$port/" || { cat "$dir/corral.log" >&2; exit 1; }
    worker=$(pgrep -f "callgrind-out-file=$dir/.* worker$" | head -1)
    callgrind_control -z "$worker" >/dev/null 2>&1
    case $scenario in
        keepalive) h2load --h1 -c 10 -t 1 -n "$requests" "http://127.0.0.1:$port/" >/dev/null ;;
        h2c) h2load -c 10 -m 10 -t 1 -n "$requests" "http://127.0.0.1:$port/" >/dev/null ;;
        fresh) fresh_client "$requests" ;;
    esac
    callgrind_control -d "$worker" >/dev/null 2>&1
    dump=$(ls -t "$dir/cg.$worker".* | head -1)
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    printf '%-10s %8d instructions per request (%d requests)\n' "$scenario" $((total / requests)) "$requests"
    # The master stops once its worker has: then the port is free again.
    kill "$master"
    wait "$master" || true
done

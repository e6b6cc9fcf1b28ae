#!/usr/bin/env bash
# Instructions per request in one proxy process (one corral worker, one nginx
# worker, one HAProxy thread), counted by callgrind while it serves a fixed
# number of requests. Unlike time, the count does not move with the
# machine's noise, so it can tell apart changes of a few per cent that the
# side-by-side harness (run.sh) cannot. It counts user-space work only: the
# kernel's share of a request is in its system calls, which `--syscalls`
# counts instead (with strace, the proxy running at full speed). Not a test:
# CI never runs it.
#
#   benches/e2e/instructions.sh [--syscalls] [--corral PATH] [--requests N]
#       [--contenders corral,nginx,haproxy] [keepalive|h2c|fresh]...
#
# Installs valgrind, strace, nginx, HAProxy and h2load from Debian's packages
# if missing. The count covers only the load: it starts once the proxy
# answers and ends once the load generator is done, so start-up is left out.
set -euo pipefail
cd "$(dirname "$0")/../.."

# What `cargo build --profile dist` makes, wherever CARGO_TARGET_DIR puts it.
dist=${CARGO_TARGET_DIR:-target}/dist/corral
corral=$dist
requests=10000
what=instructions
precision=0
contenders=(corral nginx haproxy)
scenarios=()
while [ $# -gt 0 ]; do
    case "$1" in
        --syscalls) what="system calls"; precision=2; shift ;;
        --corral) corral=$2; shift 2 ;;
        --requests) requests=$2; shift 2 ;;
        --contenders) IFS=, read -ra contenders <<<"$2"; shift 2 ;;
        keepalive|h2c|fresh) scenarios+=("$1"); shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(keepalive h2c fresh)

. benches/e2e/packages.sh
need_packages valgrind=valgrind strace=strace nginx=nginx-light haproxy=haproxy h2load=nghttp2-client
[[ " ${contenders[*]} " != *" corral "* ]] || [ "$corral" != "$dist" ] || cargo build --profile dist

dir=$(mktemp -d /tmp/corral-instructions.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port)
port=$(free_port)
# On any exit, also the contender still running (under callgrind or not).
stop=
cleanup() {
    [ -f "$dir/upstream.pid" ] && kill "$(cat "$dir/upstream.pid")" 2>/dev/null || true
    [ -z "$stop" ] || kill "$stop" 2>/dev/null || true
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

# Starts one contender (under callgrind, unless counting system calls) for a
# scenario; sets `measured`, the pid whose count is read, and `stop`, the pid
# that ends the contender.
start() {
    local who=$1 scenario=$2
    local grind=(setsid valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p")
    local children=(--trace-children=yes)
    [ "$what" = instructions ] || { grind=(setsid); children=(); }
    case $who in
        corral)
            CORRAL_LOG=warn "${grind[@]}" "${children[@]}" "$corral" run \
                --config "$dir/corral.toml" >"$dir/corral.log" 2>&1 &
            ;;
        nginx)
            local http2=""
            [ "$scenario" != h2c ] || http2=" http2"
            cat >"$dir/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $dir/nginx.pid; error_log $dir/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $dir/b; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f; uwsgi_temp_path $dir/u; scgi_temp_path $dir/s;
  upstream app { server 127.0.0.1:$up; keepalive 256; }
  server { listen 127.0.0.1:$port$http2;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
            "${grind[@]}" nginx -e "$dir/nginx.err" -c "$dir/nginx.conf" -p "$dir" >"$dir/nginx.log" 2>&1 &
            ;;
        haproxy)
            local proto=""
            [ "$scenario" != h2c ] || proto=" proto h2"
            cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend bench
  bind 127.0.0.1:$port$proto
  default_backend app
backend app
  server a 127.0.0.1:$up
EOF
            "${grind[@]}" haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
            ;;
    esac
    stop=$!
    local curl=(curl -sf -o /dev/null)
    [ "$scenario" != h2c ] || curl+=(--http2-prior-knowledge)
    for _ in $(seq 300); do
        "${curl[@]}" "http://127.0.0.1:$port/" && break
        sleep 0.2
    done
    "${curl[@]}" "http://127.0.0.1:$port/" || { cat "$dir/$who.log" >&2; exit 1; }
    if [ "$who" = corral ]; then
        measured=$(pgrep -P "$stop" -f ' worker$' | head -1)
    else
        measured=$stop
    fi
}

declare -A count
for scenario in "${scenarios[@]}"; do
    for who in "${contenders[@]}"; do
        start "$who" "$scenario"
        if [ "$what" = instructions ]; then
            callgrind_control -z "$measured" >/dev/null 2>&1
        else
            strace -c -f -p "$measured" -o "$dir/strace" 2>"$dir/strace.err" &
            tracer=$!
            until grep -q attached "$dir/strace.err"; do sleep 0.1; done
        fi
        case $scenario in
            keepalive) h2load --h1 -c 10 -t 1 -n "$requests" "http://127.0.0.1:$port/" >/dev/null ;;
            h2c) h2load -c 10 -m 10 -t 1 -n "$requests" "http://127.0.0.1:$port/" >/dev/null ;;
            fresh) fresh_client "$requests" ;;
        esac
        if [ "$what" = instructions ]; then
            callgrind_control -d "$measured" >/dev/null 2>&1
            dump=$(ls -t "$dir/cg.$measured".* | head -1)
            total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
        else
            kill -INT "$tracer"
            wait "$tracer" || true
            total=$(awk '$NF == "total" {print $4}' "$dir/strace")
        fi
        count[$scenario.$who]=$(awk -v t="$total" -v n="$requests" -v p="$precision" 'BEGIN { printf "%.*f", p, t / n }')
        # corral's master stops once its worker has: then the port is free again.
        kill "$stop"
        wait "$stop" || true
        stop=
        rm -f "$dir"/cg.*
    done
done

# The table: a column per contender, then corral's ratio to each other one.
others=()
for who in "${contenders[@]}"; do [ "$who" = corral ] || others+=("$who"); done
[[ " ${contenders[*]} " == *" corral "* ]] || others=()
printf '%-10s' scenario
for who in "${contenders[@]}"; do printf ' %10s' "$who"; done
for who in "${others[@]}"; do printf ' %16s' "corral / $who"; done
printf '   (%s per request, %d requests)\n' "$what" "$requests"
for scenario in "${scenarios[@]}"; do
    printf '%-10s' "$scenario"
    for who in "${contenders[@]}"; do printf ' %10s' "${count[$scenario.$who]}"; done
    for who in "${others[@]}"; do
        awk -v a="${count[$scenario.corral]}" -v b="${count[$scenario.$who]}" 'BEGIN { printf " %15.2fx", a / b }'
    done
    printf '\n'
done

"""The end-to-end benchmark driver (run it through run.sh).

Starts two upstreams (one nginx answering a fixed 200 of about 100 bytes on
two ports), then for each scenario and round starts corral, nginx and HAProxy
in turn, with the same worker count, in a rotating order, drives load at each
with wrk or h2load, and measures from /proc: the proxy's CPU time (master and
workers together) per request, and its peak resident memory. Prints medians
over the rounds and each as a ratio to nginx.

Scenarios:
  keepalive  HTTP/1.1, 50 keep-alive connections (wrk)
  fresh      HTTP/1.1, a new connection per request (wrk, Connection: close)
  h2c        HTTP/2 with prior knowledge, 10 connections x 10 streams (h2load)
  proxybound keepalive with the proxy the bottleneck: one worker (thread) pinned
             to one CPU, wrk (one thread) and the upstream pinned to the others;
             also reports how busy each side's CPU was (see cores.py)
  idle       10 000 idle keep-alive connections: memory per connection
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import cores

BODY = "hello from the benchmark upstream, a fixed body of about one hundred bytes, same for all...\n"
CONTENDERS = ["corral", "nginx", "haproxy"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def tree(pid):
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def tree_sum(pid, measure):
    """measure(p) summed over pid's tree; a process gone meanwhile counts 0."""
    total = 0
    for p in tree(pid):
        try:
            total += measure(p)
        except OSError:
            pass
    return total


def own_cpu_ticks(p):
    with open(f"/proc/{p}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def own_rss_kib(p):
    with open(f"/proc/{p}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    return tree_sum(pid, own_cpu_ticks)


def rss_kib(pid):
    return tree_sum(pid, own_rss_kib)


class Sampler(threading.Thread):
    """Peak resident memory of a process tree while a run lasts."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self.stop.wait(0.1)


class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="corral-bench-")
        self.up = [free_port(), free_port()]
        self.procs = []
        self.layout = None

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def spawn(self, argv, port, name):
        log = open(os.path.join(self.dir, name + ".log"), "a")
        p = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        self.procs.append(p)
        wait_port(port)
        return p

    def stop(self, p):
        try:
            os.killpg(p.pid, 9)
        except ProcessLookupError:
            pass
        p.wait()

    def temp_paths(self):
        # Keep nginx out of system folders it may not be able to create.
        return " ".join(f"{k}_temp_path {self.dir}/{k};" for k in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])

    def start_upstreams(self):
        servers = "\n".join(
            f'  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{BODY}"; }} }}' for port in self.up
        )
        conf = self.write("upstream.conf", f"""
daemon off; worker_processes {self.args.upstream_workers}; pid {self.dir}/upstream.pid; error_log {self.dir}/upstream.err warn;
events {{ worker_connections 65536; }}
http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 300s; {self.temp_paths()}
{servers}
}}
""")
        self.upstream = self.spawn(["nginx", "-e", f"{self.dir}/upstream.err", "-c", conf, "-p", self.dir],
                                   self.up[0], "upstream")

    def start(self, who, h2=False, pinned=False):
        """One contender; pinned: one worker (thread), on the layout's proxy CPU."""
        port = free_port()
        w = 1 if pinned else self.args.workers
        on = (lambda argv: self.layout.command({self.layout.proxy}, argv)) if pinned else (lambda argv: argv)
        if who == "corral" or who in self.args.variants:
            binary = self.args.variants.get(who, self.args.corral)
            conf = self.write("corral.toml", f"""
[runtime]
workers = {w}
[[listeners]]
name = "bench"
listen = "127.0.0.1:{port}"
keepalive_timeout = "300s"
[[routes]]
upstream = "app"
[[upstreams]]
name = "app"
servers = [{{ addr = "127.0.0.1:{self.up[0]}" }}, {{ addr = "127.0.0.1:{self.up[1]}" }}]
""")
            env = dict(os.environ, CORRAL_LOG="warn")
            log = open(os.path.join(self.dir, "corral.log"), "a")
            p = subprocess.Popen(on([binary, "run", "--config", conf]), stdout=log, stderr=log,
                                 start_new_session=True, env=env)
            self.procs.append(p)
            wait_port(port)
        elif who == "nginx":
            listen = f"127.0.0.1:{port} http2" if h2 else f"127.0.0.1:{port}"
            conf = self.write("nginx.conf", f"""
daemon off; worker_processes {w}; worker_rlimit_nofile 65536; pid {self.dir}/nginx.pid; error_log {self.dir}/nginx.err warn;
events {{ worker_connections 30000; }}
http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 300s; {self.temp_paths()}
  upstream app {{ server 127.0.0.1:{self.up[0]}; server 127.0.0.1:{self.up[1]}; keepalive 256; }}
  server {{ listen {listen};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
}}
""")
            p = self.spawn(on(["nginx", "-e", f"{self.dir}/nginx.err", "-c", conf, "-p", self.dir]), port, "nginx")
        else:
            proto = " proto h2" if h2 else ""
            conf = self.write("haproxy.cfg", f"""
global
  nbthread {w}
  maxconn {self.args.idle + 50}
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
  http-reuse always
frontend bench
  bind 127.0.0.1:{port}{proto}
  default_backend app
backend app
  balance roundrobin
  server a 127.0.0.1:{self.up[0]}
  server b 127.0.0.1:{self.up[1]}
""")
            p = self.spawn(on(["haproxy", "-f", conf]), port, "haproxy")
        return p, port

    def load(self, scenario, port):
        d = str(self.args.duration)
        url = f"http://127.0.0.1:{port}/"
        if scenario == "h2c":
            log = os.path.join(self.dir, "h2load.log")
            out = subprocess.run(["h2load", f"-t{self.args.threads}", f"-c{self.args.h2_connections}", "-m10", "-D", d,
                                  f"--log-file={log}", url],
                                 capture_output=True, text=True).stdout
            done = failed = 0
            for line in out.splitlines():
                if line.startswith("requests:"):
                    parts = line.replace(",", "").split()
                    done, failed = int(parts[7]), int(parts[9])
            with open(log) as f:
                lat = sorted(int(l.split()[2]) / 1000.0 for l in f if l.strip())
            os.unlink(log)
            rps = done / float(d)
            pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
            return dict(rps=rps, requests=done, errors=failed, p50=pct(0.5), p99=pct(0.99))
        # Proxy-bound: one wrk thread, which must not be what limits the run (its CPU share says).
        threads = 1 if scenario == "proxybound" else self.args.threads
        argv = ["wrk", f"-t{threads}", f"-c{self.args.connections}", f"-d{d}s", "--latency", url]
        if scenario == "fresh":
            argv[1:1] = ["-H", "Connection: close"]
        if scenario == "proxybound":
            argv = self.layout.command(self.layout.load, argv)
        before, t0 = children_cpu(), time.monotonic()
        out = subprocess.run(argv, capture_output=True, text=True).stdout
        # wrk is the only child that ends meanwhile: the children's CPU time grew by its own.
        res = dict(errors=0, load_cpu=100 * (children_cpu() - before) / (time.monotonic() - t0))
        for line in out.splitlines():
            s = line.split()
            if line.strip().startswith("50%"):
                res["p50"] = ms(s[1])
            elif line.strip().startswith("99%"):
                res["p99"] = ms(s[1])
            elif "requests in" in line:
                res["requests"] = int(s[0])
            elif line.startswith("Requests/sec"):
                res["rps"] = float(s[1])
            elif "Non-2xx" in line or "Socket errors" in line:
                res["errors"] += sum(int(x.strip(",")) for x in s if x.strip(",").isdigit())
        return res

    def idle(self, who):
        p, port = self.start(who)
        n = self.args.idle
        time.sleep(0.5)
        before = rss_kib(p.pid)
        socks = []
        request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
        for start in range(0, n, 500):
            batch = [socket.create_connection(("127.0.0.1", port)) for _ in range(min(500, n - start))]
            for s in batch:
                s.sendall(request)
            drain(batch)
            socks.extend(batch)
        # Idle means quiet for a while: long enough for any proxy to settle.
        time.sleep(3.0)
        after = rss_kib(p.pid)
        alive = sum(1 for s in socks if still_open(s))
        for s in socks:
            s.close()
        self.stop(p)
        return dict(per_conn_kib=(after - before) / n, rss_mib=after / 1024, open=alive)

    def measure(self, who, scenario):
        """One contender under one load scenario: what the load generator saw, and the proxy's CPU and memory."""
        pinned = scenario == "proxybound"
        # Off the proxy's CPU: the upstream, and this harness itself (its memory sampler).
        ours = tree(self.upstream.pid) + [os.getpid()]
        if pinned:
            cores.pin(ours, self.layout.load)
        p, port = self.start(who, h2=scenario == "h2c", pinned=pinned)
        if self.args.warmup:
            self.load(scenario if scenario in ("h2c", "proxybound") else "keepalive", port)
        sampler = Sampler(p.pid)
        sampler.start()
        t0, u0, busy0, w0 = cpu_ticks(p.pid), cpu_ticks(self.upstream.pid), cores.cpu_times(), time.monotonic()
        res = self.load(scenario, port)
        t1, u1, busy1, wall = cpu_ticks(p.pid), cpu_ticks(self.upstream.pid), cores.cpu_times(), time.monotonic() - w0
        sampler.stop.set()
        sampler.join()
        placed = cores.affinity(tree(p.pid)) if pinned else None
        self.stop(p)
        tick = os.sysconf("SC_CLK_TCK")
        res["cpu_us"] = (t1 - t0) / tick * 1e6 / max(res.get("requests", 0), 1)
        res["rss_mib"] = sampler.peak / 1024
        if pinned:
            cores.pin(ours, self.layout.allowed)
            if placed != {self.layout.proxy}:
                raise RuntimeError(f"{who} ran on CPUs {sorted(placed)}, not on CPU {self.layout.proxy} alone")
            res["proxy_cpu"] = 100 * (t1 - t0) / tick / wall
            res["core_busy"] = cores.busy_percent(busy0, busy1, {self.layout.proxy})
            res["upstream_cpu"] = 100 * (u1 - u0) / tick / wall
            res["load_busy"] = cores.busy_percent(busy0, busy1, self.layout.load)
        return res

    def run(self):
        self.start_upstreams()
        scenarios = self.args.only or ["keepalive", "fresh", "h2c", "proxybound", "idle"]
        if "proxybound" in scenarios:
            self.layout = cores.Layout(self.args.proxy_cpu)
        contenders = self.args.contenders
        results = {s: {c: [] for c in contenders} for s in scenarios}
        try:
            for r in range(self.args.rounds):
                k = r % len(contenders)
                order = contenders[k:] + contenders[:k]
                for scenario in scenarios:
                    for who in order:
                        res = self.idle(who) if scenario == "idle" else self.measure(who, scenario)
                        results[scenario][who].append(res)
                        print(f"round {r + 1} {scenario:10} {who:8} {fmt(res)}", file=sys.stderr, flush=True)
                        if scenario == "proxybound":
                            for note in cores.notes(who, res):
                                print(f"  note: {note}", file=sys.stderr, flush=True)
        finally:
            for p in self.procs:
                self.stop(p)
        return results


def children_cpu():
    """CPU seconds of this process's children that have ended."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ms(text):
    if text.endswith("us"):
        return float(text[:-2]) / 1000
    if text.endswith("ms"):
        return float(text[:-2])
    return float(text[:-1]) * 1000


def drain(socks):
    for s in socks:
        s.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk


def still_open(s):
    s.setblocking(False)
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def fmt(res):
    return " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items())


LOAD_METRICS = [("rps", "req/s"), ("p50", "p50 ms"), ("p99", "p99 ms"), ("cpu_us", "CPU µs/req"),
                ("rss_mib", "peak RSS MiB")]
# Where the proxy-bound run's time went; shares of a core, so no ratio between contenders.
PLACEMENT = [("proxy_cpu", "proxy's CPU % of its core"), ("core_busy", "proxy core busy % (all processes)"),
             ("load_cpu", "wrk CPU % of one core"), ("upstream_cpu", "upstream CPU % of one core"),
             ("load_busy", "load cores busy % (all processes)")]


def medians(by, key):
    return {c: statistics.median(r[key] for r in runs) if runs else float("nan") for c, runs in by.items()}


def table(results):
    contenders = list(next(iter(results.values())))
    rows = []
    metrics = {
        "keepalive": LOAD_METRICS,
        "fresh": LOAD_METRICS,
        "h2c": LOAD_METRICS,
        "proxybound": LOAD_METRICS + PLACEMENT,
        "idle": [("per_conn_kib", "KiB per idle conn"), ("rss_mib", "RSS MiB")],
    }
    for scenario, by in results.items():
        rows.append(f"\n### {scenario}\n")
        others = [c for c in contenders if c != "corral"] if "corral" in contenders else []
        rows.append("| " + " | ".join(["metric"] + contenders + [f"corral / {o}" for o in others]) + " |")
        rows.append("| --- " * (len(contenders) + len(others) + 1) + "|")
        for key, label in metrics[scenario]:
            med = medians(by, key)
            share = (key, label) in PLACEMENT
            ratio = lambda a, b: f"{a / b:.2f}x" if b and not share else "-"
            cells = [f"{med[c]:.2f}" for c in contenders] + [ratio(med["corral"], med[o]) for o in others]
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
        if scenario == "proxybound":
            keys = [key for key, _ in PLACEMENT]
            placed = {c: {k: medians(by, k)[c] for k in keys} for c in contenders if by[c]}
            notes = [n for c, res in placed.items() for n in cores.notes(c, res)]
            rows.append("\n" + "\n".join(f"note (medians): {n}" for n in notes) if notes else
                        "\nEvery proxy's core was saturated and the load side was not: the req/s are the proxies' own.")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2, help="load generator threads")
    ap.add_argument("--upstream-workers", type=int, default=1, help="worker processes of the upstream nginx")
    ap.add_argument("--connections", type=int, default=50, help="HTTP/1.1 client connections")
    ap.add_argument("--h2-connections", type=int, default=10, help="HTTP/2 client connections (10 streams each)")
    ap.add_argument("--warmup", action="store_true", help="drive load once before measuring")
    ap.add_argument("--only", action="append", choices=["keepalive", "fresh", "h2c", "proxybound", "idle"])
    ap.add_argument("--proxy-cpu", type=int, help="the CPU of the proxy in proxybound (default: the last one)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--only-contenders", nargs="+", choices=CONTENDERS, help="measure only these")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                    help="another corral build to compare, e.g. corral-b=/tmp/corral (for A/B work)")
    args = ap.parse_args()
    args.variants = dict(v.split("=", 1) for v in args.variant)
    args.contenders = (args.only_contenders or CONTENDERS) + list(args.variants)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # HAProxy wants two descriptors per connection it may hold.
    fits = (hard - 256) // 2
    if args.idle > fits:
        print(f"note: the open files limit ({hard}) allows {fits} idle connections per contender, not {args.idle}",
              file=sys.stderr)
        args.idle = fits
    bench = Bench(args)
    results = bench.run()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"\n{args.rounds} rounds of {args.duration}s, {args.workers} workers each, medians:")
    if bench.layout:
        print(f"(proxybound: 1 worker each, {bench.layout.describe()})")
    print(table(results))


if __name__ == "__main__":
    main()

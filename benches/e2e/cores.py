"""CPU placement for the proxy-bound scenario of the benchmark (harness.py).

Owns which CPU the proxy runs on and which the load generator and the
upstream share, pinning processes there, checking that a proxy stayed where
it was put, and how busy each CPU was while the load ran. It starts nothing
itself: harness.py prefixes the commands it runs with `command()`.

On a machine where everything shares every core, a proxy's throughput is
capped by what the load generator and the upstream leave it; pinned apart,
the proxy's core is the bottleneck and its requests/s are its own.
"""

import os

# A core this busy or more counts as saturated.
SATURATED = 90.0


class Layout:
    """One CPU for the proxy, the rest for the load generator and the upstream."""

    def __init__(self, proxy_cpu=None):
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            raise SystemExit("the proxybound scenario needs two CPUs: one for the proxy, one for the load")
        self.allowed = set(allowed)
        self.proxy = allowed[-1] if proxy_cpu is None else proxy_cpu
        if self.proxy not in self.allowed:
            raise SystemExit(f"--proxy-cpu {self.proxy} is not among this process's CPUs {allowed}")
        self.load = self.allowed - {self.proxy}

    def command(self, cpus, argv):
        """argv run on cpus (taskset: what it starts, threads and children, inherits them)."""
        return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus))] + argv

    def describe(self):
        load = ",".join(str(c) for c in sorted(self.load))
        return f"proxy on CPU {self.proxy}, load generator and upstream on CPU {load}"


def tasks(pid):
    """The threads of one process."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def pin(pids, cpus):
    """Every thread of each process in pids onto cpus (a thread gone meanwhile is skipped)."""
    for pid in pids:
        for tid in tasks(pid):
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def affinity(pids):
    """The CPUs any thread of pids may run on, all together."""
    cpus = set()
    for pid in pids:
        for tid in tasks(pid):
            try:
                cpus |= os.sched_getaffinity(tid)
            except OSError:
                pass
    return cpus


def cpu_times():
    """Per CPU: (busy, total) clock ticks since boot, from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
            total = user + nice + system + idle + iowait + irq + softirq + steal
            out[int(name[3:])] = (total - idle - iowait, total)
    return out


def busy_percent(before, after, cpus):
    """How busy cpus were between two cpu_times() readings, in per cent of their time."""
    busy = sum(after[c][0] - before[c][0] for c in cpus)
    total = sum(after[c][1] - before[c][1] for c in cpus)
    return 100.0 * busy / total if total else float("nan")


def notes(who, res):
    """What a reader should know about one proxy-bound run: whether its core was the bottleneck."""
    out = []
    if res["core_busy"] < SATURATED:
        out.append(f"{who}'s core was {res['core_busy']:.0f}% busy, not saturated: "
                   "something else limited its requests/s")
    elif res["proxy_cpu"] < SATURATED:
        out.append(f"{who} had {res['proxy_cpu']:.0f}% of its core; other processes took the rest")
    if res["load_cpu"] >= SATURATED:
        out.append(f"wrk used {res['load_cpu']:.0f}% of its core: the load generator may have limited {who}")
    elif res["load_busy"] >= SATURATED:
        out.append(f"the load side's cores were {res['load_busy']:.0f}% busy (wrk {res['load_cpu']:.0f}%, "
                   f"the upstream {res['upstream_cpu']:.0f}%, other processes the rest): "
                   f"wrk or the upstream may have waited for CPU and limited {who}")
    return out

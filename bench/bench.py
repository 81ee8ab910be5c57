#!/usr/bin/env python3
"""The clearify-workerd benchmark driver (issues 2 and 3).

Run it through bench/run.sh, which builds the binaries and the trivial
worker and cleans up. Python standard library only.

For each N it starts the real daemon with N instances of the trivial worker
(bench/trivial-worker.c) against a real redis-server on 127.0.0.1 and
measures, in this order:

  start      daemon spawn -> all N workers exec'd; also "starting workers"
             (the broker gate opening, from the daemon's log) -> all exec'd
  rss        VmRSS / VmHWM of the daemon, after start and after everything
  idle cpu   daemon CPU over IDLE seconds with nothing happening
  status     `clearifyctl status` whole-process wall time (median, p90) and
             the daemon's CPU per call (delta over all calls / calls)
  restart    SIGKILL a worker -> its replacement's first instruction, K times,
             each kill of a different instance, spaced by GAP
  stop       SIGTERM to the daemon -> every worker handled SIGTERM / daemon
             exited

Timestamps of worker start and exit come from the workers themselves
(CLOCK_MONOTONIC and CLOCK_REALTIME written to the record file), so polling
granularity of this script does not enter the figures. Daemon CPU is the sum
of sum_exec_runtime (ns) of all its threads (/proc/PID/task/*/schedstat),
cross-checked with utime+stime in clock ticks from /proc/PID/stat.
"""

import argparse
import calendar
import grp
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

TARGETS = {
    # key: (label, target value, unit, which N it applies to)
    "restart_median_ms": ("restart latency, SIGKILL -> replacement exec'd, median", 5.0, "ms"),
    "start_spawn_ms": ("start of N instances (daemon spawn -> all exec'd)", 300.0, "ms"),
    "stop_daemon_ms": ("stop of N instances (SIGTERM -> daemon exited)", 150.0, "ms"),
    "rss_kib": ("daemon RSS at N instances (VmRSS after start)", 6 * 1024.0, "KiB"),
    "idle_cpu_ms": ("daemon CPU over 30 s idle (worst of the idle windows)", 5.0, "ms"),
    "status_median_ms": ("`clearifyctl status` wall time, median", 5.0, "ms"),
    "status_cpu_ms": ("daemon CPU per status call", 1.0, "ms"),
}

CLK_TCK = os.sysconf("SC_CLK_TCK")


def mono():
    return time.monotonic_ns()


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return s[s.rindex(")") + 2] not in "ZX"


def cpu_ns(pid):
    """Sum of sum_exec_runtime over all threads of pid, and their tids."""
    total = 0
    tids = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
            tids.add(int(tid))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total, tids


def cpu_ticks_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / CLK_TCK


def ctx_switches(pid):
    """Voluntary + involuntary context switches over all threads (wake-ups)."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        n += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return n


class CpuMeter:
    """Daemon CPU between start() and stop(), in ms (ns-precise)."""

    def __init__(self, pid):
        self.pid = pid

    def start(self):
        self.ns0, self.tids0 = cpu_ns(self.pid)
        self.ticks0 = cpu_ticks_ms(self.pid)
        self.ctx0 = ctx_switches(self.pid)
        return self

    def stop(self):
        ns1, tids1 = cpu_ns(self.pid)
        self.ms = (ns1 - self.ns0) / 1e6
        self.ticks_ms = cpu_ticks_ms(self.pid) - self.ticks0
        self.ctx = ctx_switches(self.pid) - self.ctx0
        # A thread that exited in between takes its runtime out of the ns
        # sum; the tick count (which keeps dead threads) is then the floor.
        self.threads_changed = self.tids0 != tids1
        if self.threads_changed:
            self.ms = max(self.ms, self.ticks_ms)
        return self


def touched_private_kib(pid):
    """Memory of pid touched since its referenced bits were cleared
    (`echo 1 > /proc/PID/clear_refs`), summed over its private mappings:
    its own executable, heap, stacks and anonymous memory. Shared libraries
    are left out: their `Referenced` also counts other processes' use of the
    same page-cache pages."""
    exe = os.readlink(f"/proc/{pid}/exe")
    total = 0
    name = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:
                name = head[5].strip() if len(head) > 5 else ""
            elif line.startswith("Referenced:"):
                shared_lib = name not in ("", exe) and not name.startswith("[")
                special = name in ("[vdso]", "[vvar]", "[vsyscall]")
                if not shared_lib and not special:
                    total += int(line.split()[1])
    return total


def clear_refs(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("1")


def vm_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[k] = int(v.split()[0])
    return out


def smaps_rollup(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if v.strip().endswith("kB"):
                    out[k] = int(v.split()[0])
    except FileNotFoundError:
        pass
    return out


def exec_floor(worker, runs):
    """fork+exec of the trivial worker from a tiny static parent -> its main(), ms."""
    out = subprocess.run([worker, "--exec-floor", str(runs)], capture_output=True, text=True,
                         check=True)
    xs = [int(x) / 1e6 for x in out.stdout.split()]
    return {"exec_floor_median_ms": statistics.median(xs),
            "exec_floor_p10_ms": percentile(xs, 10),
            "exec_floor_p90_ms": percentile(xs, 90)}


def spawn(argv, env, stdout_path):
    """posix_spawn argv with stdin </dev/null and stdout+stderr to a file."""
    fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
                (os.POSIX_SPAWN_CLOSE, fd),
            ],
        )
    finally:
        os.close(fd)


def timed_run(argv, env, devnull):
    """Whole-process wall time of argv in ns, and its exit status."""
    t0 = mono()
    pid = os.posix_spawn(
        argv[0],
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2),
        ],
    )
    _, st = os.waitpid(pid, 0)
    return mono() - t0, os.waitstatus_to_exitcode(st)


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# ---------------------------------------------------------------- redis


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(work):
    for _ in range(10):
        port = free_port()
        d = os.path.join(work, f"redis-{port}")
        os.makedirs(d)
        pid = spawn(
            [
                subprocess.check_output(["sh", "-c", "command -v redis-server"], text=True).strip(),
                "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", d, "--daemonize", "no",
            ],
            {**os.environ, "BENCH_SCRATCH": work},
            os.path.join(d, "redis.log"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if redis_ping(port):
                return pid, port
            if os.waitpid(pid, os.WNOHANG)[0] != 0:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    sys.exit("bench: could not start redis-server on a free 127.0.0.1 port")


# ---------------------------------------------------------------- records


class Records:
    """Reader of the file the trivial workers append "kind pid mono real" to."""

    def __init__(self, path):
        self.path = path
        self.f = open(path)
        self.buf = ""
        self.lines = []  # (kind, pid, mono_ns, real_ns)

    def poll(self):
        """Read what was appended since the last call; return the new records."""
        self.buf += self.f.read()
        new = []
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            kind, pid, m, r = line.split()
            new.append((kind, int(pid), int(m), int(r)))
        self.lines.extend(new)
        return new

    def starts(self):
        return [x for x in self.lines if x[0] == "start"]

    def exits(self):
        return {x[1]: x for x in self.lines if x[0] == "exit"}


LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_time_ns(log_path, needle):
    """Realtime ns of the first daemon log line containing needle."""
    with open(log_path, errors="replace") as f:
        for line in f:
            line = ANSI.sub("", line)
            if needle in line:
                m = LOG_TS.match(line)
                if not m:
                    return None
                ts = m.group(1)
                whole, _, frac = ts.partition(".")
                secs = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
                frac_ns = int((frac + "000000000")[:9]) if frac else 0
                return secs * 1_000_000_000 + frac_ns
    return None


# ---------------------------------------------------------------- one N


# The daemon's default [broker].check_interval (the config leaves it out).
CHECK_INTERVAL_S = 10

CONFIG = """\
[daemon]
socket = "{dir}/control.sock"
device_id = "bench"
admin_group = "{admin_group}"

[broker]
url = "redis://127.0.0.1:{port}/0"

[celery]
app = "x"
command = "{worker}"
workdir = "{dir}"
{user_line}

[defaults]
stop_timeout = "5s"
restart_delay = "0s"
restart_delay_max = "1s"
stable_after = "100ms"
heartbeat_timeout = "0s"
stall_timeout = "0s"
env = {{ BENCH_RECORD = "{records}" }}

[group.bench]
queues = ["bench"]
instances = {n}
"""


class Daemon:
    def __init__(self, args, n, redis_port):
        self.args = args
        self.n = n
        self.redis_port = redis_port
        self.dir = os.path.join(args.work, f"n{n}")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        self.records_path = os.path.join(self.dir, "records.txt")
        fd = os.open(self.records_path, os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
        os.chmod(self.records_path, 0o666)
        self.config = os.path.join(self.dir, "workers.toml")
        self.socket = os.path.join(self.dir, "control.sock")
        self.log = os.path.join(self.dir, "daemon.log")
        user_line = 'user = "nobody"' if os.geteuid() == 0 else ""
        # On a device the package has created the `clearify` group in
        # /etc/group; here the runner's own group stands in for it. (A group
        # that is not in /etc/group is looked up through NSS, which maps
        # libnss_systemd, libcap and libm into the daemon: ~0.65 MiB RSS.)
        admin_group = grp.getgrgid(os.getgid()).gr_name
        with open(self.config, "w") as f:
            f.write(CONFIG.format(dir=self.dir, port=redis_port, worker=args.worker,
                                  user_line=user_line, records=self.records_path, n=n,
                                  admin_group=admin_group))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "RUST_LOG": "info",
            "NO_COLOR": "1",
            "LANG": "C.UTF-8",
            # run.sh's EXIT trap kills what carries this marker.
            "BENCH_SCRATCH": args.work,
        }
        self.pid = None
        self.records = Records(self.records_path)
        self.notify_msgs = []
        if args.notify:
            # As under systemd (Type=notify): a datagram socket that takes the
            # daemon's READY=1 / STATUS= / STOPPING=1, drained by a thread.
            path = os.path.join(self.dir, "notify.sock")
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(path)
            self.env["NOTIFY_SOCKET"] = path
            if args.watchdog_sec > 0:
                # The packaged unit's WatchdogSec=: the daemon pings every half.
                self.env["WATCHDOG_USEC"] = str(args.watchdog_sec * 1_000_000)
            threading.Thread(target=self._drain_notify, daemon=True).start()
            # Where the idle floor sends its watchdog pings (never read;
            # the floor sends without blocking).
            self.floor_notify_path = os.path.join(self.dir, "floor-notify.sock")
            self.floor_notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.floor_notify.bind(self.floor_notify_path)

    def _drain_notify(self):
        while True:
            try:
                msg = self.notify.recv(4096)
            except OSError:
                return
            self.notify_msgs.append((mono(), msg.decode(errors="replace")))

    def spawn(self):
        self.t_spawn_real = time.time_ns()
        self.t_spawn = mono()
        self.pid = spawn([self.args.daemon, "--config", self.config, "--log-target", "stderr"],
                         self.env, self.log)

    def check_alive(self):
        if os.waitpid(self.pid, os.WNOHANG)[0] != 0:
            self.pid = None
            with open(self.log, errors="replace") as f:
                sys.exit(f"bench: the daemon exited early:\n{f.read()}")

    def ctl(self, *a):
        return [self.args.ctl, "--socket", self.socket, *a]

    def status_json(self):
        out = subprocess.run(self.ctl("status", "--json"), capture_output=True, text=True,
                             env=self.env)
        if out.returncode != 0:
            raise RuntimeError(f"status failed: {out.stderr}")
        return json.loads(out.stdout)

    def instances(self):
        s = self.status_json()
        return [i for g in s["groups"] for i in g["instances"]]

    def wait_running(self, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                inst = self.instances()
            except (RuntimeError, ValueError):
                inst = []
            if len(inst) == self.n and all(i["state"] == "running" and i["pid"] for i in inst):
                return {i["id"]: i["pid"] for i in inst}
            if time.monotonic() > deadline:
                sys.exit(f"bench: not all {self.n} instances running after {timeout}s: "
                         f"{[(i['id'], i['state']) for i in inst]}")
            self.check_alive()
            time.sleep(0.05)

    def kill_leftovers(self):
        """Stop the daemon and its workers if something went wrong."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = None
        self.records.poll()
        for kind, pid, _, _ in self.records.lines:
            if kind == "start" and alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def bench_n(args, n, redis_port):
    r = {"n": n}
    d = Daemon(args, n, redis_port)
    try:
        return run_n(args, d, r)
    finally:
        d.kill_leftovers()


def run_n(args, d, r):
    n = d.n
    r.update(exec_floor(args.worker, 50))
    log(f"N={n}: start")
    d.spawn()
    deadline = time.monotonic() + 30
    while len(d.records.starts()) < n:
        d.records.poll()
        if time.monotonic() > deadline:
            sys.exit(f"bench: only {len(d.records.starts())}/{n} workers started in 30 s")
        d.check_alive()
        time.sleep(0.005)  # the figure comes from the workers' own clocks
    starts = d.records.starts()
    last_mono = max(x[2] for x in starts)
    last_real = max(x[3] for x in starts)
    first_real = min(x[3] for x in starts)
    r["start_spawn_ms"] = (last_mono - d.t_spawn) / 1e6
    gate = log_time_ns(d.log, "starting workers")
    ready = log_time_ns(d.log, " started: config ")
    if gate is not None:
        r["start_gate_ms"] = (last_real - gate) / 1e6
        r["gate_after_spawn_ms"] = (gate - d.t_spawn_real) / 1e6
        r["first_worker_after_gate_ms"] = (first_real - gate) / 1e6
    if ready is not None:
        r["socket_ready_after_spawn_ms"] = (ready - d.t_spawn_real) / 1e6
    pids = d.wait_running()
    r["daemon_cpu_through_start_ms"] = cpu_ns(d.pid)[0] / 1e6

    time.sleep(args.settle)
    vm = vm_status(d.pid)
    r["rss_kib"] = vm["VmRSS"]
    r["hwm_kib_after_start"] = vm["VmHWM"]
    r["rss_anon_kib"] = vm.get("RssAnon")
    r["rss_file_kib"] = vm.get("RssFile")
    r["threads"] = vm.get("Threads")
    r["pss_kib"] = smaps_rollup(d.pid).get("Pss")

    log(f"N={n}: idle {args.idle_windows} x {args.idle} s")
    # The floor runs beside the daemon through the same seconds: the same
    # wake-ups (a timerfd every check_interval, a PING over loopback TCP)
    # in a static C program, i.e. what they cost on this machine right now.
    floor = None
    if args.idle_floor:
        floor_argv = [args.idle_floor, str(CHECK_INTERVAL_S), str(d.redis_port)]
        if args.notify and args.watchdog_sec > 0:
            floor_argv += [str(args.watchdog_sec // 2), d.floor_notify_path]
        floor = subprocess.Popen(floor_argv, env={"BENCH_SCRATCH": args.work})
        time.sleep(0.5)
    windows = []
    pings_before = sum("WATCHDOG=1" in m for _, m in d.notify_msgs)
    for _ in range(args.idle_windows):
        m = CpuMeter(d.pid).start()
        fm = CpuMeter(floor.pid).start() if floor else None
        time.sleep(args.idle)
        m.stop()
        w = {"cpu_ms": m.ms * 30.0 / args.idle, "ticks_ms": m.ticks_ms * 30.0 / args.idle,
             "wakeups_per_s": m.ctx / args.idle, "threads_changed": m.threads_changed}
        if floor:
            fm.stop()
            w["floor_cpu_ms"] = fm.ms * 30.0 / args.idle
            w["floor_wakeups_per_s"] = fm.ctx / args.idle
        windows.append(w)
    pings_in_windows = sum("WATCHDOG=1" in m for _, m in d.notify_msgs) - pings_before
    # Distinct memory the idle daemon touches in one idle window (its health
    # checks and watchdog pings), after clearing the referenced bits: on a
    # VM each such page may cost a TLB miss or a host-side fault after
    # seconds asleep, which is what makes idle CPU vary from run to run.
    # Measured after the CPU windows, as clearing the bits also flushes the
    # process's TLB.
    clear_refs(d.pid)
    if floor:
        clear_refs(floor.pid)
    time.sleep(args.idle)
    r["idle_touched_kib"] = touched_private_kib(d.pid)
    if floor:
        r["idle_floor_touched_kib"] = touched_private_kib(floor.pid)
        if floor.poll() is not None:
            raise SystemExit(f"idle-floor exited with {floor.returncode}")
        floor.kill()
        floor.wait()
    r["idle_windows"] = windows
    r["idle_watchdog_pings"] = pings_in_windows
    r["idle_s"] = args.idle
    # The headline is the worst window; the median is shown beside it.
    r["idle_cpu_ms"] = max(w["cpu_ms"] for w in windows)
    r["idle_cpu_median_ms"] = percentile([w["cpu_ms"] for w in windows], 50)
    r["idle_cpu_ticks_ms"] = max(w["ticks_ms"] for w in windows)
    r["idle_wakeups_per_s"] = max(w["wakeups_per_s"] for w in windows)
    r["idle_threads_changed"] = any(w["threads_changed"] for w in windows)
    if floor:
        r["idle_floor_cpu_ms"] = max(w["floor_cpu_ms"] for w in windows)
        r["idle_floor_cpu_median_ms"] = percentile([w["floor_cpu_ms"] for w in windows], 50)
        r["idle_floor_wakeups_per_s"] = max(w["floor_wakeups_per_s"] for w in windows)

    log(f"N={n}: status x{args.status_runs}")
    check = subprocess.run(d.ctl("status"), capture_output=True, text=True, env=d.env)
    if check.returncode != 0 or check.stdout.count("running") < n:
        sys.exit(f"bench: clearifyctl status did not list {n} running instances:\n"
                 f"{check.stdout}\n{check.stderr}")
    r["status_bytes"] = len(check.stdout.encode())
    devnull = os.open("/dev/null", os.O_RDWR)
    try:
        for _ in range(5):
            timed_run(d.ctl("status"), d.env, devnull)
        walls = []
        m = CpuMeter(d.pid).start()
        for _ in range(args.status_runs):
            ns, code = timed_run(d.ctl("status"), d.env, devnull)
            if code != 0:
                sys.exit("bench: clearifyctl status failed")
            walls.append(ns / 1e6)
        m.stop()
        jwalls = []
        for _ in range(args.status_runs // 4):
            ns, code = timed_run(d.ctl("status", "--json"), d.env, devnull)
            jwalls.append(ns / 1e6)
    finally:
        os.close(devnull)
    # The daemon samples worker CPU/memory at most once a second, so calls
    # back to back share one sample; a person running status now and then
    # pays for a fresh one every time. Measure that case too.
    cold = []
    devnull = os.open("/dev/null", os.O_RDWR)
    try:
        for _ in range(args.cold_status_runs):
            time.sleep(1.1)
            m1 = CpuMeter(d.pid).start()
            timed_run(d.ctl("status"), d.env, devnull)
            cold.append(m1.stop().ms)
    finally:
        os.close(devnull)
    r["status_cpu_cold_ms"] = statistics.median(cold) if cold else None
    r["status_median_ms"] = statistics.median(walls)
    r["status_p90_ms"] = percentile(walls, 90)
    r["status_min_ms"] = min(walls)
    r["status_cpu_ms"] = m.ms / args.status_runs
    r["status_json_median_ms"] = statistics.median(jwalls)

    log(f"N={n}: restart x{args.kills}")
    ids = sorted(pids, key=lambda i: int(i.rsplit("-", 1)[1]))
    lat = []
    d.records.poll()
    m = CpuMeter(d.pid).start()
    for k in range(args.kills):
        iid = ids[k % len(ids)]
        pid = pids[iid]
        t_kill = mono()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        new = []
        while not new:
            new = [x for x in d.records.poll() if x[0] == "start"]
            if not new:
                if time.monotonic() > deadline:
                    sys.exit(f"bench: no replacement for {iid} (pid {pid}) after 10 s")
                time.sleep(0.001)  # the figure comes from the worker's own clock
        if len(new) != 1:
            sys.exit(f"bench: expected one replacement, got {new}")
        pids[iid] = new[0][1]
        lat.append((new[0][2] - t_kill) / 1e6)
        time.sleep(args.gap)
    m.stop()
    # Includes the blocking thread that clears each run's process tree.
    r["restart_cpu_ms"] = m.ms / args.kills
    r["restart_median_ms"] = statistics.median(lat)
    r["restart_p10_ms"] = percentile(lat, 10)
    r["restart_p90_ms"] = percentile(lat, 90)
    r["restart_min_ms"] = min(lat)
    r["restart_max_ms"] = max(lat)
    r["restart_samples"] = len(lat)
    inst = d.instances()
    restarts = sum(i["restarts"] for i in inst)
    now_pids = {i["id"]: i["pid"] for i in inst}
    if now_pids != pids:
        sys.exit("bench: status pids differ from the recorded replacements")
    r["restart_count_in_status"] = restarts

    vm = vm_status(d.pid)
    r["rss_kib_end"] = vm["VmRSS"]
    r["hwm_kib_end"] = vm["VmHWM"]

    log(f"N={n}: stop")
    d.records.poll()
    t_term = mono()
    os.kill(d.pid, signal.SIGTERM)
    # (wait4's rusage would include the workers the daemon reaped: not used.)
    _, st, _ = os.wait4(d.pid, 0)
    t_exit = mono()
    d.pid = None
    r["daemon_exit_code"] = os.waitstatus_to_exitcode(st)
    r["stop_daemon_ms"] = (t_exit - t_term) / 1e6
    d.records.poll()
    exits = d.records.exits()
    missing = [p for p in pids.values() if p not in exits]
    if missing:
        sys.exit(f"bench: workers without an exit record: {missing}")
    still = [p for p in pids.values() if alive(p)]
    if still:
        sys.exit(f"bench: workers alive after the daemon exited: {still}")
    r["stop_workers_ms"] = (max(exits[p][2] for p in pids.values()) - t_term) / 1e6
    r["stop_first_worker_ms"] = (min(exits[p][2] for p in pids.values()) - t_term) / 1e6
    with open(d.log, errors="replace") as f:
        text = ANSI.sub("", f.read())
    r["limits_on"] = "resource limits are on" in text
    r["notify_socket"] = bool(args.notify)
    r["watchdog_sec"] = args.watchdog_sec if args.notify else 0
    r["notify_messages"] = len(d.notify_msgs)
    r["notify_ready"] = any("READY=1" in m for _, m in d.notify_msgs)
    r["warnings_in_log"] = [l for l in text.splitlines() if " WARN " in l][:5]
    return r


# ---------------------------------------------------------------- report


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = f.readline().split()[1]
    load = open("/proc/loadavg").read().split()[:3]
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "mem_total_kib": int(mem),
        "loadavg_at_end": " ".join(load),
        "nice": os.nice(0),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "KiB":
        return f"{v / 1024:.2f} MiB"
    return f"{v:.2f} ms"


def table(results):
    ns = [r["n"] for r in results]
    head = "| measure | target | " + " | ".join(f"N={n}" for n in ns) + " | verdict (largest N) |"
    rows = [head, "|" + "---|" * (len(ns) + 3)]
    for key, (label, target, unit) in TARGETS.items():
        vals = [r.get(key) for r in results]
        # Targets are stated for 200 instances; judge the largest N.
        big = vals[-1]
        verdict = "-" if big is None else ("met" if big <= target else f"MISSED by {fmt(big - target, unit)}")
        tgt = f"<= {fmt(target, unit)}"
        rows.append(f"| {label} | {tgt} | " + " | ".join(fmt(v, unit) for v in vals) + f" | {verdict} |")
    extra = [
        ("start: broker gate opened -> all exec'd", "start_gate_ms", "ms"),
        ("start: daemon spawn -> gate opened", "gate_after_spawn_ms", "ms"),
        ("start: daemon spawn -> socket ready", "socket_ready_after_spawn_ms", "ms"),
        ("restart latency p10 / p90", "restart_p10_p90", None),
        ("restart latency min / max", "restart_min_max", None),
        ("floor: fork+exec -> main() of the worker from a tiny C parent, median (p10)", "exec_floor", None),
        ("daemon CPU per restart (incl. the process-tree sweep thread)", "restart_cpu_ms", "ms"),
        ("stop: SIGTERM -> last worker got SIGTERM", "stop_workers_ms", "ms"),
        ("daemon VmHWM at the end", "hwm_kib_end", "KiB"),
        ("daemon PSS after start", "pss_kib", "KiB"),
        ("daemon RssAnon / RssFile after start", "rss_split", None),
        ("idle CPU per 30 s, median of the idle windows", "idle_cpu_median_ms", "ms"),
        ("idle CPU in clock ticks (10 ms grain), per 30 s, worst window", "idle_cpu_ticks_ms", "ms"),
        ("memory touched in one idle window (private pages: binary, heap, stacks)",
         "idle_touched_kib", "kB"),
        ("idle wake-ups (context switches) per s", "idle_wakeups_per_s", "n"),
        ("systemd watchdog: WatchdogSec / WATCHDOG=1 pings during the idle windows", "watchdog", None),
        ("floor: the same idle wake-ups in a static C program (bench/idle-floor.c), CPU per 30 s, worst / median",
         "idle_floor", None),
        ("floor: memory it touched in the same window", "idle_floor_touched_kib", "kB"),
        ("floor: its wake-ups (context switches) per s", "idle_floor_wakeups_per_s", "n"),
        ("`clearifyctl status` p90", "status_p90_ms", "ms"),
        ("`clearifyctl status --json` median", "status_json_median_ms", "ms"),
        ("daemon CPU per status call, calls > 1 s apart (median)", "status_cpu_cold_ms", "ms"),
        ("daemon CPU through start", "daemon_cpu_through_start_ms", "ms"),
    ]
    for label, key, unit in extra:
        if key == "restart_p10_p90":
            cells = [f"{r['restart_p10_ms']:.2f} / {r['restart_p90_ms']:.2f} ms" for r in results]
        elif key == "restart_min_max":
            cells = [f"{r['restart_min_ms']:.2f} / {r['restart_max_ms']:.2f} ms" for r in results]
        elif key == "exec_floor":
            cells = [f"{r['exec_floor_median_ms']:.2f} ({r['exec_floor_p10_ms']:.2f}) ms" for r in results]
        elif key == "watchdog":
            cells = [f"{r.get('watchdog_sec', 0)} s / {r.get('idle_watchdog_pings', 0)}" for r in results]
        elif key == "idle_floor":
            cells = [f"{fmt(r.get('idle_floor_cpu_ms'), 'ms')} / {fmt(r.get('idle_floor_cpu_median_ms'), 'ms')}"
                     for r in results]
        elif key == "rss_split":
            cells = [f"{fmt(r['rss_anon_kib'], 'KiB')} / {fmt(r['rss_file_kib'], 'KiB')}" for r in results]
        elif unit == "kB":
            cells = [f"{r[key]} kB ({r[key] // 4} pages)" if key in r else "-" for r in results]
        elif unit == "n":
            cells = [f"{r.get(key, 0):.1f}" for r in results]
        else:
            cells = [fmt(r.get(key), unit) for r in results]
        rows.append(f"| {label} | | " + " | ".join(cells) + " | |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--daemon", required=True)
    p.add_argument("--ctl", required=True)
    p.add_argument("--worker", required=True)
    p.add_argument("--work", required=True, help="scratch directory (mode 755)")
    p.add_argument("--out", required=True)
    p.add_argument("--idle", type=float, default=30.0)
    p.add_argument("--idle-windows", type=int, default=3,
                   help="idle measurements in a row; the headline is the worst")
    p.add_argument("--idle-floor", default=None,
                   help="the idle-floor program (bench/idle-floor.c), run beside the daemon")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--status-runs", type=int, default=200)
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--cold-status-runs", type=int, default=5)
    p.add_argument("--notify", type=int, default=1,
                   help="1: give the daemon a NOTIFY_SOCKET, as systemd does")
    p.add_argument("--watchdog-sec", type=int, default=30,
                   help="with --notify 1: WATCHDOG_USEC as the packaged unit's WatchdogSec (0: off)")
    p.add_argument("--gap", type=float, default=0.1)
    p.add_argument("ns", type=int, nargs="+")
    args = p.parse_args()

    redis_pid, port = start_redis(args.work)
    results = []
    try:
        for n in args.ns:
            r = bench_n(args, n, port)
            results.append(r)
            with open(os.path.join(args.out, f"results-n{n}.json"), "w") as f:
                json.dump(r, f, indent=2)
    finally:
        os.kill(redis_pid, signal.SIGTERM)
        os.waitpid(redis_pid, 0)
    mach = machine()
    text = "\n".join(f"{k}: {v}" for k, v in mach.items()) + "\n\n" + table(results) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "machine.json"), "w") as f:
        json.dump(mach, f, indent=2)
    print(text)


if __name__ == "__main__":
    main()

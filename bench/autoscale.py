#!/usr/bin/env python3
"""Run M: the CPU cost of autoscaling (issue 15). Python standard library only.

  cargo build --release --locked
  python3 bench/autoscale.py --daemon target/release/clearify-workerd \
      --ctl target/release/clearifyctl [--groups 50] [--window 30] [--rounds 2]

Starts a redis-server on a free 127.0.0.1 port and the real daemon with
GROUPS groups of one trivial worker each (bench/trivial-worker.c, built
here with gcc), `[broker] check_interval = "1s"`, fleet publishing on.
Two configs, run in turns (fixed, autoscale, fixed, autoscale, ...) so
that the machine's noise falls on both alike:

  fixed      every group `instances = 1`
  autoscale  every group `autoscale = { min = 1, max = 4 }`: no backlog,
             so each check decides "steady" for every group; the check
             includes the memory sample (MemAvailable, each group's
             memory.events and memory.pressure) and the share

For each run it waits until every worker runs, lets it settle, and sums
the daemon's CPU time (sum_exec_runtime of all its threads) over WINDOW
seconds. The cost of one check (GROUPS decisions) is the difference of
the medians divided by the checks in the window; per decision, that
divided by GROUPS. Target: <= 0.1 ms per decision at 50 groups.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# The harness's own helpers (bench/bench.py): a free port, Redis's PING,
# the CPU time of all a process's threads.
from bench import cpu_ns, free_port, redis_ping  # noqa: E402
TARGET_MS_PER_DECISION = 0.1


def wait(pred, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    sys.exit(f"bench: {what} not ready after {timeout} s")


def config(work, port, worker, groups, autoscale):
    user = 'user = "nobody"' if os.geteuid() == 0 else ""
    out = [
        f'[daemon]\nsocket = "{work}/control.sock"\ndevice_id = "bench"\n',
        f'[broker]\nurl = "redis://127.0.0.1:{port}/0"\ncheck_interval = "1s"\n',
        f'[celery]\napp = "x"\ncommand = "{worker}"\nworkdir = "{work}"\n{user}\n',
        '[fleet]\ninterval = "10s"\n',
        '[defaults]\nstop_timeout = "5s"\nheartbeat_timeout = "0s"\nstall_timeout = "0s"\n'
        f'env = {{ BENCH_RECORD = "{work}/records.txt" }}\n',
    ]
    for i in range(groups):
        line = "autoscale = { min = 1, max = 4 }" if autoscale else "instances = 1"
        out.append(f'[group.g{i}]\nqueues = ["q{i}"]\n{line}\n')
    return "\n".join(out)


def run_once(args, work, port, worker, autoscale):
    with open(os.path.join(work, "workers.toml"), "w") as f:
        f.write(config(work, port, worker, args.groups, autoscale))
    fd = os.open(os.path.join(work, "records.txt"), os.O_CREAT | os.O_WRONLY, 0o666)
    os.close(fd)
    os.chmod(os.path.join(work, "records.txt"), 0o666)
    log = open(os.path.join(work, f"daemon-{'auto' if autoscale else 'fixed'}.log"), "w")
    daemon = subprocess.Popen(
        [args.daemon, "--config", os.path.join(work, "workers.toml"), "--log-target", "stderr"],
        stdout=subprocess.DEVNULL, stderr=log)
    ctl = [args.ctl, "--socket", os.path.join(work, "control.sock")]

    def running():
        r = subprocess.run(ctl + ["status", "--json"], capture_output=True)
        if r.returncode != 0:
            return False
        s = json.loads(r.stdout)
        states = [i["state"] for g in s["groups"] for i in g["instances"]]
        return len(states) == args.groups and all(x == "running" for x in states)

    try:
        wait(running, "every worker running")
        if autoscale:
            s = json.loads(subprocess.run(ctl + ["status", "--json"], check=True,
                                          capture_output=True).stdout)
            states = {g["autoscale"]["state"] for g in s["groups"]}
            if states != {"steady"}:
                sys.exit(f"bench: the groups do not decide 'steady': {states}")
        time.sleep(args.settle)
        before = cpu_ns(daemon.pid)[0]
        t0 = time.monotonic()
        time.sleep(args.window)
        spent = cpu_ns(daemon.pid)[0] - before
        secs = time.monotonic() - t0
        return spent / 1e6, secs
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--daemon", required=True)
    p.add_argument("--ctl", required=True)
    p.add_argument("--groups", type=int, default=50)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    for tool in ("gcc", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is required")
    work = tempfile.mkdtemp(prefix="clearify-bench-autoscale-")
    os.chmod(work, 0o755)
    worker = os.path.join(work, "trivial-worker")
    subprocess.run(["gcc", "-O2", "-static", "-o", worker,
                    os.path.join(HERE, "trivial-worker.c")], check=True)
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    try:
        wait(lambda: redis_ping(port), "redis-server")
        runs = {"fixed": [], "autoscale": []}
        for _ in range(args.rounds):
            for mode in ("fixed", "autoscale"):
                ms, secs = run_once(args, work, port, worker, mode == "autoscale")
                runs[mode].append(ms / secs)  # CPU ms per second = per check
                print(f"{mode}: {ms:.1f} ms CPU in {secs:.1f} s", file=sys.stderr)
        fixed = statistics.median(runs["fixed"])
        auto = statistics.median(runs["autoscale"])
        per_check = auto - fixed
        res = {
            "groups": args.groups,
            "window_s": args.window,
            "rounds": args.rounds,
            "fixed_cpu_ms_per_s": [round(x, 3) for x in runs["fixed"]],
            "autoscale_cpu_ms_per_s": [round(x, 3) for x in runs["autoscale"]],
            "ms_per_check": round(per_check, 4),
            "ms_per_decision": round(per_check / args.groups, 5),
            "load_avg_1m": os.getloadavg()[0],
        }
        print(json.dumps(res, indent=2))
        ok = res["ms_per_decision"] <= TARGET_MS_PER_DECISION
        print("target (<= 0.1 ms per decision): " + ("met" if ok else "MISSED"))
    finally:
        redis.send_signal(signal.SIGTERM)
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

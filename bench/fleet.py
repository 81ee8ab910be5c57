#!/usr/bin/env python3
"""Run K: fleet reads (issue 14). Python standard library only.

  cargo build --release --locked
  python3 bench/fleet.py --daemon target/release/clearify-workerd \
      --ctl target/release/clearifyctl [--devices 500] [--runs 50]

Starts a redis-server on a free 127.0.0.1 port and writes DEVICES device
records of the test publisher's shape (tests/support/fleet.rs, `realistic`:
4 groups, every optional field filled; --per-group instances each, 2 by
default as the issue's Pi with 8 instances; instances as model::fleet's
InstanceRow arrays, as the daemon writes them) with
`ZADD clearify:fleet <TIME> <id>` and `SET clearify:fleet:<id> <json> EX`,
starts the real daemon (no groups, `[fleet] publish = false`) and measures:

  fleet      `clearifyctl fleet` whole-process wall time, median and p90
  queues     `clearifyctl fleet queues` the same
  floor      `clearifyctl version` the same (a round trip without Redis)
  memory     Redis bytes per device: MEMORY USAGE of a record key, plus the
             set's MEMORY USAGE divided by its members

and checks the answer: every device listed, nothing skipped. Targets:
fleet <= 200 ms, queues <= 300 ms, <= 4 KiB per device.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = {"fleet_median_ms": 200.0, "queues_median_ms": 300.0, "bytes_per_device": 4096.0}


def resp(args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Redis:
    """A minimal RESP2 client: enough for TIME, ZADD, SET, MEMORY USAGE."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def reply(self):
        line = self.f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:n]
            return data.decode(errors="replace")
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected reply {line!r}")

    def pipeline(self, commands):
        self.s.sendall(b"".join(resp(c) for c in commands))
        return [self.reply() for _ in commands]

    def call(self, *args):
        return self.pipeline([args])[0]


def instance(group, i):
    # model::fleet::InstanceRow: [id, state, pid, uptime_secs, restarts,
    # last_exit, memory_bytes, cpu_percent, heartbeat_age_secs]
    return [f"{group}-{i}", "running", 10000 + i, 86400 + i, 0, None, 50 << 20, 3.5, 1.2]


def group(name, queues, n, tpm):
    return {
        "name": name, "queues": queues, "concurrency": 2, "total": n, "running": n,
        "crash_looping": 0, "restarts": 1, "memory_bytes": n * (50 << 20),
        "memory_max": 512 << 20, "processed": 1234, "active": 1, "tasks_per_minute": tpm,
        "instances": [instance(name, i) for i in range(1, n + 1)],
    }


def realistic(device_id, version, per_group=2):
    """tests/support/fleet.rs `realistic`, field for field."""
    return {
        "schema": 1, "device_id": device_id, "version": version,
        "hostname": f"{device_id}.local", "arch": "arm64", "kernel": "6.6.31+rpt-rpi-v8",
        "boot_time": 1760000000, "uptime_secs": 3 * 86400, "interval_secs": 10.0,
        "run": "running", "rss_bytes": 9 << 20, "load": [0.31, 0.25, 0.2],
        "mem_total_bytes": 4 << 30, "mem_available_bytes": 3 << 30, "limits": True,
        "broker_rtt_ms": 1.4, "restarts_last_hour": 0,
        "groups": [
            group("text", ["text_processing"], per_group, 42.0),
            group("images", ["images", "thumbnails"], per_group, 12.5),
            group("billing", ["payments", "webhooks"], per_group, 3.0),
            group("default", ["celery"], per_group, 20.0),
        ],
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    sys.exit(f"bench: timed out waiting for {what}")


def timed(argv, runs):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        out.append((time.perf_counter() - t) * 1000)
    return out


def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--daemon", required=True)
    p.add_argument("--ctl", required=True)
    p.add_argument("--devices", type=int, default=500)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--per-group", type=int, default=2,
                   help="instances per group (4 groups); the issue's Pi has 2, i.e. 8 in all")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="clearify-bench-fleet-")
    os.chmod(work, 0o755)
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL,
    )
    daemon = None
    try:
        wait(lambda: _ping(port), "redis-server")
        r = Redis(port)
        secs, micros = r.call("TIME")
        now = int(secs) + int(micros) / 1e6
        cmds, sizes = [], []
        for i in range(args.devices):
            # 4 device groups of 125, as a real fleet: a few versions.
            dev = f"pi-{i // 125}-{i % 125:03d}"
            rec = json.dumps(realistic(dev, "0.4.0" if i % 50 else "0.3.9", args.per_group),
                             separators=(",", ":")).encode()
            sizes.append(len(rec))
            cmds.append(("ZADD", "clearify:fleet", f"{now - (i % 10):.6f}", dev))
            cmds.append(("SET", f"clearify:fleet:{dev}", rec, "EX", 86400))
        r.pipeline(cmds)
        record_bytes = int(r.call("MEMORY", "USAGE", "clearify:fleet:pi-0-000"))
        set_bytes = int(r.call("MEMORY", "USAGE", "clearify:fleet"))
        members = int(r.call("ZCARD", "clearify:fleet"))
        per_device = record_bytes + set_bytes / members

        sock = os.path.join(work, "control.sock")
        cfg = os.path.join(work, "workers.toml")
        with open(cfg, "w") as f:
            f.write(f'[daemon]\nsocket = "{sock}"\ndevice_id = "bench"\n\n'
                    f'[broker]\nurl = "redis://127.0.0.1:{port}/0"\n\n[fleet]\npublish = false\n')
        daemon = subprocess.Popen([args.daemon, "--config", cfg, "--log-target", "stderr"],
                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "daemon.log"), "w"))
        ctl = [args.ctl, "--socket", sock]
        wait(lambda: subprocess.run(ctl + ["version"], capture_output=True).returncode == 0, "the daemon")
        view = json.loads(subprocess.run(ctl + ["fleet", "--json"], check=True, capture_output=True).stdout)
        if len(view["devices"]) != args.devices or view["skipped"]:
            sys.exit(f"bench: the answer is wrong: {len(view['devices'])} devices, skipped {view['skipped'][:3]}")
        queues = json.loads(subprocess.run(ctl + ["fleet", "queues", "--json"], check=True, capture_output=True).stdout)
        timed(ctl + ["fleet"], 3)  # warm up
        fleet_ms = timed(ctl + ["fleet"], args.runs)
        queues_ms = timed(ctl + ["fleet", "queues"], args.runs)
        # The floor: a clearifyctl round trip that reads nothing from Redis.
        version_ms = timed(ctl + ["version"], args.runs)
        res = {
            "devices": args.devices,
            "instances_per_device": 4 * args.per_group,
            "runs": args.runs,
            "record_json_bytes": statistics.median(sizes),
            "record_memory_usage_bytes": record_bytes,
            "set_memory_usage_bytes": set_bytes,
            "bytes_per_device": round(per_device),
            "queues": len(queues["queues"]),
            "fleet_median_ms": round(statistics.median(fleet_ms), 1),
            "fleet_p90_ms": round(p90(fleet_ms), 1),
            "queues_median_ms": round(statistics.median(queues_ms), 1),
            "queues_p90_ms": round(p90(queues_ms), 1),
            "version_median_ms": round(statistics.median(version_ms), 1),
            "load_avg_1m": os.getloadavg()[0],
        }
        print(json.dumps(res, indent=2))
        bad = [k for k, t in TARGETS.items() if res[k] > t]
        print("targets: " + ("all met" if not bad else "MISSED " + ", ".join(bad)))
    finally:
        for proc in (daemon, redis):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def _ping(port):
    try:
        return Redis(port).call("PING") == "PONG"
    except OSError:
        return False


if __name__ == "__main__":
    main()

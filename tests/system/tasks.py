#!/usr/bin/env python3
"""Send tasks with the example app and check their results (run in the guest
from the app directory). Exits non-zero, saying why, on any wrong or missing
result.

  tasks.py batch QUEUE COUNT [--timeout S]   send COUNT tasks suited to QUEUE, check every result
  tasks.py call TASK QUEUE JSON_ARGS [--timeout S] [--expect JSON]
                                             one task; prints its result as JSON
  tasks.py send TASK QUEUE JSON_ARGS         send only; prints the task id
  tasks.py result TASK_ID [--timeout S] [--expect JSON]
                                             wait for a stored result
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, ".")
from demo.celery_app import app  # noqa: E402


def batch(queue, count, timeout):
    sent = []
    for i in range(count):
        if queue == "text_processing":
            text = f"task {i} of {count} on {queue}"
            r = app.send_task("demo.process_text", args=[text], queue=queue)
            expect = {"words": len(text.split()), "upper": text.upper()}
        elif queue == "payments":
            r = app.send_task("demo.charge", args=[100 + i], queue=queue)
            expect = {"charged": 100 + i}
        elif queue == "webhooks":
            r = app.send_task("demo.webhook", args=[f"event-{i}"], queue=queue)
            expect = {"delivered": f"event-{i}"}
        else:
            r = app.send_task("demo.add", args=[i, 1000], queue=queue)
            expect = i + 1000
        sent.append((r, expect))
    deadline = time.monotonic() + timeout
    bad = []
    for r, expect in sent:
        left = max(0.1, deadline - time.monotonic())
        try:
            got = r.get(timeout=left)
        except Exception as e:  # timeout or task failure
            bad.append(f"{r.id}: {type(e).__name__}: {e}")
            continue
        if isinstance(expect, dict):
            sub = {k: got.get(k) for k in expect} if isinstance(got, dict) else got
            if sub != expect:
                bad.append(f"{r.id}: expected {expect}, got {got}")
        elif got != expect:
            bad.append(f"{r.id}: expected {expect}, got {got}")
    if bad:
        print(f"FAIL: {len(bad)} of {count} tasks on {queue} wrong or missing:", file=sys.stderr)
        for b in bad[:20]:
            print("  " + b, file=sys.stderr)
        sys.exit(1)
    print(f"ok: {count} tasks on {queue} executed with correct results")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("batch")
    b.add_argument("queue")
    b.add_argument("count", type=int)
    b.add_argument("--timeout", type=float, default=300)
    c = sub.add_parser("call")
    c.add_argument("task")
    c.add_argument("queue")
    c.add_argument("args")
    c.add_argument("--timeout", type=float, default=120)
    c.add_argument("--expect")
    s = sub.add_parser("send")
    s.add_argument("task")
    s.add_argument("queue")
    s.add_argument("args")
    r = sub.add_parser("result")
    r.add_argument("task_id")
    r.add_argument("--timeout", type=float, default=120)
    r.add_argument("--expect")
    a = p.parse_args()
    # run.sh --arch arm64 (slower under TCG) multiplies every wait.
    if hasattr(a, "timeout"):
        a.timeout *= int(os.environ.get("SYSTEST_TIME_FACTOR", "1"))

    if a.cmd == "batch":
        batch(a.queue, a.count, a.timeout)
        return
    if a.cmd == "send":
        res = app.send_task(a.task, args=json.loads(a.args), queue=a.queue)
        print(res.id)
        return
    if a.cmd == "call":
        res = app.send_task(a.task, args=json.loads(a.args), queue=a.queue)
    else:
        res = app.AsyncResult(a.task_id)
    try:
        got = res.get(timeout=a.timeout)
    except Exception as e:
        print(f"FAIL: task {res.id}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(got))
    if a.expect is not None and got != json.loads(a.expect):
        print(f"FAIL: task {res.id}: expected {a.expect}, got {json.dumps(got)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""A small Celery app used by the demo and the tests.

It stands in for the user's `app.core.celery_app`: the broker URL comes from
the environment (CELERY_BROKER_URL, as in the user's .env file), and the
tasks exercise what the supervisor has to get right: output, errors, long
runs (warm shutdown), memory hogs (cgroup limits) and forks (pids limit).
"""

import json
import os
import sys
import time

from celery import Celery
from celery.utils.log import get_task_logger

broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
backend = os.environ.get("CELERY_RESULT_BACKEND", broker)

app = Celery("demo", broker=broker, backend=backend)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    worker_hijack_root_logger=True,
)

log = get_task_logger(__name__)


@app.task(name="demo.process_text")
def process_text(text):
    """What the user's text_processing queue does, in miniature."""
    words = len(text.split())
    print(f"process_text: {words} words: {text[:60]}", flush=True)
    return {"words": words, "upper": text.upper(), "pid": os.getpid()}


@app.task(name="demo.add")
def add(a, b):
    return a + b


@app.task(name="demo.charge")
def charge(amount_cents):
    """Stands in for the payments queue."""
    print(f"charge: {amount_cents} cents", flush=True)
    return {"charged": amount_cents}


@app.task(name="demo.webhook")
def webhook(event):
    print(f"webhook: {event}", flush=True)
    return {"delivered": event}


@app.task(name="demo.sleep")
def sleep(seconds, tag="sleep"):
    """A long task: warm shutdown must let it finish."""
    print(f"sleep {tag}: start {seconds}s", flush=True)
    time.sleep(float(seconds))
    print(f"sleep {tag}: done", flush=True)
    return {"slept": seconds, "tag": tag}


@app.task(name="demo.tally", bind=True)
def tally(self, key, seconds=0):
    """Appends {id, node, start} to the Redis list `key:started`, sleeps,
    then counts this run in the hash `key` (field: the task id) and appends
    {id, node, start, end} to the list `key:runs`: the autoscale tests prove
    that every task started and ran exactly once, and where."""
    r = app.backend.client
    run = {"id": self.request.id, "node": self.request.hostname, "start": time.time()}
    r.rpush(f"{key}:started", json.dumps(run))
    time.sleep(float(seconds))
    run["end"] = time.time()
    r.pipeline().hincrby(key, self.request.id, 1).rpush(f"{key}:runs", json.dumps(run)).execute()
    print(f"tally {self.request.id}: done", flush=True)
    return run


@app.task(name="demo.log_error")
def log_error(message):
    """Logs at ERROR level (journald PRIORITY=3) and prints to stderr."""
    log.error("log_error: %s", message)
    print(f"stderr: {message}", file=sys.stderr, flush=True)
    return message


@app.task(name="demo.fail")
def fail(message):
    """Raises, so Celery logs a traceback."""
    raise RuntimeError(message)


@app.task(name="demo.allocate")
def allocate(megabytes):
    """Allocates and touches memory: an OOM test under memory_max."""
    chunks = []
    for _ in range(int(megabytes)):
        chunks.append(bytearray(1024 * 1024))
    return len(chunks)


@app.task(name="demo.fork_bomb")
def fork_bomb(limit=10000):
    """Forks until fork fails; the pids limit must stop it."""
    children = []
    error = None
    try:
        for _ in range(int(limit)):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
    except OSError as e:
        error = str(e)
    for pid in children:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except OSError:
            pass
    return {"forked": len(children), "error": error}

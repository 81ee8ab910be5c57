"""Send tasks to the example app and print their results, as JSON lines.

    python send_tasks.py call TASK ARGS_JSON QUEUE [TIMEOUT]   send, wait, print the result
    python send_tasks.py send TASK ARGS_JSON QUEUE             send, print the task id
    python send_tasks.py get TASK_ID [TIMEOUT]                  wait for a result, print it
    python send_tasks.py many TASK ARGS_JSON QUEUE COUNT [TIMEOUT]
                                                                 send COUNT tasks, wait for all
    python send_tasks.py burst TASK ARGS_JSON QUEUE COUNT      send COUNT tasks, print their ids

The broker is CELERY_BROKER_URL (the same variable the workers read).
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_app"))

from demo.celery_app import app  # noqa: E402


def send(task, args, queue):
    return app.send_task(task, args=json.loads(args), queue=queue)


def main(argv):
    cmd = argv[1]
    if cmd == "call":
        timeout = float(argv[5]) if len(argv) > 5 else 30
        r = send(argv[2], argv[3], argv[4])
        print(json.dumps({"id": r.id, "result": r.get(timeout=timeout)}))
    elif cmd == "send":
        print(send(argv[2], argv[3], argv[4]).id)
    elif cmd == "get":
        timeout = float(argv[3]) if len(argv) > 3 else 30
        r = app.AsyncResult(argv[2])
        print(json.dumps({"id": r.id, "result": r.get(timeout=timeout)}))
    elif cmd == "many":
        count = int(argv[5])
        timeout = float(argv[6]) if len(argv) > 6 else 60
        results = [send(argv[2], argv[3], argv[4]) for _ in range(count)]
        for r in results:
            print(json.dumps({"id": r.id, "result": r.get(timeout=timeout)}))
    elif cmd == "burst":
        for _ in range(int(argv[5])):
            print(send(argv[2], argv[3], argv[4]).id)
    else:
        sys.exit(f"unknown command {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)

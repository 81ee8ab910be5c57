#!/usr/bin/env bash
# The demo: builds clearify-workerd, starts a local Redis and the daemon in
# the foreground with the example Celery app, sends a few tasks, shows them
# processed and the status, then stops the daemon (warm shutdown).
#
#   scripts/demo.sh            run the demo and stop
#   DEMO_KEEP=1 scripts/demo.sh    keep the daemon running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

scripts/setup-deps.sh
echo "== building clearify-workerd (release)"
cargo build --release --locked --bins
bin="$repo/target/release"

dir=$(mktemp -d /tmp/clearify-demo.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
broker="redis://127.0.0.1:$port/0"
echo "== starting redis-server on 127.0.0.1:$port"
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
pids+=($!)

user_line=""
if [ "$(id -u)" -eq 0 ]; then user_line='user = "nobody"   # the demo runs as root; workers never do'; fi
printf 'CELERY_BROKER_URL=%s\nCELERY_RESULT_BACKEND=%s\n' "$broker" "$broker" >"$dir/worker.env"
sed -e "s|@DIR@|$dir|g" -e "s|@BROKER@|$broker|g" -e "s|@CELERY@|$repo/.venv/bin/celery|g" \
    -e "s|@APP@|$repo/examples/demo_app|g" -e "s|@USER@|$user_line|" \
    examples/workers.demo.toml >"$dir/workers.toml"

echo "== clearify-workerd --check"
"$bin/clearify-workerd" --config "$dir/workers.toml" --check

echo "== starting clearify-workerd in the foreground (its log and every worker line follow)"
"$bin/clearify-workerd" --config "$dir/workers.toml" --log-target stderr &
daemon=$!
pids+=("$daemon")
ctl() { "$bin/clearifyctl" --socket "$dir/control.sock" "$@"; }

# Wait until every worker is consuming (its Celery heartbeat is seen).
for _ in $(seq 1 300); do
    if ctl status --json 2>/dev/null | .venv/bin/python -c '
import json, sys
s = json.load(sys.stdin)
i = [i for g in s["groups"] for i in g["instances"]]
sys.exit(0 if i and all(x["state"] == "running" and x["heartbeat_age_secs"] is not None for x in i) else 1)'; then
        break
    fi
    sleep 0.2
done
echo; echo "== clearifyctl status"; ctl status

export CELERY_BROKER_URL="$broker"
echo; echo "== sending tasks"
.venv/bin/python examples/send_tasks.py many demo.process_text '["Test worker distribuito"]' text_processing 5
.venv/bin/python examples/send_tasks.py call demo.charge '[1250]' payments
.venv/bin/python examples/send_tasks.py call demo.webhook '["order.paid"]' webhooks

sleep 2.5   # one heartbeat, so status shows the processed counts
echo; echo "== clearifyctl status (processed counts come from the workers' heartbeats)"; ctl status
echo; echo "== clearifyctl logs text -n 5"; ctl logs text -n 5

echo; echo "== autoscaling: 60 tasks of 0.5 s on queue bulk (group bulk: 0..3 instances, one per 10 waiting)"
.venv/bin/python examples/send_tasks.py many demo.sleep '[0.5, "bulk"]' bulk 60 180 >"$dir/bulk.out" &
sender=$!
pids+=("$sender")
last=""
while kill -0 "$sender" 2>/dev/null; do
    line=$(ctl status --json bulk | .venv/bin/python -c '
import json, sys
a = json.load(sys.stdin)["groups"][0]["autoscale"]
print("bulk: {current} instance(s), desired {desired} ({state}: {reason})".format(**a))' || true)
    if [ -n "$line" ] && [ "$line" != "$last" ]; then echo "$line"; last=$line; fi
    sleep 0.5
done
wait "$sender"
echo "== $(grep -c '"slept": 0.5' "$dir/bulk.out") of 60 bulk tasks done"
echo; echo "== clearifyctl status bulk"; ctl status bulk

if [ "${DEMO_KEEP:-0}" = 1 ]; then
    echo; echo "== running; try: $bin/clearifyctl --socket $dir/control.sock status   (Ctrl-C stops)"
    wait "$daemon" || true
    exit 0
fi
echo; echo "== stopping clearify-workerd (SIGTERM: warm shutdown)"
kill -TERM "$daemon"
code=0
wait "$daemon" || code=$?
echo "== clearify-workerd exited with $code"
exit "$code"

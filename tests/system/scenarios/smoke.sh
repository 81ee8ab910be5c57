#!/bin/bash
# Smoke: the VM is a real systemd + journald + cgroup v2 Debian 12 with Redis
# and Celery, and the example app imports. Needs no .deb. It also proves the
# harness's second boot on a kept disk (what the gating scenario relies on).
# systest-timeout: 300
. "$SYSTEST_LIB"

if [ "$SYSTEST_PHASE" = 2 ]; then
    step "boot 2 on the same disk"
    assert_eq "$(cat /var/lib/systest-smoke-marker 2>/dev/null)" "$(cat "$SYSTEST_RESULTS/smoke-marker")" "marker written on the disk in boot 1"
    assert_ge "$(journalctl --list-boots --no-pager | grep -Ec "^ *-?[0-9]+ [0-9a-f]{32} ")" 2 "boots in the persistent journal"
    assert_eq "$(systemctl is-active redis-server || true)" inactive "redis-server after reboot (disabled)"
    assert_eq "$(cat /proc/1/comm)" systemd "/proc/1/comm"
    exit 0
fi

step "PID 1 is systemd"
assert_eq "$(cat /proc/1/comm)" systemd "/proc/1/comm"
assert_eq "$(readlink -f /proc/1/exe)" /usr/lib/systemd/systemd "PID 1 executable"

step "cgroup v2 (unified) at /sys/fs/cgroup"
assert_eq "$(stat -fc %T /sys/fs/cgroup)" cgroup2fs "file system type of /sys/fs/cgroup"
controllers=$(cat /sys/fs/cgroup/cgroup.controllers)
for c in cpu memory pids; do assert_contains " $controllers " " $c " "root cgroup.controllers"; done

step "journald works"
tag="systest-smoke-$$-$RANDOM"
logger -t systest-smoke "$tag"
wait_for 20 "journalctl finds the logger line" sh -c "journalctl -b --no-pager -t systest-smoke | grep -q '$tag'"
logger -t systest-smoke -p user.err "$tag-err"
wait_for 20 "the error line has PRIORITY=3" sh -c "journalctl -b --no-pager -t systest-smoke PRIORITY=3 | grep -q '$tag-err'"

step "redis-server is disabled in the image, starts with systemctl, answers PING"
assert_eq "$(systemctl is-enabled redis-server 2>/dev/null || true)" disabled "redis-server enablement"
assert_fails "redis is not running before the scenario starts it" redis_ping
start_redis
assert_eq "$(redis-cli -h 127.0.0.1 ping)" PONG "redis-cli ping"

step "Celery"
version=$(python3 -m celery --version)
assert_contains "$version" "5." "python3 -m celery --version"
assert_contains "$(/usr/local/bin/celery --version)" "5." "the /usr/local/bin/celery wrapper"

step "the example app imports (from the share and installed)"
(cd "$DEMO_SRC" && python3 -c 'import demo.celery_app') || fail "cannot import demo.celery_app from the share"
install_demo_app

step "a Celery worker of the example app executes a task via Redis"
(cd "$APP_DIR" && exec setpriv --reuid=nobody --regid=nogroup --clear-groups \
    env HOME=/tmp python3 -m celery -A demo.celery_app worker -Q smoke -c 1 -n smoke@systest --loglevel=info) \
    >/root/worker.log 2>&1 &
worker=$!
wait_for 240 "the worker answers a Celery ping (lib.sh celery_ready)" celery_ready smoke@systest
out=$(tasks call demo.add smoke '[2, 40]' --timeout 120 --expect 42) || { cat /root/worker.log; fail "demo.add via a real worker"; }
assert_eq "$out" 42 "demo.add(2, 40)"
tasks batch smoke 20 --timeout 240 || { tail -20 /root/worker.log; fail "20 tasks via tasks.py batch"; }
id=$(tasks send demo.sleep smoke '[1, "s"]')
assert_eq "$(tasks result "$id" --timeout 120)" '{"slept": 1, "tag": "s"}' "tasks.py send + result"
assert_fails "tasks.py reports a failing task" tasks call demo.fail smoke '["x"]' --timeout 60
assert_eq "$(proc_user "$worker")" nobody "user of the worker (the subshell execs setpriv, env, python3)"
assert_ge "$(pgrep -u nobody -f 'celery -A demo.celery_app worker' | wc -l)" 2 "worker processes as nobody (main + pool)"
kill -TERM "$worker"
wait_for 60 "the worker exits on SIGTERM" sh -c "! kill -0 $worker"

step "lib.sh status helpers on a synthetic status document"
cat >"$STATUS_FILE" <<'JSON'
{"daemon": {"version": "0", "pid": 1, "uptime_secs": 0, "device_id": "systest", "config": "/x",
            "broker": {"state": "ok", "url": "redis://127.0.0.1:6379/0", "error": null}, "summary": "2/2 workers running"},
 "groups": [{"name": "text", "queues": [{"name": "text_processing", "backlog": 0}],
             "instances": [{"id": "text-1", "node": "text-1@systest", "state": "running", "pid": 42, "restarts": 0, "last_exit": null}]}]}
JSON
assert_eq "$(jq_py 'inst("text-1")["node"]')" text-1@systest "jq_py inst()"
assert_eq "$(jq_py 'inst("text-1")["last_exit"]')" null "jq_py null"
assert_eq "$(jq_py '[q["name"] for q in group("text")["queues"]]')" '["text_processing"]' "jq_py group()"
assert_fails "jq_py on a missing instance" jq_py 'inst("nope-1")'

step "nothing failed during boot"
assert_eq "$(systemctl --failed --no-legend --plain | wc -l)" 0 "failed units"

step "ask for a second boot on this disk"
echo "smoke-$RANDOM$RANDOM" | tee /var/lib/systest-smoke-marker >"$SYSTEST_RESULTS/smoke-marker"
sync
request_next_boot

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
out=$(tasks call demo.add smoke '[2, 40]' --timeout 120 --expect 42) || { cat /root/worker.log; fail "demo.add via a real worker"; }
assert_eq "$out" 42 "demo.add(2, 40)"
kill -TERM "$worker"
wait_for 60 "the worker exits on SIGTERM" sh -c "! kill -0 $worker"

step "nothing failed during boot"
assert_eq "$(systemctl --failed --no-legend --plain | wc -l)" 0 "failed units"

step "ask for a second boot on this disk"
echo "smoke-$RANDOM$RANDOM" | tee /var/lib/systest-smoke-marker >"$SYSTEST_RESULTS/smoke-marker"
sync
request_next_boot

#!/bin/bash
# 8. Warm stop: while a 20 s task runs, systemctl stop waits for it to
# finish and its result is stored. Afterwards no process is left in the
# unit's cgroup.
# systest-timeout: 600
. "$SYSTEST_LIB"

setup_service
cg=/sys/fs/cgroup$(unit_prop ControlGroup)
tag="warm-$RANDOM"
id=$(tasks send demo.sleep text_processing "[20, \"$tag\"]") || fail "sending demo.sleep"
wait_for 120 "the 20 s task started" sh -c \
    "journalctl -u $UNIT -b --no-pager -o cat | grep -q 'sleep $tag: start'"
t_started=$(now_ms)

step "systemctl stop while the task runs"
systemctl stop "$UNIT" || fail "systemctl stop failed"
t_stopped=$(now_ms)
took=$(( (t_stopped - t_started) / 1000 ))
note "stop returned $took s after the task started"
[ "$took" -ge 15 ] || fail "systemctl stop returned after $took s: it did not wait for the 20 s task"
assert_eq "$(unit_prop ActiveState)" inactive "ActiveState after stop"
assert_eq "$(unit_prop Result)" success "unit Result after stop"

step "the task finished and its result is stored"
assert_contains "$(journalctl -u "$UNIT" -b --no-pager -o cat)" "sleep $tag: done" "journal"
assert_eq "$(tasks result "$id" --timeout 30)" "{\"slept\": 20, \"tag\": \"$tag\"}" "stored result"

step "no process left"
if [ -d "$cg" ]; then
    assert_eq "$(cgroup_pids "$cg" | wc -l)" 0 "processes left in $cg"
fi
assert_fails "no process of the clearify user" pgrep -u clearify

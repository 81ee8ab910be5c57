#!/bin/bash
# 5. Limits: the text group has memory_max = "200M"; a task allocating 400 MB
# is OOM-killed inside that group only, the worker restarts, status says
# oom-killed, the other group and the daemon are unaffected. pids_max stops a
# fork bomb.
# systest-timeout: 900
. "$SYSTEST_LIB"

PIDS_MAX=100
setup_service "memory_max = \"200M\"
pids_max = $PIDS_MAX"
cg=/sys/fs/cgroup$(unit_prop ControlGroup)

step "the limits are in the text group's cgroup"
assert_eq "$(cat "$cg/text/memory.max")" $((200 * 1024 * 1024)) "text/memory.max"
assert_eq "$(cat "$cg/text/pids.max")" "$PIDS_MAX" "text/pids.max"
assert_eq "$(cat "$cg/text/text-1/memory.oom.group")" 1 "text/text-1/memory.oom.group"
assert_eq "$(cat "$cg/billing/memory.max")" max "billing/memory.max"
assert_contains " $(cat "$cg/cgroup.subtree_control") " " memory " "unit subtree_control"
assert_contains " $(cat "$cg/cgroup.subtree_control") " " pids " "unit subtree_control"

status_json >/dev/null
text_pid=$(jq_py 'inst("text-1")["pid"]')
text_restarts=$(jq_py 'inst("text-1")["restarts"]')
billing_pid=$(jq_py 'inst("billing-1")["pid"]')
daemon_pid=$(unit_prop MainPID)
oom0=$(sed -n 's/^oom_kill //p' "$cg/text/memory.events")

step "a 400 MB allocation in the text group is OOM-killed"
tasks send demo.allocate text_processing '[400]' >/dev/null || fail "sending demo.allocate"
oom_seen() { [ "$(sed -n 's/^oom_kill //p' "$cg/text/memory.events")" -gt "$oom0" ]; }
wait_for 180 "oom_kill counted in text/memory.events" oom_seen
restarted() { p=$(instance_field text-1 pid) && [ "$p" != "$text_pid" ] && [ "$p" != null ] && instance_running text-1; }
wait_for 90 "text-1 restarted after the OOM kill" restarted
status_json >/dev/null
assert_gt "$(jq_py 'inst("text-1")["restarts"]')" "$text_restarts" "text-1 restarts"
assert_contains "$(jq_py 'inst("text-1")["last_exit"]')" "oom-killed" "text-1 last_exit"
assert_eq "$(sed -n 's/^oom_kill //p' "$cg/billing/memory.events")" 0 "oom kills in the billing group"

step "the other group and the daemon are unaffected"
assert_eq "$(unit_prop ActiveState)" active "unit ActiveState after the OOM kill"
assert_eq "$(unit_prop MainPID)" "$daemon_pid" "daemon pid"
assert_eq "$(jq_py 'inst("billing-1")["pid"]')" "$billing_pid" "billing-1 pid"
assert_eq "$(jq_py 'inst("billing-1")["restarts"]')" 0 "billing-1 restarts"
assert_eq "$(tasks call demo.charge payments '[777]' --timeout 120)" '{"charged": 777}' "billing still works"
wait_for 240 "the new text-1 answers a Celery ping" celery_ready text-1@systest
assert_eq "$(tasks call demo.add text_processing '[1, 2]' --timeout 120)" 3 "text works again"

step "pids_max stops a fork bomb"
status_json >/dev/null
text_pid=$(jq_py 'inst("text-1")["pid"]')
# Kernels before 6.2 count a refused fork in the forking task's own cgroup
# (the text-1 leaf), later ones in the group whose pids.max was hit: sum both.
pids_max_events() {
    cat "$cg/text/pids.events" "$cg/text/text-1/pids.events" 2>/dev/null |
        awk '$1 == "max" { n += $2 } END { print n + 0 }'
}
pmax0=$(pids_max_events)
res=$(tasks call demo.fork_bomb text_processing '[10000]' --timeout 300) || fail "fork_bomb task did not return"
note "fork_bomb result: $res"
forked=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["forked"])' "$res")
err=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["error"])' "$res")
[ "$forked" -lt "$PIDS_MAX" ] || fail "the fork bomb forked $forked >= pids_max $PIDS_MAX"
assert_ne "$err" None "fork error reported by the task"
assert_gt "$(pids_max_events)" "$pmax0" "pids.events max (text group or its text-1 leaf)"
status_json >/dev/null
assert_eq "$(jq_py 'inst("billing-1")["pid"]')" "$billing_pid" "billing-1 pid after the fork bomb"
assert_eq "$(unit_prop MainPID)" "$daemon_pid" "daemon pid after the fork bomb"
assert_eq "$(tasks call demo.add text_processing '[3, 4]' --timeout 120)" 7 "text works after the fork bomb"

#!/bin/bash
# 3. Crash: SIGKILL a worker's main process. It is restarted, its pool
# children are gone, and the restarts counter went up. The journal shows the
# exit reason.
# systest-timeout: 600
. "$SYSTEST_LIB"

setup_service
status_json >/dev/null
pid=$(jq_py 'inst("text-1")["pid"]')
restarts=$(jq_py 'inst("text-1")["restarts"]')
billing_pid=$(jq_py 'inst("billing-1")["pid"]')
daemon_pid=$(unit_prop MainPID)
wait_for 60 "text-1 has its 2 pool children" sh -c "[ \$(pgrep -P $pid | wc -l) = 2 ]"
children=$(pool_children "$pid")
note "text-1 pid $pid, pool children: $(echo $children)"
since=$(date '+%Y-%m-%d %H:%M:%S')

step "SIGKILL text-1's main process"
kill -KILL "$pid"
replaced() { p=$(instance_field text-1 pid) && [ "$p" != null ] && [ "$p" != "$pid" ] && instance_running text-1; }
wait_for 60 "text-1 replaced by a new running process" replaced
gone() { for c in $children; do [ -d /proc/"$c" ] && [ "$(cut -d: -f3 /proc/"$c"/cgroup)" = "$(unit_prop ControlGroup)/text/text-1" ] && return 1; done; return 0; }
wait_for 30 "the old pool children are gone" gone

status_json >/dev/null
assert_gt "$(jq_py 'inst("text-1")["restarts"]')" "$restarts" "text-1 restarts"
last_exit=$(jq_py 'inst("text-1")["last_exit"]')
note "last_exit: $last_exit"
echo "$last_exit" | grep -Eiq 'sigkill|signal 9|signal: 9|killed' || fail "last_exit does not name SIGKILL: $last_exit"
assert_eq "$(jq_py 'inst("billing-1")["pid"]')" "$billing_pid" "billing-1 pid (untouched)"
assert_eq "$(unit_prop MainPID)" "$daemon_pid" "daemon pid (untouched)"

step "the journal shows the exit reason"
wait_for 20 "journal line about text-1's exit by SIGKILL" sh -c \
    "journalctl -u $UNIT --since '$since' --no-pager -o cat | grep 'text-1' | grep -Eiq 'sigkill|signal 9|signal: 9|killed'"
journalctl -u "$UNIT" --since "$since" --no-pager -o cat | grep 'text-1' | grep -Ei 'sigkill|signal 9|signal: 9|killed' | head -3

step "the replacement consumes tasks"
wait_for 240 "text-1@systest answers a Celery ping" celery_ready text-1@systest
assert_eq "$(tasks call demo.add text_processing '[20, 22]' --timeout 120)" 42 "demo.add on the new text-1"

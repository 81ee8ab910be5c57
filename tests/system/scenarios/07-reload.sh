#!/bin/bash
# 7. Reload: change one group's concurrency, systemctl reload: only that
# group restarts, the other group's pids are unchanged. A broken config makes
# reload report the error and the old config keeps running.
# systest-timeout: 900
. "$SYSTEST_LIB"

setup_service
status_json >/dev/null
text_pid=$(jq_py 'inst("text-1")["pid"]')
billing_pid=$(jq_py 'inst("billing-1")["pid"]')
billing_children=$(pool_children "$billing_pid")
daemon_pid=$(unit_prop MainPID)

step "text concurrency 2 -> 3, systemctl reload"
sed -i '/^\[group.text\]/,/^\[/ s/^concurrency = 2$/concurrency = 3/' "$CONFIG"
grep -A3 '^\[group.text\]' "$CONFIG" | grep -q '^concurrency = 3$' || fail "test setup: config not edited"
systemctl reload "$UNIT" || fail "systemctl reload failed"
replaced() { p=$(instance_field text-1 pid) && [ "$p" != "$text_pid" ] && [ "$p" != null ] && instance_running text-1; }
wait_for 120 "text-1 restarted with the new config" replaced
new_pid=$(instance_field text-1 pid)
wait_for 60 "the new text-1 has 3 pool children" sh -c "[ \$(pgrep -P $new_pid | wc -l) = 3 ]"
assert_contains "$(tr '\0' ' ' </proc/"$new_pid"/cmdline)" "-c 3" "new text-1 command line"
status_json >/dev/null
assert_eq "$(jq_py 'inst("billing-1")["pid"]')" "$billing_pid" "billing-1 pid (unchanged group)"
assert_eq "$(jq_py 'inst("billing-1")["restarts"]')" 0 "billing-1 restarts"
assert_eq "$(pool_children "$billing_pid")" "$billing_children" "billing-1 pool children"
assert_eq "$(unit_prop MainPID)" "$daemon_pid" "daemon pid"
assert_eq "$(unit_prop ActiveState)" active "ActiveState after reload"

step "a broken config: reload reports the error, the old config keeps running"
cp "$CONFIG" /root/good.toml
sed -i '/^\[group.billing\]/a bogus_key_for_systest = 1' "$CONFIG"
since=$(date '+%Y-%m-%d %H:%M:%S')
rc=0; out=$(clearifyctl reload 2>&1) || rc=$?
note "clearifyctl reload ($rc): $out"
assert_eq "$rc" 1 "clearifyctl reload exit code on a broken config"
assert_contains "$out" "bogus_key_for_systest" "clearifyctl reload output"
assert_contains "$out" "old config kept" "clearifyctl reload output"
systemctl reload "$UNIT" || note "systemctl reload exited non-zero on the broken config"
wait_for 30 "the journal reports the config error" sh -c \
    "journalctl -u $UNIT --since '$since' --no-pager -o cat | grep -q bogus_key_for_systest"
assert_eq "$(unit_prop ActiveState)" active "ActiveState after the broken reload"
status_json >/dev/null
assert_eq "$(jq_py 'inst("text-1")["pid"]')" "$new_pid" "text-1 pid (old config kept)"
assert_eq "$(jq_py 'inst("billing-1")["pid"]')" "$billing_pid" "billing-1 pid (old config kept)"
assert_eq "$(unit_prop MainPID)" "$daemon_pid" "daemon pid"
assert_eq "$(tasks call demo.add text_processing '[8, 9]' --timeout 120)" 17 "text still works"
assert_eq "$(tasks call demo.webhook webhooks '["after-reload"]' --timeout 120)" '{"delivered": "after-reload"}' "billing still works"

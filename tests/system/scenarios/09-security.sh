#!/bin/bash
# 9. Security: the three tiers on the control socket with the shipped
# defaults (issue 12, section 2) and the two users (section 1).
# - a reader (group clearify only): status works, stop/reload are refused
#   and nothing is stopped;
# - an admin (group clearify-admin only, which the package creates): can
#   connect, stop and start a group;
# - anyone else: cannot connect;
# - the daemon runs as clearify, every worker process as clearify-worker;
# - `systemd-analyze security` exposure written to results/exposure-score,
#   asserted <= 2.5 (issue 12).
# systest-timeout: 600
. "$SYSTEST_LIB"

# No admin_group in the config: the default must be the package's group.
setup_service
step "accounts created by the package"
assert_cmd "group clearify-admin exists" getent group clearify-admin
assert_eq "$(getent group clearify-admin | cut -d: -f4)" "" "members of clearify-admin after install"
assert_cmd "user clearify-worker exists" getent passwd clearify-worker
for g in clearify clearify-admin; do
    assert_fails "clearify-worker is not in group $g" sh -c "id -nG clearify-worker | tr ' ' '\n' | grep -qx $g"
done

useradd --create-home --shell /bin/bash reader
usermod -aG clearify reader
useradd --create-home --shell /bin/bash opsuser
usermod -aG clearify-admin opsuser
useradd --create-home --shell /bin/bash outsider
assert_eq "$(id -nG reader)" "reader clearify" "groups of reader"
assert_eq "$(id -nG opsuser)" "opsuser clearify-admin" "groups of opsuser"
assert_eq "$(id -nG outsider)" "outsider" "groups of outsider"

status_json >/dev/null
text_pid=$(jq_py 'inst("text-1")["pid"]')
billing_pid=$(jq_py 'inst("billing-1")["pid"]')
sock=/run/clearify-workerd/control.sock
[ -S "$sock" ] || fail "no control socket $sock"
assert_eq "$(stat -c '%a %U %G' "$sock")" "660 clearify clearify" "control socket mode, owner and group"
assert_eq "$(stat -c '%a %U' /run/clearify-workerd)" "755 clearify" "runtime directory mode and owner"
for s in /run/clearify-workerd/*; do
    note "$(stat -c '%A %U:%G %n' "$s")"
    case $(stat -c %a "$s") in
        *0) echo "ok: $s is not accessible to others" ;;
        *) [ -d "$s" ] || fail "$s is accessible to others: $(stat -c %a "$s")" ;;
    esac
done

step "reader (group clearify only): status allowed, changes refused"
assert_exit 0 "reader: clearifyctl status" runuser -u reader -- clearifyctl status
assert_contains "$LAST_OUTPUT" text-1 "reader's status output"
assert_exit 0 "reader: clearifyctl status --json" runuser -u reader -- clearifyctl status --json
assert_fails "reader: clearifyctl stop text" runuser -u reader -- clearifyctl stop text
assert_contains "$(runuser -u reader -- clearifyctl stop text 2>&1 | tr 'A-Z' 'a-z')" "permission denied" "reader's stop output"
assert_fails "reader: clearifyctl reload" runuser -u reader -- clearifyctl reload
sleep 1
assert_eq "$(instance_field text-1 pid)" "$text_pid" "text-1 pid after the refused stop"
assert_eq "$(instance_field text-1 state)" running "text-1 state after the refused stop"

step "outsider (in neither group): cannot connect"
assert_fails "outsider: clearifyctl status" runuser -u outsider -- clearifyctl status
assert_fails "outsider: clearifyctl stop text" runuser -u outsider -- clearifyctl stop text
assert_fails "nobody: clearifyctl stop text" runuser -u nobody -- clearifyctl stop text
assert_eq "$(instance_field text-1 pid)" "$text_pid" "text-1 pid after the outsiders' stop"

step "admin (group clearify-admin only): stop and start a group"
assert_exit 0 "opsuser: clearifyctl stop text" runuser -u opsuser -- clearifyctl stop text
wait_for 90 "text-1 stopped" instance_state_is text-1 stopped
assert_eq "$(instance_field text-1 pinned)" true "text-1 pinned by the operator stop"
assert_eq "$(instance_field billing-1 pid)" "$billing_pid" "billing-1 untouched by stop text"
assert_exit 0 "opsuser: clearifyctl start text" runuser -u opsuser -- clearifyctl start text
wait_for 90 "text-1 running again" instance_running text-1

step "nothing in the unit runs as root; daemon as $DAEMON_USER, workers as $WORKER_USER"
wait_for 90 "all workers running" all_running
cg=/sys/fs/cgroup$(unit_prop ControlGroup)
daemon_pid=$(unit_prop MainPID)
assert_eq "$(proc_user "$daemon_pid")" "$DAEMON_USER" "user of the daemon"
n=0
for pid in $(cgroup_pids "$cg"); do
    u=$(proc_user "$pid") || continue
    [ -z "$u" ] && continue
    [ "$pid" = "$daemon_pid" ] && continue
    [ "$u" = "$WORKER_USER" ] || fail "pid $pid ($(cat /proc/"$pid"/comm 2>/dev/null)) in the unit runs as '$u', not $WORKER_USER"
    n=$((n + 1))
done
assert_ge "$n" 3 "worker processes checked in the unit (2 workers, pool children)"
for id in text-1 billing-1; do
    p=$(instance_field "$id" pid)
    assert_eq "$(proc_user "$p")" "$WORKER_USER" "user of $id"
    assert_ne "$(awk '/^Uid:/ {print $2 $3 $4 $5}' /proc/"$p"/status)" 0000 "uids of $id"
done

step "systemd-analyze security exposure (recorded)"
systemd-analyze security --no-pager "$UNIT" >"$SYSTEST_RESULTS/systemd-analyze-security.txt" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for clearify-workerd.service: *\([0-9.]*\).*/\1/p' "$SYSTEST_RESULTS/systemd-analyze-security.txt")
[ -n "$score" ] || fail "no exposure score in: $(tail -5 "$SYSTEST_RESULTS/systemd-analyze-security.txt")"
echo "$score" >"$SYSTEST_RESULTS/exposure-score"
note "systemd-analyze security exposure: $score (recorded in results/)"
python3 -c "import sys; sys.exit(0 if float('$score') <= 2.5 else 1)" || fail "exposure $score is above the 2.5 limit of issue 12"

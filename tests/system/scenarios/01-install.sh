#!/bin/bash
# 1. Install: apt install ./clearify-workerd_*_amd64.deb creates the users
# clearify and clearify-worker and the group clearify-admin,
# /etc/clearify/workers.toml and the enabled unit; after
# systemctl enable --now the unit is active/running with our STATUS text.
# systest-timeout: 600
. "$SYSTEST_LIB"

assert_fails "no clearify user before the install" getent passwd clearify
install_deb

step "files, user and unit created by the package"
for f in /usr/sbin/clearify-workerd /usr/bin/clearifyctl; do
    [ -x "$f" ] || fail "$f missing or not executable"
done
assert_contains "$(clearify-workerd --version)" "clearify-workerd" "clearify-workerd --version"
assert_cmd "clearifyctl --help runs" clearifyctl --help
pw=$(getent passwd clearify) || fail "no clearify user after the install"
uid=$(echo "$pw" | cut -d: -f3)
[ "$uid" -lt 1000 ] || fail "clearify is not a system user (uid $uid)"
assert_cmd "clearify group exists" getent group clearify
# The workers' user (issue 12): a system user with its own group, in no
# group of the daemon's, home /var/lib/clearify-worker (0750, its own).
pw=$(getent passwd clearify-worker) || fail "no clearify-worker user after the install"
[ "$(echo "$pw" | cut -d: -f3)" -lt 1000 ] || fail "clearify-worker is not a system user: $pw"
assert_eq "$(echo "$pw" | cut -d: -f6,7)" "/var/lib/clearify-worker:/usr/sbin/nologin" "home and shell of clearify-worker"
assert_eq "$(id -nG clearify-worker)" "clearify-worker" "groups of clearify-worker"
assert_eq "$(stat -c '%a %U %G' /var/lib/clearify-worker)" "750 clearify-worker clearify-worker" "the workers' home"
assert_eq "$(id -nG clearify)" "clearify" "groups of clearify"
assert_cmd "group clearify-admin exists" getent group clearify-admin
assert_eq "$(getent group clearify-admin | cut -d: -f4)" "" "members of clearify-admin"
[ -f "$CONFIG" ] || fail "$CONFIG missing"
assert_contains "$(dpkg-query -W -f='${Conffiles}' clearify-workerd)" "$CONFIG" "conffiles of the package"
[ -f /etc/clearify/worker.env ] || fail "/etc/clearify/worker.env missing"
assert_eq "$(stat -c '%a %U %G' /etc/clearify/worker.env)" "640 root clearify" "worker.env mode and owner"
assert_cmd "the packaged config is valid" clearify-workerd --check --config "$CONFIG"
assert_eq "$(grep -E '^user *=' "$CONFIG")" 'user = "clearify-worker"' "the shipped [celery] user"
assert_cmd "postinst is idempotent (dpkg-reconfigure)" dpkg-reconfigure -fnoninteractive clearify-workerd
assert_eq "$(getent passwd | grep -c '^clearify')" 2 "clearify users after a second configure"
assert_eq "$(systemctl is-enabled "$UNIT")" enabled "unit enablement after install"

step "systemctl enable --now"
systemctl enable --now "$UNIT" || fail "systemctl enable --now failed"
wait_for 60 "$UNIT active" unit_is_active
assert_eq "$(unit_prop SubState)" running "SubState"
assert_eq "$(unit_prop Type)" notify "unit Type"
status_text=$(unit_prop StatusText)
[ -n "$status_text" ] || fail "StatusText is empty: the daemon sent no STATUS="
note "StatusText (packaged config): $status_text"
assert_eq "$(proc_user "$(unit_prop MainPID)")" clearify "user of the daemon process"
status_json >/dev/null
assert_eq "$(jq_py 'len(d["groups"])')" 0 "groups in the freshly installed (idle) config"
assert_eq "$(jq_py 'd["daemon"]["summary"]')" "$status_text" "status summary = systemd StatusText"
assert_cmd "clearifyctl status (table)" clearifyctl status

step "with Redis and the two-group config: STATUS says what runs"
setup_service
wait_for 30 "StatusText reports 2/2 workers running" sh -c "systemctl show -p StatusText --value $UNIT | grep -q '2/2.*running'"
status_text=$(unit_prop StatusText)
note "StatusText: $status_text"
assert_eq "$(unit_prop ActiveState)/$(unit_prop SubState)" active/running "ActiveState/SubState"
status_json >/dev/null
assert_eq "$(jq_py 'd["daemon"]["summary"]')" "$status_text" "status summary = systemd StatusText"
assert_contains "$(journalctl -u "$UNIT" -b --no-pager)" "text-1" "journal of the unit"

#!/bin/bash
# 12. Upgrade from the one-user layout (issue 12): a package whose
# maintainer scripts and workers.toml are those of before issue 12 (only the
# user clearify; workers run as the daemon's user) is installed and set up
# with an edited workers.toml without [celery] user; then the current .deb
# is installed over it, keeping the edited conffile (--force-confold).
# Required: the upgrade creates clearify-worker, its home and
# clearify-admin; postinst warns that the kept config runs the workers as
# the daemon's user; the service comes back with every worker running; the
# edited workers.toml is untouched. After the admin adds
# user = "clearify-worker" (README.Debian) and restarts, every worker runs
# as clearify-worker.
# The "old" package is made here from the current one: same binaries and
# unit, with the old postinst/postrm (debhelper's part taken from the
# current package) and the old workers.toml from fixtures/one-user/ (copies
# of main at d9b200b), version 0.1.0~oneuser.
# systest-timeout: 900
. "$SYSTEST_LIB"

FIX=$SYSTEST_SHARE/systest/fixtures/one-user
new_deb=$(deb_path)
cp "$new_deb" /root/new.deb

step "build the one-user package from the current one"
rm -rf /root/old
dpkg-deb -R /root/new.deb /root/old
python3 - "$FIX/postinst" /root/old/DEBIAN/postinst <<'PY'
import sys
old, built = sys.argv[1], sys.argv[2]
new = open(built).read()
# debhelper's snippets in the built postinst: from the first
# "# Automatically added by" to the last "# End automatically added section".
a = new.index("# Automatically added by")
b = new.rindex("# End automatically added section") + len("# End automatically added section\n")
src = open(old).read()
assert "#DEBHELPER#" in src
open(built, "w").write(src.replace("#DEBHELPER#\n", new[a:b]))
PY
python3 - "$FIX/postrm" /root/old/DEBIAN/postrm <<'PY'
import sys
old, built = sys.argv[1], sys.argv[2]
new = open(built).read()
a = new.index("# Automatically added by")
b = new.rindex("# End automatically added section") + len("# End automatically added section\n")
src = open(old).read()
open(built, "w").write(src.replace("#DEBHELPER#\n", new[a:b]))
PY
grep -qw clearify-worker /root/old/DEBIAN/postinst && fail "the one-user postinst mentions clearify-worker"
install -m 0644 "$FIX/workers.toml" /root/old/etc/clearify/workers.toml
sed -i 's/^Version: .*/Version: 0.1.0~oneuser/' /root/old/DEBIAN/control
(cd /root/old && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
dpkg-deb -b /root/old /root/old.deb >/dev/null || fail "dpkg-deb -b of the one-user package failed"

step "install the one-user package and run two groups as clearify"
install_demo_app
start_redis
DEBIAN_FRONTEND=noninteractive apt-get install -y /root/old.deb || fail "apt install of the one-user package failed"
assert_fails "no clearify-worker before the upgrade" getent passwd clearify-worker
assert_fails "no clearify-admin before the upgrade" getent group clearify-admin
write_env
# The admin's edit of the old file: no [celery] user (the old default).
WORKER_USER=clearify two_group_config
sed -i '/^user = /d' "$CONFIG"
clearify-workerd --check --config "$CONFIG" >/dev/null || fail "--check rejects the one-user config"
sum=$(sha256sum "$CONFIG")
systemctl restart "$UNIT" || fail "systemctl restart $UNIT failed"
wait_for 60 "$UNIT active" unit_is_active
wait_for 180 "all workers running" all_running
assert_eq "$(proc_user "$(instance_field text-1 pid)")" clearify "user of text-1 before the upgrade"

step "upgrade to the current package, keeping the edited workers.toml"
out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -o Dpkg::Options::=--force-confold /root/new.deb 2>&1) \
    || fail "the upgrade failed: $out"
printf '%s\n' "$out" | tail -n 15
assert_eq "$(dpkg-query -W -f='${Version}' clearify-workerd)" "$(dpkg-deb -f /root/new.deb Version)" "installed version"
assert_contains "$out" "runs the workers as the daemon's user" "postinst's warning on the upgrade"
assert_eq "$(sha256sum "$CONFIG")" "$sum" "the edited workers.toml after the upgrade"
pw=$(getent passwd clearify-worker) || fail "no clearify-worker after the upgrade"
assert_eq "$(echo "$pw" | cut -d: -f6,7)" "/var/lib/clearify-worker:/usr/sbin/nologin" "home and shell of clearify-worker"
assert_eq "$(id -nG clearify-worker)" clearify-worker "groups of clearify-worker"
assert_eq "$(stat -c '%a %U %G' /var/lib/clearify-worker)" "750 clearify-worker clearify-worker" "the workers' home"
assert_cmd "group clearify-admin after the upgrade" getent group clearify-admin
assert_eq "$(stat -c '%a %U %G' /etc/clearify/worker.env)" "640 root clearify" "worker.env after the upgrade"
wait_for 60 "$UNIT active after the upgrade" unit_is_active
wait_for 180 "all workers running after the upgrade" all_running
assert_cmd "tasks run after the upgrade" tasks batch text_processing 5 --timeout 180

step "the admin follows README.Debian: user = \"clearify-worker\", restart"
sed -i 's#^env_file = "/etc/clearify/worker.env"$#&\nuser = "clearify-worker"#' "$CONFIG"
assert_cmd "--check accepts the edited config" clearify-workerd --check --config "$CONFIG"
systemctl restart "$UNIT" || fail "systemctl restart $UNIT failed"
wait_for 60 "$UNIT active" unit_is_active
wait_for 180 "all workers running" all_running
assert_eq "$(proc_user "$(unit_prop MainPID)")" clearify "user of the daemon"
for id in text-1 billing-1; do
    assert_eq "$(proc_user "$(instance_field "$id" pid)")" clearify-worker "user of $id"
done
wait_for 240 "text-1@systest answers a Celery ping" celery_ready text-1@systest
assert_cmd "tasks run as clearify-worker" tasks batch text_processing 5 --timeout 180

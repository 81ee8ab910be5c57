#!/bin/bash
# 10. Remove and purge: apt remove stops the service and keeps the config;
# apt purge removes the config and the state.
# systest-timeout: 600
. "$SYSTEST_LIB"

setup_service
sum=$(sha256sum "$CONFIG")

step "apt remove"
DEBIAN_FRONTEND=noninteractive apt-get remove -y clearify-workerd || fail "apt-get remove failed"
assert_ne "$(systemctl is-active "$UNIT" 2>/dev/null || true)" active "unit state after remove"
wait_for 30 "no process of the clearify user after remove" sh -c '! pgrep -u clearify'
wait_for 30 "no process of the clearify-worker user after remove" sh -c '! pgrep -u clearify-worker'
[ ! -e /usr/sbin/clearify-workerd ] || fail "/usr/sbin/clearify-workerd still there after remove"
[ ! -e /usr/bin/clearifyctl ] || fail "/usr/bin/clearifyctl still there after remove"
assert_eq "$(sha256sum "$CONFIG" 2>/dev/null)" "$sum" "the edited workers.toml, kept by remove"
[ -f /etc/clearify/worker.env ] || fail "worker.env removed by apt remove"
assert_eq "$(dpkg-query -W -f='${db:Status-Status}' clearify-workerd)" config-files "package status after remove"

step "apt purge"
DEBIAN_FRONTEND=noninteractive apt-get purge -y clearify-workerd || fail "apt-get purge failed"
[ ! -e /etc/clearify ] || fail "/etc/clearify still there after purge: $(ls -la /etc/clearify)"
for d in /var/lib/clearify-workerd /var/lib/clearify /var/lib/clearify-worker /var/log/clearify-workerd /run/clearify-workerd; do
    [ ! -e "$d" ] || fail "$d still there after purge"
done
# Kept on purge, as documented in README.Debian (files elsewhere may still
# belong to them; admins stay admins on a reinstall).
for u in clearify clearify-worker; do
    assert_cmd "user $u kept after purge" getent passwd "$u"
done
assert_cmd "group clearify-admin kept after purge" getent group clearify-admin
st=$(dpkg-query -W -f='${db:Status-Status}' clearify-workerd 2>/dev/null || echo not-installed)
assert_eq "$st" not-installed "package status after purge"
assert_eq "$(systemctl is-enabled "$UNIT" 2>/dev/null || echo absent)" absent "unit file after purge"
assert_cmd "Redis untouched by the purge" redis_ping

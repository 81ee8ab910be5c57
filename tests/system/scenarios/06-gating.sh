#!/bin/bash
# 6. Gating (two boots on one disk). Boot 1: install, configure, enable the
# unit, Redis stays disabled. Boot 2: the daemon is active with STATUS
# "waiting for broker…" and no worker runs; Redis is started and the workers
# run within 5 s.
# systest-timeout: 600
. "$SYSTEST_LIB"
GATE_SECS=${GATE_SECS:-5}

if [ "$SYSTEST_PHASE" = 1 ]; then
    install_demo_app
    install_deb
    write_env
    two_group_config
    systemctl enable "$UNIT" || fail "systemctl enable $UNIT"
    assert_eq "$(systemctl is-enabled "$UNIT")" enabled "unit enablement"
    assert_eq "$(systemctl is-enabled redis-server 2>/dev/null || true)" disabled "redis-server enablement"
    request_next_boot
    exit 0
fi

step "boot 2: Redis is down, the daemon came up at boot and waits"
assert_fails "redis is not running" redis_ping
assert_eq "$(systemctl is-active redis-server || true)" inactive "redis-server state"
wait_for 120 "$UNIT active (started at boot)" unit_is_active
assert_eq "$(unit_prop SubState)" running "SubState"
wait_for 30 "STATUS says waiting for broker" sh -c "systemctl show -p StatusText --value $UNIT | grep -qi 'waiting for broker'"
note "StatusText: $(unit_prop StatusText)"
assert_contains "$(unit_prop StatusText)" "$BROKER_URL" "StatusText names the broker"
assert_contains "$(journalctl -b --no-pager -u "$UNIT")" "refused" "the daemon logged why the broker is not ready"

no_workers() { ! pgrep -u clearify -f 'celery' >/dev/null; }
sleep 3
assert_cmd "no celery worker runs while the broker is down" no_workers
cg=/sys/fs/cgroup$(unit_prop ControlGroup)
assert_eq "$(cgroup_pids "$cg" | wc -l)" 1 "processes in the unit's cgroup (the daemon only)"
status_json >/dev/null
assert_eq "$(jq_py 'd["daemon"]["broker"]["state"]')" waiting "broker state"
assert_eq "$(jq_py 'sorted(set(i["state"] for g in d["groups"] for i in g["instances"]))')" '["waiting-for-broker"]' "instance states"
assert_eq "$(jq_py 'len([i for g in d["groups"] for i in g["instances"]])')" 2 "instances"
assert_eq "$(systemctl is-system-running || true)" running "system state (boot not stalled)"

step "start Redis: workers run within ${GATE_SECS} s"
systemctl start redis-server
wait_for 30 "redis answers PING" redis_ping
wait_for "$GATE_SECS" "all workers running after Redis came up" all_running
status_json >/dev/null
assert_eq "$(jq_py 'd["daemon"]["broker"]["state"]')" ok "broker state"
wait_for 30 "STATUS no longer waiting" sh -c "! systemctl show -p StatusText --value $UNIT | grep -qi 'waiting for broker'"
wait_for 240 "text-1@systest answers a Celery ping" celery_ready text-1@systest
assert_eq "$(tasks call demo.add text_processing '[5, 6]' --timeout 120)" 11 "a task after gating"

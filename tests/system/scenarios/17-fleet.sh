#!/bin/bash
# 17. The fleet under systemd (issue 14): the packaged service publishes its
# record in the broker's Redis (default [fleet] settings: every 10 s, TTL
# 24 h), with the device's facts and both groups and no secret;
# `clearifyctl fleet` as a member of the clearify group (a reader) shows
# it, and `fleet --json` / `fleet DEVICE --json` carry the counts; a reader
# may not `fleet forget`; `systemctl stop` marks the record stopped.
# systest-timeout: 900
. "$SYSTEST_LIB"

setup_service

rec_field() { # python expression over the record `r`
    redis-cli -h 127.0.0.1 -p 6379 --raw GET clearify:fleet:systest >/root/record.json
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open("/root/record.json"))
v = eval(sys.argv[1])
print(v if isinstance(v, str) else json.dumps(v))
PY
}
record_running() { [ "$(rec_field 'sum(g["running"] for g in r["groups"])' 2>/dev/null)" = 2 ]; }

step "the record is published with both groups running"
wait_for 60 "the record shows both workers running" record_running
assert_eq "$(rec_field 'r["device_id"]')" systest "device id"
assert_eq "$(rec_field 'r["run"]')" running "run"
assert_eq "$(rec_field 'r["interval_secs"]')" 10.0 "interval"
assert_eq "$(rec_field 'r["arch"]')" "$(dpkg --print-architecture)" "arch"
assert_eq "$(rec_field 'r["kernel"]')" "$(uname -r)" "kernel"
assert_eq "$(rec_field 'r["version"]')" "$(clearifyctl version | awk '{print $2; exit}')" "version"
assert_eq "$(rec_field 'sorted(g["name"] for g in r["groups"])')" '["billing", "text"]' "groups"
assert_eq "$(rec_field 'r["limits"]')" true "limits on under systemd"
ttl=$(redis-cli -h 127.0.0.1 -p 6379 TTL clearify:fleet:systest)
assert_gt "$ttl" 86000 "record TTL (24 h)"
assert_not_contains "$(redis-cli -h 127.0.0.1 -p 6379 --raw GET clearify:fleet:systest)" "redis://" "the record holds no broker URL"
assert_eq "$(redis-cli -h 127.0.0.1 -p 6379 ZCARD clearify:fleet)" 1 "set members"

step "a reader (group clearify) sees it with clearifyctl fleet"
id reader >/dev/null 2>&1 || { useradd --create-home --shell /bin/bash reader && usermod -aG clearify reader; }
assert_exit 0 "reader: clearifyctl fleet" runuser -u reader -- clearifyctl fleet
assert_contains "$LAST_OUTPUT" systest "fleet output"
runuser -u reader -- clearifyctl fleet --json >/root/fleet.json || fail "fleet --json"
python3 - <<'PY' || fail "fleet --json contents"
import json
v = json.load(open("/root/fleet.json"))
[d] = v["devices"]
assert d["device_id"] == "systest", d
assert d["presence"] == "up", d
assert (d["running"], d["total"]) == (2, 2), d
assert d["version_skew"] is False, d
print("ok: fleet --json", d["device_id"], d["running"], "/", d["total"])
PY
runuser -u reader -- clearifyctl fleet systest --json >/root/device.json || fail "fleet systest --json"
python3 - <<'PY' || fail "fleet systest --json contents"
import json
v = json.load(open("/root/device.json"))
r = v["record"]
assert v["presence"] == "up", v["presence"]
assert sorted(i["id"] for g in r["groups"] for i in g["instances"]) == ["billing-1", "text-1"], r
print("ok: fleet DEVICE --json")
PY
assert_exit 0 "reader: clearifyctl fleet queues" runuser -u reader -- clearifyctl fleet queues
assert_contains "$LAST_OUTPUT" text_processing "fleet queues output"
assert_fails "reader: clearifyctl fleet forget systest" runuser -u reader -- clearifyctl fleet forget systest
assert_eq "$(redis-cli -h 127.0.0.1 -p 6379 ZCARD clearify:fleet)" 1 "still a member after the refused forget"

step "systemctl stop marks the record stopped"
systemctl stop "$UNIT"
assert_eq "$(rec_field 'r["run"]')" stopped "run after systemctl stop"
assert_eq "$(rec_field 'r.get("stopped_at") is not None')" true "stopped_at set"
assert_contains "$(journal -u "$UNIT")" "fleet: this device is marked stopped" "journal"

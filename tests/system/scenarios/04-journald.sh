#!/bin/bash
# 4. journald: `journalctl -u clearify-workerd CLEARIFY_GROUP=text` has a line
# a task printed; an error log line has PRIORITY=3; the worker fields are set;
# a traceback stays one entry.
# systest-timeout: 600
. "$SYSTEST_LIB"

setup_service
status_json >/dev/null
text_pid=$(jq_py 'inst("text-1")["pid"]')
mark="journald-$RANDOM$RANDOM"

step "a line printed by a task, filtered by CLEARIFY_GROUP=text"
tasks call demo.process_text text_processing "[\"hello $mark from the text queue\"]" --timeout 120 >/dev/null || fail "process_text task"
wait_for 30 "journalctl -u $UNIT CLEARIFY_GROUP=text shows the printed line" sh -c \
    "journalctl -u $UNIT CLEARIFY_GROUP=text -b --no-pager -o cat | grep -q 'process_text: .*$mark'"
# The fields of that entry. (Celery logs a task's print() at WARNING, so its
# PRIORITY is not checked here; the ERROR line below checks the mapping.)
python3 - "$mark" "$text_pid" <<'PY' || fail "fields of the worker line"
import json, subprocess, sys
mark, pid = sys.argv[1], sys.argv[2]
out = subprocess.run(["journalctl", "-u", "clearify-workerd", "-b", "-o", "json", "--no-pager", "CLEARIFY_GROUP=text"],
                     capture_output=True, check=True).stdout.decode("utf-8", "replace")
def text(v):
    return bytes(v).decode("utf-8", "replace") if isinstance(v, list) else v
hits = [e for e in map(json.loads, out.splitlines()) if "process_text:" in text(e.get("MESSAGE", "")) and mark in text(e.get("MESSAGE", ""))]
assert hits, "no entry with the printed line"
e = hits[0]
want = {"SYSLOG_IDENTIFIER": "clearify-worker", "CLEARIFY_GROUP": "text", "CLEARIFY_INSTANCE": "text-1",
        "CLEARIFY_NODE": "text-1@systest", "CLEARIFY_PID": pid}
bad = {k: (v, e.get(k)) for k, v in want.items() if e.get(k) != v}
assert not bad, f"wrong fields (want, got): {bad}"
print("ok: fields", want)
PY

step "billing lines are not in the text group"
tasks call demo.charge payments "[4242$RANDOM]" --timeout 120 >/dev/null || fail "charge task"
wait_for 30 "charge line under CLEARIFY_GROUP=billing" sh -c \
    "journalctl -u $UNIT CLEARIFY_GROUP=billing -b --no-pager -o cat | grep -q 'charge: 4242'"
assert_not_contains "$(journalctl -u "$UNIT" CLEARIFY_GROUP=text -b --no-pager -o cat)" "charge: 4242" "text group's journal"

step "an ERROR log line has PRIORITY=3"
tasks call demo.log_error text_processing "[\"err-$mark\"]" --timeout 120 >/dev/null || fail "log_error task"
wait_for 30 "the error line at PRIORITY=3" sh -c \
    "journalctl -u $UNIT CLEARIFY_GROUP=text PRIORITY=3 -b --no-pager -o cat | grep -q 'log_error: err-$mark'"
assert_not_contains "$(journalctl -u "$UNIT" CLEARIFY_GROUP=text PRIORITY=6 -b --no-pager -o cat)" "log_error: err-$mark" "PRIORITY=6 entries"

step "a traceback stays one journal entry"
tasks call demo.fail text_processing "[\"boom-$mark\"]" --timeout 60 >/dev/null 2>&1 && fail "demo.fail succeeded"
check_tb() {
python3 - "$mark" <<'PY'
import json, subprocess, sys
mark = sys.argv[1]
out = subprocess.run(["journalctl", "-u", "clearify-workerd", "-b", "-o", "json", "--no-pager", "CLEARIFY_GROUP=text"],
                     capture_output=True, check=True).stdout.decode("utf-8", "replace")
def text(v):
    return bytes(v).decode("utf-8", "replace") if isinstance(v, list) else v
hits = [e for e in map(json.loads, out.splitlines()) if "raised unexpected" in text(e.get("MESSAGE", "")) and f"boom-{mark}" in text(e.get("MESSAGE", ""))]
if not hits:
    sys.exit("no entry with 'raised unexpected'")
msg = text(hits[0]["MESSAGE"])
assert "Traceback (most recent call last)" in msg, f"traceback not in the same entry: {msg!r}"
assert "RuntimeError" in msg.split("Traceback", 1)[1], f"exception line not in the entry: {msg!r}"
assert hits[0].get("PRIORITY") == "3", f"PRIORITY {hits[0].get('PRIORITY')}"
print("ok: one entry holds the whole traceback, PRIORITY=3")
PY
}
wait_for 30 "the traceback record in the journal" check_tb
check_tb

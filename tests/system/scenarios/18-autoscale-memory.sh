#!/bin/bash
# 18. Autoscaling refuses to scale up when memory is tight (issue 15, VM): the
# packaged daemon under systemd (cgroup v2), one group `text` with memory_max
# and autoscale = { min = 1, max = 4, backlog_per_instance = 5,
# memory_headroom = 500M }, [broker] check_interval = 1s. Idle: state steady
# at 1. A memory balloon (fixtures/memory-balloon.py) holds the VM's
# MemAvailable at 400 MiB, below the headroom; a backlog of 60 five-second
# tasks then asks for 4 instances: the group stays at 1 for many checks,
# status --json says state "up-refused-memory" with a reason naming
# MemAvailable, the per-instance estimate and the headroom, `clearifyctl
# status` says so. Then MemAvailable at headroom + half the daemon's
# per-instance estimate: above the headroom, still refused (MemAvailable
# minus one more instance must stay above it). journald has the refusal
# once (CLEARIFY_GROUP=text). The balloon freed, the group grows to 4, one
# instance per check ("1 → 2", "2 → 3", "3 → 4" in the journal, at
# different checks), every instance running in its own cgroup leaf.
# systest-timeout: 600
. "$SYSTEST_LIB"

HEADROOM_MIB=500
TIGHT_MIB=$((HEADROOM_MIB - 100))  # MemAvailable held here: below the headroom itself
TASKS=60                           # demo.sleep 5 s each; desired = min(4, ceil(backlog / 5))
OBSERVE_SECS=8                     # checks watched while refused (check_interval 1s)
BALLOON_STATE=/run/balloon.state
BALLOON_TARGET=/run/balloon.target  # "<MemAvailable MiB> <± MiB>", re-read by the balloon
POLL=/root/autoscale-poll.py

# autoscale-poll.py OUT SECS STOP: samples the text group's autoscale status
# (clearifyctl status --json) every ~0.2 s into OUT (JSON lines: t, state,
# current, desired, reason, instances) until the Python expression STOP over
# the sample `s` is true (exit 0) or SECS pass (exit 3). A sample that breaks
# a rule given as INVARIANT (4th argument, an expression over `s` and the
# previous sample `p`) ends it at once with exit 4.
cat >"$POLL" <<'PY'
import json, subprocess, sys, time
out, secs, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3]
invariant = sys.argv[4] if len(sys.argv) > 4 else "True"
t0 = time.monotonic()
p = None
with open(out, "w") as f:
    while True:
        t = time.monotonic() - t0
        r = subprocess.run(["clearifyctl", "status", "--json"], capture_output=True, text=True)
        if r.returncode == 0:
            d = json.loads(r.stdout)
            g = next(g for g in d["groups"] if g["name"] == "text")
            a = g.get("autoscale") or {}
            s = {"t": round(t, 2), "state": a.get("state"), "current": a.get("current"),
                 "desired": a.get("desired"), "reason": a.get("reason"),
                 "instances": [i["id"] for i in g["instances"]],
                 "running": [i["id"] for i in g["instances"] if i["state"] == "running"]}
            f.write(json.dumps(s) + "\n"); f.flush()
            if not eval(invariant):
                print(f"invariant broken: {invariant}\n  previous: {p}\n  sample:   {s}", file=sys.stderr)
                sys.exit(4)
            if eval(stop):
                sys.exit(0)
            p = s
        if t > secs:
            sys.exit(3)
        time.sleep(0.2)
PY

mem_available_mib() { awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo; }
text_pid_children() { pid=$(instance_field text-1 pid) && [ "$(pgrep -P "$pid" | wc -l)" = 1 ]; }
autoscale_field() { # FIELD: from a fresh status
    clearifyctl status --json >"$STATUS_FILE" 2>/dev/null || return 1
    jq_py "(group('text').get('autoscale') or {}).get('$1')"
}
autoscale_state_is() { [ "$(autoscale_field state)" = "$1" ]; }
# Autoscale lines of this boot's daemon journal carrying STRING, one per line.
journal_lines_with() { journal -u "$UNIT" CLEARIFY_GROUP=text -o cat | grep -F -- "$1" || true; }
count_lines_with() { journal_lines_with "$1" | grep -c . || true; }
# The daemon's figures from the refusal: MemAvailable A - per instance P <= headroom H.
reason_figures() { # REASON -> "A P H"
    python3 - "$1" <<'PY'
import re, sys
m = re.search(r"MemAvailable (\d+) MiB - (\d+) MiB per instance <= headroom (\d+) MiB", sys.argv[1])
if not m:
    sys.exit(f"no 'MemAvailable A MiB - P MiB per instance <= headroom H MiB' in the reason: {sys.argv[1]}")
print(m[1], m[2], m[3])
PY
}

install_demo_app
start_redis
install_deb
write_env
{
    BROKER_EXTRA='check_interval = "1s"' config_head
    cat <<TOML

[group.text]
queues = ["text_processing"]
concurrency = 1
memory_max = "600M"
autoscale = { min = 1, max = 4, backlog_per_instance = 5, scale_down_after = "10m", memory_headroom = "${HEADROOM_MIB}M" }
TOML
} | write_config
clearify-workerd --check --config "$CONFIG" || fail "clearify-workerd --check rejects the autoscale config"

step "restart $UNIT on the autoscale config"
systemctl restart "$UNIT" || fail "systemctl restart $UNIT failed"
wait_for 60 "$UNIT active" unit_is_active
wait_for 120 "text-1 running" all_running
wait_for 120 "text-1's Celery has its pool child" text_pid_children
wait_for 30 "autoscale state steady (no backlog)" autoscale_state_is steady
status_json >/dev/null
assert_eq "$(jq_py 'group("text")["autoscale"]["min"]')" 1 "autoscale.min"
assert_eq "$(jq_py 'group("text")["autoscale"]["max"]')" 4 "autoscale.max"
assert_eq "$(jq_py 'group("text")["autoscale"]["desired"]')" 1 "autoscale.desired, idle"
assert_eq "$(jq_py 'group("text")["autoscale"]["current"]')" 1 "autoscale.current, idle"
assert_eq "$(jq_py 'group("text")["autoscale"]["manual"]')" null "autoscale.manual"
assert_eq "$(jq_py 'group("text")["autoscale"]["backlog"]')" 0 "autoscale.backlog, idle"
assert_eq "$(jq_py 'float(group("text")["autoscale"]["share"]) == 1.0')" true "autoscale.share of the only device"
assert_eq "$(jq_py '[i["id"] for i in group("text")["instances"]]')" '["text-1"]' "instances, idle"
text1_pid=$(jq_py 'inst("text-1")["pid"]')
note "MemAvailable idle: $(mem_available_mib) MiB; text leaf memory.current: $(( $(cat "$(unit_cgroup)/text/text-1/memory.current") >> 20 )) MiB"

step "make memory tight: a balloon holds MemAvailable at $TIGHT_MIB MiB (headroom $HEADROOM_MIB MiB)"
balloon_target() { echo "$1 $2" >"$BALLOON_TARGET.new" && mv "$BALLOON_TARGET.new" "$BALLOON_TARGET"; }
# settled at the target last written
balloon_settled() { [ "$(awk '{print $3, $4}' "$BALLOON_STATE" 2>/dev/null)" = "1 $(awk '{print $1}' "$BALLOON_TARGET")" ]; }
balloon_target "$TIGHT_MIB" 24
python3 "$SYSTEST_SHARE/systest/fixtures/memory-balloon.py" "$BALLOON_TARGET" "$BALLOON_STATE" >/root/balloon.log 2>&1 &
balloon_pid=$!
wait_for 120 "the balloon settled MemAvailable near $TIGHT_MIB MiB" balloon_settled
note "balloon: MemAvailable/held/settled/target: $(cat "$BALLOON_STATE"); /proc/meminfo MemAvailable $(mem_available_mib) MiB"
note "PSI memory: $(tr '\n' ' ' </proc/pressure/memory 2>/dev/null || echo none)"

step "queue a backlog: $TASKS demo.sleep tasks of 5 s on text_processing"
(cd "$APP_DIR" && python3 - "$TASKS" <<'PY') || fail "sending the backlog"
import sys
from demo.celery_app import app
n = int(sys.argv[1])
for i in range(n):
    app.send_task("demo.sleep", args=[5, f"autoscale-{i}"], queue="text_processing")
print(f"sent {n} tasks")
PY
note "LLEN text_processing: $(redis-cli -h 127.0.0.1 -p 6379 LLEN text_processing)"

step "the scale-up is refused for memory, and only text-1 runs"
one_instance='s["instances"] == ["text-1"] and s["current"] in (1, None)'
python3 "$POLL" /root/poll-refuse.jsonl $((60 * SYSTEST_TIME_FACTOR)) 's["state"] == "up-refused-memory"' "$one_instance" \
    || fail "no up-refused-memory within 60 s, or a second instance appeared: $(tail -n 3 /root/poll-refuse.jsonl)"
tail -n 1 /root/poll-refuse.jsonl
python3 "$POLL" /root/poll-hold.jsonl "$OBSERVE_SECS" False \
    "$one_instance and s['state'] == 'up-refused-memory' and s['desired'] == 4" \
    && fail "the poller stopped early"
rc=$?
[ "$rc" = 3 ] || fail "while memory is tight for $OBSERVE_SECS s (checks every 1 s), the group must stay at 1, refused, desired 4: $(tail -n 2 /root/poll-hold.jsonl)"
samples=$(wc -l </root/poll-hold.jsonl)
assert_ge "$samples" 5 "status samples while refused"
echo "ok: $OBSERVE_SECS s of checks: state up-refused-memory, desired 4, current 1, instances [text-1] in all $samples samples"
status_json >/dev/null
reason=$(jq_py 'group("text")["autoscale"]["reason"]')
note "reason: $reason (balloon: $(cat "$BALLOON_STATE"))"
assert_contains "$reason" MemAvailable "autoscale.reason"
assert_contains "$reason" headroom "autoscale.reason"
figures=$(reason_figures "$reason") || fail "the refusal's figures"
read -r avail per headroom <<<"$figures"
assert_eq "$headroom" "$HEADROOM_MIB" "the headroom in the reason (MiB)"
# The figure it names is the VM's (the balloon holds it within ±24 MiB).
[ "$avail" -ge $((TIGHT_MIB - 60)) ] && [ "$avail" -le $((TIGHT_MIB + 60)) ] \
    || fail "MemAvailable $avail MiB in the reason, but the balloon holds the VM's at $TIGHT_MIB ± 24 MiB"
echo "ok: the reason's MemAvailable $avail MiB is the VM's (about $TIGHT_MIB MiB)"
assert_eq "$(jq_py 'group("text")["autoscale"]["current"]')" 1 "autoscale.current while refused"
assert_gt "$(jq_py 'group("text")["autoscale"]["backlog"]')" 15 "autoscale.backlog while refused"
assert_eq "$(jq_py 'inst("text-1")["pid"]')" "$text1_pid" "text-1 pid (not restarted)"
[ ! -e "$(unit_cgroup)/text/text-2" ] || fail "a cgroup leaf text/text-2 exists while the scale-up is refused"
echo "ok: no text/text-2 cgroup leaf"

text=$(clearifyctl status) || fail "clearifyctl status failed"
# The autoscale line follows the group's header line ("text  queues: ...").
line=$(printf '%s\n' "$text" | awk 'prev ~ /^text / && /^autoscale / {print} {prev = $0}')
note "status: $(printf '%s\n' "$text" | grep -A1 '^text ' | tr '\n' '|')"
assert_contains "$line" "autoscale 1..4" "the autoscale line under text in clearifyctl status"
assert_contains "$line" "current 1" "the autoscale line of clearifyctl status"
assert_contains "$line" "refused" "the autoscale line of clearifyctl status"
assert_contains "$line" "MemAvailable" "the autoscale line of clearifyctl status"

step "MemAvailable above the headroom, but not by the per-instance estimate: still refused"
assert_ge "$per" 16 "the per-instance estimate in the reason (MiB; text-1's leaf: $(( $(cat "$(unit_cgroup)/text/text-1/memory.current") >> 20 )) MiB)"
# MemAvailable at headroom + half an instance: above the headroom, so only
# the estimate of one more instance can refuse.
between=$((HEADROOM_MIB + per / 2)) band=$((per / 4))
balloon_target "$between" "$band"
wait_for 60 "the balloon settled MemAvailable at $between ± $band MiB" balloon_settled
note "balloon: $(cat "$BALLOON_STATE")"
python3 "$POLL" /root/poll-between.jsonl 4 False \
    "$one_instance and s['state'] == 'up-refused-memory' and s['desired'] == 4" \
    && fail "the poller stopped early"
rc=$?
[ "$rc" = 3 ] || fail "with MemAvailable at headroom + half an instance, the group must stay at 1, refused: $(tail -n 2 /root/poll-between.jsonl)"
status_json >/dev/null
reason=$(jq_py 'group("text")["autoscale"]["reason"]')
note "reason: $reason (balloon: $(cat "$BALLOON_STATE"))"
figures=$(reason_figures "$reason") || fail "the refusal's figures"
read -r avail per headroom <<<"$figures"
assert_gt "$avail" "$headroom" "MemAvailable in the reason, above the headroom"
assert_ge "$headroom" $((avail - per)) "headroom vs MemAvailable - per instance"
echo "ok: refused at MemAvailable $avail MiB > headroom $headroom MiB, because $avail - $per <= $headroom"

step "journald: the refusal is logged once"
refusals() { [ "$(count_lines_with MemAvailable)" -ge 1 ]; }
wait_for 10 "a refusal line naming MemAvailable in journalctl -u $UNIT CLEARIFY_GROUP=text" refusals
journal_lines_with MemAvailable
assert_eq "$(count_lines_with MemAvailable)" 1 "refusal lines after $OBSERVE_SECS+ s of refused checks"
assert_eq "$(count_lines_with '1 → 2')" 0 "scale-up lines while refused"

step "free the memory: the group scales up to 4, one instance per check"
kill "$balloon_pid"
wait "$balloon_pid" 2>/dev/null || true
note "MemAvailable after the balloon: $(mem_available_mib) MiB"
# Between two samples less than one check apart, current grows by at most 1.
python3 "$POLL" /root/poll-up.jsonl $((90 * SYSTEST_TIME_FACTOR)) 's["current"] == 4 and len(s["instances"]) == 4' \
    'p is None or s["current"] is None or p["current"] is None or s["t"] - p["t"] >= 1.0 or s["current"] - p["current"] <= 1' \
    || fail "no scale-up to 4 within 90 s of freeing the memory (or two at once): $(tail -n 3 /root/poll-up.jsonl)"
tail -n 1 /root/poll-up.jsonl
python3 - /root/poll-up.jsonl <<'PY' || fail "the scale-up as status showed it"
import json, sys
ss = [json.loads(l) for l in open(sys.argv[1])]
seen = sorted({s["state"] for s in ss})
counts = [s["current"] for s in ss]
assert "up" in seen, f"state 'up' never seen while scaling up: {seen}"
assert counts == sorted(counts), f"current went down while scaling up: {counts}"
assert "up-refused-memory" not in [s["state"] for s in ss[-5:]], ss[-5:]
print(f"ok: states while scaling up {seen}; current {counts[0]} .. {counts[-1]} over {ss[-1]['t']} s, {len(ss)} samples")
PY
wait_for 120 "text-1 .. text-4 running" all_running
status_json >/dev/null
assert_eq "$(jq_py 'sorted(i["id"] for i in group("text")["instances"])')" '["text-1", "text-2", "text-3", "text-4"]' "instances after the scale-up"
assert_eq "$(jq_py 'group("text")["autoscale"]["current"]')" 4 "autoscale.current after the scale-up"
assert_eq "$(jq_py 'inst("text-1")["pid"]')" "$text1_pid" "text-1 pid (untouched by the scale-up)"
note "autoscale now: $(jq_py 'group("text")["autoscale"]')"
cg=$(unit_cgroup)
for n in 2 3 4; do
    pid=$(jq_py "inst('text-$n')['pid']")
    assert_eq "$(cut -d: -f3 /proc/"$pid"/cgroup)" "$(unit_prop ControlGroup)/text/text-$n" "cgroup of text-$n"
done
assert_eq "$(cat "$cg/text/memory.max")" $((600 * 1024 * 1024)) "text/memory.max (the group's, shared by its instances)"

step "journald: 1 → 2, 2 → 3, 3 → 4, each at its own check"
journal -u "$UNIT" CLEARIFY_GROUP=text -o json >/root/journal.json
python3 - /root/journal.json <<'PY' || fail "the scaling lines in journald"
import json, re, sys
ups = []
for line in open(sys.argv[1]):
    e = json.loads(line)
    m = e.get("MESSAGE")
    if not isinstance(m, str):
        continue
    r = re.search(r"text: (\d+) → (\d+) instances", m)
    if r:
        if int(r[1]) >= 1:  # a start at 0 → 1 is not part of this scale-up
            ups.append((int(e["__REALTIME_TIMESTAMP"]) / 1e6, int(r[1]), int(r[2]), m))
for t, a, b, m in ups:
    print(f"   {t:.3f} {m}")
steps = [(a, b) for _, a, b, _ in ups]
assert steps == [(1, 2), (2, 3), (3, 4)], f"expected 1 → 2, 2 → 3, 3 → 4, got {steps}"
# Three steps at three checks (1 s apart): the first and the last at least
# one check apart even if a late check runs early to catch up.
span = ups[-1][0] - ups[0][0]
assert span >= 1.0, f"1 → 2 and 3 → 4 only {span:.3f} s apart: more than one step per check"
print(f"ok: three steps of one instance over {span:.1f} s")
PY

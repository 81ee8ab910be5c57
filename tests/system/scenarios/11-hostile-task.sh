#!/bin/bash
# 11. A hostile task (issue 12, section 1). From inside a real Celery task of
# the packaged service (attack_tasks.py, loaded by the group "attack"), code
# running as the worker user tries to take the supervisor over or down:
# connect to the control sockets and stop another group; unlink, rename,
# chmod or plant anything in /run/clearify-workerd; signal or ptrace the
# daemon or read its environment; write any file of the delegated cgroup
# tree (its own memory.max included) or move itself into supervisor/.
# Every attempt must have run and failed; the task's uid is clearify-worker
# and its CapPrm, CapEff and CapAmb are 0. Afterwards nothing changed.
# systest-timeout: 600
. "$SYSTEST_LIB"

install_demo_app
install_attack_tasks
start_redis
install_deb
write_env
write_config <<TOML
[daemon]
device_id = "systest"

[broker]
url = "$BROKER_URL"

[celery]
app = "demo.celery_app"
command = "/usr/local/bin/celery"
workdir = "$APP_DIR"
env_file = "/etc/clearify/worker.env"
user = "$WORKER_USER"

[defaults]
stop_timeout = "30s"

[group.attack]
queues = ["attack"]
concurrency = 1
memory_max = "300M"
pids_max = 200
extra_args = ["--include", "attack_tasks"]

[group.billing]
queues = ["payments"]
concurrency = 1
TOML
clearify-workerd --check --config "$CONFIG" || fail "clearify-workerd --check rejects the scenario's config"
systemctl restart "$UNIT" || fail "systemctl restart $UNIT failed"
wait_for 60 "$UNIT active" unit_is_active
wait_for 180 "all workers running" all_running
wait_for 240 "attack-1@systest answers a Celery ping" celery_ready attack-1@systest
wait_for 240 "billing-1@systest answers a Celery ping" celery_ready billing-1@systest

daemon_pid=$(unit_prop MainPID)
billing_pid=$(instance_field billing-1 pid)
attack_pid=$(instance_field attack-1 pid)
cg=$(unit_cgroup)
leaf=$cg/attack/attack-1
[ -f "$leaf/memory.max" ] || fail "no $leaf/memory.max: the attack group has no cgroup leaf"
mem_before=$(cat "$leaf/memory.max")
pids_before=$(cat "$leaf/pids.max")
run_before=$(ls -la --time-style=+%s /run/clearify-workerd | sed 1d)
note "daemon pid $daemon_pid, attack-1 pid $attack_pid, billing-1 pid $billing_pid"
note "runtime dir: $(ls /run/clearify-workerd | tr '\n' ' ')"

step "ownership seen from root: nothing in the cgroup tree or /run/clearify-workerd for the worker uid"
assert_eq "$(find "$cg" /run/clearify-workerd \( -user "$WORKER_USER" -o -group "$WORKER_USER" -o -perm -o+w \) -print | head -5)" "" \
    "files of $WORKER_USER or world-writable in the delegated tree and the runtime dir"
assert_eq "$(stat -c %U "$cg" "$leaf" "$leaf/memory.max" "$leaf/cgroup.procs" "$cg/supervisor/cgroup.procs" | sort -u)" "$DAEMON_USER" \
    "owner of the unit's cgroup, the leaf, its memory.max and the cgroup.procs files"

step "the hostile task"
report=$SYSTEST_RESULTS/attack-report.json
tasks call attack.probe attack "[$daemon_pid, \"billing\"]" --timeout 180 >"$report" \
    || fail "the attack task did not return a report: $(cat "$report")"
verdict=0
python3 - "$report" <<'PY' || verdict=$?
import json, sys
r = json.load(open(sys.argv[1]))
f, attempts = r["facts"], r["attempts"]
print(f"task facts: uid {f['uid']} ({f['user']}), groups {f['groups']}, cgroup {f['cgroup']}")
print(f"            caps {f['caps']}")
print(f"            sockets {f['sockets']}, {f['cgroup_files_tried']} cgroup files tried")
print(f"            runtime dir {f['run_dir_tree']}")
bad = []
for a in attempts:
    mark = "ok  " if a["ran"] and not a["succeeded"] else "FAIL"
    print(f"  {mark} {a['name']}: {a['detail']}")
    if not a["ran"]:
        bad.append(f"did not run: {a['name']}: {a['detail']}")
    elif a["succeeded"]:
        bad.append(f"WORKED: {a['name']}: {a['detail']}")
names = " | ".join(a["name"] for a in attempts)
# The attempts that must be in the report, so that none is skipped silently.
required = [
    "connect /run/clearify-workerd/control.sock",
    "clearifyctl stop billing via /run/clearify-workerd/control.sock",
    "unlink /run/clearify-workerd/control.sock",
    "rename /run/clearify-workerd/control.sock",
    "chmod 0777 /run/clearify-workerd/control.sock",
    "bind a socket in /run/clearify-workerd",
    "create a file in /run/clearify-workerd",
    "chmod 0777 /run/clearify-workerd",
    "kill -0 the daemon", "kill -HUP the daemon", "kill -0 the daemon from a forked child",
    "PTRACE_ATTACH the daemon", "/environ",
    "/memory.max", "/pids.max", "move self into", "/supervisor",
    "open any file under",
]
for s in f["sockets"]:
    required += [f"connect {s}", f"clearifyctl stop billing via {s}",
                 f"chmod 0777 {s}", f"rename {s}", f"unlink {s}"]
for p in f["run_dir_tree"]:
    required += [f"chmod 0777 {p}", f"rename {p}"]
if not any(s.endswith("/admin.sock") for s in f["sockets"]):
    bad.append(f"no admin.sock among {f['sockets']}: the two-socket control (issue 12, section 2) is missing")
for need in required:
    if need not in names:
        bad.append(f"missing attempt: {need}")
if f["cgroup_files_tried"] < 20:
    bad.append(f"only {f['cgroup_files_tried']} cgroup files tried")
if f["user"] != "clearify-worker":
    bad.append(f"the task runs as {f['user']}, not clearify-worker")
if any(g in ("clearify", "clearify-admin") for g in f["groups"]):
    bad.append(f"the task's groups include the daemon's: {f['groups']}")
for k in ("CapPrm", "CapEff", "CapAmb"):
    if int(f["caps"].get(k, "ff"), 16) != 0:
        bad.append(f"the task's {k} is {f['caps'].get(k)}")
print(f"{len(attempts)} attempts")
if bad:
    print("FAILED CHECKS:")
    for b in bad:
        print("  " + b)
    sys.exit(1)
PY

step "users: the daemon runs as $DAEMON_USER, the workers as $WORKER_USER"
assert_eq "$(proc_user "$daemon_pid")" "$DAEMON_USER" "user of the daemon"
for p in "$attack_pid" "$billing_pid" $(pool_children "$attack_pid"); do
    assert_eq "$(proc_user "$p")" "$WORKER_USER" "user of worker process $p"
    caps=$(awk '/^Cap(Prm|Eff|Amb):/ {printf "%s=%s ", $1, $2}' /proc/"$p"/status)
    assert_eq "$caps" "CapPrm:=0000000000000000 CapEff:=0000000000000000 CapAmb:=0000000000000000 " \
        "capability sets of worker process $p"
done

[ "$verdict" = 0 ] || fail "the attack report shows a worked attack, an attempt that did not run, or a missing attempt (results/attack-report.json)"
echo "ok: every attack from inside the task was refused"


step "afterwards: nothing changed"
assert_eq "$(unit_prop MainPID)" "$daemon_pid" "daemon pid"
assert_eq "$(instance_field billing-1 state)" running "billing-1 state"
assert_eq "$(instance_field billing-1 pid)" "$billing_pid" "billing-1 pid"
assert_eq "$(cat "$leaf/memory.max")" "$mem_before" "attack-1 memory.max"
assert_eq "$(cat "$leaf/pids.max")" "$pids_before" "attack-1 pids.max"
assert_eq "$(ls -la --time-style=+%s /run/clearify-workerd | sed 1d)" "$run_before" "runtime dir listing"
[ -z "$(cat "$cg/supervisor/cgroup.procs" | grep -vx "$daemon_pid" || true)" ] \
    || fail "processes other than the daemon in supervisor/: $(cat "$cg/supervisor/cgroup.procs")"
echo "ok: only the daemon in supervisor/"
assert_contains "$(cat "$leaf/cgroup.procs")" "$attack_pid" "attack-1's cgroup.procs"
assert_cmd "billing still runs tasks" tasks batch payments 5 --timeout 120

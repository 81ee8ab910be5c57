# Shared helpers for the system-test scenarios (sourced inside the guest).
# Every assert_* exits the scenario with status 1 and a FAIL line naming what
# was expected and what was found. Nothing here skips silently.
# shellcheck shell=bash
set -euo pipefail

SYSTEST_SHARE=${SYSTEST_SHARE:-/mnt/share}
SYSTEST_RESULTS=${SYSTEST_RESULTS:-$SYSTEST_SHARE/results}
SYSTEST_PHASE=${SYSTEST_PHASE:-1}
# Multiplies every wait below (wait_for, celery_ready, tasks): 1 on amd64;
# run.sh --arch arm64 sets 3 (TCG emulating arm64 is slower).
SYSTEST_TIME_FACTOR=${SYSTEST_TIME_FACTOR:-1}
export SYSTEST_TIME_FACTOR
DEMO_SRC=$SYSTEST_SHARE/examples/demo_app
# Where the scenarios install the example app inside the guest (the 9p share
# is root-owned and not a place for the service user's workdir).
APP_DIR=/opt/clearify/app
UNIT=clearify-workerd
CONFIG=/etc/clearify/workers.toml
BROKER_URL=redis://127.0.0.1:6379/0
export CELERY_BROKER_URL=$BROKER_URL

_t0=$(date +%s)
trap '_rc=$?; if [ $_rc != 0 ]; then echo "FAIL: scenario ${SYSTEST_SCENARIO:-?} phase $SYSTEST_PHASE exited $_rc after $(( $(date +%s) - _t0 )) s" >&2; fi' EXIT

step() { echo "== [$(( $(date +%s) - _t0 ))s] $*"; }
note() { echo "   $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

assert_eq() { # actual expected what
    [ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"
    echo "ok: $3 = '$2'"
}
assert_ne() { # actual unexpected what
    [ "$1" != "$2" ] || fail "$3: expected anything but '$2'"
    echo "ok: $3 != '$2'"
}
assert_contains() { # haystack needle what
    case "$1" in *"$2"*) echo "ok: $3 contains '$2'" ;; *) fail "$3: '$2' not found in: $(printf '%s' "$1" | head -c 2000)" ;; esac
}
assert_not_contains() { # haystack needle what
    case "$1" in *"$2"*) fail "$3: '$2' unexpectedly found in: $(printf '%s' "$1" | head -c 2000)" ;; *) echo "ok: $3 lacks '$2'" ;; esac
}
assert_ge() { # actual min what  (integers)
    [ "$1" -ge "$2" ] 2>/dev/null || fail "$3: expected >= $2, got '$1'"
    echo "ok: $3 = $1 (>= $2)"
}
assert_gt() { # actual min what  (integers)
    [ "$1" -gt "$2" ] 2>/dev/null || fail "$3: expected > $2, got '$1'"
    echo "ok: $3 = $1 (> $2)"
}
assert_cmd() { # what cmd...   the command must succeed
    local what=$1; shift
    local out
    if out=$("$@" 2>&1); then echo "ok: $what"; else fail "$what: '$*' failed ($?): $out"; fi
}
assert_fails() { # what cmd...   the command must fail
    local what=$1; shift
    local out
    if out=$("$@" 2>&1); then fail "$what: '$*' succeeded but must fail: $out"; else echo "ok: $what (failed as expected)"; fi
}
assert_exit() { # expected_code what cmd...
    local want=$1 what=$2; shift 2
    local rc=0 out
    out=$("$@" 2>&1) || rc=$?
    [ "$rc" = "$want" ] || fail "$what: '$*' exited $rc, expected $want: $out"
    echo "ok: $what (exit $rc)"
    LAST_OUTPUT=$out
}

# wait_for SECS what cmd...: poll the command every 0.25 s until it succeeds;
# fail the scenario after SECS (times SYSTEST_TIME_FACTOR) seconds.
wait_for() {
    local secs=$(($1 * SYSTEST_TIME_FACTOR)) what=$2; shift 2
    local deadline=$(( $(date +%s%N) / 1000000 + secs * 1000 )) start=$(date +%s%N)
    until "$@" >/dev/null 2>&1; do
        if [ $(( $(date +%s%N) / 1000000 )) -ge "$deadline" ]; then
            fail "timed out after ${secs}s waiting for: $what"
        fi
        sleep 0.25
    done
    echo "ok: $what (after $(( ($(date +%s%N) - start) / 1000000 )) ms)"
}

# ---- Redis ------------------------------------------------------------------
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
start_redis() {
    systemctl start redis-server
    wait_for 30 "redis answers PING" redis_ping
}
stop_redis() {
    systemctl stop redis-server
    wait_for 30 "redis stopped" sh -c '! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1'
}

# ---- example app and package ------------------------------------------------
install_demo_app() {
    mkdir -p "$APP_DIR"
    cp -a "$DEMO_SRC"/. "$APP_DIR"/
    chown -R root:root "$APP_DIR"
    chmod -R a+rX "$APP_DIR"
    (cd "$APP_DIR" && python3 -c 'import demo.celery_app') || fail "the example app does not import from $APP_DIR"
}

deb_path() {
    local debs
    debs=$(ls -1 "$SYSTEST_SHARE"/deb/*.deb 2>/dev/null || true)
    [ -n "$debs" ] || fail "no .deb in the share: pass run.sh --deb PATH (or build dist/clearify-workerd_*_<arch>.deb first)"
    [ "$(echo "$debs" | wc -l)" = 1 ] || fail "more than one .deb in the share: $debs"
    echo "$debs"
}

# install_deb: apt install ./clearify-workerd_*_amd64.deb, offline (every
# dependency must already be in the image).
install_deb() {
    local deb
    deb=$(deb_path)
    cp "$deb" /root/
    step "apt install $(basename "$deb")"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "/root/$(basename "$deb")" \
        || fail "apt install of $(basename "$deb") failed"
}

# write_env: the worker environment file, pointing the example app at the
# local Redis (the packaged file holds placeholders).
write_env() {
    getent group clearify >/dev/null || fail "no clearify group: the package did not create it"
    printf 'CELERY_BROKER_URL=%s\nCELERY_RESULT_BACKEND=%s\n' "$BROKER_URL" "$BROKER_URL" >/etc/clearify/worker.env
    chown root:clearify /etc/clearify/worker.env
    chmod 0640 /etc/clearify/worker.env
}

# write_config FILE-CONTENT: replace workers.toml (stdin).
write_config() {
    mkdir -p /etc/clearify
    cat >"$CONFIG"
    chmod 0644 "$CONFIG"
}

# The head of every scenario's workers.toml: [daemon] (with $DAEMON_EXTRA),
# [broker] (with $BROKER_EXTRA, e.g. 'check_interval = "1s"'), [celery] for
# the demo app, [defaults]. Printed; the groups follow it.
config_head() {
    cat <<TOML
[daemon]
device_id = "systest"
$DAEMON_EXTRA

[broker]
url = "$BROKER_URL"
${BROKER_EXTRA:-}

[celery]
app = "demo.celery_app"
command = "/usr/local/bin/celery"
workdir = "$APP_DIR"
env_file = "/etc/clearify/worker.env"
user = "$WORKER_USER"
loglevel = "info"

[defaults]
stop_timeout = "60s"
restart_delay = "100ms"
TOML
}

# The two-group config used by most scenarios. $1: extra keys for
# [group.text] (e.g. 'memory_max = "200M"'), $2: extra keys for [group.billing].
two_group_config() {
    local text_extra=${1:-} billing_extra=${2:-}
    {
        config_head
        cat <<TOML

[group.text]
queues = ["text_processing"]
concurrency = 2
$text_extra

[group.billing]
queues = ["payments", "webhooks"]
concurrency = 1
$billing_extra
TOML
    } | write_config
    clearify-workerd --check --config "$CONFIG" || fail "clearify-workerd --check rejects the scenario's config"
}

# Extra [daemon] keys for two_group_config (e.g. admin_group = "...").
DAEMON_EXTRA=${DAEMON_EXTRA:-}
# The daemon's user and the workers' user, as the package creates them and
# the shipped workers.toml sets them (issue 12).
DAEMON_USER=clearify
WORKER_USER=${WORKER_USER:-clearify-worker}

# setup_service [TEXT_EXTRA] [BILLING_EXTRA]: the common start of a scenario:
# the example app, Redis, the package, the two-group config; the service
# restarted on it, every worker running and answering Celery pings.
setup_service() {
    install_demo_app
    start_redis
    install_deb
    write_env
    two_group_config "$@"
    step "restart $UNIT on the two-group config"
    systemctl restart "$UNIT" || fail "systemctl restart $UNIT failed"
    wait_for 60 "$UNIT active" unit_is_active
    wait_for 180 "all workers running" all_running
    wait_for 240 "text-1@systest answers a Celery ping" celery_ready text-1@systest
    wait_for 240 "billing-1@systest answers a Celery ping" celery_ready billing-1@systest
}

# ---- the service ---------------------------------------------------------------
unit_prop() { systemctl show -p "$1" --value "$UNIT"; }
unit_is_active() { [ "$(unit_prop ActiveState)" = active ]; }

# status_json: clearifyctl status --json into $STATUS_FILE (and stdout).
STATUS_FILE=/root/status.json
status_json() {
    clearifyctl status --json >"$STATUS_FILE" || fail "clearifyctl status --json failed"
    cat "$STATUS_FILE"
}
# jq_py EXPR: evaluate a Python expression over the status document `d`
# (from $STATUS_FILE); prints the result (str as is, else JSON).
jq_py() {
    python3 - "$1" "$STATUS_FILE" <<'PY'
import json, sys
expr, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
def inst(iid):
    for g in d["groups"]:
        for i in g["instances"]:
            if i["id"] == iid:
                return i
    raise SystemExit(f"no instance {iid} in status")
def group(name):
    for g in d["groups"]:
        if g["name"] == name:
            return g
    raise SystemExit(f"no group {name} in status")
v = eval(expr)
print(v if isinstance(v, str) else json.dumps(v))
PY
}
# instance_field ID FIELD: one field of one instance from a fresh status.
instance_field() {
    clearifyctl status --json >"$STATUS_FILE" 2>/dev/null || return 1
    jq_py "inst('$1')['$2']"
}
# all_running: every instance of every group is running with a pid.
all_running() {
    clearifyctl status --json >"$STATUS_FILE" 2>/dev/null || return 1
    [ "$(jq_py 'all(i["state"] == "running" and i["pid"] for g in d["groups"] for i in g["instances"]) and len(d["groups"]) > 0')" = true ]
}
instance_running() { [ "$(instance_field "$1" state)" = running ]; }
instance_state_is() { [ "$(instance_field "$1" state)" = "$2" ]; }

# start_service_and_wait: enable --now and wait for every instance running.
start_service_and_wait() {
    systemctl enable --now "$UNIT" || fail "systemctl enable --now $UNIT failed"
    wait_for 120 "$UNIT active" unit_is_active
    wait_for 180 "all workers running" all_running
}

# celery_ready NODE: the node answers a Celery ping (it consumes).
celery_ready() {
    (cd "$APP_DIR" && timeout $((20 * SYSTEST_TIME_FACTOR)) python3 -m celery -A demo.celery_app inspect ping -d "$1" -t $((3 * SYSTEST_TIME_FACTOR))) >/dev/null 2>&1
}

# install_attack_tasks: the hostile task module (attack_tasks.py) next to the
# example app, for a group with extra_args = ["--include", "attack_tasks"].
install_attack_tasks() {
    install -m 0644 "$SYSTEST_SHARE/systest/attack_tasks.py" "$APP_DIR/attack_tasks.py"
    (cd "$APP_DIR" && python3 -c 'import attack_tasks') || fail "attack_tasks does not import from $APP_DIR"
}

# tasks.py: send tasks with the example app and check their results (its
# --timeout is multiplied by SYSTEST_TIME_FACTOR in tasks.py).
tasks() { (cd "$APP_DIR" && timeout $((600 * SYSTEST_TIME_FACTOR)) python3 "$SYSTEST_SHARE/systest/tasks.py" "$@"); }

# pids of the processes in a cgroup (recursively), one per line.
cgroup_pids() { find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -n; }
unit_cgroup() { echo "/sys/fs/cgroup$(unit_prop ControlGroup)"; }

# journal_since_boot args...: journalctl of this boot, no pager.
journal() { journalctl -b --no-pager "$@"; }

# request_next_boot: ask the host to boot this disk again and run the
# scenario's next phase (SYSTEST_PHASE+1) after this one exits 0.
request_next_boot() {
    touch "$SYSTEST_RESULTS/next-phase"
    echo "requested boot $((SYSTEST_PHASE + 1)) on the same disk"
}

# pool_children PID: the direct children of a worker's main process.
pool_children() { pgrep -P "$1" | sort -n || true; }
# proc_user PID: the user name a process runs as.
proc_user() { ps -o user= -p "$1" | tr -d ' '; }
# now_ms: wall clock in milliseconds.
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

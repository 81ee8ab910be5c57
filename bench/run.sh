#!/usr/bin/env bash
# The clearify-workerd benchmark (issues 2 and 3): bench/run.sh [N...]
#
# Builds the release binaries (cargo build --release --locked) and the
# trivial worker (gcc -O2 -static bench/trivial-worker.c), starts a
# redis-server on a free 127.0.0.1 port, and for each N (default: 10 200)
# runs the daemon with N instances and measures start, RSS, idle CPU,
# `clearifyctl status`, restart latency and stop (see bench/bench.py).
# Prints a table and writes bench/out/summary.md, bench/out/results-nN.json
# and the daemon logs as bench/out/daemon-nN.log.
#
# Needs: cargo, gcc with a static libc (libc6-dev), redis-server, python3.
# Run it as root (the daemon then runs the workers as "nobody", as in
# production) or as a normal user. Environment knobs:
#   BENCH_IDLE=30          seconds of one idle CPU measurement
#   BENCH_IDLE_WINDOWS=3   idle measurements in a row (the headline is the worst)
#   BENCH_STATUS_RUNS=200  clearifyctl status runs
#   BENCH_KILLS=50         SIGKILLs for the restart latency
#   BENCH_NICE=0           niceness of the whole run (e.g. -10 on a busy machine)
#   BENCH_NOTIFY=1         give the daemon a NOTIFY_SOCKET as systemd does (0: none)
#   BENCH_WATCHDOG=30      and WATCHDOG_USEC, as the packaged unit's WatchdogSec=30s (0: none)
#   BENCH_NO_BUILD=1       skip cargo build (use target/release as it is)
#   BENCH_DAEMON=PATH      another clearify-workerd binary (e.g. a patched build)
#   BENCH_CTL=PATH         another clearifyctl binary
#   BENCH_OUT=DIR          where results go (default bench/out)
#   BENCH_KEEP=1           keep the scratch directory (daemon logs, configs)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out="${BENCH_OUT:-$here/out}"
[ "$#" -gt 0 ] || set -- 10 200

for tool in cargo gcc redis-server python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required but not found" >&2; exit 1; }
done

mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/clearify-bench.XXXXXX")
chmod 755 "$work"

cleanup() {
    local rc=$?
    # Whatever bench.py left behind after a failure: the daemon and
    # redis-server carry BENCH_SCRATCH=$work in their environment, the
    # workers BENCH_RECORD=$work/... (matched by pid, never by name).
    for env in /proc/[0-9]*/environ; do
        if grep -qsaF -e "BENCH_SCRATCH=$work" -e "BENCH_RECORD=$work/" "$env" 2>/dev/null; then
            pid=${env#/proc/}; pid=${pid%/environ}
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
        echo "bench: scratch directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    (cd "$root" && cargo build --release --locked --bins)
fi
daemon="${BENCH_DAEMON:-$root/target/release/clearify-workerd}"
ctl="${BENCH_CTL:-$root/target/release/clearifyctl}"
[ -x "$daemon" ] && [ -x "$ctl" ] || { echo "bench: $daemon or $ctl missing" >&2; exit 1; }

worker="$work/trivial-worker"
gcc -O2 -static -Wall -o "$worker" "$here/trivial-worker.c"
chmod 755 "$worker"
idle_floor="$work/idle-floor"
gcc -O2 -static -Wall -o "$idle_floor" "$here/idle-floor.c"

# BENCH_NICE=-10 runs everything (harness, redis, daemon, hence workers) at
# a higher priority, to keep other load on a shared machine out of the
# latency figures; say so when you quote them.
nice_cmd=()
if [ "${BENCH_NICE:-0}" != 0 ]; then
    nice_cmd=(nice -n "$BENCH_NICE")
fi

"${nice_cmd[@]}" python3 "$here/bench.py" \
    --daemon "$daemon" --ctl "$ctl" --worker "$worker" --idle-floor "$idle_floor" \
    --work "$work" --out "$out" \
    --idle "${BENCH_IDLE:-30}" --idle-windows "${BENCH_IDLE_WINDOWS:-3}" --status-runs "${BENCH_STATUS_RUNS:-200}" \
    --kills "${BENCH_KILLS:-50}" --notify "${BENCH_NOTIFY:-1}" --watchdog-sec "${BENCH_WATCHDOG:-30}" \
    "$@"

# Keep the daemon logs of this run next to the results.
for d in "$work"/n*; do
    [ -f "$d/daemon.log" ] && cp "$d/daemon.log" "$out/daemon-$(basename "$d").log"
done
echo "bench: results in $out" >&2

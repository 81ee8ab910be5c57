#!/bin/bash
# In-guest runner (lives in the 9p share; started by the image's
# systest-runner.service through /usr/local/sbin/systest-boot).
#
# Reads $SHARE/run.conf (written by run.sh): SYSTEST_SCENARIO, SYSTEST_PHASE,
# SYSTEST_TIMEOUT, SYSTEST_TIME_FACTOR (the multiplier of every wait: 1 on
# amd64, more on slower emulated architectures). Waits for the boot to finish, runs the scenario script as
# root with a hard timeout, writes into $SHARE/results/:
#   phase<N>.started   guest uptime (s) when the runner began, and the boot state
#   phase<N>.log       the scenario's stdout and stderr
#   phase<N>.rc        its exit code (124 = timed out)
#   phase<N>.journal   the whole journal of this boot, when the scenario failed
# and then powers the VM off. A scenario asks for another boot on the same
# disk by creating $SYSTEST_RESULTS/next-phase (lib.sh: request_next_boot).
set -u
SHARE=/mnt/share
RESULTS=$SHARE/results
say() { echo "SYSTEST: $*" >/dev/console; }

# shellcheck source=/dev/null
. "$SHARE/run.conf"
scenario=$SYSTEST_SCENARIO
phase=$SYSTEST_PHASE
limit=$SYSTEST_TIMEOUT
factor=${SYSTEST_TIME_FACTOR:-1}
mkdir -p "$RESULTS"

up=$(cut -d' ' -f1 /proc/uptime)
say "runner up at ${up}s, waiting for the boot to finish"
state=$(timeout $((180 * factor)) systemctl is-system-running --wait 2>&1)
up2=$(cut -d' ' -f1 /proc/uptime)
printf 'runner_uptime=%s\nboot_done_uptime=%s\nsystem_state=%s\n' "$up" "$up2" "$state" >"$RESULTS/phase$phase.started.tmp"
if [ "$state" != running ]; then
    systemctl --failed --no-legend --plain >>"$RESULTS/phase$phase.started.tmp" 2>&1
fi
mv "$RESULTS/phase$phase.started.tmp" "$RESULTS/phase$phase.started"
say "boot finished at ${up2}s (state: $state); running $scenario phase $phase (timeout ${limit}s)"

export SYSTEST_SHARE=$SHARE SYSTEST_RESULTS=$RESULTS SYSTEST_PHASE=$phase SYSTEST_SCENARIO=$scenario
export SYSTEST_LIB=$SHARE/systest/lib.sh SYSTEST_TIME_FACTOR=$factor
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /root || exit 1
t0=$(date +%s)
timeout -k 15 "$limit" bash "$SHARE/systest/scenarios/$scenario.sh" </dev/null >"$RESULTS/phase$phase.log" 2>&1
rc=$?
t1=$(date +%s)
echo "$rc" >"$RESULTS/phase$phase.rc.tmp"
echo "$((t1 - t0))" >"$RESULTS/phase$phase.secs"
if [ "$rc" != 0 ]; then
    journalctl -b --no-pager -o short-monotonic >"$RESULTS/phase$phase.journal" 2>&1
fi
mv "$RESULTS/phase$phase.rc.tmp" "$RESULTS/phase$phase.rc"
sync
say "RESULT scenario=$scenario phase=$phase rc=$rc secs=$((t1 - t0))"
systemctl poweroff --no-block

#!/bin/bash
# 13. A SIGKILLed daemon under the packaged unit (issue 12, section 5, with
# the two users of section 1): the daemon runs as clearify, the workers as
# clearify-worker, whose /proc entries the daemon cannot see
# (ProtectProc=invisible). After `kill -9` of the daemon, systemd restarts
# it (Restart=on-failure); once the new daemon runs every worker again,
# each node name runs exactly once (one worker main process per instance,
# a child of the new daemon), and no process of the old run is left.
# systest-timeout: 600
. "$SYSTEST_LIB"

setup_service
old_daemon=$(unit_prop MainPID)
old_text=$(instance_field text-1 pid)
old_billing=$(instance_field billing-1 pid)
note "daemon $old_daemon, text-1 $old_text, billing-1 $old_billing"

# roots NODE: pids of the worker main processes of one node name: processes
# whose command line has "-n NODE" and whose parent's has not (the pool
# children share the command line).
roots() {
    local node=$1 pid ppid
    for pid in $(pgrep -f -- "-n $node( |$)"); do
        ppid=$(awk '/^PPid:/ {print $2}' /proc/"$pid"/status 2>/dev/null) || continue
        tr '\0' ' ' </proc/"$ppid"/cmdline 2>/dev/null | grep -Eq -- "-n $node( |$)" || echo "$pid"
    done
}

step "kill -9 the daemon"
kill -9 "$old_daemon"
wait_for 90 "a new daemon" sh -c "p=\$(systemctl show -p MainPID --value $UNIT); [ \"\$p\" != 0 ] && [ \"\$p\" != $old_daemon ]"
wait_for 60 "$UNIT active" unit_is_active
wait_for 180 "all workers running under the new daemon" all_running
new_daemon=$(unit_prop MainPID)
note "new daemon $new_daemon; restarts: $(unit_prop NRestarts)"
assert_fails "the old text-1 is gone" kill -0 "$old_text"
assert_fails "the old billing-1 is gone" kill -0 "$old_billing"
for node in text-1@systest billing-1@systest; do
    r=$(roots "$node" | tr '\n' ' ')
    assert_eq "$(echo $r | wc -w)" 1 "worker main processes of $node ($r)"
    assert_eq "$(awk '/^PPid:/ {print $2}' /proc/${r% }/status)" "$new_daemon" "parent of $node's worker"
    assert_eq "$(proc_user ${r% })" "$WORKER_USER" "user of $node's worker"
done
wait_for 240 "text-1@systest answers a Celery ping" celery_ready text-1@systest
assert_cmd "tasks run after the crash" tasks batch text_processing 5 --timeout 180

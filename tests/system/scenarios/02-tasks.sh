#!/bin/bash
# 2. Tasks: two groups (text_processing x2; payments+webhooks x1); 50 tasks
# per queue are all executed with correct results; status --json shows both
# groups running with their node names.
# systest-timeout: 900
. "$SYSTEST_LIB"

setup_service

step "status --json: both groups running, with node names"
status_json >/dev/null
assert_eq "$(jq_py 'sorted(g["name"] for g in d["groups"])')" '["billing", "text"]' "groups"
assert_eq "$(jq_py 'sorted(q["name"] for q in group("billing")["queues"])')" '["payments", "webhooks"]' "billing queues"
assert_eq "$(jq_py '[q["name"] for q in group("text")["queues"]]')" '["text_processing"]' "text queues"
assert_eq "$(jq_py 'inst("text-1")["node"]')" text-1@systest "text-1 node"
assert_eq "$(jq_py 'inst("billing-1")["node"]')" billing-1@systest "billing-1 node"
assert_eq "$(jq_py 'inst("text-1")["state"]')" running "text-1 state"
assert_eq "$(jq_py 'inst("billing-1")["state"]')" running "billing-1 state"
assert_eq "$(jq_py 'd["daemon"]["broker"]["state"]')" ok "broker state"
assert_eq "$(jq_py 'd["daemon"]["device_id"]')" systest "device id"
text_pid=$(jq_py 'inst("text-1")["pid"]')
billing_pid=$(jq_py 'inst("billing-1")["pid"]')

step "concurrency: pool children per worker"
wait_for 60 "text-1 has 2 pool children" sh -c "[ \$(pgrep -P $text_pid | wc -l) = 2 ]"
wait_for 60 "billing-1 has 1 pool child" sh -c "[ \$(pgrep -P $billing_pid | wc -l) = 1 ]"
assert_contains "$(tr '\0' ' ' </proc/"$text_pid"/cmdline)" "-n text-1@systest" "text-1 command line"
assert_contains "$(tr '\0' ' ' </proc/"$text_pid"/cmdline)" "-Q text_processing" "text-1 command line"
assert_contains "$(tr '\0' ' ' </proc/"$billing_pid"/cmdline)" "-Q payments,webhooks" "billing-1 command line"

step "cgroup layout: each worker in <unit>/<group>/<instance>, the daemon in <unit>/supervisor"
cg=$(unit_prop ControlGroup)
assert_eq "$(cut -d: -f3 /proc/"$text_pid"/cgroup)" "$cg/text/text-1" "cgroup of text-1"
assert_eq "$(cut -d: -f3 /proc/"$billing_pid"/cgroup)" "$cg/billing/billing-1" "cgroup of billing-1"
assert_eq "$(cut -d: -f3 /proc/"$(unit_prop MainPID)"/cgroup)" "$cg/supervisor" "cgroup of the daemon"

step "50 tasks per queue, results checked"
for q in text_processing payments webhooks; do
    tasks batch "$q" 50 --timeout 400 || fail "tasks on $q"
done

step "the workers that ran them are the ones we started"
status_json >/dev/null
assert_eq "$(jq_py 'inst("text-1")["pid"]')" "$text_pid" "text-1 pid after the tasks"
assert_eq "$(jq_py 'inst("billing-1")["pid"]')" "$billing_pid" "billing-1 pid after the tasks"
assert_eq "$(jq_py 'inst("text-1")["restarts"]')" 0 "text-1 restarts"
assert_eq "$(jq_py 'inst("billing-1")["restarts"]')" 0 "billing-1 restarts"

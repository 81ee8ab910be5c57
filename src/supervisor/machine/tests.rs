//! Unit tests of the state machine, driven by tokio's paused clock.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;
use crate::plan::{GroupPlan, InstanceSpec, Limits, Plan, Timing};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn timing() -> Timing {
    Timing {
        stop_timeout: 60 * S,
        restart_delay: 100 * MS,
        restart_delay_max: 60 * S,
        stable_after: 30 * S,
        heartbeat_timeout: Some(60 * S),
        stall_timeout: Some(300 * S),
    }
}

fn group(name: &str, queues: &[&str], instances: u32, concurrency: u32) -> GroupPlan {
    GroupPlan {
        name: name.into(),
        queues: queues.iter().map(|q| q.to_string()).collect(),
        limits: Limits::default(),
        instances: (1..=instances)
            .map(|i| {
                Arc::new(InstanceSpec {
                    id: format!("{name}-{i}"),
                    group: name.into(),
                    index: i,
                    node: format!("{name}-{i}@dev"),
                    program: "/usr/bin/celery".into(),
                    args: vec!["-c".into(), concurrency.to_string()],
                    env: BTreeMap::new(),
                    cwd: "/".into(),
                    user: None,
                    timing: timing(),
                })
            })
            .collect(),
        concurrency,
        autoscale: None,
        start: instances,
    }
}

fn plan(groups: Vec<GroupPlan>) -> Plan {
    Plan {
        device_id: "dev".into(),
        groups,
    }
}

fn machine(p: Plan) -> Machine {
    Machine::new(p, true, Box::new(|| 0.0))
}

/// The ids of the Spawn actions, and the generation of each.
fn spawns(actions: &[Action]) -> Vec<(String, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { spec, generation } => Some((spec.id.clone(), *generation)),
            _ => None,
        })
        .collect()
}

fn signals(actions: &[Action]) -> Vec<(String, StopSignal)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { id, signal, .. } => Some((id.clone(), *signal)),
            _ => None,
        })
        .collect()
}

fn kills(actions: &[Action]) -> Vec<(String, Option<u32>, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::KillTree { id, pgid, seq, .. } => Some((id.clone(), *pgid, *seq)),
            _ => None,
        })
        .collect()
}

/// The state's wire spelling, as status shows it.
fn state(m: &Machine, id: &str) -> &'static str {
    m.snapshot(Instant::now())
        .into_iter()
        .find(|v| v.id == id)
        .unwrap_or_else(|| panic!("no instance {id}"))
        .state
        .as_str()
}

/// The last exit as status shows it.
fn last_exit(v: &InstanceView) -> Option<String> {
    v.last_exit
        .as_ref()
        .map(|r| crate::supervisor::status::exit_text(r, v.state, v.quick_failures))
}

fn view(m: &Machine, id: &str) -> InstanceView {
    m.snapshot(Instant::now())
        .into_iter()
        .find(|v| v.id == id)
        .unwrap()
}

/// Boot and confirm every spawn with pids 100, 101, …
fn boot_all(m: &mut Machine) -> BTreeMap<String, u32> {
    m.boot(Instant::now());
    let mut pids = BTreeMap::new();
    for (i, (id, generation)) in spawns(&m.take_actions()).into_iter().enumerate() {
        let pid = 100 + i as u32;
        m.spawned(&id, generation, pid, Instant::now());
        pids.insert(id, pid);
    }
    pids
}

/// Let the machine fire deadlines up to now.
fn tick(m: &mut Machine) -> Vec<Action> {
    m.tick(Instant::now());
    m.take_actions()
}

#[tokio::test(start_paused = true)]
async fn boot_prepares_groups_and_spawns_every_instance() {
    let mut m = machine(plan(vec![
        group("text", &["text_processing"], 2, 2),
        group("billing", &["payments", "webhooks"], 1, 1),
    ]));
    m.boot(Instant::now());
    let actions = m.take_actions();
    assert_eq!(
        actions[0],
        Action::PrepareGroup {
            group: "text".into(),
            limits: Limits::default()
        }
    );
    let ids: Vec<String> = spawns(&actions).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec!["text-1", "text-2", "billing-1"]);
    assert_eq!(state(&m, "text-1"), "starting");
    m.spawned("text-1", 1, 42, Instant::now());
    assert_eq!(view(&m, "text-1").pid, Some(42));
    assert_eq!(state(&m, "text-1"), "starting", "up only after UP_AFTER");
    advance(UP_AFTER).await;
    assert_eq!(state(&m, "text-1"), "running");
}

#[tokio::test(start_paused = true)]
async fn closed_gate_holds_workers_until_the_broker_is_up() {
    let mut m = Machine::new(
        plan(vec![group("text", &["q"], 2, 1)]),
        false,
        Box::new(|| 0.0),
    );
    m.boot(Instant::now());
    assert!(spawns(&m.take_actions()).is_empty());
    assert_eq!(state(&m, "text-1"), "waiting-for-broker");
    // Operator start while waiting does not bypass the gate.
    m.start(&["text-1".into()], Instant::now()).unwrap();
    assert!(spawns(&m.take_actions()).is_empty());
    m.open_gate(Instant::now());
    assert_eq!(spawns(&m.take_actions()).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn quick_failures_back_off_exponentially_and_report_crash_loop() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    let pids = boot_all(&mut m);
    let mut pid = pids["text-1"];
    let mut delays = Vec::new();
    for n in 0..6u32 {
        advance(10 * MS).await; // dies quickly
        let t0 = Instant::now();
        assert_eq!(
            m.exited(pid, ExitReason::Code(1), t0).as_deref(),
            Some("text-1")
        );
        let acts = m.take_actions();
        assert_eq!(kills(&acts).len(), 1, "leftovers of the run are killed");
        assert_eq!(kills(&acts)[0].1, Some(pid), "by the old process group");
        assert!(
            acts.iter().any(|a| matches!(
                a,
                Action::KillTree {
                    whole_cgroup: false,
                    ..
                }
            )),
            "the next run may share the leaf: leave the cgroup to the next spawn"
        );
        let deadline = m.next_deadline().expect("a restart is scheduled");
        delays.push((deadline - t0).as_millis());
        // Nothing happens before the deadline …
        advance(deadline - t0 - MS).await;
        assert!(spawns(&tick(&mut m)).is_empty());
        // … and the restart comes at it.
        advance(MS).await;
        let sp = spawns(&tick(&mut m));
        assert_eq!(sp.len(), 1);
        pid = 200 + n;
        m.spawned("text-1", sp[0].1, pid, Instant::now());
        if n >= 2 {
            assert_eq!(view(&m, "text-1").restarts, u64::from(n) + 1);
        }
    }
    assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200]);
    // Dying again: crash-loop, with the count and the reason.
    advance(10 * MS).await;
    m.exited(pid, ExitReason::Signal(9), Instant::now());
    let v = view(&m, "text-1");
    assert_eq!(v.state, InstanceState::CrashLoop);
    assert_eq!(
        (v.last_exit.clone(), v.quick_failures),
        (Some(ExitReason::Signal(9)), 7)
    );
    assert_eq!(
        last_exit(&v).as_deref(),
        Some("killed by SIGKILL (7 quick failures in a row)")
    );
    assert_eq!(v.restarts, 7);
}

#[tokio::test(start_paused = true)]
async fn a_stable_run_resets_the_backoff() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    let pid = boot_all(&mut m)["text-1"];
    // Three quick failures: 100, 200, 400 ms.
    let mut pid = pid;
    for i in 0..3 {
        m.exited(pid, ExitReason::Code(1), Instant::now());
        m.take_actions();
        advance(Duration::from_secs(1)).await;
        let sp = spawns(&tick(&mut m));
        pid = 300 + i;
        m.spawned("text-1", sp[0].1, pid, Instant::now());
    }
    // Now it runs for stable_after, then exits: the delay is back to 100 ms.
    advance(30 * S).await;
    let t0 = Instant::now();
    m.exited(pid, ExitReason::Code(0), t0);
    assert_eq!(m.next_deadline().unwrap() - t0, 100 * MS);
    assert_eq!(state(&m, "text-1"), "backoff");
}

#[tokio::test(start_paused = true)]
async fn jitter_is_applied_within_ten_percent() {
    let mut m = Machine::new(
        plan(vec![group("text", &["q"], 1, 1)]),
        true,
        Box::new(|| 1.0),
    );
    let pid = boot_all(&mut m)["text-1"];
    let t0 = Instant::now();
    m.exited(pid, ExitReason::Code(1), t0);
    assert_eq!(m.next_deadline().unwrap() - t0, 110 * MS);
}

#[tokio::test(start_paused = true)]
async fn spawn_failure_counts_as_a_quick_failure() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    m.boot(Instant::now());
    let sp = spawns(&m.take_actions());
    m.spawn_failed("text-1", sp[0].1, "No such file".into(), Instant::now());
    let acts = m.take_actions();
    assert!(kills(&acts).is_empty(), "nothing ran, nothing to kill");
    let v = view(&m, "text-1");
    assert_eq!(v.state, InstanceState::Backoff);
    assert_eq!(last_exit(&v).as_deref(), Some("spawn failed: No such file"));
    advance(100 * MS).await;
    assert_eq!(spawns(&tick(&mut m)).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn stop_sequence_is_term_then_quit_then_kill_tree() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    let pid = boot_all(&mut m)["text-1"];
    let out = m.stop(&["text".into()], Instant::now()).unwrap();
    assert_eq!(out, vec!["text-1: stopping"]);
    let acts = m.take_actions();
    assert_eq!(signals(&acts), vec![("text-1".into(), StopSignal::Term)]);
    assert!(
        kills(&acts).is_empty(),
        "pool children are never signalled first"
    );
    assert_eq!(state(&m, "text-1"), "stopping");

    // The worker ignores SIGTERM for stop_timeout.
    advance(60 * S - MS).await;
    assert!(tick(&mut m).is_empty());
    advance(MS).await;
    assert_eq!(
        signals(&tick(&mut m)),
        vec![("text-1".into(), StopSignal::Quit)]
    );
    // … and SIGQUIT for 10 s more: the whole tree is killed.
    advance(QUIT_GRACE).await;
    let acts = tick(&mut m);
    let k = kills(&acts);
    assert_eq!(k.len(), 1);
    assert_eq!(k[0].1, Some(pid));
    // The main process dies; the tree is killed again after its exit and the
    // instance is stopped only when that is confirmed.
    m.exited(pid, ExitReason::Signal(9), Instant::now());
    let k2 = kills(&m.take_actions());
    assert_eq!(k2.len(), 1);
    m.tree_cleared("text-1", k[0].2, Instant::now());
    assert_eq!(state(&m, "text-1"), "stopping", "a stale clear is ignored");
    m.tree_cleared("text-1", k2[0].2, Instant::now());
    assert_eq!(state(&m, "text-1"), "stopped");
    assert_eq!(
        last_exit(&view(&m, "text-1")).as_deref(),
        Some("killed by SIGKILL")
    );
}

#[tokio::test(start_paused = true)]
async fn operator_stop_pins_until_started_again() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    let pid = boot_all(&mut m)["text-1"];
    m.stop(&["text-1".into()], Instant::now()).unwrap();
    m.take_actions();
    m.exited(pid, ExitReason::Code(0), Instant::now());
    let seq = kills(&m.take_actions())[0].2;
    m.tree_cleared("text-1", seq, Instant::now());
    assert_eq!(state(&m, "text-1"), "stopped");
    assert!(view(&m, "text-1").pinned);
    // No restart logic brings it back: time, reloads of the same plan,
    // restarts of other instances, the broker coming back.
    advance(Duration::from_secs(3600)).await;
    assert!(spawns(&tick(&mut m)).is_empty());
    let same = m.plan().clone();
    m.reload(same, Instant::now());
    m.broker_health(false, Instant::now());
    m.broker_health(true, Instant::now());
    assert!(spawns(&m.take_actions()).is_empty());
    assert_eq!(m.next_deadline(), None);
    // Start clears the pin.
    assert_eq!(
        m.start(&["all".into()], Instant::now()).unwrap(),
        vec!["text-1: starting"]
    );
    assert_eq!(spawns(&m.take_actions()).len(), 1);
    assert!(!view(&m, "text-1").pinned);
}

#[tokio::test(start_paused = true)]
async fn stopping_a_crashing_instance_in_backoff_stops_it_at_once() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    let pid = boot_all(&mut m)["text-1"];
    m.exited(pid, ExitReason::Code(1), Instant::now());
    m.take_actions();
    m.stop(&["text-1".into()], Instant::now()).unwrap();
    assert_eq!(state(&m, "text-1"), "stopped");
    advance(S).await;
    assert!(spawns(&tick(&mut m)).is_empty());
}

#[tokio::test(start_paused = true)]
async fn restart_stops_then_starts_again() {
    let mut m = machine(plan(vec![group("text", &["q"], 2, 1)]));
    let pids = boot_all(&mut m);
    m.restart(&["text-2".into()], false, Instant::now())
        .unwrap();
    assert_eq!(
        signals(&m.take_actions()),
        vec![("text-2".into(), StopSignal::Term)]
    );
    m.exited(pids["text-2"], ExitReason::Code(0), Instant::now());
    let seq = kills(&m.take_actions())[0].2;
    m.tree_cleared("text-2", seq, Instant::now());
    let sp = spawns(&m.take_actions());
    assert_eq!(sp, vec![("text-2".to_string(), 2)]);
    assert_eq!(
        view(&m, "text-2").restarts,
        0,
        "operator restarts are not failures"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_targets_are_refused() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    boot_all(&mut m);
    assert_eq!(
        m.stop(&["nope".into()], Instant::now()),
        Err(CommandError::UnknownTarget("nope".into()))
    );
    assert_eq!(m.stop(&[], Instant::now()), Err(CommandError::NoTarget));
    assert!(m.take_actions().is_empty(), "nothing happened");
}

/// Walk a stopping instance through exit and tree clear.
fn finish(m: &mut Machine, id: &str, pid: u32) -> Vec<Action> {
    m.exited(pid, ExitReason::Code(0), Instant::now());
    let acts = m.take_actions();
    let seq = kills(&acts).last().unwrap().2;
    m.tree_cleared(id, seq, Instant::now());
    m.take_actions()
}

#[tokio::test(start_paused = true)]
async fn reload_touches_only_what_changed_and_rolls_changed_groups() {
    let mut m = machine(plan(vec![
        group("text", &["text_processing"], 2, 2),
        group("billing", &["payments", "webhooks"], 1, 1),
        group("emails", &["emails"], 1, 1),
    ]));
    let pids = boot_all(&mut m);
    advance(2 * S).await;
    let new = plan(vec![
        group("text", &["text_processing"], 2, 3), // concurrency changed
        group("billing", &["payments", "webhooks"], 1, 1), // unchanged
        group("reports", &["reports"], 1, 1),      // added
    ]); // emails removed
    let d = m.reload(new, Instant::now());
    assert_eq!(d.changed, vec!["text"]);
    assert_eq!(d.unchanged, vec!["billing"]);
    assert_eq!(d.added, vec!["reports"]);
    assert_eq!(d.removed, vec!["emails"]);
    let acts = m.take_actions();
    // text-1 is stopped first (rolling); text-2 keeps running for now.
    let sig = signals(&acts);
    assert!(sig.contains(&("text-1".into(), StopSignal::Term)));
    assert!(sig.contains(&("emails-1".into(), StopSignal::Term)));
    assert!(
        !sig.iter()
            .any(|(id, _)| id == "text-2" || id == "billing-1")
    );
    assert_eq!(spawns(&acts), vec![("reports-1".to_string(), 1)]);
    assert!(acts.contains(&Action::PrepareGroup {
        group: "reports".into(),
        limits: Limits::default()
    }));

    // The removed group goes away once its instance stopped.
    let acts = finish(&mut m, "emails-1", pids["emails-1"]);
    assert!(acts.contains(&Action::RemoveGroup {
        group: "emails".into()
    }));
    assert!(
        m.snapshot(Instant::now())
            .iter()
            .all(|v| v.id != "emails-1")
    );

    // text-1 comes back with the new spec; text-2 waits until it is up.
    let acts = finish(&mut m, "text-1", pids["text-1"]);
    let sp: Vec<&Action> = acts
        .iter()
        .filter(|a| matches!(a, Action::Spawn { .. }))
        .collect();
    match sp.as_slice() {
        [Action::Spawn { spec, generation }] => {
            assert_eq!(spec.id, "text-1");
            assert_eq!(spec.args, vec!["-c", "3"]);
            m.spawned("text-1", *generation, 500, Instant::now());
        }
        other => panic!("expected one spawn, got {other:?}"),
    }
    assert!(signals(&m.take_actions()).is_empty());
    // A heartbeat (or UP_AFTER) marks it up: then text-2 is stopped.
    m.heartbeat("text-1@dev", 0, 0, Instant::now());
    assert_eq!(
        signals(&m.take_actions()),
        vec![("text-2".into(), StopSignal::Term)]
    );
    let acts = finish(&mut m, "text-2", pids["text-2"]);
    assert_eq!(spawns(&acts).len(), 1);
    assert_eq!(view(&m, "billing-1").pid, Some(pids["billing-1"]));
}

#[tokio::test(start_paused = true)]
async fn rolling_restart_waits_for_each_instance_to_be_up() {
    let mut m = machine(plan(vec![group("text", &["q"], 3, 1)]));
    let pids = boot_all(&mut m);
    m.restart(&["text".into()], true, Instant::now()).unwrap();
    assert_eq!(
        signals(&m.take_actions()),
        vec![("text-1".into(), StopSignal::Term)]
    );
    let acts = finish(&mut m, "text-1", pids["text-1"]);
    let g = spawns(&acts)[0].1;
    m.spawned("text-1", g, 600, Instant::now());
    assert!(m.take_actions().is_empty());
    // Without a heartbeat it counts as up after UP_AFTER.
    let deadline = m.next_deadline().unwrap();
    assert_eq!(deadline - Instant::now(), UP_AFTER);
    advance(UP_AFTER).await;
    assert_eq!(
        signals(&tick(&mut m)),
        vec![("text-2".into(), StopSignal::Term)]
    );
}

#[tokio::test(start_paused = true)]
async fn reload_of_a_pinned_instance_keeps_it_stopped_with_the_new_spec() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    let pid = boot_all(&mut m)["text-1"];
    m.stop(&["text-1".into()], Instant::now()).unwrap();
    finish(&mut m, "text-1", pid);
    m.reload(plan(vec![group("text", &["q"], 1, 4)]), Instant::now());
    assert!(spawns(&m.take_actions()).is_empty());
    m.start(&["text-1".into()], Instant::now()).unwrap();
    match &m.take_actions()[..] {
        [Action::Spawn { spec, .. }] => assert_eq!(spec.args, vec!["-c", "4"]),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_everything_in_parallel_then_exits() {
    let mut m = machine(plan(vec![
        group("text", &["q"], 2, 1),
        group("billing", &["p"], 1, 1),
    ]));
    let pids = boot_all(&mut m);
    m.shutdown(Instant::now());
    let acts = m.take_actions();
    assert_eq!(signals(&acts).len(), 3, "all get SIGTERM at once");
    assert!(!acts.contains(&Action::Exit));
    assert_eq!(
        m.start(&["all".into()], Instant::now()),
        Err(CommandError::ShuttingDown)
    );
    for (id, pid) in &pids {
        let acts = finish(&mut m, id, *pid);
        assert!(spawns(&acts).is_empty(), "nothing restarts during shutdown");
        if id == pids.keys().last().unwrap() {
            assert_eq!(acts, vec![Action::Exit]);
        } else {
            assert!(!acts.contains(&Action::Exit));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_nothing_running_exits_at_once() {
    let mut m = machine(plan(vec![]));
    m.boot(Instant::now());
    m.take_actions();
    m.shutdown(Instant::now());
    assert_eq!(m.take_actions(), vec![Action::Exit]);
}

#[tokio::test(start_paused = true)]
async fn a_silent_worker_is_restarted_after_heartbeat_timeout() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    let pid = boot_all(&mut m)["text-1"];
    // No heartbeat yet: the timeout does not count.
    advance(120 * S).await;
    assert!(tick(&mut m).is_empty());
    m.heartbeat("text-1@dev", 0, 5, Instant::now());
    advance(59 * S).await;
    assert!(tick(&mut m).is_empty());
    // While the broker is down, silence is expected.
    m.broker_health(false, Instant::now());
    advance(120 * S).await;
    assert!(tick(&mut m).is_empty());
    // When it comes back, the clock restarts.
    m.broker_health(true, Instant::now());
    advance(59 * S).await;
    assert!(tick(&mut m).is_empty());
    advance(S).await;
    assert_eq!(
        signals(&tick(&mut m)),
        vec![("text-1".into(), StopSignal::Term)],
        "graceful restart"
    );
    let acts = finish(&mut m, "text-1", pid);
    assert_eq!(spawns(&acts).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_worker_is_restarted_after_stall_timeout() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    boot_all(&mut m);
    let backlog = |n| BTreeMap::from([("q".to_string(), n)]);
    m.heartbeat("text-1@dev", 0, 10, Instant::now());
    m.backlog(backlog(5), Instant::now());
    // Progress resets the clock.
    advance(200 * S).await;
    m.heartbeat("text-1@dev", 0, 11, Instant::now());
    m.backlog(backlog(5), Instant::now());
    advance(299 * S).await;
    for _ in 0..3 {
        m.heartbeat("text-1@dev", 0, 11, Instant::now());
    }
    assert!(tick(&mut m).is_empty());
    // No backlog: not stalled, merely idle.
    m.backlog(backlog(0), Instant::now());
    advance(400 * S).await;
    m.heartbeat("text-1@dev", 0, 11, Instant::now());
    assert!(tick(&mut m).is_empty());
    // Backlog and no progress for stall_timeout: restart.
    m.backlog(backlog(3), Instant::now());
    advance(150 * S).await;
    m.heartbeat("text-1@dev", 0, 11, Instant::now());
    assert!(m.take_actions().is_empty());
    advance(150 * S).await;
    m.heartbeat("text-1@dev", 0, 11, Instant::now());
    assert_eq!(
        signals(&m.take_actions()),
        vec![("text-1".into(), StopSignal::Term)]
    );
}

#[tokio::test(start_paused = true)]
async fn exits_of_unknown_pids_are_ignored() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    boot_all(&mut m);
    assert_eq!(m.exited(99999, ExitReason::Code(0), Instant::now()), None);
    assert!(m.take_actions().is_empty());
    assert_eq!(state(&m, "text-1"), "starting");
}

#[test]
fn exit_reasons_read_well() {
    assert_eq!(ExitReason::Code(3).to_string(), "exit 3");
    assert_eq!(ExitReason::Signal(15).to_string(), "killed by SIGTERM");
    assert_eq!(ExitReason::OomKilled.to_string(), "oom-killed");
}

#[tokio::test(start_paused = true)]
async fn routine_idle_events_leave_the_revision_alone() {
    let mut m = machine(plan(vec![group("text", &["q"], 2, 1)]));
    boot_all(&mut m);
    // Up after UP_AFTER: that moment is a deadline, and the tick there
    // changes the summary.
    assert_eq!(m.next_deadline().unwrap() - Instant::now(), UP_AFTER);
    advance(UP_AFTER).await;
    let r0 = m.revision();
    assert!(tick(&mut m).is_empty());
    assert_ne!(m.revision(), r0, "a tick may change states");
    assert_eq!(m.summary_facts(Instant::now()).running, 2);
    assert_eq!(m.next_deadline(), None, "nothing is due any more");

    // The first heartbeat of a run starts its heartbeat clock: a change.
    let r1 = m.revision();
    m.heartbeat("text-1@dev", 0, 0, Instant::now());
    assert_ne!(m.revision(), r1);
    assert_eq!(m.next_deadline().unwrap() - Instant::now(), 60 * S);
    // Later heartbeats, an empty backlog and the broker staying up are
    // routine: no change, and no actions.
    let r2 = m.revision();
    advance(2 * S).await;
    m.heartbeat("text-1@dev", 0, 0, Instant::now());
    m.backlog(BTreeMap::from([("q".to_string(), 0)]), Instant::now());
    m.broker_health(true, Instant::now());
    assert_eq!(m.revision(), r2);
    assert!(m.take_actions().is_empty());
    // A cached deadline from r2 is early (the heartbeat moved it later):
    // the tick there finds nothing to do and bumps the revision, after
    // which the deadline is the real one.
    advance(58 * S).await;
    assert!(tick(&mut m).is_empty());
    assert_ne!(m.revision(), r2);
    assert_eq!(m.next_deadline().unwrap() - Instant::now(), 2 * S);

    // A backlog that starts a stall clock is a change (a new deadline).
    m.heartbeat("text-2@dev", 0, 7, Instant::now());
    let r3 = m.revision();
    m.backlog(BTreeMap::from([("q".to_string(), 4)]), Instant::now());
    assert_ne!(m.revision(), r3);
    // The broker going down is a change; staying down is not.
    let r4 = m.revision();
    m.broker_health(false, Instant::now());
    assert_ne!(m.revision(), r4);
    let r5 = m.revision();
    m.broker_health(false, Instant::now());
    assert_eq!(m.revision(), r5);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_of_the_same_id_on_another_device_are_not_ours() {
    let mut m = machine(plan(vec![group("text", &["q"], 1, 1)]));
    boot_all(&mut m);
    m.heartbeat("text-1@other-pi", 3, 9, Instant::now());
    m.heartbeat("text-1", 3, 9, Instant::now());
    assert_eq!(view(&m, "text-1").heartbeat_age, None);
    m.heartbeat("text-1@dev", 3, 9, Instant::now());
    let v = view(&m, "text-1");
    assert_eq!((v.active, v.processed), (Some(3), Some(9)));
}

fn with_timing(mut g: GroupPlan, t: Timing) -> GroupPlan {
    for i in &mut g.instances {
        Arc::make_mut(i).timing = t.clone();
    }
    g
}

/// Durations far beyond the config's bounds (a plan built by hand) must
/// not overflow an `Instant`: `now + 300000000000y` used to abort the
/// daemon at the first worker exit (issue 12 §4).
#[tokio::test(start_paused = true)]
async fn huge_durations_never_overflow_the_clock() {
    let huge = Duration::MAX;
    let t = Timing {
        stop_timeout: huge,
        restart_delay: huge,
        restart_delay_max: huge,
        stable_after: huge,
        heartbeat_timeout: Some(huge),
        stall_timeout: Some(huge),
    };
    let mut m = Machine::new(
        plan(vec![with_timing(group("text", &["q"], 2, 1), t)]),
        true,
        Box::new(|| 1.0),
    );
    let pids = boot_all(&mut m);
    m.heartbeat("text-1@dev", 0, 0, Instant::now());
    m.heartbeat("text-2@dev", 0, 0, Instant::now());
    m.backlog(BTreeMap::from([("q".to_string(), 5)]), Instant::now());
    tick(&mut m);
    assert!(m.next_deadline().is_some());
    let t0 = Instant::now();
    m.exited(pids["text-1"], ExitReason::Code(1), t0);
    assert_eq!(state(&m, "text-1"), "backoff");
    let deadline = m.next_deadline().expect("a restart is scheduled");
    assert!(
        deadline - t0 > Duration::from_secs(365 * 86_400),
        "far away"
    );
    m.stop(&["text-2".into()], Instant::now()).unwrap();
    assert_eq!(signals(&m.take_actions()).len(), 1, "SIGTERM sent");
    advance(Duration::from_secs(3600)).await;
    tick(&mut m);
    assert_eq!(state(&m, "text-1"), "backoff", "still waiting");
    m.shutdown(Instant::now());
    tick(&mut m);
}

/// A mass crash (every worker of a big box dying at once, e.g. the broker's
/// host rebooting into an OOM) costs each exit O(1) to route: 4096
/// instances crash and are routed by pid in well under a second, where a
/// scan of every instance per exit took seconds.
#[tokio::test(start_paused = true)]
async fn a_mass_crash_routes_each_exit_by_pid_without_scanning() {
    const N: u32 = 4096;
    let mut m = machine(plan(vec![group("big", &["big"], N, 1)]));
    let pids = boot_all(&mut m);
    assert_eq!(pids.len(), N as usize);
    advance(60 * S).await;
    tick(&mut m);
    let started = std::time::Instant::now();
    for (id, pid) in &pids {
        assert_eq!(
            m.exited(*pid, ExitReason::Code(1), Instant::now())
                .as_deref(),
            Some(id.as_str())
        );
    }
    let took = started.elapsed();
    // The same pid again (an adopted orphan, or a late duplicate) is nobody's.
    let (_, first) = pids.iter().next().unwrap();
    assert_eq!(m.exited(*first, ExitReason::Code(1), Instant::now()), None);
    assert!(m.instance_by_pid(*first).is_none());
    assert!(
        took < Duration::from_millis(300),
        "{N} exits took {took:?}: each exit scans every instance"
    );
    // Every instance restarts with a new pid, and is found by it.
    advance(S).await;
    let respawns = spawns(&tick(&mut m));
    assert_eq!(respawns.len(), N as usize);
    for (n, (id, generation)) in respawns.iter().enumerate() {
        m.spawned(id, *generation, 100_000 + n as u32, Instant::now());
    }
    assert_eq!(
        m.instance_by_pid(100_000 + 7).map(|s| s.id.as_str()),
        Some(respawns[7].0.as_str())
    );
    assert!(
        m.instance_by_pid(*first).is_none(),
        "the old pid is forgotten"
    );
}

/// A mass shutdown: the check for "everything stopped" after each of 4096
/// stops costs O(1) until the last, where a scan per event took seconds
/// (instances stopping in id order were the worst case).
#[tokio::test(start_paused = true)]
async fn a_mass_shutdown_exits_after_the_last_stop_without_rescanning() {
    const N: u32 = 4096;
    let mut m = machine(plan(vec![group("big", &["big"], N, 1)]));
    let pids = boot_all(&mut m);
    m.shutdown(Instant::now());
    assert_eq!(signals(&m.take_actions()).len(), N as usize);
    let started = std::time::Instant::now();
    let mut exits = 0;
    for (id, pid) in &pids {
        exits += finish(&mut m, id, *pid)
            .iter()
            .filter(|a| **a == Action::Exit)
            .count();
    }
    let took = started.elapsed();
    assert_eq!(exits, 1);
    assert_eq!(
        m.snapshot(Instant::now())
            .iter()
            .filter(|v| v.state != InstanceState::Stopped)
            .count(),
        0
    );
    assert!(
        took < Duration::from_millis(300),
        "{N} stops took {took:?}: each rescans every instance"
    );
}

#[path = "scale_tests.rs"]
mod scale_tests;

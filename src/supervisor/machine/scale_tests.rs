//! Autoscaling in the machine (scale.rs), on tokio's paused clock: the
//! decision carried out as spawns and warm stops, one step per check,
//! memory and crash-loop refusals, the operator's precedence, reloads.

use super::*;
use crate::model::autoscale::{Autoscale, Memory, Reason};

fn scaled(name: &str, queue: &str, min: u32, max: u32, start: u32) -> GroupPlan {
    let mut g = group(name, &[queue], max, 2);
    g.autoscale = Some(Autoscale {
        min,
        max,
        backlog_per_instance: 20,
        scale_down_after: 120 * S,
        memory_headroom: 300 << 20,
    });
    g.start = start;
    g
}

/// One check with `backlog` waiting on queue `q` and `sample` for every
/// group; the spawns it asked for are confirmed (pids from 1000 up).
fn check(m: &mut Machine, q: &str, backlog: u64, sample: ScaleSample) -> Vec<Action> {
    let now = Instant::now();
    m.backlog(BTreeMap::from([(q.to_string(), backlog)]), now);
    let samples = m
        .autoscaled_groups()
        .into_iter()
        .map(|g| (g, sample))
        .collect();
    m.scale_check(&samples, now);
    let actions = m.take_actions();
    for (id, generation) in spawns(&actions) {
        let pid = 1000 + m.snapshot(now).len() as u32 + generation as u32 * 100;
        m.spawned(&id, generation, pid, now);
    }
    actions
}

fn ids(m: &Machine) -> Vec<String> {
    m.snapshot(Instant::now())
        .into_iter()
        .map(|v| v.id)
        .collect()
}

fn scale_of(m: &Machine, group: &str) -> ScaleView {
    m.scale_views()
        .into_iter()
        .find(|v| v.group == group)
        .unwrap()
}

fn ok() -> ScaleSample {
    ScaleSample {
        share: None,
        memory: Memory {
            available: Some(4 << 30),
            per_instance: Some(200 << 20),
            pressure: false,
        },
    }
}

/// Stop `id`'s run as the effects would: its main process exits, its
/// tree is cleared.
fn stopped(m: &mut Machine, id: &str, actions: &[Action]) {
    let now = Instant::now();
    let pid = m
        .snapshot(now)
        .into_iter()
        .find(|v| v.id == id)
        .unwrap()
        .pid
        .unwrap();
    assert_eq!(signals(actions), vec![(id.to_string(), StopSignal::Term)]);
    m.exited(pid, ExitReason::Code(0), now);
    let seq = kills(&m.take_actions())[0].2;
    m.tree_cleared(id, seq, now);
}

#[tokio::test(start_paused = true)]
async fn a_burst_grows_the_group_one_instance_per_check_up_to_max() {
    let mut m = machine(plan(vec![scaled("text", "tq", 1, 4, 1)]));
    assert_eq!(
        spawns(&{
            m.boot(Instant::now());
            m.take_actions()
        }),
        vec![("text-1".to_string(), 1)]
    );
    m.spawned("text-1", 1, 100, Instant::now());
    for n in 2..=4 {
        advance(S).await;
        let a = check(&mut m, "tq", 200, ok());
        assert_eq!(spawns(&a), vec![(format!("text-{n}"), 1)], "check {n}");
        let v = scale_of(&m, "text");
        assert_eq!((v.desired, v.current, v.state), (4, n, Reason::Up));
    }
    advance(S).await;
    assert!(spawns(&check(&mut m, "tq", 200, ok())).is_empty());
    assert_eq!(scale_of(&m, "text").state, Reason::Steady);
    assert_eq!(ids(&m), ["text-1", "text-2", "text-3", "text-4"]);
    assert_eq!(
        scale_of(&m, "text").reason,
        "backlog 200, share 1.00, mem ok"
    );
}

#[tokio::test(start_paused = true)]
async fn scaling_down_waits_then_warm_stops_the_highest_numbered_and_forgets_it() {
    let mut m = machine(plan(vec![scaled("text", "tq", 1, 4, 3)]));
    boot_all(&mut m);
    // The backlog is gone: nothing happens before it has been below for
    // scale_down_after (from the first check that saw it, at 1 s).
    for _ in 0..120 {
        advance(S).await;
        let a = check(&mut m, "tq", 0, ok());
        assert!(signals(&a).is_empty());
    }
    assert_eq!(scale_of(&m, "text").state, Reason::DownWaiting);
    advance(S).await;
    let a = check(&mut m, "tq", 0, ok());
    assert_eq!(scale_of(&m, "text").state, Reason::Down);
    assert_eq!(state(&m, "text-3"), "stopping");
    assert_eq!(scale_of(&m, "text").current, 2, "one being scaled away");
    stopped(&mut m, "text-3", &a);
    assert_eq!(ids(&m), ["text-1", "text-2"]);
    // The next step down waits a whole period again, and min holds.
    advance(60 * S).await;
    assert!(signals(&check(&mut m, "tq", 0, ok())).is_empty());
    advance(60 * S).await;
    let a = check(&mut m, "tq", 0, ok());
    stopped(&mut m, "text-2", &a);
    advance(600 * S).await;
    assert!(signals(&check(&mut m, "tq", 0, ok())).is_empty());
    assert_eq!(ids(&m), ["text-1"]);
}

#[tokio::test(start_paused = true)]
async fn a_min_zero_group_runs_nothing_until_a_message_waits() {
    let mut m = machine(plan(vec![scaled("idle", "iq", 0, 2, 0)]));
    m.boot(Instant::now());
    assert!(spawns(&m.take_actions()).is_empty());
    assert!(ids(&m).is_empty());
    advance(S).await;
    assert!(spawns(&check(&mut m, "iq", 0, ok())).is_empty());
    advance(S).await;
    assert_eq!(
        spawns(&check(&mut m, "iq", 1, ok())),
        vec![("idle-1".to_string(), 1)]
    );
}

#[tokio::test(start_paused = true)]
async fn memory_refuses_a_scale_up_and_pressure_scales_down_at_once() {
    let mut m = machine(plan(vec![scaled("text", "tq", 1, 4, 2)]));
    boot_all(&mut m);
    let tight = ScaleSample {
        share: None,
        memory: Memory {
            available: Some(450 << 20),
            per_instance: Some(200 << 20),
            pressure: false,
        },
    };
    advance(S).await;
    assert!(spawns(&check(&mut m, "tq", 200, tight)).is_empty());
    let v = scale_of(&m, "text");
    assert_eq!(
        (v.desired, v.current, v.state),
        (4, 2, Reason::UpRefusedMemory)
    );
    assert_eq!(
        v.reason,
        "wants 4; refused: memory: MemAvailable 450 MiB - 200 MiB per instance <= headroom 300 MiB"
    );
    let pressure = ScaleSample {
        share: None,
        memory: Memory {
            pressure: true,
            ..tight.memory
        },
    };
    advance(S).await;
    let a = check(&mut m, "tq", 200, pressure);
    assert_eq!(scale_of(&m, "text").state, Reason::DownPressure);
    stopped(&mut m, "text-2", &a);
    // Never below min, pressure or not.
    advance(S).await;
    assert!(signals(&check(&mut m, "tq", 200, pressure)).is_empty());
    assert_eq!(ids(&m), ["text-1"]);
}

#[tokio::test(start_paused = true)]
async fn an_instance_in_crash_loop_blocks_scaling_up() {
    let mut m = machine(plan(vec![scaled("text", "tq", 1, 4, 1)]));
    boot_all(&mut m);
    // text-1 fails quickly until it is in crash-loop.
    let mut pid = 100;
    for _ in 0..backoff::CRASH_LOOP_AFTER {
        m.exited(pid, ExitReason::Code(1), Instant::now());
        m.take_actions();
        advance(120 * S).await;
        let a = tick(&mut m);
        pid += 1;
        for (id, generation) in spawns(&a) {
            m.spawned(&id, generation, pid, Instant::now());
        }
    }
    assert_eq!(state(&m, "text-1"), "crash-loop");
    let a = check(&mut m, "tq", 200, ok());
    assert!(spawns(&a).is_empty(), "{a:?}");
    assert_eq!(scale_of(&m, "text").state, Reason::UpRefusedCrashLoop);
}

#[tokio::test(start_paused = true)]
async fn the_operator_scale_pins_the_count_until_auto() {
    let mut m = machine(plan(vec![
        scaled("text", "tq", 1, 4, 1),
        group("fixed", &["fq"], 1, 1),
    ]));
    boot_all(&mut m);
    let now = Instant::now();
    assert_eq!(
        m.scale("text", Some(3), now).unwrap(),
        "text: 1 → 3 instances until `clearifyctl scale text auto`"
    );
    assert_eq!(
        spawns(&m.take_actions()).len(),
        2,
        "a count applies at once"
    );
    assert_eq!(
        m.scale("text", Some(5), now),
        Err(ScaleError::OverMax {
            group: "text".into(),
            max: 4,
            asked: 5
        })
    );
    assert_eq!(
        m.scale("fixed", Some(2), now),
        Err(ScaleError::NotAutoscaled("fixed".into()))
    );
    assert_eq!(
        m.scale("nope", None, now),
        Err(ScaleError::UnknownGroup("nope".into()))
    );
    // No backlog, for far longer than scale_down_after: still 3.
    for _ in 0..5 {
        advance(60 * S).await;
        assert!(signals(&check(&mut m, "tq", 0, ok())).is_empty());
    }
    let v = scale_of(&m, "text");
    assert_eq!(
        (v.desired, v.current, v.state, v.manual),
        (3, 3, Reason::Manual, Some(3))
    );
    m.scale("text", None, Instant::now()).unwrap();
    // Until the next check the backlog's count is not known: the current.
    let v = scale_of(&m, "text");
    assert_eq!((v.desired, v.manual, v.state), (3, None, Reason::Steady));
    advance(S).await;
    check(&mut m, "tq", 0, ok());
    assert_eq!(scale_of(&m, "text").state, Reason::DownWaiting);
}

#[tokio::test(start_paused = true)]
async fn an_operator_stop_holds_scaling_until_start() {
    let mut m = machine(plan(vec![scaled("text", "tq", 1, 4, 2)]));
    boot_all(&mut m);
    m.stop(&["text-2".into()], Instant::now()).unwrap();
    m.take_actions();
    advance(S).await;
    let a = check(&mut m, "tq", 200, ok());
    assert!(spawns(&a).is_empty());
    let v = scale_of(&m, "text");
    assert_eq!(v.state, Reason::Held);
    assert!(
        v.reason.contains("text-2 was stopped by the operator"),
        "{v:?}"
    );
    m.start(&["text-2".into()], Instant::now()).unwrap();
    m.take_actions();
    advance(S).await;
    check(&mut m, "tq", 200, ok());
    assert_eq!(scale_of(&m, "text").state, Reason::Up);
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_the_count_within_the_new_bounds() {
    let mut m = machine(plan(vec![scaled("text", "tq", 1, 4, 3)]));
    boot_all(&mut m);
    // max 4 → 2: text-3 is retired; the others are untouched.
    m.reload(plan(vec![scaled("text", "tq", 1, 2, 1)]), Instant::now());
    let a = m.take_actions();
    assert!(spawns(&a).is_empty());
    assert_eq!(signals(&a), vec![("text-3".to_string(), StopSignal::Term)]);
    // min 1 → 3: up to the new min at once.
    m.reload(plan(vec![scaled("text", "tq", 3, 5, 3)]), Instant::now());
    let a = m.take_actions();
    assert_eq!(
        spawns(&a),
        vec![],
        "text-3 is still stopping: it starts again"
    );
    assert_eq!(scale_of(&m, "text").current, 3);
}

#[tokio::test(start_paused = true)]
async fn a_broker_outage_leaves_the_count_alone() {
    let mut m = machine(plan(vec![scaled("text", "tq", 1, 4, 2)]));
    boot_all(&mut m);
    m.broker_health(false, Instant::now());
    for _ in 0..300 {
        advance(S).await;
        m.scale_check(&BTreeMap::new(), Instant::now());
    }
    assert!(m.take_actions().is_empty());
    let v = scale_of(&m, "text");
    assert_eq!(
        (v.current, v.state, v.backlog),
        (2, Reason::BacklogUnknown, None)
    );
}

/// A group with no instance now (min = 0) is still a target: status
/// shows it, and a command on it answers instead of "unknown target".
#[tokio::test(start_paused = true)]
async fn a_group_scaled_to_zero_is_still_a_target() {
    let mut m = machine(plan(vec![scaled("idle", "iq", 0, 2, 0)]));
    m.boot(Instant::now());
    assert_eq!(
        m.targets(&["idle".to_string()]),
        Ok(vec![Target::Group("idle".into())])
    );
    assert_eq!(
        m.stop(&["idle".to_string()], Instant::now()),
        Ok(vec!["idle: no instance now".to_string()])
    );
    assert!(m.targets(&["nope".to_string()]).is_err());
}

/// A hostile Redis's backlog (every queue at u64::MAX) saturates the
/// group's sum in the health checks and in autoscaling, never overflows.
#[tokio::test(start_paused = true)]
async fn a_huge_backlog_on_every_queue_saturates() {
    let g = group("text", &["a", "b"], 1, 1);
    let mut auto = scaled("auto", "a", 1, 2, 1);
    auto.queues.push("b".into());
    let mut m = machine(plan(vec![g, auto]));
    boot_all(&mut m);
    let huge = BTreeMap::from([("a".to_string(), u64::MAX), ("b".to_string(), u64::MAX)]);
    m.backlog(huge, Instant::now());
    m.scale_check(&BTreeMap::new(), Instant::now());
    assert_eq!(scale_of(&m, "auto").backlog, Some(u64::MAX));
    assert_eq!(scale_of(&m, "auto").desired, 2);
}

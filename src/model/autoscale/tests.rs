use super::*;

const MB: u64 = 1 << 20;

fn pi() -> Autoscale {
    Autoscale {
        min: 1,
        max: 4,
        backlog_per_instance: 20,
        scale_down_after: Duration::from_secs(120),
        memory_headroom: 300 * MB,
    }
}

fn inputs(backlog: u64, current: u32) -> Inputs {
    Inputs {
        backlog: Some(backlog),
        share: 1.0,
        current,
        crash_looping: 0,
        memory: Memory {
            available: Some(2048 * MB),
            per_instance: Some(150 * MB),
            pressure: false,
        },
    }
}

#[test]
fn desired_is_the_backlog_over_the_target_times_the_share_clamped() {
    let s = Scaler::new(pi());
    assert_eq!(s.desired(0, 1.0), 1, "min");
    assert_eq!(s.desired(20, 1.0), 1);
    assert_eq!(s.desired(21, 1.0), 2, "ceil");
    assert_eq!(s.desired(57, 1.0), 3);
    assert_eq!(s.desired(10_000, 1.0), 4, "max");
    assert_eq!(s.desired(u64::MAX, 1.0), 4);
    // Ten equal devices: a backlog of 57 asks this one for one instance.
    assert_eq!(s.desired(57, share(8, [8; 9])), 1);
    assert_eq!(s.desired(200, 0.4), 4);
    assert_eq!(s.desired(100, 0.4), 2);
    assert_eq!(s.desired(100, f64::NAN), 4, "a broken share counts as 1");
    let zero = Scaler::new(Autoscale { min: 0, ..pi() });
    assert_eq!(zero.desired(0, 1.0), 0, "scale to zero");
    assert_eq!(zero.desired(1, 1.0), 1, "one task wakes it");
}

#[test]
fn share_is_this_devices_part_of_the_live_capacity() {
    assert_eq!(share(8, []), 1.0);
    assert_eq!(share(8, [8]), 0.5);
    assert_eq!(share(8, [4, 8]), 0.4);
    assert_eq!(share(0, [0, 0]), 1.0, "no capacity anywhere: as if alone");
    assert_eq!(share(0, [8]), 0.0);
}

#[test]
fn up_one_per_check_and_only_when_memory_and_crash_loops_allow() {
    let t = Instant::now();
    let mut s = Scaler::new(pi());
    let d = s.decide(&inputs(200, 1), t);
    assert_eq!((d.desired, d.target, d.reason), (4, 2, Reason::Up));
    let d = s.decide(&inputs(200, 2), t);
    assert_eq!(d.target, 3);

    let mut tight = inputs(200, 2);
    tight.memory.available = Some(400 * MB);
    let d = s.decide(&tight, t);
    assert_eq!((d.target, d.reason), (2, Reason::UpRefusedMemory));
    tight.memory.available = Some(451 * MB);
    assert_eq!(
        s.decide(&tight, t).reason,
        Reason::Up,
        "150 MB leaves 301 MB"
    );

    let mut crashing = inputs(200, 2);
    crashing.crash_looping = 1;
    let d = s.decide(&crashing, t);
    assert_eq!((d.target, d.reason), (2, Reason::UpRefusedCrashLoop));

    let mut unknown = inputs(200, 2);
    unknown.memory = Memory::default();
    assert_eq!(
        s.decide(&unknown, t).reason,
        Reason::Up,
        "unknown memory allows"
    );
}

#[test]
fn down_only_after_scale_down_after_one_at_a_time() {
    let t = Instant::now();
    let mut s = Scaler::new(pi());
    let d = s.decide(&inputs(0, 4), t);
    assert_eq!((d.desired, d.target, d.reason), (1, 4, Reason::DownWaiting));
    let d = s.decide(&inputs(0, 4), t + Duration::from_secs(119));
    assert_eq!(d.reason, Reason::DownWaiting);
    let d = s.decide(&inputs(0, 4), t + Duration::from_secs(120));
    assert_eq!((d.target, d.reason), (3, Reason::Down));
    // The next step waits a whole period again.
    let d = s.decide(&inputs(0, 3), t + Duration::from_secs(150));
    assert_eq!(d.reason, Reason::DownWaiting);
    let d = s.decide(&inputs(0, 3), t + Duration::from_secs(240));
    assert_eq!(d.target, 2);
    // Desired back up to current resets the wait.
    s.decide(&inputs(0, 2), t + Duration::from_secs(300));
    s.decide(&inputs(40, 2), t + Duration::from_secs(301));
    let d = s.decide(&inputs(0, 2), t + Duration::from_secs(302));
    assert_eq!(d.reason, Reason::DownWaiting);
    // Never below min.
    let d = s.decide(&inputs(0, 1), t + Duration::from_secs(9999));
    assert_eq!((d.target, d.reason), (1, Reason::Steady));
}

#[test]
fn memory_pressure_scales_down_at_once_but_not_below_min() {
    let t = Instant::now();
    let mut s = Scaler::new(pi());
    let mut p = inputs(200, 3);
    p.memory.pressure = true;
    let d = s.decide(&p, t);
    assert_eq!((d.target, d.reason), (2, Reason::DownPressure));
    p.current = 1;
    let d = s.decide(&p, t);
    assert_eq!((d.target, d.reason), (1, Reason::UpRefusedMemory));
}

#[test]
fn an_unknown_backlog_changes_nothing() {
    let mut s = Scaler::new(pi());
    let mut i = inputs(0, 3);
    i.backlog = None;
    let d = s.decide(&i, Instant::now());
    assert_eq!(
        (d.desired, d.target, d.reason),
        (3, 3, Reason::BacklogUnknown)
    );
}

/// A backlog hovering around a threshold (20 ± 1, i.e. desired 1 or 2)
/// every 10 s for an hour: at most one change up per crossing and one
/// down per `scale_down_after`, never a flip-flop faster than that.
#[test]
fn a_backlog_hovering_at_the_threshold_does_not_oscillate() {
    let t0 = Instant::now();
    let mut s = Scaler::new(pi());
    let mut current = 2;
    let mut changes: Vec<(Duration, u32)> = Vec::new();
    for k in 0..360u64 {
        let backlog = if k % 2 == 0 { 19 } else { 21 };
        let now = t0 + Duration::from_secs(10 * k);
        let d = s.decide(&inputs(backlog, current), now);
        if d.target != current {
            changes.push((now - t0, d.target));
            current = d.target;
        }
    }
    assert!(changes.is_empty(), "{changes:?}");
    // Slower hovering: above for 30 s, below for 90 s (less than
    // scale_down_after): it goes up once and stays.
    let mut s = Scaler::new(pi());
    let mut current = 1;
    let mut changes = 0;
    for k in 0..360u64 {
        let backlog = if k % 12 < 3 { 25 } else { 15 };
        let d = s.decide(&inputs(backlog, current), t0 + Duration::from_secs(10 * k));
        if d.target != current {
            changes += 1;
            current = d.target;
        }
    }
    assert_eq!((changes, current), (1, 2));
}

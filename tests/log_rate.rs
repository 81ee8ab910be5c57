//! The per-group rate limit of worker lines (issue 16, "journald under
//! load"), with the real daemon: one group floods info lines while another
//! logs one ERROR line a second. The flood is cut to its group's share and
//! every dropped line is counted in the daemon's reports; the other group's
//! errors all get through; `clearifyctl logs` still has every line.
//!
//! The daemon runs with `--log-target stderr` here (no journald), so worker
//! records go to its stderr as `<instance> | <line>`: the same limiter sits
//! in front of both sinks. tests/system/scenarios/16-journald-load.sh checks
//! the same with journald in a VM.

#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::time::{Duration, Instant};

use clearify_workerd::logs::thousands;
use daemon_support::*;
use redis_support::RedisServer;

/// Lines the flooding worker prints: its greeting, the burst, "burst done".
const FLOOD: u64 = 200_000;
const FLOOD_RECORDS: u64 = FLOOD + 2;
/// `[daemon] log_rate_limit`: 50 per second for each of the two groups,
/// with a burst of 10 s of it.
const RATE: u64 = 100;

/// The `dropped=N` of each "lines dropped (rate limit)" report of `group`.
fn reported_drops(log: &str, group: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(&format!("{group}: ")) && l.contains("lines dropped (rate limit)"))
        .filter_map(|l| {
            let n = l.split("dropped=").nth(1)?;
            n.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect()
}

#[test]
fn a_flooding_group_is_cut_to_its_share_and_another_groups_errors_all_arrive() {
    let redis = RedisServer::start();
    let config = fake_config(
        &redis.url(),
        &format!(
            r#"
[group.flood]
queues = ["flood"]
env = {{ FAKE_MODE = "burst", FAKE_LINES = "{FLOOD}" }}

[group.calm]
queues = ["calm"]
env = {{ FAKE_MODE = "error-ticks" }}
"#
        ),
    )
    .replace(
        "device_id = \"testdev\"",
        &format!("device_id = \"testdev\"\nlog_rate_limit = {RATE}"),
    );
    let mut d = Daemon::new(&config);
    let started = Instant::now();
    d.start();

    // The flood is over (the ring buffer keeps every line, dropped or not),
    // and every dropped line has been reported (one report per 5 s).
    let ring = wait_for(
        Duration::from_secs(60),
        "the whole flood in the ring",
        || {
            let out = d.ctl(&["logs", "flood-1", "-n", "1"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("burst done").then_some(text)
        },
    );
    assert!(ring.contains("burst done"), "{ring}");
    let (log, passed, dropped) = wait_for(
        Duration::from_secs(30),
        "the drop reports to add up to the flood",
        || {
            let log = d.log();
            let passed = log.lines().filter(|l| l.starts_with("flood-1 | ")).count() as u64;
            let dropped: u64 = reported_drops(&log, "flood").iter().sum();
            (passed + dropped == FLOOD_RECORDS).then_some((log, passed, dropped))
        },
    );
    let elapsed = started.elapsed().as_secs_f64();

    // The flood got no more than its share: 50/s and a burst of 500.
    let share = RATE as f64 / 2.0;
    let most = (share * 10.0 + share * elapsed).ceil() as u64 + 1;
    assert!(
        passed <= most,
        "{passed} flood lines passed in {elapsed:.1} s, at most {most} allowed"
    );
    assert!(dropped > FLOOD / 2, "only {dropped} dropped");
    // Reported in batches, with thousands separators.
    let reports = reported_drops(&log, "flood");
    assert!(!reports.is_empty());
    let first = log
        .lines()
        .find(|l| l.contains("lines dropped (rate limit)"))
        .unwrap();
    assert!(first.contains(" WARN "), "{first}");
    assert!(
        first.contains(&format!("flood: {} lines dropped", thousands(reports[0]))),
        "{first}"
    );
    // The calm group lost nothing: tick 0, 1, 2, … without a gap, and no
    // report about it.
    let ticks: Vec<u64> = log
        .lines()
        .filter_map(|l| l.strip_prefix("calm-1 | "))
        .filter_map(|l| l.split("] tick ").nth(1)?.trim().parse().ok())
        .collect();
    assert!(ticks.len() >= 3, "calm ticks: {ticks:?}\n{log}");
    assert_eq!(ticks, (0..ticks.len() as u64).collect::<Vec<_>>());
    assert!(reported_drops(&log, "calm").is_empty());
}

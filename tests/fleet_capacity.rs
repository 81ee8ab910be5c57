//! The broker monitor's fleet capacity read (issue 15, docs/fleet.md)
//! against a real redis-server: records written by the test publisher
//! (tests/support/fleet.rs), the real monitor, its
//! `BrokerEvent::FleetCapacity` events.

#[path = "support/fleet.rs"]
mod fleet_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::time::Duration;

use clearify_workerd::broker::{
    BrokerEvent, BrokerSettings, FleetSettings, Monitor, Watched, spawn_monitor,
};
use clearify_workerd::model::fleet::{Capacity, DaemonRun, GroupRecord};
use fleet_support::{connect, group, publish, publish_raw, record, redis_now};
use redis_support::RedisServer;
use tokio::sync::mpsc;

/// A monitor for device `me` consuming `text` and `images`, reading the
/// fleet's capacity every second (the shortest interval).
fn monitor(url: &str, read_capacity: bool) -> (Monitor, mpsc::Receiver<BrokerEvent>) {
    let settings = BrokerSettings {
        check_interval: Duration::from_millis(300),
        fleet: Some(FleetSettings {
            device_id: "me".into(),
            interval: Duration::from_secs(1),
            forget_after: Duration::from_secs(60),
            announce: false,
            read_capacity,
        }),
        ..BrokerSettings::new(url)
    };
    let watched = Watched {
        queues: vec!["text".into(), "images".into()],
        poll: false,
    };
    let (tx, rx) = mpsc::channel(64);
    (spawn_monitor(settings, watched, tx), rx)
}

/// The next capacity report within `limit`; panics naming what came instead.
async fn next_capacity(
    rx: &mut mpsc::Receiver<BrokerEvent>,
    limit: Duration,
) -> Option<Vec<Capacity>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut other = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(BrokerEvent::FleetCapacity(c))) => return c,
            Ok(Some(ev)) => other.push(ev),
            _ => panic!("no FleetCapacity within {limit:?}; got {other:?}"),
        }
    }
}

fn scaled(name: &str, queues: &[&str], total: u32, max: Option<u32>) -> GroupRecord {
    GroupRecord {
        max_instances: max,
        ..group(name, queues, total, None)
    }
}

fn sorted(mut c: Vec<Capacity>) -> Vec<(Vec<String>, u64)> {
    c.sort_by(|a, b| a.queues.cmp(&b.queues));
    c.into_iter().map(|c| (c.queues, c.capacity)).collect()
}

fn qs(q: &[&str]) -> Vec<String> {
    q.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_monitor_reports_the_other_live_devices_capacity_and_none_when_redis_is_down() {
    let mut server = RedisServer::start();
    let url = server.url();
    let mut conn = connect(&url);
    let now = redis_now(&mut conn);
    // Two other live devices: autoscaled (max 4 × concurrency 2), and an
    // older daemon's record (3 instances × 2) with a group on a queue this
    // device does not consume.
    let a = record("pi-a", "0.5.0", vec![scaled("t", &["text"], 1, Some(4))]);
    let b = record(
        "pi-b",
        "0.4.0",
        vec![
            scaled("t", &["images", "text"], 3, None),
            scaled("x", &["reports"], 9, None),
        ],
    );
    // Not counted: this device, a stopped one, a lost one, garbage.
    let me = record("me", "0.5.0", vec![scaled("t", &["text"], 1, Some(4))]);
    let mut stopped = record("pi-stopped", "0.5.0", vec![scaled("t", &["text"], 2, None)]);
    stopped.run = DaemonRun::Stopped;
    let lost = record("pi-lost", "0.5.0", vec![scaled("t", &["text"], 2, None)]);
    publish(&mut conn, "", &a, now, 60);
    publish(&mut conn, "", &b, now - 5.0, 60);
    publish(&mut conn, "", &me, now, 60);
    publish(&mut conn, "", &stopped, now, 60);
    publish(&mut conn, "", &lost, now - 31.0, 60);
    publish_raw(
        &mut conn,
        "",
        b"pi-junk",
        b"{\"schema\": 1, \"groups\": [",
        now,
    );
    let other_id = serde_json::to_vec(&record("pi-z", "0.5.0", vec![])).unwrap();
    publish_raw(&mut conn, "", b"pi-impostor", &other_id, now);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (m, mut rx) = monitor(&url, true);
        let got = next_capacity(&mut rx, Duration::from_secs(5)).await;
        let got = got.expect("the fleet was readable");
        assert_eq!(
            sorted(got),
            vec![(qs(&["images", "text"]), 6), (qs(&["text"]), 8)]
        );

        // A third device appears: the next read reports it.
        let c = record("pi-c", "0.5.0", vec![scaled("i", &["images"], 1, Some(2))]);
        let at = redis_now(&mut conn);
        publish(&mut conn, "", &c, at, 60);
        let got = next_capacity(&mut rx, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            sorted(got),
            vec![
                (qs(&["images"]), 4),
                (qs(&["images", "text"]), 6),
                (qs(&["text"]), 8)
            ]
        );

        // Redis goes down: None (the share falls back to 1).
        server.stop();
        assert_eq!(next_capacity(&mut rx, Duration::from_secs(15)).await, None);
        // And back (empty: the test server keeps nothing): read again.
        server.restart();
        let got = next_capacity(&mut rx, Duration::from_secs(15)).await;
        assert_eq!(got, Some(vec![]));
        m.shutdown().await;
    });
}

#[test]
fn no_capacity_read_unless_asked_and_none_without_a_broker() {
    let server = RedisServer::start();
    let down = RedisServer::new_stopped(None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Publishing on, reading off: no FleetCapacity ever.
        let (m, mut rx) = monitor(&server.url(), false);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            assert!(!matches!(ev, BrokerEvent::FleetCapacity(_)), "{ev:?}");
        }
        m.shutdown().await;
        // A broker that never answers: None at the first read.
        let (m, mut rx) = monitor(&down.url(), true);
        assert_eq!(next_capacity(&mut rx, Duration::from_secs(5)).await, None);
        m.shutdown().await;
    });
}

/// The reader's cap is 1000 members: all 1000 are read, within the read's
/// 10 s cut-off (the time is printed, not asserted: docs/benchmarks.md).
#[test]
fn a_thousand_devices_are_read_within_the_cap() {
    let server = RedisServer::start();
    let url = server.url();
    let mut conn = connect(&url);
    let now = redis_now(&mut conn);
    // 1000 devices, each with a realistic record of 4 groups × 8 instances
    // (about 3 KiB); one group of each consumes `images`.
    for i in 0..1000 {
        let rec = fleet_support::realistic(&format!("pi-{i:04}"), "0.5.0");
        publish(&mut conn, "", &rec, now, 60);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t0 = std::time::Instant::now();
        let (m, mut rx) = monitor(&url, true);
        let got = next_capacity(&mut rx, Duration::from_secs(10)).await;
        let took = t0.elapsed();
        eprintln!("capacity read of 1000 records: {took:?}");
        let got = got.expect("the fleet was readable");
        // No `text` group in `realistic`: 1000 × `images` (8 × 2).
        assert_eq!(got.len(), 1000);
        assert!(
            got.iter()
                .all(|c| c.queues == qs(&["images"]) && c.capacity == 16)
        );
        m.shutdown().await;
    });
}

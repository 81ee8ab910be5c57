//! A test publisher for the fleet registry (issue 14): writes device
//! records built from `model::fleet` types into a real redis-server the way
//! a daemon does (`ZADD <set> <redis time> <device_id>` and
//! `SET <record key> <json> EX <ttl>`), and writes hostile ones no daemon
//! would.
//!
//! Include with `#[path = "support/fleet.rs"] mod fleet_support;` next to
//! `redis_support`.

#![allow(dead_code)]

use clearify_workerd::model::InstanceState;
use clearify_workerd::model::fleet::{
    DaemonRun, DeviceRecord, GroupRecord, InstanceRecord, Keys, SCHEMA,
};

/// A synchronous connection to `url` (redis-rs).
pub fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Redis `TIME`, in seconds since the epoch.
pub fn redis_now(conn: &mut redis::Connection) -> f64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn).expect("TIME");
    secs as f64 + micros as f64 / 1e6
}

/// One group as a healthy daemon reports it: `n` running instances of
/// concurrency 2, 50 MiB each, limit 512 MiB, with their detail.
pub fn group(name: &str, queues: &[&str], n: u32, tasks_per_minute: Option<f64>) -> GroupRecord {
    GroupRecord {
        name: name.into(),
        queues: queues.iter().map(|q| q.to_string()).collect(),
        concurrency: 2,
        total: n,
        running: n,
        crash_looping: 0,
        restarts: 1,
        memory_bytes: Some(u64::from(n) * (50 << 20)),
        memory_max: Some(512 << 20),
        processed: 1234,
        active: 1,
        tasks_per_minute,
        max_instances: None,
        autoscale: None,
        instances: (1..=n)
            .map(|i| InstanceRecord {
                id: format!("{name}-{i}"),
                state: InstanceState::Running,
                pid: Some(10_000 + i),
                uptime_secs: Some(86_400 + u64::from(i)),
                restarts: 0,
                last_exit: None,
                memory_bytes: Some(50 << 20),
                cpu_percent: Some(3.5),
                heartbeat_age_secs: Some(1.2),
            })
            .collect(),
    }
}

/// A running device's record with `groups`, interval 10 s.
pub fn record(device_id: &str, version: &str, groups: Vec<GroupRecord>) -> DeviceRecord {
    DeviceRecord {
        schema: SCHEMA,
        device_id: device_id.into(),
        version: version.into(),
        hostname: format!("{device_id}.local"),
        arch: "arm64".into(),
        kernel: "6.6.31+rpt-rpi-v8".into(),
        boot_time: Some(1_760_000_000),
        uptime_secs: 3 * 86_400,
        interval_secs: 10.0,
        run: DaemonRun::Running,
        stopped_at: None,
        rss_bytes: Some(9 << 20),
        load: Some([0.31, 0.25, 0.2]),
        mem_total_bytes: Some(4 << 30),
        mem_available_bytes: Some(3 << 30),
        limits: true,
        broker_rtt_ms: Some(1.4),
        restarts_last_hour: 0,
        groups,
        instances_omitted: 0,
    }
}

/// The realistic record of the benchmarks and the memory figure: 4 groups
/// of 8 instances each.
pub fn realistic(device_id: &str, version: &str) -> DeviceRecord {
    record(
        device_id,
        version,
        vec![
            group("text", &["text_processing"], 8, Some(42.0)),
            group("images", &["images", "thumbnails"], 8, Some(12.5)),
            group("billing", &["payments", "webhooks"], 8, Some(3.0)),
            group("default", &["celery"], 8, Some(20.0)),
        ],
    )
}

/// Publishes `rec` as a daemon does: the set member with score
/// `last_beat` and the record with a TTL of `ttl_secs`.
pub fn publish(
    conn: &mut redis::Connection,
    key_prefix: &str,
    rec: &DeviceRecord,
    last_beat: f64,
    ttl_secs: u64,
) {
    let keys = Keys::new(key_prefix);
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(keys.set())
        .arg(last_beat)
        .arg(&rec.device_id)
        .ignore()
        .cmd("SET")
        .arg(keys.record(&rec.device_id))
        .arg(rec.encode())
        .arg("EX")
        .arg(ttl_secs)
        .ignore()
        .query(conn)
        .expect("publish a record");
}

/// Writes raw `bytes` as `device_id`'s record (hostile records), with the
/// member scored `last_beat`.
pub fn publish_raw(
    conn: &mut redis::Connection,
    key_prefix: &str,
    device_id: &[u8],
    bytes: &[u8],
    last_beat: f64,
) {
    let keys = Keys::new(key_prefix);
    let mut key = keys.record("").into_bytes();
    key.extend_from_slice(device_id);
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(keys.set())
        .arg(last_beat)
        .arg(device_id)
        .ignore()
        .cmd("SET")
        .arg(key)
        .arg(bytes)
        .ignore()
        .query(conn)
        .expect("publish a raw record");
}

/// Adds `n` members without records (`ghost-0` …), scored `score`, in
/// batches of 10 000 per ZADD.
pub fn add_ghosts(conn: &mut redis::Connection, key_prefix: &str, n: usize, score: f64) {
    let set = Keys::new(key_prefix).set();
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&set);
        for j in i..end {
            cmd.arg(score).arg(format!("ghost-{j}"));
        }
        let _: i64 = cmd.query(conn).expect("ZADD ghosts");
        i = end;
    }
}

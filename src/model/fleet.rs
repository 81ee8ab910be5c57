//! The fleet registry's vocabulary (issue 14): the record each daemon
//! publishes in the shared Redis ([`DeviceRecord`]), how a reader takes in a
//! record it did not write ([`parse_record`]: size-capped, schema-checked),
//! and the three views `clearifyctl fleet` shows, computed from the records
//! and the Redis clock ([`device_rows`], [`queue_rows`], [`DeviceView`]).
//!
//! Records are untrusted input: any device, or anyone with write access to
//! the broker, can write one. Everything here is bounded by
//! [`MAX_RECORD`] and [`MAX_DEVICES`]; strings are kept as they are and
//! escaped where they are shown (`cli::render`).
//!
//! Keys, under the broker's `key_prefix` ([`Keys`]):
//! - `clearify:fleet`: a sorted set, device id → the Redis `TIME` of its
//!   last beat (seconds, with microseconds as the fraction);
//! - `clearify:fleet:<device_id>`: the record (JSON), with a TTL of the
//!   device's `[fleet] forget_after`;
//! - `clearify:fleet-prune`: the `SET … NX EX 60` guard that lets one
//!   reader a minute prune members whose record has expired.

use serde::{Deserialize, Serialize};

use super::InstanceState;

/// The record's schema. A reader skips records of another schema.
pub const SCHEMA: u32 = 1;

/// Largest record, in bytes, that a daemon writes or a reader takes in
/// (readers fetch at most this many bytes plus one with `GETRANGE`, so a
/// 10 MB value costs them 16 KiB).
pub const MAX_RECORD: usize = 16 * 1024;

/// Most set members a reader looks at (the most recently seen first). The
/// rest are counted, not read: a million members cost one `ZCARD`.
pub const MAX_DEVICES: usize = 1000;

/// Longest device id a reader accepts from the set (`[daemon] device_id` is
/// checked when it is configured; a longer member is someone else's).
pub const MAX_DEVICE_ID: usize = 128;

/// Most distinct queues the queue view counts (each costs a few `LLEN`s).
pub const MAX_QUEUES: usize = 512;

/// A device whose last beat is older than this many of its intervals is
/// lost.
pub const LOST_AFTER_INTERVALS: f64 = 3.0;

/// The fleet's keys under a broker `key_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(key_prefix: &str) -> Keys {
        Keys {
            prefix: format!("{key_prefix}clearify:"),
        }
    }
    /// The sorted set of device ids by last beat.
    pub fn set(&self) -> String {
        format!("{}fleet", self.prefix)
    }
    /// One device's record.
    pub fn record(&self, device_id: &str) -> String {
        format!("{}fleet:{device_id}", self.prefix)
    }
    /// The pruning guard.
    pub fn prune_guard(&self) -> String {
        format!("{}fleet-prune", self.prefix)
    }
}

/// Whether a daemon is serving or stopped on purpose (a lost device is one
/// whose beats stopped without this turning `stopped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonRun {
    Running,
    Stopped,
}

/// What one daemon publishes. Never a secret: no broker URL, no
/// environment, no command line.
///
/// `I` is how an instance is spelled: [`InstanceRecord`] (an object with
/// named fields) everywhere but in Redis, where each is an
/// [`InstanceRow`] (an array), which keeps a Pi's record at about 3 KiB
/// ([`DeviceRecord::encode`], [`parse_record`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord<I = InstanceRecord> {
    /// [`SCHEMA`].
    pub schema: u32,
    pub device_id: String,
    /// The daemon's version.
    pub version: String,
    pub hostname: String,
    /// Debian's name: `amd64`, `arm64`, `armhf`, … (else Rust's).
    pub arch: String,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// Seconds since the Unix epoch (`btime` of /proc/stat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_time: Option<u64>,
    pub uptime_secs: u64,
    /// The publishing interval, seconds: readers judge "lost" by it.
    pub interval_secs: f64,
    pub run: DaemonRun,
    /// Redis time of the clean stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// 1, 5 and 15 minute load averages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<[f64; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_available_bytes: Option<u64>,
    /// Whether cgroup v2 limits are applied.
    pub limits: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_rtt_ms: Option<f64>,
    /// Restarts of all instances in the last hour (of this daemon's run).
    pub restarts_last_hour: u64,
    pub groups: Vec<GroupRecord<I>>,
    /// Instances whose detail was left out to keep the record under
    /// [`MAX_RECORD`] (their group's sums still count them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub instances_omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One group, with sums that stay when its instances' detail is left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord<I = InstanceRecord> {
    pub name: String,
    pub queues: Vec<String>,
    pub concurrency: u32,
    /// Instances configured.
    pub total: u32,
    pub running: u32,
    pub crash_looping: u32,
    /// Restarts since the daemon started, all instances.
    pub restarts: u64,
    /// Memory used by the group's instances, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// `memory_max` per instance, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// Tasks processed since start, summed from the Celery heartbeats'
    /// `processed` counters (a restarted worker's count starts again).
    pub processed: u64,
    /// Tasks executing now (heartbeats' `active`).
    pub active: u64,
    /// Tasks per minute between the last two beats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_per_minute: Option<f64>,
    /// The most instances the group may run: its autoscale `max`, else
    /// its fixed count. Other devices' share of a queue is counted from it
    /// (capacity = max_instances × concurrency; [`capacities`]); absent in
    /// the records of older daemons (then `total` counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// The group's autoscaling, when it has `autoscale` (issue 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<ScaleRecord>,
    #[serde(default = "Vec::new")]
    pub instances: Vec<I>,
}

/// An autoscaled group's scaling, as `status` shows it
/// (`groups[].autoscale`). `state` stays a string: a newer daemon's state
/// must not make the record unreadable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleRecord {
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub state: String,
    pub reason: String,
}

/// One instance, as in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    pub restarts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_age_secs: Option<f64>,
}

/// An instance as the record in Redis spells it: `[id, state, pid,
/// uptime_secs, restarts, last_exit, memory_bytes, cpu_percent,
/// heartbeat_age_secs]`, the two percentages and ages to a tenth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow(
    String,
    InstanceState,
    Option<u32>,
    Option<u64>,
    u64,
    Option<String>,
    Option<u64>,
    Option<f64>,
    Option<f64>,
);

fn tenth(v: Option<f64>) -> Option<f64> {
    v.map(|v| (v * 10.0).round() / 10.0)
}

impl From<InstanceRecord> for InstanceRow {
    fn from(i: InstanceRecord) -> Self {
        InstanceRow(
            i.id,
            i.state,
            i.pid,
            i.uptime_secs,
            i.restarts,
            i.last_exit,
            i.memory_bytes,
            tenth(i.cpu_percent),
            tenth(i.heartbeat_age_secs),
        )
    }
}

impl From<InstanceRow> for InstanceRecord {
    fn from(r: InstanceRow) -> Self {
        let InstanceRow(id, state, pid, uptime_secs, restarts, last_exit, memory, cpu, hb) = r;
        InstanceRecord {
            id,
            state,
            pid,
            uptime_secs,
            restarts,
            last_exit,
            memory_bytes: memory,
            cpu_percent: cpu,
            heartbeat_age_secs: hb,
        }
    }
}

impl<I> DeviceRecord<I> {
    /// The same record with each instance spelled as `J`.
    pub fn map_instances<J: From<I>>(self) -> DeviceRecord<J> {
        DeviceRecord {
            schema: self.schema,
            device_id: self.device_id,
            version: self.version,
            hostname: self.hostname,
            arch: self.arch,
            kernel: self.kernel,
            boot_time: self.boot_time,
            uptime_secs: self.uptime_secs,
            interval_secs: self.interval_secs,
            run: self.run,
            stopped_at: self.stopped_at,
            rss_bytes: self.rss_bytes,
            load: self.load,
            mem_total_bytes: self.mem_total_bytes,
            mem_available_bytes: self.mem_available_bytes,
            limits: self.limits,
            broker_rtt_ms: self.broker_rtt_ms,
            restarts_last_hour: self.restarts_last_hour,
            groups: self
                .groups
                .into_iter()
                .map(|g| GroupRecord {
                    name: g.name,
                    queues: g.queues,
                    concurrency: g.concurrency,
                    total: g.total,
                    running: g.running,
                    crash_looping: g.crash_looping,
                    restarts: g.restarts,
                    memory_bytes: g.memory_bytes,
                    memory_max: g.memory_max,
                    processed: g.processed,
                    active: g.active,
                    tasks_per_minute: g.tasks_per_minute,
                    max_instances: g.max_instances,
                    autoscale: g.autoscale,
                    instances: g.instances.into_iter().map(J::from).collect(),
                })
                .collect(),
            instances_omitted: self.instances_omitted,
        }
    }
}

impl DeviceRecord {
    /// The record as written: JSON of at most [`MAX_RECORD`] bytes, each
    /// instance an [`InstanceRow`]. When the instances' detail does not
    /// fit, it is left out group by group (the largest first) and counted
    /// in `instances_omitted`.
    pub fn encode(&self) -> Vec<u8> {
        let mut rec: DeviceRecord<InstanceRow> = self.clone().map_instances();
        loop {
            let bytes = serde_json::to_vec(&rec).unwrap_or_default();
            if bytes.len() <= MAX_RECORD {
                return bytes;
            }
            let Some(g) = rec
                .groups
                .iter_mut()
                .filter(|g| !g.instances.is_empty())
                .max_by_key(|g| g.instances.len())
            else {
                // Still too big without any instance: strings too long
                // (only a hand-edited device id could). Drop the groups.
                rec.instances_omitted = rec.groups.iter().map(|g| u64::from(g.total)).sum();
                rec.groups.clear();
                return serde_json::to_vec(&rec).unwrap_or_default();
            };
            rec.instances_omitted += g.instances.len() as u64;
            g.instances.clear();
        }
    }
}

/// Parses a record read from Redis. `bytes` may be longer than
/// [`MAX_RECORD`] by one byte: that is how a too-large value shows (the
/// reader asked for `MAX_RECORD + 1` bytes).
pub fn parse_record(device_id: &str, bytes: &[u8]) -> Result<DeviceRecord, String> {
    if bytes.len() > MAX_RECORD {
        return Err(format!("record larger than {MAX_RECORD} bytes"));
    }
    // serde_json refuses nesting deeper than 128 by itself.
    let rec: DeviceRecord<InstanceRow> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a fleet record: {e}"))?;
    let rec: DeviceRecord = rec.map_instances();
    if rec.schema != SCHEMA {
        return Err(format!(
            "record schema {} (this reader knows {SCHEMA})",
            rec.schema
        ));
    }
    if rec.device_id != device_id {
        return Err(format!(
            "record names another device ({:?})",
            truncate(&rec.device_id, 64)
        ));
    }
    if !(rec.interval_secs.is_finite() && rec.interval_secs > 0.0) {
        return Err("record has no valid interval_secs".into());
    }
    Ok(rec)
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// How a device looks to a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Beats arrive.
    Up,
    /// Stopped on purpose (a clean stop).
    Stopped,
    /// No beat for [`LOST_AFTER_INTERVALS`] intervals, and no clean stop.
    Lost,
}

/// A record with the score of its set member (its last beat, Redis time).
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub record: DeviceRecord,
    pub last_beat: f64,
}

impl Seen {
    /// Up, stopped or lost at Redis time `now`.
    pub fn presence(&self, now: f64) -> Presence {
        if self.record.run == DaemonRun::Stopped {
            Presence::Stopped
        } else if now - self.last_beat > LOST_AFTER_INTERVALS * self.record.interval_secs {
            Presence::Lost
        } else {
            Presence::Up
        }
    }
}

/// A record a reader skipped, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// The set member (untrusted: escape it when showing it).
    pub device_id: String,
    pub reason: String,
}

/// What a reader read: the records it took in and what it left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadSummary {
    /// Redis `TIME` when read, seconds since the Unix epoch.
    pub now: f64,
    /// Members of the set.
    pub members: u64,
    /// Members looked at (at most [`MAX_DEVICES`], the most recent).
    pub read: u64,
    /// Members whose record has expired (pruned by some reader).
    pub expired: u64,
    pub skipped: Vec<Skipped>,
}

mod capacity;
mod views;
pub use capacity::*;
pub use views::*;

#[cfg(test)]
mod tests;

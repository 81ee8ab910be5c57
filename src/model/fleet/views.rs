//! The three views `clearifyctl fleet` shows, computed from the records a
//! reader took in and the Redis clock: the device list ([`device_rows`]),
//! the queues ([`queue_rows`]) and one device ([`DeviceView`]).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::*;

/// One line of `clearifyctl fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRow {
    pub device_id: String,
    pub hostname: String,
    pub presence: Presence,
    pub version: String,
    /// The version differs from the most common one.
    pub version_skew: bool,
    pub arch: String,
    pub uptime_secs: u64,
    pub running: u64,
    pub total: u64,
    pub crash_looping: u64,
    pub restarts_last_hour: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_per_minute: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The sum of the groups' `memory_max` × instances when every group has
    /// one, else the device's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_rtt_ms: Option<f64>,
    /// Redis time of the last beat.
    pub last_seen: f64,
    /// Seconds since the last beat (by Redis time).
    pub last_seen_secs: f64,
}

impl DeviceRow {
    /// Problems first: lost, crash-looping, workers down, then stopped,
    /// version skew, then the healthy ones.
    fn rank(&self) -> u8 {
        match self.presence {
            Presence::Lost => 0,
            Presence::Up if self.crash_looping > 0 => 1,
            Presence::Up if self.running < self.total => 2,
            Presence::Stopped => 3,
            Presence::Up if self.version_skew => 4,
            Presence::Up => 5,
        }
    }
}

/// The answer to `clearifyctl fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetView {
    #[serde(flatten)]
    pub read: ReadSummary,
    /// The most common version among the devices shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_version: Option<String>,
    pub devices: Vec<DeviceRow>,
}

/// The most common version (ties: the highest string), if any device.
fn common_version(seen: &[Seen]) -> Option<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in seen {
        *counts.entry(s.record.version.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)))
        .map(|(v, _)| v.to_string())
}

/// The device list, problems first, then by device id.
pub fn device_rows(read: ReadSummary, seen: &[Seen]) -> FleetView {
    let now = read.now;
    let common = common_version(seen);
    let mut devices: Vec<DeviceRow> = seen
        .iter()
        .map(|s| {
            let r = &s.record;
            let sum = |f: fn(&GroupRecord) -> u64| r.groups.iter().map(f).sum::<u64>();
            let memory = r
                .groups
                .iter()
                .filter_map(|g| g.memory_bytes)
                .reduce(u64::saturating_add);
            let limits: Option<u64> = r
                .groups
                .iter()
                .map(|g| g.memory_max.map(|m| m.saturating_mul(u64::from(g.total))))
                .try_fold(0u64, |acc, m| m.map(|m| acc.saturating_add(m)));
            let tpm: Option<f64> = r
                .groups
                .iter()
                .filter_map(|g| g.tasks_per_minute)
                .reduce(|a, b| a + b);
            DeviceRow {
                device_id: r.device_id.clone(),
                hostname: r.hostname.clone(),
                presence: s.presence(now),
                version: r.version.clone(),
                version_skew: common.as_deref().is_some_and(|c| c != r.version),
                arch: r.arch.clone(),
                uptime_secs: r.uptime_secs,
                running: sum(|g| u64::from(g.running)),
                total: sum(|g| u64::from(g.total)),
                crash_looping: sum(|g| u64::from(g.crash_looping)),
                restarts_last_hour: r.restarts_last_hour,
                tasks_per_minute: tpm,
                memory_bytes: memory,
                memory_limit_bytes: match limits {
                    Some(l) if !r.groups.is_empty() => Some(l),
                    _ => r.mem_total_bytes,
                },
                broker_rtt_ms: r.broker_rtt_ms,
                last_seen: s.last_beat,
                last_seen_secs: (now - s.last_beat).max(0.0),
            }
        })
        .collect();
    devices.sort_by(|a, b| {
        a.rank()
            .cmp(&b.rank())
            .then_with(|| a.device_id.cmp(&b.device_id))
    });
    FleetView {
        read,
        common_version: common,
        devices,
    }
}

/// One device's part in a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDevice {
    pub device_id: String,
    /// Instances of the groups that consume the queue.
    pub instances: u64,
    pub running: u64,
    /// Their total concurrency (instances × concurrency).
    pub concurrency: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_per_minute: Option<f64>,
    /// Its part of the queue's tasks per minute, 0..=1 (`None` when nobody
    /// processed anything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
}

/// One queue of `clearifyctl fleet queues`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRow {
    pub queue: String,
    /// Messages waiting, priority sub-queues summed (as in `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u64>,
    pub instances: u64,
    pub concurrency: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_per_minute: Option<f64>,
    pub devices: Vec<QueueDevice>,
}

/// The answer to `clearifyctl fleet queues`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuesView {
    #[serde(flatten)]
    pub read: ReadSummary,
    pub queues: Vec<QueueRow>,
    /// Distinct queues beyond [`MAX_QUEUES`], not shown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queues_omitted: u64,
}

/// The queues the live (up) devices consume, at most [`MAX_QUEUES`], in
/// name order: what a reader fetches the backlog of.
pub fn live_queues(now: f64, seen: &[Seen]) -> (Vec<String>, u64) {
    // Distinct first: a thousand records may name the same 512 queues.
    let distinct: std::collections::HashSet<&str> = seen
        .iter()
        .filter(|s| s.presence(now) == Presence::Up)
        .flat_map(|s| s.record.groups.iter())
        .flat_map(|g| g.queues.iter().map(String::as_str))
        .collect();
    let mut all: Vec<&str> = distinct.into_iter().collect();
    all.sort_unstable();
    let omitted = all.len().saturating_sub(MAX_QUEUES) as u64;
    all.truncate(MAX_QUEUES);
    (all.into_iter().map(str::to_string).collect(), omitted)
}

/// The load-balancing view: for each queue the live devices that consume
/// it. A group with several queues counts towards each of them (its tasks
/// per minute cannot be split by queue).
pub fn queue_rows(read: ReadSummary, seen: &[Seen], backlog: &BTreeMap<String, u64>) -> QueuesView {
    let (names, omitted) = live_queues(read.now, seen);
    // One pass over every (device, group, queue): O(what was read), not
    // queues × devices × groups × queues (a thousand hostile records
    // naming 512 queues each would stall the reader for seconds).
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut per_queue: Vec<Vec<QueueDevice>> = vec![Vec::new(); names.len()];
    let mut mine: Vec<Option<QueueDevice>> = vec![None; names.len()];
    for s in seen.iter().filter(|s| s.presence(read.now) == Presence::Up) {
        let mut touched: Vec<usize> = Vec::new();
        for g in &s.record.groups {
            let mut qs: Vec<usize> = g
                .queues
                .iter()
                .filter_map(|q| index.get(q.as_str()).copied())
                .collect();
            qs.sort_unstable();
            qs.dedup();
            for i in qs {
                let Some(slot) = mine.get_mut(i) else {
                    continue;
                };
                let d = slot.get_or_insert_with(|| {
                    touched.push(i);
                    QueueDevice {
                        device_id: String::new(),
                        instances: 0,
                        running: 0,
                        concurrency: 0,
                        tasks_per_minute: None,
                        share: None,
                    }
                });
                d.instances = d.instances.saturating_add(u64::from(g.total));
                d.running = d.running.saturating_add(u64::from(g.running));
                d.concurrency = d
                    .concurrency
                    .saturating_add(u64::from(g.total).saturating_mul(u64::from(g.concurrency)));
                d.tasks_per_minute = match (d.tasks_per_minute, g.tasks_per_minute) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
            }
        }
        for i in touched {
            if let (Some(Some(mut d)), Some(list)) =
                (mine.get_mut(i).map(Option::take), per_queue.get_mut(i))
            {
                d.device_id = s.record.device_id.clone();
                list.push(d);
            }
        }
    }
    let by_queue = names.iter().map(String::as_str).zip(per_queue);
    let mut queues = Vec::with_capacity(names.len());
    for (name, mut devices) in by_queue {
        let tpm: f64 = devices.iter().filter_map(|d| d.tasks_per_minute).sum();
        if tpm > 0.0 {
            for d in &mut devices {
                d.share = Some(d.tasks_per_minute.unwrap_or(0.0) / tpm);
            }
        }
        devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        queues.push(QueueRow {
            backlog: backlog.get(name).copied(),
            instances: devices
                .iter()
                .map(|d| d.instances)
                .fold(0, u64::saturating_add),
            concurrency: devices
                .iter()
                .map(|d| d.concurrency)
                .fold(0, u64::saturating_add),
            tasks_per_minute: devices
                .iter()
                .any(|d| d.tasks_per_minute.is_some())
                .then_some(tpm),
            queue: name.to_string(),
            devices,
        });
    }
    QueuesView {
        read,
        queues,
        queues_omitted: omitted,
    }
}

/// The answer to `clearifyctl fleet DEVICE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Redis time when read.
    pub now: f64,
    pub presence: Presence,
    pub last_seen: f64,
    pub record: DeviceRecord,
}

impl DeviceView {
    pub fn new(now: f64, seen: Seen) -> DeviceView {
        DeviceView {
            now,
            presence: seen.presence(now),
            last_seen: seen.last_beat,
            record: seen.record,
        }
    }
}

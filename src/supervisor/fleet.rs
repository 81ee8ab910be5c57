//! This device's fleet record (issue 14, docs/fleet.md): built by the
//! actor from its status document, the host's facts and a little history
//! (restarts in the last hour, processed counters between beats), handed
//! to the broker monitor, whose health link writes it at the next beat.
//! A new record is built after each beat ([`BrokerEvent::FleetBeat`]) and
//! when the broker comes up; none is built while publishing is off, so an
//! idle daemon pays for a record once per `[fleet] interval`, in the same
//! wake-up as the health check.

use std::collections::{HashMap, VecDeque};

use super::status::Refresh;
use super::*;
use crate::broker::FleetSettings;
use crate::model::InstanceState;
use crate::model::fleet::{
    DaemonRun, DeviceRecord, GroupRecord, InstanceRecord, SCHEMA, ScaleRecord,
};
use crate::sys::host;

/// How long restarts are counted for `restarts_last_hour`.
const RESTART_WINDOW: Duration = Duration::from_secs(3600);

/// The environment variable that replaces the version this daemon
/// publishes (clearify-workerd(8)): a label for a staged roll-out, and how
/// the tests make version skew without a second build.
pub const VERSION_ENV: &str = "CLEARIFY_FLEET_VERSION";

/// What the record builder keeps between beats.
pub(super) struct Publisher {
    settings: FleetSettings,
    version: String,
    facts: host::Facts,
    /// (when, restarts of all instances then), one per record, oldest
    /// first, at most an hour's worth.
    restarts: VecDeque<(std::time::Instant, u64)>,
    /// Per instance: its heartbeat's `processed` at the previous record.
    processed: HashMap<String, u64>,
    previous: Option<std::time::Instant>,
}

impl Publisher {
    pub(super) fn new(settings: FleetSettings) -> Publisher {
        let version = std::env::var(VERSION_ENV)
            .ok()
            .filter(|v| !v.is_empty() && v.len() <= 64 && !v.chars().any(char::is_control))
            .unwrap_or_else(|| crate::VERSION.to_string());
        Publisher {
            settings,
            version,
            facts: host::Facts::read(),
            restarts: VecDeque::new(),
            processed: HashMap::new(),
            previous: None,
        }
    }

    /// The record of `status` now, with `run`.
    pub(super) fn record(
        &mut self,
        status: &Status,
        config: &Config,
        limits: bool,
        run: DaemonRun,
    ) -> DeviceRecord {
        let now = std::time::Instant::now();
        let minutes = self
            .previous
            .map(|p| now.duration_since(p).as_secs_f64() / 60.0)
            .filter(|m| *m > 0.0);
        self.previous = Some(now);
        let mut processed = HashMap::new();
        let mut groups = Vec::with_capacity(status.groups.len());
        let mut restarts_total = 0u64;
        for g in &status.groups {
            let conf = config.group(&g.name);
            let mut done_since = 0u64;
            let mut rec = GroupRecord {
                name: g.name.clone(),
                queues: g.queues.iter().map(|q| q.name.clone()).collect(),
                concurrency: conf.map_or(0, |c| c.concurrency),
                total: g.instances.len().try_into().unwrap_or(u32::MAX),
                running: 0,
                crash_looping: 0,
                restarts: 0,
                memory_bytes: None,
                memory_max: conf.and_then(|c| c.limits.memory_max),
                processed: 0,
                active: 0,
                tasks_per_minute: None,
                max_instances: conf.map(|c| c.max_instances()),
                autoscale: g.autoscale.as_ref().map(|a| ScaleRecord {
                    min: a.min,
                    max: a.max,
                    desired: a.desired,
                    state: a.state.as_str().to_string(),
                    reason: a.reason.clone(),
                }),
                instances: Vec::with_capacity(g.instances.len()),
            };
            for i in &g.instances {
                match i.state {
                    InstanceState::Running => rec.running += 1,
                    InstanceState::CrashLoop => rec.crash_looping += 1,
                    _ => {}
                }
                rec.restarts = rec.restarts.saturating_add(i.restarts);
                if let Some(m) = i.memory_bytes {
                    rec.memory_bytes = Some(rec.memory_bytes.unwrap_or(0).saturating_add(m));
                }
                rec.active = rec.active.saturating_add(i.active.unwrap_or(0));
                if let Some(p) = i.processed {
                    rec.processed = rec.processed.saturating_add(p);
                    // A counter that went down belongs to a restarted
                    // worker: all of it is new.
                    let before = self.processed.get(&i.id).copied().unwrap_or(p);
                    done_since = add_processed(done_since, before, p);
                    processed.insert(i.id.clone(), p);
                }
                rec.instances.push(InstanceRecord {
                    id: i.id.clone(),
                    state: i.state,
                    pid: i.pid,
                    uptime_secs: i.uptime_secs,
                    restarts: i.restarts,
                    last_exit: i.last_exit.clone(),
                    memory_bytes: i.memory_bytes,
                    cpu_percent: i.cpu_percent,
                    heartbeat_age_secs: i.heartbeat_age_secs,
                });
            }
            rec.tasks_per_minute = minutes.map(|m| done_since as f64 / m);
            restarts_total = restarts_total.saturating_add(rec.restarts);
            groups.push(rec);
        }
        self.processed = processed;
        while self
            .restarts
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.restarts.pop_front();
        }
        let hour_ago = self.restarts.front().map_or(restarts_total, |(_, n)| *n);
        self.restarts.push_back((now, restarts_total));
        let load = host::Load::read();
        DeviceRecord {
            schema: SCHEMA,
            device_id: self.settings.device_id.clone(),
            version: self.version.clone(),
            hostname: self.facts.hostname.clone(),
            arch: self.facts.arch.clone(),
            kernel: self.facts.kernel.clone(),
            boot_time: self.facts.boot_time,
            uptime_secs: status.daemon.uptime_secs,
            interval_secs: self.settings.interval.as_secs_f64(),
            run,
            stopped_at: None,
            rss_bytes: load.rss_bytes,
            load: load.load,
            mem_total_bytes: load.mem_total_bytes,
            mem_available_bytes: load.mem_available_bytes,
            limits,
            broker_rtt_ms: status.daemon.broker.latency_ms,
            // Instances removed by a reload take their restarts with them.
            restarts_last_hour: restarts_total.saturating_sub(hour_ago),
            groups,
            instances_omitted: 0,
        }
    }
}

/// `total` plus the tasks an instance processed since its last record:
/// its heartbeat's `processed` minus the one before (all of it when the
/// counter went down: a restarted worker). Heartbeats reach the daemon from
/// anyone who can publish on the broker, so the counters may be anything.
fn add_processed(total: u64, before: u64, now: u64) -> u64 {
    let new = if now >= before { now - before } else { now };
    total.saturating_add(new)
}

/// The fleet settings of a config (`None`: not published).
/// `announce`: the supervisor has no watchdog tick to build records on.
pub(super) fn fleet_settings(config: &Config, announce: bool) -> Option<FleetSettings> {
    config.fleet.publish.then(|| FleetSettings {
        device_id: config.daemon.device_id.clone(),
        interval: config.fleet.interval,
        forget_after: config.fleet.forget_after,
        announce,
        // The other devices' capacity is read only for autoscaling.
        read_capacity: config.groups.iter().any(|g| g.autoscale.is_some()),
    })
}

impl<E: Effects> Supervisor<E> {
    /// On a systemd watchdog tick: whether a new record is due (the last
    /// one is three quarters of an interval old), so that under systemd the
    /// record is built on a wake-up the daemon has anyway.
    pub(super) fn fleet_record_due_on_tick(&self) -> bool {
        self.publisher.as_ref().is_some_and(|p| {
            p.previous
                .is_none_or(|t| t.elapsed() >= p.settings.interval.mul_f64(0.75))
        })
    }

    /// Builds the record and hands it to the monitor for the next beat.
    pub(super) fn hand_over_fleet_record(&mut self) {
        if self.publisher.is_none() || self.monitor.is_none() {
            return;
        }
        let status = self.status_with(&[], Refresh::Oldest(USAGE_PER_BEAT));
        let limits = self.limits_line.starts_with("on");
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        let record = p.record(&status, &self.config, limits, DaemonRun::Running);
        if let Some(m) = &self.monitor {
            m.set_fleet_record(record.encode());
        }
    }

    /// At a clean stop, after the workers: the record marked stopped, so
    /// readers tell "stopped on purpose" from "lost". At most
    /// [`STOP_PUBLISH_TIMEOUT`]; a broker that is down then is logged.
    pub(super) async fn publish_stopped(&mut self) {
        if self.publisher.is_none() || self.monitor.is_none() {
            return;
        }
        let status = self.status(&[]);
        let limits = self.limits_line.starts_with("on");
        let (Some(p), Some(m)) = (self.publisher.as_mut(), self.monitor.as_ref()) else {
            return;
        };
        let record = p.record(&status, &self.config, limits, DaemonRun::Stopped);
        match tokio::time::timeout(STOP_PUBLISH_TIMEOUT, m.publish_stopped(record)).await {
            Ok(Ok(at)) => info!(at, "fleet: this device is marked stopped"),
            Ok(Err(e)) => warn!(error = %e, "fleet: cannot mark this device stopped: {e}"),
            Err(_) => warn!(
                "fleet: cannot mark this device stopped: no answer from the broker in {}s",
                STOP_PUBLISH_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Instances whose memory and CPU one beat reads afresh, the oldest
/// samples first: a beat's cost stays flat however many workers run (at
/// 200 workers each is read every 13 beats, about two minutes by default;
/// docs/fleet.md, docs/benchmarks.md run L). A `status` in between reads
/// all of them, and the record takes those figures.
pub const USAGE_PER_BEAT: usize = 16;

/// How long a clean stop waits to mark the device stopped.
pub const STOP_PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_processed_counters_cannot_overflow_the_sum() {
        assert_eq!(add_processed(5, 10, 14), 9);
        assert_eq!(add_processed(5, 10, 3), 8, "a restarted worker counts anew");
        assert_eq!(add_processed(u64::MAX - 1, 0, u64::MAX), u64::MAX);
    }
}

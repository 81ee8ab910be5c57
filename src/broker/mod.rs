//! Broker awareness: the Redis gate at boot, health while running, queue
//! backlog, Celery heartbeats and `clearifyctl test`.
//!
//! | file | owns |
//! |---|---|
//! | `url.rs` | the broker URL → `Target` (`parse_target`, [`check_url`]) |
//! | `error.rs` | [`ProbeError`]: why the broker is not ready, transient or fatal; the classification of redis-rs errors |
//! | `probe.rs` | one readiness check over redis-rs' async connection ([`probe`]), step by step |
//! | `gate.rs` | waiting for the broker at boot and after an outage, with the retry schedule |
//! | `monitor.rs` | the actor: [`spawn_monitor`], [`Monitor`] |
//! | `health.rs` | the health check while up: a thread with a link of its own |
//! | `link.rs` | that link: RESP written by hand over TCP or a unix socket, redis-rs for TLS |
//! | `backlog.rs` | the queues watched ([`Watched`]), their Redis keys (kombu priority sub-queues) and lengths |
//! | `heartbeat.rs` | the Celery heartbeat channel, subscription and decoding |
//! | `report.rs` | [`test_report`] for `clearifyctl test` |
//! | `fleet.rs` | reading the fleet registry for `clearifyctl fleet` ([`FleetReader`]) |
//! | `capacity.rs` | the monitor's periodic fleet read for autoscaling ([`BrokerEvent::FleetCapacity`]) |
//!
//! - [`probe`] answers "is the broker ready?" once: connect (TCP, TLS or
//!   unix socket), AUTH, SELECT, PING → PONG, each with an explicit timeout.
//!   `-LOADING` is *not ready*. Failures are classified ([`ProbeErrorKind`]):
//!   transient ones are retried, fatal ones are configuration errors.
//! - [`spawn_monitor`] runs the gate and then the health check in the
//!   background and reports [`BrokerEvent`]s to the supervisor: `Waiting`
//!   until the first `Up` (or `Fatal`, or `GateTimeout` once `wait_timeout`
//!   passes), then `Up`/`Down`, `Backlog` and `Heartbeat`. While the broker
//!   is up, a thread with a connection of its own pings it and fetches the
//!   backlog (`health`: why a thread, and why its RESP is written by hand);
//!   the gate, the heartbeat subscription, `clearifyctl test` and a TLS
//!   health link use redis-rs' async connection. These are the two Redis
//!   client paths.
//! - [`test_report`] connects afresh for `clearifyctl test`.
//! - [`decode_heartbeat`] decodes a kombu envelope from the
//!   `<key_prefix>/<db>.celeryev/worker.heartbeat` pub/sub channel.
//!
//! The policy on top (on_timeout, heartbeat timeouts, stall detection) lives
//! in the supervisor.

mod backlog;
mod beat;
mod capacity;
mod error;
mod fleet;
mod gate;
mod health;
mod heartbeat;
mod link;
mod monitor;
mod probe;
mod report;
mod url;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::model::fleet::Capacity;

pub use backlog::{
    BACKLOG_MIN_INTERVAL, DEFAULT_PRIORITY_STEPS, PRIORITY_SEP, Watched, queue_keys,
};
pub use error::{ProbeError, ProbeErrorKind};
pub use fleet::{FleetError, FleetReader};
pub use gate::{BACKOFF_MAX, BACKOFF_MIN};
#[doc(hidden)]
pub use heartbeat::base64_decode;
pub use heartbeat::{Heartbeat, decode_heartbeat, heartbeat_channel};
pub use monitor::{Monitor, spawn_monitor};
pub use probe::probe;
pub use report::test_report;
pub use url::check_url;

/// Timeout for establishing a connection (TCP/TLS/unix) and for DNS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout for each reply (AUTH, SELECT, PING, LLEN pipeline, INFO).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the monitor needs to know about the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSettings {
    /// `redis://`, `rediss://`, `unix://`, `redis+socket://` URL.
    pub url: String,
    /// How long the gate waits before emitting [`BrokerEvent::GateTimeout`];
    /// `None` waits forever.
    pub wait_timeout: Option<Duration>,
    /// How often the broker is pinged while running.
    pub check_interval: Duration,
    /// kombu's `priority_steps` (default `[0, 3, 6, 9]`).
    pub priority_steps: Vec<u8>,
    /// Celery's `global_keyprefix` (default empty).
    pub key_prefix: String,
    /// This device's fleet beat (`None`: not published).
    pub fleet: Option<FleetSettings>,
}

/// What the health link needs to publish this device's fleet record
/// (docs/fleet.md): the record itself comes from the supervisor
/// ([`Monitor::set_fleet_record`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    /// The set member and the record key's suffix.
    pub device_id: String,
    /// How often a beat is sent.
    pub interval: Duration,
    /// The record's TTL.
    pub forget_after: Duration,
    /// Send [`BrokerEvent::FleetBeat`] after each beat, for a supervisor
    /// that has no wake-up of its own to build the next record on (no
    /// systemd watchdog); `false`: it builds on its watchdog ticks.
    pub announce: bool,
    /// Read the fleet every `interval` and send
    /// [`BrokerEvent::FleetCapacity`]: the other live devices' capacity
    /// for this device's queues, the input of an autoscaled group's share
    /// (`capacity.rs`). Set when some group autoscales.
    pub read_capacity: bool,
}

impl BrokerSettings {
    /// Settings with the defaults of the config file for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        BrokerSettings {
            url: url.into(),
            wait_timeout: None,
            check_interval: Duration::from_secs(10),
            priority_steps: DEFAULT_PRIORITY_STEPS.to_vec(),
            key_prefix: String::new(),
            fleet: None,
        }
    }
}

/// What the monitor reports.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerEvent {
    /// Not ready yet (before the first `Up`). Sent after the first failed
    /// attempt and whenever the reason changes; `since` is when waiting began.
    Waiting { error: String, since: SystemTime },
    /// The broker answered PING. Sent on every transition to up; the round
    /// trips of the later health checks go to [`Monitor::latency`] (an idle
    /// daemon is not woken for them).
    Up { latency: Duration },
    /// The broker stopped answering after having been up. Sent on the
    /// transition and whenever the reason changes; `since` is when it went down.
    Down { error: String, since: SystemTime },
    /// A configuration error (bad URL, authentication failure) while gating.
    /// The monitor stops after sending it.
    Fatal { error: String },
    /// `wait_timeout` passed without the broker becoming ready. Sent once;
    /// the monitor keeps trying and still sends `Up` when it gets there.
    GateTimeout,
    /// Messages waiting per queue (all priority sub-queues summed).
    Backlog(BTreeMap<String, u64>),
    /// A Celery worker heartbeat.
    Heartbeat(Heartbeat),
    /// The fleet record was written, at this Redis time (seconds): time to
    /// hand the health link the next one ([`Monitor::set_fleet_record`]).
    FleetBeat { at: f64 },
    /// The other live devices' groups that consume this device's queues
    /// ([`FleetSettings::read_capacity`]); `None` when the fleet could not
    /// be read (the share is then 1). Sent after the first read and
    /// whenever it changes.
    FleetCapacity(Option<Vec<Capacity>>),
}

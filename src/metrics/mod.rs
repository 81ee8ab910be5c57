//! The Prometheus text exposition format (version 0.0.4), rendered from
//! what the daemon already knows: this device's status document
//! ([`status`], for `clearifyctl status --format prometheus` and the
//! `[metrics] textfile` node_exporter reads) and the fleet view ([`fleet`],
//! for `clearifyctl fleet --format prometheus`). Pure: text in memory, no
//! I/O; the file is written by `sys::textfile`.
//!
//! Every family has its `# HELP` and `# TYPE` line and all its samples
//! together; label values are escaped as the format says (`\` → `\\`,
//! `"` → `\"`, newline → `\n`), so a hostile device id or fleet record
//! cannot forge a sample. docs/metrics.md lists the names and labels.
//!
//! The instance label is `worker`, not `instance`: Prometheus sets
//! `instance` (and `job`) on every scraped series itself, and would rename
//! ours to `exported_instance`.

use std::fmt::Write as _;

use crate::control::protocol::Status;
use crate::model::fleet::{DeviceRow, FleetView, Presence};
use crate::model::{BrokerState, InstanceState};

/// The content type of this format, for anyone serving it over HTTP.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One sample: its labels (name, value) and its value.
pub type Sample<'a> = (Vec<(&'static str, &'a str)>, f64);

/// Builds one exposition, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a family: `# HELP`, `# TYPE`, then its samples. A family
    /// without samples is left out entirely.
    pub fn family<'a>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = Sample<'a>>,
    ) {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (k, (label, v)) in labels.iter().enumerate() {
                    if k > 0 {
                        self.out.push(',');
                    }
                    self.out.push_str(label);
                    self.out.push_str("=\"");
                    escape_label_into(&mut self.out, v);
                    self.out.push('"');
                }
                self.out.push('}');
            }
            self.out.push(' ');
            self.out.push_str(&number(value));
            self.out.push('\n');
        }
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value as the format wants it: `\`, `"` and newline escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    escape_label_into(&mut out, v);
    out
}

fn escape_label_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: `\` and newline escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value: Go's float syntax, with `NaN`, `+Inf` and `-Inf`.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust's shortest round-trip form ("0.42", "12", "1e-7"); Go's
        // ParseFloat reads it back to the same number.
        format!("{v}")
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// This device's metrics, from its status document.
pub fn status(s: &Status) -> String {
    let dev = s.daemon.device_id.as_str();
    let d = || vec![("device", dev)];
    let mut x = Exposition::new();
    x.family(
        "clearify_daemon_info",
        Kind::Gauge,
        "The daemon's version (always 1).",
        [(
            vec![("device", dev), ("version", s.daemon.version.as_str())],
            1.0,
        )],
    );
    x.family(
        "clearify_daemon_uptime_seconds",
        Kind::Gauge,
        "Seconds since the daemon started.",
        [(d(), s.daemon.uptime_secs as f64)],
    );
    x.family(
        "clearify_daemon_rss_bytes",
        Kind::Gauge,
        "Resident memory of the daemon itself, in bytes.",
        s.daemon.rss_bytes.map(|v| (d(), v as f64)),
    );
    let broker = &s.daemon.broker;
    x.family(
        "clearify_broker_up",
        Kind::Gauge,
        "Whether the broker answers the daemon's health check (1) or not (0).",
        [(d(), flag(broker.state == BrokerState::Ok))],
    );
    x.family(
        "clearify_broker_state",
        Kind::Gauge,
        "The broker's state as the daemon sees it: 1 for the current state, 0 for the others.",
        BrokerState::ALL.map(|st| {
            (
                vec![("device", dev), ("state", st.as_str())],
                flag(st == broker.state),
            )
        }),
    );
    x.family(
        "clearify_broker_rtt_seconds",
        Kind::Gauge,
        "Round-trip time of the last broker health check (PING), in seconds.",
        broker.latency_ms.map(|ms| (d(), ms / 1000.0)),
    );
    x.family(
        "clearify_queue_backlog",
        Kind::Gauge,
        "Messages waiting in a group's queue, over all its priority sub-queues.",
        s.groups.iter().flat_map(|g| {
            g.queues.iter().filter_map(move |q| {
                let labels = vec![
                    ("device", dev),
                    ("group", g.name.as_str()),
                    ("queue", q.name.as_str()),
                ];
                q.backlog.map(|b| (labels, b as f64))
            })
        }),
    );
    let instances = || {
        s.groups.iter().flat_map(move |g| {
            g.instances.iter().map(move |i| {
                let labels = vec![
                    ("device", dev),
                    ("group", g.name.as_str()),
                    ("worker", i.id.as_str()),
                ];
                (labels, i)
            })
        })
    };
    x.family(
        "clearify_instance_up",
        Kind::Gauge,
        "Whether the worker instance is running (1) or not (0).",
        instances().map(|(l, i)| (l, flag(i.state == InstanceState::Running))),
    );
    x.family(
        "clearify_instance_state",
        Kind::Gauge,
        "The worker instance's state: 1 for the current state, 0 for the others.",
        instances().flat_map(|(l, i)| {
            InstanceState::ALL.map(|st| {
                let mut l = l.clone();
                l.push(("state", st.as_str()));
                (l, flag(st == i.state))
            })
        }),
    );
    x.family(
        "clearify_instance_restarts_total",
        Kind::Counter,
        "Restarts of the worker instance since the daemon started.",
        instances().map(|(l, i)| (l, i.restarts as f64)),
    );
    x.family(
        "clearify_instance_memory_bytes",
        Kind::Gauge,
        "Memory of the worker instance's processes (its cgroup, else their RSS), in bytes.",
        instances().filter_map(|(l, i)| i.memory_bytes.map(|v| (l, v as f64))),
    );
    x.family(
        "clearify_instance_cpu_seconds_total",
        Kind::Counter,
        "CPU time (user + system) of the worker instance's processes, in seconds.",
        instances().filter_map(|(l, i)| i.cpu_seconds.map(|v| (l, v))),
    );
    x.family(
        "clearify_instance_heartbeat_age_seconds",
        Kind::Gauge,
        "Seconds since the worker instance's last Celery heartbeat.",
        instances().filter_map(|(l, i)| i.heartbeat_age_secs.map(|v| (l, v))),
    );
    x.finish()
}

/// A per-device gauge of the fleet: name, help, and its value in a row.
type DeviceGauge = (&'static str, &'static str, fn(&DeviceRow) -> Option<f64>);

/// Every presence, in a fixed order.
const PRESENCES: [(Presence, &str); 3] = [
    (Presence::Up, "up"),
    (Presence::Stopped, "stopped"),
    (Presence::Lost, "lost"),
];

/// The fleet's metrics: one series per device and figure, label `device`.
/// The records are untrusted; their strings reach the output only as
/// escaped label values.
pub fn fleet(v: &FleetView) -> String {
    let mut x = Exposition::new();
    let rows = || {
        v.devices
            .iter()
            .map(|r| (vec![("device", r.device_id.as_str())], r))
    };
    x.family(
        "clearify_fleet_devices",
        Kind::Gauge,
        "Devices in the fleet set (read or not).",
        [(vec![], v.read.members as f64)],
    );
    x.family(
        "clearify_fleet_records_skipped",
        Kind::Gauge,
        "Fleet records the reader skipped (too large, malformed, another schema).",
        [(vec![], v.read.skipped.len() as f64)],
    );
    x.family(
        "clearify_fleet_device_info",
        Kind::Gauge,
        "A device's version, architecture and hostname (always 1).",
        v.devices.iter().map(|r| {
            (
                vec![
                    ("device", r.device_id.as_str()),
                    ("version", r.version.as_str()),
                    ("arch", r.arch.as_str()),
                    ("hostname", r.hostname.as_str()),
                ],
                1.0,
            )
        }),
    );
    x.family(
        "clearify_fleet_device_up",
        Kind::Gauge,
        "Whether the device's beats arrive (1) or it is stopped or lost (0).",
        rows().map(|(l, r)| (l, flag(r.presence == Presence::Up))),
    );
    x.family(
        "clearify_fleet_device_state",
        Kind::Gauge,
        "The device's presence (up, stopped, lost): 1 for the current one, 0 for the others.",
        rows().flat_map(|(l, r)| {
            PRESENCES.map(|(p, name)| {
                let mut l = l.clone();
                l.push(("state", name));
                (l, flag(p == r.presence))
            })
        }),
    );
    let gauges: [DeviceGauge; 9] = [
        (
            "clearify_fleet_workers_running",
            "Worker instances running on the device.",
            |r| Some(r.running as f64),
        ),
        (
            "clearify_fleet_workers",
            "Worker instances configured on the device.",
            |r| Some(r.total as f64),
        ),
        (
            "clearify_fleet_workers_crash_looping",
            "Worker instances in a crash loop on the device.",
            |r| Some(r.crash_looping as f64),
        ),
        (
            "clearify_fleet_restarts_last_hour",
            "Worker restarts on the device in the last hour.",
            |r| Some(r.restarts_last_hour as f64),
        ),
        (
            "clearify_fleet_tasks_per_minute",
            "Tasks the device's workers processed per minute, between its last two beats.",
            |r| r.tasks_per_minute,
        ),
        (
            "clearify_fleet_memory_bytes",
            "Memory the device's workers use, in bytes.",
            |r| r.memory_bytes.map(|b| b as f64),
        ),
        (
            "clearify_fleet_memory_limit_bytes",
            "The device's worker memory limit (or its memory), in bytes.",
            |r| r.memory_limit_bytes.map(|b| b as f64),
        ),
        (
            "clearify_fleet_broker_rtt_seconds",
            "The device's last broker round-trip time, in seconds.",
            |r| r.broker_rtt_ms.map(|ms| ms / 1000.0),
        ),
        (
            "clearify_fleet_last_seen_seconds",
            "Seconds since the device's last beat, by the Redis clock.",
            |r| Some(r.last_seen_secs),
        ),
    ];
    for (name, help, get) in gauges {
        x.family(
            name,
            Kind::Gauge,
            help,
            rows().filter_map(|(l, r)| get(r).map(|v| (l, v))),
        );
    }
    x.finish()
}

#[cfg(test)]
mod tests;

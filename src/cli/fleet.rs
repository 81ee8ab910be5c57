//! `clearifyctl fleet`: the device list, `fleet queues`, `fleet DEVICE`
//! and `fleet forget DEVICE` (issue 14, docs/fleet.md), as text for people
//! or `--json` (the contract in docs/fleet.md), once or `--watch`.
//!
//! Every string here came from some device's record, which anybody with
//! write access to the broker can write: each one goes through
//! [`render::escape`] before it reaches the terminal.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::args::{Format, usage_error};
use super::exit::{self, Failure, Outcome, unexpected};
use super::render::{self, Newlines, human_duration};
use super::socket::Ctx;
use super::watch::{parse_watch, redraw};
use crate::control::protocol::{DeviceView, FleetQuery, FleetView, QueuesView, Request, Response};
use crate::model::fleet::{Presence, ReadSummary};

/// What `clearifyctl fleet ARGS…` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetCommand {
    Query(FleetQuery),
    Forget(String),
}

/// `[]` the device list, `[queues]`, `[forget, DEVICE]`, `[DEVICE]`.
pub fn parse_args(args: &[String]) -> Result<FleetCommand, String> {
    match args {
        [] => Ok(FleetCommand::Query(FleetQuery::Devices)),
        [q] if q == "queues" => Ok(FleetCommand::Query(FleetQuery::Queues)),
        [f, device] if f == "forget" => Ok(FleetCommand::Forget(device.clone())),
        [f] if f == "forget" => Err("fleet forget takes one DEVICE".into()),
        [device] => Ok(FleetCommand::Query(FleetQuery::Device {
            device_id: device.clone(),
        })),
        _ => Err("fleet takes nothing, `queues`, a DEVICE, or `forget DEVICE`".into()),
    }
}

/// One fleet answer.
enum Answer {
    Devices(FleetView),
    Queues(QueuesView),
    Device(Box<DeviceView>),
}

impl Answer {
    fn text(&self) -> String {
        match self {
            Answer::Devices(v) => devices_table(v),
            Answer::Queues(v) => queues_table(v),
            Answer::Device(v) => device_text(v),
        }
    }

    /// As `format` asks (JSON is printed by the caller).
    fn render(&self, format: Format) -> String {
        match (self, format) {
            (Answer::Devices(v), Format::Prometheus) => crate::metrics::fleet(v),
            _ => self.text(),
        }
    }
}

impl Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Answer::Devices(v) => v.serialize(s),
            Answer::Queues(v) => v.serialize(s),
            Answer::Device(v) => v.serialize(s),
        }
    }
}

fn fetch(ctx: &Ctx, query: &FleetQuery) -> Result<Answer, Failure> {
    match ctx.call(Request::Fleet {
        query: query.clone(),
    })? {
        Response::Fleet(v) => Ok(Answer::Devices(v)),
        Response::FleetQueues(v) => Ok(Answer::Queues(v)),
        Response::FleetDevice(v) => Ok(Answer::Device(Box::new(v))),
        other => Err(unexpected(&other)),
    }
}

/// `clearifyctl fleet [--json] [--watch [SECS]] [queues | DEVICE | forget DEVICE]`.
pub fn run(ctx: &Ctx, format: Format, watch: Option<String>, mut args: Vec<String>) -> Outcome {
    let json = format == Format::Json;
    let mut every = None;
    if let Some(w) = watch {
        // `--watch queues` means the view, not an interval.
        every = Some(parse_watch(&w).unwrap_or_else(|| {
            args.insert(0, w);
            Duration::from_secs(2)
        }));
    }
    let command = parse_args(&args).unwrap_or_else(|e| usage_error(&e));
    let query = match command {
        FleetCommand::Forget(device_id) => {
            if every.is_some() {
                usage_error("fleet forget does not take --watch");
            }
            return match ctx.call(Request::FleetForget { device_id })? {
                Response::Done { messages } => {
                    for m in messages {
                        println!("{}", render::escape(&m, Newlines::Keep));
                    }
                    Ok(exit::OK)
                }
                other => Err(unexpected(&other)),
            };
        }
        FleetCommand::Query(q) => q,
    };
    if format == Format::Prometheus && query != FleetQuery::Devices {
        usage_error("--format prometheus is for the device list (clearifyctl fleet)");
    }
    let title = match &query {
        FleetQuery::Devices => "clearifyctl fleet".to_string(),
        FleetQuery::Queues => "clearifyctl fleet queues".to_string(),
        FleetQuery::Device { device_id } => {
            format!(
                "clearifyctl fleet {}",
                render::escape(device_id, Newlines::Escape)
            )
        }
    };
    match every {
        Some(every) => redraw(
            every,
            json,
            &title,
            || fetch(ctx, &query),
            |a: &Answer| a.render(format),
        ),
        None => {
            let a = fetch(ctx, &query)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&a).map_err(|e| Failure::new(
                        exit::REFUSED,
                        format!("cannot encode the answer: {e}")
                    ))?
                );
            } else {
                print!("{}", a.render(format));
            }
            Ok(exit::OK)
        }
    }
}

// ---------------------------------------------------------------------------
// Text

fn one(s: &str) -> String {
    render::escape(s, Newlines::Escape).into_owned()
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / 1048576.0)
}

fn memory(used: Option<u64>, limit: Option<u64>) -> String {
    match (used, limit) {
        (None, None) => "-".into(),
        (u, l) => format!(
            "{}/{}MiB",
            u.map_or_else(|| "-".into(), mib),
            l.map_or_else(|| "-".into(), mib)
        ),
    }
}

fn ago(secs: f64) -> String {
    if secs.is_finite() && secs >= 0.0 {
        format!("{} ago", human_duration(secs as u64))
    } else {
        "-".into()
    }
}

fn redis_time(now: f64) -> String {
    if (0.0..1e11).contains(&now) {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs_f64(now)).to_string()
    } else {
        "-".into()
    }
}

fn tpm(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn presence(p: Presence) -> &'static str {
    match p {
        Presence::Up => "up",
        Presence::Stopped => "stopped",
        Presence::Lost => "LOST",
    }
}

/// Left-aligned columns, two spaces apart (cells are already escaped).
fn columns(rows: &[Vec<String>], indent: &str) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (n, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(n) {
                Some(x) => *x = (*x).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// The notes under a view: records skipped and members not read.
fn footer(out: &mut String, r: &ReadSummary) {
    for s in &r.skipped {
        if s.device_id.is_empty() {
            let _ = writeln!(out, "note: {}", one(&s.reason));
        } else {
            let _ = writeln!(out, "skipped {}: {}", one(&s.device_id), one(&s.reason));
        }
    }
    let unread = r.members.saturating_sub(r.read);
    if unread > 0 {
        let _ = writeln!(
            out,
            "{unread} members not read (only the {} most recently seen are)",
            r.read
        );
    }
    if r.expired > 0 {
        let _ = writeln!(
            out,
            "{} members whose record expired (pruned within a minute)",
            r.expired
        );
    }
}

/// The device list: one line per device, problems first.
pub fn devices_table(v: &FleetView) -> String {
    let mut out = String::new();
    let count = |p: Presence| v.devices.iter().filter(|d| d.presence == p).count();
    let _ = writeln!(
        out,
        "fleet: {} devices ({} up, {} stopped, {} lost)  redis time {}",
        v.devices.len(),
        count(Presence::Up),
        count(Presence::Stopped),
        count(Presence::Lost),
        redis_time(v.read.now)
    );
    let mut rows = vec![
        [
            "DEVICE",
            "STATE",
            "VERSION",
            "ARCH",
            "UP FOR",
            "WORKERS",
            "CRASH-LOOPS",
            "RESTARTS/H",
            "TASKS/MIN",
            "MEMORY",
            "RTT",
            "LAST SEEN",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for d in &v.devices {
        rows.push(vec![
            one(&d.device_id),
            presence(d.presence).to_string(),
            if d.version_skew {
                format!("{}*", one(&d.version))
            } else {
                one(&d.version)
            },
            one(&d.arch),
            human_duration(d.uptime_secs),
            format!("{}/{}", d.running, d.total),
            d.crash_looping.to_string(),
            d.restarts_last_hour.to_string(),
            tpm(d.tasks_per_minute),
            memory(d.memory_bytes, d.memory_limit_bytes),
            d.broker_rtt_ms
                .filter(|m| m.is_finite())
                .map_or_else(|| "-".into(), |m| format!("{m:.1}ms")),
            ago(d.last_seen_secs),
        ]);
    }
    if v.devices.is_empty() {
        let _ = writeln!(out, "\n(no devices)");
    } else {
        let _ = writeln!(out);
        out.push_str(&columns(&rows, ""));
    }
    if let Some(c) = &v.common_version
        && v.devices.iter().any(|d| d.version_skew)
    {
        let _ = writeln!(out, "* differs from the most common version, {}", one(c));
    }
    footer(&mut out, &v.read);
    out
}

/// The load-balancing view: per queue, its backlog and who consumes it.
pub fn queues_table(v: &QueuesView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet queues: {} queues  redis time {}",
        v.queues.len(),
        redis_time(v.read.now)
    );
    let mut rows = vec![
        [
            "QUEUE",
            "BACKLOG",
            "DEVICES",
            "INSTANCES",
            "CONCURRENCY",
            "TASKS/MIN",
            "SHARE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for q in &v.queues {
        rows.push(vec![
            one(&q.queue),
            q.backlog.map_or_else(|| "-".into(), |b| b.to_string()),
            q.devices.len().to_string(),
            format!("{}", q.instances),
            q.concurrency.to_string(),
            tpm(q.tasks_per_minute),
            String::new(),
        ]);
        for d in &q.devices {
            rows.push(vec![
                format!("  {}", one(&d.device_id)),
                String::new(),
                String::new(),
                format!("{} ({} running)", d.instances, d.running),
                d.concurrency.to_string(),
                tpm(d.tasks_per_minute),
                d.share
                    .filter(|s| s.is_finite())
                    .map_or_else(|| "-".into(), |s| format!("{:.0}%", s * 100.0)),
            ]);
        }
    }
    if v.queues.is_empty() {
        let _ = writeln!(out, "\n(no queues consumed by a live device)");
    } else {
        let _ = writeln!(out);
        out.push_str(&columns(&rows, ""));
    }
    if v.queues_omitted > 0 {
        let _ = writeln!(out, "{} more queues not shown", v.queues_omitted);
    }
    footer(&mut out, &v.read);
    out
}

/// One device, like `status` on it.
pub fn device_text(v: &DeviceView) -> String {
    let r = &v.record;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "device {}  host {}  {}  last seen {}",
        one(&r.device_id),
        one(&r.hostname),
        presence(v.presence),
        ago(v.now - v.last_seen)
    );
    let _ = writeln!(
        out,
        "clearify-workerd {}  {}  kernel {}  up {}  limits {}",
        one(&r.version),
        one(&r.arch),
        one(&r.kernel),
        human_duration(r.uptime_secs),
        if r.limits { "on" } else { "off" }
    );
    let mut line = String::new();
    if let Some(b) = r.rss_bytes {
        let _ = write!(line, "rss {}MiB  ", mib(b));
    }
    if let Some([a, b, c]) = r.load {
        let _ = write!(line, "load {a:.2} {b:.2} {c:.2}  ");
    }
    if let (Some(t), Some(a)) = (r.mem_total_bytes, r.mem_available_bytes) {
        let _ = write!(line, "memory {} of {}MiB available  ", mib(a), mib(t));
    }
    if let Some(ms) = r.broker_rtt_ms.filter(|m| m.is_finite()) {
        let _ = write!(line, "broker rtt {ms:.1}ms  ");
    }
    let _ = writeln!(line, "restarts/h {}", r.restarts_last_hour);
    out.push_str(&line);
    for g in &r.groups {
        let queues: Vec<String> = g.queues.iter().map(|q| one(q)).collect();
        let _ = writeln!(
            out,
            "\n{}  queues: {}  running {}/{}  crash-loops {}  concurrency {}  processed {}  active {}  tasks/min {}  memory {}",
            one(&g.name),
            if queues.is_empty() {
                "-".into()
            } else {
                queues.join(" ")
            },
            g.running,
            g.total,
            g.crash_looping,
            g.concurrency,
            g.processed,
            g.active,
            tpm(g.tasks_per_minute),
            memory(g.memory_bytes, g.memory_max),
        );
        if let Some(a) = &g.autoscale {
            let line =
                render::autoscale_line((a.min, a.max), a.desired, g.total, &a.state, &a.reason);
            let _ = writeln!(out, "{line}");
        }
        let mut rows = vec![render::HEADERS.map(String::from).to_vec()];
        for i in &g.instances {
            rows.push(vec![
                one(&i.id),
                i.state.to_string(),
                i.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                i.uptime_secs.map_or_else(|| "-".into(), human_duration),
                i.restarts.to_string(),
                i.last_exit.as_deref().map_or_else(|| "-".into(), one),
                i.memory_bytes.map_or_else(|| "-".into(), mib),
                i.cpu_percent
                    .filter(|c| c.is_finite())
                    .map_or_else(|| "-".into(), |c| format!("{c:.1}")),
                i.heartbeat_age_secs
                    .filter(|a| a.is_finite() && *a >= 0.0)
                    .map_or_else(|| "-".into(), |a| format!("{}s", a.round() as u64)),
            ]);
        }
        out.push_str(&columns(&rows, "  "));
    }
    if r.instances_omitted > 0 {
        let _ = writeln!(
            out,
            "({} instances not detailed: the record is capped at 16 KiB)",
            r.instances_omitted
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_name_the_view() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&[]), Ok(FleetCommand::Query(FleetQuery::Devices)));
        assert_eq!(a(&["queues"]), Ok(FleetCommand::Query(FleetQuery::Queues)));
        assert_eq!(a(&["forget", "pi"]), Ok(FleetCommand::Forget("pi".into())));
        assert_eq!(
            a(&["pi"]),
            Ok(FleetCommand::Query(FleetQuery::Device {
                device_id: "pi".into()
            }))
        );
        assert!(a(&["forget"]).is_err());
        assert!(a(&["a", "b"]).is_err());
    }
}

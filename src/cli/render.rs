//! Text renderings of the daemon's answers for people. Scripts use
//! `--json` instead; these formats may change.
//!
//! Everything shown here that a worker, the broker or the daemon's peer
//! could have written (worker lines, exit texts, names, error messages)
//! goes through [`escape`] first, so no escape sequence reaches the
//! terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::control::protocol::{
    InstanceStatus, LogLine, QueueStatus, ReloadReport, Status, TestReport,
};
use crate::model::InstanceState;

/// What [`escape`] does with a line feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Newlines {
    /// Keep `\n`: multi-line texts (a worker's traceback record, config
    /// errors) stay readable.
    Keep,
    /// Show `\n` as `\n`: for one-line fields (names, states, table cells).
    Escape,
}

/// Makes text from outside safe for a terminal: every control character
/// is shown as an escape, so none reaches the terminal raw.
///
/// - C0 controls (ESC, BEL, CR, backspace, NUL…) and DEL become `\xNN`
///   (ESC is `\x1b`), so CSI and OSC sequences show as text;
/// - C1 controls (U+0080 to U+009F, which some terminals take as CSI or
///   OSC) and the bidirectional overrides and isolates (U+202A to U+202E,
///   U+2066 to U+2069, which reorder what is shown) become `\u{NNNN}`;
/// - a tab stays a tab (harmless, and tracebacks use it); a line feed
///   stays or is escaped as `newlines` says;
/// - a backslash is left alone, so `\x1b` in the output may also be the
///   text itself: `--raw` and `--json` give the exact bytes.
///
/// Borrowed, without copying, when there is nothing to escape.
pub fn escape(s: &str, newlines: Newlines) -> Cow<'_, str> {
    let unsafe_char = |c: char| match c {
        '\t' => false,
        '\n' => newlines == Newlines::Escape,
        c if c.is_ascii_control() => true,
        '\u{80}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    };
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if c == '\n' {
            out.push_str("\\n");
        } else if c.is_ascii() {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// [`escape`] for a one-line field.
fn one(s: &str) -> Cow<'_, str> {
    escape(s, Newlines::Escape)
}

/// A compact duration: `45s`, `3m12s`, `3h12m`, `2d4h`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn queues_line(queues: &[QueueStatus]) -> String {
    if queues.is_empty() {
        return "-".into();
    }
    queues
        .iter()
        .map(|q| format!("{}={}", one(&q.name), opt(q.backlog)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The instance table's columns (status, and `fleet DEVICE`).
pub(super) const HEADERS: [&str; 9] = [
    "ID",
    "STATE",
    "PID",
    "UPTIME",
    "RESTARTS",
    "LAST EXIT",
    "MEM(MiB)",
    "CPU%",
    "HEARTBEAT",
];

fn instance_row(i: &InstanceStatus) -> [String; 9] {
    let state = if i.pinned && i.state == InstanceState::Stopped {
        "stopped(pinned)".to_string()
    } else {
        i.state.to_string()
    };
    [
        one(&i.id).into_owned(),
        state,
        opt(i.pid),
        i.uptime_secs.map_or_else(|| "-".into(), human_duration),
        i.restarts.to_string(),
        i.last_exit
            .as_deref()
            .map_or_else(|| "-".into(), |e| one(e).into_owned()),
        i.memory_bytes
            .map_or_else(|| "-".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
        i.cpu_percent
            .map_or_else(|| "-".into(), |c| format!("{c:.1}")),
        i.heartbeat_age_secs
            .map_or_else(|| "-".into(), |a| format!("{}s", a.round() as u64)),
    ]
}

/// The `clearifyctl status` table: a header (daemon, broker, limits), then
/// per group its queues with their backlog and one row per instance.
pub fn status_table(status: &Status) -> String {
    let d = &status.daemon;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "clearify-workerd {}  pid {}  up {}  config {}",
        one(&d.version),
        d.pid,
        human_duration(d.uptime_secs),
        one(&d.config)
    );
    let mut broker = format!("broker {} {}", d.broker.state, one(&d.broker.url));
    if let Some(ms) = d.broker.latency_ms {
        let _ = write!(broker, " ({ms:.1} ms)");
    }
    if let Some(err) = &d.broker.error {
        let _ = write!(broker, " error: {}", one(err));
    }
    let _ = writeln!(
        out,
        "{broker}  device {}  limits {}",
        one(&d.device_id),
        one(&d.limits)
    );
    if !d.summary.is_empty() {
        let _ = writeln!(out, "{}", one(&d.summary));
    }

    let rows: Vec<Vec<[String; 9]>> = status
        .groups
        .iter()
        .map(|g| g.instances.iter().map(instance_row).collect())
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in rows.iter().flatten() {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("  ");
        for (n, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if n + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        s.trim_end().to_string()
    };
    let headers = HEADERS.map(String::from);
    for (g, rows) in status.groups.iter().zip(&rows) {
        let _ = writeln!(out);
        let _ = writeln!(out, "{}  queues: {}", one(&g.name), queues_line(&g.queues));
        if let Some(a) = &g.autoscale {
            let line = autoscale_line(
                (a.min, a.max),
                a.desired,
                a.current,
                a.state.as_str(),
                &a.reason,
            );
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "{}", line(&headers));
        for row in rows {
            let _ = writeln!(out, "{}", line(row));
        }
    }
    if status.groups.is_empty() {
        let _ = writeln!(out, "\n(no groups)");
    }
    out
}

/// An autoscaled group's line, under its header in `status` and `fleet
/// DEVICE`: "autoscale 1..4: desired 3, current 2 (up: backlog 57, …)".
pub(super) fn autoscale_line(
    (min, max): (u32, u32),
    desired: u32,
    current: u32,
    state: &str,
    reason: &str,
) -> String {
    format!(
        "autoscale {min}..{max}: desired {desired}, current {current} ({}: {})",
        one(state),
        one(reason)
    )
}

/// What a reload changed, or why it was not applied.
pub fn reload_report(r: &ReloadReport) -> String {
    let mut out = String::new();
    if r.applied {
        let _ = writeln!(out, "config reloaded");
        for (label, items) in [
            ("added", &r.added),
            ("removed", &r.removed),
            ("changed", &r.changed),
            ("unchanged", &r.unchanged),
        ] {
            if !items.is_empty() {
                let items: Vec<Cow<str>> = items.iter().map(|i| one(i)).collect();
                let _ = writeln!(out, "  {label}: {}", items.join(", "));
            }
        }
        if r.added.is_empty() && r.removed.is_empty() && r.changed.is_empty() {
            let _ = writeln!(out, "  nothing changed");
        }
    } else {
        let _ = writeln!(out, "config errors:");
        for e in &r.errors {
            let _ = writeln!(out, "  {}", escape(e, Newlines::Keep));
        }
        let _ = writeln!(out, "old config kept");
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {}", escape(w, Newlines::Keep));
    }
    out
}

/// The broker check of `clearifyctl test`.
pub fn test_report(t: &TestReport) -> String {
    let mut out = String::new();
    let verdict = if t.reachable {
        "reachable"
    } else {
        "NOT reachable"
    };
    let _ = writeln!(out, "broker {}: {verdict}", one(&t.url));
    let name_w = t
        .steps
        .iter()
        .map(|s| one(&s.name).chars().count())
        .max()
        .unwrap_or(0);
    for s in &t.steps {
        let _ = write!(
            out,
            "  {:<name_w$}  {}  {:.1} ms",
            one(&s.name),
            if s.ok { "ok  " } else { "FAIL" },
            s.millis
        );
        if let Some(d) = &s.detail {
            let _ = write!(out, "  {}", one(d));
        }
        let _ = writeln!(out);
    }
    if let Some(e) = &t.error {
        let _ = writeln!(out, "error: {}", one(e));
    }
    if let Some(v) = &t.redis_version {
        let _ = writeln!(out, "redis version: {}", one(v));
    }
    if let Some(m) = t.used_memory_bytes {
        let _ = writeln!(out, "used memory: {:.1} MiB", m as f64 / 1048576.0);
    }
    if !t.queues.is_empty() {
        let _ = writeln!(out, "queues: {}", queues_line(&t.queues));
    }
    if !t.heartbeats.is_empty() {
        let _ = writeln!(out, "heartbeats:");
        for h in &t.heartbeats {
            let _ = writeln!(out, "  {}  {:.1}s ago", one(&h.node), h.age_secs);
        }
    }
    out
}

/// One worker line: UTC time, instance, and `!` for stderr; the text
/// [`escape`]d (a multi-line record keeps its line feeds).
pub fn log_line(l: &LogLine) -> String {
    log_line_with(l, false)
}

/// [`log_line`], or with `raw` the text exactly as the daemon sent it
/// (`clearifyctl logs --raw`, for pipes).
pub fn log_line_with(l: &LogLine, raw: bool) -> String {
    let ts = if l.ts.is_finite() && l.ts >= 0.0 {
        let t = UNIX_EPOCH + Duration::from_secs_f64(l.ts);
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        "-".into()
    };
    let mark = if l.stream == "stderr" { "!" } else { "" };
    if raw {
        format!("{ts} {}{mark}: {}", l.instance, l.text)
    } else {
        format!(
            "{ts} {}{mark}: {}",
            one(&l.instance),
            escape(&l.text, Newlines::Keep)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{BrokerStatus, DaemonStatus, GroupStatus};

    #[test]
    fn durations_are_compact() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(3 * 3600 + 12 * 60 + 5), "3h12m");
        assert_eq!(human_duration(2 * 86400 + 4 * 3600), "2d4h");
    }

    #[test]
    fn table_has_header_queues_and_aligned_rows() {
        let inst = |id: &str, pid| InstanceStatus {
            id: id.into(),
            node: format!("{id}@dev"),
            state: InstanceState::Running,
            pid,
            uptime_secs: Some(11_520),
            restarts: 2,
            last_exit: Some("exit 1".into()),
            memory_bytes: Some(100 * 1048576),
            cpu_percent: Some(1.25),
            cpu_seconds: Some(3.5),
            heartbeat_age_secs: Some(2.4),
            active: None,
            processed: None,
            pinned: false,
        };
        let status = Status {
            daemon: DaemonStatus {
                version: "0.1.0".into(),
                pid: 7,
                uptime_secs: 60,
                device_id: "dev-1".into(),
                config: "/etc/clearify/workers.toml".into(),
                broker: BrokerStatus {
                    state: crate::model::BrokerState::Ok,
                    url: "redis://:***@127.0.0.1:6379/0".into(),
                    error: None,
                    since: None,
                    latency_ms: Some(0.42),
                },
                limits: "on".into(),
                summary: "2/2 running".into(),
                logs_to_journal: false,
                rss_bytes: None,
            },
            groups: vec![GroupStatus {
                name: "text".into(),
                queues: vec![QueueStatus {
                    name: "text".into(),
                    backlog: Some(12),
                }],
                instances: vec![inst("text-1", Some(4242)), inst("text-10", Some(5))],
                autoscale: None,
            }],
        };
        let t = status_table(&status);
        assert!(t.starts_with(
            "clearify-workerd 0.1.0  pid 7  up 1m0s  config /etc/clearify/workers.toml\n"
        ));
        assert!(
            t.contains("broker ok redis://:***@127.0.0.1:6379/0 (0.4 ms)  device dev-1  limits on")
        );
        assert!(t.contains("text  queues: text=12\n"));
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("  text-")).collect();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].contains("3h12m") && rows[0].contains("100.0") && rows[0].contains("1.2"));
        // Columns line up: STATE starts at the same offset in every row.
        let col = |l: &str| l.find("running").unwrap();
        assert_eq!(col(rows[0]), col(rows[1]));
        let header = t
            .lines()
            .find(|l| l.trim_start().starts_with("ID"))
            .unwrap();
        assert_eq!(header.find("STATE").unwrap(), col(rows[0]));
        // An autoscaled group says its range, counts and why, escaped.
        let mut scaled = status.clone();
        scaled.groups[0].autoscale = Some(crate::control::protocol::AutoscaleStatus {
            min: 1,
            max: 4,
            desired: 3,
            current: 2,
            state: crate::model::autoscale::Reason::UpRefusedMemory,
            reason: "wants 3; refused\x1b[2J".into(),
            manual: None,
            backlog: Some(57),
            share: 0.4,
        });
        let t = status_table(&scaled);
        assert!(
            t.contains(
                "text  queues: text=12\nautoscale 1..4: desired 3, current 2 (up-refused-memory: wants 3; refused\\x1b[2J)\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn a_pinned_stopped_instance_says_so_and_states_read_as_on_the_wire() {
        let mut i = InstanceStatus {
            id: "text-1".into(),
            node: "text-1@dev".into(),
            state: InstanceState::Stopped,
            pid: None,
            uptime_secs: None,
            restarts: 0,
            last_exit: None,
            memory_bytes: None,
            cpu_percent: None,
            cpu_seconds: None,
            heartbeat_age_secs: None,
            active: None,
            processed: None,
            pinned: true,
        };
        assert_eq!(instance_row(&i)[1], "stopped(pinned)");
        for state in InstanceState::ALL {
            i.state = state;
            i.pinned = false;
            assert_eq!(instance_row(&i)[1], state.as_str());
        }
    }

    #[test]
    fn log_lines_show_utc_time_and_stream() {
        let l = LogLine {
            ts: 1_700_000_000.5,
            instance: "text-1".into(),
            stream: "stderr".into(),
            text: "boom".into(),
        };
        assert_eq!(log_line(&l), "2023-11-14T22:13:20Z text-1!: boom");
    }

    #[test]
    fn escape_shows_every_control_character_and_keeps_plain_text() {
        let plain = "Task ok: 3 → 4\tdone ünïcødé \\x1b stays";
        assert!(matches!(escape(plain, Newlines::Escape), Cow::Borrowed(_)));
        assert_eq!(
            escape("\x1b[2J\x1b]0;pwned\x07\r\x08\x00\x7f", Newlines::Keep),
            "\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x08\\x00\\x7f"
        );
        // C1 CSI / OSC and bidi overrides.
        assert_eq!(
            escape("a\u{9b}31m\u{9d}b\u{202e}c\u{2066}", Newlines::Escape),
            "a\\u{009b}31m\\u{009d}b\\u{202e}c\\u{2066}"
        );
        assert_eq!(escape("l1\nl2", Newlines::Keep), "l1\nl2");
        assert_eq!(escape("l1\nl2", Newlines::Escape), "l1\\nl2");
        // Nothing in the output is a control character but \n and \t.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for mode in [Newlines::Keep, Newlines::Escape] {
            let e = escape(&all, mode);
            assert!(
                e.chars().all(|c| c == '\t'
                    || (c == '\n' && mode == Newlines::Keep)
                    || !(c.is_control()
                        || ('\u{202a}'..='\u{202e}').contains(&c)
                        || ('\u{2066}'..='\u{2069}').contains(&c))),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn log_lines_and_status_cells_are_escaped_raw_keeps_bytes() {
        let l = LogLine {
            ts: 1_700_000_000.5,
            instance: "text-1".into(),
            stream: "stdout".into(),
            text: "\x1b]52;c;cHduZWQ=\x07ok\r".into(),
        };
        assert_eq!(
            log_line(&l),
            "2023-11-14T22:13:20Z text-1: \\x1b]52;c;cHduZWQ=\\x07ok\\x0d"
        );
        assert_eq!(
            log_line_with(&l, true),
            "2023-11-14T22:13:20Z text-1: \x1b]52;c;cHduZWQ=\x07ok\r"
        );
    }
}

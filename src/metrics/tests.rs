use super::*;
use crate::control::protocol::{
    BrokerStatus, DaemonStatus, GroupStatus, InstanceStatus, QueueStatus,
};
use crate::model::fleet::{DeviceRow, ReadSummary, Skipped};

fn instance(id: &str, state: InstanceState) -> InstanceStatus {
    InstanceStatus {
        id: id.into(),
        node: format!("{id}@dev"),
        state,
        pid: Some(100),
        uptime_secs: Some(60),
        restarts: 3,
        last_exit: None,
        memory_bytes: Some(1_048_576),
        cpu_percent: Some(1.5),
        cpu_seconds: Some(12.25),
        heartbeat_age_secs: Some(2.5),
        active: None,
        processed: None,
        pinned: false,
    }
}

fn sample() -> Status {
    let mut stopped = instance("text-2", InstanceState::CrashLoop);
    stopped.pid = None;
    stopped.memory_bytes = None;
    stopped.cpu_seconds = None;
    stopped.heartbeat_age_secs = None;
    Status {
        daemon: DaemonStatus {
            version: "1.2.3".into(),
            pid: 7,
            uptime_secs: 90,
            device_id: "pi-1".into(),
            config: "/etc/clearify/workers.toml".into(),
            broker: BrokerStatus {
                state: BrokerState::Ok,
                url: "redis://:***@127.0.0.1:6379/0".into(),
                error: None,
                since: None,
                latency_ms: Some(0.5),
            },
            limits: "on".into(),
            summary: "1/2 running".into(),
            logs_to_journal: false,
            rss_bytes: Some(4096),
        },
        groups: vec![GroupStatus {
            name: "text".into(),
            queues: vec![
                QueueStatus {
                    name: "text".into(),
                    backlog: Some(12),
                },
                QueueStatus {
                    name: "unknown".into(),
                    backlog: None,
                },
            ],
            instances: vec![instance("text-1", InstanceState::Running), stopped],
            autoscale: None,
        }],
    }
}

/// The sample lines (not comments) of an exposition.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[test]
fn status_renders_every_family_with_help_type_and_labels() {
    let text = status(&sample());
    let want_lines = [
        "# HELP clearify_daemon_info The daemon's version (always 1).",
        "# TYPE clearify_daemon_info gauge",
        r#"clearify_daemon_info{device="pi-1",version="1.2.3"} 1"#,
        r#"clearify_daemon_uptime_seconds{device="pi-1"} 90"#,
        r#"clearify_daemon_rss_bytes{device="pi-1"} 4096"#,
        r#"clearify_broker_up{device="pi-1"} 1"#,
        r#"clearify_broker_state{device="pi-1",state="ok"} 1"#,
        r#"clearify_broker_state{device="pi-1",state="unreachable"} 0"#,
        r#"clearify_broker_rtt_seconds{device="pi-1"} 0.0005"#,
        r#"clearify_queue_backlog{device="pi-1",group="text",queue="text"} 12"#,
        "# TYPE clearify_instance_up gauge",
        r#"clearify_instance_up{device="pi-1",group="text",worker="text-1"} 1"#,
        r#"clearify_instance_up{device="pi-1",group="text",worker="text-2"} 0"#,
        r#"clearify_instance_state{device="pi-1",group="text",worker="text-2",state="crash-loop"} 1"#,
        r#"clearify_instance_state{device="pi-1",group="text",worker="text-2",state="running"} 0"#,
        "# TYPE clearify_instance_restarts_total counter",
        r#"clearify_instance_restarts_total{device="pi-1",group="text",worker="text-2"} 3"#,
        r#"clearify_instance_memory_bytes{device="pi-1",group="text",worker="text-1"} 1048576"#,
        "# TYPE clearify_instance_cpu_seconds_total counter",
        r#"clearify_instance_cpu_seconds_total{device="pi-1",group="text",worker="text-1"} 12.25"#,
        r#"clearify_instance_heartbeat_age_seconds{device="pi-1",group="text",worker="text-1"} 2.5"#,
    ];
    for l in want_lines {
        assert!(text.lines().any(|x| x == l), "missing {l:?} in:\n{text}");
    }
    // Unknown values are left out, not written as 0.
    assert!(!text.contains("queue=\"unknown\""), "{text}");
    for f in ["memory_bytes", "cpu_seconds_total", "heartbeat_age_seconds"] {
        assert!(
            !text.contains(&format!(
                "clearify_instance_{f}{{device=\"pi-1\",group=\"text\",worker=\"text-2\"}}"
            )),
            "{f}: {text}"
        );
    }
    // One state series per state and instance, exactly one of them 1.
    let states: Vec<&str> = samples(&text)
        .into_iter()
        .filter(|l| l.starts_with("clearify_instance_state{") && l.contains("text-1"))
        .collect();
    assert_eq!(states.len(), InstanceState::ALL.len(), "{states:?}");
    assert_eq!(states.iter().filter(|l| l.ends_with(" 1")).count(), 1);
    // Each family's samples come together, right after its HELP and TYPE.
    let mut seen: Vec<&str> = Vec::new();
    let mut current = "";
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# HELP ") {
            current = rest.split(' ').next().unwrap();
            assert!(!seen.contains(&current), "{current} twice");
            seen.push(current);
        } else if !l.starts_with('#') {
            assert!(
                l.starts_with(&format!("{current}{{")),
                "{l} outside {current}"
            );
        }
    }
    assert!(text.ends_with('\n'));
}

#[test]
fn an_idle_daemon_renders_without_instance_families() {
    let mut s = sample();
    s.groups.clear();
    s.daemon.rss_bytes = None;
    s.daemon.broker.latency_ms = None;
    s.daemon.broker.state = BrokerState::Unknown;
    let text = status(&s);
    assert!(!text.contains("clearify_instance_"), "{text}");
    assert!(!text.contains("clearify_daemon_rss_bytes"), "{text}");
    assert!(
        text.contains("clearify_broker_up{device=\"pi-1\"} 0\n"),
        "{text}"
    );
}

#[test]
fn label_values_are_escaped_so_no_sample_can_be_forged() {
    assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
    assert_eq!(escape_label("x\ny"), r"x\ny");
    assert_eq!(escape_label("plain ümlaut\t"), "plain ümlaut\t");
    let mut s = sample();
    s.daemon.device_id = "evil\"} 1\nclearify_broker_up{device=\"x\"} 1\n\\".into();
    let text = status(&s);
    // Exactly as many samples as with a plain id, and the forged one absent.
    assert_eq!(samples(&text).len(), samples(&status(&sample())).len());
    assert!(
        !text
            .lines()
            .any(|l| l == r#"clearify_broker_up{device="x"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"clearify_broker_up{device="evil\"} 1\nclearify_broker_up{device=\"x\"} 1\n\\"} 1"#
        ),
        "{text}"
    );
}

#[test]
fn numbers_use_the_formats_spelling() {
    assert_eq!(number(0.0), "0");
    assert_eq!(number(12.0), "12");
    assert_eq!(number(0.42), "0.42");
    assert_eq!(number(f64::NAN), "NaN");
    assert_eq!(number(f64::INFINITY), "+Inf");
    assert_eq!(number(f64::NEG_INFINITY), "-Inf");
    assert_eq!(number(1e-7), "0.0000001");
    assert_eq!(number(2f64.powi(53)), "9007199254740992");
}

pub(crate) fn row(id: &str, presence: Presence) -> DeviceRow {
    DeviceRow {
        device_id: id.into(),
        hostname: format!("{id}.lan"),
        presence,
        version: "1.0.0".into(),
        version_skew: false,
        arch: "aarch64".into(),
        uptime_secs: 100,
        running: 3,
        total: 4,
        crash_looping: 1,
        restarts_last_hour: 5,
        tasks_per_minute: Some(42.5),
        memory_bytes: Some(1000),
        memory_limit_bytes: None,
        broker_rtt_ms: Some(2.0),
        last_seen: 1_700_000_000.0,
        last_seen_secs: 4.5,
    }
}

pub(crate) fn fleet_view() -> FleetView {
    let mut lost = row("pi-2", Presence::Lost);
    lost.tasks_per_minute = None;
    lost.hostname = "h\"} 9\nclearify_fleet_device_up{device=\"pi-1\"} 0".into();
    FleetView {
        read: ReadSummary {
            now: 1_700_000_004.5,
            members: 3,
            read: 3,
            expired: 0,
            skipped: vec![Skipped {
                device_id: "bad".into(),
                reason: "not JSON".into(),
            }],
        },
        common_version: Some("1.0.0".into()),
        devices: vec![lost, row("pi-1", Presence::Up)],
    }
}

#[test]
fn fleet_renders_per_device_series() {
    let text = fleet(&fleet_view());
    for l in [
        "# TYPE clearify_fleet_devices gauge",
        "clearify_fleet_devices 3",
        "clearify_fleet_records_skipped 1",
        r#"clearify_fleet_device_up{device="pi-1"} 1"#,
        r#"clearify_fleet_device_up{device="pi-2"} 0"#,
        r#"clearify_fleet_device_state{device="pi-2",state="lost"} 1"#,
        r#"clearify_fleet_device_state{device="pi-2",state="up"} 0"#,
        r#"clearify_fleet_device_info{device="pi-1",version="1.0.0",arch="aarch64",hostname="pi-1.lan"} 1"#,
        r#"clearify_fleet_workers_running{device="pi-1"} 3"#,
        r#"clearify_fleet_workers{device="pi-1"} 4"#,
        r#"clearify_fleet_workers_crash_looping{device="pi-1"} 1"#,
        r#"clearify_fleet_restarts_last_hour{device="pi-1"} 5"#,
        r#"clearify_fleet_tasks_per_minute{device="pi-1"} 42.5"#,
        r#"clearify_fleet_memory_bytes{device="pi-1"} 1000"#,
        r#"clearify_fleet_broker_rtt_seconds{device="pi-1"} 0.002"#,
        r#"clearify_fleet_last_seen_seconds{device="pi-2"} 4.5"#,
    ] {
        assert!(text.lines().any(|x| x == l), "missing {l:?} in:\n{text}");
    }
    assert!(!text.contains("clearify_fleet_tasks_per_minute{device=\"pi-2\"}"));
    assert!(
        !text.contains("clearify_fleet_memory_limit_bytes"),
        "{text}"
    );
    // The hostile hostname stays one label value: no forged sample.
    let forged = samples(&text)
        .into_iter()
        .filter(|l| l.starts_with("clearify_fleet_device_up{device=\"pi-1\"}"))
        .count();
    assert_eq!(forged, 1, "{text}");
}

#[test]
fn an_empty_fleet_renders_its_counts_only() {
    let v = FleetView {
        read: ReadSummary {
            now: 0.0,
            members: 0,
            read: 0,
            expired: 0,
            skipped: vec![],
        },
        common_version: None,
        devices: vec![],
    };
    let text = fleet(&v);
    assert_eq!(
        samples(&text),
        [
            "clearify_fleet_devices 0",
            "clearify_fleet_records_skipped 0"
        ]
    );
}

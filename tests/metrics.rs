//! The Prometheus output (issue 14): what `metrics` renders passes
//! `promtool check metrics` (the real promtool: scripts/setup-deps.sh
//! installs it; this test fails, not skips, without it), and the real
//! daemon writes `[metrics] textfile` every interval, atomically, and
//! answers `clearifyctl status --format prometheus`.

#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clearify_workerd::control::protocol::Status;
use clearify_workerd::metrics;
use clearify_workerd::model::fleet::{DeviceRow, FleetView, Presence, ReadSummary};
use daemon_support::*;
use redis_support::RedisServer;

const T: Duration = Duration::from_secs(20);

/// `promtool check metrics` on `text`: its findings, or a panic when
/// promtool cannot be run.
fn promtool(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): run scripts/setup-deps.sh, which installs \
                 /usr/local/bin/promtool from Debian's prometheus package"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn promtool_finds_the_checker_working() {
    // A broken exposition is refused: the check below can fail.
    assert!(promtool("# TYPE x counter\nx{a=\"b} 1\n").is_err());
    assert!(promtool("# HELP x_total x.\n# TYPE x_total counter\nx_total 1\n").is_ok());
}

/// The status document of the contract's golden file, with hostile label
/// values on top.
fn hostile_status() -> Status {
    let golden = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/status.json"
    ))
    .unwrap();
    let mut s: Status = serde_json::Deserializer::from_str(&golden)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    s.daemon.device_id = "pi \"one\"\\\nclearify_broker_up 1".into();
    s.groups[0].name = "g\"}".into();
    s.groups[0].instances[0].id = "ümlaut\tand \\ \"quotes\"".into();
    s
}

#[test]
fn promtool_accepts_the_status_and_fleet_output() {
    let text = metrics::status(&hostile_status());
    assert!(
        text.contains("clearify_instance_cpu_seconds_total{"),
        "{text}"
    );
    assert!(text.contains("clearify_daemon_rss_bytes{"), "{text}");
    promtool(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));

    let row = |id: &str, presence| DeviceRow {
        device_id: id.into(),
        hostname: "h\"\n\\".into(),
        presence,
        version: "1.0.0".into(),
        version_skew: false,
        arch: "aarch64".into(),
        uptime_secs: 1,
        running: 1,
        total: 2,
        crash_looping: 1,
        restarts_last_hour: 3,
        tasks_per_minute: Some(1.5),
        memory_bytes: Some(1),
        memory_limit_bytes: Some(2),
        broker_rtt_ms: Some(0.3),
        last_seen: 1.0,
        last_seen_secs: 2.0,
    };
    let v = FleetView {
        read: ReadSummary {
            now: 3.0,
            members: 3,
            read: 3,
            expired: 0,
            skipped: vec![],
        },
        common_version: Some("1.0.0".into()),
        devices: vec![
            row("a", Presence::Up),
            row("b\"\n", Presence::Lost),
            row("c", Presence::Stopped),
        ],
    };
    let text = metrics::fleet(&v);
    assert!(text.contains("clearify_fleet_device_state{device=\"b\\\"\\n\",state=\"lost\"} 1"));
    promtool(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
}

fn config(redis: &RedisServer, textfile: &str) -> String {
    fake_config(
        &redis.url(),
        &format!(
            r#"
[fleet]
publish = false
interval = "1s"

[metrics]
textfile = "{textfile}"

[group.text]
queues = ["text_processing"]
instances = 2
"#
        ),
    )
}

/// A daemon under umask 077 (the file must still be 0644).
fn start(d: &mut Daemon) {
    let mut sh = Command::new("sh");
    sh.args(["-c", "umask 077; exec \"$0\" \"$@\"", DAEMON]);
    let cmd = d.command(sh);
    d.spawn_command(cmd);
    d.wait_ready();
}

/// A complete exposition as the daemon writes it, with both instances.
fn complete(text: &str) -> bool {
    text.starts_with("# HELP clearify_daemon_info ")
        && text.ends_with('\n')
        && ["text-1", "text-2"].iter().all(|w| {
            text.contains(&format!(
                "clearify_instance_restarts_total{{device=\"testdev\",group=\"text\",worker=\"{w}\"}}"
            ))
        })
}

#[test]
fn the_daemon_rewrites_the_textfile_every_interval_atomically() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&config(&redis, "{dir}/textfile/clearify.prom"));
    // The directory is missing at first: an error, logged once, not fatal.
    start(&mut d);
    d.wait_state("text-1", "running", T);
    d.wait_state("text-2", "running", T);
    std::thread::sleep(Duration::from_millis(3500));
    let log = d.log();
    assert_eq!(
        log.matches("cannot write the metrics textfile").count(),
        1,
        "one warning for three failed writes:\n{log}"
    );
    fs::create_dir(d.path("textfile")).unwrap();
    let path = d.path("textfile/clearify.prom");
    let first = wait_for(T, "the textfile", || fs::read_to_string(&path).ok());
    assert!(complete(&first), "{first}");
    wait_for(T, "the recovery logged", || {
        d.log().contains("written again").then_some(())
    });

    // Read it as fast as possible for three intervals: every read is a
    // whole document, and the file is replaced (a new inode) each interval.
    let mut inodes = BTreeSet::new();
    let mut reads = 0;
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        let Ok(text) = fs::read_to_string(&path) else {
            panic!("the textfile vanished while being replaced");
        };
        assert!(complete(&text), "a half-written textfile:\n{text}");
        inodes.insert(fs::metadata(&path).unwrap().ino());
        reads += 1;
    }
    assert!(
        inodes.len() >= 3,
        "{} versions in 3.5 s at a 1 s interval ({reads} reads)",
        inodes.len()
    );
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o644, "under umask 077");
    let text = fs::read_to_string(&path).unwrap();
    for l in [
        "clearify_instance_up{device=\"testdev\",group=\"text\",worker=\"text-1\"} 1",
        "clearify_instance_state{device=\"testdev\",group=\"text\",worker=\"text-2\",state=\"running\"} 1",
        "clearify_broker_up{device=\"testdev\"} 1",
        "clearify_queue_backlog{device=\"testdev\",group=\"text\",queue=\"text_processing\"} 0",
    ] {
        assert!(text.lines().any(|x| x == l), "missing {l:?}:\n{text}");
    }
    for f in [
        "clearify_instance_memory_bytes{",
        "clearify_instance_cpu_seconds_total{",
        "clearify_daemon_rss_bytes{",
        "clearify_broker_rtt_seconds{",
    ] {
        assert!(text.contains(f), "missing {f}:\n{text}");
    }
    promtool(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    // Only the file itself: no temporary file left behind.
    let names: Vec<String> = fs::read_dir(d.path("textfile"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n == "clearify.prom" || n.ends_with(".tmp")),
        "{names:?}"
    );

    // `clearifyctl status --format prometheus`: the same families, valid.
    let out = d.ctl(&["status", "--format", "prometheus"]);
    assert!(out.status.success(), "{out:?}");
    let ctl = String::from_utf8(out.stdout).unwrap();
    assert!(complete(&ctl), "{ctl}");
    promtool(&ctl).unwrap_or_else(|e| panic!("promtool: {e}\n{ctl}"));
    let families = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(String::from)
            .collect()
    };
    assert_eq!(families(&ctl), families(&text));
    // --json stays, as the alias of --format json; both together are refused.
    let out = d.ctl(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = d.ctl(&["status", "--format", "json"]);
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(a["daemon"]["device_id"], b["daemon"]["device_id"]);
    assert!(a["daemon"]["rss_bytes"].as_u64().unwrap() > 0, "{a}");
    let out = d.ctl(&["status", "--json", "--format", "text"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // A reload moves the file: the new path is written at the next interval.
    let config = config(&redis, "{dir}/moved.prom");
    d.write_config(&config);
    let out = d.ctl(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let moved = d.path("moved.prom");
    let text = wait_for(Duration::from_secs(5), "the moved textfile", || {
        fs::read_to_string(&moved).ok()
    });
    assert!(complete(&text), "{text}");

    // A clean stop leaves the final state: the workers down, not "up".
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(T), 0, "{}", d.log());
    let text = fs::read_to_string(&moved).unwrap();
    for w in ["text-1", "text-2"] {
        for l in [
            format!("clearify_instance_up{{device=\"testdev\",group=\"text\",worker=\"{w}\"}} 0"),
            format!(
                "clearify_instance_state{{device=\"testdev\",group=\"text\",worker=\"{w}\",state=\"stopped\"}} 1"
            ),
        ] {
            assert!(text.lines().any(|x| x == l), "missing {l:?}:\n{text}");
        }
    }
}

#[test]
fn without_a_textfile_nothing_is_written() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(
        &redis.url(),
        "[fleet]\npublish = false\ninterval = \"1s\"\n\n[group.text]\nqueues = [\"q\"]\n",
    ));
    start(&mut d);
    d.wait_state("text-1", "running", T);
    std::thread::sleep(Duration::from_millis(1500));
    let prom: Vec<_> = fs::read_dir(d.dir.path())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.contains(".prom").then_some(n)
        })
        .collect();
    assert!(prom.is_empty(), "{prom:?}");
    assert!(!d.log().contains("textfile"), "{}", d.log());
}

#[path = "support/fleet.rs"]
mod fleet_support;

/// `clearifyctl fleet --format prometheus`: the fleet view of the real
/// daemon, from records in a real redis-server, passes promtool, with one
/// series per device (a hostile device id escaped as a label value); the
/// other views refuse the format (usage error, exit 2).
#[test]
fn fleet_format_prometheus_passes_promtool_with_a_series_per_device() {
    let redis = RedisServer::start();
    let mut c = fleet_support::connect(&redis.url());
    let now = fleet_support::redis_now(&mut c);
    for id in ["pi-1", "pi-2", "vm-\"quoted\"\\"] {
        fleet_support::publish_raw(
            &mut c,
            "",
            id.as_bytes(),
            &fleet_support::realistic(id, "0.4.0").encode(),
            now,
        );
    }
    let mut d = Daemon::new(&fake_config(&redis.url(), "[fleet]\npublish = false\n"));
    d.start();
    let out = d.ctl(&["fleet", "--format", "prometheus"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    promtool(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    for label in [
        r#"device="pi-1""#,
        r#"device="pi-2""#,
        r#"device="vm-\"quoted\"\\""#,
    ] {
        assert!(text.contains(label), "{label} missing:\n{text}");
    }
    let out = d.ctl(&["fleet", "queues", "--format", "prometheus"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

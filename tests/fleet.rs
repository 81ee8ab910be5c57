//! The fleet reader (issue 14) end to end: a real redis-server, records
//! written by the test publisher (tests/support/fleet.rs), the real daemon
//! answering `fleet` on its control socket and the real clearifyctl.
//!
//! Hostile records each have a test: 10 MB, deep JSON, control characters,
//! a million members, garbage.

#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/fleet.rs"]
mod fleet_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::process::Output;
use std::time::{Duration, Instant};

use clearify_workerd::model::fleet::{DaemonRun, MAX_DEVICES, ScaleRecord};
use daemon_support::{Daemon, fake_config, proc_status_field, wait_for};
use fleet_support::{
    add_ghosts, connect, group, publish, publish_raw, realistic, record, redis_now,
};
use redis_support::RedisServer;
use serde_json::Value;

/// A daemon with no groups that reads the fleet from `url` (and does not
/// publish its own record, so the registry holds only what a test wrote).
fn reader(url: &str) -> Daemon {
    let cfg = fake_config(url, "[fleet]\npublish = false\n");
    let mut d = Daemon::new(&cfg);
    d.start();
    d
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "clearifyctl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("output is UTF-8")
}

fn json(d: &Daemon, args: &[&str]) -> Value {
    let mut a = vec!["fleet"];
    a.extend_from_slice(args);
    a.push("--json");
    serde_json::from_str(&ok(&d.ctl(&a))).expect("fleet --json is JSON")
}

fn ids(v: &Value) -> Vec<String> {
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_string())
        .collect()
}

fn device<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {v}"))
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_field(pid, "VmRSS")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// CPU time of all the daemon's threads (`/proc/PID/task/*/schedstat`).
fn cpu(pid: u32) -> Duration {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(t.unwrap().path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(ns)
}

#[test]
fn devices_are_up_stopped_or_lost_by_redis_time_problems_first() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    publish(&mut c, "", &realistic("pi-up", "0.4.0"), now - 1.0, 600);
    publish(&mut c, "", &realistic("pi-b-up", "0.4.0"), now - 2.0, 600);
    // 3 intervals of 10 s: 29 s ago is up, 31 s ago is lost.
    publish(&mut c, "", &realistic("pi-late", "0.4.0"), now - 29.0, 600);
    publish(&mut c, "", &realistic("pi-lost", "0.4.0"), now - 31.0, 600);
    let mut stopped = realistic("pi-stopped", "0.4.0");
    stopped.run = DaemonRun::Stopped;
    stopped.stopped_at = Some(now - 100.0);
    publish(&mut c, "", &stopped, now - 100.0, 600);
    publish(&mut c, "", &realistic("pi-old", "0.3.9"), now - 1.0, 600);
    let d = reader(&redis.url());

    let v = json(&d, &[]);
    assert!((v["now"].as_f64().unwrap() - now).abs() < 5.0, "{v}");
    assert_eq!(v["members"], 6);
    assert_eq!(v["read"], 6);
    assert_eq!(v["common_version"], "0.4.0");
    // Problems first: lost, then stopped, then skew, then the healthy.
    assert_eq!(
        ids(&v),
        [
            "pi-lost",
            "pi-stopped",
            "pi-old",
            "pi-b-up",
            "pi-late",
            "pi-up"
        ]
    );
    assert_eq!(device(&v, "pi-lost")["presence"], "lost");
    assert_eq!(device(&v, "pi-late")["presence"], "up");
    assert_eq!(device(&v, "pi-stopped")["presence"], "stopped");
    assert_eq!(device(&v, "pi-old")["version_skew"], true);
    let up = device(&v, "pi-up");
    assert_eq!(
        (up["running"].as_u64(), up["total"].as_u64()),
        (Some(32), Some(32))
    );
    assert_eq!(up["tasks_per_minute"], 77.5);
    assert_eq!(up["arch"], "arm64");

    let text = ok(&d.ctl(&["fleet"]));
    assert!(
        text.contains("6 devices (4 up, 1 stopped, 1 lost)"),
        "{text}"
    );
    let line = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id}: {text}"))
            .to_string()
    };
    assert!(line("pi-lost ").contains("LOST"), "{text}");
    assert!(line("pi-stopped").contains("stopped"), "{text}");
    assert!(line("pi-old").contains("0.3.9*"), "{text}");
    assert!(
        line("pi-up").contains("32/32") && line("pi-up").contains("77.5"),
        "{text}"
    );
    assert!(text.contains("most common version, 0.4.0"), "{text}");
}

#[test]
fn a_10_mb_record_costs_16_kib_and_is_skipped() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    // Valid JSON up front, so only the size can refuse it.
    let mut big = br#"{"schema":1,"device_id":"big","hostname":""#.to_vec();
    big.resize(10 << 20, b'a');
    publish_raw(&mut c, "", b"big", &big, now);
    publish(&mut c, "", &realistic("fine", "0.4.0"), now, 600);
    let d = reader(&redis.url());
    let before = rss_kib(d.pid());
    let t = Instant::now();
    let v = json(&d, &[]);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(ids(&v), ["fine"]);
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{v}");
    assert_eq!(skipped[0]["device_id"], "big");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("larger than 16384"),
        "{v}"
    );
    let out = d.ctl(&["fleet", "big"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than"));
    let grown = rss_kib(d.pid()).saturating_sub(before);
    assert!(grown < 4096, "the daemon grew by {grown} KiB");
}

#[test]
fn deep_json_and_garbage_are_skipped_with_a_note() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    // Nesting in a field the reader ignores: serde_json's depth limit.
    let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(8000), "]".repeat(8000));
    publish_raw(&mut c, "", b"deep", deep.as_bytes(), now);
    let deeper = format!(
        r#"{{"schema":1,"groups":[{{"name":{}{}}}]}}"#,
        "[".repeat(8000),
        "]".repeat(8000)
    );
    publish_raw(&mut c, "", b"deeper", deeper.as_bytes(), now);
    publish_raw(&mut c, "", b"nojson", b"\x00\xff not json at all", now);
    let mut other: serde_json::Value =
        serde_json::from_slice(&realistic("x", "1").encode()).unwrap();
    other["schema"] = 99.into();
    publish_raw(&mut c, "", b"schema99", other.to_string().as_bytes(), now);
    publish_raw(
        &mut c,
        "",
        b"wrongschema",
        br#"{"schema":1,"hello":"world"}"#,
        now,
    );
    let impostor = realistic("someone-else", "0.4.0");
    publish_raw(&mut c, "", b"impostor", &impostor.encode(), now);
    // A record key of the wrong type.
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg("clearify:fleet")
        .arg(now)
        .arg("hash")
        .ignore()
        .cmd("HSET")
        .arg("clearify:fleet:hash")
        .arg("a")
        .arg("b")
        .ignore()
        .query(&mut c)
        .unwrap();
    // A score that is no time, a member no device id can be.
    let _: () = redis::cmd("ZADD")
        .arg("clearify:fleet")
        .arg("+inf")
        .arg("infinite")
        .query(&mut c)
        .unwrap();
    let long = "L".repeat(5000);
    let _: () = redis::cmd("ZADD")
        .arg("clearify:fleet")
        .arg(now)
        .arg(&long)
        .query(&mut c)
        .unwrap();
    publish(&mut c, "", &realistic("fine", "0.4.0"), now, 600);
    let d = reader(&redis.url());

    let v = json(&d, &[]);
    assert_eq!(ids(&v), ["fine"], "{v}");
    let reasons: Vec<(String, String)> = v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["device_id"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let reason = |id: &str| {
        reasons
            .iter()
            .find(|(d, _)| d == id)
            .unwrap_or_else(|| panic!("{id} not skipped: {reasons:?}"))
            .1
            .clone()
    };
    // serde_json skips an ignored field without recursing, and stops at
    // depth 128 where it does recurse: either way a note, no stack overflow.
    assert!(reason("deep").contains("not a fleet record"), "{reasons:?}");
    assert!(
        reason("deeper").contains("not a fleet record"),
        "{reasons:?}"
    );
    assert!(
        reason("nojson").contains("not a fleet record"),
        "{reasons:?}"
    );
    assert!(reason("schema99").contains("schema 99"), "{reasons:?}");
    assert!(
        reason("wrongschema").contains("not a fleet record"),
        "{reasons:?}"
    );
    assert!(reason("impostor").contains("another device"), "{reasons:?}");
    assert!(reason("hash").contains("unreadable"), "{reasons:?}");
    assert!(reason("infinite").contains("finite"), "{reasons:?}");
    assert!(
        reason(&"L".repeat(128)).contains("5000 bytes"),
        "{reasons:?}"
    );
    let text = ok(&d.ctl(&["fleet"]));
    assert!(text.contains("skipped deep:"), "{text}");
    assert!(!text.contains(&long), "a long member is shown cut");
}

#[test]
fn control_characters_are_escaped_in_text_and_json_stays_valid() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    let id = "evil\x1b[2J\x1b]0;pwned\x07\u{202e}";
    let mut rec = realistic(id, "0.4.0\x1b[31m");
    rec.hostname = "host\r\n\x1b[1;1H\u{9b}31m".into();
    rec.arch = "arm\x0864".into();
    rec.groups[0].queues = vec!["q\x1b[5m".into()];
    rec.groups[0].instances[0].last_exit = Some("killed\x1b[?1049h".into());
    publish(&mut c, "", &rec, now, 600);
    publish_raw(&mut c, "", b"bad\x1b[2Jid", b"garbage\x1b", now);
    let d = reader(&redis.url());

    for args in [&["fleet"][..], &["fleet", "queues"], &["fleet", id]] {
        let out = d.ctl(args);
        let text = ok(&out);
        assert!(
            !text
                .bytes()
                .any(|b| b == 0x1b || b == 0x07 || b == b'\r' || b == 0x08),
            "{args:?} printed a control character: {text:?}"
        );
        assert!(
            !text.contains('\u{9b}') && !text.contains('\u{202e}'),
            "{text:?}"
        );
        assert!(text.contains("evil\\x1b[2J"), "{args:?}: {text}");
    }
    let text = ok(&d.ctl(&["fleet"]));
    assert!(text.contains("skipped bad\\x1b[2Jid"), "{text}");
    let text = ok(&d.ctl(&["fleet", id]));
    assert!(
        text.contains("host\\x0d\\n\\x1b[1;1H\\u{009b}31m"),
        "{text}"
    );
    assert!(text.contains("killed\\x1b[?1049h"), "{text}");
    // JSON keeps the exact strings.
    let v = json(&d, &[]);
    assert_eq!(device(&v, id)["hostname"], "host\r\n\x1b[1;1H\u{9b}31m");
    let v = json(&d, &[id]);
    assert_eq!(v["record"]["device_id"], id);
    let v = json(&d, &["queues"]);
    assert!(
        v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"] == "q\x1b[5m"),
        "{v}"
    );
}

#[test]
fn a_million_members_answer_quickly_without_bloating_the_daemon() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    add_ghosts(&mut c, "", 1_000_000, now - 50.0);
    publish(&mut c, "", &realistic("real", "0.4.0"), now, 600);
    let d = reader(&redis.url());
    // Warm up (allocator arenas, the first connection), then measure.
    json(&d, &[]);
    let before = rss_kib(d.pid());
    for _ in 0..3 {
        let t = Instant::now();
        let v = json(&d, &[]);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(ids(&v), ["real"]);
        assert_eq!(v["read"], MAX_DEVICES as u64);
        assert!(v["members"].as_u64().unwrap() > 990_000, "{}", v["members"]);
        let t = Instant::now();
        ok(&d.ctl(&["fleet", "queues"]));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }
    let text = ok(&d.ctl(&["fleet"]));
    assert!(text.contains("members not read"), "{text}");
    let grown = rss_kib(d.pid()).saturating_sub(before);
    assert!(grown < 4096, "the daemon grew by {grown} KiB");
}

#[test]
fn pruning_runs_once_a_minute_across_readers() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    publish(&mut c, "", &realistic("alive", "0.4.0"), now, 600);
    add_ghosts(&mut c, "", 5, now - 7200.0);
    let d = reader(&redis.url());
    let card = |c: &mut redis::Connection| -> u64 {
        redis::cmd("ZCARD").arg("clearify:fleet").query(c).unwrap()
    };

    let v = json(&d, &[]);
    assert_eq!(v["expired"], 5);
    // This reader took the guard and pruned the members without record.
    assert_eq!(card(&mut c), 1);
    let holder: String = redis::cmd("GET")
        .arg("clearify:fleet-prune")
        .query(&mut c)
        .unwrap();
    assert_eq!(holder, "testdev");
    let ttl: i64 = redis::cmd("TTL")
        .arg("clearify:fleet-prune")
        .query(&mut c)
        .unwrap();
    assert!((1..=60).contains(&ttl), "{ttl}");

    // A second reader within the minute does not prune.
    let other = reader(&redis.url());
    add_ghosts(&mut c, "", 3, now - 7200.0);
    let v = json(&other, &[]);
    assert_eq!(v["expired"], 3);
    json(&d, &[]);
    assert_eq!(card(&mut c), 4);
    // Once the guard is gone, the next one does.
    let _: () = redis::cmd("DEL")
        .arg("clearify:fleet-prune")
        .query(&mut c)
        .unwrap();
    json(&other, &[]);
    assert_eq!(card(&mut c), 1);
}

#[test]
fn forget_removes_a_device_at_once() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    publish(&mut c, "", &realistic("gone", "0.4.0"), now, 600);
    publish(&mut c, "", &realistic("stays", "0.4.0"), now, 600);
    let d = reader(&redis.url());
    let text = ok(&d.ctl(&["fleet", "forget", "gone"]));
    assert!(text.contains("gone: forgotten"), "{text}");
    assert_eq!(ids(&json(&d, &[])), ["stays"]);
    let exists: i64 = redis::cmd("EXISTS")
        .arg("clearify:fleet:gone")
        .query(&mut c)
        .unwrap();
    assert_eq!(exists, 0);
    let out = d.ctl(&["fleet", "forget", "gone"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no device \"gone\""));
}

#[test]
fn one_device_is_shown_like_status() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    let mut rec = realistic("pi-7", "0.4.0");
    // Its first group autoscales; the state is a string a reader shows as
    // it is, escaped (a newer daemon's state must not break the record).
    rec.groups[0].autoscale = Some(ScaleRecord {
        min: 1,
        max: 8,
        desired: 8,
        state: "up".into(),
        reason: "backlog 160, share 1.00, mem ok\x1b[2J".into(),
    });
    rec.groups[0].max_instances = Some(8);
    publish(&mut c, "", &rec, now - 2.0, 600);
    let d = reader(&redis.url());
    let v = json(&d, &["pi-7"]);
    assert_eq!(v["record"]["groups"][0]["autoscale"]["state"], "up");
    assert_eq!(v["presence"], "up");
    assert_eq!(v["record"]["groups"].as_array().unwrap().len(), 4);
    let text = ok(&d.ctl(&["fleet", "pi-7"]));
    assert!(text.contains("device pi-7  host pi-7.local  up"), "{text}");
    assert!(text.contains("text-8"), "{text}");
    assert!(
        text.contains("queues: text_processing  running 8/8"),
        "{text}"
    );
    assert!(
        text.contains(
            "autoscale 1..8: desired 8, current 8 (up: backlog 160, share 1.00, mem ok\\x1b[2J)"
        ),
        "{text}"
    );
    let out = d.ctl(&["fleet", "nobody-here"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no device"));
}

#[test]
fn the_queue_view_sums_backlog_and_shares_by_tasks_per_minute() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    let mut a = record(
        "pi-a",
        "0.4.0",
        vec![group("text", &["text"], 3, Some(30.0))],
    );
    a.groups.push(group("mail", &["mail"], 1, None));
    let b = record(
        "pi-b",
        "0.4.0",
        vec![group("text", &["text"], 1, Some(10.0))],
    );
    let lost = record(
        "pi-lost",
        "0.4.0",
        vec![group("text", &["text"], 5, Some(99.0))],
    );
    publish(&mut c, "pfx:", &a, now, 600);
    publish(&mut c, "pfx:", &b, now, 600);
    publish(&mut c, "pfx:", &lost, now - 600.0, 600);
    // 3 waiting in the queue, 2 in its priority-3 sub-queue.
    let _: () = redis::pipe()
        .cmd("RPUSH")
        .arg("pfx:text")
        .arg(&["1", "2", "3"])
        .ignore()
        .cmd("RPUSH")
        .arg("pfx:text\x06\x163")
        .arg(&["4", "5"])
        .ignore()
        .query(&mut c)
        .unwrap();
    let cfg = fake_config(&redis.url(), "[fleet]\npublish = false\n").replace(
        "check_interval = \"1s\"",
        "check_interval = \"1s\"\nkey_prefix = \"pfx:\"",
    );
    let mut d = Daemon::new(&cfg);
    d.start();

    let v = json(&d, &["queues"]);
    let qs = v["queues"].as_array().unwrap();
    assert_eq!(qs.len(), 2, "{v}");
    let text_q = qs.iter().find(|q| q["queue"] == "text").unwrap();
    assert_eq!(text_q["backlog"], 5);
    assert_eq!(text_q["instances"], 4);
    assert_eq!(text_q["concurrency"], 8);
    assert_eq!(text_q["tasks_per_minute"], 40.0);
    let devs = text_q["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2, "the lost device does not consume: {v}");
    assert_eq!(devs[0]["device_id"], "pi-a");
    assert_eq!(devs[0]["share"], 0.75);
    assert_eq!(devs[1]["share"], 0.25);
    let mail = qs.iter().find(|q| q["queue"] == "mail").unwrap();
    assert_eq!(mail["backlog"], 0);
    let text = ok(&d.ctl(&["fleet", "queues"]));
    assert!(text.contains("75%") && text.contains("25%"), "{text}");
}

#[test]
fn without_a_broker_fleet_is_refused_and_reads_are_bounded() {
    let d = {
        let mut d =
            Daemon::new("[daemon]\nsocket = \"{dir}/control.sock\"\ndevice_id = \"solo\"\n");
        d.start();
        d
    };
    let out = d.ctl(&["fleet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no [broker]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // At most 2 reads at once: with Redis paused, the third is Busy.
    let redis = RedisServer::start();
    let d = reader(&redis.url());
    redis.command(&["CLIENT", "PAUSE", "2500", "ALL"]).unwrap();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = std::process::Command::new(daemon_support::CTL);
            cmd.arg("--socket")
                .arg(d.socket())
                .args(["--request-timeout", "5", "fleet"]);
            std::thread::spawn(move || cmd.output().unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let out = d.ctl(&["--request-timeout", "0.5", "fleet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fleet reads are running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in slow {
        let out = t.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And the slots are free again.
    wait_for(Duration::from_secs(5), "a fleet read", || {
        d.ctl(&["fleet"]).status.success().then_some(())
    });
}

#[test]
fn a_least_privilege_acl_user_can_publish_and_read() {
    let redis = RedisServer::start();
    // docs/fleet.md, "Redis ACL": exactly this.
    let acl = [
        "ACL",
        "SETUSER",
        "pi",
        "on",
        ">pi-secret",
        "resetkeys",
        "resetchannels",
        "-@all",
        "+ping",
        "+select",
        "+auth",
        "+llen",
        "+subscribe",
        "+time",
        "+zadd",
        "+set",
        "+zcard",
        "+zrevrange",
        "+zrange",
        "+getrange",
        "+zscore",
        "+exists",
        "+zrem",
        "+del",
        "~clearify:fleet",
        "~clearify:fleet:*",
        "~clearify:fleet-prune",
        "~text",
        "~text\x06\x16*",
        "&/0.celeryev/worker.heartbeat",
    ];
    redis.command(&acl).unwrap();
    let url = format!("redis://pi:pi-secret@127.0.0.1:{}/0", redis.port());
    // The test publisher, as that user: TIME, ZADD, SET … EX.
    let mut c = connect(&url);
    let now = redis_now(&mut c);
    publish(&mut c, "", &realistic("pi-acl", "0.4.0"), now, 600);
    publish(
        &mut c,
        "",
        &record(
            "pi-q",
            "0.4.0",
            vec![group("text", &["text", "private"], 2, Some(6.0))],
        ),
        now,
        600,
    );
    // Something outside the list is refused.
    let e = redis::cmd("KEYS")
        .arg("*")
        .query::<Value2>(&mut c)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e}");
    let e = redis::cmd("GET")
        .arg("clearify:fleet:pi-acl")
        .query::<Value2>(&mut c)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e}");
    let e = redis::cmd("SET")
        .arg("celery-task-meta-x")
        .arg("1")
        .query::<Value2>(&mut c)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e}");

    // The daemon as that user: the broker is up (PING, LLEN, SUBSCRIBE),
    // it publishes its own record (TIME, ZADD, SET … EX on the health
    // link) and every fleet view works, forget included.
    let cfg = fake_config(
        &url,
        "[fleet]\ninterval = \"1s\"\n\n[group.text]\nqueues = [\"text\"]\ninstances = 1\n",
    );
    let mut d = Daemon::new(&cfg);
    d.start();
    wait_for(
        Duration::from_secs(20),
        "the broker up as the ACL user",
        || (d.status()["daemon"]["broker"]["state"] == "ok").then_some(()),
    );
    let own = wait_for(Duration::from_secs(20), "its own record, running", || {
        let out = d.ctl(&["fleet", "testdev", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["record"]["groups"][0]["running"] == 1).then_some(v)
    });
    assert_eq!(own["presence"], "up");
    // Its version (the crate's) differs from the test records' 0.4.0:
    // version skew sorts it first.
    assert_eq!(ids(&json(&d, &[])), ["testdev", "pi-acl", "pi-q"]);
    let q = json(&d, &["queues"]);
    let row = |name: &str| {
        q["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["queue"] == name)
            .unwrap_or_else(|| panic!("{name}: {q}"))
            .clone()
    };
    assert_eq!(row("text")["backlog"], 0);
    // A queue this user may not LLEN has no backlog, not a wrong one.
    assert_eq!(row("private")["backlog"], Value::Null);
    assert_eq!(json(&d, &["pi-acl"])["presence"], "up");
    add_ghosts(&mut connect(&redis.url()), "", 2, now - 9000.0);
    assert_eq!(json(&d, &[])["expired"], 2);
    ok(&d.ctl(&["fleet", "forget", "pi-q"]));
    assert_eq!(ids(&json(&d, &[])), ["testdev", "pi-acl"]);
    let log = d.log();
    assert!(!log.contains("NOPERM"), "{log}");
    assert!(!log.contains("cannot publish"), "{log}");
}

type Value2 = redis::Value;

#[test]
fn a_thousand_devices_naming_512_queues_each_do_not_stall_the_queue_view() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    let queues: Vec<String> = (0..512).map(|i| format!("q{i:03}")).collect();
    let names: Vec<&str> = queues.iter().map(String::as_str).collect();
    for i in 0..1000 {
        let rec = record(
            &format!("dev-{i:04}"),
            "0.4.0",
            vec![group("g", &names, 1, Some(1.0))],
        );
        publish(&mut c, "", &rec, now, 600);
    }
    let d = reader(&redis.url());
    let before = cpu(d.pid());
    let v = json(&d, &["queues"]);
    // Half a million (device, queue) pairs, in a debug build: it took 7 s
    // of CPU and overflowed the frame before queue_rows indexed them.
    // (CPU, not wall time: the tests of this file run in parallel.)
    let spent = cpu(d.pid()) - before;
    assert!(spent < Duration::from_secs(3), "took {spent:?} of CPU");
    let shown = v["queues"].as_array().unwrap().len() as u64;
    assert!(shown > 0, "{}", v["queues_omitted"]);
    assert_eq!(shown + v["queues_omitted"].as_u64().unwrap_or(0), 512);
    let q0 = &v["queues"][0];
    assert_eq!(q0["queue"], "q000");
    assert_eq!(q0["instances"], 1000);
    assert_eq!(q0["devices"].as_array().unwrap().len(), 1000);
    assert!(ok(&d.ctl(&["fleet", "queues"])).contains("q000"));
}

#[test]
fn watch_prints_one_document_per_redraw() {
    let redis = RedisServer::start();
    let mut c = connect(&redis.url());
    let now = redis_now(&mut c);
    publish(&mut c, "", &realistic("pi-w", "0.4.0"), now, 600);
    let d = reader(&redis.url());
    for view in [&["fleet"][..], &["fleet", "queues"], &["fleet", "pi-w"]] {
        let mut child = std::process::Command::new(daemon_support::CTL)
            .arg("--socket")
            .arg(d.socket())
            .args(view)
            .args(["--watch", "0.2", "--json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let docs: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
            .collect();
        assert!(docs.len() >= 2, "{view:?}: {text}");
        assert!(docs.iter().all(|v| v["now"].is_f64()), "{text}");
    }
    // Text mode redraws the screen with a title.
    let mut child = std::process::Command::new(daemon_support::CTL)
        .arg("--socket")
        .arg(d.socket())
        .args(["fleet", "--watch", "0.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    child.kill().unwrap();
    let text = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    assert!(
        text.matches("\x1b[H\x1b[2JEvery 200ms: clearifyctl fleet")
            .count()
            >= 2,
        "{text}"
    );
    assert!(text.contains("pi-w"), "{text}");
}

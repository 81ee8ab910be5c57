//! The real daemon supervising real Celery workers (the example app in
//! examples/demo_app, from the .venv that scripts/setup-deps.sh creates)
//! against a real redis-server.

#[path = "support/celery.rs"]
mod celery_support;
#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use celery_support::*;
use daemon_support::*;
use nix::sys::signal::Signal;
use redis_support::RedisServer;
use serde_json::Value;

const T: Duration = CELERY_TIMEOUT;

#[test]
fn tasks_are_executed_by_supervised_workers_in_both_groups() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut d = Daemon::new(&celery_config(
        &url,
        r#"
[group.text]
queues = ["text_processing"]
concurrency = 2

[group.billing]
queues = ["payments", "webhooks"]
"#,
    ));
    d.start();
    let text = wait_consuming(&d, "text-1");
    assert_eq!(text["node"], "text-1@ci");
    wait_consuming(&d, "billing-1");

    let r = client(
        &url,
        &[
            "many",
            "demo.process_text",
            r#"["hello distributed workers"]"#,
            "text_processing",
            "10",
        ],
    );
    assert_eq!(r.len(), 10);
    for v in &r {
        assert_eq!(v["result"]["words"], 3);
        assert_eq!(v["result"]["upper"], "HELLO DISTRIBUTED WORKERS");
    }
    let r = client(&url, &["call", "demo.charge", "[1250]", "payments"]);
    assert_eq!(r[0]["result"]["charged"], 1250);
    let r = client(
        &url,
        &["call", "demo.webhook", r#"["order.paid"]"#, "webhooks"],
    );
    assert_eq!(r[0]["result"]["delivered"], "order.paid");

    // The worker's output reached the daemon: the task's print is in the
    // ring buffer of text-1.
    let logs = d.ctl(&["logs", "text", "-n", "200"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("process_text: 3 words"), "{logs}");
    // Heartbeats counted the processed tasks.
    let counted = d.wait_instance("text-1", "at 10 processed tasks", T, |i| {
        i["processed"].as_u64().is_some_and(|p| p >= 10)
    });
    assert!(counted["processed"].as_u64().unwrap() >= 10);
}

#[test]
fn a_worker_killed_mid_run_is_replaced_and_the_shutdown_is_warm() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut d = Daemon::new(&celery_config(
        &url,
        "[group.text]\nqueues = [\"text_processing\"]\nconcurrency = 2\n",
    ));
    d.start();
    let before = wait_consuming(&d, "text-1");
    let pid = before["pid"].as_u64().unwrap() as u32;
    let daemon_pid = d.pid();
    // Pool children exist (concurrency 2).
    wait_for(T, "pool children", || {
        (processes_of_daemon(daemon_pid).len() >= 3).then_some(())
    });

    // SIGKILL the main process while a task runs.
    let id = send(&url, "demo.sleep", "[30, \"victim\"]", "text_processing");
    wait_for(T, "task started", || {
        d.ctl(&["logs", "text-1", "-n", "100"])
            .stdout
            .windows(12)
            .any(|w| w == b"sleep victim")
            .then_some(())
    });
    let pool_before: Vec<i32> = processes_of_daemon(daemon_pid)
        .into_iter()
        .filter(|p| *p as u32 != pid)
        .collect();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let after = d.wait_restarted("text-1", pid, T);
    assert_eq!(after["restarts"], 1);
    assert_eq!(after["last_exit"], "killed by SIGKILL");
    // The old pool children are gone, none orphaned.
    for p in pool_before {
        wait_for(Duration::from_secs(10), "old pool child gone", || {
            (!Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true))
            .then_some(())
        });
    }
    let _ = id;
    wait_consuming(&d, "text-1");

    // Warm shutdown: a running 6 s task finishes and its result is stored.
    let id = send(&url, "demo.sleep", "[6, \"warm\"]", "text_processing");
    wait_for(T, "warm task started", || {
        d.ctl(&["logs", "text-1", "-n", "200"])
            .stdout
            .windows(10)
            .any(|w| w == b"sleep warm")
            .then_some(())
    });
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    let code = d.wait_exit(Duration::from_secs(90));
    assert_eq!(code, 0, "{}", d.log());
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "shutdown waited for the task ({:?})",
        t0.elapsed()
    );
    let r = client(&url, &["get", &id, "10"]);
    assert_eq!(r[0]["result"]["tag"], "warm", "result stored: {r:?}");
    assert_eq!(
        processes_of_daemon(daemon_pid),
        Vec::<i32>::new(),
        "nothing survives"
    );
    let log = d.log();
    assert!(log.contains("sleep warm: done"), "{log}");
}

#[test]
fn a_broker_outage_is_shown_and_workers_resume_without_restarts() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let mut d = Daemon::new(&celery_config(
        &url,
        "[group.text]\nqueues = [\"text_processing\"]\n",
    ));
    d.start();
    let before = wait_consuming(&d, "text-1");
    let pid = before["pid"].clone();
    let r = client(&url, &["call", "demo.add", "[1, 2]", "text_processing"]);
    assert_eq!(r[0]["result"], 3);

    redis.stop();
    let s = wait_for(T, "outage in status", || {
        let s = d.status();
        (s["daemon"]["broker"]["state"] == "unreachable").then_some(s)
    });
    assert!(
        !s["daemon"]["broker"]["error"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "the reason is shown: {s}"
    );
    assert!(
        s["daemon"]["summary"]
            .as_str()
            .unwrap()
            .contains("broker unreachable"),
        "{s}"
    );
    // A restart cannot fix the broker: the worker is left alone.
    std::thread::sleep(Duration::from_secs(3));
    let during = d.instance("text-1");
    assert_eq!(during["pid"], pid);
    assert_eq!(during["restarts"], 0);

    redis.restart();
    wait_for(T, "broker ok again", || {
        (d.status()["daemon"]["broker"]["state"] == "ok").then_some(())
    });
    // The same worker consumes again.
    let r = client(
        &url,
        &["call", "demo.add", "[20, 22]", "text_processing", "90"],
    );
    assert_eq!(r[0]["result"], 42);
    let after = d.instance("text-1");
    assert_eq!(after["pid"], pid, "not restarted");
    assert_eq!(after["restarts"], 0);
}

/// `clearifyctl fleet [args] --json` through `d`, parsed.
fn fleet(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["fleet"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = d.ctl(&all);
    assert!(
        out.status.success(),
        "fleet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fleet --json is JSON")
}

/// The row of `device` in `clearifyctl fleet --json`.
fn device_row(view: &Value, device: &str) -> Option<Value> {
    view["devices"]
        .as_array()?
        .iter()
        .find(|d| d["device_id"] == device)
        .cloned()
}

/// Waits until `device`'s row in `d`'s fleet view satisfies `done`.
fn wait_row(d: &Daemon, device: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_for(T, &format!("{device} {what}"), || {
        device_row(&fleet(d, &[]), device).filter(|r| done(r))
    })
}

/// Issue 14: three daemons with their own device ids on one redis-server,
/// two of them with real Celery workers on a shared queue. Each sees all
/// three with the right counts; a killed one is lost within 3 intervals, a
/// stopped one shows as stopped, one restarted with another version string
/// shows the skew, and the tasks sent to the shared queue show up in the
/// consumers' tasks per minute.
#[test]
fn three_devices_on_one_redis_see_each_other_in_the_fleet() {
    let redis = RedisServer::start();
    let url = redis.url();
    let shared = "[group.text]\nqueues = [\"shared_text\"]\nconcurrency = 2\n";
    let with_fleet = |cfg: String, id: &str| {
        format!("{cfg}\n[fleet]\ninterval = \"1s\"\n")
            .replace("device_id = \"ci\"", &format!("device_id = \"{id}\""))
    };
    let mut a = Daemon::new(&with_fleet(celery_config(&url, shared), "pi-a"));
    let mut b = Daemon::new(&with_fleet(celery_config(&url, shared), "pi-b"));
    let fake = fake_config(&url, "[group.img]\nqueues = [\"images\"]\ninstances = 2\n")
        .replace("testdev", "vm-c");
    let mut c = Daemon::new(&format!("{fake}\n[fleet]\ninterval = \"1s\"\n"));
    a.start();
    b.start();
    c.start();
    wait_consuming(&a, "text-1");
    wait_consuming(&b, "text-1");
    c.wait_state("img-2", "running", T);

    // Every device sees all three, with their counts.
    for d in [&a, &b, &c] {
        wait_row(d, "vm-c", "2/2 running", |r| {
            r["running"] == 2 && r["total"] == 2
        });
        let view = fleet(d, &[]);
        assert_eq!(view["devices"].as_array().unwrap().len(), 3, "{view}");
        for id in ["pi-a", "pi-b"] {
            let r = device_row(&view, id).unwrap();
            assert_eq!(
                (r["running"].as_u64(), r["total"].as_u64()),
                (Some(1), Some(1)),
                "{r}"
            );
            assert_eq!(r["presence"], "up");
            assert_eq!(r["version_skew"], false);
        }
    }

    // Tasks on the shared queue: both consumers' tasks per minute.
    let r = client(
        &url,
        &[
            "many",
            "demo.process_text",
            r#"["fleet of three"]"#,
            "shared_text",
            "40",
        ],
    );
    assert_eq!(r.len(), 40);
    let queues = wait_for(T, "the shared queue's tasks per minute", || {
        let v = fleet(&c, &["queues"]);
        let q = v["queues"]
            .as_array()?
            .iter()
            .find(|q| q["queue"] == "shared_text")?
            .clone();
        (q["tasks_per_minute"].as_f64()? > 0.0).then_some(q)
    });
    let consumers: Vec<&str> = queues["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(consumers, ["pi-a", "pi-b"], "{queues}");
    assert_eq!(queues["concurrency"], 4);

    // SIGKILL: lost within 3 intervals (plus a beat's slack).
    c.signal(Signal::SIGKILL);
    c.wait_exit(Duration::from_secs(5));
    let t = Instant::now();
    wait_row(&a, "vm-c", "lost", |r| r["presence"] == "lost");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());

    // A clean stop: stopped, not lost.
    b.signal(Signal::SIGTERM);
    assert_eq!(b.wait_exit(T), 0);
    let row = wait_row(&a, "pi-b", "stopped", |r| r["presence"] == "stopped");
    assert_eq!(row["running"], 0);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        device_row(&fleet(&a, &[]), "pi-b").unwrap()["presence"],
        "stopped"
    );

    // Back with another version string: the skew shows.
    let mut cmd = b.command(Command::new(DAEMON));
    cmd.env("CLEARIFY_FLEET_VERSION", "0.0.9-old");
    b.spawn_command(cmd);
    b.wait_ready();
    let row = wait_row(&a, "pi-b", "up again with the old version", |r| {
        r["presence"] == "up" && r["version"] == "0.0.9-old"
    });
    assert_eq!(row["version_skew"], true, "{row}");
    let view = fleet(&a, &[]);
    assert_eq!(view["common_version"], env!("CARGO_PKG_VERSION"));
    // Problems first: the lost device leads.
    assert_eq!(view["devices"][0]["device_id"], "vm-c", "{view}");
}

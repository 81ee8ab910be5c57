//! The actor in-process, against the recording fake, on tokio's paused
//! clock: start, crash and backoff, crash-loop, stop pins, reload diffs,
//! rolling restarts, status, shutdown. Each runs in milliseconds of real
//! time. Requests and answers go through their JSON wire form, as a
//! `clearifyctl` would send and see them.
//!
//! To add a case: copy `a_crash_restarts_after_the_backoff_delay`.

use std::path::Path;

use serde_json::{Value, json};

use super::recording::{Call, Recorder};
use super::*;
use crate::broker::BrokerEvent;
use crate::control::server::Peer;
use crate::model::ExitReason;

const MS: Duration = Duration::from_millis(1);

/// A config with a (never contacted) broker and `groups`; stop_timeout
/// 1 s, restart delays 100 ms doubling up to 1 s, stable after 10 s.
fn config_text(dir: &Path, broker_url: &str, groups: &str) -> String {
    format!(
        r#"[daemon]
socket = "{dir}/control.sock"
device_id = "testdev"

[broker]
url = "{broker_url}"
on_timeout = "fail"
wait_timeout = "30s"

[celery]
app = "demo.celery_app"
command = "/bin/true"
workdir = "{dir}"

[defaults]
stop_timeout = "1s"
restart_delay = "100ms"
restart_delay_max = "1s"
stable_after = "10s"
stall_timeout = "0s"

{groups}
"#,
        dir = dir.display()
    )
}

const BROKER: &str = "redis://127.0.0.1:1/0";

const TWO_GROUPS: &str = r#"
[group.text]
queues = ["text"]
instances = 2

[group.billing]
queues = ["payments"]
"#;

/// The actor, running on its own task, and the test's handles on it.
struct Actor {
    rec: Recorder,
    tx: mpsc::Sender<Msg>,
    task: tokio::task::JoinHandle<i32>,
    dir: tempfile::TempDir,
}

impl Actor {
    /// Start the actor on a config with `groups`; the broker comes up.
    async fn start(groups: &str) -> Actor {
        let a = Actor::waiting(groups).await;
        a.rec
            .broker(BrokerEvent::Up {
                latency: Duration::from_millis(1),
            })
            .await;
        settle().await;
        a
    }

    /// Start the actor; the broker has not answered yet.
    async fn waiting(groups: &str) -> Actor {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workers.toml");
        std::fs::write(&path, config_text(dir.path(), BROKER, groups)).unwrap();
        let config = config::load(&path).unwrap().config;
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let rec = Recorder::new(exits_tx);
        let (tx, rx) = mpsc::channel(64);
        let setup = Setup {
            config,
            limits_line: "off (test)".into(),
            logs: LogStore::new(),
            effects: rec.effects(),
        };
        let task = tokio::spawn(Supervisor::new(setup, tx.clone()).run(rx, exits));
        settle().await;
        Actor { rec, tx, task, dir }
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("workers.toml")
    }

    fn write_config(&self, groups: &str) {
        let text = config_text(self.dir.path(), BROKER, groups);
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// A request in its wire form; the answer in its wire form.
    async fn ask(&self, request: Value) -> Value {
        let request: Request = serde_json::from_value(request).unwrap();
        let (reply, answer) = oneshot::channel();
        let peer = Peer {
            uid: 0,
            gid: 0,
            pid: 0,
            groups: vec![],
        };
        let msg = Msg::Control(ControlMsg {
            request,
            peer,
            reply,
        });
        self.tx.send(msg).await.unwrap();
        serde_json::to_value(answer.await.unwrap()).unwrap()
    }

    async fn status(&self) -> Value {
        self.ask(json!({"type": "status", "targets": []})).await
    }

    async fn instance(&self, id: &str) -> Value {
        let s = self.status().await;
        let found = s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["instances"].as_array().unwrap().iter())
            .find(|i| i["id"] == id)
            .cloned();
        found.unwrap_or_else(|| panic!("no instance {id} in {s}"))
    }

    async fn summary(&self) -> String {
        self.status().await["daemon"]["summary"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Poll (on the paused clock) until `id` is in `state`.
    async fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        let end = Instant::now() + within;
        loop {
            let i = self.instance(id).await;
            if i["state"] == state {
                return i;
            }
            assert!(
                Instant::now() < end,
                "{id} not {state} within {within:?}: {i}"
            );
            tokio::time::sleep(10 * MS).await;
        }
    }

    /// Wait (in real time: the file is read on the blocking pool) until
    /// `n` reloads have been applied or rejected.
    async fn reloaded(&self, n: usize) {
        for _ in 0..5000 {
            let ready = self
                .rec
                .notices()
                .iter()
                .filter(|n| **n == Notice::Ready)
                .count();
            if ready >= n {
                return;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("no reload finished within 5 s");
    }

    async fn reload(&self) -> Value {
        self.ask(json!({"type": "reload"})).await
    }

    /// Stop the daemon as SIGTERM does; its exit code.
    async fn shutdown(self) -> i32 {
        self.tx.send(Msg::Shutdown).await.unwrap();
        self.task.await.unwrap()
    }
}

/// Let the actor handle what is in flight (no time passes).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn strings(v: &Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn workers_start_once_the_broker_is_up_and_report_running() {
    let a = Actor::waiting(TWO_GROUPS).await;
    assert!(a.rec.spawn_order().is_empty(), "nothing before the broker");
    let s = a.summary().await;
    assert!(
        s.starts_with("waiting for broker redis://127.0.0.1:1/0"),
        "{s}"
    );
    assert_eq!(a.instance("text-1").await["state"], "waiting-for-broker");

    a.rec
        .broker(BrokerEvent::Up {
            latency: Duration::from_millis(2),
        })
        .await;
    settle().await;
    let mut started = a.rec.spawn_order();
    started.sort();
    assert_eq!(started, ["billing-1", "text-1", "text-2"]);
    let calls = a.rec.calls();
    assert!(
        calls
            .iter()
            .any(|(_, c)| *c == Call::PrepareGroup("text".into()))
    );
    assert!(calls.iter().any(|(_, c)| matches!(c, Call::MonitorStarted { url, queues } if url == BROKER && queues == &["payments", "text"])));
    // Running once up for a second (machine::UP_AFTER).
    let i = a.wait_state("text-1", "running", 2 * UP).await;
    assert_eq!(i["pid"], a.rec.pid_of("text-1").unwrap());
    assert_eq!(i["restarts"], 0);
    a.wait_state("billing-1", "running", 2 * UP).await;
    let s = a.summary().await;
    assert_eq!(s, "3/3 workers running, broker ok");
    // systemd saw the same line.
    assert!(
        a.rec.notices().contains(&Notice::Status(s)),
        "{:?}",
        a.rec.notices()
    );
    assert_eq!(a.shutdown().await, 0);
}

const UP: Duration = machine::UP_AFTER;

#[tokio::test(start_paused = true)]
async fn a_crash_restarts_after_the_backoff_delay_and_ends_in_crash_loop() {
    let a = Actor::start("[group.bad]\nqueues = [\"q\"]\n").await;
    // Quick failures in a row: 100 ms, then doubling.
    let mut crashed_at = Vec::new();
    for _ in 0..4 {
        crashed_at.push(Instant::now());
        a.rec.crash("bad-1", ExitReason::Code(7));
        // Long enough for any delay of the schedule (max 1 s).
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let starts = a.rec.spawns("bad-1");
    assert_eq!(starts.len(), 5, "{starts:?}");
    let delays: Vec<Duration> = crashed_at
        .iter()
        .zip(&starts[1..])
        .map(|(crash, (start, _))| *start - *crash)
        .collect();
    assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 800 * MS]);
    // Every crash left a KillTree of that run (its orphans).
    let kills = a
        .rec
        .calls()
        .into_iter()
        .filter(|(_, c)| matches!(c, Call::KillTree(k) if k.id == "bad-1"))
        .count();
    assert_eq!(kills, 4);
    // After the third quick failure: crash-loop, also between starts.
    a.rec.crash("bad-1", ExitReason::Code(7));
    settle().await;
    let i = a.instance("bad-1").await;
    assert_eq!(i["state"], "crash-loop", "{i}");
    assert_eq!(i["restarts"], 5);
    let last = i["last_exit"].as_str().unwrap();
    assert!(last.starts_with("exit 7"), "{last}");
    assert!(last.contains("quick failures in a row"), "{last}");
    let s = a.summary().await;
    assert!(s.contains("bad-1 crash-loop (exit 7"), "{s}");
    // Capped at restart_delay_max.
    tokio::time::sleep(999 * MS).await;
    assert_eq!(a.rec.spawns("bad-1").len(), 5);
    tokio::time::sleep(2 * MS).await;
    assert_eq!(a.rec.spawns("bad-1").len(), 6);
    assert_eq!(a.instance("bad-1").await["state"], "crash-loop");
    assert_eq!(a.shutdown().await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_spawn_is_retried_with_backoff() {
    let dir_groups = "[group.bad]\nqueues = [\"q\"]\n";
    let a = Actor::waiting(dir_groups).await;
    a.rec
        .fail_next_spawn("Resource temporarily unavailable (os error 11)");
    a.rec
        .broker(BrokerEvent::Up {
            latency: Duration::from_millis(1),
        })
        .await;
    settle().await;
    let failed_at = a.rec.calls().into_iter().find_map(|(t, c)| match c {
        Call::SpawnFailed { id, .. } if id == "bad-1" => Some(t),
        _ => None,
    });
    let failed_at = failed_at.expect("the spawn failed");
    let i = a.instance("bad-1").await;
    assert!(
        i["last_exit"].as_str().unwrap().contains("os error 11"),
        "{i}"
    );
    a.wait_state("bad-1", "running", 3 * UP).await;
    let starts = a.rec.spawns("bad-1");
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].0 - failed_at, 100 * MS);
    assert_eq!(a.shutdown().await, 0);
}

#[tokio::test(start_paused = true)]
async fn stop_escalates_term_then_quit_and_pins_the_instance() {
    let a = Actor::start(TWO_GROUPS).await;
    a.wait_state("text-1", "running", 2 * UP).await;
    a.rec.ignore_term("text-1");
    let t0 = Instant::now();
    let r = a.ask(json!({"type": "stop", "targets": ["text"]})).await;
    assert_eq!(r["type"], "done", "{r}");
    a.wait_state("text-1", "stopped", 3 * UP).await;
    let i = a.wait_state("text-2", "stopped", UP).await;
    assert_eq!(i["last_exit"], "exit 0");
    // text-1 ignored SIGTERM for stop_timeout (1 s) and got SIGQUIT.
    assert_eq!(
        a.rec.signals("text-1"),
        [StopSignal::Term, StopSignal::Quit]
    );
    let quit_at = a.rec.calls().into_iter().find_map(|(t, c)| match c {
        Call::Signal {
            signal: StopSignal::Quit,
            ..
        } => Some(t),
        _ => None,
    });
    assert_eq!(quit_at.unwrap() - t0, Duration::from_secs(1));
    let i = a.instance("text-1").await;
    assert_eq!(i["last_exit"], "killed by SIGQUIT");
    assert_eq!(i["pinned"], true);
    assert_eq!(i["pid"], Value::Null);
    // Pinned: still stopped a minute later, and after a reload that
    // changes the group.
    tokio::time::sleep(Duration::from_secs(60)).await;
    a.write_config(&TWO_GROUPS.replace("instances = 2", "instances = 2\nconcurrency = 4"));
    let r = a.reload().await;
    assert_eq!(strings(&r["changed"]), ["text"], "{r}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(a.instance("text-1").await["state"], "stopped");
    assert_eq!(a.rec.spawns("text-1").len(), 1);
    assert_eq!(a.summary().await, "1/3 running, broker ok");
    // Started again on request, with the new spec.
    let r = a.ask(json!({"type": "start", "targets": ["text-1"]})).await;
    assert_eq!(r["type"], "done", "{r}");
    a.wait_state("text-1", "running", 2 * UP).await;
    let last = a.rec.calls().into_iter().rev().find_map(|(_, c)| match c {
        Call::Spawn { id, args, .. } if id == "text-1" => Some(args),
        _ => None,
    });
    assert!(last.unwrap().windows(2).any(|w| w == ["-c", "4"]));
    assert_eq!(a.instance("text-2").await["state"], "stopped");
    assert_eq!(a.shutdown().await, 0);
}

#[tokio::test(start_paused = true)]
async fn an_instance_stopped_during_its_backoff_stays_stopped() {
    let a = Actor::start("[group.bad]\nqueues = [\"q\"]\n").await;
    a.rec.crash("bad-1", ExitReason::Signal(libc::SIGSEGV));
    settle().await;
    assert_eq!(a.instance("bad-1").await["state"], "backoff");
    let r = a.ask(json!({"type": "stop", "targets": ["bad-1"]})).await;
    assert_eq!(r["type"], "done", "{r}");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let i = a.instance("bad-1").await;
    assert_eq!(i["state"], "stopped", "{i}");
    assert_eq!(i["pinned"], true);
    assert_eq!(a.rec.spawns("bad-1").len(), 1, "no restart after the stop");
    assert_eq!(a.shutdown().await, 0);
}

/// TWO_GROUPS and two more.
fn four_groups() -> String {
    TWO_GROUPS.to_string()
        + r#"
[group.old]
queues = ["old"]

[group.same]
queues = ["same"]
"#
}

#[tokio::test(start_paused = true)]
async fn reload_applies_the_diff_and_restarts_changed_groups_one_instance_at_a_time() {
    let a = Actor::start(&four_groups()).await;
    for id in ["text-1", "text-2", "billing-1", "old-1", "same-1"] {
        a.wait_state(id, "running", 2 * UP).await;
    }
    let billing = a.rec.pid_of("billing-1").unwrap();
    let new = four_groups()
        .replace("instances = 2", "instances = 2\nconcurrency = 3")
        .replace("[group.old]\nqueues = [\"old\"]\n", "")
        .replace("[\"payments\"]", "[\"payments\", \"webhooks\"]")
        + "\n[group.emails]\nqueues = [\"emails\"]\n";
    a.write_config(&new);
    let before = a.rec.calls().len();
    let r = a.reload().await;
    assert_eq!(r["type"], "reloaded", "{r}");
    assert_eq!(r["applied"], true, "{r}");
    assert_eq!(strings(&r["added"]), ["emails"]);
    assert_eq!(strings(&r["removed"]), ["old"]);
    assert_eq!(strings(&r["changed"]), ["text", "billing"]);
    assert_eq!(strings(&r["unchanged"]), ["same"]);
    assert_eq!(strings(&r["warnings"]), Vec::<String>::new());
    for id in ["text-1", "text-2", "billing-1", "emails-1"] {
        a.wait_state(id, "running", 5 * UP).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = a.rec.calls_after(before);
    // Unchanged: untouched. Removed: stopped and its cgroup removed.
    assert!(
        !after.iter().any(
            |c| matches!(c, Call::Signal { id, .. } | Call::Spawn { id, .. } if id == "same-1")
        )
    );
    assert_eq!(a.rec.signals("old-1"), [StopSignal::Term]);
    assert!(
        after.contains(&Call::RemoveGroup("old".into())),
        "{after:?}"
    );
    let s = a.status().await;
    let groups: Vec<&str> = s["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["text", "billing", "same", "emails"]);
    assert_ne!(a.rec.pid_of("billing-1").unwrap(), billing);
    // The broker monitor watches the new queues (and was not restarted).
    let queues = after.iter().find_map(|c| match c {
        Call::SetQueues(q) => Some(q.clone()),
        _ => None,
    });
    assert_eq!(
        queues.unwrap(),
        ["emails", "payments", "same", "text", "webhooks"]
    );
    assert!(
        !after
            .iter()
            .any(|c| matches!(c, Call::MonitorStarted { .. }))
    );
    // Instance by instance: text-2 is stopped only once the new text-1 has
    // been up for UP_AFTER.
    let at = |want: &dyn Fn(&Call) -> bool| {
        a.rec.calls()[before..]
            .iter()
            .find(|(_, c)| want(c))
            .map(|(t, _)| *t)
            .unwrap()
    };
    let respawn = |n: &'static str| move |c: &Call| matches!(c, Call::Spawn { id, .. } if id == n);
    let term = |n: &'static str| move |c: &Call| matches!(c, Call::Signal { id, .. } if id == n);
    let text1_up = at(&respawn("text-1"));
    assert!(at(&term("text-1")) <= text1_up);
    assert_eq!(at(&term("text-2")) - text1_up, UP);
    assert!(at(&respawn("text-2")) >= at(&term("text-2")));
    assert_eq!(a.shutdown().await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_rolling_restart_goes_one_instance_at_a_time() {
    let a = Actor::start("[group.text]\nqueues = [\"t\"]\ninstances = 3\n").await;
    for id in ["text-1", "text-2", "text-3"] {
        a.wait_state(id, "running", 2 * UP).await;
    }
    let before = a.rec.calls().len();
    let r = a
        .ask(json!({"type": "restart", "targets": ["text"], "rolling": true}))
        .await;
    assert_eq!(r["type"], "done", "{r}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let order: Vec<String> = a.rec.calls()[before..]
        .iter()
        .filter_map(|(_, c)| match c {
            Call::Signal { id, .. } => Some(format!("stop {id}")),
            Call::Spawn { id, .. } => Some(format!("start {id}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            "stop text-1",
            "start text-1",
            "stop text-2",
            "start text-2",
            "stop text-3",
            "start text-3"
        ]
    );
    for id in ["text-1", "text-2", "text-3"] {
        let i = a.instance(id).await;
        assert_eq!(i["state"], "running");
        assert_eq!(a.rec.spawns(id).len(), 2, "{i}");
        assert_eq!(i["pid"], a.rec.spawns(id)[1].1);
    }
    assert_eq!(a.shutdown().await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_broken_config_is_rejected_and_the_old_one_keeps_running() {
    let a = Actor::start(TWO_GROUPS).await;
    a.wait_state("text-1", "running", 2 * UP).await;
    let before = a.rec.calls().len();
    a.write_config("[group.text]\nqueues = []\nconcurrency = 0\n");
    let r = a.reload().await;
    assert_eq!(r["applied"], false, "{r}");
    let errors = strings(&r["errors"]).join("\n");
    assert!(
        errors.contains("workers.toml:"),
        "errors name the file: {errors}"
    );
    assert!(errors.contains("queues"), "{errors}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = a.rec.calls_after(before);
    // Only systemd heard of it: RELOADING=1, then READY=1.
    assert_eq!(
        after,
        [Call::Notify(Notice::Reloading), Call::Notify(Notice::Ready)]
    );
    assert_eq!(a.summary().await, "3/3 workers running, broker ok");
    assert_eq!(a.shutdown().await, 0);
}

#[tokio::test(start_paused = true)]
async fn sighup_reloads_like_the_control_request() {
    let a = Actor::start(TWO_GROUPS).await;
    a.write_config(&(TWO_GROUPS.to_string() + "\n[group.emails]\nqueues = [\"emails\"]\n"));
    a.tx.send(Msg::Reload).await.unwrap();
    a.reloaded(1).await;
    a.wait_state("emails-1", "running", 3 * UP).await;
    assert_eq!(a.shutdown().await, 0);
}

/// The file is read off the actor: while a reload waits for the file (here
/// a FIFO nobody writes yet), the actor still answers.
#[tokio::test(start_paused = true)]
async fn a_reload_reads_the_file_off_the_actor() {
    let a = Actor::start(TWO_GROUPS).await;
    let path = a.config_path();
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The writer: when the test says so, or after 2 s of real time
    // whatever happens (so an actor stuck on the FIFO fails, not hangs).
    let written = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let writer = {
        let (written, path) = (written.clone(), path.clone());
        let text = config_text(a.dir.path(), BROKER, TWO_GROUPS);
        std::thread::spawn(move || {
            let _ = wait.recv_timeout(Duration::from_secs(2));
            written.store(true, std::sync::atomic::Ordering::SeqCst);
            std::fs::write(&path, text).unwrap();
        })
    };
    a.tx.send(Msg::Reload).await.unwrap();
    settle().await;
    let s = a.status().await;
    assert_eq!(s["type"], "status");
    assert!(
        !written.load(std::sync::atomic::Ordering::SeqCst),
        "the actor waited for the config file"
    );
    go.send(()).unwrap();
    a.reloaded(1).await;
    writer.join().unwrap();
    assert_eq!(a.shutdown().await, 0);
}

#[tokio::test(start_paused = true)]
async fn the_running_broker_and_socket_stay_until_restart() {
    let a = Actor::start(TWO_GROUPS).await;
    let other = "redis://:secret@127.0.0.1:2/0";
    let text = config_text(a.dir.path(), other, TWO_GROUPS).replace("/control.sock", "/other.sock");
    std::fs::write(a.config_path(), text).unwrap();
    let r = a.reload().await;
    assert_eq!(r["applied"], true, "{r}");
    let warnings = strings(&r["warnings"]);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0]
            .starts_with("[daemon].socket changed: this takes effect when the daemon restarts")
    );
    assert!(
        warnings[1].starts_with("[broker] changed: this takes effect when the daemon restarts")
    );
    // Still the broker it started with, and no second monitor.
    let s = a.status().await;
    assert_eq!(s["daemon"]["broker"]["url"], "redis://127.0.0.1:1/0");
    let monitors = a
        .rec
        .calls()
        .into_iter()
        .filter(|(_, c)| matches!(c, Call::MonitorStarted { .. }))
        .count();
    assert_eq!(monitors, 1);
    // Reloading the new file again still warns: the running broker is
    // the old one.
    let r = a.reload().await;
    assert_eq!(strings(&r["warnings"]).len(), 2, "{r}");
    assert_eq!(a.shutdown().await, 0);
}

/// Settings are compared as values, not as their printed form: the same
/// socket spelled with a doubled slash is no change.
#[tokio::test(start_paused = true)]
async fn an_equal_socket_spelled_differently_is_no_change() {
    let a = Actor::start(TWO_GROUPS).await;
    let text =
        config_text(a.dir.path(), BROKER, TWO_GROUPS).replace("/control.sock", "//control.sock");
    std::fs::write(a.config_path(), text).unwrap();
    let r = a.reload().await;
    assert_eq!(r["applied"], true, "{r}");
    assert_eq!(strings(&r["warnings"]), Vec::<String>::new(), "{r}");
    assert_eq!(a.shutdown().await, 0);
}

#[tokio::test(start_paused = true)]
async fn the_broker_wait_timeout_with_on_timeout_fail_exits_1() {
    let a = Actor::waiting(TWO_GROUPS).await;
    a.rec.broker(BrokerEvent::GateTimeout).await;
    let code = a.task.await.unwrap();
    assert_eq!(code, 1);
    assert!(a.rec.spawn_order().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_worker_and_exits_0() {
    let a = Actor::start(TWO_GROUPS).await;
    a.wait_state("text-1", "running", 2 * UP).await;
    a.rec.ignore_term("billing-1");
    let rec = a.rec.clone();
    let t0 = Instant::now();
    assert_eq!(a.shutdown().await, 0);
    // In parallel: every worker got SIGTERM at once.
    let terms: Vec<Instant> = rec
        .calls()
        .into_iter()
        .filter_map(|(t, c)| {
            matches!(
                c,
                Call::Signal {
                    signal: StopSignal::Term,
                    ..
                }
            )
            .then_some(t)
        })
        .collect();
    assert_eq!(terms, [t0, t0, t0]);
    // billing-1 ignored it: SIGQUIT after stop_timeout.
    assert_eq!(
        rec.signals("billing-1"),
        [StopSignal::Term, StopSignal::Quit]
    );
    let notices = rec.notices();
    let stopping = notices.iter().position(|n| *n == Notice::Stopping).unwrap();
    assert_eq!(
        notices[stopping + 1],
        Notice::ExtendTimeout(Duration::from_secs(1) + machine::QUIT_GRACE + machine::KILL_GRACE)
    );
    let calls = rec.calls();
    assert!(
        matches!(&calls.last().unwrap().1, Call::Finish(g) if g == &["text", "billing"]),
        "{calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn status_limits_targets_and_refuses_unknown_ones() {
    let a = Actor::start(TWO_GROUPS).await;
    let s = a
        .ask(json!({"type": "status", "targets": ["billing"]}))
        .await;
    let groups = s["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "billing");
    assert_eq!(groups[0]["queues"][0]["name"], "payments");
    assert_eq!(s["daemon"]["device_id"], "testdev");
    assert_eq!(s["daemon"]["limits"], "off (test)");
    assert_eq!(s["daemon"]["broker"]["state"], "ok");
    let i = &groups[0]["instances"][0];
    assert_eq!(i["node"], "billing-1@testdev");
    // Memory from the effects' usage sample.
    assert_eq!(i["memory_bytes"], i["pid"]);
    let e = a.ask(json!({"type": "status", "targets": ["nope"]})).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["kind"], "unknown_target");
    let e = a.ask(json!({"type": "stop", "targets": ["nope"]})).await;
    assert_eq!(e["kind"], "unknown_target");
    assert_eq!(a.shutdown().await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_killed_worker_is_replaced_and_its_run_killed() {
    let a = Actor::start("[group.text]\nqueues = [\"q\"]\n").await;
    a.wait_state("text-1", "running", 2 * UP).await;
    let old = a.rec.pid_of("text-1").unwrap();
    a.rec.crash("text-1", ExitReason::Signal(libc::SIGKILL));
    settle().await;
    // The rest of its run (children, setsid escapees) is killed.
    let kill = a.rec.calls().into_iter().find_map(|(_, c)| match c {
        Call::KillTree(k) => Some(k),
        _ => None,
    });
    assert_eq!(kill.unwrap().pgid, Some(old));
    let i = a.wait_state("text-1", "running", 3 * UP).await;
    assert_ne!(i["pid"], old);
    assert_eq!(i["restarts"], 1);
    assert_eq!(i["last_exit"], "killed by SIGKILL");
    assert_eq!(a.shutdown().await, 0);
}

#[tokio::test(start_paused = true)]
async fn silent_and_stalled_workers_are_restarted_gracefully() {
    let a = Actor::start(
        r#"
[group.silent]
queues = ["silentq"]
heartbeat_timeout = "2s"

[group.stalled]
queues = ["stallq"]
heartbeat_timeout = "0s"
stall_timeout = "2s"

[group.healthy]
queues = ["healthyq"]
heartbeat_timeout = "2s"
stall_timeout = "2s"
"#,
    )
    .await;
    let first = |id: &str| a.rec.spawns(id)[0].1;
    let (silent, stalled, healthy) = (first("silent-1"), first("stalled-1"), first("healthy-1"));
    let heartbeat = |node: &str| {
        BrokerEvent::Heartbeat(crate::broker::Heartbeat {
            hostname: format!("{node}@testdev"),
            pid: 0,
            active: 0,
            processed: 5,
            freq: 2.0,
            timestamp: 0.0,
        })
    };
    // Work waits in the stalled group's queue; nothing in the others'.
    let backlog: std::collections::BTreeMap<String, u64> =
        [("stallq", 3), ("healthyq", 0), ("silentq", 0)]
            .map(|(q, n)| (q.to_string(), n))
            .into();
    for second in 0..6 {
        a.rec.broker(BrokerEvent::Backlog(backlog.clone())).await;
        a.rec.broker(heartbeat("stalled-1")).await;
        a.rec.broker(heartbeat("healthy-1")).await;
        // The silent one sends two heartbeats, then no more.
        if second < 2 {
            a.rec.broker(heartbeat("silent-1")).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Gracefully: SIGTERM, then a new run.
    for (id, old) in [("silent-1", silent), ("stalled-1", stalled)] {
        let signals = a.rec.signals(id);
        assert!(!signals.is_empty(), "{id} was not stopped");
        assert!(
            signals.iter().all(|s| *s == StopSignal::Term),
            "{id}: {signals:?}"
        );
        assert_ne!(a.rec.pid_of(id).unwrap(), old, "{id} restarted");
    }
    // An idle worker with heartbeats and no backlog is left alone.
    assert_eq!(a.rec.pid_of("healthy-1"), Some(healthy));
    assert!(a.rec.signals("healthy-1").is_empty());
    // Backlog and heartbeats show in status.
    let s = a
        .ask(json!({"type": "status", "targets": ["stalled"]}))
        .await;
    assert_eq!(s["groups"][0]["queues"][0]["name"], "stallq");
    assert_eq!(s["groups"][0]["queues"][0]["backlog"], 3);
    assert!(!a.instance("healthy-1").await["heartbeat_age_secs"].is_null());
    assert_eq!(a.shutdown().await, 0);
}

/// The fleet records the actor hands to the monitor, parsed.
fn fleet_records(rec: &Recorder) -> Vec<crate::model::fleet::DeviceRecord> {
    rec.calls()
        .into_iter()
        .filter_map(|(_, c)| match c {
            Call::FleetRecord(bytes) => {
                Some(crate::model::fleet::parse_record("testdev", &bytes).unwrap())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_fleet_record_follows_the_broker_up_and_each_beat_and_a_stop_marks_it_stopped() {
    use crate::model::fleet::DaemonRun;
    let a = Actor::start(TWO_GROUPS).await;
    // The first record when the broker comes up (workers just spawned).
    let first = fleet_records(&a.rec);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].groups.len(), 2);
    assert_eq!(first[0].groups[0].total, 2);
    a.wait_state("text-2", "running", 2 * UP).await;
    // Nothing more until the link has written it (no timer of its own).
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(fleet_records(&a.rec).len(), 1);
    a.rec.broker(BrokerEvent::FleetBeat { at: 1.0 }).await;
    settle().await;
    let records = fleet_records(&a.rec);
    assert_eq!(records.len(), 2);
    let g = &records[1].groups[0];
    assert_eq!(
        (g.name.as_str(), g.running, g.crash_looping),
        ("text", 2, 0)
    );
    assert_eq!(records[1].run, DaemonRun::Running);
    assert_eq!(records[1].interval_secs, 10.0);

    let rec = a.rec.clone();
    assert_eq!(a.shutdown().await, 0);
    let stopped: Vec<_> = rec
        .calls()
        .into_iter()
        .filter_map(|(_, c)| match c {
            Call::FleetStopped(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].run, DaemonRun::Stopped);
    // After the workers: the stop record shows none running.
    assert!(stopped[0].groups.iter().all(|g| g.running == 0));
}

/// Autoscaling through the actor (issue 15): a check runs once per
/// check_interval however many backlogs arrive (a status request refreshes
/// the backlog), measures memory through the effects, takes the share from
/// the fleet's capacity, and acts on memory pressure.
#[tokio::test(start_paused = true)]
async fn autoscaling_samples_memory_and_share_once_per_check() {
    use crate::model::fleet::Capacity;
    use crate::sys::cgroup::MemoryPressure;
    let a = Actor::start(
        r#"
[group.text]
queues = ["text"]
memory_max = "1G"
autoscale = { min = 1, max = 4, memory_headroom = "300M" }
"#,
    )
    .await;
    let backlog = || BrokerEvent::Backlog([("text".to_string(), 200)].into());
    let scale = |s: &Value| s["groups"][0]["autoscale"].clone();
    // 500 MiB available, the group's cgroup holds 256 MiB in its one
    // instance: one more leaves 244 MiB, under the headroom: refused.
    a.rec.set_mem_available(Some(500 << 20));
    let used = MemoryPressure {
        current: Some(256 << 20),
        ..MemoryPressure::default()
    };
    a.rec.set_memory_pressure("text", used);
    a.rec.broker(backlog()).await;
    settle().await;
    let s = scale(&a.status().await);
    assert_eq!(s["state"], "up-refused-memory", "{s}");
    assert_eq!(
        s["reason"],
        "wants 4; refused: memory: MemAvailable 500 MiB - 256 MiB per instance <= headroom 300 MiB"
    );
    assert_eq!(a.rec.memory_samples(), 1);
    // A backlog between checks (a status refresh) is not a check.
    a.rec.set_mem_available(Some(4 << 30));
    tokio::time::advance(Duration::from_secs(5)).await;
    a.rec.broker(backlog()).await;
    settle().await;
    assert_eq!(a.rec.memory_samples(), 1);
    assert_eq!(a.rec.spawns("text-2").len(), 0);
    // The next check: memory allows, one more.
    tokio::time::advance(Duration::from_secs(5)).await;
    a.rec.broker(backlog()).await;
    settle().await;
    assert_eq!(a.rec.memory_samples(), 2);
    assert_eq!(a.rec.spawns("text-2").len(), 1);
    assert_eq!(scale(&a.status().await)["state"], "up");
    // Another device consumes "text" with the same capacity: share 0.5.
    a.rec
        .broker(BrokerEvent::FleetCapacity(Some(vec![Capacity {
            queues: vec!["text".into()],
            capacity: 4,
        }])))
        .await;
    tokio::time::advance(Duration::from_secs(10)).await;
    a.rec.broker(backlog()).await;
    settle().await;
    let s = scale(&a.status().await);
    assert_eq!(
        (s["share"].as_f64(), s["desired"].as_u64()),
        (Some(0.5), Some(4))
    );
    assert_eq!(a.rec.spawns("text-3").len(), 1);
    // memory.events `high` goes up: one instance stops at once.
    a.rec
        .set_memory_pressure("text", MemoryPressure { high: 3, ..used });
    tokio::time::advance(Duration::from_secs(10)).await;
    a.rec.broker(backlog()).await;
    settle().await;
    let s = scale(&a.status().await);
    assert_eq!(s["state"], "down-pressure", "{s}");
    assert_eq!(
        s["reason"],
        "backlog 200, share 0.50, memory pressure (memory.events high/oom or PSI): one instance down at once"
    );
    // The fake worker stops at once on SIGTERM: text-3 is gone.
    assert_eq!(s["current"], 2, "{s}");
    assert!(a.rec.calls().iter().any(|(_, c)| matches!(
        c,
        Call::Signal { id, signal: machine::StopSignal::Term, .. } if id == "text-3"
    )));
    // The fleet read failed: share 1 again.
    a.rec.broker(BrokerEvent::FleetCapacity(None)).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    a.rec.broker(backlog()).await;
    settle().await;
    assert_eq!(scale(&a.status().await)["share"].as_f64(), Some(1.0));
    a.shutdown().await;
}

/// `status GROUP` of a group scaled to zero shows the group (with its
/// autoscale) instead of "unknown target" or nothing.
#[tokio::test(start_paused = true)]
async fn status_of_a_group_at_zero_instances_shows_it() {
    let a = Actor::start(
        r#"
[group.idle]
queues = ["iq"]
autoscale = { min = 0, max = 2 }
"#,
    )
    .await;
    let s = a.ask(json!({"type": "status", "targets": ["idle"]})).await;
    assert_eq!(s["groups"][0]["name"], "idle", "{s}");
    assert_eq!(s["groups"][0]["instances"], json!([]));
    assert_eq!(s["groups"][0]["autoscale"]["current"], 0);
    a.shutdown().await;
}

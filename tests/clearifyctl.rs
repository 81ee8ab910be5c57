//! The real clearifyctl binary against the real control server, in-process,
//! with a fake supervisor behind it (tests/control_support).

mod control_support;
#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clearify_workerd::control::protocol::{InstanceState, Request, Status};
use clearify_workerd::control::server::{Authorizer, ServeOptions};
use control_support::{Fake, canned_status, root_only};
use nix::unistd::{Gid, Uid};

const BIN: &str = env!("CARGO_BIN_EXE_clearifyctl");

struct Env {
    fake: Fake,
    dir: tempfile::TempDir,
    // Last, so the server's tasks outlive nothing they need.
    _rt: tokio::runtime::Runtime,
}

impl Env {
    fn start() -> Env {
        Env::start_with(root_only(), None)
    }

    fn start_with(auth: Authorizer, group: Option<Gid>) -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // World-accessible, so that other users can reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("ctl.sock");
        let fake = {
            let _guard = rt.enter();
            Fake::start(&sock, auth, group, ServeOptions::default())
        };
        Env { fake, dir, _rt: rt }
    }

    fn sock(&self) -> &Path {
        &self.fake.socket
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env_remove("CLEARIFY_SOCKET")
            .arg("--socket")
            .arg(self.sock())
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().expect("run clearifyctl"))
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().expect("exited, not killed"),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn state_of(env: &Env, id: &str) -> (String, Option<u32>) {
    let st = env.fake.state.status.lock().unwrap();
    let i = st
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .find(|i| i.id == id)
        .unwrap();
    (i.state.to_string(), i.pid)
}

#[test]
fn status_prints_a_table_with_header_queues_and_instances() {
    let env = Env::start();
    let r = env.run(&["status"]);
    assert_eq!(r.code, 0, "{r:?}");
    let first = r.stdout.lines().next().unwrap();
    assert!(
        first.contains("pid 4321")
            && first.contains("up 1h2m")
            && first.contains("config /etc/clearify/workers.toml"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("broker ok redis://:***@127.0.0.1:6379/0")
            && r.stdout.contains("device dev-test")
            && r.stdout.contains("limits on"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("text  queues: text=12 text.priority=-"),
        "{r:?}"
    );
    assert!(r.stdout.contains("webhook  queues: webhook=0"), "{r:?}");
    let row = r
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("text-1 "))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "text-1", "running", "101", "3h12m", "1", "-", "85.0", "1.5", "2s"
        ],
        "{r:?}"
    );
    for h in [
        "ID",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
        "MEM(MiB)",
        "CPU%",
        "HEARTBEAT",
    ] {
        assert!(r.stdout.contains(h), "missing column {h}: {r:?}");
    }

    // Targets narrow the view; an unknown one exits 1.
    let r = env.run(&["status", "webhook"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("webhook-1") && !r.stdout.contains("text-1"),
        "{r:?}"
    );
    let r = env.run(&["status", "nope-3"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("unknown target"), "{r:?}");
}

#[test]
fn status_json_is_the_contract_document() {
    let env = Env::start();
    let r = env.run(&["status", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    let d = &v["daemon"];
    assert!(d["version"].is_string() && d["pid"].is_u64() && d["uptime_secs"].is_u64());
    assert!(d["device_id"].is_string() && d["config"].is_string());
    assert!(d["broker"]["state"].is_string() && d["broker"]["url"].is_string());
    assert!(d["broker"]["error"].is_null());
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    let g = &groups[0];
    assert_eq!(g["name"], "text");
    assert_eq!(g["queues"][0]["name"], "text");
    assert_eq!(g["queues"][0]["backlog"], 12);
    let i = &g["instances"][0];
    let keys = [
        "id",
        "node",
        "state",
        "pid",
        "uptime_secs",
        "restarts",
        "last_exit",
        "memory_bytes",
        "cpu_percent",
    ];
    for k in keys {
        assert!(i.get(k).is_some(), "instance lacks {k}: {i}");
    }
    assert_eq!(i["id"], "text-1");
    assert_eq!(i["node"], "text-1@dev");
    assert_eq!(i["state"], "running");
    assert_eq!(i["pid"], 101);
    assert!(i["last_exit"].is_null());
    assert!(i["cpu_percent"].is_f64() && i["memory_bytes"].is_u64() && i["restarts"].is_u64());
    // Exactly the daemon's document, nothing lost.
    let back: Status = serde_json::from_value(v).unwrap();
    assert_eq!(back, canned_status());
}

fn run_for(mut cmd: Command, for_how_long: Duration) -> Run {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(for_how_long);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    Run {
        code: -1,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn status_watch_redraws_in_place() {
    let env = Env::start();
    let r = run_for(
        env.cmd(&["status", "--watch", "0.2", "text"]),
        Duration::from_millis(1500),
    );
    let frames = r.stdout.matches("\x1b[H\x1b[2J").count();
    assert!(frames >= 3, "{frames} redraws: {r:?}");
    assert!(
        r.stdout.contains("text-1") && !r.stdout.contains("webhook-1"),
        "{r:?}"
    );

    // `--watch TARGET`: a target, not an interval; the default is 2 s.
    let r = run_for(
        env.cmd(&["status", "--watch", "webhook"]),
        Duration::from_millis(700),
    );
    assert_eq!(r.stdout.matches("\x1b[H\x1b[2J").count(), 1, "{r:?}");
    assert!(
        r.stdout.contains("Every 2s") && r.stdout.contains("webhook-1"),
        "{r:?}"
    );
    assert!(!r.stdout.contains("text-1"), "{r:?}");
}

#[test]
fn start_stop_restart_act_and_wait() {
    let env = Env::start();
    let t = Instant::now();
    let r = env.run(&["stop", "text-1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        t.elapsed() >= control_support::TRANSITION,
        "stop did not wait"
    );
    assert!(
        r.stdout.contains("text-1: stopping") && r.stdout.contains("stopped: text-1"),
        "{r:?}"
    );
    assert_eq!(state_of(&env, "text-1").0, "stopped");
    let r = env.run(&["status", "text-1"]);
    assert!(r.stdout.contains("stopped(pinned)"), "{r:?}");

    let r = env.run(&["start", "text-1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("text-1: starting"), "{r:?}");

    // restart waits for a new pid on each instance of the group.
    std::thread::sleep(control_support::TRANSITION * 2);
    let before = (state_of(&env, "text-1").1, state_of(&env, "text-2").1);
    let r = env.run(&["restart", "text"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("running: text"), "{r:?}");
    let after = (state_of(&env, "text-1"), state_of(&env, "text-2"));
    assert_eq!(
        (after.0.0.as_str(), after.1.0.as_str()),
        ("running", "running")
    );
    assert!(
        after.0.1 != before.0 && after.1.1 != before.1,
        "pids unchanged"
    );

    let r = env.run(&["restart", "--rolling", "webhook"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(env.fake.seen().contains(&Request::Restart {
        targets: vec!["webhook".into()],
        rolling: true
    }));

    // Unknown targets exit 1 and change nothing.
    let n = env.fake.seen().len();
    let r = env.run(&["stop", "nope-1"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("unknown target") && r.stderr.contains("nope-1"),
        "{r:?}"
    );
    assert_eq!(env.fake.seen().len(), n + 1);
}

#[test]
fn no_wait_returns_at_once_and_a_stuck_stop_times_out() {
    let env = Env::start();
    env.fake.state.transition_ms.store(3000, Ordering::SeqCst);
    let r = env.run(&["stop", "--no-wait", "webhook-1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(state_of(&env, "webhook-1").0, "stopping");

    let r = env.run(&["stop", "--timeout", "0.5", "text"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("timed out") && r.stderr.contains("text-1 (stopping)"),
        "{r:?}"
    );
}

#[test]
fn restart_into_a_crash_loop_fails_fast() {
    let env = Env::start();
    *env.fake.state.end_override.lock().unwrap() = Some(InstanceState::CrashLoop);
    let t = Instant::now();
    let r = env.run(&["restart", "text-2"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("text-2 is in crash-loop (last exit: exit status 1)"),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn reload_prints_changes_or_errors_and_old_config_kept() {
    let env = Env::start();
    let r = env.run(&["reload"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("config reloaded")
            && r.stdout.contains("added: images-1")
            && r.stdout.contains("changed: text-2"),
        "{r:?}"
    );
    env.fake.state.reload_ok.store(false, Ordering::SeqCst);
    let r = env.run(&["reload"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("workers.toml:7:11: unknown key"), "{r:?}");
    assert!(r.stderr.contains("old config kept"), "{r:?}");
}

#[test]
fn logs_prints_recent_lines() {
    let env = Env::start();
    let r = env.run(&["logs", "-n", "3"]);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{r:?}");
    assert!(lines[2].ends_with("webhook-1: line 29"), "{r:?}");
    assert!(lines[0].ends_with("webhook-1: line 27"), "{r:?}");
    // Line 25 went to stderr: marked with "!".
    let r = env.run(&["logs", "-n", "5"]);
    assert!(
        r.stdout
            .lines()
            .next()
            .unwrap()
            .ends_with("webhook-1!: line 25"),
        "{r:?}"
    );
    let r = env.run(&["logs", "text-1", "-n", "2"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout, "2023-11-14T22:13:46Z text-1: line 26\n2023-11-14T22:13:48Z text-1: line 28\n",
        "{r:?}"
    );
    assert!(env.fake.seen().contains(&Request::Logs {
        target: Some("text-1".into()),
        lines: 2,
        since: None
    }));
}

#[test]
fn logs_follow_polls_the_ring_buffer_for_new_lines() {
    let env = Env::start();
    let mut child = env
        .cmd(&["logs", "text-1", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.ends_with("text-1: line 28"), "{first}");
    env.fake.state.push_log("text-1", "fresh line one");
    env.fake.state.push_log("webhook-1", "not for us");
    env.fake.state.push_log("text-1", "fresh line two");
    let a = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let b = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(a.ends_with("text-1: fresh line one"), "{a}");
    assert!(b.ends_with("text-1: fresh line two"), "{b}");
    // Later polls asked only for lines after what was printed.
    assert!(env.fake.seen().iter().any(|r| matches!(
        r,
        Request::Logs { since: Some(s), .. } if *s >= 1_700_000_028.0
    )));
}

#[test]
fn logs_follow_under_journald_execs_journalctl_with_the_matching_field() {
    let env = Env::start();
    env.fake.state.logs_to_journal.store(true, Ordering::SeqCst);
    // A stand-in journalctl first in PATH that shows how it was called.
    let bin = env.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // Written by a child process (see the ETXTBSY note in the permission test).
    let src = env.dir.path().join("journalctl.src");
    std::fs::write(&src, "#!/bin/sh\necho \"journalctl $*\"\n").unwrap();
    let dst = bin.join("journalctl");
    let st = sh(
        "install",
        &["-m", "0755", src.to_str().unwrap(), dst.to_str().unwrap()],
    );
    assert!(st.success(), "install journalctl stand-in: {st}");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| Run::from(env.cmd(args).env("PATH", &path).output().unwrap());

    let r = run(&["logs", "-f", "text-1", "-n", "20"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        "journalctl -f -u clearify-workerd -n 20 CLEARIFY_INSTANCE=text-1\n"
    );
    let r = run(&["logs", "-f", "text"]);
    assert_eq!(
        r.stdout, "journalctl -f -u clearify-workerd -n 50 CLEARIFY_GROUP=text\n",
        "{r:?}"
    );
    let r = run(&["logs", "-f"]);
    assert_eq!(
        r.stdout, "journalctl -f -u clearify-workerd -n 50\n",
        "{r:?}"
    );
    let r = run(&["logs", "-f", "nope"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("unknown target"), "{r:?}");
}

#[test]
fn test_command_exits_0_only_when_the_broker_is_reachable() {
    let env = Env::start();
    let r = env.run(&["test"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("broker redis://:***@127.0.0.1:6379/0: reachable")
            && r.stdout.contains("connect")
            && r.stdout.contains("redis version: 7.0.15")
            && r.stdout.contains("text-1@dev"),
        "{r:?}"
    );
    env.fake.state.broker_ok.store(false, Ordering::SeqCst);
    let r = env.run(&["test"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("NOT reachable") && r.stdout.contains("connection refused"),
        "{r:?}"
    );
}

#[test]
fn version_shows_both_and_warns_on_mismatch() {
    let env = Env::start();
    let v = clearify_workerd::VERSION;
    let r = env.run(&["version"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout,
        format!("clearifyctl {v} (protocol 2)\nclearify-workerd {v} (protocol 2)\n")
    );
    assert!(r.stderr.is_empty(), "{r:?}");
    *env.fake.state.daemon_version.lock().unwrap() = "0.0.9".into();
    let r = env.run(&["version"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("clearify-workerd 0.0.9"), "{r:?}");
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("differ"),
        "{r:?}"
    );
}

#[test]
fn no_daemon_exits_3_naming_the_socket_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("absent.sock");
    for cmd in [&["status"][..], &["stop", "text-1"], &["version"]] {
        let r = Run::from(
            Command::new(BIN)
                .env("CLEARIFY_SOCKET", &sock)
                .args(cmd)
                .output()
                .unwrap(),
        );
        assert_eq!(r.code, 3, "{cmd:?}: {r:?}");
        assert!(r.stderr.contains(&sock.display().to_string()), "{r:?}");
        assert!(
            r.stderr
                .contains("is clearify-workerd running? try: systemctl status clearify-workerd"),
            "{r:?}"
        );
    }
    // A stale socket file (nobody listening) is "not running" too.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let r = Run::from(
        Command::new(BIN)
            .arg("--socket")
            .arg(&sock)
            .arg("status")
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 3, "{r:?}");
}

#[test]
fn the_socket_comes_from_env_then_config_file() {
    let env = Env::start();
    // CLEARIFY_SOCKET
    let r = Run::from(
        Command::new(BIN)
            .env("CLEARIFY_SOCKET", env.sock())
            .arg("version")
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{r:?}");
    // [daemon].socket in the config file named by --config.
    let cfg = env.dir.path().join("workers.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nsocket = \"{}\"\n\n[groups.text]\n",
            env.sock().display()
        ),
    )
    .unwrap();
    let r = Run::from(
        Command::new(BIN)
            .env_remove("CLEARIFY_SOCKET")
            .arg("--config")
            .arg(&cfg)
            .arg("version")
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{r:?}");
    // --socket beats the config file.
    let r = Run::from(
        Command::new(BIN)
            .env_remove("CLEARIFY_SOCKET")
            .args(["--config"])
            .arg(&cfg)
            .arg("--socket")
            .arg(env.dir.path().join("other.sock"))
            .arg("version")
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 3, "{r:?}");
}

#[test]
fn usage_errors_exit_2_and_help_teaches() {
    let env = Env::start();
    for args in [
        &[][..],
        &["bogus"],
        &["stop"],
        &["start"],
        &["restart", "--rolling", "text", "webhook"],
        &["restart", "--rolling", "all"],
        &["status", "--watch", "0"],
        &["logs", "-n", "many"],
        &["stop", "--timeout", "-1", "text"],
    ] {
        let r = env.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}");
    }
    // Nothing reached the daemon.
    assert!(env.fake.seen().is_empty(), "{:?}", env.fake.seen());

    let r = env.run(&["--help"]);
    assert_eq!(r.code, 0);
    for needle in [
        "Exit codes:",
        "3  daemon not running, or socket missing",
        "4  permission denied",
        "clearifyctl status --json",
        "clearifyctl restart --rolling text",
        "CLEARIFY_SOCKET",
    ] {
        assert!(
            r.stdout.contains(needle),
            "--help lacks {needle:?}:\n{}",
            r.stdout
        );
    }
    let r = env.run(&["restart", "--help"]);
    assert!(
        r.stdout.contains("--rolling") && r.stdout.contains("--no-wait"),
        "{r:?}"
    );
}

#[test]
fn out_of_range_seconds_are_usage_errors_not_panics() {
    let env = Env::start();
    for (opt, value) in [
        ("--request-timeout", "1e300"),
        ("--request-timeout", "NaN"),
        ("--request-timeout", "inf"),
        ("--request-timeout", "-inf"),
        ("--request-timeout", "-1"),
        ("--request-timeout", "0"),
        ("--request-timeout", "86401"),
    ] {
        let r = env.run(&[&format!("{opt}={value}"), "version"]);
        assert_eq!(r.code, 2, "{opt} {value}: {r:?}");
        assert!(
            r.stderr.contains("--request-timeout") && r.stderr.contains("seconds"),
            "{opt} {value}: {r:?}"
        );
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
    for args in [
        &["stop", "--timeout", "1e300", "text"][..],
        &["restart", "--timeout", "1e300", "text"],
        &["status", "--watch", "1e300"],
    ] {
        let r = env.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
    assert!(env.fake.seen().is_empty(), "{:?}", env.fake.seen());
    // A day is still fine.
    assert_eq!(env.run(&["--request-timeout", "86400", "version"]).code, 0);
}

/// What a hostile worker or peer may put in a text: CSI (clear screen),
/// OSC (set title, write the clipboard), BEL, CR, a C1 CSI, backspace.
const HOSTILE: &str = "\x1b[2J\x1b]0;pwned\x07\x1b]52;c;cHduZWQ=\x1b\\\rFAKE\u{9b}31m\x08";

fn assert_no_control(what: &str, out: &str) {
    assert!(
        !out.chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "{what} let a control character through: {out:?}"
    );
}

#[test]
fn worker_and_daemon_text_is_escaped_for_the_terminal_and_raw_keeps_it() {
    let env = Env::start();
    env.fake.state.push_log("text-1", HOSTILE);
    env.fake.state.set("text-2", |i| {
        i.last_exit = Some(format!("exit 1 {HOSTILE}"));
        i.state = InstanceState::CrashLoop;
    });

    let r = env.run(&["logs", "-n", "1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_no_control("logs", &r.stdout);
    assert!(
        r.stdout.contains("\\x1b[2J\\x1b]0;pwned\\x07") && r.stdout.contains("\\x0dFAKE"),
        "{r:?}"
    );

    // --raw: the bytes as the worker wrote them, for pipes.
    let r = env.run(&["logs", "-n", "1", "--raw"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.trim_end().ends_with(HOSTILE), "{r:?}");

    let r = env.run(&["status"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_no_control("status", &r.stdout);
    assert!(r.stdout.contains("exit 1 \\x1b[2J"), "{r:?}");

    // --json stays the exact text, JSON-escaped.
    let r = env.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let last = v["groups"][0]["instances"][1]["last_exit"]
        .as_str()
        .unwrap();
    assert_eq!(last, format!("exit 1 {HOSTILE}"));

    // An error message from the daemon that quotes a hostile target.
    let r = env.run(&["status", &format!("no{HOSTILE}")]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_no_control("an error message", &r.stderr);

    // A restart that waits and meets the crash loop quotes last_exit.
    let r = env.run(&["restart", "text-2", "--timeout", "5"]);
    assert_no_control("restart", &format!("{}{}", r.stdout, r.stderr));
}

// ---------------------------------------------------------------------------
// Permissions, as real non-root users.

const SOCK_GROUP: &str = "clearify-test-sock";
const ADMIN_GROUP: &str = "clearify-test-adm";
const USER: &str = "clearify-test-user";
const ADMIN: &str = "clearify-test-admin";
const OUTSIDER: &str = "clearify-test-outsider";
/// In the admin group only, not in the socket's group.
const ADMIN_ONLY: &str = "clearify-test-admonly";

fn sh(cmd: &str, args: &[&str]) -> std::process::ExitStatus {
    Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("this test needs {cmd} (passwd/util-linux): {e}"))
}

fn ensure_group(name: &str) -> Gid {
    // -f: succeed if it exists (another test run may have made it).
    assert!(
        sh("groupadd", &["-f", "--system", name]).success(),
        "groupadd {name}"
    );
    nix::unistd::Group::from_name(name).unwrap().unwrap().gid
}

fn ensure_user(name: &str, groups: &[&str]) -> (Uid, Gid) {
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let st = sh(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
        );
        // 9: created meanwhile by a concurrent run.
        assert!(st.success() || st.code() == Some(9), "useradd {name}: {st}");
    }
    if !groups.is_empty() {
        assert!(sh("usermod", &["-a", "-G", &groups.join(","), name]).success());
    }
    let u = nix::unistd::User::from_name(name).unwrap().unwrap();
    (u.uid, u.gid)
}

struct Users {
    sock_gid: Gid,
    admin_gid: Gid,
    user: (Uid, Gid),
    admin: (Uid, Gid),
    outsider: (Uid, Gid),
    admin_only: (Uid, Gid),
}

fn users() -> &'static Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| {
        assert!(
            Uid::effective().is_root(),
            "the permission tests must run as root to create users"
        );
        let sock_gid = ensure_group(SOCK_GROUP);
        let admin_gid = ensure_group(ADMIN_GROUP);
        Users {
            sock_gid,
            admin_gid,
            user: ensure_user(USER, &[SOCK_GROUP]),
            admin: ensure_user(ADMIN, &[SOCK_GROUP, ADMIN_GROUP]),
            outsider: ensure_user(OUTSIDER, &[]),
            admin_only: ensure_user(ADMIN_ONLY, &[ADMIN_GROUP]),
        }
    })
}

/// Captures the server's tracing output (the permission warning).
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// clearifyctl run as `who` with that user's groups from the group database.
fn run_as(env: &Env, bin: &Path, who: (Uid, Gid), args: &[&str]) -> Run {
    setpriv_ctl(env, bin, who, "--init-groups".into(), args)
}

/// clearifyctl run as `who` with exactly these supplementary groups,
/// whatever the group database says (like a session that predates a
/// `usermod -aG`, or one that used `newgrp`).
fn run_with_groups(env: &Env, bin: &Path, who: (Uid, Gid), groups: &[Gid], args: &[&str]) -> Run {
    let list: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    setpriv_ctl(env, bin, who, format!("--groups={}", list.join(",")), args)
}

/// clearifyctl run through setpriv as `who`, with `groups_arg` choosing
/// the supplementary groups.
fn setpriv_ctl(env: &Env, bin: &Path, who: (Uid, Gid), groups_arg: String, args: &[&str]) -> Run {
    setpriv_at(env.sock(), bin, who, groups_arg, args)
}

/// [`setpriv_ctl`] against the socket `sock`.
fn setpriv_at(sock: &Path, bin: &Path, who: (Uid, Gid), groups_arg: String, args: &[&str]) -> Run {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", who.0))
        .arg(format!("--regid={}", who.1))
        .arg(groups_arg)
        .arg("--")
        .arg(bin)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .env_remove("CLEARIFY_SOCKET")
        .output()
        .expect("this test needs setpriv (util-linux)");
    Run::from(out)
}

#[test]
fn changing_requests_need_root_the_daemon_user_or_the_admin_group() {
    let u = users();
    let logs = captured_logs();
    // The daemon runs as root here; readers are in the socket's group,
    // admins in the admin group.
    let env = Env::start_with(
        Authorizer::new(Uid::effective(), Some(u.admin_gid)),
        Some(u.sock_gid),
    );
    // A copy of the binary any user can run, whatever the target dir's mode.
    // Copied by a child process: a file written through an fd of this
    // process could be inherited by a concurrent test's fork and make the
    // exec fail with ETXTBSY.
    let bin: PathBuf = env.dir.path().join("clearifyctl");
    let st = sh("install", &["-m", "0755", BIN, bin.to_str().unwrap()]);
    assert!(st.success(), "install {BIN}: {st}");

    // A plain member of the socket group may read ...
    let r = run_as(&env, &bin, u.user, &["status"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("text-1"), "{r:?}");
    assert_eq!(run_as(&env, &bin, u.user, &["logs", "-n", "1"]).code, 0);
    assert_eq!(run_as(&env, &bin, u.user, &["version"]).code, 0);
    // ... but not change anything: exit 4, never forwarded.
    for args in [
        &["stop", "text-1"][..],
        &["start", "text-1"],
        &["restart", "all"],
        &["reload"],
    ] {
        let r = run_as(&env, &bin, u.user, args);
        assert_eq!(r.code, 4, "{args:?}: {r:?}");
        assert!(r.stderr.contains("permission denied"), "{r:?}");
        assert!(r.stderr.contains(&format!("uid {}", u.user.0)), "{r:?}");
    }
    assert!(
        env.fake.seen().iter().all(|r| !r.is_mutating()),
        "a refused request reached the supervisor: {:?}",
        env.fake.seen()
    );
    assert_eq!(state_of(&env, "text-1").0, "running");
    // The refusal is logged with the peer's uid and pid.
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("permission denied") && l.contains(&format!("uid={}", u.user.0)))
        .unwrap_or_else(|| panic!("no warning for uid {}: {text}", u.user.0));
    assert!(line.contains("WARN") && line.contains("pid="), "{line}");

    // A member of the admin group may.
    let r = run_as(&env, &bin, u.admin, &["stop", "text-1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(state_of(&env, "text-1").0, "stopped");
    let seen = env.fake.state.seen.lock().unwrap().clone();
    let (_, peer) = seen
        .iter()
        .find(|(r, _)| matches!(r, Request::Stop { .. }))
        .unwrap();
    assert_eq!(peer.uid, u.admin.0.as_raw());
    assert!(peer.groups.contains(&u.admin_gid.as_raw()), "{peer:?}");

    // Membership is the client process's groups, as for the socket file's
    // permission, not the group database: the admin in a session without
    // the group (one from before being added to it) is refused ...
    let r = run_with_groups(&env, &bin, u.admin, &[u.sock_gid], &["start", "text-1"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("permission denied") && r.stderr.contains("log in again"),
        "{r:?}"
    );
    assert_eq!(state_of(&env, "text-1").0, "stopped");
    // ... and a process that has the group may, whatever the database says.
    let r = run_with_groups(
        &env,
        &bin,
        u.outsider,
        &[u.sock_gid, u.admin_gid],
        &["start", "text-1"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("text-1: starting"), "{r:?}");
    assert_ne!(state_of(&env, "text-1").0, "stopped");
    let seen = env.fake.state.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|(r, p)| matches!(r, Request::Start { .. }) && p.uid == u.outsider.0.as_raw()),
        "{seen:?}"
    );

    // Someone outside the socket's group cannot even open it: exit 4.
    let r = run_as(&env, &bin, u.outsider, &["status"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("permission denied")
            && r.stderr.contains(&env.sock().display().to_string()),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------
// The three tiers and a flood, against the real daemon.

/// The real daemon (as root here, so its socket group is gid 0) with
/// `admin_group = ADMIN_GROUP` and one group `text` of one instance, and a
/// copy of clearifyctl any user may run.
fn tiered_daemon(redis: &redis_support::RedisServer) -> (daemon_support::Daemon, PathBuf) {
    users();
    let config = daemon_support::fake_config(
        &redis.url(),
        "[group.text]\nqueues = [\"text\"]\ninstances = 1\n",
    )
    .replace(
        "device_id = \"testdev\"",
        &format!("device_id = \"testdev\"\nadmin_group = \"{ADMIN_GROUP}\""),
    );
    let mut d = daemon_support::Daemon::new(&config);
    let bin = d.path("clearifyctl");
    let st = sh("install", &["-m", "0755", BIN, bin.to_str().unwrap()]);
    assert!(st.success(), "install {BIN}: {st}");
    d.start();
    d.running_pid("text-1");
    (d, bin)
}

#[test]
fn three_tiers_readers_admins_and_nobody_else() {
    use std::os::unix::fs::MetadataExt;
    let u = users();
    let redis = redis_support::RedisServer::start();
    let (d, bin) = tiered_daemon(&redis);
    let sock = d.socket();
    let admin_sock = sock.with_file_name("admin.sock");

    // Both sockets 0660: the reader one with the daemon's group, the admin
    // one with the admin group.
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), Gid::effective().as_raw());
    let meta = std::fs::metadata(&admin_sock)
        .unwrap_or_else(|e| panic!("no admin socket {}: {e}\n{}", admin_sock.display(), d.log()));
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), u.admin_gid.as_raw());

    // A reader (in the socket's group, here gid 0) reads ...
    let reader = |args: &[&str]| {
        setpriv_at(
            &sock,
            &bin,
            u.user,
            format!("--groups={}", Gid::effective()),
            args,
        )
    };
    let r = reader(&["status"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("text-1"), "{r:?}");
    // ... but may not stop, and is told which group and how.
    let r = reader(&["stop", "text"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains(ADMIN_GROUP)
            && r.stderr.contains(&format!("adduser USER {ADMIN_GROUP}"))
            && r.stderr.contains("log in again"),
        "{r:?}"
    );
    assert_eq!(d.instance("text-1")["state"], "running");

    // A user in the admin group only (not in the socket's group) reads and
    // stops a group, through admin.sock, with the same --socket.
    let r = setpriv_at(
        &sock,
        &bin,
        u.admin_only,
        "--init-groups".into(),
        &["status"],
    );
    assert_eq!(r.code, 0, "{r:?}\n{}", d.log());
    let r = setpriv_at(
        &sock,
        &bin,
        u.admin_only,
        "--init-groups".into(),
        &["stop", "text"],
    );
    assert_eq!(r.code, 0, "{r:?}\n{}", d.log());
    assert_eq!(d.instance("text-1")["state"], "stopped");
    let r = setpriv_at(
        &sock,
        &bin,
        u.admin_only,
        "--init-groups".into(),
        &["start", "text"],
    );
    assert_eq!(r.code, 0, "{r:?}");

    // Everyone else cannot open either socket, and is told about both.
    let r = setpriv_at(&sock, &bin, u.outsider, "--init-groups".into(), &["status"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("permission denied"), "{r:?}");
    let r = setpriv_at(
        &sock,
        &bin,
        u.outsider,
        "--init-groups".into(),
        &["stop", "text"],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("admin.sock") && r.stderr.contains(ADMIN_GROUP),
        "{r:?}"
    );
    assert_ne!(d.instance("text-1")["state"], "stopped");
}

/// Runs `f` on a new thread that has become `uid`/`gid` with `groups`: raw
/// system calls, which change that thread's credentials only. Sockets it
/// connects keep those credentials.
fn as_user<T: Send + 'static>(
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        // SAFETY: plain system calls on valid buffers; this thread only.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        f()
    })
}

#[test]
fn a_readers_connection_flood_locks_out_neither_root_nor_an_admin() {
    use clearify_workerd::control::protocol::{Envelope, Response, encode_frame};
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    let u = users();
    let redis = redis_support::RedisServer::start();
    let (d, bin) = tiered_daemon(&redis);
    let sock = d.socket();

    // A reader keeps 64 connections open, each sending `version` every
    // second (the flood used 4 s), and reconnects any it loses.
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let busy = Arc::new(Mutex::new(Vec::<String>::new()));
    let flood = {
        let (stop, held, busy, sock) = (stop.clone(), held.clone(), busy.clone(), sock.clone());
        let frame = encode_frame(&Envelope::new(Request::Version)).unwrap();
        as_user(
            u.user.0.as_raw(),
            u.user.1.as_raw(),
            vec![Gid::effective().as_raw()],
            move || {
                let mut conns: Vec<Option<std::os::unix::net::UnixStream>> =
                    (0..64).map(|_| None).collect();
                while !stop.load(Ordering::Relaxed) {
                    let mut alive = 0;
                    for c in conns.iter_mut() {
                        if c.is_none() {
                            *c = std::os::unix::net::UnixStream::connect(&sock).ok();
                        }
                        let Some(s) = c else { continue };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = (&*s).write_all(&frame);
                        match clearify_workerd::control::protocol::read_frame_blocking::<_, Response>(
                            &mut &*s,
                        ) {
                            Ok(Some(Response::Version { .. })) => alive += 1,
                            Ok(Some(Response::Error { message, .. })) => {
                                busy.lock().unwrap().push(message);
                                *c = None;
                            }
                            _ => *c = None,
                        }
                    }
                    held.store(alive, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_secs(1));
                }
            },
        )
    };
    // Let the flood take whatever it can.
    std::thread::sleep(Duration::from_millis(2500));
    let flooded = held.load(Ordering::Relaxed);

    let timed = |who: &str, run: &dyn Fn() -> Run| {
        let t = Instant::now();
        let r = run();
        let took = t.elapsed();
        assert_eq!(r.code, 0, "{who}: {r:?}\n{}", d.log());
        eprintln!("{who}: {took:?}");
        assert!(took < Duration::from_secs(1), "{who} took {took:?}");
    };
    // Root stops and starts the group within a second each.
    timed("root stop", &|| {
        Run::from(
            Command::new(&bin)
                .args(["--socket", sock.to_str().unwrap(), "stop", "text"])
                .output()
                .unwrap(),
        )
    });
    timed("root start", &|| {
        Run::from(
            Command::new(&bin)
                .args(["--socket", sock.to_str().unwrap(), "start", "text"])
                .output()
                .unwrap(),
        )
    });
    d.running_pid("text-1");
    // So does an admin (here one in the admin group only).
    timed("admin stop", &|| {
        setpriv_at(
            &sock,
            &bin,
            u.admin_only,
            "--init-groups".into(),
            &["stop", "text"],
        )
    });
    timed("admin start", &|| {
        setpriv_at(
            &sock,
            &bin,
            u.admin_only,
            "--init-groups".into(),
            &["start", "text"],
        )
    });
    // The flooding reader's own clearifyctl is refused, and told why.
    let r = setpriv_at(
        &sock,
        &bin,
        u.user,
        format!("--groups={}", Gid::effective()),
        &["--request-timeout", "1", "status"],
    );
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("too many connections from uid {}", u.user.0)),
        "{r:?}"
    );
    // The flood held at most the per-user cap, and was told why.
    assert!(flooded <= 8, "the flood held {flooded} connections");
    let busy = busy.lock().unwrap();
    assert!(
        busy.iter()
            .any(|m| m.contains("too many connections from uid")),
        "{busy:?}"
    );
}

/// One status document per broker state, between them every instance state,
/// a pinned instance, a crash-loop exit text and every optional field both
/// set and null.
fn golden_statuses() -> Vec<(Status, bool)> {
    use clearify_workerd::control::protocol::{
        AutoscaleStatus, BrokerStatus, GroupStatus, QueueStatus,
    };
    use clearify_workerd::model::autoscale::Reason;
    use clearify_workerd::model::{BrokerState, InstanceState::*};
    let inst = |id: &str, state| {
        let mut i = control_support::instance(id, 0);
        i.state = state;
        i
    };
    let mut running = inst("text-1", Running);
    running.pid = Some(4242);
    running.cpu_percent = Some(12.375);
    running.heartbeat_age_secs = Some(2.5);
    let mut starting = inst("text-2", Starting);
    starting.pid = Some(4243);
    starting.uptime_secs = Some(0);
    starting.heartbeat_age_secs = None;
    starting.active = None;
    starting.processed = None;
    let mut backoff = inst("text-3", Backoff);
    backoff.pid = None;
    backoff.uptime_secs = None;
    backoff.restarts = 1;
    backoff.last_exit = Some("killed by SIGSEGV".into());
    backoff.memory_bytes = None;
    backoff.cpu_percent = None;
    backoff.cpu_seconds = None;
    backoff.heartbeat_age_secs = None;
    let mut crash = backoff.clone();
    crash.id = "text-4".into();
    crash.node = "text-4@dev".into();
    crash.state = CrashLoop;
    crash.restarts = 7;
    crash.last_exit = Some("exit 1 (5 quick failures in a row)".into());
    let mut stopping = inst("webhook-1", Stopping);
    stopping.pid = Some(5001);
    stopping.active = Some(3);
    stopping.processed = Some(0);
    let mut stopped = backoff.clone();
    stopped.id = "webhook-2".into();
    stopped.node = "webhook-2@dev".into();
    stopped.state = Stopped;
    stopped.restarts = 0;
    stopped.last_exit = Some("exit 0".into());
    stopped.pinned = true;
    let mut oom = stopped.clone();
    oom.id = "webhook-3".into();
    oom.node = "webhook-3@dev".into();
    oom.last_exit = Some("oom-killed".into());
    oom.pinned = false;
    let mut waiting = backoff.clone();
    waiting.id = "mail-1".into();
    waiting.node = "mail-1@dev".into();
    waiting.state = WaitingForBroker;
    waiting.restarts = 0;
    waiting.last_exit = None;
    let broker = |state, error: Option<&str>, since, latency_ms| BrokerStatus {
        state,
        url: "redis://:***@127.0.0.1:6379/0".into(),
        error: error.map(String::from),
        since,
        latency_ms,
    };
    let full = |b: BrokerStatus, summary: &str, groups: Vec<GroupStatus>| {
        let mut s = control_support::canned_status();
        s.daemon.version = "0.0.0-golden".into();
        s.daemon.broker = b;
        s.daemon.summary = summary.into();
        s.groups = groups;
        s
    };
    // The canned "text" group's queues: one with a backlog, one unknown.
    let text = GroupStatus {
        instances: vec![running, starting, backoff, crash],
        ..control_support::canned_status().groups[0].clone()
    };
    let webhook = GroupStatus {
        name: "webhook".into(),
        queues: vec![],
        instances: vec![stopping, stopped, oom],
        autoscale: None,
    };
    // An autoscaled group (issue 15) refused a scale-up for memory.
    let mut scaled = control_support::canned_status().groups[0].clone();
    scaled.autoscale = Some(AutoscaleStatus {
        min: 1,
        max: 4,
        desired: 3,
        current: 2,
        state: Reason::UpRefusedMemory,
        reason: "wants 3; refused: memory: MemAvailable 210 MiB - 150 MiB per instance <= headroom 300 MiB".into(),
        manual: None,
        backlog: Some(57),
        share: 0.4,
    });
    let mail = GroupStatus {
        name: "mail".into(),
        queues: vec![QueueStatus {
            name: "mail".into(),
            backlog: Some(0),
        }],
        instances: vec![waiting],
        autoscale: None,
    };
    let mut idle = full(
        broker(BrokerState::Unknown, None, None, None),
        "idle: no worker groups configured",
        vec![],
    );
    idle.daemon.broker.url = String::new();
    idle.daemon.limits = "off (no cgroup v2)".into();
    idle.daemon.rss_bytes = None;
    vec![
        (
            full(
                broker(BrokerState::Ok, None, Some(1_700_000_000.25), Some(0.42)),
                "4/8 running, text-4 crash-loop (exit 1 (5 quick failures in a row)), broker ok",
                vec![text, webhook],
            ),
            true,
        ),
        (
            full(
                broker(
                    BrokerState::Waiting,
                    Some("connect: Connection refused (os error 111)"),
                    Some(1_700_000_100.5),
                    None,
                ),
                "waiting for broker redis://:***@127.0.0.1:6379/0",
                vec![mail.clone()],
            ),
            false,
        ),
        (
            full(
                broker(
                    BrokerState::Unreachable,
                    Some("timed out"),
                    Some(1_700_000_200.0),
                    None,
                ),
                "1/1 running, broker unreachable",
                vec![mail],
            ),
            false,
        ),
        (idle, false),
        (
            full(
                broker(BrokerState::Ok, None, Some(1_700_000_300.0), Some(0.5)),
                "2/2 running, broker ok",
                vec![scaled],
            ),
            true,
        ),
    ]
}

/// `status --json` (and the compact lines of `status --watch --json`) is a
/// contract: the same situation gives the same bytes, release after
/// release. The golden file was made by the code before the typed core;
/// `CLEARIFY_BLESS=1` rewrites it (only for a deliberate, documented change).
#[test]
fn status_json_is_byte_identical_to_the_golden_file() {
    let env = Env::start();
    let mut out = String::new();
    for (status, journal) in golden_statuses() {
        *env.fake.state.status.lock().unwrap() = status;
        env.fake
            .state
            .logs_to_journal
            .store(journal, Ordering::SeqCst);
        let r = env.run(&["status", "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        out.push_str(&r.stdout);
        let r = run_for(
            env.cmd(&["status", "--watch", "60", "--json"]),
            Duration::from_millis(700),
        );
        let first = r.stdout.lines().next().unwrap_or_default();
        assert!(!first.is_empty(), "{r:?}");
        out.push_str(first);
        out.push('\n');
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/status.json");
    if std::env::var_os("CLEARIFY_BLESS").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("tests/fixtures/status.json");
    assert!(
        out == want,
        "status --json differs from {}:\n--- got\n{out}--- want\n{want}",
        golden.display()
    );
}

#[test]
fn fleet_forget_needs_an_admin_reading_the_fleet_does_not() {
    let u = users();
    let redis = redis_support::RedisServer::start();
    let (d, bin) = tiered_daemon(&redis);
    let sock = d.socket();
    let reader = |args: &[&str]| {
        setpriv_at(
            &sock,
            &bin,
            u.user,
            format!("--groups={}", Gid::effective()),
            args,
        )
    };
    // A reader reads the fleet through the daemon, without Redis credentials ...
    let r = reader(&["fleet", "--json"]);
    assert_eq!(r.code, 0, "{r:?}\n{}", d.log());
    // (Added after that read: it would have pruned a member without record.)
    redis
        .command(&["ZADD", "clearify:fleet", "1", "pi-gone"])
        .unwrap();
    // ... but may not forget a device: exit 4, never forwarded.
    let r = reader(&["fleet", "forget", "pi-gone"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("permission denied"), "{r:?}");
    assert_eq!(
        redis.command(&["ZSCORE", "clearify:fleet", "pi-gone"]),
        Ok("1".to_string())
    );
    // An admin may.
    let r = setpriv_at(
        &sock,
        &bin,
        u.admin_only,
        "--init-groups".into(),
        &["fleet", "forget", "pi-gone"],
    );
    assert_eq!(r.code, 0, "{r:?}\n{}", d.log());
    assert_eq!(
        redis.command(&["ZSCORE", "clearify:fleet", "pi-gone"]),
        Ok(String::new())
    );
}

/// `clearifyctl scale` is an admin request: a reader is refused before the
/// daemon sees it; an admin reaches the daemon, which refuses a group
/// without autoscale with a clear message (exit 1).
#[test]
fn scale_needs_an_admin_and_an_autoscaled_group() {
    let u = users();
    let redis = redis_support::RedisServer::start();
    let (d, bin) = tiered_daemon(&redis);
    let sock = d.socket();
    let r = setpriv_at(
        &sock,
        &bin,
        u.user,
        format!("--groups={}", Gid::effective()),
        &["scale", "text", "2"],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("permission denied"), "{r:?}");
    let admin = |args: &[&str]| setpriv_at(&sock, &bin, u.admin_only, "--init-groups".into(), args);
    let r = admin(&["scale", "text", "2"]);
    assert_eq!(r.code, 1, "{r:?}\n{}", d.log());
    assert!(r.stderr.contains("group text has no autoscale"), "{r:?}");
    let r = admin(&["scale", "nope", "auto"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("unknown group \"nope\""), "{r:?}");
    let r = admin(&["scale", "text", "many"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("neither a count"), "{r:?}");
}

//! The real daemon supervising the fake `celery` (tests/bin/fake-celery),
//! with a real redis-server as its broker, driven by real signals and the
//! real clearifyctl.

#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::fs;
use std::time::{Duration, Instant};

use daemon_support::*;
use nix::sys::signal::Signal;
use redis_support::RedisServer;

const T: Duration = Duration::from_secs(20);

fn kill(pid: u32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let i = s.rfind(')').unwrap();
            !matches!(&s[i + 2..i + 3], "Z" | "X")
        }
        Err(_) => false,
    }
}

#[test]
fn workers_get_the_exact_command_line_env_cwd_and_user() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(
        &redis.url(),
        r#"
[group.text]
queues = ["text_processing"]
concurrency = 2
extra_args = ["--max-tasks-per-child=100"]
env = { OMP_NUM_THREADS = "1" }

[group.billing]
queues = ["payments", "webhooks"]
"#,
    ));
    fs::write(
        d.path("worker.env"),
        "CELERY_BROKER_URL=redis://x/0\nSECRET_KEY=abc\n",
    )
    .unwrap();
    let cfg = fs::read_to_string(d.config_path()).unwrap().replace(
        "user = \"nobody\"",
        "user = \"nobody\"\nenv_file = \"{dir}/worker.env\"\nextra_args = [\"--without-mingle\"]",
    );
    d.write_config(&cfg);
    d.start();
    let pid = d.running_pid("text-1");
    let argv = wait_for(T, "argv record", || {
        let a = d.record("text-1", pid, "argv");
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(
        argv.lines().collect::<Vec<_>>(),
        vec![
            "-A",
            "demo.celery_app",
            "worker",
            "-Q",
            "text_processing",
            "-c",
            "2",
            "-n",
            "text-1@testdev",
            "--loglevel=info",
            "--without-mingle",
            "--max-tasks-per-child=100",
        ]
    );
    let env = d.record("text-1", pid, "env");
    for kv in [
        "PYTHONUNBUFFERED=1",
        "OMP_NUM_THREADS=1",
        "CELERY_BROKER_URL=redis://x/0",
        "SECRET_KEY=abc",
        "CLEARIFY_INSTANCE=text-1",
        "CLEARIFY_GROUP=text",
        "CLEARIFY_NODE=text-1@testdev",
    ] {
        assert!(
            env.lines().any(|l| l == kv),
            "{kv} missing from env:\n{env}"
        );
    }
    assert!(
        !env.lines().any(|l| l.starts_with("NOTIFY_SOCKET=")),
        "daemon env leaks into workers"
    );
    assert_eq!(
        d.record("text-1", pid, "cwd").trim(),
        d.dir.path().to_str().unwrap()
    );
    let billing = d.running_pid("billing-1");
    let bargv = wait_for(T, "billing argv", || {
        let a = d.record("billing-1", billing, "argv");
        (!a.is_empty()).then_some(a)
    });
    assert!(bargv.contains("payments,webhooks\n"), "{bargv}");
    assert!(bargv.contains("billing-1@testdev\n"));
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name(WORKER_USER).unwrap().unwrap();
        assert_eq!(
            d.record("text-1", pid, "uid").trim(),
            nobody.uid.to_string(),
            "workers never run as root"
        );
    }
    // Own session: the worker is its session and process group leader.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(f[2], pid.to_string(), "pgrp");
    assert_eq!(f[3], pid.to_string(), "session");
}

#[test]
fn a_crashing_worker_is_restarted_with_backoff_and_reports_crash_loop() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(
        &redis.url(),
        r#"
[group.bad]
queues = ["q"]
env = { FAKE_MODE = "exit", FAKE_EXIT_CODE = "7" }
"#,
    ));
    d.start();
    let i = d.wait_state("bad-1", "crash-loop", T);
    assert!(i["restarts"].as_u64().unwrap() >= 3, "{i}");
    let last = i["last_exit"].as_str().unwrap();
    assert!(last.starts_with("exit 7"), "{last}");
    assert!(last.contains("quick failures in a row"), "{last}");
    // The delay doubles: over a few seconds only a handful of starts
    // happened (50 ms, 100, 200, 400, 800, 1600, 2000 …), not hundreds.
    std::thread::sleep(Duration::from_secs(3));
    let starts = d.recorded_pids("bad-1").len();
    assert!((4..=12).contains(&starts), "{starts} starts in ~3 s");
    let log = d.log();
    assert!(log.contains("crash-looping"), "{log}");
    let summary = d.status()["daemon"]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(summary.contains("bad-1 crash-loop (exit 7"), "{summary}");
    // Also between two of its short starts.
    for _ in 0..20 {
        assert_eq!(d.instance("bad-1")["state"], "crash-loop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_worker_is_replaced_and_its_children_are_gone() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(
        &redis.url(),
        r#"
[group.text]
queues = ["q"]
env = { FAKE_MODE = "children" }
"#,
    ));
    d.start();
    let pid = d.running_pid("text-1");
    // Its children (two of them in their own sessions) are running.
    let members = wait_for(T, "children", || {
        let p = processes_of_daemon(d.pid());
        (p.len() >= 4).then_some(p)
    });
    kill(pid, Signal::SIGKILL);
    let i = d.wait_restarted("text-1", pid, T);
    assert_eq!(i["restarts"], 1);
    assert_eq!(i["last_exit"], "killed by SIGKILL");
    for m in members {
        if m as u32 != pid {
            wait_for(T, "old child gone", || (!alive(m as u32)).then_some(()));
        }
    }
    assert!(d.log().contains("killed by SIGKILL"));
}

#[test]
fn stop_escalates_term_quit_kill_and_leaves_nothing() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(
        &redis.url(),
        r#"
[group.stubborn]
queues = ["q"]
stop_timeout = "1s"
env = { FAKE_MODE = "ignore-term" }

[group.kids]
queues = ["k"]
env = { FAKE_MODE = "children" }
"#,
    ));
    d.start();
    let stubborn = d.running_pid("stubborn-1");
    d.running_pid("kids-1");
    wait_for(T, "children", || {
        (processes_of_daemon(d.pid()).len() >= 5).then_some(())
    });
    let t0 = Instant::now();
    let out = d.ctl(&["stop", "all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_state("stubborn-1", "stopped", T);
    d.wait_state("kids-1", "stopped", T);
    // The stubborn one ignored SIGTERM for stop_timeout and died on SIGQUIT.
    assert!(t0.elapsed() >= Duration::from_millis(900));
    assert!(!alive(stubborn));
    let i = d.instance("stubborn-1");
    assert_eq!(i["last_exit"], "killed by SIGQUIT");
    assert_eq!(i["pinned"], true);
    let log = d.log();
    assert!(log.contains("SIGQUIT (cold shutdown)"), "{log}");
    assert_eq!(
        processes_of_daemon(d.pid()),
        Vec::<i32>::new(),
        "nothing left"
    );
    // Pinned: still stopped a while later.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.instance("kids-1")["state"], "stopped");
    // And started again on request.
    assert!(d.ctl(&["start", "kids"]).status.success());
    d.wait_state("kids-1", "running", T);
}

#[test]
fn daemon_shutdown_stops_all_workers_in_parallel_and_leaves_no_process() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(
        &redis.url(),
        r#"
[group.a]
queues = ["a"]
instances = 3
env = { FAKE_MODE = "children" }

[group.b]
queues = ["b"]
instances = 2
"#,
    ));
    d.start();
    for id in ["a-1", "a-2", "a-3", "b-1", "b-2"] {
        d.running_pid(id);
    }
    let daemon_pid = d.pid();
    wait_for(T, "all processes", || {
        (processes_of_daemon(daemon_pid).len() >= 5 + 3 * 3).then_some(())
    });
    d.signal(Signal::SIGTERM);
    let code = d.wait_exit(T);
    assert_eq!(code, 0, "{}", d.log());
    assert_eq!(processes_of_daemon(daemon_pid), Vec::<i32>::new());
    assert!(!d.socket().exists(), "socket removed on exit");
    let log = d.log();
    assert!(
        log.contains("warm shutdown a-1"),
        "workers got SIGTERM:\n{log}"
    );
}

#[test]
fn binary_garbage_and_huge_lines_are_handled_without_loss() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(
        &redis.url(),
        r#"
[group.garbage]
queues = ["g"]
env = { FAKE_MODE = "garbage" }

[group.long]
queues = ["l"]
env = { FAKE_MODE = "long-line" }
"#,
    ));
    d.start();
    d.running_pid("garbage-1");
    d.running_pid("long-1");
    wait_for(T, "end of long line", || {
        d.log().contains("long-1 | end-of-long-line").then_some(())
    });
    let log = fs::read(d.path("daemon.log")).unwrap();
    // The whole 1 MiB line reached stderr (in 48 KiB pieces), nothing lost.
    let xs = log.iter().filter(|b| **b == b'x').count();
    assert!(xs >= 1024 * 1024, "only {xs} of 1048576 bytes arrived");
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("garbage-1 | before"));
    assert!(
        text.contains("garbage-1 | after"),
        "lines after garbage survive"
    );
    let out = d.ctl(&["logs", "garbage", "-n", "10"]);
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("after"), "{logs}");
    // The daemon is fine.
    assert_eq!(d.instance("long-1")["state"], "running");
}

#[test]
fn sighup_reload_touches_only_changed_groups_and_keeps_old_config_on_error() {
    let redis = RedisServer::start();
    let groups = r#"
[group.text]
queues = ["text_processing"]
concurrency = 2
instances = 2

[group.billing]
queues = ["payments", "webhooks"]
"#;
    let mut d = Daemon::new(&fake_config(&redis.url(), groups));
    d.start();
    let t1 = d.running_pid("text-1");
    let t2 = d.running_pid("text-2");
    let b1 = d.running_pid("billing-1");

    // Change text's concurrency, add a group.
    let new = groups.replace("concurrency = 2", "concurrency = 3")
        + "\n[group.emails]\nqueues = [\"emails\"]\n";
    d.write_config(&fake_config(&redis.url(), &new));
    d.signal(Signal::SIGHUP);
    let n1 = d.wait_restarted("text-1", t1, T)["pid"].as_u64().unwrap() as u32;
    let n2 = d.wait_restarted("text-2", t2, T)["pid"].as_u64().unwrap() as u32;
    d.running_pid("emails-1");
    assert_eq!(
        d.instance("billing-1")["pid"],
        b1,
        "unchanged group untouched"
    );
    let argv = wait_for(T, "new argv", || {
        let a = d.record("text-2", n2, "argv");
        (!a.is_empty()).then_some(a)
    });
    assert!(argv.contains("-c\n3\n"), "{argv}");
    // Instance by instance: text-2 was started after text-1 was up again.
    let started = |pid: u32| {
        fs::metadata(
            d.records()
                .join(format!("text-{}.{pid}.argv", if pid == n1 { 1 } else { 2 })),
        )
        .unwrap()
        .modified()
        .unwrap()
    };
    assert!(started(n2) > started(n1));

    // A broken config is rejected; the old one keeps running.
    d.write_config(&fake_config(
        &redis.url(),
        "[group.text]\nqueues = []\nconcurrency = 0\n",
    ));
    d.signal(Signal::SIGHUP);
    wait_for(T, "rejection logged", || {
        d.log().contains("old config keeps running").then_some(())
    });
    let log = d.log();
    assert!(log.contains("workers.toml:"), "errors name the file: {log}");
    assert_eq!(d.instance("billing-1")["pid"], b1);
    assert_eq!(d.instance("text-1")["pid"], n1);
    assert_eq!(d.instance("emails-1")["state"], "running");

    // clearifyctl reload says the same and exits 1.
    let out = d.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("old config kept"), "{text}");
    assert!(text.contains("queues"), "{text}");
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(&redis.url(), ""));
    d.start();
    let out = std::process::Command::new(DAEMON)
        .arg("--config")
        .arg(d.config_path())
        .arg("--log-target")
        .arg("stderr")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another clearify-workerd is already running"),
        "{err}"
    );
    // The first one is untouched.
    assert!(d.ctl(&["status"]).status.success());
}

#[test]
fn an_invalid_config_is_refused_at_start_with_every_error() {
    let d = Daemon::new("[daemon]\nsocket = 5\nbogus = 1\n[group.Bad]\ninstances = 0\n");
    let out = std::process::Command::new(DAEMON)
        .arg("--config")
        .arg(d.config_path())
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let path = d.config_path().display().to_string();
    assert!(
        err.contains(&format!("{path}:2:10: error: daemon.socket")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:3:1: error: daemon.bogus")),
        "{err}"
    );
    assert!(err.contains("group.Bad"), "{err}");
}

#[test]
fn check_prints_the_plan() {
    let redis = RedisServer::start();
    let d = Daemon::new(&fake_config(
        &redis.url(),
        "[group.text]\nqueues = [\"text_processing\"]\nconcurrency = 2\nmemory_max = \"200M\"\n",
    ));
    let out = std::process::Command::new(DAEMON)
        .arg("--config")
        .arg(d.config_path())
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "-A demo.celery_app worker -Q text_processing -c 2 -n text-1@testdev --loglevel=info"
        ),
        "{text}"
    );
    assert!(text.contains("200"), "limits shown: {text}");
}

#[test]
fn many_clients_while_workers_crash() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(
        &redis.url(),
        r#"
[group.bad]
queues = ["q"]
instances = 3
restart_delay = "10ms"
restart_delay_max = "50ms"
env = { FAKE_MODE = "exit" }

[group.good]
queues = ["g"]
"#,
    ));
    d.start();
    let good = d.running_pid("good-1");
    let socket = d.socket();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                for _ in 0..20 {
                    let out = std::process::Command::new(CTL)
                        .arg("--socket")
                        .arg(&socket)
                        .args(["status", "--json"])
                        .output()
                        .unwrap();
                    if out.status.success()
                        && serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok()
                    {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let total: i32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 16 * 20, "every status call answered");
    assert_eq!(d.instance("good-1")["pid"], good);
    assert!(d.instance("bad-1")["restarts"].as_u64().unwrap() > 0);
}

#[test]
fn workers_wait_for_the_broker_and_start_when_it_comes_up() {
    let mut redis = RedisServer::new_stopped(None);
    let url = redis.url();
    let mut d = Daemon::new(&fake_config(
        &url,
        "[group.text]\nqueues = [\"q\"]\ninstances = 2\n",
    ));
    d.start();
    std::thread::sleep(Duration::from_millis(700));
    let s = d.status();
    assert_eq!(s["daemon"]["broker"]["state"], "waiting");
    assert!(
        s["daemon"]["broker"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("refused"),
        "{s}"
    );
    assert_eq!(d.instance("text-1")["state"], "waiting-for-broker");
    assert!(
        d.recorded_pids("text-1").is_empty(),
        "no worker started into a void"
    );
    let summary = s["daemon"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("waiting for broker redis://127.0.0.1:"),
        "{summary}"
    );
    // By now the gate's retry delay has grown to ~6 s; the port watch
    // still starts the workers within about a second of Redis coming up.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(d.instance("text-1")["state"], "waiting-for-broker");
    redis.restart();
    let t0 = Instant::now();
    d.wait_state("text-1", "starting", T);
    d.wait_state("text-2", "running", T);
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "workers started {:?} after Redis came up",
        t0.elapsed()
    );
    assert_eq!(d.status()["daemon"]["broker"]["state"], "ok");
    drop(redis);
}

#[test]
fn silent_and_stalled_workers_are_restarted_gracefully() {
    let redis = RedisServer::start();
    let port = redis.port().to_string();
    let mut d = Daemon::new(&fake_config(
        &redis.url(),
        &format!(
            r#"
[group.silent]
queues = ["silentq"]
heartbeat_timeout = "2s"
stall_timeout = "0s"
env = {{ FAKE_MODE = "heartbeat-stop", FAKE_REDIS_PORT = "{port}" }}

[group.stalled]
queues = ["stallq"]
heartbeat_timeout = "0s"
stall_timeout = "2s"
env = {{ FAKE_MODE = "stalled", FAKE_REDIS_PORT = "{port}" }}

[group.healthy]
queues = ["healthyq"]
heartbeat_timeout = "2s"
stall_timeout = "2s"
env = {{ FAKE_MODE = "stalled", FAKE_REDIS_PORT = "{port}" }}
"#
        ),
    ));
    d.start();
    let healthy = d.running_pid("healthy-1");
    // Work waits in the stalled group's queue; nothing in the healthy one's.
    redis.command(&["LPUSH", "stallq", "a", "b", "c"]).unwrap();
    let silent = d.running_pid("silent-1");
    let stalled = d.running_pid("stalled-1");
    // Heartbeats arrive (status shows their age) …
    d.wait_instance("stalled-1", "sending heartbeats", T, |i| {
        !i["heartbeat_age_secs"].is_null()
    });
    // … then the silent one stops sending: restarted after 2 s.
    d.wait_restarted("silent-1", silent, T);
    assert!(d.log().contains("no heartbeat for"), "{}", d.log());
    // The stalled one has backlog 3 but no progress: restarted.
    d.wait_restarted("stalled-1", stalled, T);
    let log = d.log();
    assert!(log.contains("stalled: backlog 3"), "{log}");
    // Gracefully: SIGTERM, so the fake said "warm shutdown".
    assert!(log.contains("warm shutdown silent-1"), "{log}");
    assert!(log.contains("warm shutdown stalled-1"), "{log}");
    // Backlog shows in status.
    let s = d.status();
    let g = s["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "stalled")
        .unwrap()
        .clone();
    assert_eq!(g["queues"][0]["name"], "stallq");
    assert_eq!(g["queues"][0]["backlog"], 3);
    // An idle worker with heartbeats and no backlog is left alone.
    assert_eq!(d.instance("healthy-1")["pid"], healthy);
}

/// Starts the daemon of `d` as systemd would for `Type=notify`: with a
/// NOTIFY_SOCKET (bound here, `timeout` per receive) and, if given,
/// WATCHDOG_USEC. Returns the socket the notifications arrive on.
fn start_with_notify_socket(
    d: &mut Daemon,
    watchdog_usec: Option<&str>,
    timeout: Duration,
) -> std::os::unix::net::UnixDatagram {
    let sock_path = d.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    let log = fs::File::create(d.path("daemon.log")).unwrap();
    let mut cmd = std::process::Command::new(DAEMON);
    cmd.arg("--config")
        .arg(d.config_path())
        .arg("--log-target")
        .arg("stderr")
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("WATCHDOG_USEC")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(usec) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", usec);
    }
    d.child = Some(cmd.spawn().unwrap());
    sock
}

#[test]
fn sd_notify_ready_status_and_stopping_reach_notify_socket() {
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(
        &redis.url(),
        "[group.text]\nqueues = [\"q\"]\n",
    ));
    let sock = start_with_notify_socket(&mut d, Some("400000"), Duration::from_secs(20));
    let mut seen: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut recv = |seen: &mut Vec<String>| {
        let n = sock.recv(&mut buf).expect("a notification");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        seen.push(msg.clone());
        msg
    };
    // READY=1 first, once the socket listens.
    assert!(recv(&mut seen).contains("READY=1"), "{seen:?}");
    // Then STATUS lines until all workers run, and watchdog pings.
    let mut watchdog = 0;
    loop {
        let m = recv(&mut seen);
        if m.contains("WATCHDOG=1") {
            watchdog += 1;
        }
        if m.contains("STATUS=1/1 workers running, broker ok") && watchdog > 0 {
            break;
        }
        assert!(seen.len() < 200, "{seen:?}");
    }
    d.signal(Signal::SIGTERM);
    loop {
        let m = recv(&mut seen);
        if m.contains("STOPPING=1") {
            break;
        }
    }
    // Right after STOPPING=1 it asks for time to drain the workers.
    assert!(recv(&mut seen).contains("EXTEND_TIMEOUT_USEC="), "{seen:?}");
    assert_eq!(d.wait_exit(T), 0);
}

#[test]
fn an_idle_daemon_without_groups_says_so_in_status_at_once() {
    // No groups, no broker to wait for, no watchdog: no event will come, and
    // the STATUS= line must not wait for one.
    let redis = RedisServer::start();
    let mut d = Daemon::new(&fake_config(&redis.url(), ""));
    let sock = start_with_notify_socket(&mut d, None, Duration::from_secs(10));
    let mut seen: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !seen
        .iter()
        .any(|m| m.contains("STATUS=idle: no worker groups"))
    {
        match sock.recv(&mut buf) {
            Ok(n) => seen.push(String::from_utf8_lossy(&buf[..n]).to_string()),
            Err(e) => panic!(
                "no idle STATUS= within 10 s ({e}); got {seen:?}\n{}",
                d.log()
            ),
        }
    }
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T), 0);
}

// ---- issue 12: hardening of the process side ----

/// A config with `redis` as its broker, whose workers run
/// `command`; `groups` is TOML for the `[group.*]` sections. `user` is the
/// `[celery] user` line (or empty).
fn script_config(
    redis: &RedisServer,
    command: &std::path::Path,
    user: &str,
    groups: &str,
) -> String {
    format!(
        r#"[daemon]
socket = "{{dir}}/control.sock"
device_id = "testdev"

[broker]
url = "{}"
check_interval = "1s"

[celery]
app = "demo.celery_app"
command = "{}"
workdir = "{{dir}}"
{user}

[defaults]
stop_timeout = "2s"
restart_delay = "50ms"
restart_delay_max = "200ms"
stable_after = "2s"
env = {{ FAKE_RECORD_DIR = "{{records}}" }}

{groups}
"#,
        redis.url(),
        command.display()
    )
}

/// A uid (and gid) that no account and no other test uses, for a daemon
/// that runs unprivileged.
const DAEMON_UID: u32 = 47_811;
/// The uid of the fork bomb test: a process limit counts every process of
/// a uid, so each test that fills one has its own.
const BOMB_UID: u32 = 47_812;
/// The uid of the refused-fork test.
const NPROC_UID: u32 = 47_813;

/// At drop, SIGKILL every process of `uid` (a uid only one test uses) until
/// none is left: a failing test leaves no fork loop behind.
struct KillUidOnDrop(u32);

impl Drop for KillUidOnDrop {
    fn drop(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let pids: Vec<u32> = fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| {
                    proc_status_field(*p, "Uid")
                        .is_some_and(|u| u.split_whitespace().next() == Some(&self.0.to_string()))
                })
                .collect();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root (it starts the daemon under another uid); run the tests as root"
    );
}

#[test]
fn a_setsid_env_i_grandchild_dies_with_stop_and_with_the_daemon() {
    let redis = RedisServer::start();
    // Each worker leaves a grandchild in a session of its own, without the
    // daemon's environment: one whose parent exits at once (so it comes
    // back to the subreaper while the worker runs), one whose worker exits.
    let dir = tempfile::tempdir().unwrap();
    // Arguments unique to this test run, to find the grandchildren by.
    let stays_arg = format!("3011.{}", std::process::id());
    let leaves_arg = format!("3012.{}", std::process::id());
    let script = write_script(
        dir.path(),
        "worker",
        &format!(
            "#!/bin/sh\nif [ \"$MODE\" = leaves ]; then\n    setsid env -i sleep {leaves_arg} &\n    sleep 0.3\n    exit 0\nfi\nsh -c 'setsid env -i sleep {stays_arg} &'\nexec sleep 100000\n"
        ),
    );
    let user = format!("user = \"{WORKER_USER}\"");
    let mut d = Daemon::new(&script_config(
        &redis,
        &script,
        &user,
        r#"
[group.stays]
queues = ["s"]

[group.leaves]
queues = ["l"]
env = { MODE = "leaves" }
"#,
    ));
    d.start();
    d.running_pid("stays-1");
    wait_for(T, "the detached grandchildren", || {
        (!processes_with_arg(&stays_arg).is_empty() && !processes_with_arg(&leaves_arg).is_empty())
            .then_some(())
    });
    // Stop: the run's grandchildren go with it.
    let out = d.ctl(&["stop", "all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_state("stays-1", "stopped", T);
    d.wait_state("leaves-1", "stopped", T);
    wait_for(T, "no grandchild after stop", || {
        (processes_with_arg(&stays_arg).is_empty() && processes_with_arg(&leaves_arg).is_empty())
            .then_some(())
    });
    // Daemon exit: the same, even when the worker is still running.
    assert!(d.ctl(&["start", "stays"]).status.success());
    d.running_pid("stays-1");
    wait_for(T, "a new grandchild", || {
        (!processes_with_arg(&stays_arg).is_empty()).then_some(())
    });
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T), 0, "{}", d.log());
    assert_eq!(
        processes_with_arg(&stays_arg),
        Vec::<i32>::new(),
        "{}",
        d.log()
    );
    assert_eq!(
        processes_with_arg(&leaves_arg),
        Vec::<i32>::new(),
        "{}",
        d.log()
    );
}

/// A worker that notes SIGTERM in FAKE_RECORD_DIR/<instance>.<pid>.term
/// (then exits after a short drain), or ignores it when WORKER_IGNORE_TERM
/// is set.
const WARM_WORKER: &str = r#"#!/bin/sh
if [ -n "$WORKER_IGNORE_TERM" ]; then
    trap '' TERM
else
    trap 'touch "$FAKE_RECORD_DIR/$CLEARIFY_INSTANCE.$$.term"; sleep 0.3; exit 0' TERM
fi
echo $$ > "$FAKE_RECORD_DIR/$CLEARIFY_INSTANCE.$$.argv"
while :; do
    sleep 1 &
    wait $!
done
"#;

#[test]
fn a_restarted_daemon_stops_the_workers_of_a_killed_one_before_starting_its_own() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = write_script(dir.path(), "worker", WARM_WORKER);
    let user = format!("user = \"{WORKER_USER}\"");
    let mut d = Daemon::new(&script_config(
        &redis,
        &worker,
        &user,
        r#"
[group.warm]
queues = ["w"]

[group.deaf]
queues = ["d"]
stop_timeout = "1s"
env = { WORKER_IGNORE_TERM = "1" }
"#,
    ));
    d.start();
    let warm = d.running_pid("warm-1");
    let deaf = d.running_pid("deaf-1");
    d.signal(Signal::SIGKILL);
    d.wait_exit(T);
    assert!(
        alive(warm) && alive(deaf),
        "the workers outlive a SIGKILLed daemon"
    );
    d.start();
    let warm2 = d.running_pid("warm-1");
    let deaf2 = d.running_pid("deaf-1");
    assert!(warm2 != warm && deaf2 != deaf);
    assert!(!alive(warm), "the old warm-1 is gone:\n{}", d.log());
    assert!(!alive(deaf), "the old deaf-1 is gone:\n{}", d.log());
    assert!(
        d.records().join(format!("warm-1.{warm}.term")).exists(),
        "the old warm-1 got SIGTERM first (a warm stop):\n{}",
        d.log()
    );
    for node in ["warm-1@testdev", "deaf-1@testdev"] {
        // One worker: one session (a child just forked, before its exec,
        // still shows the worker's arguments).
        let mine = processes_with_arg(&worker.display().to_string());
        let mut sessions: Vec<String> = processes_with_arg(node)
            .into_iter()
            .filter(|p| mine.contains(p))
            .filter_map(|p| {
                let s = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                Some(s[s.rfind(')')? + 2..].split(' ').nth(3)?.to_string())
            })
            .collect();
        sessions.sort();
        sessions.dedup();
        assert_eq!(sessions.len(), 1, "one worker per node name {node}");
    }
    let log = d.log();
    assert!(log.contains("left by a previous run"), "{log}");
    // An abort (what a panic is in the release build, panic = "abort")
    // leaves the workers the same way; the next daemon stops them too.
    d.signal(Signal::SIGABRT);
    d.wait_exit(T);
    assert!(alive(warm2), "the workers outlive an aborted daemon");
    d.start();
    let warm3 = d.running_pid("warm-1");
    assert_ne!(warm3, warm2);
    assert!(!alive(warm2), "the old warm-1 is gone:\n{}", d.log());
    assert!(
        d.records().join(format!("warm-1.{warm2}.term")).exists(),
        "the old warm-1 got SIGTERM first:\n{}",
        d.log()
    );
}

#[test]
fn a_pid_record_whose_process_is_another_one_is_not_killed() {
    let redis = RedisServer::start();
    // A record that names a live process with another start time (a pid
    // reused since) is dropped, and that process lives on.
    let dir = tempfile::tempdir().unwrap();
    let worker = write_script(dir.path(), "worker", WARM_WORKER);
    let user = format!("user = \"{WORKER_USER}\"");
    let mut d = Daemon::new(&script_config(
        &redis,
        &worker,
        &user,
        "[group.warm]\nqueues = [\"w\"]\n",
    ));
    d.start();
    let warm = d.running_pid("warm-1");
    d.signal(Signal::SIGKILL);
    d.wait_exit(T);
    kill(warm, Signal::SIGKILL);
    wait_for(T, "the old worker gone", || (!alive(warm)).then_some(()));
    let mut bystander = std::process::Command::new("sleep")
        .arg("3013.5")
        .spawn()
        .unwrap();
    let state = d.path("workers");
    let rec = fs::read_dir(&state)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("warm-1"))
        .expect("a record for warm-1")
        .path();
    let text = fs::read_to_string(&rec).unwrap();
    let forged = text.replacen(
        &format!("pid={warm}\n"),
        &format!("pid={}\n", bystander.id()),
        1,
    );
    assert_ne!(forged, text, "the record names the pid: {text}");
    fs::write(&rec, forged).unwrap();
    d.start();
    d.running_pid("warm-1");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander lives"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

/// Start `d` as `uid` (its directory handed over) with RLIMIT_NPROC =
/// `nproc`, and wait until it answers.
fn spawn_unprivileged_with_nproc(d: &mut Daemon, uid: u32, nproc: u64) {
    d.chown_to(uid, uid);
    let mut cmd = d.command(std::process::Command::new(DAEMON));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let lim = libc::rlimit {
                rlim_cur: nproc,
                rlim_max: nproc,
            };
            if libc::setgroups(0, std::ptr::null()) < 0
                || libc::setgid(uid) < 0
                || libc::setrlimit(libc::RLIMIT_NPROC, &lim) < 0
                || libc::setuid(uid) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    d.spawn_command(cmd);
    d.wait_ready();
}

/// `n` processes of `uid` that only wait (forked as root, so the daemon's
/// process limit does not stop them), to fill that uid's limit.
fn fillers(uid: u32, n: u64) -> Vec<i32> {
    (0..n)
        .map(|_| {
            // SAFETY: the child makes async-signal-safe calls only.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                unsafe {
                    if libc::setgroups(0, std::ptr::null()) < 0
                        || libc::setgid(uid) < 0
                        || libc::setuid(uid) < 0
                    {
                        libc::_exit(1);
                    }
                    loop {
                        libc::pause();
                    }
                }
            }
            pid
        })
        .collect()
}

fn kill_fillers(pids: &[i32]) {
    for p in pids {
        // SAFETY: plain system calls on our own children.
        unsafe {
            libc::kill(*p, libc::SIGKILL);
            libc::waitpid(*p, std::ptr::null_mut(), 0);
        }
    }
}

/// The live processes (threads count too) of `uid`.
fn tasks_of_uid(uid: u32) -> u64 {
    let mut n = 0;
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if proc_status_field(pid, "Uid")
            .is_some_and(|u| u.split_whitespace().next() == Some(&uid.to_string()))
        {
            n += proc_status_field(pid, "Threads")
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(1);
        }
    }
    n
}

#[test]
fn a_refused_fork_is_logged_and_retried_not_fatal() {
    let redis = RedisServer::start();
    require_root("the process limit test");
    let dir = tempfile::tempdir().unwrap();
    let arg = format!("3018.{}", std::process::id());
    let worker = write_script(
        dir.path(),
        "worker",
        &format!("#!/bin/sh\nexec sleep {arg}\n"),
    );
    let mut d = Daemon::new(&script_config(
        &redis,
        &worker,
        "",
        "[group.g]\nqueues = [\"q\"]\n",
    ));
    let _cleanup = KillUidOnDrop(NPROC_UID);
    spawn_unprivileged_with_nproc(&mut d, NPROC_UID, 40);
    let pid = d.running_pid("g-1");
    // No room for one more process of the daemon's uid (limit 40), even
    // once the worker is gone: its restart is refused (EAGAIN).
    let n = tasks_of_uid(NPROC_UID);
    let filled = fillers(NPROC_UID, 41u64.saturating_sub(n));
    kill(pid, Signal::SIGKILL);
    wait_for(T, "a refused restart in the log", || {
        d.log()
            .contains("Resource temporarily unavailable")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let child = d.child.as_mut().unwrap();
    let alive_daemon = child.try_wait().unwrap().is_none();
    // Room again: the next retry starts it.
    kill_fillers(&filled);
    assert!(alive_daemon, "the daemon lives:\n{}", d.log());
    let again = d.running_pid("g-1");
    assert_ne!(again, pid);
    assert_eq!(processes_with_arg(&arg), vec![again as i32]);
}

#[test]
fn stopping_a_term_ignoring_worker_under_a_fork_bomb_leaves_the_daemon_running() {
    let redis = RedisServer::start();
    require_root("the fork bomb test");
    // The daemon and its worker share a uid whose process limit the worker
    // keeps exhausted (bash retries a refused fork), so the daemon can start
    // no thread and no process. The worker ignores SIGTERM and SIGQUIT:
    // only the kill path ends it.
    let dir = tempfile::tempdir().unwrap();
    let sleeper = format!("3014.{}", std::process::id());
    let bomb = write_script(
        dir.path(),
        "bomb",
        &format!(
            "#!/bin/sh\ntrap '' TERM QUIT\nbash -c 'while :; do sleep {sleeper} & done' >/dev/null 2>&1 &\nexec sleep 100000\n"
        ),
    );
    let mut d = Daemon::new(&script_config(
        &redis,
        &bomb,
        "",
        "[group.bomb]\nqueues = [\"b\"]\nstop_timeout = \"1s\"\n",
    ));
    let _cleanup = KillUidOnDrop(BOMB_UID);
    spawn_unprivileged_with_nproc(&mut d, BOMB_UID, 40);
    let main = d.running_pid("bomb-1");
    wait_for(T, "the fork bomb to fill the process limit", || {
        (processes_with_arg(&sleeper).len() >= 30).then_some(())
    });
    // Past the keep-alive of any thread the runtime started at start-up
    // (10 s), so a kill path that needs a new thread cannot have one.
    std::thread::sleep(Duration::from_secs(11));
    let out = d.ctl(&["stop", "bomb"]);
    assert!(
        out.status.success(),
        "{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    d.wait_state("bomb-1", "stopped", T);
    assert!(!alive(main));
    wait_for(T, "the bomb's processes gone", || {
        processes_with_arg(&sleeper).is_empty().then_some(())
    });
    let child = d.child.as_mut().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon lives:\n{}",
        d.log()
    );
    assert!(d.ctl(&["version"]).status.success());
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_daemon_with_ambient_capabilities_drops_workers_to_the_user_without_any() {
    let redis = RedisServer::start();
    require_root("the capability test");
    let nobody = nix::unistd::User::from_name(WORKER_USER).unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The worker records whether it can signal its parent, the daemon, and
    // read its environment.
    let worker = write_script(
        dir.path(),
        "worker",
        "#!/bin/sh\nif kill -0 $PPID 2>/dev/null; then r=yes; else r=no; fi\necho $r > \"$FAKE_RECORD_DIR/$CLEARIFY_INSTANCE.$$.cansignal\"\nif cat /proc/$PPID/environ >/dev/null 2>&1; then r=yes; else r=no; fi\necho $r > \"$FAKE_RECORD_DIR/$CLEARIFY_INSTANCE.$$.canreadenv\"\nexec sleep 3016.5\n",
    );
    let mut d = Daemon::new(&script_config(
        &redis,
        &worker,
        &format!("user = \"{WORKER_USER}\""),
        "[group.g]\nqueues = [\"q\"]\n",
    ));
    spawn_as_daemon_uid(&mut d, "+setuid,+setgid,+kill");
    d.wait_ready();
    let pid = d.running_pid("g-1");
    assert_eq!(
        proc_status_field(d.pid(), "CapAmb").as_deref(),
        Some("00000000000000e0"),
        "the daemon runs with ambient CAP_KILL, CAP_SETGID, CAP_SETUID"
    );
    let uid = proc_status_field(pid, "Uid").unwrap();
    assert!(
        uid.split_whitespace().all(|u| u == nobody.uid.to_string()),
        "the worker runs as {WORKER_USER}: Uid {uid}\n{}",
        d.log()
    );
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(
            proc_status_field(pid, cap).as_deref(),
            Some("0000000000000000"),
            "{cap} of the worker"
        );
    }
    let can = wait_for(T, "the worker's signal check", || {
        let r = d.record("g-1", pid, "cansignal");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(can.trim(), "no", "the worker cannot signal the daemon");
    let env = wait_for(T, "the worker's environ check", || {
        let r = d.record("g-1", pid, "canreadenv");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(
        env.trim(),
        "no",
        "the worker cannot read the daemon's environment"
    );
    // And the daemon, with CAP_KILL, stops it.
    assert!(d.ctl(&["stop", "g"]).status.success());
    d.wait_state("g-1", "stopped", T);
    assert!(!alive(pid));
}

/// Starts `d` as the unprivileged `DAEMON_UID` (no groups), through
/// `setpriv`, with `caps` (e.g. "+setuid,+kill") inheritable and ambient,
/// or none when empty.
fn spawn_as_daemon_uid(d: &mut Daemon, caps: &str) {
    d.chown_to(DAEMON_UID, DAEMON_UID);
    let mut setpriv = std::process::Command::new("setpriv");
    setpriv.args([
        format!("--reuid={DAEMON_UID}"),
        format!("--regid={DAEMON_UID}"),
        "--clear-groups".to_string(),
    ]);
    if !caps.is_empty() {
        setpriv.args([
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
        ]);
    }
    setpriv.arg(DAEMON);
    let cmd = d.command(setpriv);
    d.spawn_command(cmd);
}

#[test]
fn an_unprivileged_daemon_without_setuid_refuses_another_worker_user() {
    let redis = RedisServer::start();
    require_root("the capability test");
    let dir = tempfile::tempdir().unwrap();
    let worker = write_script(dir.path(), "worker", WARM_WORKER);
    let mut d = Daemon::new(&script_config(
        &redis,
        &worker,
        &format!("user = \"{WORKER_USER}\""),
        "[group.g]\nqueues = [\"q\"]\n",
    ));
    spawn_as_daemon_uid(&mut d, "");
    let code = d.wait_exit(T);
    assert_eq!(code, 1);
    let log = d.log();
    assert!(log.contains("[celery].user"), "{log}");
    assert!(log.contains("CAP_SETUID"), "{log}");
}

#[test]
fn workers_get_only_fds_0_1_2_whatever_the_daemon_inherited() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // exec: the worker's own fds are only those it inherited.
    let worker = write_script(dir.path(), "worker", "#!/bin/sh\nexec sleep 3017.5\n");
    let mut d = Daemon::new(&script_config(
        &redis,
        &worker,
        &format!("user = \"{WORKER_USER}\""),
        "[group.g]\nqueues = [\"q\"]\n",
    ));
    let extra = fs::File::create(d.path("inherited")).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&extra);
    let mut cmd = d.command(std::process::Command::new(DAEMON));
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // fd 7, open on a file, without FD_CLOEXEC.
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    d.spawn_command(cmd);
    d.wait_ready();
    assert!(
        fs::read_link(format!("/proc/{}/fd/7", d.pid())).is_ok(),
        "the daemon inherited fd 7"
    );
    let pid = d.running_pid("g-1");
    let mut fds: Vec<u32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    assert_eq!(fds, vec![0, 1, 2], "the worker's fds");
}

#[test]
fn the_daemon_log_to_a_file_has_no_colour_codes() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let worker = write_script(dir.path(), "worker", WARM_WORKER);
    let mut d = Daemon::new(&script_config(
        &redis,
        &worker,
        &format!("user = \"{WORKER_USER}\""),
        "[group.g]\nqueues = [\"q\"]\n",
    ));
    d.start();
    d.running_pid("g-1");
    d.signal(Signal::SIGTERM);
    d.wait_exit(T);
    let log = d.log();
    assert!(log.contains("all workers stopped"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI codes in a log file: {log:?}");
}

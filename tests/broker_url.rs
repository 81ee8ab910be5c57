//! Broker URLs end to end: every scheme kombu's Redis transport accepts
//! passes `clearify-workerd --check`, and a `redis+socket://` URL runs a
//! real daemon against a real redis-server that listens only on a Unix
//! socket (issue 13: "`redis+socket://` works end to end").

use std::process::Command;
use std::time::Duration;

#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/redis.rs"]
mod redis_support;

use daemon_support::{DAEMON, Daemon, fake_config, wait_for};

/// `clearify-workerd --check` on `d`'s config: (exit code, stdout, stderr).
fn check(d: &Daemon) -> (Option<i32>, String, String) {
    let out = Command::new(DAEMON)
        .arg("--check")
        .arg("--config")
        .arg(d.config_path())
        .output()
        .expect("run clearify-workerd --check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Each spelling kombu documents (and redis-rs's and valkey's) is accepted
/// by `--check`, which shows it with the password redacted. Before issue
/// 13, `--check` refused `redis+socket://`, `socket://`, `valkey://` and
/// `valkeys://`, although the broker monitor understood them.
#[test]
fn check_accepts_every_scheme_of_kombus_redis_transport() {
    for url in [
        "redis+socket:///run/redis/redis.sock",
        "redis+socket:///run/redis/redis.sock?virtual_host=1",
        "socket:///run/redis/redis.sock?virtual_host=0",
        "unix:///run/redis/redis.sock?db=2",
        "redis+unix:///run/redis/redis.sock",
        "redis://:s3cret@127.0.0.1:6379/0",
        "rediss://:s3cret@127.0.0.1:6380/1?ssl_cert_reqs=none",
        "valkey://127.0.0.1:6379/0",
        "valkeys://:s3cret@127.0.0.1:6380/0",
    ] {
        let d = Daemon::new(&fake_config(url, "[group.g]\nqueues = [\"q\"]\n"));
        let (code, out, err) = check(&d);
        assert_eq!(code, Some(0), "--check refused {url}:\n{err}");
        assert!(out.contains("broker: "), "{url}:\n{out}");
        assert!(!out.contains("s3cret"), "the password leaked:\n{out}");
    }
}

/// A URL the broker cannot use is still refused, with file:line:column.
#[test]
fn check_still_refuses_a_bad_socket_url_with_its_position() {
    let d = Daemon::new(&fake_config(
        "redis+socket://relative.sock",
        "[group.g]\nqueues = [\"q\"]\n",
    ));
    let (code, _, err) = check(&d);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("workers.toml:6:7: error: broker.url: invalid broker URL `redis+socket://relative.sock`: a redis+socket:// URL needs an absolute socket path"),
        "{err}"
    );
}

/// A real redis-server on a Unix socket only (no TCP port), a real daemon
/// with `url = "redis+socket://<path>"`: the broker is reported ok and the
/// worker runs.
#[test]
fn redis_socket_url_runs_end_to_end() {
    let redis = redis_support::RedisServer::start_unix_only();
    let sock = redis.socket_path();
    let url = format!("redis+socket://{}?virtual_host=1", sock.display());
    let mut d = Daemon::new(&fake_config(&url, "[group.g]\nqueues = [\"q\"]\n"));
    let (code, _, err) = check(&d);
    assert_eq!(code, Some(0), "--check refused {url}:\n{err}");
    d.start();
    let status = wait_for(Duration::from_secs(20), "broker state ok", || {
        let s = d.status();
        (s["daemon"]["broker"]["state"] == "ok").then_some(s)
    });
    assert_eq!(
        status["daemon"]["broker"]["url"], url,
        "status shows the URL"
    );
    // Workers start only once the broker answered.
    d.running_pid("g-1");
    // The daemon really talks to this server: it is its client, on db 1.
    let clients = redis.command(&["CLIENT", "LIST"]).unwrap();
    assert!(clients.contains("db=1"), "{clients}");
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
}

//! Broker awareness against real redis-server processes (and real Celery).
//!
//! Needs `redis-server` on PATH (or `CLEARIFY_TEST_REDIS_SERVER`), a Python
//! with Celery 5 (`CLEARIFY_TEST_PYTHON`, default `<repo>/.venv/bin/python`)
//! and `openssl` and `redis-cli` (with TLS) for the TLS test. Missing tools
//! fail the tests loudly.

#[path = "support/redis.rs"]
mod redis_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clearify_workerd::broker::{
    self, BrokerEvent, BrokerSettings, Heartbeat, ProbeErrorKind, Watched, probe, spawn_monitor,
    test_report,
};
use clearify_workerd::control::protocol::HeartbeatSeen;
use redis_support::RedisServer;
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------
// helpers

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with Celery: `$CLEARIFY_TEST_PYTHON` or `<repo>/.venv/bin/python`.
fn python() -> PathBuf {
    let p = std::env::var_os("CLEARIFY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "Python with Celery not found at {} (set CLEARIFY_TEST_PYTHON, or create it: \
         python3 -m venv .venv && .venv/bin/pip install 'celery[redis]==5.*')",
        p.display()
    );
    p
}

fn demo_dir() -> PathBuf {
    repo().join("examples/demo_app")
}

/// Runs a Python snippet with the demo app importable and the broker URL set.
fn run_python(broker_url: &str, code: &str) {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .current_dir(demo_dir())
        .env("CELERY_BROKER_URL", broker_url)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Celery worker process, killed on drop.
struct Worker(Child);

impl Worker {
    fn start(broker_url: &str, node: &str, queue: &str) -> Worker {
        let child = Command::new(python())
            .args(["-m", "celery", "-A", "demo.celery_app", "worker"])
            .args([
                "-n", node, "-Q", queue, "-c", "1", "-P", "solo", "-l", "info",
            ])
            .args(["--without-mingle", "--without-gossip"])
            .current_dir(demo_dir())
            .env("CELERY_BROKER_URL", broker_url)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn celery worker");
        Worker(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The queues `qs`, their backlog fetched at every health check.
fn polled(qs: &[&str]) -> Watched {
    Watched {
        queues: qs.iter().map(|q| q.to_string()).collect(),
        poll: true,
    }
}

fn settings(url: &str) -> BrokerSettings {
    BrokerSettings {
        check_interval: Duration::from_millis(300),
        ..BrokerSettings::new(url)
    }
}

/// Receives events until `pred` matches one or `limit` passes. Returns all
/// events received before the match, and the match.
async fn recv_until(
    rx: &mut mpsc::Receiver<BrokerEvent>,
    limit: Duration,
    mut pred: impl FnMut(&BrokerEvent) -> bool,
) -> (Vec<BrokerEvent>, Option<BrokerEvent>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => {
                if pred(&ev) {
                    return (seen, Some(ev));
                }
                seen.push(ev);
            }
            Ok(None) | Err(_) => return (seen, None),
        }
    }
}

/// Receives everything for `dur`.
async fn recv_for(rx: &mut mpsc::Receiver<BrokerEvent>, dur: Duration) -> Vec<BrokerEvent> {
    recv_until(rx, dur, |_| false).await.0
}

/// The next backlog report within `limit` (events before it are passed
/// over); panics, naming what came instead, when there is none.
async fn next_backlog(
    rx: &mut mpsc::Receiver<BrokerEvent>,
    limit: Duration,
) -> BTreeMap<String, u64> {
    let (seen, ev) = recv_until(rx, limit, |e| matches!(e, BrokerEvent::Backlog(_))).await;
    match ev {
        Some(BrokerEvent::Backlog(b)) => b,
        _ => panic!("no backlog within {limit:?}; saw {seen:?}"),
    }
}

/// A backlog map from (queue, messages) pairs.
fn backlog(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(q, n)| (q.to_string(), *n)).collect()
}

fn is_up(ev: &BrokerEvent) -> bool {
    matches!(ev, BrokerEvent::Up { .. })
}

/// Runs blocking server management off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Waits until `n` clients are subscribed to the heartbeat channel.
async fn wait_subscribed(server: &RedisServer, channel: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let r = server
            .command(&["PUBSUB", "NUMSUB", channel])
            .unwrap_or_default();
        if r.lines().nth(1) == Some("1") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "monitor did not subscribe to {channel:?} within {limit:?} (NUMSUB: {r:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A heartbeat envelope captured from a real Celery 5.7 worker.
const REAL_HEARTBEAT: &str = r#"{"body": "eyJob3N0bmFtZSI6ICJoYnRlc3RAdm0iLCAidXRjb2Zmc2V0IjogMC4wLCAicGlkIjogMjE1NjYsICJjbG9jayI6IDIsICJmcmVxIjogMi4wLCAiYWN0aXZlIjogMCwgInByb2Nlc3NlZCI6IDAsICJsb2FkYXZnIjogWzMuNDcsIDEuOTksIDAuODldLCAic3dfaWRlbnQiOiAicHktY2VsZXJ5IiwgInN3X3ZlciI6ICI1LjcuMCIsICJzd19zeXMiOiAiTGludXgiLCAidGltZXN0YW1wIjogMTc5NTg5MzgwOC45NDQzOTUsICJ0eXBlIjogIndvcmtlci1oZWFydGJlYXQifQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"hostname": "hbtest@vm"}, "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": "worker.heartbeat"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "0b87dfd7-5a99-43c3-9c93-ed0c03aea3fe"}}"#;

// ---------------------------------------------------------------------------
// 1. Redis down at start, then started: Waiting (once per reason), GateTimeout, then Up.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_waits_for_redis_then_reports_up() {
    let mut server = RedisServer::new_stopped(None);
    let mut s = settings(&server.url());
    s.wait_timeout = Some(Duration::from_secs(1));
    let (tx, mut rx) = mpsc::channel(64);
    let started = Instant::now();
    let monitor = spawn_monitor(s, polled(&["gateq"]), tx);

    // First: Waiting with "connection refused".
    let (before, first) = recv_until(&mut rx, Duration::from_secs(3), |_| true).await;
    assert!(before.is_empty());
    match first {
        Some(BrokerEvent::Waiting { error, .. }) => {
            assert!(error.contains("refused"), "{error}")
        }
        other => panic!("expected Waiting, got {other:?}"),
    }
    // Then GateTimeout after wait_timeout, and no Up.
    let (seen, timeout) = recv_until(&mut rx, Duration::from_secs(3), |e| {
        matches!(e, BrokerEvent::GateTimeout)
    })
    .await;
    assert!(timeout.is_some(), "no GateTimeout; saw {seen:?}");
    let at = started.elapsed();
    assert!(
        at >= Duration::from_millis(950) && at < Duration::from_secs(3),
        "GateTimeout at {at:?}"
    );
    assert!(
        seen.is_empty(),
        "the same reason was reported again: {seen:?}"
    );
    // The reason does not change, so nothing more is reported while waiting.
    let quiet = recv_for(&mut rx, Duration::from_secs(2)).await;
    assert!(
        quiet.is_empty(),
        "unexpected events while waiting: {quiet:?}"
    );

    let server = blocking(move || {
        server.restart();
        server
    })
    .await;
    let t = Instant::now();
    let (seen, up) = recv_until(&mut rx, Duration::from_secs(15), is_up).await;
    assert!(up.is_some(), "no Up after redis started; saw {seen:?}");
    assert!(
        t.elapsed() < Duration::from_secs(13),
        "Up took {:?}",
        t.elapsed()
    );
    // While up: backlog of the configured queue, and periodic latency
    // updates.
    assert_eq!(
        next_backlog(&mut rx, Duration::from_secs(4)).await,
        backlog(&[("gateq", 0)])
    );
    // The health checks' round trips update the latency, without events.
    let first = monitor.latency().expect("a latency while up");
    let t = Instant::now();
    while monitor.latency() == Some(first) && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(monitor.latency(), Some(first), "no periodic latency update");
    assert!(monitor.latency().is_some());
    monitor.shutdown().await;
    drop(server);
}

// ---------------------------------------------------------------------------
// 2. requirepass: right password works; wrong or missing password is fatal, fast, and final.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_right_and_wrong() {
    let server = blocking(|| RedisServer::start_with(Some("s3cret"))).await;
    let port = server.port();

    let latency = probe(&server.url()).await.expect("right password");
    assert!(latency < Duration::from_secs(3));

    for url in [
        format!("redis://:wrong@127.0.0.1:{port}/0"),
        format!("redis://127.0.0.1:{port}/0"),
    ] {
        let t = Instant::now();
        let e = probe(&url).await.expect_err("must fail");
        assert_eq!(e.kind, ProbeErrorKind::Fatal, "{url}: {e}");
        assert!(e.message.contains("authentication failed"), "{e}");
        assert!(!e.message.contains("wrong"), "leaks the password: {e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    // A db that does not exist is a configuration error too.
    let e = probe(&format!("redis://:s3cret@127.0.0.1:{port}/99"))
        .await
        .expect_err("db 99");
    assert_eq!(e.kind, ProbeErrorKind::Fatal, "{e}");
    assert!(e.message.contains("SELECT"), "{e}");

    // ACL user from the URL.
    server
        .command(&["ACL", "SETUSER", "app", "on", ">apppw", "~*", "&*", "+@all"])
        .expect("ACL SETUSER");
    probe(&format!("redis://app:apppw@127.0.0.1:{port}/1"))
        .await
        .expect("ACL user");
    let e = probe(&format!("redis://app:nope@127.0.0.1:{port}/1"))
        .await
        .expect_err("wrong ACL password");
    assert_eq!(e.kind, ProbeErrorKind::Fatal, "{e}");

    // The monitor with a wrong password: Fatal, then it stops (channel closes).
    let (tx, mut rx) = mpsc::channel(16);
    let t = Instant::now();
    let _monitor = spawn_monitor(
        settings(&format!("redis://:wrong@127.0.0.1:{port}/0")),
        polled(&[]),
        tx,
    );
    match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        Ok(Some(BrokerEvent::Fatal { error })) => {
            assert!(error.contains("authentication failed"), "{error}")
        }
        other => panic!("expected Fatal, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let after = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
    assert!(
        matches!(after, Ok(None)),
        "monitor kept going after Fatal: {after:?}"
    );

    // A malformed URL is Fatal too.
    let (tx, mut rx) = mpsc::channel(16);
    let _monitor = spawn_monitor(
        settings("redis://:pw@127.0.0.1:notaport/0"),
        polled(&[]),
        tx,
    );
    match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        Ok(Some(BrokerEvent::Fatal { error })) => {
            assert!(error.contains("malformed broker URL"), "{error}");
            assert!(!error.contains(":pw@"), "leaks the password: {error}");
        }
        other => panic!("expected Fatal, got {other:?}"),
    }

    // And with the right password the monitor comes up.
    let (tx, mut rx) = mpsc::channel(16);
    let _monitor = spawn_monitor(settings(&server.url()), polled(&[]), tx);
    let (seen, up) = recv_until(&mut rx, Duration::from_secs(5), is_up).await;
    assert!(up.is_some(), "no Up: {seen:?}");
    assert!(seen.is_empty(), "{seen:?}");
}

// ---------------------------------------------------------------------------
// 3. Redis killed and restarted: Down, then Up; the heartbeat subscription resumes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_reports_down_then_up_and_resubscribes() {
    let server = blocking(|| RedisServer::start_with(Some("pw"))).await;
    let channel = broker::heartbeat_channel("", 3);
    let (tx, mut rx) = mpsc::channel(256);
    let monitor = spawn_monitor(settings(&server.url_db(3)), polled(&["q"]), tx);
    let (_, up) = recv_until(&mut rx, Duration::from_secs(5), is_up).await;
    assert!(up.is_some());

    wait_subscribed(&server, &channel, Duration::from_secs(5)).await;
    server
        .command(&["PUBLISH", &channel, REAL_HEARTBEAT])
        .unwrap();
    let (_, hb) = recv_until(&mut rx, Duration::from_secs(3), |e| {
        matches!(e, BrokerEvent::Heartbeat(_))
    })
    .await;
    let Some(BrokerEvent::Heartbeat(hb)) = hb else {
        panic!("no heartbeat")
    };
    assert_eq!((hb.hostname.as_str(), hb.pid), ("hbtest@vm", 21566));

    let mut server = server;
    server.stop();
    let stopped = Instant::now();
    let (seen, down) = recv_until(&mut rx, Duration::from_secs(5), |e| {
        matches!(e, BrokerEvent::Down { .. })
    })
    .await;
    assert!(
        !seen.iter().any(|e| matches!(e, BrokerEvent::Fatal { .. })),
        "{seen:?}"
    );
    let Some(BrokerEvent::Down { error, since }) = down else {
        panic!("no Down after redis was killed; saw {seen:?}")
    };
    assert!(!error.is_empty());
    assert!(since.elapsed().unwrap() < Duration::from_secs(5));
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "Down took {:?}",
        stopped.elapsed()
    );
    assert_eq!(monitor.latency(), None, "no latency while down");

    // While down: no Up and no Fatal.
    let during = recv_for(&mut rx, Duration::from_secs(2)).await;
    assert!(
        during.iter().all(|e| matches!(e, BrokerEvent::Down { .. })),
        "{during:?}"
    );

    let server = blocking(move || {
        server.restart();
        server
    })
    .await;
    let (seen, up) = recv_until(&mut rx, Duration::from_secs(15), is_up).await;
    assert!(up.is_some(), "no Up after restart; saw {seen:?}");

    wait_subscribed(&server, &channel, Duration::from_secs(15)).await;
    server
        .command(&["PUBLISH", &channel, REAL_HEARTBEAT])
        .unwrap();
    let (_, hb) = recv_until(&mut rx, Duration::from_secs(3), |e| {
        matches!(e, BrokerEvent::Heartbeat(_))
    })
    .await;
    assert!(hb.is_some(), "heartbeats did not resume after the outage");
    monitor.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. Backlog counts, including priority sub-queues, as real Celery enqueued them.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_matches_what_celery_enqueued() {
    let server = blocking(RedisServer::start).await;
    let url0 = server.url_db(0);
    let url1 = server.url_db(1);
    // Priorities 0..9 fall into kombu's steps [0,3,6,9]:
    // 0,1,2 → bq; 3,4,5 → bq\x06\x163; 6,7,8 → bq\x06\x166; 9 → bq\x06\x169.
    blocking(move || {
        run_python(
            &url0,
            "from demo.celery_app import app\n\
             for p in [0, 1, 3, 5, 6, 8, 9, 9]:\n\
             \x20   app.send_task('demo.add', args=(1, 2), queue='bq', priority=p)\n\
             app.send_task('demo.add', args=(1, 2), queue='bq')\n\
             for _ in range(2):\n\
             \x20   app.send_task('demo.add', args=(1, 2), queue='other')\n",
        );
        // With Celery's global_keyprefix, in db 1.
        run_python(
            &url1,
            "from demo.celery_app import app\n\
             app.conf.broker_transport_options = {'global_keyprefix': 'pfx:'}\n\
             for p in [0, 4, 9]:\n\
             \x20   app.send_task('demo.add', args=(1, 2), queue='bq', priority=p)\n",
        );
    })
    .await;

    // The keys Celery wrote are exactly the ones we count.
    let keys = server.command(&["KEYS", "bq*"]).unwrap();
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    let expected = broker::queue_keys("bq", &[0, 3, 6, 9], "");
    assert_eq!(keys, expected, "kombu's key layout differs");
    let lens: Vec<String> = expected
        .iter()
        .map(|k| server.command(&["LLEN", k]).unwrap())
        .collect();
    assert_eq!(lens, ["3", "2", "2", "2"], "per-priority counts");

    // The monitor's backlog.
    let (tx, mut rx) = mpsc::channel(64);
    let monitor = spawn_monitor(
        settings(&server.url()),
        polled(&["bq", "other", "none"]),
        tx,
    );
    assert_eq!(
        next_backlog(&mut rx, Duration::from_secs(5)).await,
        backlog(&[("bq", 9), ("other", 2), ("none", 0)])
    );
    // set_queues is picked up.
    monitor.set_queues(polled(&["other"]));
    let (_, changed) = recv_until(
        &mut rx,
        Duration::from_secs(5),
        |e| matches!(e, BrokerEvent::Backlog(m) if !m.contains_key("bq")),
    )
    .await;
    assert_eq!(
        changed,
        Some(BrokerEvent::Backlog(backlog(&[("other", 2)])))
    );
    // Refreshes are at least a second apart, even when asked for more often.
    let mut stamps = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        monitor.refresh_backlog();
        if let Ok(Some(BrokerEvent::Backlog(_))) =
            tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
        {
            stamps.push(Instant::now());
        }
    }
    assert!(stamps.len() >= 2, "refresh_backlog had no effect");
    for w in stamps.windows(2) {
        assert!(
            // Refreshes *start* ≥ 1 s apart; allow for reply latency.
            w[1] - w[0] >= Duration::from_millis(800),
            "backlog refreshed {:?} apart",
            w[1] - w[0]
        );
    }
    monitor.shutdown().await;

    // Without `poll`, the backlog comes once at the start, then only when
    // asked for (or when the queues change), while the PINGs go on.
    let (tx, mut rx) = mpsc::channel(64);
    let monitor = spawn_monitor(
        settings(&server.url()),
        Watched {
            queues: vec!["bq".into()],
            poll: false,
        },
        tx,
    );
    assert_eq!(
        next_backlog(&mut rx, Duration::from_secs(5)).await,
        backlog(&[("bq", 9)])
    );
    // Four check intervals (300 ms each): the PINGs go on (counted by the
    // server), their round trips reach Monitor::latency, and neither they
    // nor a backlog become events.
    let pings = || {
        let info = server.command(&["INFO", "commandstats"]).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = pings();
    let quiet = recv_for(&mut rx, Duration::from_millis(1300)).await;
    let during = pings() - before;
    assert!(during >= 3, "the health checks go on: {during} PINGs");
    assert!(monitor.latency().is_some());
    assert!(
        quiet.is_empty(),
        "no events while nothing changes: {quiet:?}"
    );
    monitor.refresh_backlog();
    // refresh_backlog answers without poll.
    next_backlog(&mut rx, Duration::from_secs(3)).await;
    monitor.shutdown().await;

    // global_keyprefix.
    let mut s = settings(&server.url_db(1));
    s.key_prefix = "pfx:".into();
    let report = test_report(&s, &["bq".into()], vec![]).await;
    assert_eq!(report.queues[0].backlog, Some(3), "{report:?}");
    let unprefixed = test_report(&settings(&server.url_db(1)), &["bq".into()], vec![]).await;
    assert_eq!(unprefixed.queues[0].backlog, Some(0));
}

// ---------------------------------------------------------------------------
// 5. Heartbeats from a real Celery worker.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_from_a_real_celery_worker() {
    let server = blocking(RedisServer::start).await;
    let (tx, mut rx) = mpsc::channel(256);
    let _monitor = spawn_monitor(settings(&server.url()), polled(&["hbq"]), tx);
    let (_, up) = recv_until(&mut rx, Duration::from_secs(5), is_up).await;
    assert!(up.is_some());

    let worker = Worker::start(&server.url(), "hb1@testhost", "hbq");
    let first = wait_heartbeat(&mut rx, "hb1@testhost", Duration::from_secs(60), |_| true).await;
    assert_eq!(first.pid, worker.pid());
    assert_eq!(first.freq, 2.0);
    assert_eq!(first.active, 0);
    assert_eq!(first.processed, 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - first.timestamp).abs() < 30.0,
        "timestamp {}",
        first.timestamp
    );

    // A processed task shows up in the next heartbeats.
    let url = server.url();
    blocking(move || {
        run_python(
            &url,
            "from demo.celery_app import app\n\
             app.send_task('demo.add', args=(1, 2), queue='hbq')\n",
        )
    })
    .await;
    let later = wait_heartbeat(&mut rx, "hb1@testhost", Duration::from_secs(30), |h| {
        h.processed >= 1
    })
    .await;
    assert_eq!(later.processed, 1);
    assert_eq!(later.pid, worker.pid());
}

async fn wait_heartbeat(
    rx: &mut mpsc::Receiver<BrokerEvent>,
    node: &str,
    limit: Duration,
    mut pred: impl FnMut(&Heartbeat) -> bool,
) -> Heartbeat {
    let (seen, hb) = recv_until(
        rx,
        limit,
        |e| matches!(e, BrokerEvent::Heartbeat(h) if h.hostname == node && pred(h)),
    )
    .await;
    match hb {
        Some(BrokerEvent::Heartbeat(h)) => h,
        _ => panic!(
            "no matching heartbeat from {node} within {limit:?}; saw {:?}",
            seen.iter()
                .filter(|e| matches!(e, BrokerEvent::Heartbeat(_) | BrokerEvent::Down { .. }))
                .collect::<Vec<_>>()
        ),
    }
}

// 3 (with real Celery): after a Redis restart the worker's heartbeats reach us again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_worker_heartbeats_resume_after_redis_restart() {
    let server = blocking(RedisServer::start).await;
    let (tx, mut rx) = mpsc::channel(256);
    let _monitor = spawn_monitor(settings(&server.url()), polled(&[]), tx);
    let worker = Worker::start(&server.url(), "hb2@testhost", "hbq2");
    wait_heartbeat(&mut rx, "hb2@testhost", Duration::from_secs(60), |_| true).await;

    let mut server = server;
    server.stop();
    let (_, down) = recv_until(&mut rx, Duration::from_secs(5), |e| {
        matches!(e, BrokerEvent::Down { .. })
    })
    .await;
    assert!(down.is_some(), "no Down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = blocking(move || {
        server.restart();
        server
    })
    .await;
    let (_, up) = recv_until(&mut rx, Duration::from_secs(15), is_up).await;
    assert!(up.is_some(), "no Up after restart");
    let hb = wait_heartbeat(&mut rx, "hb2@testhost", Duration::from_secs(60), |_| true).await;
    assert_eq!(hb.pid, worker.pid(), "the same worker process");
    drop(server);
}

// ---------------------------------------------------------------------------
// 7. LOADING is not ready.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_is_not_ready() {
    let server = blocking(|| RedisServer::start_loading(5)).await;
    let e = probe(&server.url()).await.expect_err("ready while loading");
    assert_eq!(e.kind, ProbeErrorKind::Transient, "{e}");
    assert!(e.message.contains("LOADING"), "{e}");

    let (tx, mut rx) = mpsc::channel(64);
    let _monitor = spawn_monitor(settings(&server.url()), polled(&[]), tx);
    match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        Ok(Some(BrokerEvent::Waiting { error, .. })) => {
            assert!(error.contains("LOADING"), "{error}")
        }
        other => panic!("expected Waiting(LOADING), got {other:?}"),
    }
    let (seen, up) = recv_until(&mut rx, Duration::from_secs(90), is_up).await;
    assert!(up.is_some(), "never became ready; saw {seen:?}");
    assert!(
        seen.iter()
            .all(|e| matches!(e, BrokerEvent::Waiting { .. })),
        "{seen:?}"
    );
    probe(&server.url()).await.expect("ready after loading");
}

// ---------------------------------------------------------------------------
// clearifyctl test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_report_reports_steps_info_backlog_and_heartbeats() {
    let server = blocking(|| RedisServer::start_with(Some("tpw"))).await;
    server.command(&["LPUSH", "tq", "a", "b"]).unwrap();
    server.command(&["LPUSH", "tq\x06\x166", "c"]).unwrap();
    let seen = vec![HeartbeatSeen {
        node: "n1@h".into(),
        age_secs: 1.5,
    }];
    let s = settings(&server.url());
    let r = test_report(&s, &["tq".into(), "empty".into()], seen.clone()).await;
    assert!(r.reachable, "{r:?}");
    assert_eq!(r.error, None);
    assert!(!r.url.contains("tpw"), "{}", r.url);
    let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["resolve", "connect", "auth", "ping"]);
    assert!(r.steps.iter().all(|s| s.ok && s.millis >= 0.0), "{r:?}");
    let version = r.redis_version.clone().expect("version");
    let real = std::process::Command::new(redis_support::redis_server_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&real.stdout).contains(&format!("v={version}")),
        "{version}"
    );
    assert!(r.used_memory_bytes.unwrap() > 100_000);
    let backlog: Vec<(String, Option<u64>)> = r
        .queues
        .iter()
        .map(|q| (q.name.clone(), q.backlog))
        .collect();
    assert_eq!(
        backlog,
        [("tq".to_string(), Some(3)), ("empty".to_string(), Some(0))]
    );
    assert_eq!(r.heartbeats, seen);

    // Wrong password: not reachable, the auth step failed.
    let bad = settings(&format!("redis://:nope@127.0.0.1:{}/0", server.port()));
    let r = test_report(&bad, &["tq".into()], vec![]).await;
    assert!(!r.reachable);
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("authentication failed")
    );
    let last = r.steps.last().unwrap();
    assert_eq!((last.name.as_str(), last.ok), ("auth", false));
    // The failed step carries the error's text as its detail.
    assert_eq!(last.detail, r.error, "{r:?}");
    assert_eq!(r.queues[0].backlog, None);

    // Redis down: not reachable, the connect step failed.
    let mut server = server;
    server.stop();
    let r = test_report(&s, &["tq".into()], vec![]).await;
    assert!(!r.reachable);
    assert!(r.error.as_deref().unwrap().contains("refused"), "{r:?}");
    let names: Vec<(&str, bool)> = r.steps.iter().map(|s| (s.name.as_str(), s.ok)).collect();
    assert_eq!(names, [("resolve", true), ("connect", false)]);
    assert_eq!(r.steps[1].detail, r.error, "{r:?}");
}

// ---------------------------------------------------------------------------
// TLS (rediss://) against redis-server's TLS port, with rustls.

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl is required for the TLS test: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct TlsRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_redis() -> TlsRedis {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=clearify test CA",
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    for _ in 0..10 {
        let port = redis_support::free_port();
        let mut child = Command::new(redis_support::redis_server_binary())
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--requirepass", "tlspw"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return TlsRedis { child, port, dir };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not start redis-server with TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_ca_file_and_without_verification() {
    let tls = blocking(start_tls_redis).await;
    let ca = tls.dir.path().join("ca.pem");
    let port = tls.port;

    let url = format!(
        "rediss://:tlspw@localhost:{port}/0?ssl_ca_certs={}",
        ca.display()
    );
    probe(&url).await.expect("TLS with the CA file");
    let r = test_report(&settings(&url), &["q".into()], vec![]).await;
    assert!(r.reachable, "{r:?}");
    assert_eq!(r.steps[1].detail.as_deref(), Some("TLS"));

    probe(&format!(
        "rediss://:tlspw@127.0.0.1:{port}/0?ssl_cert_reqs=none"
    ))
    .await
    .expect("TLS without verification");

    // Not trusted by the system roots: a transient (clock-skew-safe) failure.
    let e = probe(&format!("rediss://:tlspw@localhost:{port}/0"))
        .await
        .expect_err("self-signed CA must not verify against system roots");
    assert_eq!(e.kind, ProbeErrorKind::Transient, "{e}");

    // Plain redis:// against the TLS port does not hang.
    let t = Instant::now();
    let e = probe(&format!("redis://:tlspw@127.0.0.1:{port}/0"))
        .await
        .expect_err("plain against TLS");
    assert_eq!(e.kind, ProbeErrorKind::Transient, "{e}");
    assert!(t.elapsed() < Duration::from_secs(8));

    // The monitor over TLS: up, and its health link (the gate's redis-rs
    // connection, driven by the runtime) pings and reports the backlog.
    let (tx, mut rx) = mpsc::channel(64);
    let m = spawn_monitor(settings(&url), polled(&["q"]), tx);
    let (_, up) = recv_until(&mut rx, Duration::from_secs(5), is_up).await;
    assert!(up.is_some());
    assert_eq!(
        next_backlog(&mut rx, Duration::from_secs(5)).await,
        backlog(&[("q", 0)])
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(m.latency().is_some(), "the TLS health checks ran");
    let down = recv_for(&mut rx, Duration::from_millis(500)).await;
    assert!(
        !down.iter().any(|e| matches!(e, BrokerEvent::Down { .. })),
        "{down:?}"
    );

    // Redis drops the health link: the next check (300 ms) notices, the
    // gate reconnects over TLS and the new link answers.
    let killed = blocking(move || tls_cli(port, &["CLIENT", "KILL", "TYPE", "normal"])).await;
    assert_ne!(killed, "0", "the TLS health link is a normal client");
    let (seen, down) = recv_until(&mut rx, Duration::from_secs(5), |e| {
        matches!(e, BrokerEvent::Down { .. })
    })
    .await;
    assert!(
        down.is_some(),
        "no Down after the TLS link was killed; saw {seen:?}"
    );
    let (seen, up) = recv_until(&mut rx, Duration::from_secs(5), is_up).await;
    assert!(up.is_some(), "no Up after the reconnect; saw {seen:?}");
    m.refresh_backlog();
    next_backlog(&mut rx, Duration::from_secs(5)).await;
    m.shutdown().await;
}

/// One command to the TLS server through `redis-cli --tls` (which comes
/// with redis-server); the reply's text.
fn tls_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args([
            "--tls",
            "--insecure",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["--no-auth-warning", "-a", "tlspw"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("redis-cli is required for the TLS test: {e}"));
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------
// Unix sockets, in redis-rs' and kombu's spellings.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_urls() {
    let server = blocking(RedisServer::start).await;
    let sock = server.socket_path();
    server.command(&["SELECT", "2"]).unwrap();
    // Put something in db 2 via the socket URL's db and read it back as backlog.
    let mut s = settings(&format!("unix://{}?db=2", sock.display()));
    probe(&s.url).await.expect("unix://");
    s.url = format!("redis+socket://{}?virtual_host=2", sock.display());
    probe(&s.url).await.expect("redis+socket://");
    let r = test_report(&s, &["uq".into()], vec![]).await;
    assert!(r.reachable, "{r:?}");
    assert_eq!(r.steps[0].name, "resolve");
    assert_eq!(r.queues[0].backlog, Some(0));

    let e = probe("unix:///nonexistent/redis.sock")
        .await
        .expect_err("no socket");
    assert_eq!(e.kind, ProbeErrorKind::Transient, "{e}");

    // The monitor's health link over the socket selects db 2 too: the
    // backlog it reports is db 2's.
    server.command(&["RPUSH", "uq", "a", "b"]).unwrap();
    server.command(&["MOVE", "uq", "2"]).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let monitor = spawn_monitor(settings(&s.url), polled(&["uq"]), tx);
    assert_eq!(
        next_backlog(&mut rx, Duration::from_secs(5)).await,
        backlog(&[("uq", 2)])
    );
    monitor.shutdown().await;
}

// ---------------------------------------------------------------------------
// The health link notices a closed connection at once, not at the next check.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_link_is_noticed_at_once_and_reopened() {
    let server = blocking(|| RedisServer::start_with(Some("pw"))).await;
    let (tx, mut rx) = mpsc::channel(64);
    let slow = BrokerSettings {
        check_interval: Duration::from_secs(60),
        ..BrokerSettings::new(server.url_db(1))
    };
    let monitor = spawn_monitor(slow, polled(&["q"]), tx);
    let (seen, up) = recv_until(&mut rx, Duration::from_secs(5), is_up).await;
    assert!(up.is_some(), "no Up: {seen:?}");
    // The health link's first backlog: it has authenticated and selected db 1.
    next_backlog(&mut rx, Duration::from_secs(5)).await;

    // Redis drops every normal client: the health link (the gate's
    // connection is closed or closing; the heartbeats are a pub/sub client).
    let killed = server
        .command(&["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
    assert_ne!(killed, "0", "the health link is a normal client");
    let t = Instant::now();
    let (seen, down) = recv_until(&mut rx, Duration::from_secs(5), |e| {
        matches!(e, BrokerEvent::Down { .. })
    })
    .await;
    let Some(BrokerEvent::Down { error, .. }) = down else {
        panic!("no Down after the link was closed; saw {seen:?}")
    };
    assert!(error.contains("closed the connection"), "{error}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "noticed after {:?}, not at once (check_interval is 60 s)",
        t.elapsed()
    );
    // Redis is still there: the gate reconnects and a new link takes over.
    let (seen, up) = recv_until(&mut rx, Duration::from_secs(5), is_up).await;
    assert!(up.is_some(), "no Up after the reconnect: {seen:?}");
    monitor.refresh_backlog();
    // The new link answers refresh_backlog.
    next_backlog(&mut rx, Duration::from_secs(3)).await;

    // shutdown ends the health thread at once, even with a check 60 s away.
    let t0 = Instant::now();
    monitor.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // Its connection is closed: only our own CLIENT LIST connection is left
    // (the server may take a moment to see the close).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let clients = server
            .command(&["CLIENT", "LIST", "TYPE", "normal"])
            .unwrap();
        if clients.lines().count() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "connections left: {clients}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

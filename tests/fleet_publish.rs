//! The fleet beat (issue 14), with a real redis-server and the real
//! daemon: the record appears under `clearify:fleet:<device_id>` with its
//! TTL, the set's score is the Redis clock, a clean stop marks it stopped,
//! a killed daemon stops beating (and is then lost by Redis time), and a
//! Redis user that may not write the record leaves the broker itself fine.

use std::time::{Duration, Instant};

use clearify_workerd::model::fleet::{DaemonRun, DeviceRecord, Presence, Seen, parse_record};
use nix::sys::signal::Signal;

#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/redis.rs"]
mod redis_support;

use daemon_support::{Daemon, fake_config, wait_for};
use redis_support::RedisServer;

const GROUPS: &str = "[group.text]\nqueues = [\"text_processing\"]\ninstances = 2\n";

fn config(url: &str, fleet: &str) -> String {
    format!("{}\n[fleet]\n{fleet}\n", fake_config(url, GROUPS))
}

fn redis_time(r: &RedisServer) -> f64 {
    let t = r.command(&["TIME"]).unwrap();
    let mut it = t.lines();
    let s: f64 = it.next().unwrap().parse().unwrap();
    let us: f64 = it.next().unwrap().parse().unwrap();
    s + us / 1e6
}

fn score(r: &RedisServer, device: &str) -> Option<f64> {
    let s = r.command(&["ZSCORE", "clearify:fleet", device]).unwrap();
    (!s.is_empty()).then(|| s.parse().unwrap())
}

fn record(r: &RedisServer, device: &str) -> Option<DeviceRecord> {
    let raw = r
        .command(&["GET", &format!("clearify:fleet:{device}")])
        .unwrap();
    (!raw.is_empty()).then(|| parse_record(device, raw.as_bytes()).unwrap())
}

/// Waits until the record shows both instances running.
fn wait_for_full_record(r: &RedisServer, device: &str) -> DeviceRecord {
    wait_for(
        Duration::from_secs(20),
        "a record with both workers running",
        || record(r, device).filter(|rec| rec.groups.first().is_some_and(|g| g.running == 2)),
    )
}

#[test]
fn a_daemon_publishes_its_record_on_the_redis_clock_with_its_ttl() {
    let redis = RedisServer::start_with(Some("fleet-s3cret"));
    let mut d = Daemon::new(&config(
        &redis.url(),
        "interval = \"1s\"\nforget_after = \"1h\"",
    ));
    d.start();
    let rec = wait_for_full_record(&redis, "testdev");
    assert_eq!(rec.device_id, "testdev");
    assert_eq!(rec.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(rec.run, DaemonRun::Running);
    assert_eq!(rec.interval_secs, 1.0);
    assert!(!rec.hostname.is_empty() && !rec.kernel.is_empty() && !rec.arch.is_empty());
    assert!(rec.mem_total_bytes.is_some() && rec.rss_bytes.is_some() && rec.load.is_some());
    let g = &rec.groups[0];
    assert_eq!((g.name.as_str(), g.total, g.concurrency), ("text", 2, 1));
    assert_eq!(g.queues, ["text_processing"]);
    assert_eq!(g.instances.len(), 2);
    assert!(g.instances.iter().all(|i| i.pid.is_some()));
    // No secret: the password and the URL appear nowhere.
    let raw = redis.command(&["GET", "clearify:fleet:testdev"]).unwrap();
    assert!(
        !raw.contains("fleet-s3cret") && !raw.contains("redis://"),
        "{raw}"
    );
    let ttl: u64 = redis
        .command(&["TTL", "clearify:fleet:testdev"])
        .unwrap()
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&ttl), "TTL {ttl}");
    // The score is the Redis clock (within a beat), and it moves on.
    let first = score(&redis, "testdev").expect("a set member");
    let now = redis_time(&redis);
    assert!((now - first).abs() < 2.5, "score {first}, Redis TIME {now}");
    let later = wait_for(Duration::from_secs(5), "a later beat", || {
        score(&redis, "testdev").filter(|s| *s > first)
    });
    assert!(later - first >= 0.5, "{first} → {later}");
    // The beats ride on the health link: the daemon has no extra
    // connection for them (gate/health + heartbeat subscription).
    let clients = redis.command(&["CLIENT", "LIST"]).unwrap();
    let ours = clients
        .lines()
        .filter(|l| !l.contains("cmd=client"))
        .count();
    assert!(ours <= 2, "{clients}");
}

#[test]
fn a_clean_stop_marks_the_device_stopped_and_a_kill_leaves_it_lost() {
    let redis = RedisServer::start();
    let mut stopped =
        Daemon::new(&config(&redis.url(), "interval = \"1s\"").replace("testdev", "dev-stop"));
    let mut killed =
        Daemon::new(&config(&redis.url(), "interval = \"1s\"").replace("testdev", "dev-kill"));
    stopped.start();
    killed.start();
    wait_for_full_record(&redis, "dev-stop");
    wait_for_full_record(&redis, "dev-kill");

    stopped.signal(Signal::SIGTERM);
    assert_eq!(stopped.wait_exit(Duration::from_secs(20)), 0);
    let rec = record(&redis, "dev-stop").unwrap();
    assert_eq!(rec.run, DaemonRun::Stopped, "{}", stopped.log());
    let at = rec.stopped_at.expect("stopped_at");
    assert_eq!(score(&redis, "dev-stop"), Some(at));
    assert!((redis_time(&redis) - at).abs() < 5.0);
    assert!(
        stopped
            .log()
            .contains("fleet: this device is marked stopped")
    );

    killed.signal(Signal::SIGKILL);
    killed.wait_exit(Duration::from_secs(5));
    let last = score(&redis, "dev-kill").unwrap();
    let seen = Seen {
        record: record(&redis, "dev-kill").unwrap(),
        last_beat: last,
    };
    let t = Instant::now();
    wait_for(
        Duration::from_secs(6),
        "the killed device to be lost",
        || (seen.presence(redis_time(&redis)) == Presence::Lost).then_some(()),
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        score(&redis, "dev-kill"),
        Some(last),
        "no beat after the kill"
    );
    assert_eq!(seen.record.run, DaemonRun::Running);
}

#[test]
fn publish_false_writes_nothing_and_the_version_can_be_labelled() {
    let redis = RedisServer::start();
    let mut off =
        Daemon::new(&config(&redis.url(), "publish = false").replace("testdev", "dev-off"));
    off.start();
    let mut labelled =
        Daemon::new(&config(&redis.url(), "interval = \"1s\"").replace("testdev", "dev-label"));
    let cmd = labelled.command(std::process::Command::new(daemon_support::DAEMON));
    let mut cmd = cmd;
    cmd.env("CLEARIFY_FLEET_VERSION", "9.9.9-canary");
    labelled.spawn_command(cmd);
    labelled.wait_ready();
    let rec = wait_for_full_record(&redis, "dev-label");
    assert_eq!(rec.version, "9.9.9-canary");
    off.wait_state("text-1", "running", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(score(&redis, "dev-off"), None);
    assert_eq!(
        redis
            .command(&["EXISTS", "clearify:fleet:dev-off"])
            .unwrap(),
        "0"
    );
}

/// A device's Redis user without SET (a too-strict ACL): the beat is
/// refused, the daemon says so once, and the broker stays up (its health
/// check and the workers are not affected).
#[test]
fn a_refused_beat_is_logged_once_and_the_broker_stays_up() {
    let redis = RedisServer::start();
    redis
        .command(&[
            "ACL", "SETUSER", "pi", "on", ">pi-pass", "~*", "&*", "+@all", "-set",
        ])
        .unwrap();
    let url = format!("redis://pi:pi-pass@127.0.0.1:{}/0", redis.port());
    let mut d = Daemon::new(&config(&url, "interval = \"1s\""));
    d.start();
    d.wait_state("text-1", "running", Duration::from_secs(10));
    wait_for(Duration::from_secs(10), "the refusal in the log", || {
        d.log()
            .contains("fleet: cannot publish this device's record")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let log = d.log();
    assert_eq!(
        log.matches("fleet: cannot publish this device's record")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("NOPERM"), "{log}");
    assert_eq!(d.status()["daemon"]["broker"]["state"], "ok");
    assert_eq!(
        redis
            .command(&["EXISTS", "clearify:fleet:testdev"])
            .unwrap(),
        "0"
    );
}

/// Under systemd the record is built on the watchdog ticks (a wake-up the
/// daemon has anyway), not on an event from each beat: with WATCHDOG_USEC
/// set the record still follows the daemon (its uptime moves on).
#[test]
fn under_a_watchdog_the_record_is_rebuilt_on_its_ticks() {
    let redis = RedisServer::start();
    let mut d =
        Daemon::new(&config(&redis.url(), "interval = \"1s\"").replace("testdev", "dev-wd"));
    let notify = d.path("notify.sock");
    let _sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let mut cmd = d.command(std::process::Command::new(daemon_support::DAEMON));
    cmd.env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID");
    d.spawn_command(cmd);
    d.wait_ready();
    let first = wait_for_full_record(&redis, "dev-wd");
    let later = wait_for(Duration::from_secs(10), "a record built later", || {
        record(&redis, "dev-wd").filter(|r| r.uptime_secs >= first.uptime_secs + 3)
    });
    assert_eq!(later.groups[0].running, 2);
    assert!(!d.log().contains("cannot publish"), "{}", d.log());
}

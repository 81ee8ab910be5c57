//! Issue 15, proved with real components: a real redis-server, real Celery
//! workers (examples/demo_app from the .venv) and the real daemon, with
//! `check_interval = "1s"`. Each test records what `status --json` says of
//! the group's `autoscale` over time (a [`Trace`]) and what Redis says of
//! the tasks (`demo.tally` counts each run in a hash), and checks them
//! against the contract: up one instance per check, down one per
//! `scale_down_after`, warm stops, every task exactly once, the fleet
//! share, scale from zero, and `clearifyctl scale`.

#[path = "support/celery.rs"]
mod celery_support;
#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use celery_support::*;
use daemon_support::*;
use nix::sys::signal::Signal;
use redis_support::RedisServer;
use serde_json::Value;

/// One check: the configs' `check_interval`.
const CHECK: Duration = Duration::from_secs(1);
/// What a bound given in checks may be late by on a loaded 2-core machine
/// (the status poll's own granularity included).
const SLACK: Duration = Duration::from_millis(1000);
/// A deadline for things that take Celery time (a worker's start, a drain).
const T: Duration = CELERY_TIMEOUT;

/// The tests run one at a time: their bounds are counted in checks of 1 s,
/// and two Celery fleets starting at once on 2 cores would blur them.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// TOML for an autoscaled group consuming `queue`; `autoscale` is the
/// inside of the inline table, `extra` more keys of the group.
fn autoscaled(name: &str, queue: &str, concurrency: u32, autoscale: &str, extra: &str) -> String {
    format!(
        "[group.{name}]\nqueues = [\"{queue}\"]\nconcurrency = {concurrency}\n\
         autoscale = {{ {autoscale} }}\n{extra}\n"
    )
}

/// A started daemon with one autoscaled group `name` consuming `{name}_q`.
fn daemon_with(redis: &RedisServer, name: &str, concurrency: u32, autoscale: &str) -> Daemon {
    let groups = autoscaled(name, &format!("{name}_q"), concurrency, autoscale, "");
    let mut d = Daemon::new(&celery_config(&redis.url(), &groups));
    d.start();
    d
}

/// What status said of an autoscaled group at one moment.
#[derive(Debug, Clone)]
struct Sample {
    /// Since the trace began.
    at: Duration,
    /// Unix time, to compare with the tasks' own clocks.
    wall: f64,
    current: u64,
    desired: u64,
    state: String,
    manual: Value,
    share: Option<f64>,
    /// The daemon's backlog figure.
    backlog: Option<u64>,
    /// LLEN of the queue, read by the test itself.
    queued: u64,
    /// The instances listed, with their states.
    instances: Vec<(String, String)>,
}

impl Sample {
    fn ids(&self) -> Vec<&str> {
        self.instances.iter().map(|(id, _)| id.as_str()).collect()
    }

    fn has(&self, id: &str) -> bool {
        self.instances.iter().any(|(i, _)| i == id)
    }

    fn line(&self) -> String {
        format!("t={:6.2}s {}", self.at.as_secs_f64(), self.what())
    }

    /// Everything but the time.
    fn what(&self) -> String {
        format!(
            "current {} desired {} state {} manual {} share {:?} backlog {:?} queued {} instances {:?}",
            self.current,
            self.desired,
            self.state,
            self.manual,
            self.share,
            self.backlog,
            self.queued,
            self.instances
        )
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The group `name` in a `status --json` answer.
fn group_of(status: &Value, name: &str) -> Value {
    status["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == name))
        .unwrap_or_else(|| panic!("no group {name} in status: {status}"))
        .clone()
}

/// LLEN of `queue`.
fn llen(redis: &RedisServer, queue: &str) -> u64 {
    let n = redis.command(&["LLEN", queue]).expect("LLEN");
    n.parse()
        .unwrap_or_else(|_| panic!("LLEN {queue} answered {n:?}"))
}

/// The samples of one group of one daemon, every ~100 ms.
struct Trace<'a> {
    d: &'a Daemon,
    redis: &'a RedisServer,
    group: String,
    queue: String,
    t0: Instant,
    samples: Vec<Sample>,
}

impl<'a> Trace<'a> {
    fn new(d: &'a Daemon, redis: &'a RedisServer, group: &str, queue: &str) -> Trace<'a> {
        Trace {
            d,
            redis,
            group: group.into(),
            queue: queue.into(),
            t0: Instant::now(),
            samples: Vec::new(),
        }
    }

    /// Take one sample (and keep it).
    fn sample(&mut self) -> Sample {
        let queued = llen(self.redis, &self.queue);
        let status = self.d.status();
        let g = group_of(&status, &self.group);
        let a = &g["autoscale"];
        let num = |k: &str| {
            a[k].as_u64().unwrap_or_else(|| {
                panic!(
                    "status --json: group {} has no autoscale.{k} (contract: \
                     groups[i].autoscale = {{min, max, desired, current, state, reason, manual, backlog, share}}): {g}",
                    self.group
                )
            })
        };
        let s = Sample {
            at: self.t0.elapsed(),
            wall: unix_now(),
            current: num("current"),
            desired: num("desired"),
            state: a["state"].as_str().unwrap_or("<none>").to_string(),
            manual: a["manual"].clone(),
            share: a["share"].as_f64(),
            backlog: a["backlog"].as_u64(),
            queued,
            instances: g["instances"]
                .as_array()
                .expect("instances")
                .iter()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap_or("?").to_string(),
                        i["state"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect(),
        };
        self.samples.push(s.clone());
        s
    }

    /// Sample until `done` holds for a sample, which is returned; after
    /// `timeout`, panic with the trace and the daemon's log.
    fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Sample) -> bool,
    ) -> Sample {
        let start = Instant::now();
        loop {
            let s = self.sample();
            if done(&s) {
                return s;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{}: not {what} after {timeout:?}\n{}\n{}",
                    self.group,
                    self.render(),
                    self.d.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sample for `window`; every sample must satisfy `ok`.
    fn hold(&mut self, what: &str, window: Duration, mut ok: impl FnMut(&Sample) -> bool) {
        let start = Instant::now();
        while start.elapsed() < window {
            let s = self.sample();
            assert!(
                ok(&s),
                "{}: not {what} during {window:?}\n{}\n{}",
                self.group,
                self.render(),
                self.d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The samples where something other than the time changed.
    fn render(&self) -> String {
        let mut out = String::from("trace (changes only):\n");
        let mut last = String::new();
        for s in &self.samples {
            let what = s.what();
            if what != last {
                let _ = writeln!(out, "  {}", s.line());
                last = what;
            }
        }
        out
    }

    /// The first sample after `from` (inclusive) with `pred`.
    fn first(&self, from: Duration, pred: impl Fn(&Sample) -> bool) -> Option<&Sample> {
        self.samples.iter().find(|s| s.at >= from && pred(s))
    }

    /// `current` over time with repeats removed: the steps taken.
    fn steps(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.samples.iter().map(|s| s.current).collect();
        v.dedup();
        v
    }
}

/// The changes the daemon logged for `group`: each `GROUP: A → B instances
/// (…)` line as (A, B).
fn logged_changes(log: &str, group: &str) -> Vec<(u64, u64)> {
    let prefix = format!("{group}: ");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&prefix)? + prefix.len()..];
            let (change, _) = rest.split_once(" instances (")?;
            let (a, b) = change.split_once(" → ")?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .collect()
}

/// The `demo.tally` counts in Redis hash `key`: task id → runs.
fn tallies(redis: &RedisServer, key: &str) -> BTreeMap<String, u64> {
    let raw = redis.command(&["HGETALL", key]).expect("HGETALL");
    let items: Vec<&str> = raw.lines().collect();
    items
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((k.to_string(), v.parse().expect("a count"))),
            _ => None,
        })
        .collect()
}

/// The `demo.tally` runs recorded in the list `list` (`KEY:started`:
/// {id, node, start}; `KEY:runs`: {id, node, start, end}).
fn runs(redis: &RedisServer, list: &str) -> Vec<Value> {
    let raw = redis.command(&["LRANGE", list, "0", "-1"]).expect("LRANGE");
    raw.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("run {l:?}: {e}")))
        .collect()
}

/// Send `n` `demo.tally` tasks (counted under `key`, each sleeping
/// `seconds`) to `queue`; their ids.
fn send_tallies(url: &str, key: &str, seconds: f64, queue: &str, n: usize) -> Vec<String> {
    let args = format!("[\"{key}\", {seconds}]");
    let out = run_client(url, &["burst", "demo.tally", &args, queue, &n.to_string()]);
    let ids: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), n, "{ids:?}");
    ids
}

/// Wait until all of `ids` ran, then check each started and ran exactly
/// once and no other task was counted; the runs.
fn exactly_once(redis: &RedisServer, key: &str, ids: &[String], d: &Daemon) -> Vec<Value> {
    let counts = wait_for(
        T,
        &format!("{} tasks counted under {key}", ids.len()),
        || {
            let c = tallies(redis, key);
            (c.len() >= ids.len()).then_some(c)
        },
    );
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = counts.keys().map(String::as_str).collect();
    assert_eq!(
        got,
        want,
        "the counted tasks are the sent ones\n{}",
        d.log()
    );
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "tasks not run exactly once: {twice:?}\n{}",
        d.log()
    );
    let done = runs(redis, &format!("{key}:runs"));
    assert_eq!(done.len(), ids.len(), "one run each: {done:?}");
    let started = runs(redis, &format!("{key}:started"));
    assert_eq!(
        started.len(),
        ids.len(),
        "one start each (a task killed and run again starts twice): {started:?}\n{}",
        d.log()
    );
    done
}

/// 1 and 2: a burst of 200 tasks of 0.5 s scales 1 → 4 within 4 checks,
/// one step per check; once the backlog is drained it comes back to 1, one
/// step per `scale_down_after`, never up again on the way; every task ran
/// exactly once, on all four instances.
#[test]
fn a_burst_scales_one_to_four_within_four_checks_and_back_one_step_per_scale_down_after() {
    let _serial = serial();
    let redis = RedisServer::start();
    let url = redis.url();
    let d = daemon_with(
        &redis,
        "burst",
        2,
        "min = 1, max = 4, backlog_per_instance = 20, scale_down_after = \"3s\", memory_headroom = 0",
    );
    wait_consuming(&d, "burst-1");
    let mut trace = Trace::new(&d, &redis, "burst", "burst_q");
    let idle = trace.until("steady at 1", T, |s| {
        s.current == 1 && s.desired == 1 && s.state == "steady"
    });
    assert_eq!(idle.ids(), ["burst-1"]);
    let a = group_of(&d.status(), "burst")["autoscale"].clone();
    assert_eq!(
        (a["min"].as_u64(), a["max"].as_u64()),
        (Some(1), Some(4)),
        "{a}"
    );

    let burst = client_command(
        &url,
        &["burst", "demo.tally", "[\"tally\", 0.5]", "burst_q", "200"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("run send_tasks.py burst");
    // The backlog asks for 4 (above 3 × 20) from the first sample with
    // more than 60 waiting.
    let peak = trace.until("at 4 instances", T, |s| s.current >= 4);
    let out = burst.wait_with_output().expect("send_tasks.py burst");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 200);
    let asked = trace
        .first(Duration::ZERO, |s| s.queued > 60)
        .unwrap_or_else(|| panic!("never more than 60 waiting\n{}", trace.render()))
        .at;
    assert!(
        peak.at - asked <= 4 * CHECK + SLACK,
        "1 → 4 took {:?} from the backlog asking for 4 (bound: 4 checks)\n{}",
        peak.at - asked,
        trace.render()
    );

    trace.until("back at 1 with the queue drained", T, |s| {
        s.current == 1 && s.queued == 0 && s.ids() == ["burst-1"]
    });
    let runs = exactly_once(&redis, "tally", &ids, &d);
    let log = d.log();

    // One step at a time, up then down, never back up.
    assert_eq!(trace.steps(), [1, 2, 3, 4, 3, 2, 1], "{}", trace.render());
    assert_eq!(
        logged_changes(&log, "burst"),
        [(1, 2), (2, 3), (3, 4), (4, 3), (3, 2), (2, 1)],
        "each change is one info line\n{log}"
    );
    let at = |from: Duration, n: u64| trace.first(from, |s| s.current == n).unwrap().at;
    let (up2, up3, up4) = (at(Duration::ZERO, 2), at(Duration::ZERO, 3), peak.at);
    for (a, b) in [(up2, up3), (up3, up4)] {
        assert!(
            b - a >= CHECK / 2,
            "two steps up within one check ({a:?}, {b:?})\n{}",
            trace.render()
        );
    }
    // Down: only after desired stayed below current for scale_down_after,
    // then one step per scale_down_after.
    let sda = Duration::from_secs(3);
    let lower = trace
        .first(peak.at, |s| s.desired < 4)
        .expect("desired fell")
        .at;
    let (dn3, dn2, dn1) = (at(peak.at, 3), at(peak.at, 2), at(peak.at, 1));
    for (a, b) in [(lower, dn3), (dn3, dn2), (dn2, dn1)] {
        assert!(
            b - a + Duration::from_millis(500) >= sda,
            "a step down {:?} after the previous (bound: scale_down_after {sda:?})\n{}",
            b - a,
            trace.render()
        );
    }
    let drained = trace.first(peak.at, |s| s.queued == 0).expect("drained").at;
    assert!(
        dn1 - drained.min(dn1) <= 3 * sda + CHECK + SLACK,
        "back at 1 {:?} after the queue drained (bound: 3 × scale_down_after + a check)\n{}",
        dn1 - drained.min(dn1),
        trace.render()
    );
    eprintln!(
        "burst: asked for 4 at {asked:?}, up at {up2:?} {up3:?} {up4:?}, desired < 4 at {lower:?}, \
         drained at {drained:?}, down at {dn3:?} {dn2:?} {dn1:?}"
    );
    // The instances it scaled up to did the work.
    let nodes: BTreeSet<&str> = runs.iter().filter_map(|r| r["node"].as_str()).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["burst-1@ci", "burst-2@ci", "burst-3@ci", "burst-4@ci"]),
        "{}",
        trace.render()
    );
}

/// 2: a scale-down is a warm stop: the task running on the instance being
/// scaled away finishes there, the instance leaves status only after it,
/// and every task runs exactly once.
#[test]
fn scaling_down_is_warm_the_running_task_finishes_and_every_task_runs_once() {
    let _serial = serial();
    let redis = RedisServer::start();
    let url = redis.url();
    let d = daemon_with(
        &redis,
        "warm",
        1,
        "min = 1, max = 2, backlog_per_instance = 1, scale_down_after = \"2s\", memory_headroom = 0",
    );
    wait_consuming(&d, "warm-1");
    let mut trace = Trace::new(&d, &redis, "warm", "warm_q");
    trace.until("steady at 1", T, |s| s.current == 1 && s.state == "steady");

    // Three 6 s tasks, one at a time per worker: warm-1 takes one (2 wait:
    // desired 2), warm-2 comes up and takes one (1 waits: desired 1), and
    // 2 s later warm-2 is scaled away in the middle of its task.
    let ids = send_tallies(&url, "warm", 6.0, "warm_q", 3);
    let up = trace.until("scaled up to 2", T, |s| s.current == 2);
    let down = trace.until("scaled down to 1", T, |s| s.current == 1);
    let gone = trace.until("without warm-2", T, |s| !s.has("warm-2"));
    // The task warm-2 had started when it was scaled away: a premise.
    let started = wait_for(T, "3 tasks started", || {
        let s = runs(&redis, "warm:started");
        (s.len() >= 3).then_some(s)
    });
    let victim = started
        .iter()
        .find(|r| r["node"] == "warm-2@ci" && r["start"].as_f64().unwrap() < down.wall)
        .unwrap_or_else(|| {
            panic!(
                "warm-2 had started no task when it was scaled away at {} \
                 (started {started:?}): the test's premise failed\n{}",
                down.wall,
                trace.render()
            )
        })["id"]
        .clone();
    let runs = exactly_once(&redis, "warm", &ids, &d);
    let cut = runs
        .iter()
        .find(|r| r["id"] == victim)
        .expect("the victim ran");
    let end = cut["end"].as_f64().unwrap();
    assert!(
        cut["node"] == "warm-2@ci" && end > down.wall,
        "the task running on warm-2 when it was scaled away at {} did not finish \
         there: {cut}\n{}",
        down.wall,
        trace.render()
    );
    assert!(
        gone.wall >= end,
        "warm-2 left status ({}) before its task ended ({end})\n{}",
        gone.wall,
        trace.render()
    );
    assert!(up.at < down.at);
    assert_eq!(trace.steps(), [1, 2, 1], "{}", trace.render());
    assert_eq!(logged_changes(&d.log(), "warm"), [(1, 2), (2, 1)]);
    eprintln!(
        "warm: warm-2 scaled away at {:.2}, its task ended {:.2} s later, it left status {:.2} s after that",
        down.wall,
        end - down.wall,
        gone.wall - end
    );
}

/// 3: two daemons (two device ids, fleet publishing every second) share a
/// queue. A backlog that asks for 4 alone gets 2 on each, not 4 on each;
/// once one stops, the other takes the whole share and goes to 4.
#[test]
fn two_daemons_on_one_queue_together_run_the_desired_total_not_twice_it() {
    let _serial = serial();
    let redis = RedisServer::start();
    let url = redis.url();
    let config = |device: &str| {
        let groups = autoscaled(
            "shared",
            "shared_q",
            1,
            "min = 1, max = 6, backlog_per_instance = 10, scale_down_after = \"60s\", memory_headroom = 0",
            "stop_timeout = \"3s\"",
        );
        format!(
            "{}\n[fleet]\ninterval = \"1s\"\n",
            celery_config(&url, &groups)
        )
        .replace("device_id = \"ci\"", &format!("device_id = \"{device}\""))
    };
    let mut a = Daemon::new(&config("pi-a"));
    let mut b = Daemon::new(&config("pi-b"));
    a.start();
    b.start();
    wait_consuming(&a, "shared-1");
    wait_consuming(&b, "shared-1");
    // Both records are in the registry.
    wait_for(T, "both devices in the fleet registry", || {
        let members = redis
            .command(&["ZRANGE", "clearify:fleet", "0", "-1"])
            .ok()?;
        let both = members
            .lines()
            .filter(|m| ["pi-a", "pi-b"].contains(m))
            .count()
            == 2;
        let records = ["pi-a", "pi-b"].iter().all(|id| {
            redis
                .command(&["EXISTS", &format!("clearify:fleet:{id}")])
                .is_ok_and(|n| n == "1")
        });
        (both && records).then_some(())
    });
    let mut ta = Trace::new(&a, &redis, "shared", "shared_q");
    let mut tb = Trace::new(&b, &redis, "shared", "shared_q");
    ta.until("steady at 1", T, |s| s.current == 1);
    tb.until("steady at 1", T, |s| s.current == 1);
    // Give each daemon a fleet interval to read the other's record.
    wait_for(Duration::from_secs(10), "both see a share of 0.5", || {
        let sa = ta.sample();
        let sb = tb.sample();
        (sa.share == Some(0.5) && sb.share == Some(0.5)).then_some(())
    });

    // 40 tasks of 60 s, one per worker: the backlog stays at 36..38, which
    // alone asks for ⌈3.6..3.8⌉ = 4, and with a share of 0.5 for 2 each.
    let ids = send_tallies(&url, "shared", 60.0, "shared_q", 40);
    assert_eq!(ids.len(), 40);
    let start = Instant::now();
    let both_at_two = loop {
        let (sa, sb) = (ta.sample(), tb.sample());
        assert!(
            sa.current + sb.current <= 4,
            "together {} + {} instances, more than the 4 the backlog asks for\n{}\n{}",
            sa.current,
            sb.current,
            ta.render(),
            tb.render()
        );
        if sa.current == 2 && sb.current == 2 {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < T,
            "not 2 + 2 after {T:?}\n{}\n{}\n{}",
            ta.render(),
            tb.render(),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // And it stays there for 5 checks: neither runs to 4 on its own.
    let window = Instant::now();
    while window.elapsed() < 5 * CHECK {
        let (sa, sb) = (ta.sample(), tb.sample());
        for (name, s) in [("pi-a", &sa), ("pi-b", &sb)] {
            assert!(
                s.current == 2 && s.desired == 2 && s.share == Some(0.5),
                "{name} left 2 instances / desired 2 / share 0.5: {}\n{}\n{}",
                s.line(),
                ta.render(),
                tb.render()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        (34..=38).contains(&llen(&redis, "shared_q")),
        "the backlog stayed in Redis"
    );

    // pi-b stops: pi-a alone has the whole capacity and goes to 4.
    b.signal(Signal::SIGTERM);
    b.wait_exit(T);
    let stopped = Instant::now();
    let four = ta.until("at 4 alone", Duration::from_secs(20), |s| s.current == 4);
    let four_after = stopped.elapsed();
    assert_eq!(four.share, Some(1.0), "{}", four.line());
    assert_eq!(four.desired, 4, "{}", four.line());
    assert!(
        four_after <= 3 * CHECK + 2 * CHECK + SLACK,
        "pi-a took {four_after:?} to take pi-b's share (bound: its record's stop read within \
         an interval, then 2 checks)\n{}",
        ta.render()
    );
    assert_eq!(ta.steps(), [1, 2, 3, 4], "{}", ta.render());
    eprintln!(
        "shared: 2 + 2 reached {both_at_two:?} after the burst; pi-a alone at 4 {:?} after pi-b stopped",
        four_after
    );
}

/// 4: a `min = 0` group runs no worker until a task arrives, starts its
/// first within 2 checks of it, runs it, and goes back to none after
/// `scale_down_after`.
#[test]
fn a_min_zero_group_starts_its_first_worker_within_two_checks_of_a_task() {
    let _serial = serial();
    let redis = RedisServer::start();
    let url = redis.url();
    let d = daemon_with(
        &redis,
        "lazy",
        1,
        "min = 0, max = 2, backlog_per_instance = 5, scale_down_after = \"2s\", memory_headroom = 0",
    );
    let mut trace = Trace::new(&d, &redis, "lazy", "lazy_q");
    trace.until("steady at 0", T, |s| {
        s.current == 0 && s.desired == 0 && s.state == "steady"
    });
    trace.hold("without workers", 3 * CHECK, |s| {
        s.current == 0 && s.instances.is_empty()
    });
    assert_eq!(
        processes_of_daemon(d.pid()),
        Vec::<i32>::new(),
        "no worker process"
    );

    let sender = client_command(&url, &["send", "demo.tally", "[\"lazy\", 0]", "lazy_q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run send_tasks.py send");
    let arrived = wait_for(T, "the task in lazy_q", || {
        (llen(&redis, "lazy_q") >= 1).then(Instant::now)
    });
    let first = trace.until("starting a worker", T, |s| !s.instances.is_empty());
    let took = first.at.saturating_sub(arrived - trace.t0);
    assert!(
        took <= 2 * CHECK + SLACK / 2,
        "the first worker came {took:?} after the task (bound: 2 checks)\n{}",
        trace.render()
    );
    assert_eq!(first.ids(), ["lazy-1"]);
    eprintln!("lazy: the first worker came {took:?} after the task arrived");
    let sent = sender.wait_with_output().expect("send_tasks.py send");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let ids = vec![String::from_utf8_lossy(&sent.stdout).trim().to_string()];
    exactly_once(&redis, "lazy", &ids, &d);

    trace.until("back at 0 workers", T, |s| {
        s.current == 0 && s.instances.is_empty()
    });
    assert_eq!(trace.steps(), [0, 1, 0], "{}", trace.render());
    assert_eq!(logged_changes(&d.log(), "lazy"), [(0, 1), (1, 0)]);
}

/// 5: `clearifyctl scale GROUP N` pins the count (state manual) against an
/// empty backlog; out of range it is refused; `scale GROUP auto` gives the
/// count back to the backlog, which brings it down to min.
#[test]
fn clearifyctl_scale_pins_the_count_and_auto_gives_it_back_to_the_backlog() {
    let _serial = serial();
    let redis = RedisServer::start();
    let d = daemon_with(
        &redis,
        "pinned",
        1,
        "min = 1, max = 3, backlog_per_instance = 10, scale_down_after = \"2s\", memory_headroom = 0",
    );
    wait_consuming(&d, "pinned-1");
    let mut trace = Trace::new(&d, &redis, "pinned", "pinned_q");
    trace.until("steady at 1", T, |s| s.current == 1 && s.state == "steady");

    let ok = |args: &[&str]| {
        let out = d.ctl(args);
        assert!(
            out.status.success(),
            "clearifyctl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
    };
    ok(&["scale", "pinned", "3"]);
    let pinned = trace.until("pinned at 3", T, |s| {
        s.current == 3 && s.instances.len() == 3 && s.state == "manual"
    });
    assert_eq!(pinned.ids(), ["pinned-1", "pinned-2", "pinned-3"]);
    assert_eq!((pinned.desired, pinned.manual.as_u64()), (3, Some(3)));
    // The empty backlog asks for 1; the pin holds past scale_down_after.
    trace.hold("pinned at 3", 4 * CHECK, |s| {
        s.current == 3 && s.state == "manual" && s.manual == 3
    });
    let text = d.ctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| ["autoscale 1..3", "desired 3", "current 3", "manual"]
                .iter()
                .all(|w| l.contains(w))),
        "status shows the pinned group's scaling: {text}"
    );

    // Out of range, or an unknown group: refused, nothing changes.
    for args in [["scale", "pinned", "4"], ["scale", "nosuch", "1"]] {
        let out = d.ctl(&args);
        assert!(!out.status.success(), "clearifyctl {args:?} was accepted");
        assert!(!out.stderr.is_empty(), "clearifyctl {args:?} says why");
    }
    let out = d.ctl(&["scale", "pinned", "4"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains('3'), "the refusal names the max: {err}");
    assert_eq!(trace.sample().manual.as_u64(), Some(3));

    ok(&["scale", "pinned", "auto"]);
    trace.until("automatic again, desired 1", Duration::from_secs(5), |s| {
        s.state != "manual" && s.manual.is_null() && s.desired == 1
    });
    let back = trace.until("back at 1", T, |s| s.current == 1 && s.instances.len() == 1);
    assert_eq!(back.ids(), ["pinned-1"]);
    let from = pinned.at;
    let dn2 = trace
        .first(from, |s| s.current == 2)
        .expect("a step to 2")
        .at;
    let dn1 = trace
        .first(dn2, |s| s.current == 1)
        .expect("a step to 1")
        .at;
    assert!(
        dn1 - dn2 + Duration::from_millis(500) >= Duration::from_secs(2),
        "3 → 2 → 1 faster than one step per scale_down_after\n{}",
        trace.render()
    );
    let log = d.log();
    let changes = logged_changes(&log, "pinned");
    assert!(
        changes.ends_with(&[(3, 2), (2, 1)]),
        "the steps down are logged: {changes:?}\n{log}"
    );
}

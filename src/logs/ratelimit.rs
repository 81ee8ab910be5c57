//! Fairness under load: one token bucket per group for the worker records
//! at `info` and below, applied before they reach the sink, so that a
//! chatty group cannot use up journald's per-unit rate limit and get the
//! other groups' lines suppressed.
//!
//! # Why per group, and the defaults
//! journald limits each unit to `RateLimitBurst=10000` messages per
//! `RateLimitIntervalSec=30s`, counted per priority (and scaled up with
//! free disk space, never down). Every worker's records go out under the
//! daemon's unit, so the budget is shared. The buckets are per group, not
//! per instance: the sum of all buckets must stay below journald's limit
//! however many instances run (a group may scale from 1 to 1024), and a
//! group is what an operator configures and reads (`CLEARIFY_GROUP`).
//! Within a group, one flooding instance can still crowd out its siblings'
//! info lines; never another group's.
//!
//! `[daemon] log_rate_limit` (default 200 records per second,
//! `config::DEFAULT_LOG_RATE_LIMIT`) is the budget of all groups together, split evenly: each of `n`
//! groups gets `rate / n` per second and a burst of [`BURST_SECS`] seconds
//! of that. A token bucket passes at most `burst + rate × t` records in any
//! window of `t` seconds, so in journald's 30 s window all groups together
//! send at most `200 × 10 + 200 × 30 = 8,000` info records, below the
//! 10,000 of the default limit, which leaves 2,000 for the daemon's own
//! info lines.
//!
//! # What is never dropped
//! Records with a priority above info (notice, warning, error, critical:
//! syslog priority 5 and lower) always pass and take no token. The ring
//! buffer (`clearifyctl logs`) keeps every line: it is filled before this.
//!
//! # Cost
//! No timer and no task while nothing floods: a bucket refills lazily from
//! the time elapsed when a record arrives. The first drop of a period
//! starts one task that reports the period's drops as one warning,
//! `"<group>: 12,345 lines dropped (rate limit)"`, every [`REPORT_EVERY`]
//! until a period passes without drops; then it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::grouper::Record;

/// Each bucket holds this many seconds of its rate.
pub const BURST_SECS: f64 = 10.0;

/// How often a flooding group's drops are reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Records with a syslog priority of this or more (info, debug) may be
/// dropped.
pub const LIMITED_PRIORITY: u8 = 6;

/// A token bucket with lazy refill; time is an argument.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        TokenBucket {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Changes rate and burst, keeping the tokens earned so far (capped).
    pub fn set(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(0.0);
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        // A clock that went backwards (it cannot: Instant is monotonic)
        // would give zero, not a negative refill.
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }
}

/// What a group's limiter counts between two reports.
#[derive(Debug)]
struct State {
    bucket: TokenBucket,
    /// Lines in the records dropped since the last report.
    dropped: u64,
    /// A report task is running.
    reporting: bool,
}

/// The limiter of one group, shared by the pumps of its instances.
#[derive(Debug)]
pub struct GroupLimit {
    group: String,
    state: Mutex<State>,
}

impl GroupLimit {
    fn new(group: &str, rate: f64) -> Self {
        GroupLimit {
            group: group.to_owned(),
            state: Mutex::new(State {
                bucket: TokenBucket::new(rate, rate * BURST_SECS, Instant::now()),
                dropped: 0,
                reporting: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `record` may go to the sink. Records above info always may;
    /// a dropped one is counted, and the first drop of a period starts the
    /// report task (so this must run inside a tokio runtime).
    pub fn admit(self: &Arc<Self>, record: &Record) -> bool {
        if record.priority < LIMITED_PRIORITY {
            return true;
        }
        let mut s = self.lock();
        if s.bucket.take(Instant::now()) {
            return true;
        }
        let lines = record.message.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        s.dropped = s.dropped.saturating_add(lines);
        if !s.reporting {
            s.reporting = true;
            tokio::spawn(Arc::clone(self).report());
        }
        false
    }

    /// Reports the drops every [`REPORT_EVERY`]; ends after a period
    /// without drops.
    async fn report(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REPORT_EVERY).await;
            let n = {
                let mut s = self.lock();
                let n = std::mem::take(&mut s.dropped);
                if n == 0 {
                    s.reporting = false;
                    return;
                }
                n
            };
            let group = &self.group;
            let text = thousands(n);
            tracing::warn!(
                group = %group,
                dropped = n,
                "{group}: {text} lines dropped (rate limit)"
            );
        }
    }

    /// Lines dropped and not reported yet (tests).
    pub fn pending(&self) -> u64 {
        self.lock().dropped
    }
}

/// The limiters of all groups: the budget split evenly between the groups
/// that exist.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Records per second, all groups together; 0: no limit.
    total: u32,
    groups: HashMap<String, Arc<GroupLimit>>,
}

impl RateLimits {
    /// `total` records per second at info and below for all groups
    /// together; 0 turns the limit off.
    pub fn new(total: u32) -> Self {
        RateLimits {
            total,
            groups: HashMap::new(),
        }
    }

    fn share(&self) -> f64 {
        f64::from(self.total) / self.groups.len().max(1) as f64
    }

    /// A group exists (again): it gets its share, and every other group's
    /// share shrinks.
    pub fn add_group(&mut self, group: &str) {
        if self.total == 0 || self.groups.contains_key(group) {
            return;
        }
        // It starts with a full bucket of its share.
        let rate = f64::from(self.total) / (self.groups.len() + 1) as f64;
        self.groups
            .insert(group.to_owned(), Arc::new(GroupLimit::new(group, rate)));
        self.reshare();
    }

    /// A group is gone: the others share its budget.
    pub fn remove_group(&mut self, group: &str) {
        if self.groups.remove(group).is_some() {
            self.reshare();
        }
    }

    fn reshare(&self) {
        let rate = self.share();
        let now = Instant::now();
        for g in self.groups.values() {
            g.lock().bucket.set(rate, rate * BURST_SECS, now);
        }
    }

    /// The limiter for a group's pumps; `None` when the limit is off.
    pub fn of(&mut self, group: &str) -> Option<Arc<GroupLimit>> {
        if self.total == 0 {
            return None;
        }
        if !self.groups.contains_key(group) {
            self.add_group(group);
        }
        self.groups.get(group).cloned()
    }
}

/// `12345` → `"12,345"`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_full_bucket_passes_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 100.0, t0);
        let burst = (0..1000).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 100);
        // 1 s later: 10 more, not 11.
        let t1 = at(t0, 1000);
        assert_eq!((0..1000).filter(|_| b.take(t1)).count(), 10);
        // Half a token later, nothing; one and a half later, one.
        assert!(!b.take(at(t0, 1050)));
        assert!(b.take(at(t0, 1150)));
        assert!(!b.take(at(t0, 1150)));
    }

    #[test]
    fn a_flood_gets_burst_plus_rate_times_time_in_any_window() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(200.0, 2000.0, t0);
        // One record every 0.1 ms for 30 s: 300,000 offered.
        let passed = (0..300_000u64)
            .filter(|i| b.take(t0 + Duration::from_micros(i * 100)))
            .count();
        // burst + rate * 30 s, within one token of rounding.
        assert!((7999..=8001).contains(&passed), "{passed}");
    }

    #[test]
    fn an_idle_bucket_refills_only_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5.0, 20.0, t0);
        for _ in 0..20 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        let later = at(t0, 3_600_000);
        assert_eq!((0..100).filter(|_| b.take(later)).count(), 20);
        // A time before the last one refills nothing and does not panic.
        assert!(!b.take(t0));
    }

    #[test]
    fn resharing_caps_the_tokens_at_the_new_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 1000.0, t0);
        b.set(25.0, 250.0, t0);
        assert_eq!((0..1000).filter(|_| b.take(t0)).count(), 250);
        assert_eq!((0..1000).filter(|_| b.take(at(t0, 2000))).count(), 50);
    }

    #[test]
    fn the_budget_is_split_evenly_between_the_groups() {
        let mut l = RateLimits::new(200);
        let a = l.of("a").unwrap();
        assert_eq!(a.lock().bucket.rate, 200.0);
        let b = l.of("b").unwrap();
        for g in ["c", "d"] {
            l.add_group(g);
        }
        assert_eq!(a.lock().bucket.rate, 50.0);
        assert_eq!(b.lock().bucket.burst, 500.0);
        l.remove_group("c");
        l.remove_group("d");
        assert_eq!(a.lock().bucket.rate, 100.0);
        assert!(Arc::ptr_eq(&a, &l.of("a").unwrap()));
        assert!(RateLimits::new(0).of("a").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn warnings_pass_info_is_dropped_and_counted_in_lines() {
        let mut l = RateLimits::new(1);
        let g = l.of("text").unwrap();
        let rec = |p: u8, m: &[u8]| Record {
            message: m.to_vec(),
            priority: p,
        };
        // The burst: 10 s of 1/s.
        let passed = (0..100).filter(|_| g.admit(&rec(6, b"x"))).count();
        assert_eq!(passed, 10);
        for p in [2, 3, 4, 5] {
            assert!(g.admit(&rec(p, b"never dropped")));
        }
        assert!(!g.admit(&rec(7, b"debug\n  two lines")));
        assert_eq!(g.pending(), 90 + 2);
        // The report takes the count; a quiet period ends the task.
        tokio::time::sleep(REPORT_EVERY + Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert_eq!(g.pending(), 0);
        tokio::time::sleep(REPORT_EVERY).await;
        tokio::task::yield_now().await;
        assert!(!g.lock().reporting);
    }

    #[test]
    fn counts_are_written_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(12345), "12,345");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    }
}

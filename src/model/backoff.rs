//! The restart delay schedule.
//!
//! The first restart waits `restart_delay`. Every further *quick* failure in
//! a row (an exit within `stable_after` of the start) doubles the delay, up
//! to `restart_delay_max`. A ±10% jitter keeps many instances that crashed
//! together (a broker outage, a bad deploy) from restarting in lockstep.
//!
//! [`Retry`] is the same schedule with state and a spread of its own, for
//! the broker monitor's gate and reconnect loops (200 ms → 10 s, ±20 %).
//! This is the only backoff in the crate; it imports nothing but `std`.

use std::time::Duration;

/// The jitter range: ±10%.
pub const JITTER: f64 = 0.10;

/// The delay before the next start after `quick_failures` consecutive quick
/// failures (counting the one that just happened; 0 after a stable run).
///
/// `jitter` is a number in `[-1, 1]`; it scales the ±10% jitter. Passing 0
/// gives the exact schedule, which the tests use.
pub fn delay(base: Duration, max: Duration, quick_failures: u32, jitter: f64) -> Duration {
    spread_delay(base, max, quick_failures, jitter, JITTER)
}

/// [`delay`] with a jitter range of ±`spread` (a fraction: 0.2 is ±20%)
/// instead of ±10%.
pub fn spread_delay(
    base: Duration,
    max: Duration,
    quick_failures: u32,
    jitter: f64,
    spread: f64,
) -> Duration {
    let doublings = quick_failures.saturating_sub(1).min(32);
    let exact = base
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(max)
        .min(max);
    let factor = 1.0 + spread * jitter.clamp(-1.0, 1.0);
    // Not `mul_f64`, which panics when the product does not fit; a NaN
    // jitter makes the factor NaN, which is refused here too.
    Duration::try_from_secs_f64(exact.as_secs_f64() * factor).unwrap_or(if factor < 1.0 {
        exact
    } else {
        Duration::MAX
    })
}

/// A retry loop's schedule: `base` after the first failure, doubling with
/// every further one up to `max`, each delay jittered by ±`spread` and never
/// above `max`. [`Retry::reset`] after a success starts again at `base`.
#[derive(Debug, Clone)]
pub struct Retry {
    base: Duration,
    max: Duration,
    spread: f64,
    failures: u32,
}

impl Retry {
    pub const fn new(base: Duration, max: Duration, spread: f64) -> Self {
        Retry {
            base,
            max,
            spread,
            failures: 0,
        }
    }

    /// Back to `base` (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next attempt. `jitter` is a number in `[-1, 1]`
    /// as for [`delay`]; 0 gives the exact schedule.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        spread_delay(self.base, self.max, self.failures, jitter, self.spread).min(self.max)
    }
}

/// After this many quick failures in a row an instance reports `crash-loop`.
pub const CRASH_LOOP_AFTER: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_per_quick_failure_and_caps() {
        let base = 100 * MS;
        let max = Duration::from_secs(1);
        let got: Vec<u128> = (0..8)
            .map(|n| delay(base, max, n, 0.0).as_millis())
            .collect();
        assert_eq!(got, vec![100, 100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let base = 1000 * MS;
        let max = Duration::from_secs(60);
        assert_eq!(delay(base, max, 1, 1.0), 1100 * MS);
        assert_eq!(delay(base, max, 1, -1.0), 900 * MS);
        // Out-of-range jitter is clamped.
        assert_eq!(delay(base, max, 1, 7.0), 1100 * MS);
    }

    #[test]
    fn zero_delay_stays_zero_and_huge_counts_do_not_overflow() {
        assert_eq!(delay(Duration::ZERO, MS, 5, 1.0), Duration::ZERO);
        assert_eq!(
            delay(MS, Duration::from_secs(60), u32::MAX, 0.0),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn the_largest_delays_and_jitter_do_not_overflow() {
        // `Duration::mul_f64` panics when the product does not fit.
        assert_eq!(delay(Duration::MAX, Duration::MAX, 1, 1.0), Duration::MAX);
        assert_eq!(
            delay(Duration::MAX, Duration::MAX, u32::MAX, -1.0),
            Duration::MAX.mul_f64(0.9)
        );
        let y = Duration::from_secs(300_000_000_000 * 31_557_600);
        assert_eq!(delay(y, y, 1, 1.0), y.mul_f64(1.1));
    }

    /// The broker's schedule (was a second `Backoff` in broker/mod.rs, with
    /// its own `rand` call; now the jitter is an argument).
    #[test]
    fn retry_grows_to_the_cap_with_jitter_and_resets() {
        let mut r = Retry::new(200 * MS, Duration::from_secs(10), 0.2);
        assert_eq!(r.next_delay(-1.0), 160 * MS);
        let mut r = Retry::new(200 * MS, Duration::from_secs(10), 0.2);
        assert_eq!(r.next_delay(1.0), 240 * MS);
        let exact: Vec<u128> = (0..8).map(|_| r.next_delay(0.0).as_millis()).collect();
        assert_eq!(exact, [400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        // The jitter never takes a delay above the cap.
        for _ in 0..20 {
            assert_eq!(r.next_delay(1.0), Duration::from_secs(10));
        }
        assert_eq!(r.next_delay(-1.0), Duration::from_secs(8));
        r.reset();
        assert_eq!(r.next_delay(0.0), 200 * MS);
        // Counting never overflows.
        let mut r = Retry::new(MS, Duration::from_secs(1), 0.2);
        r.failures = u32::MAX;
        assert_eq!(r.next_delay(0.0), Duration::from_secs(1));
    }
}

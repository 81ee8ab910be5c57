//! A periodic timer on a Linux timerfd, for the long, idle-time periods
//! (the systemd watchdog; the broker health check has a thread of its own,
//! see `broker::health`).
//!
//! tokio's timer wheel is hierarchical: a timer seconds away sits in a
//! coarse slot and the runtime wakes up two or three times before it fires,
//! to move it down to finer slots. For an idle daemon the wake-ups are the
//! CPU cost (each one costs tens to hundreds of microseconds on a small or
//! busy machine, whatever little it does), so a period of 10 s should cost
//! one wake-up, not three. A timerfd wakes the thread exactly once per
//! period, through the same epoll instance as every other event.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Ticks every `period`, the first time one period after creation. Missed
/// ticks (the owner was busy) are merged into one, like
/// `tokio::time::MissedTickBehavior::Skip`.
pub struct Ticker {
    fd: AsyncFd<Timer>,
    period: Duration,
}

/// `TimerFd` with the `AsRawFd` that `AsyncFd` wants.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Ticker {
    /// A ticker on CLOCK_MONOTONIC. Must be called inside a tokio runtime.
    /// `period` must not be zero.
    pub fn new(period: Duration) -> io::Result<Ticker> {
        if period.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a ticker's period must not be zero",
            ));
        }
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        let spec = TimeSpec::from_duration(period);
        timer.set(
            Expiration::IntervalDelayed(spec, spec),
            TimerSetTimeFlags::empty(),
        )?;
        // SAFETY: `Timer` owns the timerfd and always returns that same
        // open fd; it is closed only when the AsyncFd (and so the Timer) is
        // dropped.
        let fd = unsafe { AsyncFd::register_with_interest(Timer(timer), Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Ticker { fd, period })
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Waits for the next tick. Cancel-safe: a tick that is not consumed
    /// stays pending.
    pub async fn tick(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            // Reading the timerfd returns (and resets) the number of
            // expirations; EAGAIN means none yet.
            match guard.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn ticks_once_per_period_and_merges_missed_ticks() {
        const P: Duration = Duration::from_millis(100);
        // Before the timer is armed: its ticks count from its creation.
        let t0 = Instant::now();
        let t = Ticker::new(P).unwrap();
        assert_eq!(t.period(), P);
        t.tick().await.unwrap();
        assert!(t0.elapsed() >= P, "{:?}", t0.elapsed());
        t.tick().await.unwrap();
        assert!(t0.elapsed() >= 2 * P, "{:?}", t0.elapsed());
        // Busy for three periods and a third (ticks due at 3P, 4P, 5P): one
        // tick is pending, not three; the next comes at 6P.
        std::thread::sleep(P * 10 / 3);
        t.tick().await.unwrap();
        let t1 = Instant::now();
        t.tick().await.unwrap();
        let waited = t1.elapsed();
        assert!(
            waited >= Duration::from_millis(5),
            "missed ticks were queued, not merged (waited {waited:?})"
        );
        assert!(t0.elapsed() >= 6 * P, "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn a_zero_period_is_refused() {
        assert!(Ticker::new(Duration::ZERO).is_err());
    }
}

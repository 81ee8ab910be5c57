//! The actor's side of autoscaling: when a check is due (the backlog poll,
//! at most once per `[broker] check_interval` however often a status
//! request refreshes the backlog), what the machine cannot know is
//! measured here and handed to `Machine::scale_check` as a
//! [`ScaleSample`] per group:
//!
//! - the share: this group's `max × concurrency` against the other live
//!   devices' capacity for its queues (`BrokerEvent::FleetCapacity`, read
//!   by the broker monitor every `[fleet] interval`); 1 while unknown;
//! - memory: `MemAvailable`, the expected memory of one more instance (the
//!   group cgroup's `memory.current` over its instances, else their
//!   sampled RSS, else `memory_max / max`) and pressure (`memory.events`
//!   counters going up since the last check, or PSI), through
//!   `Effects::memory_sample`.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::*;
use crate::model::autoscale::Memory;
use crate::model::fleet::{Capacity, group_share};
use crate::sys::cgroup::{MemoryPressure, under_pressure};
use machine::ScaleSample;

/// What the actor keeps between checks.
#[derive(Debug, Default)]
pub(super) struct Autoscaling {
    /// When the last check ran.
    last: Option<Instant>,
    /// The other live devices' capacity on this device's queues; `None`
    /// while unknown (share 1).
    capacity: Option<Vec<Capacity>>,
    /// Each group's previous memory sample (pressure is a counter going up).
    previous: BTreeMap<String, MemoryPressure>,
    /// The broker monitor reads the fleet's capacity (set at its start).
    pub(super) reads_capacity: bool,
}

impl<E: Effects> Supervisor<E> {
    /// The fleet's capacity changed (or became unknown).
    pub(super) fn fleet_capacity(&mut self, capacity: Option<Vec<Capacity>>) {
        self.scaling.capacity = capacity;
    }

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
        let groups = self.machine.autoscaled_groups();
        let sample = self.effects.memory_sample(&groups);
        let views = self.machine.scale_views();
        let plan = self.machine.plan();
        let mut out = BTreeMap::new();
        for g in plan.groups.iter().filter(|g| groups.contains(&g.name)) {
            let Some(a) = g.autoscale else {
                continue;
            };
            let current = views
                .iter()
                .find(|v| v.group == g.name)
                .map_or(0, |v| v.current);
            let share = self.scaling.capacity.as_ref().map(|others| {
                let mine = u64::from(a.max).saturating_mul(u64::from(g.concurrency));
                group_share(&g.queues, mine, others)
            });
            let now = sample.groups.get(&g.name).copied().unwrap_or_default();
            let pressure = under_pressure(self.scaling.previous.get(&g.name), &now);
            self.scaling.previous.insert(g.name.clone(), now);
            // The sampled RSS of the group's instances (by their plan ids).
            let rss: Vec<u64> = g
                .instances
                .iter()
                .filter_map(|s| self.usage.get(&s.id)?.memory)
                .collect();
            let per_instance = match (now.current, current) {
                (Some(bytes), n) if n > 0 && bytes > 0 => Some(bytes / u64::from(n)),
                _ if !rss.is_empty() => {
                    Some(rss.iter().fold(0u64, |s, r| s.saturating_add(*r)) / rss.len() as u64)
                }
                _ => g.limits.memory_max.map(|m| m / u64::from(a.max.max(1))),
            };
            out.insert(
                g.name.clone(),
                ScaleSample {
                    share,
                    memory: Memory {
                        available: sample.available,
                        per_instance,
                        pressure,
                    },
                },
            );
        }
        self.scaling.previous.retain(|g, _| groups.contains(g));
        out
    }
}

//! Backlog-driven scaling (issue 15): the decision, pure. Every check the
//! supervisor hands [`Scaler::decide`] the group's backlog, its share of
//! the fleet's capacity for its queues ([`share`]), its instances and the
//! memory figures; the answer is the instance count to move to (at most
//! one step) and why.
//!
//! desired = clamp(⌈backlog / backlog_per_instance × share⌉, min, max)
//!
//! - up: one instance per check, only when memory allows (MemAvailable
//!   minus the expected memory of one more instance stays above
//!   `memory_headroom`, and no memory pressure) and no instance is in
//!   crash-loop (a crash-looping instance is not capacity, and scaling up
//!   because of it only adds crashes);
//! - down: one instance per `scale_down_after` of the desired count staying
//!   below the current one (the hysteresis: a backlog hovering at a
//!   threshold never makes it oscillate faster than that); under memory
//!   pressure at once;
//! - never below `min` nor above `max`.
//!
//! The config key is `autoscale = { … }` (config/checker/autoscale.rs);
//! the machine carries the decisions out (supervisor/machine/scale.rs).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A group's `autoscale = { … }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Autoscale {
    pub min: u32,
    pub max: u32,
    pub backlog_per_instance: u32,
    pub scale_down_after: Duration,
    pub memory_headroom: u64,
}

/// What the supervisor knows at a check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// Messages waiting in the group's queues (priority sub-queues summed);
    /// `None` when unknown (broker down): nothing changes.
    pub backlog: Option<u64>,
    /// This device's part of the capacity for those queues, 0..=1
    /// ([`share`]); 1 when the fleet is unknown.
    pub share: f64,
    /// Instances the group has now.
    pub current: u32,
    /// Of them, in crash-loop.
    pub crash_looping: u32,
    pub memory: Memory,
}

/// The memory figures of a check.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Memory {
    /// `MemAvailable` of /proc/meminfo.
    pub available: Option<u64>,
    /// The expected memory of one more instance: the group's current
    /// instances' average, or `memory_max` / instances.
    pub per_instance: Option<u64>,
    /// `memory.events` high/oom went up, or PSI `some avg10` is over its
    /// threshold.
    pub pressure: bool,
}

/// Why the count is what it is. The wire spelling (status `state`) is
/// kebab-case: `up-refused-memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The backlog is not known: no change.
    BacklogUnknown,
    /// Desired equals current.
    Steady,
    Up,
    /// Desired is above current, and memory does not allow another.
    UpRefusedMemory,
    /// Desired is above current, and an instance is in crash-loop.
    UpRefusedCrashLoop,
    /// Desired is below current, for less than `scale_down_after` so far.
    DownWaiting,
    Down,
    /// Memory pressure: one down at once.
    DownPressure,
    /// `clearifyctl scale GROUP N`: the operator's count, until `auto`.
    Manual,
    /// An operator `stop` pinned an instance of the group: no scaling
    /// until it is started.
    Held,
}

impl Reason {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BacklogUnknown => "backlog-unknown",
            Reason::Steady => "steady",
            Reason::Up => "up",
            Reason::UpRefusedMemory => "up-refused-memory",
            Reason::UpRefusedCrashLoop => "up-refused-crash-loop",
            Reason::DownWaiting => "down-waiting",
            Reason::Down => "down",
            Reason::DownPressure => "down-pressure",
            Reason::Manual => "manual",
            Reason::Held => "held",
        }
    }
}

/// One check's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The count the backlog asks for (clamped).
    pub desired: u32,
    /// The count to move to now (current ± at most one).
    pub target: u32,
    pub reason: Reason,
}

/// `mine / (mine + others)`: this device's part of the capacity (max
/// instances × concurrency) that consumes the group's queues, from the
/// live devices' fleet records. 1 when there is no capacity at all.
pub fn share(mine: u64, others: impl IntoIterator<Item = u64>) -> f64 {
    let total = others.into_iter().fold(mine, u64::saturating_add);
    if total == 0 {
        1.0
    } else {
        mine as f64 / total as f64
    }
}

/// A group's scaling state between checks.
#[derive(Debug, Clone)]
pub struct Scaler {
    pub config: Autoscale,
    /// Since when desired has been below current.
    below_since: Option<Instant>,
}

impl Scaler {
    pub fn new(config: Autoscale) -> Scaler {
        Scaler {
            config,
            below_since: None,
        }
    }

    /// The clamped count the backlog asks for.
    pub fn desired(&self, backlog: u64, share: f64) -> u32 {
        let c = self.config;
        let per = f64::from(c.backlog_per_instance.max(1));
        let share = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let raw = (backlog as f64 / per * share).ceil();
        // `as` saturates: a huge backlog is `max`.
        (raw as u32).clamp(c.min, c.max.max(c.min))
    }

    pub fn decide(&mut self, inputs: &Inputs, now: Instant) -> Decision {
        let c = self.config;
        let current = inputs.current;
        let Some(backlog) = inputs.backlog else {
            self.below_since = None;
            return Decision {
                desired: current,
                target: current,
                reason: Reason::BacklogUnknown,
            };
        };
        let desired = self.desired(backlog, inputs.share);
        let at = |target, reason| Decision {
            desired,
            target,
            reason,
        };
        if inputs.memory.pressure && current > c.min {
            self.below_since = Some(now);
            return at(current - 1, Reason::DownPressure);
        }
        if desired > current {
            self.below_since = None;
            if inputs.crash_looping > 0 {
                return at(current, Reason::UpRefusedCrashLoop);
            }
            if !self.memory_allows(&inputs.memory) {
                return at(current, Reason::UpRefusedMemory);
            }
            return at(current + 1, Reason::Up);
        }
        if desired == current {
            self.below_since = None;
            return at(current, Reason::Steady);
        }
        let since = *self.below_since.get_or_insert(now);
        if now.duration_since(since) >= c.scale_down_after {
            // The next step down waits a whole period again.
            self.below_since = Some(now);
            return at(current - 1, Reason::Down);
        }
        at(current, Reason::DownWaiting)
    }

    /// One more instance keeps `MemAvailable` above the headroom, and there
    /// is no pressure. Unknown figures allow (the kernel's OOM handling and
    /// `memory_max` still apply).
    fn memory_allows(&self, m: &Memory) -> bool {
        if m.pressure {
            return false;
        }
        match (m.available, m.per_instance) {
            (Some(avail), Some(per)) => avail.saturating_sub(per) > self.config.memory_headroom,
            (Some(avail), None) => avail > self.config.memory_headroom,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests;

//! The fleet as an autoscaled group's share sees it (issue 15): the other
//! live devices' capacity for this device's queues ([`capacities`], from
//! the records a reader took in), and this device's part of it
//! ([`group_share`], over [`crate::model::autoscale::share`]).
//!
//! A device counts when its presence is [`Presence::Up`] (the reader's one
//! liveness rule: not stopped, last beat within [`LOST_AFTER_INTERVALS`]
//! of its interval) and it is not this device. Each of its groups that
//! consumes any queue of this device is one [`Capacity`]: its
//! `max_instances` (else `total`, for an older daemon's record) less its
//! instances in crash-loop (they are not capacity), × `concurrency`.
//!
//! [`LOST_AFTER_INTERVALS`]: super::LOST_AFTER_INTERVALS

use std::collections::HashSet;

use super::{Presence, Seen};
use crate::model::autoscale::share;

/// One group of another live device that consumes some of this device's
/// queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Its queues that this device consumes too (sorted, distinct, never
    /// empty): the rest cannot matter to a share here, and leaving them out
    /// bounds the work of each check however many queues a hostile record
    /// names.
    pub queues: Vec<String>,
    /// (`max_instances` (else `total`) − `crash_looping`) × `concurrency`,
    /// saturating.
    pub capacity: u64,
}

/// The groups of the other live devices (presence [`Presence::Up`] at
/// Redis time `now`, device id not `me`) that consume any of `consumed`
/// (this device's queues), with their capacity. Groups of no capacity are
/// left out (they change no share). O(what was read).
pub fn capacities(now: f64, seen: &[Seen], me: &str, consumed: &[String]) -> Vec<Capacity> {
    let consumed: HashSet<&str> = consumed.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for s in seen {
        if s.record.device_id == me || s.presence(now) != Presence::Up {
            continue;
        }
        for g in &s.record.groups {
            // Instances in crash-loop are not capacity (issue 15).
            let instances = g
                .max_instances
                .unwrap_or(g.total)
                .saturating_sub(g.crash_looping);
            let capacity = u64::from(instances).saturating_mul(u64::from(g.concurrency));
            if capacity == 0 {
                continue;
            }
            let mut queues: Vec<String> = g
                .queues
                .iter()
                .filter(|q| consumed.contains(q.as_str()))
                .cloned()
                .collect();
            if queues.is_empty() {
                continue;
            }
            queues.sort_unstable();
            queues.dedup();
            out.push(Capacity { queues, capacity });
        }
    }
    out
}

/// This device's part of the capacity for a group's queues: `mine /
/// (mine + Σ capacity of the entries of `others` that consume any of
/// `my_queues`)`; 1 when that total is 0. An entry consuming several of the
/// queues counts once.
pub fn group_share(my_queues: &[String], my_capacity: u64, others: &[Capacity]) -> f64 {
    share(
        my_capacity,
        others
            .iter()
            .filter(|c| c.queues.iter().any(|q| my_queues.contains(q)))
            .map(|c| c.capacity),
    )
}

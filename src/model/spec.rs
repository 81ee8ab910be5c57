//! What the daemon runs: the plan ([`Plan`], its groups and the exact
//! [`InstanceSpec`] of every worker, and the [`diff`] of two plans on
//! reload), and what one group's workers are given: their resource limits
//! and their restart and stop timing. Plain data, built by `plan::build`
//! from a checked config and read by the state machine, the process and
//! the cgroup layers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::autoscale::Autoscale;

/// Resource limits of one queue group (cgroup v2). `None` leaves the
/// kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// memory.max, bytes.
    pub memory_max: Option<u64>,
    /// memory.high, bytes.
    pub memory_high: Option<u64>,
    /// memory.swap.max, bytes.
    pub memory_swap_max: Option<u64>,
    /// cpu.max as a number of CPUs, e.g. 1.5.
    pub cpu_max: Option<f64>,
    /// cpu.weight, 1..=10000.
    pub cpu_weight: Option<u32>,
    /// pids.max.
    pub pids_max: Option<u64>,
    /// io.weight, 1..=10000.
    pub io_weight: Option<u32>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// How an instance is restarted and stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// SIGTERM → SIGQUIT after this long.
    pub stop_timeout: Duration,
    /// First restart delay.
    pub restart_delay: Duration,
    /// Cap of the doubling restart delay.
    pub restart_delay_max: Duration,
    /// A run this long resets the backoff; a shorter one is a quick failure.
    pub stable_after: Duration,
    /// Restart when heartbeats stop for this long (after the first one).
    /// `None` turns it off.
    pub heartbeat_timeout: Option<Duration>,
    /// Restart when the instance makes no progress with backlog waiting for
    /// this long. `None` turns it off.
    pub stall_timeout: Option<Duration>,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            stop_timeout: Duration::from_secs(60),
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
            heartbeat_timeout: Some(Duration::from_secs(60)),
            stall_timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// One worker process to keep running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// `<group>-<i>`, e.g. `text-1`.
    pub id: String,
    pub group: String,
    /// 1-based.
    pub index: u32,
    /// Celery node name, `<group>-<i>@<device_id>`.
    pub node: String,
    /// The executable (`celery.command`), resolved.
    pub program: PathBuf,
    /// Arguments after the program.
    pub args: Vec<String>,
    /// The complete environment of the worker (nothing else is inherited).
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// The user to switch to when the daemon runs as root.
    pub user: Option<String>,
    pub timing: Timing,
}

/// One queue group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupPlan {
    pub name: String,
    pub queues: Vec<String>,
    pub limits: Limits,
    /// Every instance the group may have (`autoscale.max` of them with
    /// autoscale), shared with the supervisor's instances.
    pub instances: Vec<Arc<InstanceSpec>>,
    /// `-c` of each instance.
    pub concurrency: u32,
    /// `autoscale = { … }`: the count follows the backlog.
    pub autoscale: Option<Autoscale>,
    /// How many of `instances` run at start (all of them without
    /// autoscale).
    pub start: u32,
}

/// Everything the daemon runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub device_id: String,
    /// Groups in config order.
    pub groups: Vec<GroupPlan>,
}

impl Plan {
    pub fn group(&self, name: &str) -> Option<&GroupPlan> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn instances(&self) -> impl Iterator<Item = &Arc<InstanceSpec>> {
        self.groups.iter().flat_map(|g| g.instances.iter())
    }
}

/// What a reload changes, by group name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Compare two plans group by group. A group is changed when anything that
/// affects its processes differs (queues, limits, any instance spec).
pub fn diff(old: &Plan, new: &Plan) -> PlanDiff {
    // By name through maps: linear in the number of groups.
    let by_name = |p: &'_ Plan| -> HashMap<String, usize> {
        p.groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.clone(), i))
            .collect()
    };
    let (old_names, new_names) = (by_name(old), by_name(new));
    let mut d = PlanDiff::default();
    for g in &new.groups {
        match old_names.get(&g.name).and_then(|&i| old.groups.get(i)) {
            None => d.added.push(g.name.clone()),
            Some(o) if o == g => d.unchanged.push(g.name.clone()),
            Some(_) => d.changed.push(g.name.clone()),
        }
    }
    for g in &old.groups {
        if !new_names.contains_key(&g.name) {
            d.removed.push(g.name.clone());
        }
    }
    d
}

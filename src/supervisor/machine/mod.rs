//! The supervision state machine: events in, actions out.
//!
//! [`Machine`] never touches the OS. It is told what happened (a worker was
//! spawned or exited, time passed, the operator asked for something, the
//! broker came up, a heartbeat arrived) and answers with [`Action`]s for the
//! effect modules to carry out (spawn, signal, kill a process tree, prepare a
//! cgroup). Every method takes `now`, so tests drive it with tokio's paused
//! clock and assert on the actions.
//!
//! One instance goes through these phases:
//!
//! ```text
//!  waiting-for-broker ─(gate opens)─┐
//!                                   ▼
//!   stopped ──start──► starting ──spawned──► running ──exit──► backoff ──delay──► starting …
//!                                              │
//!                                     stop/restart/reload
//!                                              ▼
//!                    stopping: SIGTERM ─stop_timeout─► SIGQUIT ─10 s─► kill tree
//!                                              │ (main exited and its tree is gone)
//!                                              ▼
//!                                   stopped, then: stay (pinned) / start again / remove
//! ```
//!
//! The machine holds typed state only ([`InstanceState`], [`ExitReason`]);
//! the status code (`supervisor::status`) turns it into text.
//!
//! Files: this one holds the types, the events and the views;
//! `commands.rs` the operator's commands and the reload; `lifecycle.rs`
//! how an instance moves between phases; `instance.rs` one instance's data
//! and health checks. The tests (`tests.rs`) drive it on tokio's paused
//! clock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

pub use crate::model::ExitReason;
use crate::model::InstanceState;
use crate::model::backoff;
use crate::model::target::{self, Member, Target};
use crate::plan::{self, InstanceSpec, Limits, Plan, PlanDiff};

/// How long Celery gets to act on SIGQUIT (cold shutdown) before the whole
/// process tree is killed.
pub const QUIT_GRACE: Duration = Duration::from_secs(10);

/// How long to wait for a killed process tree to disappear before trying
/// again (and saying so).
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// A freshly spawned worker counts as up (for rolling restarts and status)
/// after its first heartbeat or after this long alive, whichever is first.
pub const UP_AFTER: Duration = Duration::from_secs(1);

/// A stop signal for a worker's main process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// Celery's warm shutdown: running tasks finish.
    Term,
    /// Celery's cold shutdown: unacked messages are restored.
    Quit,
}

/// Something for the effect modules to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Make sure the group's cgroup exists with these limits.
    PrepareGroup { group: String, limits: Limits },
    /// Start the worker. Answer with [`Machine::spawned`] or
    /// [`Machine::spawn_failed`].
    Spawn {
        spec: Arc<InstanceSpec>,
        generation: u64,
    },
    /// Signal the worker's main process only (never its pool children).
    Signal {
        id: String,
        pid: u32,
        signal: StopSignal,
    },
    /// SIGKILL every process that belongs to this run of the instance: the
    /// main process, its process group, its cgroup and any descendant that
    /// escaped with setsid. Answer with [`Machine::tree_cleared`] once none
    /// is left.
    KillTree {
        id: String,
        group: String,
        /// The run's main pid, which is also its process group and session
        /// id (workers start with setsid). It may have exited already.
        pgid: Option<u32>,
        generation: u64,
        seq: u64,
        /// Whether the instance's cgroup leaf may be emptied too. False when
        /// the next run may start before this kill is done (a restart after
        /// a crash): the leaf is then emptied synchronously right before the
        /// next spawn instead, so the kill can never hit the new run.
        whole_cgroup: bool,
    },
    /// The group is gone from the config and has no instance left.
    RemoveGroup { group: String },
    /// Everything is stopped after a shutdown: the daemon may exit.
    Exit,
}

/// A target that names no group or instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown target {0:?}: name a group, an instance id such as text-1, or \"all\"")]
    UnknownTarget(String),
    #[error("no target given: name a group, an instance id such as text-1, or \"all\"")]
    NoTarget,
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

mod commands;
mod instance;
mod lifecycle;
mod scale;

use instance::{After, Health, HealthVerdict, Instance, Phase, Stage};
pub use instance::{InstanceView, SummaryFacts, Trouble};
use instance::{group_backlog, health_verdict, later};
use scale::Scale;
pub use scale::{ScaleError, ScaleSample, ScaleView};

#[derive(Debug, Default)]
struct Rolling {
    queue: VecDeque<String>,
    current: Option<String>,
}

/// The supervision state of every instance.
pub struct Machine {
    plan: Plan,
    instances: BTreeMap<String, Instance>,
    /// The instance of each live main pid: an exit is routed in O(1), so a
    /// mass crash of thousands of workers stays linear.
    pids: HashMap<u32, String>,
    gate_open: bool,
    broker_up: bool,
    shutting_down: bool,
    exit_sent: bool,
    /// After a shutdown: the instances not yet stopped (see
    /// [`Machine::check_done`]).
    unstopped: HashSet<String>,
    rolling: BTreeMap<String, Rolling>,
    backlog: BTreeMap<String, u64>,
    /// The groups with `autoscale`, by name (scale.rs).
    scales: BTreeMap<String, Scale>,
    kill_seq: u64,
    actions: Vec<Action>,
    jitter: Box<dyn FnMut() -> f64 + Send>,
    /// Bumped by every event that may change a state, a deadline or the
    /// summary; see [`Machine::revision`].
    revision: u64,
}

impl Machine {
    /// A machine for `plan`. With `gate_open` false, instances wait for
    /// [`Machine::open_gate`] (the broker being reachable) before they start.
    /// `jitter` returns numbers in `[-1, 1]` for the backoff jitter.
    pub fn new(plan: Plan, gate_open: bool, jitter: Box<dyn FnMut() -> f64 + Send>) -> Self {
        // With autoscale, a group starts with its start count.
        let instances = plan
            .groups
            .iter()
            .flat_map(|g| {
                let start = if g.autoscale.is_some() {
                    usize::try_from(g.start).unwrap_or(usize::MAX)
                } else {
                    g.instances.len()
                };
                g.instances.iter().take(start)
            })
            .map(|s| (s.id.clone(), Instance::new(s.clone())))
            .collect();
        let scales = Machine::scales_for(&plan, &mut BTreeMap::new());
        Machine {
            plan,
            instances,
            pids: HashMap::new(),
            gate_open,
            broker_up: gate_open,
            shutting_down: false,
            exit_sent: false,
            unstopped: HashSet::new(),
            rolling: BTreeMap::new(),
            backlog: BTreeMap::new(),
            scales,
            kill_seq: 0,
            actions: Vec::new(),
            jitter,
            revision: 0,
        }
    }

    /// A number that changes whenever an event may have changed a state, a
    /// deadline ([`Machine::next_deadline`]) or the summary
    /// ([`Machine::summary_facts`]). The routine events of an idle daemon
    /// (a heartbeat from a worker that is up, a backlog that stalls nothing,
    /// the broker staying up) leave it alone, so the owner can skip the
    /// O(instances) work those need. A heartbeat can only move a deadline
    /// later: a deadline cached from an older revision fires early at worst,
    /// and [`Machine::tick`] then bumps the revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn bump(&mut self) {
        self.revision = self.revision.wrapping_add(1);
    }

    /// Prepare every group and start (or queue behind the broker gate) every
    /// instance.
    pub fn boot(&mut self, now: Instant) {
        self.bump();
        for g in self.plan.groups.clone() {
            self.actions.push(Action::PrepareGroup {
                group: g.name.clone(),
                limits: g.limits.clone(),
            });
        }
        let ids: Vec<String> = self
            .plan
            .instances()
            .filter(|s| self.instances.contains_key(&s.id))
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.launch(&id, now);
        }
        self.check_done();
    }

    /// The actions produced so far, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn gate_open(&self) -> bool {
        self.gate_open
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The instance whose current main process is `pid`.
    pub fn instance_by_pid(&self, pid: u32) -> Option<&InstanceSpec> {
        self.id_of_pid(pid)
            .and_then(|id| self.instances.get(id))
            .map(|i| &*i.spec)
    }

    /// Instance `id`, if `generation` is its current run.
    fn run_mut(&mut self, id: &str, generation: u64) -> Option<&mut Instance> {
        self.instances
            .get_mut(id)
            .filter(|i| i.generation == generation)
    }

    /// The instance whose current main process is `pid`, from the index.
    fn id_of_pid(&self, pid: u32) -> Option<&String> {
        self.pids
            .get(&pid)
            .filter(|id| self.instances.get(*id).is_some_and(|i| i.pid == Some(pid)))
    }

    /// Sets the main pid of `id`, keeping the pid index in step. Every
    /// change of `Instance::pid` goes through here.
    fn set_pid(&mut self, id: &str, pid: Option<u32>) {
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if let Some(old) = std::mem::replace(&mut inst.pid, pid)
            && self.pids.get(&old).is_some_and(|i| i == id)
        {
            self.pids.remove(&old);
        }
        if let Some(new) = pid {
            self.pids.insert(new, id.to_string());
        }
    }

    /// The broker became reachable for the first time (or the gate was
    /// overridden): start everything that waits for it.
    pub fn open_gate(&mut self, now: Instant) {
        if self.gate_open {
            return;
        }
        self.bump();
        self.gate_open = true;
        self.broker_up = true;
        let waiting: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, i)| i.phase == Phase::WaitingForBroker)
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            self.launch(&id, now);
        }
    }

    /// The broker's health changed. Workers are never restarted for a broker
    /// outage; heartbeat clocks restart when it comes back.
    pub fn broker_health(&mut self, up: bool, now: Instant) {
        if up == self.broker_up {
            return;
        }
        self.bump();
        if up {
            for i in self.instances.values_mut() {
                if i.health.last_heartbeat.is_some() {
                    i.health.last_heartbeat = Some(now);
                }
                i.health.stall_since = None;
            }
        }
        self.broker_up = up;
    }

    /// The worker for `id` (run `generation`) was spawned as `pid`.
    pub fn spawned(&mut self, id: &str, generation: u64, pid: u32, now: Instant) {
        self.bump();
        let Some(inst) = self.run_mut(id, generation) else {
            return;
        };
        inst.pgid = Some(pid);
        inst.health = Health::default();
        inst.up_seen = false;
        let phase = inst.phase.clone();
        if phase == Phase::Starting {
            inst.phase = Phase::Running { since: now };
        }
        self.set_pid(id, Some(pid));
        match phase {
            Phase::Starting => {
                info!(instance = id, pid, "{id} started (pid {pid})");
            }
            Phase::Stopping { .. } => {
                // A stop arrived while it was being spawned.
                self.actions.push(Action::Signal {
                    id: id.to_string(),
                    pid,
                    signal: StopSignal::Term,
                });
            }
            _ => {}
        }
    }

    /// Spawning failed (the program is missing, the user is wrong, …). It
    /// counts as a quick failure.
    pub fn spawn_failed(&mut self, id: &str, generation: u64, error: String, now: Instant) {
        self.bump();
        let Some(inst) = self.run_mut(id, generation) else {
            return;
        };
        warn!(instance = id, %error, "{id}: could not start worker: {error}");
        match inst.phase {
            Phase::Starting => self.schedule_restart(id, ExitReason::SpawnFailed(error), true, now),
            Phase::Stopping { .. } => {
                let inst = self.instances.get_mut(id).expect("present");
                inst.last_exit = Some(ExitReason::SpawnFailed(error));
                self.finish_stop(id, now);
            }
            _ => {}
        }
    }

    /// A process exited. Returns the instance it was the main process of, if
    /// any (exits of adopted orphans are not).
    pub fn exited(&mut self, pid: u32, reason: ExitReason, now: Instant) -> Option<String> {
        self.bump();
        let id = self.id_of_pid(pid)?.clone();
        self.set_pid(&id, None);
        let inst = self.instances.get_mut(&id)?;
        match inst.phase {
            Phase::Running { since } => {
                let quick = now.saturating_duration_since(since) < inst.spec.timing.stable_after;
                self.schedule_restart(&id, reason, quick, now);
            }
            Phase::Starting => self.schedule_restart(&id, reason, true, now),
            Phase::Stopping { .. } => {
                info!(instance = %id, pid, %reason, "{id} stopped ({reason})");
                inst.last_exit = Some(reason);
                self.kill_tree(&id);
            }
            _ => {}
        }
        self.after_event(now);
        Some(id)
    }

    /// Main pids of the running workers.
    pub fn live_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.instances.values().filter_map(|i| i.pid)
    }

    /// A KillTree finished: no process of that run is left.
    pub fn tree_cleared(&mut self, id: &str, seq: u64, now: Instant) {
        self.bump();
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if inst.kill_pending != Some(seq) {
            return;
        }
        inst.kill_pending = None;
        if matches!(inst.phase, Phase::Stopping { .. }) && inst.pid.is_none() {
            self.finish_stop(id, now);
        }
        self.after_event(now);
    }

    /// Time passed: fire every deadline that is due.
    pub fn tick(&mut self, now: Instant) {
        self.bump();
        let due: Vec<(String, Phase)> = self
            .instances
            .iter()
            .filter(|(_, i)| match i.phase {
                Phase::Backoff { until } => until <= now,
                Phase::Stopping { deadline, .. } => deadline <= now,
                _ => false,
            })
            .map(|(id, i)| (id.clone(), i.phase.clone()))
            .collect();
        for i in self.instances.values_mut() {
            if let Phase::Running { since } = i.phase
                && now >= later(since, UP_AFTER)
            {
                i.up_seen = true;
            }
        }
        for (id, phase) in due {
            match phase {
                Phase::Backoff { .. } => self.launch(&id, now),
                Phase::Stopping { stage, .. } => self.stop_deadline(&id, stage, now),
                _ => {}
            }
        }
        self.check_health_all(now);
        self.after_event(now);
    }

    /// The next moment [`Machine::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for inst in self.instances.values() {
            match inst.phase {
                Phase::Backoff { until } => consider(until),
                Phase::Stopping { deadline, .. } => consider(deadline),
                Phase::Running { since } => {
                    if self.broker_up {
                        if let (Some(t), Some(last)) = (
                            inst.spec.timing.heartbeat_timeout,
                            inst.health.last_heartbeat,
                        ) {
                            consider(later(last, t));
                        }
                        if let (Some(t), Some(s)) =
                            (inst.spec.timing.stall_timeout, inst.health.stall_since)
                        {
                            consider(later(s, t));
                        }
                    }
                    // The moment it counts as up changes its state (and
                    // lets a rolling restart go on).
                    if inst.health.last_heartbeat.is_none() && !inst.up_seen {
                        consider(later(since, UP_AFTER));
                    }
                }
                _ => {}
            }
        }
        next
    }

    /// A Celery heartbeat from `node`.
    pub fn heartbeat(&mut self, node: &str, active: u64, processed: u64, now: Instant) {
        // Node names are `<id>@<device_id>`; other devices on the same broker
        // use the same ids with another device id.
        let id = node.split_once('@').map_or(node, |(id, _)| id);
        let Some(inst) = self
            .instances
            .get_mut(id)
            .filter(|i| i.spec.node == node && matches!(i.phase, Phase::Running { .. }))
        else {
            return;
        };
        let progressed = inst.health.processed != Some(processed) || active > 0;
        if inst.health.last_heartbeat.is_none() {
            // It is up now, and has a heartbeat deadline from here on.
            self.revision = self.revision.wrapping_add(1);
        }
        inst.health.last_heartbeat = Some(now);
        inst.health.active = Some(active);
        inst.health.processed = Some(processed);
        if progressed {
            inst.health.stall_since = None;
        }
        let verdict = if self.broker_up && !self.shutting_down {
            let b = group_backlog(&self.plan, &self.backlog, &inst.spec.group);
            health_verdict(inst, b, now)
        } else {
            HealthVerdict::Fine
        };
        self.act_on_health(vec![verdict], now);
        self.after_event(now);
    }

    /// The queues' backlog, from the broker.
    pub fn backlog(&mut self, backlog: BTreeMap<String, u64>, now: Instant) {
        self.backlog = backlog;
        self.check_health_all(now);
        self.after_event(now);
    }

    /// The backlog last reported for `queue`.
    pub fn queue_backlog(&self, queue: &str) -> Option<u64> {
        self.backlog.get(queue).copied()
    }

    /// The counts behind the one-line summary (STATUS=), computed without
    /// building the whole snapshot: it runs after every event.
    pub fn summary_facts(&self, now: Instant) -> SummaryFacts {
        let mut f = SummaryFacts::default();
        for i in self.instances.values() {
            f.total += 1;
            match i.state(now) {
                InstanceState::Running => f.running += 1,
                InstanceState::WaitingForBroker => f.waiting_for_broker = true,
                state @ (InstanceState::CrashLoop | InstanceState::Backoff) => {
                    f.troubled.push(Trouble {
                        id: i.spec.id.clone(),
                        state,
                        last_exit: i.last_exit.clone(),
                        quick_failures: i.quick_failures,
                    });
                }
                _ => {}
            }
        }
        f.troubled.sort_by(|a, b| a.id.cmp(&b.id));
        f
    }

    /// Every instance, groups in config order (groups being removed last),
    /// each group's instances by index: the order of status and of "all".
    fn ordered(&self) -> Vec<&Instance> {
        let mut order: Vec<&Instance> = self.instances.values().collect();
        let group_pos = |g: &str| {
            self.plan
                .groups
                .iter()
                .position(|p| p.name == g)
                .unwrap_or(usize::MAX)
        };
        order.sort_by(|a, b| {
            (group_pos(&a.spec.group), &a.spec.group, a.spec.index).cmp(&(
                group_pos(&b.spec.group),
                &b.spec.group,
                b.spec.index,
            ))
        });
        order
    }

    /// Every instance as targets see it, in status order.
    pub fn members(&self) -> Vec<Member<'_>> {
        self.ordered()
            .into_iter()
            .map(|i| Member {
                id: &i.spec.id,
                group: &i.spec.group,
            })
            .collect()
    }

    /// The configured groups' names.
    fn group_names(&self) -> Vec<&str> {
        self.plan.groups.iter().map(|g| g.name.as_str()).collect()
    }

    /// What the target names mean: [`target::resolve_all`] against the
    /// instances there are now. An empty list stays empty; the error is
    /// the first name that names nothing.
    pub fn targets(&self, names: &[String]) -> Result<Vec<Target>, String> {
        target::resolve_all(names, &self.members(), &self.group_names())
    }

    /// The status of every instance, in the order of [`Machine::members`].
    pub fn snapshot(&self, now: Instant) -> Vec<InstanceView> {
        self.ordered()
            .into_iter()
            .map(|i| InstanceView {
                id: i.spec.id.clone(),
                group: i.spec.group.clone(),
                node: i.spec.node.clone(),
                state: i.state(now),
                pid: i.pid,
                uptime: match i.phase {
                    Phase::Running { since } => Some(now.saturating_duration_since(since)),
                    _ => None,
                },
                restarts: i.restarts,
                last_exit: i.last_exit.clone(),
                quick_failures: i.quick_failures,
                pinned: i.pinned,
                heartbeat_age: i
                    .health
                    .last_heartbeat
                    .map(|t| now.saturating_duration_since(t)),
                active: i.health.active,
                processed: i.health.processed,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

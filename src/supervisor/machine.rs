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

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::backoff;
pub use crate::model::ExitReason;
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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Term,
    Quit,
    Kill,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    WaitingForBroker,
    Starting,
    Running { since: Instant },
    Backoff { until: Instant },
    Stopping { stage: Stage, deadline: Instant },
    Stopped,
}

/// The outcome of the health checks of one instance.
#[derive(Debug)]
enum HealthVerdict {
    Fine,
    /// A stall clock started: a new deadline.
    Changed,
    /// Restart it (id, why).
    Restart(String, String),
}

/// What happens once a stopping instance has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Stay,
    Start,
    Remove,
}

#[derive(Debug, Clone, Default)]
struct Health {
    last_heartbeat: Option<Instant>,
    active: Option<u64>,
    processed: Option<u64>,
    stall_since: Option<Instant>,
}

#[derive(Debug)]
struct Instance {
    spec: Arc<InstanceSpec>,
    /// A new spec from a reload, applied at the next start.
    next_spec: Option<Arc<InstanceSpec>>,
    phase: Phase,
    pid: Option<u32>,
    /// The main pid of the latest run, kept after it exits: the process
    /// group and session of that run's leftovers.
    pgid: Option<u32>,
    generation: u64,
    restarts: u64,
    quick_failures: u32,
    last_exit: Option<ExitReason>,
    /// Stopped by the operator: nothing but a start brings it back.
    pinned: bool,
    after: After,
    /// The KillTree this instance waits for, if any.
    kill_pending: Option<u64>,
    health: Health,
    /// A tick saw this run pass [`UP_AFTER`] (so that moment is no longer a
    /// deadline).
    up_seen: bool,
}

impl Instance {
    fn new(spec: Arc<InstanceSpec>) -> Self {
        Instance {
            spec,
            next_spec: None,
            phase: Phase::Stopped,
            pid: None,
            pgid: None,
            generation: 0,
            restarts: 0,
            quick_failures: 0,
            last_exit: None,
            pinned: false,
            after: After::Stay,
            kill_pending: None,
            health: Health::default(),
            up_seen: false,
        }
    }

    /// The state as status shows it.
    fn state_name(&self, now: Instant) -> &'static str {
        match self.phase {
            Phase::WaitingForBroker => "waiting-for-broker",
            // A crash loop is not over until a run is up: the short starts
            // between the backoff delays keep showing it.
            Phase::Starting | Phase::Running { .. }
                if self.quick_failures >= backoff::CRASH_LOOP_AFTER && !self.is_up(now) =>
            {
                "crash-loop"
            }
            Phase::Starting => "starting",
            Phase::Running { .. } if !self.is_up(now) => "starting",
            Phase::Running { .. } => "running",
            Phase::Backoff { .. } if self.quick_failures >= backoff::CRASH_LOOP_AFTER => {
                "crash-loop"
            }
            Phase::Backoff { .. } => "backoff",
            Phase::Stopping { .. } => "stopping",
            Phase::Stopped => "stopped",
        }
    }

    fn last_exit_text(&self, state: &str) -> Option<String> {
        self.last_exit.as_ref().map(|r| {
            if state == "crash-loop" {
                format!("{r} ({} quick failures in a row)", self.quick_failures)
            } else {
                r.to_string()
            }
        })
    }

    fn is_up(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Running { since } => {
                self.health.last_heartbeat.is_some() || now >= later(since, UP_AFTER)
            }
            _ => false,
        }
    }
}

/// A read-only view of one instance, for status.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    pub id: String,
    pub group: String,
    pub node: String,
    /// `starting`, `running`, `backoff`, `crash-loop`, `stopping`,
    /// `stopped` or `waiting-for-broker`.
    pub state: &'static str,
    pub pid: Option<u32>,
    pub uptime: Option<Duration>,
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub pinned: bool,
    pub heartbeat_age: Option<Duration>,
    pub active: Option<u64>,
    pub processed: Option<u64>,
}

/// See [`Machine::summary_facts`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SummaryFacts {
    pub total: usize,
    pub running: usize,
    pub waiting_for_broker: bool,
    /// "text-1 crash-loop (exit 1 (4 quick failures in a row))", …
    pub troubled: Vec<String>,
}

#[derive(Debug, Default)]
struct Rolling {
    queue: VecDeque<String>,
    current: Option<String>,
}

/// The supervision state of every instance.
pub struct Machine {
    plan: Plan,
    instances: BTreeMap<String, Instance>,
    gate_open: bool,
    broker_up: bool,
    shutting_down: bool,
    exit_sent: bool,
    rolling: BTreeMap<String, Rolling>,
    backlog: BTreeMap<String, u64>,
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
        let instances = plan
            .instances()
            .map(|s| (s.id.clone(), Instance::new(s.clone())))
            .collect();
        Machine {
            plan,
            instances,
            gate_open,
            broker_up: gate_open,
            shutting_down: false,
            exit_sent: false,
            rolling: BTreeMap::new(),
            backlog: BTreeMap::new(),
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
        let ids: Vec<String> = self.plan.instances().map(|s| s.id.clone()).collect();
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
        self.instances
            .values()
            .find(|i| i.pid == Some(pid))
            .map(|i| &*i.spec)
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
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if inst.generation != generation {
            return;
        }
        inst.pid = Some(pid);
        inst.pgid = Some(pid);
        inst.health = Health::default();
        inst.up_seen = false;
        match inst.phase {
            Phase::Starting => {
                inst.phase = Phase::Running { since: now };
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
        let Some(inst) = self.instances.get(id) else {
            return;
        };
        if inst.generation != generation {
            return;
        }
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
        let id = self
            .instances
            .iter()
            .find(|(_, i)| i.pid == Some(pid))
            .map(|(id, _)| id.clone())?;
        let inst = self.instances.get_mut(&id).expect("present");
        inst.pid = None;
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

    /// Start the targets and clear their operator-stop pin.
    pub fn start(&mut self, targets: &[String], now: Instant) -> Result<Vec<String>, CommandError> {
        let ids = self.resolve(targets)?;
        self.bump();
        let mut out = Vec::new();
        for id in ids {
            let inst = self.instances.get_mut(&id).expect("resolved");
            inst.pinned = false;
            match inst.phase {
                Phase::Stopped | Phase::Backoff { .. } => {
                    inst.quick_failures = 0;
                    self.launch(&id, now);
                    out.push(format!("{id}: starting"));
                }
                Phase::Stopping { .. } => {
                    if inst.after != After::Remove {
                        inst.after = After::Start;
                    }
                    out.push(format!("{id}: stopping, will start again"));
                }
                Phase::WaitingForBroker => out.push(format!("{id}: waiting for the broker")),
                Phase::Starting | Phase::Running { .. } => {
                    out.push(format!("{id}: already running"))
                }
            }
        }
        self.after_event(now);
        Ok(out)
    }

    /// Stop the targets and pin them down until started again.
    pub fn stop(&mut self, targets: &[String], now: Instant) -> Result<Vec<String>, CommandError> {
        let ids = self.resolve(targets)?;
        self.bump();
        let mut out = Vec::new();
        for id in ids {
            let inst = self.instances.get_mut(&id).expect("resolved");
            inst.pinned = true;
            if inst.after == After::Start {
                inst.after = After::Stay;
            }
            for r in self.rolling.values_mut() {
                r.queue.retain(|q| q != &id);
            }
            let was_stopped = inst.phase == Phase::Stopped;
            self.begin_stop(&id, After::Stay, "stopped by operator", now);
            out.push(if was_stopped {
                format!("{id}: already stopped")
            } else {
                format!("{id}: stopping")
            });
        }
        self.after_event(now);
        Ok(out)
    }

    /// Restart the targets. With `rolling`, one instance at a time, each up
    /// again before the next is stopped.
    pub fn restart(
        &mut self,
        targets: &[String],
        rolling: bool,
        now: Instant,
    ) -> Result<Vec<String>, CommandError> {
        let ids = self.resolve(targets)?;
        self.bump();
        let mut out = Vec::new();
        for id in ids {
            let inst = self.instances.get_mut(&id).expect("resolved");
            inst.pinned = false;
            inst.quick_failures = 0;
            if rolling {
                let group = inst.spec.group.clone();
                let r = self.rolling.entry(group).or_default();
                if !r.queue.contains(&id) && r.current.as_deref() != Some(&id) {
                    r.queue.push_back(id.clone());
                }
                out.push(format!("{id}: queued for a rolling restart"));
            } else {
                self.restart_one(&id, "restart requested by operator", now);
                out.push(format!("{id}: restarting"));
            }
        }
        self.after_event(now);
        Ok(out)
    }

    /// Apply a new plan: unchanged groups are not touched, changed ones are
    /// restarted instance by instance, removed ones stopped, new ones started.
    pub fn reload(&mut self, new: Plan, now: Instant) -> PlanDiff {
        self.bump();
        let d = plan::diff(&self.plan, &new);
        let old = std::mem::replace(&mut self.plan, new);
        for g in &d.removed {
            self.rolling.remove(g);
            let ids: Vec<String> = self
                .instances
                .values()
                .filter(|i| &i.spec.group == g)
                .map(|i| i.spec.id.clone())
                .collect();
            for id in ids {
                self.retire(&id, now);
            }
        }
        for name in d.added.iter().chain(d.changed.iter()) {
            let g = self.plan.group(name).expect("in new plan").clone();
            if old.group(name).map(|o| &o.limits) != Some(&g.limits) {
                self.actions.push(Action::PrepareGroup {
                    group: g.name.clone(),
                    limits: g.limits.clone(),
                });
            }
            // Instances that disappear from the group.
            let gone: Vec<String> = self
                .instances
                .values()
                .filter(|i| &i.spec.group == name && !g.instances.iter().any(|s| s.id == i.spec.id))
                .map(|i| i.spec.id.clone())
                .collect();
            for id in gone {
                self.retire(&id, now);
            }
            for spec in &g.instances {
                match self.instances.get_mut(&spec.id) {
                    None => {
                        self.instances
                            .insert(spec.id.clone(), Instance::new(spec.clone()));
                        self.launch(&spec.id, now);
                    }
                    Some(inst) if inst.spec == *spec && inst.next_spec.is_none() => {
                        if inst.after == After::Remove {
                            // It was being retired by an earlier reload and
                            // is wanted again.
                            inst.after = After::Start;
                        }
                    }
                    Some(inst) => {
                        if inst.after == After::Remove {
                            inst.after = After::Start;
                        }
                        match inst.phase {
                            Phase::Running { .. } | Phase::Starting | Phase::Stopping { .. } => {
                                inst.next_spec = Some(spec.clone());
                                let r = self.rolling.entry(name.clone()).or_default();
                                if !r.queue.contains(&spec.id)
                                    && r.current.as_deref() != Some(spec.id.as_str())
                                {
                                    r.queue.push_back(spec.id.clone());
                                }
                            }
                            _ => {
                                inst.spec = spec.clone();
                                inst.next_spec = None;
                            }
                        }
                    }
                }
            }
        }
        self.after_event(now);
        d
    }

    /// Stop everything, in parallel; [`Action::Exit`] follows once all is
    /// stopped.
    pub fn shutdown(&mut self, now: Instant) {
        self.bump();
        if self.shutting_down {
            return;
        }
        info!("shutting down: stopping all workers");
        self.shutting_down = true;
        self.rolling.clear();
        let ids: Vec<String> = self.instances.keys().cloned().collect();
        for id in ids {
            self.begin_stop(&id, After::Stay, "daemon shutting down", now);
        }
        self.check_done();
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
            match i.state_name(now) {
                "running" => f.running += 1,
                "waiting-for-broker" => f.waiting_for_broker = true,
                s @ ("crash-loop" | "backoff") => {
                    let text = match i.last_exit_text(s) {
                        Some(e) => format!("{} {s} ({e})", i.spec.id),
                        None => format!("{} {s}", i.spec.id),
                    };
                    f.troubled.push(text);
                }
                _ => {}
            }
        }
        f.troubled.sort();
        f
    }

    /// The status of every instance, groups in config order (groups being
    /// removed last).
    pub fn snapshot(&self, now: Instant) -> Vec<InstanceView> {
        let mut out: Vec<InstanceView> = Vec::with_capacity(self.instances.len());
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
        for i in order {
            let state = i.state_name(now);
            let last_exit = i.last_exit_text(state);
            out.push(InstanceView {
                id: i.spec.id.clone(),
                group: i.spec.group.clone(),
                node: i.spec.node.clone(),
                state,
                pid: i.pid,
                uptime: match i.phase {
                    Phase::Running { since } => Some(now.saturating_duration_since(since)),
                    _ => None,
                },
                restarts: i.restarts,
                last_exit,
                pinned: i.pinned,
                heartbeat_age: i
                    .health
                    .last_heartbeat
                    .map(|t| now.saturating_duration_since(t)),
                active: i.health.active,
                processed: i.health.processed,
            });
        }
        out
    }

    // ----- internals -------------------------------------------------------

    fn resolve(&self, targets: &[String]) -> Result<Vec<String>, CommandError> {
        if self.shutting_down {
            return Err(CommandError::ShuttingDown);
        }
        if targets.is_empty() {
            return Err(CommandError::NoTarget);
        }
        let mut ids: Vec<String> = Vec::new();
        let mut add = |id: &str| {
            if !ids.iter().any(|i| i == id) {
                ids.push(id.to_string());
            }
        };
        for t in targets {
            if t == "all" {
                for v in self.snapshot(Instant::now()) {
                    add(&v.id);
                }
            } else if self.instances.contains_key(t) {
                add(t);
            } else {
                let members: Vec<&Instance> = {
                    let mut m: Vec<&Instance> = self
                        .instances
                        .values()
                        .filter(|i| &i.spec.group == t)
                        .collect();
                    m.sort_by_key(|i| i.spec.index);
                    m
                };
                if members.is_empty() {
                    return Err(CommandError::UnknownTarget(t.clone()));
                }
                for m in members {
                    add(&m.spec.id);
                }
            }
        }
        Ok(ids)
    }

    fn launch(&mut self, id: &str, now: Instant) {
        let _ = now;
        if self.shutting_down {
            return;
        }
        let gate_open = self.gate_open;
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if let Some(spec) = inst.next_spec.take() {
            inst.spec = spec;
        }
        if !gate_open {
            inst.phase = Phase::WaitingForBroker;
            return;
        }
        inst.generation += 1;
        inst.phase = Phase::Starting;
        inst.after = After::Stay;
        self.actions.push(Action::Spawn {
            spec: inst.spec.clone(),
            generation: inst.generation,
        });
    }

    fn schedule_restart(&mut self, id: &str, reason: ExitReason, quick: bool, now: Instant) {
        let jitter = (self.jitter)();
        let inst = self.instances.get_mut(id).expect("present");
        inst.quick_failures = if quick {
            inst.quick_failures.saturating_add(1)
        } else {
            0
        };
        let t = &inst.spec.timing;
        let delay = backoff::delay(
            t.restart_delay,
            t.restart_delay_max,
            inst.quick_failures,
            jitter,
        );
        inst.restarts += 1;
        if inst.quick_failures >= backoff::CRASH_LOOP_AFTER {
            warn!(
                instance = id,
                %reason,
                failures = inst.quick_failures,
                delay = ?delay,
                "{id} exited ({reason}) and is crash-looping ({} quick failures in a row); restarting in {delay:?}",
                inst.quick_failures
            );
        } else {
            warn!(instance = id, %reason, delay = ?delay, "{id} exited ({reason}); restarting in {delay:?}");
        }
        let had_pid = !matches!(reason, ExitReason::SpawnFailed(_));
        inst.last_exit = Some(reason);
        inst.phase = Phase::Backoff {
            until: later(now, delay),
        };
        if had_pid {
            // Pool children and anything else of that run must not outlive
            // it. The new run does not wait for this.
            self.kill_tree_with(id, false);
            if let Some(inst) = self.instances.get_mut(id) {
                inst.kill_pending = None;
            }
        }
    }

    fn kill_tree(&mut self, id: &str) {
        self.kill_tree_with(id, true);
    }

    fn kill_tree_with(&mut self, id: &str, whole_cgroup: bool) {
        self.kill_seq += 1;
        let seq = self.kill_seq;
        let inst = self.instances.get_mut(id).expect("present");
        inst.kill_pending = Some(seq);
        self.actions.push(Action::KillTree {
            id: id.to_string(),
            group: inst.spec.group.clone(),
            pgid: inst.pgid,
            generation: inst.generation,
            seq,
            whole_cgroup,
        });
    }

    fn begin_stop(&mut self, id: &str, after: After, why: &str, now: Instant) {
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if inst.after != After::Remove {
            inst.after = after;
        }
        match inst.phase {
            Phase::Running { .. } | Phase::Starting => {
                info!(
                    instance = id,
                    reason = why,
                    "stopping {id} ({why}): SIGTERM, warm shutdown"
                );
                inst.phase = Phase::Stopping {
                    stage: Stage::Term,
                    deadline: later(now, inst.spec.timing.stop_timeout),
                };
                if let Some(pid) = inst.pid {
                    self.actions.push(Action::Signal {
                        id: id.to_string(),
                        pid,
                        signal: StopSignal::Term,
                    });
                }
            }
            Phase::Backoff { .. } | Phase::WaitingForBroker | Phase::Stopped => {
                self.finish_stop(id, now);
            }
            Phase::Stopping { .. } => {}
        }
    }

    fn stop_deadline(&mut self, id: &str, stage: Stage, now: Instant) {
        let inst = self.instances.get_mut(id).expect("present");
        match stage {
            Stage::Term => {
                warn!(
                    instance = id,
                    timeout = ?inst.spec.timing.stop_timeout,
                    "{id} did not stop within {:?}; SIGQUIT (cold shutdown)",
                    inst.spec.timing.stop_timeout
                );
                inst.phase = Phase::Stopping {
                    stage: Stage::Quit,
                    deadline: later(now, QUIT_GRACE),
                };
                if let Some(pid) = inst.pid {
                    self.actions.push(Action::Signal {
                        id: id.to_string(),
                        pid,
                        signal: StopSignal::Quit,
                    });
                }
            }
            Stage::Quit | Stage::Kill => {
                if stage == Stage::Kill {
                    warn!(
                        instance = id,
                        "{id}: processes still alive after SIGKILL; killing again"
                    );
                } else {
                    warn!(
                        instance = id,
                        "{id} ignored SIGQUIT; killing its process tree"
                    );
                }
                inst.phase = Phase::Stopping {
                    stage: Stage::Kill,
                    deadline: later(now, KILL_GRACE),
                };
                self.kill_tree(id);
            }
        }
    }

    fn finish_stop(&mut self, id: &str, now: Instant) {
        let inst = self.instances.get_mut(id).expect("present");
        inst.phase = Phase::Stopped;
        inst.pid = None;
        match inst.after {
            After::Stay => {}
            After::Start => {
                inst.after = After::Stay;
                if !inst.pinned {
                    self.launch(id, now);
                }
            }
            After::Remove => {
                let group = inst.spec.group.clone();
                self.instances.remove(id);
                info!(instance = id, "{id} removed (no longer in the config)");
                let group_gone = self.plan.group(&group).is_none()
                    && !self.instances.values().any(|i| i.spec.group == group);
                if group_gone {
                    self.actions.push(Action::RemoveGroup { group });
                }
            }
        }
    }

    fn restart_one(&mut self, id: &str, why: &str, now: Instant) {
        let Some(inst) = self.instances.get(id) else {
            return;
        };
        match inst.phase {
            Phase::Running { .. } | Phase::Starting | Phase::Stopping { .. } => {
                self.begin_stop(id, After::Start, why, now)
            }
            _ => self.launch(id, now),
        }
    }

    /// Stop an instance that the config no longer has, then forget it.
    fn retire(&mut self, id: &str, now: Instant) {
        for r in self.rolling.values_mut() {
            r.queue.retain(|q| q != id);
        }
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        inst.after = After::Remove;
        inst.next_spec = None;
        self.begin_stop(id, After::Remove, "removed from the config", now);
    }

    /// The heartbeat and stall checks of every running instance.
    fn check_health_all(&mut self, now: Instant) {
        if !self.broker_up || self.shutting_down {
            return;
        }
        let (plan, backlog) = (&self.plan, &self.backlog);
        let backlogs: Vec<(&str, u64)> = plan
            .groups
            .iter()
            .map(|g| (g.name.as_str(), group_backlog(plan, backlog, &g.name)))
            .collect();
        let mut verdicts = Vec::new();
        for inst in self.instances.values_mut() {
            let b = backlogs
                .iter()
                .find(|(g, _)| *g == inst.spec.group)
                .map_or(0, |(_, b)| *b);
            match health_verdict(inst, b, now) {
                HealthVerdict::Fine => {}
                v => verdicts.push(v),
            }
        }
        self.act_on_health(verdicts, now);
    }

    fn act_on_health(&mut self, verdicts: Vec<HealthVerdict>, now: Instant) {
        for v in verdicts {
            match v {
                HealthVerdict::Fine => {}
                HealthVerdict::Changed => self.bump(),
                HealthVerdict::Restart(id, why) => {
                    self.bump();
                    self.restart_one(&id, &why, now);
                }
            }
        }
    }

    fn advance_rolling(&mut self, now: Instant) {
        let groups: Vec<String> = self.rolling.keys().cloned().collect();
        for g in groups {
            loop {
                let r = self.rolling.get_mut(&g).expect("present");
                if let Some(cur) = r.current.clone() {
                    let done = match self.instances.get(&cur) {
                        None => true,
                        Some(i) => i.is_up(now) || (i.pinned && i.phase == Phase::Stopped),
                    };
                    if !done {
                        break;
                    }
                    let r = self.rolling.get_mut(&g).expect("present");
                    r.current = None;
                }
                let r = self.rolling.get_mut(&g).expect("present");
                let Some(next) = r.queue.pop_front() else {
                    break;
                };
                r.current = Some(next.clone());
                self.restart_one(&next, "rolling restart", now);
            }
            if let Some(r) = self.rolling.get(&g)
                && r.current.is_none()
                && r.queue.is_empty()
            {
                self.rolling.remove(&g);
            }
        }
    }

    fn after_event(&mut self, now: Instant) {
        self.advance_rolling(now);
        self.check_done();
    }

    fn check_done(&mut self) {
        if self.shutting_down
            && !self.exit_sent
            && self.instances.values().all(|i| i.phase == Phase::Stopped)
        {
            self.exit_sent = true;
            self.actions.push(Action::Exit);
        }
    }
}

/// The summed backlog of `group`'s queues.
fn group_backlog(plan: &Plan, backlog: &BTreeMap<String, u64>, group: &str) -> u64 {
    plan.group(group)
        .map_or(0, |g| g.queues.iter().filter_map(|q| backlog.get(q)).sum())
}

/// `t + d`, or (when that does not fit in an `Instant`) a moment so far
/// ahead that it never comes: durations come from the config, and a
/// hand-made plan is not bounded by its checks.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(FAR_FUTURE))
        .unwrap_or(t)
}

/// What [`later`] falls back to: about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// Checks a running instance against its heartbeat and stall timeouts,
/// starting or clearing its stall clock. Anything but a running instance is
/// fine.
fn health_verdict(inst: &mut Instance, group_backlog: u64, now: Instant) -> HealthVerdict {
    if !matches!(inst.phase, Phase::Running { .. }) {
        return HealthVerdict::Fine;
    }
    let id = inst.spec.id.as_str();
    let timing = &inst.spec.timing;
    if let (Some(timeout), Some(last)) = (timing.heartbeat_timeout, inst.health.last_heartbeat)
        && now.saturating_duration_since(last) >= timeout
    {
        let why = format!(
            "no heartbeat for {}",
            humantime::format_duration(now.saturating_duration_since(last))
        );
        warn!(instance = id, reason = %why, "{id} is alive but silent ({why}); restarting it");
        let id = id.to_string();
        inst.health.last_heartbeat = None;
        return HealthVerdict::Restart(id, why);
    }
    if let Some(timeout) = timing.stall_timeout {
        let idle = inst.health.active == Some(0) && inst.health.processed.is_some();
        if group_backlog > 0 && idle {
            let started = inst.health.stall_since.is_none();
            let since = *inst.health.stall_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= timeout {
                let why = format!(
                    "stalled: backlog {group_backlog} but no progress for {}",
                    humantime::format_duration(now.saturating_duration_since(since))
                );
                warn!(instance = id, reason = %why, "{id} {why}; restarting it");
                let id = id.to_string();
                inst.health.stall_since = None;
                return HealthVerdict::Restart(id, why);
            }
            if started {
                return HealthVerdict::Changed;
            }
        } else {
            inst.health.stall_since = None;
        }
    }
    HealthVerdict::Fine
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;

//! One instance: its phase, its health and how status sees it
//! ([`InstanceView`]), plus the health checks. Pure data and pure
//! functions; [`Machine`](super::Machine) drives them.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Stage {
    Term,
    Quit,
    Kill,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    WaitingForBroker,
    Starting,
    Running { since: Instant },
    Backoff { until: Instant },
    Stopping { stage: Stage, deadline: Instant },
    Stopped,
}

/// The outcome of the health checks of one instance.
#[derive(Debug)]
pub(super) enum HealthVerdict {
    Fine,
    /// A stall clock started: a new deadline.
    Changed,
    /// Restart it (id, why).
    Restart(String, String),
}

/// What happens once a stopping instance has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    Stay,
    Start,
    Remove,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Health {
    pub(super) last_heartbeat: Option<Instant>,
    pub(super) active: Option<u64>,
    pub(super) processed: Option<u64>,
    pub(super) stall_since: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct Instance {
    pub(super) spec: Arc<InstanceSpec>,
    /// A new spec from a reload, applied at the next start.
    pub(super) next_spec: Option<Arc<InstanceSpec>>,
    pub(super) phase: Phase,
    pub(super) pid: Option<u32>,
    /// The main pid of the latest run, kept after it exits: the process
    /// group and session of that run's leftovers.
    pub(super) pgid: Option<u32>,
    pub(super) generation: u64,
    pub(super) restarts: u64,
    pub(super) quick_failures: u32,
    pub(super) last_exit: Option<ExitReason>,
    /// Stopped by the operator: nothing but a start brings it back.
    pub(super) pinned: bool,
    pub(super) after: After,
    /// The KillTree this instance waits for, if any.
    pub(super) kill_pending: Option<u64>,
    pub(super) health: Health,
    /// A tick saw this run pass [`UP_AFTER`] (so that moment is no longer a
    /// deadline).
    pub(super) up_seen: bool,
}

impl Instance {
    pub(super) fn new(spec: Arc<InstanceSpec>) -> Self {
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
    pub(super) fn state(&self, now: Instant) -> InstanceState {
        let crash_loop = self.quick_failures >= backoff::CRASH_LOOP_AFTER;
        match self.phase {
            Phase::WaitingForBroker => InstanceState::WaitingForBroker,
            // A crash loop is not over until a run is up: the short starts
            // between the backoff delays keep showing it.
            Phase::Starting | Phase::Running { .. } if crash_loop && !self.is_up(now) => {
                InstanceState::CrashLoop
            }
            Phase::Starting => InstanceState::Starting,
            Phase::Running { .. } if !self.is_up(now) => InstanceState::Starting,
            Phase::Running { .. } => InstanceState::Running,
            Phase::Backoff { .. } if crash_loop => InstanceState::CrashLoop,
            Phase::Backoff { .. } => InstanceState::Backoff,
            Phase::Stopping { .. } => InstanceState::Stopping,
            Phase::Stopped => InstanceState::Stopped,
        }
    }

    pub(super) fn is_up(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Running { since } => {
                self.health.last_heartbeat.is_some() || now >= later(since, UP_AFTER)
            }
            _ => false,
        }
    }
}

/// A read-only view of one instance, for status. Typed: the status code
/// turns it into text.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    pub id: String,
    pub group: String,
    pub node: String,
    pub state: InstanceState,
    pub pid: Option<u32>,
    pub uptime: Option<Duration>,
    pub restarts: u64,
    pub last_exit: Option<ExitReason>,
    /// Quick failures in a row (what makes a crash loop).
    pub quick_failures: u32,
    pub pinned: bool,
    pub heartbeat_age: Option<Duration>,
    pub active: Option<u64>,
    pub processed: Option<u64>,
}

/// An instance in backoff or crash loop, for the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Trouble {
    pub id: String,
    /// [`InstanceState::Backoff`] or [`InstanceState::CrashLoop`].
    pub state: InstanceState,
    pub last_exit: Option<ExitReason>,
    pub quick_failures: u32,
}

/// See [`Machine::summary_facts`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SummaryFacts {
    pub total: usize,
    pub running: usize,
    pub waiting_for_broker: bool,
    /// By id.
    pub troubled: Vec<Trouble>,
}

/// The summed backlog of `group`'s queues.
pub(super) fn group_backlog(plan: &Plan, backlog: &BTreeMap<String, u64>, group: &str) -> u64 {
    plan.group(group).map_or(0, |g| {
        // Figures from Redis: saturate, never overflow.
        g.queues
            .iter()
            .filter_map(|q| backlog.get(q))
            .fold(0u64, |sum, b| sum.saturating_add(*b))
    })
}

/// `t + d`, or (when that does not fit in an `Instant`) a moment so far
/// ahead that it never comes: durations come from the config, and a
/// hand-made plan is not bounded by its checks.
pub(super) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(FAR_FUTURE))
        .unwrap_or(t)
}

/// What [`later`] falls back to: about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// Checks a running instance against its heartbeat and stall timeouts,
/// starting or clearing its stall clock. Anything but a running instance is
/// fine.
pub(super) fn health_verdict(
    inst: &mut Instance,
    group_backlog: u64,
    now: Instant,
) -> HealthVerdict {
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

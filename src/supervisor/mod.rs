//! The supervisor: the one owner of the daemon's state.
//!
//! [`machine`] is the pure state machine and [`backoff`] its restart
//! schedule. This module is the actor around them: one task that owns the
//! [`Machine`], receives [`Msg`]s (control requests, signals, broker events,
//! process exits, finished kills), feeds them to the machine, and carries
//! out the [`Action`]s it returns through the effect modules ([`process`],
//! [`cgroup`], [`journal`], [`notify`]). Nothing else touches the state.
//!
//! [`process`]: crate::sys::process
//! [`cgroup`]: crate::sys::cgroup
//! [`journal`]: crate::logs
//! [`notify`]: crate::sys::notify

pub mod backoff;
mod commands;
pub mod machine;
mod reload;
use reload::log_reload;
mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::broker::{self, BrokerEvent, BrokerSettings, Monitor};
use crate::config::{self, Config, OnTimeout};
use crate::control::protocol::{
    BrokerStatus, DaemonStatus, ErrorKind, GroupStatus, HeartbeatSeen, InstanceStatus, QueueStatus,
    ReloadReport, Request, Response, Status,
};
use crate::control::server::ControlMsg;
use crate::logs::{self, LogStore, Sink, WorkerMeta};
use crate::model::BrokerState;
use crate::plan;
use crate::sys::cgroup::{CgroupTree, Leaf};
use crate::sys::notify::Notifier;
use crate::sys::process::{self, RunAs};
use crate::sys::ticker::Ticker;
pub use machine::{Action, ExitReason, Machine, StopSignal};

/// What the supervisor is told.
#[derive(Debug)]
pub enum Msg {
    /// A request from the control socket.
    Control(ControlMsg),
    /// SIGTERM or SIGINT: stop everything and exit.
    Shutdown,
    /// SIGHUP: reload the config file.
    Reload,
    /// From the broker monitor.
    Broker(BrokerEvent),
    /// A KillTree finished; `pid` was the run's main pid.
    TreeCleared {
        id: String,
        seq: u64,
        pid: Option<u32>,
    },
}

/// The broker as the supervisor last heard of it.
#[derive(Debug, Clone)]
struct BrokerView {
    state: BrokerState,
    error: Option<String>,
    since: Option<SystemTime>,
    latency: Option<Duration>,
}

/// Everything the supervisor needs from the start-up sequence.
pub struct Setup {
    pub config: Config,
    pub run_as: Option<RunAs>,
    /// `None` when limits are off.
    pub cgroups: Option<CgroupTree>,
    /// "on" or "off (reason)", for status.
    pub limits_line: String,
    pub sink: Sink,
    pub notifier: Notifier,
    /// Where each run is recorded for the next daemon; `None` when the
    /// state directory could not be opened.
    pub records: Option<process::records::Records>,
}

/// The usage sample of one instance, for the CPU% between two status calls.
#[derive(Debug, Clone, Copy)]
struct Usage {
    at: std::time::Instant,
    cpu_usec: u64,
    memory: Option<u64>,
    cpu_percent: Option<f64>,
}

/// The actor.
pub struct Supervisor {
    machine: Machine,
    config: Config,
    run_as: Option<RunAs>,
    cgroups: Option<Arc<CgroupTree>>,
    limits_line: String,
    leaves: HashMap<String, Leaf>,
    sink: Arc<Sink>,
    logs: LogStore,
    notifier: Notifier,
    started: SystemTime,
    broker: BrokerView,
    monitor: Option<Monitor>,
    tx: mpsc::Sender<Msg>,
    last_status_line: String,
    /// The machine revision and broker view revision the STATUS= line was
    /// last computed for.
    status_for: Option<(u64, u64)>,
    /// Bumped whenever `broker` changes in a way the summary shows.
    broker_rev: u64,
    usage: HashMap<String, Usage>,
    usage_at: Option<std::time::Instant>,
    exit_code: Option<i32>,
    /// The main pids of the live runs, for the kill tasks.
    live: process::LiveMains,
    records: Option<process::records::Records>,
}

impl Supervisor {
    /// Build the supervisor. `tx` is the sender of its own mailbox (for the
    /// broker monitor and the kill tasks).
    pub fn new(setup: Setup, tx: mpsc::Sender<Msg>) -> Self {
        let plan = plan::build(&setup.config);
        let has_work = !plan.groups.is_empty();
        // Without groups there is nothing to gate.
        let gate_open = !has_work || setup.config.broker.is_none();
        let machine = Machine::new(
            plan,
            gate_open,
            Box::new(|| rand::random::<f64>() * 2.0 - 1.0),
        );
        Supervisor {
            machine,
            run_as: setup.run_as,
            cgroups: setup.cgroups.map(Arc::new),
            limits_line: setup.limits_line,
            leaves: HashMap::new(),
            sink: Arc::new(setup.sink),
            logs: LogStore::new(),
            notifier: setup.notifier,
            started: SystemTime::now(),
            broker: BrokerView {
                state: if has_work {
                    BrokerState::Waiting
                } else {
                    BrokerState::Unknown
                },
                error: None,
                since: Some(SystemTime::now()),
                latency: None,
            },
            monitor: None,
            tx,
            last_status_line: String::new(),
            status_for: None,
            broker_rev: 0,
            usage: HashMap::new(),
            usage_at: None,
            exit_code: None,
            live: process::LiveMains::default(),
            records: setup.records,
            config: setup.config,
        }
    }

    /// The ring buffers of worker output.
    pub fn logs(&self) -> LogStore {
        self.logs.clone()
    }

    /// Run until shutdown. Returns the exit code.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut exits: mpsc::UnboundedReceiver<process::Exit>,
    ) -> i32 {
        // The systemd watchdog's pings, on a timerfd (one wake-up each).
        let watchdog_tick = match self.notifier.watchdog_interval().map(Ticker::new) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                error!(error = %e, "cannot create the watchdog timer: {e}");
                return 1;
            }
        };
        self.start_broker_monitor();
        self.machine.boot(Instant::now());
        self.apply();
        // The first STATUS= and watchdog ping now, not at the first event or
        // tick: an idle daemon (no groups, nothing to wait for) may have none
        // for a long time.
        self.update_status_line();
        if watchdog_tick.is_some() {
            self.notifier.watchdog();
        }
        // The next deadline, recomputed (O(instances)) only when the machine
        // says something changed: the routine events of an idle daemon
        // (PINGs, heartbeats) then cost O(1).
        let mut deadline_for: Option<(u64, Option<Instant>)> = None;
        loop {
            if let Some(code) = self.exit_code {
                self.finish().await;
                return code;
            }
            let revision = self.machine.revision();
            let deadline = match deadline_for {
                Some((r, d)) if r == revision => d,
                _ => {
                    let d = self.machine.next_deadline();
                    deadline_for = Some((revision, d));
                    d
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => self.machine.shutdown(Instant::now()),
                },
                Some(exit) = exits.recv() => self.exited(exit),
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.machine.tick(Instant::now());
                }
                _ = tick_of(&watchdog_tick), if watchdog_tick.is_some() => {
                    // Sent from the loop itself: a hung loop stops the pings.
                    self.notifier.watchdog();
                }
            }
            self.apply();
            self.update_status_line();
        }
    }

    async fn finish(&mut self) {
        self.notifier.stopping();
        if let Some(m) = self.monitor.take() {
            m.shutdown().await;
        }
        // Whatever the daemon still has below it (an orphan that came back
        // after its run's kill) goes now: nothing outlives supervision.
        let r = process::kill_all_descendants(Duration::from_secs(2)).await;
        if !r.refused.is_empty() {
            error!(refused = ?r.refused, "not allowed to kill pids {:?} (EPERM: the daemon needs CAP_KILL)", r.refused);
        }
        if r.left > 0 {
            error!(
                left = r.left,
                "{} processes survived SIGKILL at exit", r.left
            );
        }
        if let Some(t) = &self.cgroups {
            for g in self.machine.plan().groups.iter() {
                if let Err(e) = t.remove_group(&g.name) {
                    warn!(group = %g.name, error = %e, "could not remove the cgroup of group {}: {e}", g.name);
                }
            }
        }
        info!("all workers stopped; exiting");
    }

    fn start_broker_monitor(&mut self) {
        let Some(b) = &self.config.broker else {
            return;
        };
        if self.machine.plan().groups.is_empty() {
            return;
        }
        let settings = broker_settings(b);
        let (btx, mut brx) = mpsc::channel(256);
        self.monitor = Some(broker::spawn_monitor(settings, self.watched(), btx));
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = brx.recv().await {
                if tx.send(Msg::Broker(ev)).await.is_err() {
                    return;
                }
            }
        });
        info!(
            broker = %config::redact_url(&b.url),
            "waiting for the broker before starting workers"
        );
    }

    fn queues(&self) -> Vec<String> {
        let mut q: Vec<String> = self
            .machine
            .plan()
            .groups
            .iter()
            .flat_map(|g| g.queues.iter().cloned())
            .collect();
        q.sort();
        q.dedup();
        q
    }

    /// The queues for the broker monitor; their backlog is polled at every
    /// health check only when some group has stall detection on.
    fn watched(&self) -> broker::Watched {
        broker::Watched {
            queues: self.queues(),
            poll: self
                .machine
                .plan()
                .instances()
                .any(|s| s.timing.stall_timeout.is_some()),
        }
    }

    async fn handle(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Shutdown => {
                if self.machine.is_shutting_down() {
                    info!("already shutting down; waiting for workers to stop");
                } else {
                    self.notifier.stopping();
                    self.extend_stop_timeout();
                }
                self.machine.shutdown(now);
            }
            Msg::Reload => {
                let report = self.reload();
                log_reload(&report);
            }
            Msg::TreeCleared { id, seq, pid } => {
                if let (Some(r), Some(pid)) = (&self.records, pid) {
                    r.remove(&id, pid);
                }
                self.machine.tree_cleared(&id, seq, now)
            }
            Msg::Broker(ev) => self.broker_event(ev, now),
            Msg::Control(c) => self.control(c),
        }
    }

    fn broker_event(&mut self, ev: BrokerEvent, now: Instant) {
        // The summary shows the broker's state and, while waiting, its error:
        // everything but the routine events changes it.
        let routine = match &ev {
            BrokerEvent::Up { .. } => self.broker.state == BrokerState::Ok,
            BrokerEvent::Backlog(_) | BrokerEvent::Heartbeat(_) => true,
            _ => false,
        };
        if !routine {
            self.broker_rev = self.broker_rev.wrapping_add(1);
        }
        match ev {
            BrokerEvent::Waiting { error, since } => {
                self.broker = BrokerView {
                    state: BrokerState::Waiting,
                    error: Some(error),
                    since: Some(since),
                    latency: None,
                };
            }
            BrokerEvent::Up { latency } => {
                if self.broker.state != BrokerState::Ok {
                    info!(latency = ?latency, "broker is reachable ({latency:?})");
                    self.broker.since = Some(SystemTime::now());
                }
                self.broker.state = BrokerState::Ok;
                self.broker.error = None;
                self.broker.latency = Some(latency);
                if !self.machine.gate_open() {
                    info!("starting workers");
                    self.machine.open_gate(now);
                }
                self.machine.broker_health(true, now);
            }
            BrokerEvent::Down { error, since } => {
                if self.broker.state != BrokerState::Unreachable {
                    warn!(%error, "broker unreachable ({error}); workers keep running and will reconnect");
                }
                self.broker = BrokerView {
                    state: BrokerState::Unreachable,
                    error: Some(error),
                    since: Some(since),
                    latency: None,
                };
                self.machine.broker_health(false, now);
            }
            BrokerEvent::Fatal { error } => {
                error!(%error, "broker configuration error: {error}");
                self.broker.state = BrokerState::Unreachable;
                self.broker.error = Some(error);
                if !self.machine.gate_open() {
                    // Nothing was started: this is a configuration error.
                    self.exit_code = Some(1);
                }
            }
            BrokerEvent::GateTimeout => {
                let on = self
                    .config
                    .broker
                    .as_ref()
                    .map(|b| b.on_timeout)
                    .unwrap_or_default();
                match on {
                    OnTimeout::Wait => {
                        warn!("broker wait_timeout passed; still waiting (on_timeout = \"wait\")")
                    }
                    OnTimeout::Start => {
                        warn!(
                            "broker wait_timeout passed; starting workers anyway (on_timeout = \"start\")"
                        );
                        self.machine.open_gate(now);
                    }
                    OnTimeout::Fail => {
                        error!("broker wait_timeout passed; exiting (on_timeout = \"fail\")");
                        self.exit_code = Some(1);
                    }
                }
            }
            BrokerEvent::Backlog(b) => self.machine.backlog(b, now),
            BrokerEvent::Heartbeat(h) => {
                self.machine
                    .heartbeat(&h.hostname, h.active, h.processed, now)
            }
        }
    }

    fn exited(&mut self, exit: process::Exit) {
        self.live.remove(exit.pid);
        let mut reason = exit.reason;
        if let (Some(spec), Some(t)) = (self.machine.instance_by_pid(exit.pid), &self.cgroups)
            && let Some(leaf) = self.leaves.get(&spec.id)
            && t.was_oom_killed(&spec.group, &spec.id, &leaf.oom_baseline())
        {
            reason = ExitReason::OomKilled;
        }
        self.machine.exited(exit.pid, reason, Instant::now());
    }

    /// Carry out the machine's actions until it has no more.
    fn apply(&mut self) {
        loop {
            let actions = self.machine.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                self.effect(a);
            }
        }
    }

    fn effect(&mut self, action: Action) {
        let now = Instant::now();
        match action {
            Action::PrepareGroup { group, limits } => {
                if let Some(t) = &self.cgroups {
                    match t.prepare_group(&group, &limits) {
                        Ok(warnings) => {
                            for w in warnings {
                                warn!(%group, "{w}");
                            }
                        }
                        Err(e) => {
                            error!(%group, error = %e, "could not set up the cgroup of group {group}: {e}")
                        }
                    }
                }
            }
            Action::Spawn { spec, generation } => {
                let leaf = match &self.cgroups {
                    Some(t) => match t.prepare_instance(&spec.group, &spec.id) {
                        Ok(leaf) => Some(leaf),
                        Err(e) => {
                            let msg = format!("cgroup: {e}");
                            self.machine.spawn_failed(&spec.id, generation, msg, now);
                            return;
                        }
                    },
                    None => None,
                };
                let fd = leaf.as_ref().map(|l| l.procs_fd());
                match process::spawn(&spec, generation, self.run_as.as_ref(), fd) {
                    Ok(sp) => {
                        let meta = Arc::new(WorkerMeta {
                            group: spec.group.clone(),
                            instance: spec.id.clone(),
                            node: spec.node.clone(),
                            pid: sp.pid,
                        });
                        tokio::spawn(logs::pump(
                            sp.stdout,
                            sp.stderr,
                            meta,
                            self.sink.clone(),
                            self.logs.clone(),
                        ));
                        self.live.insert(sp.pid);
                        self.record_run(&spec, sp.pid);
                        if let Some(l) = leaf {
                            self.leaves.insert(spec.id.clone(), l);
                        }
                        self.usage.remove(&spec.id);
                        self.machine.spawned(&spec.id, generation, sp.pid, now);
                    }
                    Err(e) => self
                        .machine
                        .spawn_failed(&spec.id, generation, e.to_string(), now),
                }
            }
            Action::Signal { id, pid, signal } => {
                let sig = match signal {
                    StopSignal::Term => Signal::SIGTERM,
                    StopSignal::Quit => Signal::SIGQUIT,
                };
                if let Err(e) = process::signal(pid, sig) {
                    warn!(instance = %id, pid, error = %e, "{id}: could not signal pid {pid}: {e}");
                }
            }
            Action::KillTree {
                id,
                group,
                pgid,
                generation: _,
                seq,
                whole_cgroup,
            } => {
                let tree = self.cgroups.clone().filter(|_| whole_cgroup);
                let tx = self.tx.clone();
                let live = self.live.clone();
                // Which process the main is, now: its pid may be reused
                // once it is reaped, and must then never be signalled.
                let main_start = process::main_identity(pgid);
                // No thread and no process: under a fork bomb (or a full
                // pids limit) none can be started, and the kill must work.
                tokio::spawn(async move {
                    if let Some(t) = &tree {
                        let start = std::time::Instant::now();
                        loop {
                            match t.kill_instance_step(&group, &id) {
                                Ok(false) => break,
                                Ok(true) if start.elapsed() < Duration::from_secs(2) => {
                                    tokio::time::sleep(Duration::from_millis(10)).await
                                }
                                Ok(true) => {
                                    warn!(instance = %id, "{id}: the cgroup is still populated after SIGKILL; killing by pid");
                                    break;
                                }
                                Err(e) if e.is_not_found() => break,
                                Err(e) => {
                                    warn!(instance = %id, error = %e, "{id}: cgroup kill failed ({e}); killing by pid");
                                    break;
                                }
                            }
                        }
                    }
                    let r =
                        process::kill_run(pgid, main_start, &live, Duration::from_secs(2)).await;
                    if !r.refused.is_empty() {
                        error!(instance = %id, refused = ?r.refused, "{id}: not allowed to kill pids {:?} (EPERM: the daemon needs CAP_KILL to signal workers of another user)", r.refused);
                    }
                    if r.left > 0 {
                        error!(instance = %id, left = r.left, "{id}: {} processes survived SIGKILL", r.left);
                    } else {
                        let _ = tx.send(Msg::TreeCleared { id, seq, pid: pgid }).await;
                    }
                });
            }
            Action::RemoveGroup { group } => {
                if let Some(t) = &self.cgroups
                    && let Err(e) = t.remove_group(&group)
                {
                    warn!(%group, error = %e, "could not remove the cgroup of group {group}: {e}");
                }
            }
            Action::Exit => self.exit_code = Some(0),
        }
    }

    /// Record a run that was just started, for the next daemon (see
    /// [`process::records`]).
    fn record_run(&self, spec: &plan::InstanceSpec, pid: u32) {
        let Some(r) = &self.records else { return };
        let Ok(p) = i32::try_from(pid) else { return };
        let Some(start) = process::start_time(p) else {
            return;
        };
        let uid = self
            .run_as
            .as_ref()
            .map_or_else(|| nix::unistd::getuid().as_raw(), |u| u.uid);
        let rec = process::records::RunRecord {
            instance: spec.id.clone(),
            node: spec.node.clone(),
            pid: p,
            start,
            uid,
            stop_timeout: spec.timing.stop_timeout,
            boot_id: process::records::boot_id(),
        };
        if let Err(e) = r.write(&rec) {
            warn!(instance = %spec.id, error = %e, "{}: cannot write the run record in {}: {e}", spec.id, r.dir().display());
        }
    }

    /// Ask systemd for more time while workers drain (warm shutdown may
    /// take stop_timeout + the SIGQUIT grace).
    fn extend_stop_timeout(&self) {
        let longest = self
            .machine
            .plan()
            .instances()
            .map(|s| s.timing.stop_timeout)
            .max()
            .unwrap_or_default();
        self.notifier
            .extend_timeout(longest + machine::QUIT_GRACE + machine::KILL_GRACE);
    }
}

/// The broker monitor's settings from the config.
pub fn broker_settings(b: &config::BrokerConfig) -> BrokerSettings {
    BrokerSettings {
        url: b.url.clone(),
        wait_timeout: b.wait_timeout,
        check_interval: b.check_interval,
        priority_steps: b.priority_steps.clone(),
        key_prefix: b.key_prefix.clone(),
    }
}

/// The next tick of `t`; never, without one.
async fn tick_of(t: &Option<Ticker>) {
    match t {
        Some(t) => {
            if let Err(e) = t.tick().await {
                // Not expected; don't spin on it.
                warn!(error = %e, "timer failed: {e}");
                tokio::time::sleep(t.period()).await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

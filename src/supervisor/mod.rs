//! The supervisor: the one owner of the daemon's state.
//!
//! [`machine`] is the pure state machine and [`backoff`] its restart
//! schedule. This module is the actor around them: one task that owns the
//! [`Machine`], receives [`Msg`]s (control requests, signals, broker events,
//! process exits, finished kills, config files read for a reload), feeds
//! them to the machine, and carries out the [`Action`]s it returns through
//! [`Effects`] ([`effects`]: the real [`effects::SysEffects`] over
//! `sys`, `logs` and `broker`; a recording fake in the tests). Nothing
//! else touches the state. `commands` answers the control
//! requests, `status` presents, `reload` applies a new config, `textfile`
//! writes the metrics file.
//!
//! The actor's tests (`tests.rs`) run it in-process against the fake on
//! tokio's paused clock.

pub use crate::model::backoff;
mod commands;
pub mod effects;
mod fleet;
pub mod machine;
#[cfg(test)]
mod recording;
mod reload;
mod scale;
mod status;
#[cfg(test)]
mod tests;
mod textfile;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::broker::{self, BrokerEvent, BrokerSettings, FleetSettings};
use crate::config::{self, BrokerConfig, Config, OnTimeout};
use crate::control::protocol::{
    BrokerStatus, DaemonStatus, ErrorKind, GroupStatus, HeartbeatSeen, InstanceStatus, QueueStatus,
    ReloadReport, Request, Response, Status,
};
use crate::control::server::ControlMsg;
use crate::logs::LogStore;
use crate::model::BrokerState;
use crate::plan;
use crate::sys::process;
use crate::sys::ticker::Ticker;
use effects::{BrokerMonitor, Effects, Kill, MonitorStart, Notice};
pub use machine::{Action, ExitReason, Machine, StopSignal};

/// At most this many reaped exits are fed to the machine between two
/// recomputations of the next deadline and the STATUS= line.
const EXIT_BATCH: usize = 1024;

/// What the supervisor is told.
#[derive(Debug)]
pub enum Msg {
    /// A request from the control socket.
    Control(ControlMsg),
    /// SIGTERM or SIGINT: stop everything and exit.
    Shutdown,
    /// SIGHUP: reload the config file.
    Reload,
    /// The config file, read off the actor for a reload; `reply` is the
    /// control client that asked, if one did.
    Loaded {
        loaded: Result<Box<config::Loaded>, Vec<String>>,
        reply: Option<oneshot::Sender<Response>>,
    },
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

/// What the daemon was started with and keeps until it restarts, whatever
/// a reload says: the broker it watches, the socket it serves and the
/// rate limit of worker lines.
#[derive(Debug, Clone)]
struct Running {
    broker: Option<BrokerConfig>,
    socket: PathBuf,
    log_rate_limit: u32,
    /// The fleet settings the broker monitor was started with.
    fleet: config::FleetConfig,
}

/// Everything the supervisor needs from the start-up sequence.
pub struct Setup<E> {
    pub config: Config,
    /// "on" or "off (reason)", for status.
    pub limits_line: String,
    /// The ring buffers of worker output (the effects' log pumps fill it).
    pub logs: LogStore,
    pub effects: E,
}

/// The usage sample of one instance, for the CPU% between two status calls.
#[derive(Debug, Clone, Copy)]
struct Usage {
    at: std::time::Instant,
    cpu_usec: u64,
    memory: Option<u64>,
    cpu_percent: Option<f64>,
}

/// The actor. Generic over its effects (not a `Box<dyn Effects>`): the
/// daemon's loop then calls `SysEffects` directly, which keeps the idle
/// path as small as it was (docs/benchmarks.md, run J).
pub struct Supervisor<E: Effects> {
    machine: Machine,
    config: Config,
    running: Running,
    limits_line: String,
    effects: E,
    logs: LogStore,
    started: SystemTime,
    broker: BrokerView,
    monitor: Option<Box<dyn BrokerMonitor>>,
    tx: mpsc::Sender<Msg>,
    last_status_line: String,
    /// The machine revision and broker view revision the STATUS= line was
    /// last computed for.
    status_for: Option<(u64, u64)>,
    /// Bumped whenever `broker` changes in a way the summary shows.
    broker_rev: u64,
    usage: HashMap<String, Usage>,
    usage_at: Option<std::time::Instant>,
    /// This device's fleet record, while it is published.
    publisher: Option<fleet::Publisher>,
    /// A new fleet record is wanted, once the event's actions are applied.
    fleet_due: bool,
    /// The systemd watchdog ticks (the fleet record is built on them).
    watchdog_ticks: bool,
    exit_code: Option<i32>,
    /// Taken by each reload's reader in turn, so reloads apply in the
    /// order they read the file.
    reload_turn: Arc<tokio::sync::Mutex<()>>,
    /// `[metrics] textfile`'s writer.
    textfile: textfile::Textfile,
    /// The fleet reads running off the actor (`commands`).
    fleet_reads: Arc<tokio::sync::Semaphore>,
    /// Autoscaling's checks (`scale`).
    scaling: scale::Autoscaling,
}

impl<E: Effects> Supervisor<E> {
    /// Build the supervisor. `tx` is the sender of its own mailbox (for the
    /// broker monitor, the kill tasks and the reload reader).
    pub fn new(setup: Setup<E>, tx: mpsc::Sender<Msg>) -> Self {
        let plan = plan::build(&setup.config);
        let has_work = !plan.groups.is_empty();
        // Without groups there is nothing to gate.
        let gate_open = !has_work || setup.config.broker.is_none();
        let machine = Machine::new(plan, gate_open, setup.effects.jitter());
        Supervisor {
            machine,
            running: Running {
                broker: setup.config.broker.clone(),
                socket: setup.config.daemon.socket.clone(),
                log_rate_limit: setup.config.daemon.log_rate_limit,
                fleet: setup.config.fleet.clone(),
            },
            limits_line: setup.limits_line,
            effects: setup.effects,
            logs: setup.logs,
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
            publisher: None,
            fleet_due: false,
            watchdog_ticks: false,
            exit_code: None,
            reload_turn: Arc::default(),
            textfile: textfile::Textfile::default(),
            fleet_reads: Arc::new(tokio::sync::Semaphore::new(commands::MAX_FLEET_READS)),
            scaling: scale::Autoscaling::default(),
            config: setup.config,
        }
    }

    /// Run until shutdown. Returns the exit code.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut exits: mpsc::UnboundedReceiver<process::Exit>,
    ) -> i32 {
        // The systemd watchdog's pings, on a timerfd (one wake-up each).
        let watchdog_tick = match self.effects.watchdog_interval().map(Ticker::new) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                error!(error = %e, "cannot create the watchdog timer: {e}");
                return 1;
            }
        };
        self.watchdog_ticks = watchdog_tick.is_some();
        self.start_broker_monitor();
        self.machine.boot(Instant::now());
        self.apply();
        // The first STATUS= and watchdog ping now, not at the first event or
        // tick: an idle daemon (no groups, nothing to wait for) may have none
        // for a long time.
        self.update_status_line();
        if watchdog_tick.is_some() {
            self.effects.notify(Notice::Watchdog);
        }
        // The next deadline, recomputed (O(instances)) only when the machine
        // says something changed: the routine events of an idle daemon
        // (PINGs, heartbeats) then cost O(1).
        let mut deadline_for: Option<(u64, Option<Instant>)> = None;
        // `[metrics] textfile`'s timer: none without a textfile.
        let mut textfile_timer = textfile::TextfileTimer::default();
        loop {
            if let Some(code) = self.exit_code {
                self.finish().await;
                return code;
            }
            self.sync_textfile_timer(&mut textfile_timer);
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
                    Some(msg) => self.handle(msg),
                    None => self.machine.shutdown(Instant::now()),
                },
                Some(exit) = exits.recv() => {
                    self.exited(exit);
                    // A mass crash arrives as many exits at once: take the
                    // ones already waiting before the O(instances) deadline
                    // and STATUS= recomputation below, not one by one.
                    for _ in 0..EXIT_BATCH {
                        match exits.try_recv() {
                            Ok(exit) => self.exited(exit),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.machine.tick(Instant::now());
                }
                _ = tick_of(&watchdog_tick), if watchdog_tick.is_some() => {
                    // Sent from the loop itself: a hung loop stops the pings.
                    self.effects.notify(Notice::Watchdog);
                    if self.fleet_record_due_on_tick() {
                        self.fleet_due = true;
                    }
                }
                _ = tick_of(&textfile_timer.ticker), if textfile_timer.ticker.is_some() => {
                    self.write_textfile();
                }
            }
            self.apply();
            self.update_status_line();
            if std::mem::take(&mut self.fleet_due) {
                self.hand_over_fleet_record();
            }
        }
    }

    async fn finish(&mut self) {
        self.effects.notify(Notice::Stopping);
        self.publish_stopped().await;
        if let Some(m) = self.monitor.take() {
            m.shutdown().await;
        }
        let groups = self
            .machine
            .plan()
            .groups
            .iter()
            .map(|g| g.name.clone())
            .collect();
        self.effects.finish(groups).await;
        self.write_final_textfile().await;
    }

    fn start_broker_monitor(&mut self) {
        let Some(b) = &self.running.broker else {
            return;
        };
        if self.machine.plan().groups.is_empty() {
            return;
        }
        self.running.fleet = self.config.fleet.clone();
        let fleet = fleet::fleet_settings(&self.config, !self.watchdog_ticks);
        self.scaling.reads_capacity = fleet.as_ref().is_some_and(|f| f.read_capacity);
        let settings = broker_settings(b, fleet.clone());
        self.publisher = fleet.map(fleet::Publisher::new);
        let url = config::redact_url(&b.url);
        let (btx, mut brx) = mpsc::channel(256);
        let watched = self.watched();
        let start = MonitorStart {
            settings,
            watched,
            events: btx,
        };
        self.monitor = Some(self.effects.start_monitor(start));
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = brx.recv().await {
                if tx.send(Msg::Broker(ev)).await.is_err() {
                    return;
                }
            }
        });
        info!(broker = %url, "waiting for the broker before starting workers");
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
                .any(|s| s.timing.stall_timeout.is_some())
                || self.machine.autoscales(),
        }
    }

    fn handle(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Shutdown => {
                if self.machine.is_shutting_down() {
                    info!("already shutting down; waiting for workers to stop");
                } else {
                    self.effects.notify(Notice::Stopping);
                    self.extend_stop_timeout();
                }
                self.machine.shutdown(now);
            }
            Msg::Reload => self.begin_reload(None),
            Msg::Loaded { loaded, reply } => self.finish_reload(loaded, reply),
            Msg::TreeCleared { id, seq, pid } => {
                if let Some(pid) = pid {
                    self.effects.run_cleared(&id, pid);
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
            BrokerEvent::Backlog(_)
            | BrokerEvent::Heartbeat(_)
            | BrokerEvent::FleetBeat { .. }
            | BrokerEvent::FleetCapacity(_) => true,
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
                self.fleet_due = true;
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
            BrokerEvent::GateTimeout => self.gate_timeout(now),
            BrokerEvent::Backlog(b) => {
                self.machine.backlog(b, now);
                self.scale_tick(now);
            }
            BrokerEvent::Heartbeat(h) => {
                self.machine
                    .heartbeat(&h.hostname, h.active, h.processed, now)
            }
            BrokerEvent::FleetBeat { .. } => self.fleet_due = true,
            BrokerEvent::FleetCapacity(c) => self.fleet_capacity(c),
        }
    }

    fn gate_timeout(&mut self, now: Instant) {
        let on = self
            .running
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

    fn exited(&mut self, exit: process::Exit) {
        let spec = self.machine.instance_by_pid(exit.pid);
        let reason = self.effects.exited(spec, &exit);
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
            Action::PrepareGroup { group, limits } => self.effects.prepare_group(&group, &limits),
            Action::Spawn { spec, generation } => match self.effects.spawn(&spec, generation) {
                Ok(pid) => {
                    self.usage.remove(&spec.id);
                    self.machine.spawned(&spec.id, generation, pid, now);
                }
                Err(e) => self.machine.spawn_failed(&spec.id, generation, e, now),
            },
            Action::Signal { id, pid, signal } => self.effects.signal(&id, pid, signal),
            Action::KillTree {
                id,
                group,
                pgid,
                generation: _,
                seq,
                whole_cgroup,
            } => {
                let kill = Kill {
                    id,
                    group,
                    pgid,
                    seq,
                    whole_cgroup,
                };
                self.effects.kill_tree(kill, self.tx.clone());
            }
            Action::RemoveGroup { group } => self.effects.remove_group(&group),
            Action::Exit => self.exit_code = Some(0),
        }
    }

    /// Ask systemd for more time while workers drain (warm shutdown may
    /// take stop_timeout + the SIGQUIT grace).
    fn extend_stop_timeout(&mut self) {
        let longest = self
            .machine
            .plan()
            .instances()
            .map(|s| s.timing.stop_timeout)
            .max()
            .unwrap_or_default();
        self.effects.notify(Notice::ExtendTimeout(
            longest + machine::QUIT_GRACE + machine::KILL_GRACE,
        ));
    }
}

/// The broker monitor's settings from the config, with the fleet beat's.
pub fn broker_settings(b: &config::BrokerConfig, fleet: Option<FleetSettings>) -> BrokerSettings {
    BrokerSettings {
        fleet,
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

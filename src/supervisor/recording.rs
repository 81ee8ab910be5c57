//! A recording fake of [`Effects`] for the actor's tests (as youki's
//! `TestManager` fakes a cgroup manager): it records every call with the
//! (paused) tokio time, hands out pids, and plays the workers' part. A
//! worker exits on SIGTERM (code 0) unless told to ignore it, on SIGQUIT
//! (killed by SIGQUIT) and on a tree kill (killed by SIGKILL); its exit
//! reaches the actor through the exits channel, as the reaper's would.
//! Tests script spawn failures and crashes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Msg;
use super::effects::{
    BoxFuture, BrokerMonitor, Effects, Kill, MemorySample, MonitorStart, Notice, Sample, StopFuture,
};
use super::machine::StopSignal;
use crate::broker::{BrokerEvent, Watched};
use crate::model::ExitReason;
use crate::model::fleet::DeviceRecord;
use crate::plan::{InstanceSpec, Limits};
use crate::sys::cgroup::MemoryPressure;
use crate::sys::process::Exit;

/// One call the actor made.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    PrepareGroup(String),
    RemoveGroup(String),
    Spawn {
        id: String,
        pid: u32,
        args: Vec<String>,
    },
    SpawnFailed {
        id: String,
        error: String,
    },
    Signal {
        id: String,
        pid: u32,
        signal: StopSignal,
    },
    KillTree(Kill),
    RunCleared {
        id: String,
        pid: u32,
    },
    Notify(Notice),
    MonitorStarted {
        url: String,
        queues: Vec<String>,
    },
    SetQueues(Vec<String>),
    /// The fleet record handed to the monitor (JSON).
    FleetRecord(Vec<u8>),
    /// The record of a clean stop.
    FleetStopped(Box<DeviceRecord>),
    Finish(Vec<String>),
}

#[derive(Default)]
struct World {
    calls: Vec<(Instant, Call)>,
    next_pid: u32,
    /// Live main pids and their instance ids.
    live: HashMap<u32, String>,
    /// The errors the next spawns fail with, in order.
    spawn_failures: VecDeque<String>,
    /// Instances whose workers ignore SIGTERM.
    ignore_term: HashSet<String>,
    broker_events: Option<mpsc::Sender<BrokerEvent>>,
    /// What [`Effects::memory_sample`] answers: `MemAvailable` (unknown
    /// until set) and the pressure of the groups set (others: zeros).
    mem_available: Option<u64>,
    pressure: HashMap<String, MemoryPressure>,
    memory_samples: usize,
}

/// The test's handle on the fake world (the actor owns the [`Effects`]).
#[derive(Clone)]
pub struct Recorder {
    world: Arc<Mutex<World>>,
    exits: mpsc::UnboundedSender<Exit>,
}

impl Recorder {
    /// A fake world whose worker exits go to `exits`.
    pub fn new(exits: mpsc::UnboundedSender<Exit>) -> Self {
        let world = World {
            next_pid: 1000,
            ..World::default()
        };
        Recorder {
            world: Arc::new(Mutex::new(world)),
            exits,
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        // A test that panicked while holding it has failed already.
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The effects to give the actor.
    pub fn effects(&self) -> RecordingEffects {
        RecordingEffects(self.clone())
    }

    /// Every call so far, with when it was made.
    pub fn calls(&self) -> Vec<(Instant, Call)> {
        self.world().calls.clone()
    }

    /// The calls after the first `n`, without their times.
    pub fn calls_after(&self, n: usize) -> Vec<Call> {
        let w = self.world();
        w.calls.iter().skip(n).map(|(_, c)| c.clone()).collect()
    }

    /// The pids `id` was started with, in order, and when.
    pub fn spawns(&self, id: &str) -> Vec<(Instant, u32)> {
        self.calls()
            .into_iter()
            .filter_map(|(t, c)| match c {
                Call::Spawn { id: i, pid, .. } if i == id => Some((t, pid)),
                _ => None,
            })
            .collect()
    }

    /// The ids started, in order.
    pub fn spawn_order(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|(_, c)| match c {
                Call::Spawn { id, .. } => Some(id),
                _ => None,
            })
            .collect()
    }

    /// The signals sent to `id`'s workers, in order.
    pub fn signals(&self, id: &str) -> Vec<StopSignal> {
        self.calls()
            .into_iter()
            .filter_map(|(_, c)| match c {
                Call::Signal { id: i, signal, .. } if i == id => Some(signal),
                _ => None,
            })
            .collect()
    }

    pub fn notices(&self) -> Vec<Notice> {
        self.calls()
            .into_iter()
            .filter_map(|(_, c)| match c {
                Call::Notify(n) => Some(n),
                _ => None,
            })
            .collect()
    }

    /// The live pid of `id`'s worker, if one runs.
    pub fn pid_of(&self, id: &str) -> Option<u32> {
        let w = self.world();
        w.live.iter().find(|(_, i)| *i == id).map(|(p, _)| *p)
    }

    /// The next spawn fails with `error`.
    pub fn fail_next_spawn(&self, error: &str) {
        self.world().spawn_failures.push_back(error.to_string());
    }

    /// `id`'s workers ignore SIGTERM from now on.
    pub fn ignore_term(&self, id: &str) {
        self.world().ignore_term.insert(id.to_string());
    }

    /// `id`'s worker exits on its own (a crash).
    pub fn crash(&self, id: &str, reason: ExitReason) {
        let pid = self.pid_of(id);
        assert!(pid.is_some(), "{id} is not running");
        if let Some(pid) = pid {
            self.exit(pid, reason);
        }
    }

    /// `MemAvailable` as the next memory samples report it.
    pub fn set_mem_available(&self, bytes: Option<u64>) {
        self.world().mem_available = bytes;
    }

    /// `group`'s memory pressure as the next memory samples report it.
    pub fn set_memory_pressure(&self, group: &str, pressure: MemoryPressure) {
        self.world().pressure.insert(group.to_string(), pressure);
    }

    /// How many memory samples the actor took.
    pub fn memory_samples(&self) -> usize {
        self.world().memory_samples
    }

    /// Send a broker event as the monitor would.
    pub async fn broker(&self, ev: BrokerEvent) {
        let tx = self.world().broker_events.clone();
        let tx = tx.expect("no broker monitor was started");
        tx.send(ev).await.expect("the actor is gone");
    }

    fn record(&self, call: Call) {
        self.world().calls.push((Instant::now(), call));
    }

    fn exit(&self, pid: u32, reason: ExitReason) {
        if self.world().live.remove(&pid).is_some() {
            let _ = self.exits.send(Exit { pid, reason });
        }
    }
}

/// The [`Effects`] a [`Recorder`] hands to the actor.
pub struct RecordingEffects(Recorder);

struct FakeMonitor(Recorder);

impl BrokerMonitor for FakeMonitor {
    fn set_queues(&self, watched: Watched) {
        self.0.record(Call::SetQueues(watched.queues));
    }
    fn latency(&self) -> Option<Duration> {
        None
    }
    fn refresh_backlog(&self) {}
    fn set_fleet_record(&self, record: Vec<u8>) {
        self.0.record(Call::FleetRecord(record));
    }
    fn publish_stopped(&self, record: DeviceRecord) -> StopFuture {
        self.0.record(Call::FleetStopped(Box::new(record)));
        Box::pin(async { Ok(0.0) })
    }
    fn shutdown(self: Box<Self>) -> BoxFuture<'static> {
        Box::pin(async {})
    }
}

impl Effects for RecordingEffects {
    fn prepare_group(&mut self, group: &str, _limits: &Limits) {
        self.0.record(Call::PrepareGroup(group.to_string()));
    }

    fn remove_group(&mut self, group: &str) {
        self.0.record(Call::RemoveGroup(group.to_string()));
    }

    fn spawn(&mut self, spec: &InstanceSpec, _generation: u64) -> Result<u32, String> {
        let mut w = self.0.world();
        if let Some(error) = w.spawn_failures.pop_front() {
            drop(w);
            self.0.record(Call::SpawnFailed {
                id: spec.id.clone(),
                error: error.clone(),
            });
            return Err(error);
        }
        let pid = w.next_pid;
        w.next_pid += 1;
        w.live.insert(pid, spec.id.clone());
        drop(w);
        self.0.record(Call::Spawn {
            id: spec.id.clone(),
            pid,
            args: spec.args.clone(),
        });
        Ok(pid)
    }

    fn signal(&mut self, id: &str, pid: u32, signal: StopSignal) {
        self.0.record(Call::Signal {
            id: id.to_string(),
            pid,
            signal,
        });
        match signal {
            StopSignal::Term if self.0.world().ignore_term.contains(id) => {}
            StopSignal::Term => self.0.exit(pid, ExitReason::Code(0)),
            StopSignal::Quit => self.0.exit(pid, ExitReason::Signal(libc::SIGQUIT)),
        }
    }

    fn kill_tree(&mut self, kill: Kill, done: mpsc::Sender<Msg>) {
        self.0.record(Call::KillTree(kill.clone()));
        if let Some(pid) = kill.pgid {
            self.0.exit(pid, ExitReason::Signal(libc::SIGKILL));
        }
        tokio::spawn(async move {
            let msg = Msg::TreeCleared {
                id: kill.id,
                seq: kill.seq,
                pid: kill.pgid,
            };
            let _ = done.send(msg).await;
        });
    }

    fn exited(&mut self, _spec: Option<&InstanceSpec>, exit: &Exit) -> ExitReason {
        exit.reason.clone()
    }

    fn run_cleared(&mut self, id: &str, pid: u32) {
        self.0.record(Call::RunCleared {
            id: id.to_string(),
            pid,
        });
    }

    fn usage(&mut self, _id: &str, _group: &str, pid: u32) -> Option<Sample> {
        Some(Sample {
            cpu_usec: 0,
            memory: Some(u64::from(pid)),
        })
    }

    fn notify(&mut self, notice: Notice) {
        self.0.record(Call::Notify(notice));
    }

    fn notify_enabled(&self) -> bool {
        true
    }

    fn watchdog_interval(&self) -> Option<Duration> {
        None
    }

    fn memory_sample(&mut self, groups: &[String]) -> MemorySample {
        let mut w = self.0.world();
        w.memory_samples += 1;
        MemorySample {
            available: w.mem_available,
            groups: groups
                .iter()
                .map(|g| (g.clone(), w.pressure.get(g).copied().unwrap_or_default()))
                .collect(),
        }
    }

    fn start_monitor(&mut self, start: MonitorStart) -> Box<dyn BrokerMonitor> {
        self.0.world().broker_events = Some(start.events);
        self.0.record(Call::MonitorStarted {
            url: start.settings.url,
            queues: start.watched.queues,
        });
        Box::new(FakeMonitor(self.0.clone()))
    }

    fn logs_to_journal(&self) -> bool {
        false
    }

    fn jitter(&self) -> Box<dyn FnMut() -> f64 + Send> {
        // The exact restart schedule.
        Box::new(|| 0.0)
    }

    fn finish(&mut self, groups: Vec<String>) -> BoxFuture<'_> {
        self.0.record(Call::Finish(groups));
        Box::pin(async {})
    }
}

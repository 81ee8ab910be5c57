//! Everything the supervisor does to the world, behind one trait.
//!
//! The actor ([`super::Supervisor`]) decides; [`Effects`] carries it out:
//! start a run (cgroup leaf, spawn, log pump, run record), signal and kill
//! runs, create and remove group cgroups, read usage, talk to systemd
//! (`sd_notify`), start the broker monitor and clean up at exit. As youki's
//! libcgroups puts a trait in front of the cgroup file system, this trait
//! puts one in front of the OS: [`SysEffects`] is the real one (over
//! [`crate::sys`], [`crate::logs`] and [`crate::broker`]); the recording
//! fake in `recording.rs` lets the actor's tests script pids, exits and
//! failures on tokio's paused clock.
//!
//! May import `sys`, `logs`, `broker`, `plan`, `model` and the machine's
//! action types; never `control` or `cli`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::Msg;
use super::machine::StopSignal;
use crate::broker::{self, BrokerEvent, BrokerSettings, Monitor, Watched};
use crate::logs::{self, LogStore, RateLimits, Sink, WorkerMeta};
use crate::model::ExitReason;
use crate::model::fleet::DeviceRecord;
use crate::plan::{InstanceSpec, Limits};
use crate::sys::cgroup::{CgroupTree, Leaf, MemoryPressure, PROC_PRESSURE_MEMORY};
use crate::sys::host;
use crate::sys::notify::Notifier;
use crate::sys::privdrop::RunAs;
use crate::sys::process::{self, Exit};

/// A boxed future, for the trait's asynchronous steps.
pub type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
/// [`BrokerMonitor::publish_stopped`]'s answer.
pub type StopFuture = Pin<Box<dyn Future<Output = Result<f64, String>> + Send>>;

/// One `sd_notify` message.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Ready,
    Reloading,
    Stopping,
    Watchdog,
    Status(String),
    /// `EXTEND_TIMEOUT_USEC`: more time to stop.
    ExtendTimeout(Duration),
}

/// Kill every process of one run (see `Action::KillTree`).
#[derive(Debug, Clone, PartialEq)]
pub struct Kill {
    pub id: String,
    pub group: String,
    /// The run's main pid (= its process group); it may have exited.
    pub pgid: Option<u32>,
    pub seq: u64,
    /// Whether the instance's cgroup leaf may be emptied too.
    pub whole_cgroup: bool,
}

/// One instance's resource usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub cpu_usec: u64,
    pub memory: Option<u64>,
}

/// The memory figures of an autoscale check ([`Effects::memory_sample`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemorySample {
    /// `MemAvailable` of /proc/meminfo, bytes; `None` when unreadable.
    pub available: Option<u64>,
    /// Each group asked about: its cgroup's memory pressure (zero counters
    /// when limits are off; PSI then from /proc/pressure/memory). Judge two
    /// samples with [`crate::sys::cgroup::under_pressure`].
    pub groups: BTreeMap<String, MemoryPressure>,
}

/// What the broker monitor is started with.
pub struct MonitorStart {
    pub settings: BrokerSettings,
    pub watched: Watched,
    /// Where it sends its events.
    pub events: mpsc::Sender<BrokerEvent>,
}

/// The running broker monitor, as the actor uses it.
pub trait BrokerMonitor: Send {
    /// The queues whose backlog is reported changed.
    fn set_queues(&self, watched: Watched);
    /// The latest PING round trip while the broker is up.
    fn latency(&self) -> Option<Duration>;
    /// Fetch the backlog soon.
    fn refresh_backlog(&self);
    /// The fleet record for the next beat.
    fn set_fleet_record(&self, record: Vec<u8>);
    /// Write the record marked stopped; the Redis time of the stop.
    fn publish_stopped(&self, record: DeviceRecord) -> StopFuture;
    /// Stop it and wait until it has stopped.
    fn shutdown(self: Box<Self>) -> BoxFuture<'static>;
}

impl BrokerMonitor for Monitor {
    fn set_queues(&self, watched: Watched) {
        Monitor::set_queues(self, watched)
    }
    fn latency(&self) -> Option<Duration> {
        Monitor::latency(self)
    }
    fn refresh_backlog(&self) {
        Monitor::refresh_backlog(self)
    }
    fn set_fleet_record(&self, record: Vec<u8>) {
        Monitor::set_fleet_record(self, record)
    }
    fn publish_stopped(&self, record: DeviceRecord) -> StopFuture {
        Box::pin(Monitor::publish_stopped(self, record))
    }
    fn shutdown(self: Box<Self>) -> BoxFuture<'static> {
        Box::pin(Monitor::shutdown(*self))
    }
}

/// What the actor does to the world. Every method returns at once; what
/// takes time (a kill) runs on its own and reports back as a [`Msg`].
pub trait Effects: Send {
    /// Make sure the group's cgroup exists with these limits (limits on).
    fn prepare_group(&mut self, group: &str, limits: &Limits);
    /// Remove the group's cgroup (limits on).
    fn remove_group(&mut self, group: &str);
    /// Start one run of `spec`: its cgroup leaf, the process, its log pump
    /// and its run record. The main pid, or why it could not start.
    fn spawn(&mut self, spec: &InstanceSpec, generation: u64) -> Result<u32, String>;
    /// Signal a run's main process.
    fn signal(&mut self, id: &str, pid: u32, signal: StopSignal);
    /// Kill every process of a run; send [`Msg::TreeCleared`] on `done`
    /// once none is left.
    fn kill_tree(&mut self, kill: Kill, done: mpsc::Sender<Msg>);
    /// A main process exited: why, as the cgroup tells it (an OOM kill
    /// shows as SIGKILL to the reaper). `spec` is its instance, if known.
    fn exited(&mut self, spec: Option<&InstanceSpec>, exit: &Exit) -> ExitReason;
    /// A run's processes are all gone: forget its run record.
    fn run_cleared(&mut self, id: &str, pid: u32);
    /// The CPU time and memory of one instance's run.
    fn usage(&mut self, id: &str, group: &str, pid: u32) -> Option<Sample>;
    /// Tell systemd.
    fn notify(&mut self, notice: Notice);
    /// Whether [`Notice`]s go anywhere (computing STATUS= is skipped if not).
    fn notify_enabled(&self) -> bool;
    /// How often systemd wants a watchdog ping.
    fn watchdog_interval(&self) -> Option<Duration>;
    /// `MemAvailable` and the memory pressure of `groups`, for autoscaling
    /// (a few small reads of /proc and cgroupfs).
    fn memory_sample(&mut self, groups: &[String]) -> MemorySample;
    /// Start the broker monitor.
    fn start_monitor(&mut self, start: MonitorStart) -> Box<dyn BrokerMonitor>;
    /// Whether worker output goes to journald (for status).
    fn logs_to_journal(&self) -> bool;
    /// The restart delays' jitter source, numbers in `[-1, 1]`.
    fn jitter(&self) -> Box<dyn FnMut() -> f64 + Send>;
    /// At exit: kill whatever is still below the daemon and remove the
    /// cgroups of `groups`.
    fn finish(&mut self, groups: Vec<String>) -> BoxFuture<'_>;
}

/// The real effects: processes, cgroups, journald, sd_notify, Redis.
pub struct SysEffects {
    run_as: Option<RunAs>,
    /// `None` when limits are off.
    cgroups: Option<Arc<CgroupTree>>,
    leaves: HashMap<String, Leaf>,
    sink: Arc<Sink>,
    /// The per-group rate limits of worker records at info and below.
    log_limits: RateLimits,
    logs: LogStore,
    notifier: Notifier,
    /// The main pids of the live runs, for the kill tasks.
    live: process::LiveMains,
    records: Option<process::records::Records>,
}

impl SysEffects {
    /// `records`: where each run is recorded for the next daemon; `None`
    /// when the state directory could not be opened.
    pub fn new(
        run_as: Option<RunAs>,
        cgroups: Option<CgroupTree>,
        sink: Sink,
        logs: LogStore,
        notifier: Notifier,
        records: Option<process::records::Records>,
    ) -> Self {
        SysEffects {
            run_as,
            cgroups: cgroups.map(Arc::new),
            leaves: HashMap::new(),
            sink: Arc::new(sink),
            log_limits: RateLimits::new(0),
            logs,
            notifier,
            live: process::LiveMains::default(),
            records,
        }
    }

    /// Limit worker records at info and below to `per_second` for all
    /// groups together (`[daemon] log_rate_limit`; 0: no limit).
    pub fn with_log_rate_limit(mut self, per_second: u32) -> Self {
        self.log_limits = RateLimits::new(per_second);
        self
    }

    /// Record a run that was just started, for the next daemon (see
    /// [`process::records`]).
    fn record_run(&self, spec: &InstanceSpec, pid: u32) {
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
}

impl Effects for SysEffects {
    fn prepare_group(&mut self, group: &str, limits: &Limits) {
        self.log_limits.add_group(group);
        let Some(t) = &self.cgroups else { return };
        match t.prepare_group(group, limits) {
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

    fn remove_group(&mut self, group: &str) {
        self.log_limits.remove_group(group);
        if let Some(t) = &self.cgroups
            && let Err(e) = t.remove_group(group)
        {
            warn!(%group, error = %e, "could not remove the cgroup of group {group}: {e}");
        }
    }

    fn spawn(&mut self, spec: &InstanceSpec, generation: u64) -> Result<u32, String> {
        let leaf = match &self.cgroups {
            Some(t) => Some(
                t.prepare_instance(&spec.group, &spec.id)
                    .map_err(|e| format!("cgroup: {e}"))?,
            ),
            None => None,
        };
        let fd = leaf.as_ref().map(|l| l.procs_fd());
        let sp = process::spawn(spec, generation, self.run_as.as_ref(), fd)
            .map_err(|e| e.to_string())?;
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
            self.log_limits.of(&spec.group),
            self.logs.clone(),
        ));
        self.live.insert(sp.pid);
        self.record_run(spec, sp.pid);
        if let Some(l) = leaf {
            self.leaves.insert(spec.id.clone(), l);
        }
        Ok(sp.pid)
    }

    fn signal(&mut self, id: &str, pid: u32, signal: StopSignal) {
        let sig = match signal {
            StopSignal::Term => Signal::SIGTERM,
            StopSignal::Quit => Signal::SIGQUIT,
        };
        if let Err(e) = process::signal(pid, sig) {
            warn!(instance = %id, pid, error = %e, "{id}: could not signal pid {pid}: {e}");
        }
    }

    fn kill_tree(&mut self, kill: Kill, done: mpsc::Sender<Msg>) {
        let Kill {
            id,
            group,
            pgid,
            seq,
            whole_cgroup,
        } = kill;
        let tree = self.cgroups.clone().filter(|_| whole_cgroup);
        let live = self.live.clone();
        // Which process the main is, now: its pid may be reused once it is
        // reaped, and must then never be signalled.
        let main_start = process::main_identity(pgid);
        // No thread and no process: under a fork bomb (or a full pids
        // limit) none can be started, and the kill must work.
        tokio::spawn(async move {
            if let Some(t) = &tree {
                empty_leaf(t, &group, &id).await;
            }
            let r = process::kill_run(pgid, main_start, &live, Duration::from_secs(2)).await;
            if !r.refused.is_empty() {
                error!(instance = %id, refused = ?r.refused, "{id}: not allowed to kill pids {:?} (EPERM: the daemon needs CAP_KILL to signal workers of another user)", r.refused);
            }
            if r.left > 0 {
                error!(instance = %id, left = r.left, "{id}: {} processes survived SIGKILL", r.left);
            } else {
                let _ = done.send(Msg::TreeCleared { id, seq, pid: pgid }).await;
            }
        });
    }

    fn exited(&mut self, spec: Option<&InstanceSpec>, exit: &Exit) -> ExitReason {
        self.live.remove(exit.pid);
        if let (Some(spec), Some(t)) = (spec, &self.cgroups)
            && let Some(leaf) = self.leaves.get(&spec.id)
            && t.was_oom_killed(&spec.group, &spec.id, &leaf.oom_baseline())
        {
            return ExitReason::OomKilled;
        }
        exit.reason.clone()
    }

    fn run_cleared(&mut self, id: &str, pid: u32) {
        if let Some(r) = &self.records {
            r.remove(id, pid);
        }
    }

    fn usage(&mut self, id: &str, group: &str, pid: u32) -> Option<Sample> {
        match &self.cgroups {
            Some(t) => t.stats(group, id).map(|s| Sample {
                cpu_usec: s.cpu_usage_usec.unwrap_or(0),
                memory: s.memory_current,
            }),
            // Without cgroups: the worker's process tree, from /proc.
            None => process::tree_usage(pid).map(|u| Sample {
                cpu_usec: u.cpu_usec,
                memory: Some(u.rss_bytes),
            }),
        }
    }

    fn notify(&mut self, notice: Notice) {
        let n = &self.notifier;
        match notice {
            Notice::Ready => n.ready(),
            Notice::Reloading => n.reloading(),
            Notice::Stopping => n.stopping(),
            Notice::Watchdog => n.watchdog(),
            Notice::Status(s) => n.status(&s),
            Notice::ExtendTimeout(d) => n.extend_timeout(d),
        };
    }

    fn notify_enabled(&self) -> bool {
        self.notifier.is_enabled()
    }

    fn watchdog_interval(&self) -> Option<Duration> {
        self.notifier.watchdog_interval()
    }

    fn memory_sample(&mut self, groups: &[String]) -> MemorySample {
        let host_psi = Path::new(PROC_PRESSURE_MEMORY);
        let groups = groups
            .iter()
            .map(|g| {
                let dir = self.cgroups.as_ref().and_then(|t| t.group_dir(g).ok());
                (g.clone(), MemoryPressure::read(dir.as_deref(), host_psi))
            })
            .collect();
        MemorySample {
            available: host::mem_available(),
            groups,
        }
    }

    fn start_monitor(&mut self, start: MonitorStart) -> Box<dyn BrokerMonitor> {
        let MonitorStart {
            settings,
            watched,
            events,
        } = start;
        Box::new(broker::spawn_monitor(settings, watched, events))
    }

    fn logs_to_journal(&self) -> bool {
        matches!(*self.sink, Sink::Journal(_))
    }

    fn jitter(&self) -> Box<dyn FnMut() -> f64 + Send> {
        Box::new(|| rand::random::<f64>() * 2.0 - 1.0)
    }

    fn finish(&mut self, groups: Vec<String>) -> BoxFuture<'_> {
        Box::pin(async move {
            // Whatever the daemon still has below it (an orphan that came
            // back after its run's kill) goes now: nothing outlives
            // supervision.
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
            for g in &groups {
                self.remove_group(g);
            }
            info!("all workers stopped; exiting");
        })
    }
}

/// Kill a run through its cgroup leaf until it is empty (at most 2 s; then
/// the pid-based kill does the rest).
async fn empty_leaf(t: &CgroupTree, group: &str, id: &str) {
    let start = std::time::Instant::now();
    loop {
        match t.kill_instance_step(group, id) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_sample_reads_meminfo_and_each_groups_cgroup() {
        let tmp = tempfile::tempdir().unwrap();
        let group = tmp.path().join("svc/text");
        std::fs::create_dir_all(&group).unwrap();
        std::fs::write(group.join("memory.events"), "high 4\noom 1\noom_kill 1\n").unwrap();
        std::fs::write(group.join("memory.current"), "1048576\n").unwrap();
        std::fs::write(
            group.join("memory.pressure"),
            "some avg10=22.00 avg60=1 avg300=0 total=5\n",
        )
        .unwrap();
        let tree = CgroupTree::at(tmp.path().to_path_buf(), "/svc".into());
        let mut fx = SysEffects::new(
            None,
            Some(tree),
            Sink::Stderr,
            LogStore::new(),
            Notifier::disabled(),
            None,
        );
        let s = fx.memory_sample(&["text".to_string(), "cgroup.bad".to_string()]);
        assert!(s.available.is_some_and(|a| a > 0));
        let text = s.groups["text"];
        assert_eq!((text.high, text.oom, text.oom_kill), (4, 1, 1));
        assert_eq!(text.current, Some(1 << 20));
        assert_eq!(text.psi_some_avg10, Some(22.0));
        // A name no cgroup may have: no files, but still an answer.
        assert_eq!(s.groups["cgroup.bad"].high, 0);
        assert_eq!(s.groups.len(), 2);
    }

    #[tokio::test]
    async fn the_recording_fake_answers_what_the_test_set() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let rec = super::super::recording::Recorder::new(tx);
        let mut fx = rec.effects();
        let groups = ["a".to_string(), "b".to_string()];
        let s = fx.memory_sample(&groups);
        assert_eq!(s.available, None);
        assert_eq!(s.groups["a"], MemoryPressure::default());
        let tight = MemoryPressure {
            oom_kill: 1,
            psi_some_avg10: Some(40.0),
            ..MemoryPressure::default()
        };
        rec.set_mem_available(Some(200 << 20));
        rec.set_memory_pressure("b", tight);
        let s = fx.memory_sample(&groups);
        assert_eq!(s.available, Some(200 << 20));
        assert_eq!(
            (s.groups["a"], s.groups["b"]),
            (MemoryPressure::default(), tight)
        );
        assert_eq!(rec.memory_samples(), 2);
    }
}

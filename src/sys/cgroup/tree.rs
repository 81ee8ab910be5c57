//! The delegated subtree once it is set up: groups with limits, instance
//! leaves, stats and the final kill.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::detect::plus_list;
use super::{
    CgroupError, SUPERVISOR, WANTED_CONTROLLERS, check_name, make_dir, parse_controllers,
    parse_keyed, parse_pids, parse_populated, parse_single, read_file, write_file,
};
use crate::model::spec::Limits;

/// The cpu.max period the daemon writes, in microseconds.
pub const CPU_PERIOD_USEC: u64 = 100_000;
/// The kernel's smallest cpu.max quota, in microseconds.
const CPU_MIN_QUOTA_USEC: u64 = 1_000;
/// How long the final kill waits for a cgroup to empty.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(10);

/// The delegated subtree `<root>/<own>`.
#[derive(Debug, Clone)]
pub struct CgroupTree {
    root: PathBuf,
    own: PathBuf,
    dir: PathBuf,
    controllers: Vec<String>,
    warnings: Vec<String>,
}

/// The value written to one limit file of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitWrite {
    /// The config key, e.g. `cpu_max`.
    pub key: &'static str,
    /// The interface file, e.g. `cpu.max`.
    pub file: &'static str,
    /// The controller that provides the file.
    pub controller: &'static str,
    /// What is written, e.g. `150000 100000`, or the kernel default.
    pub value: String,
    /// Whether the limit is set (as opposed to reset to the default).
    pub set: bool,
}

/// `cpu.max` for a number of CPUs: 1.5 → "150000 100000", none → "max 100000".
pub fn cpu_max_value(cpus: Option<f64>) -> Result<String, CgroupError> {
    let Some(cpus) = cpus else {
        return Ok(format!("max {CPU_PERIOD_USEC}"));
    };
    let bad = |why| CgroupError::InvalidLimit {
        key: "cpu_max",
        value: cpus.to_string(),
        why,
    };
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(bad("must be a positive number of CPUs"));
    }
    let quota = (cpus * CPU_PERIOD_USEC as f64).round();
    if quota < CPU_MIN_QUOTA_USEC as f64 {
        return Err(bad("below the kernel minimum of 0.01 CPUs"));
    }
    if quota > u32::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(format!("{} {CPU_PERIOD_USEC}", quota as u64))
}

fn weight(key: &'static str, w: Option<u32>) -> Result<String, CgroupError> {
    match w {
        None => Ok("100".to_string()),
        Some(w @ 1..=10_000) => Ok(w.to_string()),
        Some(w) => Err(CgroupError::InvalidLimit {
            key,
            value: w.to_string(),
            why: "must be 1..=10000",
        }),
    }
}

fn max_or(v: Option<u64>) -> String {
    v.map_or_else(|| "max".to_string(), |v| v.to_string())
}

/// Every limit file of a group with the value to write. Unset limits get
/// the kernel's default ("max", weight 100), so that a reload that removes
/// a limit really removes it.
pub fn limit_writes(l: &Limits) -> Result<Vec<LimitWrite>, CgroupError> {
    let w = |key, file, controller, value, set| LimitWrite {
        key,
        file,
        controller,
        value,
        set,
    };
    Ok(vec![
        w(
            "memory_max",
            "memory.max",
            "memory",
            max_or(l.memory_max),
            l.memory_max.is_some(),
        ),
        w(
            "memory_high",
            "memory.high",
            "memory",
            max_or(l.memory_high),
            l.memory_high.is_some(),
        ),
        w(
            "memory_swap_max",
            "memory.swap.max",
            "memory",
            max_or(l.memory_swap_max),
            l.memory_swap_max.is_some(),
        ),
        w(
            "cpu_max",
            "cpu.max",
            "cpu",
            cpu_max_value(l.cpu_max)?,
            l.cpu_max.is_some(),
        ),
        w(
            "cpu_weight",
            "cpu.weight",
            "cpu",
            weight("cpu_weight", l.cpu_weight)?,
            l.cpu_weight.is_some(),
        ),
        w(
            "pids_max",
            "pids.max",
            "pids",
            max_or(l.pids_max),
            l.pids_max.is_some(),
        ),
        w(
            "io_weight",
            "io.weight",
            "io",
            format!("default {}", weight("io_weight", l.io_weight)?),
            l.io_weight.is_some(),
        ),
    ])
}

/// The `memory.events` OOM counters of a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OomCounts {
    /// Processes of this cgroup killed by an OOM killer.
    pub oom_kill: u64,
    /// Times the whole cgroup was killed (memory.oom.group).
    pub oom_group_kill: u64,
}

impl OomCounts {
    pub fn parse(memory_events: &str) -> OomCounts {
        OomCounts {
            oom_kill: parse_keyed(memory_events, "oom_kill").unwrap_or(0),
            oom_group_kill: parse_keyed(memory_events, "oom_group_kill").unwrap_or(0),
        }
    }

    /// Whether an OOM kill happened between `before` and `self`.
    pub fn killed_since(&self, before: &OomCounts) -> bool {
        self.oom_kill > before.oom_kill || self.oom_group_kill > before.oom_group_kill
    }
}

/// Usage of one cgroup, for status. A field is `None` when its file is
/// missing or unreadable (e.g. a controller not enabled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// memory.current, bytes.
    pub memory_current: Option<u64>,
    /// cpu.stat usage_usec (total CPU time, µs).
    pub cpu_usage_usec: Option<u64>,
    /// pids.current.
    pub pids_current: Option<u64>,
    /// memory.events.
    pub oom: Option<OomCounts>,
}

impl Stats {
    /// Read the stats of the cgroup at `dir`; `None` when it does not exist.
    pub fn read(dir: &Path) -> Option<Stats> {
        if !dir.is_dir() {
            return None;
        }
        let file = |name: &str| fs::read_to_string(dir.join(name)).ok();
        Some(Stats {
            memory_current: file("memory.current").as_deref().and_then(parse_single),
            cpu_usage_usec: file("cpu.stat")
                .as_deref()
                .and_then(|t| parse_keyed(t, "usage_usec")),
            pids_current: file("pids.current").as_deref().and_then(parse_single),
            oom: file("memory.events").as_deref().map(OomCounts::parse),
        })
    }
}

/// An instance leaf, ready for a worker to join.
#[derive(Debug)]
pub struct Leaf {
    path: PathBuf,
    procs: File,
    oom_baseline: OomCounts,
}

impl Leaf {
    /// An open (O_WRONLY|O_CLOEXEC) fd of the leaf's `cgroup.procs`. In
    /// `pre_exec`, call [`join_cgroup_fd`] with it: the child joins the
    /// leaf before exec, so the worker never runs outside its limits. The
    /// fd stays valid as long as the `Leaf` lives; CLOEXEC keeps it out of
    /// the worker.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The leaf's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The OOM counters when the leaf was prepared; compare them after the
    /// worker exits with [`CgroupTree::was_oom_killed`].
    pub fn oom_baseline(&self) -> OomCounts {
        self.oom_baseline
    }
}

/// Join the cgroup whose `cgroup.procs` is open as `fd`: writes "0" (the
/// calling process). Async-signal-safe (one write(2), no allocation), so it
/// can run in `pre_exec` between fork and exec.
///
/// Call it before dropping privileges in the child when the daemon runs
/// as root; as the daemon's user it works either way, and since Linux 5.16
/// the kernel checks the permissions of whoever opened the fd.
pub fn join_cgroup_fd(fd: RawFd) -> io::Result<()> {
    let buf = b"0";
    // SAFETY: write(2) from a valid buffer of length 1.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    match n {
        1 => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::from(io::ErrorKind::WriteZero)),
    }
}

/// How the final kill was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMethod {
    /// The cgroup does not exist: nothing to kill.
    Absent,
    /// `cgroup.kill` (Linux ≥ 5.14).
    CgroupKill,
    /// SIGKILL to every pid in `cgroup.procs`, `rounds` times until none
    /// was left.
    Signals { rounds: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillOutcome {
    pub method: KillMethod,
    /// From the kill until the cgroup was empty.
    pub waited: Duration,
}

impl CgroupTree {
    /// The subtree `<root>/<own>` as it is, without setting anything up
    /// (for tests with a fake tree, or a daemon that knows it is set up).
    /// The controllers used for groups are those of the wanted ones listed
    /// in `<own>/cgroup.controllers`.
    pub fn at(root: PathBuf, own: PathBuf) -> Self {
        let dir = Self::dir_of(&root, &own);
        let available = fs::read_to_string(dir.join("cgroup.controllers"))
            .map(|t| parse_controllers(&t))
            .unwrap_or_default();
        let controllers = WANTED_CONTROLLERS
            .iter()
            .filter(|c| available.iter().any(|a| a == *c))
            .map(|c| c.to_string())
            .collect();
        Self::new(root, own, controllers, Vec::new())
    }

    pub(crate) fn new(
        root: PathBuf,
        own: PathBuf,
        controllers: Vec<String>,
        warnings: Vec<String>,
    ) -> Self {
        let dir = Self::dir_of(&root, &own);
        CgroupTree {
            root,
            own,
            dir,
            controllers,
            warnings,
        }
    }

    /// `<root>/<own>` for a cgroup path such as `/system.slice/x.service`.
    pub(crate) fn dir_of(root: &Path, own: &Path) -> PathBuf {
        root.join(own.strip_prefix("/").unwrap_or(own))
    }

    /// The cgroupfs root, e.g. /sys/fs/cgroup.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The own cgroup path, e.g. `/system.slice/clearify-workerd.service`.
    pub fn own(&self) -> &Path {
        &self.own
    }

    /// `<root>/<own>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The controllers enabled for groups and leaves, e.g. cpu memory pids io.
    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    /// Non-fatal problems met during setup (log them once).
    pub fn setup_warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn group_dir(&self, group: &str) -> Result<PathBuf, CgroupError> {
        check_name(group)?;
        if group == SUPERVISOR {
            return Err(CgroupError::InvalidName {
                name: group.to_string(),
                why: "reserved for the daemon itself",
            });
        }
        Ok(self.dir.join(group))
    }

    pub fn instance_dir(&self, group: &str, instance: &str) -> Result<PathBuf, CgroupError> {
        check_name(instance)?;
        Ok(self.group_dir(group)?.join(instance))
    }

    /// Create (or update, on reload) `<own>/<group>/` with the group's
    /// limits and enable the controllers for its instance leaves. Returns
    /// warnings for limits that cannot be applied on this host (e.g.
    /// memory.swap.max without swap accounting, io.weight without io).
    pub fn prepare_group(&self, group: &str, limits: &Limits) -> Result<Vec<String>, CgroupError> {
        let dir = self.group_dir(group)?;
        let writes = limit_writes(limits)?;
        make_dir(&dir)?;
        let mut warnings = Vec::new();
        for w in writes {
            if !self.controllers.iter().any(|c| c == w.controller) {
                if w.set {
                    warnings.push(format!(
                        "group {group}: {} ignored, the {} controller is not available",
                        w.key, w.controller
                    ));
                }
                continue;
            }
            match write_file(&dir.join(w.file), &w.value) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {
                    if w.set {
                        warnings.push(format!("group {group}: {} ignored: {e}", w.key));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        write_file(
            &dir.join("cgroup.subtree_control"),
            &plus_list(&self.controllers),
        )?;
        Ok(warnings)
    }

    /// Create the leaf `<own>/<group>/<instance>/` (the group must be
    /// prepared), set memory.oom.group = 1 and open its cgroup.procs.
    /// Processes left in an existing leaf are killed first.
    pub fn prepare_instance(&self, group: &str, instance: &str) -> Result<Leaf, CgroupError> {
        let dir = self.instance_dir(group, instance)?;
        make_dir(&dir)?;
        if is_populated(&dir)? {
            kill_dir(&dir, KILL_TIMEOUT)?;
        }
        if self.controllers.iter().any(|c| c == "memory") {
            write_file(&dir.join("memory.oom.group"), "1")?;
        }
        let procs_path = dir.join("cgroup.procs");
        let procs = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&procs_path)
            .map_err(|source| CgroupError::Open {
                path: procs_path,
                source,
            })?;
        let oom_baseline = fs::read_to_string(dir.join("memory.events"))
            .map(|t| OomCounts::parse(&t))
            .unwrap_or_default();
        Ok(Leaf {
            path: dir,
            procs,
            oom_baseline,
        })
    }

    /// Usage of one instance; `None` when its leaf does not exist.
    pub fn stats(&self, group: &str, instance: &str) -> Option<Stats> {
        Stats::read(&self.instance_dir(group, instance).ok()?)
    }

    /// Usage of a whole group.
    pub fn group_stats(&self, group: &str) -> Option<Stats> {
        Stats::read(&self.group_dir(group).ok()?)
    }

    /// The OOM counters of an instance leaf.
    pub fn oom_counts(&self, group: &str, instance: &str) -> Option<OomCounts> {
        self.stats(group, instance)?.oom
    }

    /// Whether the worker of this leaf was OOM-killed since `before`
    /// (usually [`Leaf::oom_baseline`]). Ask before removing the leaf.
    pub fn was_oom_killed(&self, group: &str, instance: &str, before: &OomCounts) -> bool {
        self.oom_counts(group, instance)
            .is_some_and(|now| now.killed_since(before))
    }

    /// The final kill of an instance: `cgroup.kill` when the kernel has it,
    /// else SIGKILL to every pid in `cgroup.procs` until none is left; then
    /// wait (at most 2 s) until `cgroup.events` says `populated 0`.
    /// Blocking. The leaf stays; see [`CgroupTree::remove_instance`].
    pub fn kill_instance(&self, group: &str, instance: &str) -> Result<KillOutcome, CgroupError> {
        kill_dir(&self.instance_dir(group, instance)?, KILL_TIMEOUT)
    }

    /// Remove an instance leaf, killing whatever is still in it first.
    /// A missing leaf is fine.
    pub fn remove_instance(&self, group: &str, instance: &str) -> Result<(), CgroupError> {
        let dir = self.instance_dir(group, instance)?;
        if !dir.is_dir() {
            return Ok(());
        }
        if is_populated(&dir)? {
            kill_dir(&dir, KILL_TIMEOUT)?;
        }
        remove_cgroup_dir(&dir)
    }

    /// Remove a group with all its leaves (killing what is left in them).
    pub fn remove_group(&self, group: &str) -> Result<(), CgroupError> {
        let dir = self.group_dir(group)?;
        if !dir.is_dir() {
            return Ok(());
        }
        for instance in subdirs(&dir)? {
            self.remove_instance(group, &instance)?;
        }
        remove_cgroup_dir(&dir)
    }

    /// One non-blocking step of the final kill of an instance leaf:
    /// `cgroup.kill`, or SIGKILL to every pid in `cgroup.procs` without it.
    /// Returns whether the leaf is still populated; the caller polls again
    /// (the kill path must not block or need a thread). A missing leaf is
    /// empty.
    pub fn kill_instance_step(&self, group: &str, instance: &str) -> Result<bool, CgroupError> {
        let dir = self.instance_dir(group, instance)?;
        if !dir.is_dir() {
            return Ok(false);
        }
        let kill_file = dir.join("cgroup.kill");
        if !(kill_file.exists() && write_file(&kill_file, "1").is_ok()) {
            for pid in read_pids(&dir)? {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => {
                        return Err(CgroupError::Kill {
                            pid,
                            path: dir.join("cgroup.procs"),
                            source: e.into(),
                        });
                    }
                }
            }
        }
        is_populated(&dir)
    }

    /// Every instance leaf that exists now, as (group, instance).
    pub fn leaves(&self) -> Result<Vec<(String, String)>, CgroupError> {
        let mut out = Vec::new();
        for g in self.groups()? {
            for i in subdirs(&self.dir.join(&g))? {
                out.push((g.clone(), i));
            }
        }
        Ok(out)
    }

    /// The pids in an instance leaf's `cgroup.procs` (none when it is gone).
    pub fn instance_pids(&self, group: &str, instance: &str) -> Result<Vec<i32>, CgroupError> {
        let dir = self.instance_dir(group, instance)?;
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        read_pids(&dir)
    }

    /// The group directories that exist now (e.g. to prune groups left
    /// from an earlier run that the plan no longer has).
    pub fn groups(&self) -> Result<Vec<String>, CgroupError> {
        Ok(subdirs(&self.dir)?
            .into_iter()
            .filter(|g| g != SUPERVISOR)
            .collect())
    }
}

/// Sub-directories (child cgroups) of `dir`, sorted.
fn subdirs(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let read_err = |source| CgroupError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if entry.file_type().map_err(read_err)?.is_dir() {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn read_pids(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    match read_file(&path) {
        Ok(t) => parse_pids(&path, &t),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// `populated` from cgroup.events, or (without that file) whether
/// cgroup.procs lists anything.
fn is_populated(dir: &Path) -> Result<bool, CgroupError> {
    let events = dir.join("cgroup.events");
    match read_file(&events) {
        Ok(t) => parse_populated(&t).ok_or(CgroupError::Parse {
            path: events,
            data: t,
        }),
        Err(e) if e.is_not_found() => Ok(!read_pids(dir)?.is_empty()),
        Err(e) => Err(e),
    }
}

fn kill_dir(dir: &Path, timeout: Duration) -> Result<KillOutcome, CgroupError> {
    if !dir.is_dir() {
        return Ok(KillOutcome {
            method: KillMethod::Absent,
            waited: Duration::ZERO,
        });
    }
    let start = Instant::now();
    let deadline = start + timeout;
    let still_populated = |dir: &Path| -> CgroupError {
        CgroupError::StillPopulated {
            path: dir.to_path_buf(),
            waited_ms: start.elapsed().as_millis(),
            pids: read_pids(dir).unwrap_or_default(),
        }
    };

    let kill_file = dir.join("cgroup.kill");
    let method = if kill_file.exists() && write_file(&kill_file, "1").is_ok() {
        KillMethod::CgroupKill
    } else {
        // No cgroup.kill: signal every pid until none is left (a process
        // may fork between reading cgroup.procs and the kill, hence rounds).
        let procs = dir.join("cgroup.procs");
        let mut rounds = 0;
        loop {
            let pids = read_pids(dir)?;
            let mut alive = 0;
            for pid in pids {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) => alive += 1,
                    Err(Errno::ESRCH) => {}
                    Err(e) => {
                        return Err(CgroupError::Kill {
                            pid,
                            path: procs,
                            source: e.into(),
                        });
                    }
                }
            }
            if alive == 0 {
                break;
            }
            rounds += 1;
            if Instant::now() >= deadline {
                return Err(still_populated(dir));
            }
            sleep(POLL);
        }
        KillMethod::Signals { rounds }
    };

    while is_populated(dir)? {
        if Instant::now() >= deadline {
            return Err(still_populated(dir));
        }
        sleep(POLL);
    }
    Ok(KillOutcome {
        method,
        waited: start.elapsed(),
    })
}

/// rmdir a cgroup, retrying briefly while the kernel still says EBUSY (the
/// last task is on its way out).
fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                sleep(POLL)
            }
            // cgroupfs never answers ENOTEMPTY (its interface files do not
            // count, child cgroups give EBUSY): this is a plain directory,
            // i.e. a fake tree. Remove its files like the kernel would.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                remove_plain_files(dir)?;
                return fs::remove_dir(dir).map_err(|source| CgroupError::Rmdir {
                    path: dir.to_path_buf(),
                    source,
                });
            }
            Err(source) => {
                return Err(CgroupError::Rmdir {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn remove_plain_files(dir: &Path) -> Result<(), CgroupError> {
    let rm_err = |source| CgroupError::Rmdir {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(rm_err)? {
        let entry = entry.map_err(rm_err)?;
        if entry.file_type().map_err(rm_err)?.is_file() {
            fs::remove_file(entry.path()).map_err(rm_err)?;
        }
    }
    Ok(())
}

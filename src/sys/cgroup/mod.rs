//! The delegated cgroup v2 subtree: detection, limits, stats, memory
//! pressure ([`MemoryPressure`]), kill.
//!
//! Under systemd with `Delegate=yes` (and `User=clearify`, systemd chowns
//! the subtree to that user) the daemon owns its cgroup `<own>`:
//!
//! ```text
//! <own>/                      written: cgroup.subtree_control, mkdir/rmdir of children only
//! <own>/supervisor/           the daemon itself (moved there by `setup`)
//! <own>/<group>/              the group's limits (memory.max, cpu.max, ...)
//! <own>/<group>/<instance>/   one worker: memory.oom.group = 1
//! ```
//!
//! [`setup`] returns [`Availability::Disabled`] with a reason and a fix
//! when there is no delegated cgroup v2 (no systemd, a v1/hybrid host, a
//! missing controller); the daemon then runs without limits.
//! [`CgroupFacts`] reads the same things for `clearifyctl doctor`.
//!
//! Everything here is plain blocking file I/O on cgroupfs, so it also works
//! against a fake cgroupfs in a tempdir (see `tests/cgroup.rs`): every
//! function takes the cgroupfs root as a path.

mod detect;
mod facts;
mod pressure;
mod tree;

pub use detect::{
    Availability, FsKind, Layout, Probe, REQUIRED_CONTROLLERS, classify_layout, detect_layout,
    parse_own_cgroup, setup, setup_with,
};
pub(crate) use detect::{FIX_DELEGATE, FIX_MEMORY, FIX_UNIFIED};
pub use facts::{CgroupFacts, SERVICE_CGROUP, ServiceFacts};
pub use pressure::{
    MemoryPressure, PROC_PRESSURE_MEMORY, PSI_SOME_AVG10_THRESHOLD, parse_psi_some_avg10,
    under_pressure,
};
pub use tree::{
    CPU_PERIOD_USEC, CgroupTree, KillMethod, KillOutcome, Leaf, LimitWrite, OomCounts, Stats,
    cpu_max_value, join_cgroup_fd, limit_writes,
};

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The usual cgroupfs mount point.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// The daemon's own sub-cgroup.
pub const SUPERVISOR: &str = "supervisor";

/// Controllers the daemon enables when they are available, in this order.
pub const WANTED_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// At start-up, before any worker starts: stop what a previous daemon left
/// in the instance leaves of the tree (it died without stopping its
/// workers). Warm first: SIGTERM to each leaf's top processes (those whose
/// parent is not in the leaf: the main process), up to `stop_timeout` for
/// the leaves to empty, then the final kill of each leaf. Never blocks the
/// runtime for long and starts no thread.
pub async fn stop_leftover_leaves(tree: &CgroupTree, stop_timeout: std::time::Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::time::{Duration, Instant};
    use tracing::{info, warn};

    let leaves: Vec<(String, String)> = match tree.leaves() {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot list the cgroup leaves left by a previous run: {e}");
            return;
        }
    };
    let mut busy = Vec::new();
    for (group, instance) in leaves {
        let pids = tree.instance_pids(&group, &instance).unwrap_or_default();
        if pids.is_empty() {
            continue;
        }
        let tops: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| parent_of(*p).is_none_or(|pp| !pids.contains(&pp)))
            .collect();
        info!(
            instance = %instance, pids = ?tops,
            "{instance}: processes {tops:?} left in its cgroup by a previous run of the daemon; stopping them (SIGTERM, warm shutdown) before starting workers"
        );
        for p in &tops {
            if *p > 1 {
                let _ = kill(Pid::from_raw(*p), Signal::SIGTERM);
            }
        }
        busy.push((group, instance));
    }
    let start = Instant::now();
    while !busy.is_empty() && start.elapsed() < stop_timeout {
        busy.retain(|(g, i)| !tree.instance_pids(g, i).unwrap_or_default().is_empty());
        if !busy.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (group, instance) in busy {
        warn!(instance = %instance, "{instance}: the old worker did not stop within {stop_timeout:?}; SIGKILL");
        let kill_start = Instant::now();
        loop {
            match tree.kill_instance_step(&group, &instance) {
                Ok(true) if kill_start.elapsed() < Duration::from_secs(2) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Ok(true) => {
                    warn!(instance = %instance, "{instance}: the old cgroup is still populated after SIGKILL");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    warn!(instance = %instance, error = %e, "{instance}: cannot kill the old cgroup: {e}");
                    break;
                }
            }
        }
    }
}

/// The parent pid of a process, from /proc/PID/stat.
fn parent_of(pid: i32) -> Option<i32> {
    let s = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = s.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(s.get(close + 1..)?).ok()?;
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// An error of the cgroup layer. Each one names the path (and the data
/// written), so a log line is enough to reproduce it by hand.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("failed to write {data:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        data: String,
        source: io::Error,
    },
    #[error("failed to create cgroup {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    #[error("failed to remove cgroup {path}: {source}")]
    Rmdir { path: PathBuf, source: io::Error },
    #[error("failed to send SIGKILL to pid {pid} (listed in {path}): {source}")]
    Kill {
        pid: i32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("unexpected content in {path}: {data:?}")]
    Parse { path: PathBuf, data: String },
    #[error("invalid cgroup name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("invalid limit {key} = {value}: {why}")]
    InvalidLimit {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{path} is still populated after {waited_ms} ms (pids left: {pids:?})")]
    StillPopulated {
        path: PathBuf,
        waited_ms: u128,
        pids: Vec<i32>,
    },
    #[error("resource limits are required (require_limits = true) but off: {reason}. Fix: {fix}")]
    LimitsRequired { reason: String, fix: String },
}

impl CgroupError {
    /// The underlying I/O error, when there is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            CgroupError::Read { source, .. }
            | CgroupError::Open { source, .. }
            | CgroupError::Write { source, .. }
            | CgroupError::Mkdir { source, .. }
            | CgroupError::Rmdir { source, .. }
            | CgroupError::Kill { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the error is a missing file or directory (for example an
    /// interface file of a controller that is not enabled).
    pub fn is_not_found(&self) -> bool {
        self.io_error()
            .is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
    }
}

/// Read a cgroup interface file.
pub(crate) fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Write one value to a cgroup interface file in a single write(2).
///
/// The file must exist (cgroupfs creates its files; nothing is created
/// here). O_TRUNC is harmless on cgroupfs and keeps a fake tree's files
/// exactly equal to the last value written.
pub(crate) fn write_file(path: &Path, data: &str) -> Result<(), CgroupError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            data: data.to_string(),
            source,
        })?;
    f.write_all(data.as_bytes())
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            data: data.to_string(),
            source,
        })
}

/// mkdir that accepts an existing directory (but not an existing file).
pub(crate) fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(source) => Err(CgroupError::Mkdir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The value of `key` in a flat-keyed file such as `cpu.stat` or
/// `memory.events` (`key value` per line).
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

/// A single-value file such as `memory.current` or `pids.current`.
pub fn parse_single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The pids in a `cgroup.procs` file. Anything that is not a positive pid
/// is an error: this list is fed to kill(2), where 0 and -1 would be
/// disastrous.
pub fn parse_pids(path: &Path, text: &str) -> Result<Vec<i32>, CgroupError> {
    text.split_whitespace()
        .map(|w| match w.parse::<i32>() {
            Ok(pid) if pid > 0 => Ok(pid),
            _ => Err(CgroupError::Parse {
                path: path.to_path_buf(),
                data: w.to_string(),
            }),
        })
        .collect()
}

/// Controller names in a `cgroup.controllers` or `cgroup.subtree_control`
/// file (a leading `+` as written to a fake tree is ignored).
pub fn parse_controllers(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.trim_start_matches('+').to_string())
        .collect()
}

/// `populated` from `cgroup.events`.
pub fn parse_populated(text: &str) -> Option<bool> {
    parse_keyed(text, "populated").map(|v| v != 0)
}

/// Check a group or instance name before it becomes a directory name.
pub(crate) fn check_name(name: &str) -> Result<(), CgroupError> {
    let bad = |why| {
        Err(CgroupError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name == "." || name == ".." {
        return bad("not a directory name");
    }
    if name.contains(['/', '\0', '\n']) {
        return bad("contains '/', NUL or a newline");
    }
    if name.starts_with("cgroup.") {
        return bad("clashes with the cgroup.* interface files");
    }
    Ok(())
}

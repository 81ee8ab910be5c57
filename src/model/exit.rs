//! How a worker process ended.
//!
//! Its text ("exit 1", "killed by SIGKILL", ...) is written in
//! `sys::process::reaper`, which knows the signal names: this module does no
//! I/O and imports no OS crate.

/// Why a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    Code(i32),
    Signal(i32),
    /// Killed by the kernel's OOM killer inside its cgroup.
    OomKilled,
    SpawnFailed(String),
}

//! How a worker process ended.

use std::fmt;

/// Why a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    Code(i32),
    Signal(i32),
    /// Killed by the kernel's OOM killer inside its cgroup.
    OomKilled,
    SpawnFailed(String),
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Code(c) => write!(f, "exit {c}"),
            ExitReason::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {s}"));
                write!(f, "killed by {name}")
            }
            ExitReason::OomKilled => f.write_str("oom-killed"),
            ExitReason::SpawnFailed(e) => write!(f, "spawn failed: {e}"),
        }
    }
}

//! What one group's workers are given: their resource limits and their
//! restart and stop timing. Plain data, shared by the config (which
//! checks and fills it in), the plan, the state machine and the cgroup
//! layer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resource limits of one queue group (cgroup v2). `None` leaves the
/// kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// memory.max, bytes.
    pub memory_max: Option<u64>,
    /// memory.high, bytes.
    pub memory_high: Option<u64>,
    /// memory.swap.max, bytes.
    pub memory_swap_max: Option<u64>,
    /// cpu.max as a number of CPUs, e.g. 1.5.
    pub cpu_max: Option<f64>,
    /// cpu.weight, 1..=10000.
    pub cpu_weight: Option<u32>,
    /// pids.max.
    pub pids_max: Option<u64>,
    /// io.weight, 1..=10000.
    pub io_weight: Option<u32>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// How an instance is restarted and stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// SIGTERM → SIGQUIT after this long.
    pub stop_timeout: Duration,
    /// First restart delay.
    pub restart_delay: Duration,
    /// Cap of the doubling restart delay.
    pub restart_delay_max: Duration,
    /// A run this long resets the backoff; a shorter one is a quick failure.
    pub stable_after: Duration,
    /// Restart when heartbeats stop for this long (after the first one).
    /// `None` turns it off.
    pub heartbeat_timeout: Option<Duration>,
    /// Restart when the instance makes no progress with backlog waiting for
    /// this long. `None` turns it off.
    pub stall_timeout: Option<Duration>,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            stop_timeout: Duration::from_secs(60),
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
            heartbeat_timeout: Some(Duration::from_secs(60)),
            stall_timeout: Some(Duration::from_secs(300)),
        }
    }
}

//! clearify-workerd: a native, systemd-first supervisor for Celery workers.
//!
//! The daemon's state has one owner, the supervisor actor
//! ([`supervisor`]). Everything else sends it messages: signals, the control
//! socket ([`control`]), the broker monitor ([`broker`]) and the reaper
//! ([`process`]). The supervision logic itself is a pure state machine
//! ([`supervisor::machine`]); the OS effects live in thin modules around it:
//! [`process`], [`cgroup`], [`journal`], [`notify`].

pub mod accounts;
pub mod broker;
pub mod cgroup;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod journal;
pub mod notify;
pub mod plan;
pub mod process;
pub mod supervisor;
pub mod ticker;

/// The version of this build, as shown by `--version` and `clearifyctl version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

//! clearify-workerd: a native, systemd-first supervisor for Celery workers.
//!
//! The daemon's state has one owner, the supervisor actor
//! ([`supervisor`]). Everything else sends it messages: signals, the control
//! socket ([`control`]), the broker monitor ([`broker`]) and the reaper
//! ([`sys::process`]). The supervision logic itself is a pure state machine
//! ([`supervisor::machine`]); the OS effects live in thin modules around it:
//! [`sys`] and [`logs`]. See docs/ARCHITECTURE.md.

pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod supervisor;
pub mod sys;

/// The version of this build, as shown by `--version` and `clearifyctl version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

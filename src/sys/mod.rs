//! The operating system, behind thin modules: worker processes and their
//! privilege drop ([`process`]), cgroup v2 ([`cgroup`]), user and group
//! look-ups ([`accounts`]), the systemd notify socket ([`notify`]) and a
//! timerfd for idle-time periods ([`ticker`]).
//!
//! Nothing here imports from `supervisor`, `control` or `cli`.

pub mod accounts;
pub mod cgroup;
pub mod notify;
pub mod process;
pub mod ticker;

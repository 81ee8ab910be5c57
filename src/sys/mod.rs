//! The operating system, behind thin modules: worker processes
//! ([`process`]), the one privilege drop ([`privdrop`]), cgroup v2 ([`cgroup`]), user and group
//! look-ups ([`accounts`]), the systemd notify socket ([`notify`]) and a
//! timerfd for idle-time periods ([`ticker`]).
//!
//! Nothing here imports from `supervisor`, `control` or `cli`.

pub mod accounts;
pub mod cgroup;
pub mod notify;
pub mod privdrop;
pub mod process;
pub mod ticker;

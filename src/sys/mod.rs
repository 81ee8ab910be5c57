//! The operating system, behind thin modules: worker processes
//! ([`process`]), the one privilege drop ([`privdrop`]), cgroup v2 ([`cgroup`]), user and group
//! look-ups ([`accounts`]), the systemd notify socket ([`notify`]), a
//! timerfd for idle-time periods ([`ticker`]), the atomic replacement of
//! the metrics text file ([`textfile`]) and the host's facts and load for
//! the fleet record ([`host`]).
//!
//! Nothing here imports from `supervisor`, `control` or `cli`.

pub mod accounts;
pub mod cgroup;
pub mod host;
pub mod notify;
pub mod privdrop;
pub mod process;
pub mod textfile;
pub mod ticker;

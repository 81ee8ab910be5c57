//! The daemon's vocabulary: plain data types with no I/O and no tokio,
//! shared by the pure core (`plan`, `supervisor::machine`), the effect
//! modules (`sys`) and the protocol (`control`).
//!
//! - [`backoff`]: the one restart and retry schedule (the machine's
//!   restarts, the broker's reconnects);
//! - [`exit`]: how a worker ended ([`ExitReason`]);
//! - [`state`]: the instance and broker states status shows, with their
//!   wire spelling;
//! - [`target`]: what a target name (`all`, a group, an instance id)
//!   means, resolved in one place.
//!
//! Nothing here imports from any other module of the crate.

pub mod autoscale;
pub mod backoff;
pub mod exit;
pub mod fleet;
pub mod spec;
pub mod state;
pub mod target;

pub use exit::ExitReason;
pub use state::{BrokerState, InstanceState};
pub use target::{Member, Target};

//! The daemon's vocabulary: plain data types with no I/O and no tokio,
//! shared by the pure core (`plan`, `supervisor::machine`), the effect
//! modules (`sys`) and the protocol (`control`).
//!
//! Nothing here imports from any other module of the crate.

pub mod exit;
pub mod spec;

pub use exit::ExitReason;

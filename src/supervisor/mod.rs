//! The supervisor: the one owner of the daemon's state.
//!
//! [`machine`] is the pure state machine; [`backoff`] its restart schedule.

pub mod backoff;
pub mod machine;

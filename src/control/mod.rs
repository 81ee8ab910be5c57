//! The control socket: shared protocol types, the daemon's server and the
//! client used by `clearifyctl`.

pub mod protocol;

//! The control socket: shared protocol types, the daemon's server and the
//! client used by `clearifyctl`.

pub mod client;
pub mod protocol;
pub mod server;

/// Where the control socket lives unless `[daemon].socket`,
/// `clearifyctl --socket` or `CLEARIFY_SOCKET` say otherwise.
pub const DEFAULT_SOCKET: &str = "/run/clearify-workerd/control.sock";

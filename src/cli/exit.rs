//! clearifyctl's exit codes (documented in `--help` and the man page), and
//! how an error answer or a failed request maps to one.

use crate::control::client::ClientError;
use crate::control::protocol::{ErrorKind, Response};

/// Success.
pub const OK: i32 = 0;
/// The daemon refused, or a target is unknown (also: timeouts, broker
/// unreachable for `test`, reload with config errors).
pub const REFUSED: i32 = 1;
/// Usage error (clap's own code).
pub const USAGE: i32 = 2;
/// The daemon is not running, or the socket is missing.
pub const NOT_RUNNING: i32 = 3;
/// Permission denied (opening the socket, or a changing request).
pub const PERMISSION: i32 = 4;

/// The exit code for an error answer from the daemon.
pub fn exit_code_for(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::PermissionDenied => PERMISSION,
        ErrorKind::BadRequest
        | ErrorKind::Version
        | ErrorKind::UnknownTarget
        | ErrorKind::Refused
        | ErrorKind::Busy => REFUSED,
    }
}

/// The exit code for a failure to get an answer at all.
pub fn exit_code_for_client(err: &ClientError) -> i32 {
    match err {
        ClientError::NotRunning { .. } => NOT_RUNNING,
        ClientError::PermissionDenied { .. } => PERMISSION,
        ClientError::Protocol { .. } | ClientError::Timeout { .. } => REFUSED,
    }
}

/// How a command ended, when not with success.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::new(exit_code_for_client(&e), e.to_string())
    }
}

/// What a command returns: its exit code, or how it failed.
pub type Outcome = Result<i32, Failure>;

/// A failure for an answer of the wrong kind.
pub fn unexpected(resp: &Response) -> Failure {
    Failure::new(
        REFUSED,
        format!("unexpected answer from clearify-workerd: {resp:?}"),
    )
}

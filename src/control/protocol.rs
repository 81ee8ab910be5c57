//! The control protocol, shared by the daemon and `clearifyctl`.
//!
//! Every message is one *frame*: a 4-byte big-endian length followed by that
//! many bytes of JSON. A frame is at most [`MAX_FRAME`] bytes. Each request
//! carries [`PROTOCOL_VERSION`]; the daemon answers a request with another
//! version with [`Response::Error`] and [`ErrorKind::Version`].
//!
//! The status document ([`Status`]) is a contract that scripts rely on
//! (`clearifyctl status --json`): fields may be added, never renamed or
//! removed.

use serde::{Deserialize, Serialize};

/// Bumped whenever a request or response changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame, in bytes, that either side accepts.
pub const MAX_FRAME: usize = 1024 * 1024;

/// A request with its protocol version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

impl Envelope {
    pub fn new(request: Request) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

/// What a client may ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The status document, optionally limited to some targets.
    Status { targets: Vec<String> },
    /// Start stopped instances (clears the operator-stop pin).
    Start { targets: Vec<String> },
    /// Stop instances and pin them down until started again.
    Stop { targets: Vec<String> },
    /// Restart instances; `rolling` restarts one at a time.
    Restart { targets: Vec<String>, rolling: bool },
    /// Re-read the config file, as SIGHUP does.
    Reload,
    /// Recent worker output from the daemon's ring buffers.
    Logs {
        target: Option<String>,
        lines: usize,
    },
    /// Check the broker from the daemon (which holds the credentials).
    Test,
    /// The daemon's version.
    Version,
}

impl Request {
    /// Whether the request changes anything. Changing requests need an
    /// authorised peer (root, the daemon's uid, or the admin group).
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Request::Start { .. }
                | Request::Stop { .. }
                | Request::Restart { .. }
                | Request::Reload
        )
    }
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    /// The outcome of start/stop/restart: one line per affected instance.
    Done {
        messages: Vec<String>,
    },
    Reloaded(ReloadReport),
    Logs {
        lines: Vec<LogLine>,
    },
    Test(TestReport),
    Version {
        version: String,
        protocol: u32,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// Why a request failed. Maps onto clearifyctl's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed or too large.
    BadRequest,
    /// The protocol version differs.
    Version,
    /// A target names no group or instance.
    UnknownTarget,
    /// The peer may not make a changing request.
    PermissionDenied,
    /// The daemon refused for another reason (shutting down, bad config…).
    Refused,
    /// The daemon is serving too many clients.
    Busy,
}

/// The result of a reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Whether the new config was applied. When false, `errors` says why
    /// and the old config keeps running.
    pub applied: bool,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// One line of worker output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Seconds since the Unix epoch, with fractions.
    pub ts: f64,
    pub instance: String,
    /// "stdout" or "stderr".
    pub stream: String,
    /// The line, with invalid UTF-8 replaced for display.
    pub text: String,
}

/// `clearifyctl test`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    pub reachable: bool,
    /// Redacted URL.
    pub url: String,
    /// Each step ("resolve", "connect", "auth", "ping") with its latency in
    /// milliseconds, in order, as far as it got.
    pub steps: Vec<TestStep>,
    pub error: Option<String>,
    pub redis_version: Option<String>,
    pub used_memory_bytes: Option<u64>,
    pub queues: Vec<QueueStatus>,
    /// Node names whose heartbeats the daemon has seen, with their age.
    pub heartbeats: Vec<HeartbeatSeen>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestStep {
    pub name: String,
    pub ok: bool,
    pub millis: f64,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatSeen {
    pub node: String,
    pub age_secs: f64,
}

/// The status document (`clearifyctl status --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub daemon: DaemonStatus,
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub device_id: String,
    pub config: String,
    pub broker: BrokerStatus,
    /// "on", or "off (reason)".
    pub limits: String,
    /// A plain-words summary, the same as systemd's STATUS=.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerStatus {
    /// "unknown", "waiting", "ok" or "unreachable".
    pub state: String,
    /// The URL with any password redacted.
    pub url: String,
    pub error: Option<String>,
    /// Seconds since the Unix epoch at which the current state began.
    pub since: Option<f64>,
    pub latency_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub queues: Vec<QueueStatus>,
    pub instances: Vec<InstanceStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub name: String,
    /// Messages waiting, over all priority sub-queues; null when unknown.
    pub backlog: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub node: String,
    /// One of `starting`, `running`, `backoff`, `crash-loop`, `stopping`,
    /// `stopped`, `waiting-for-broker`.
    pub state: String,
    pub pid: Option<u32>,
    pub uptime_secs: Option<u64>,
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub memory_bytes: Option<u64>,
    pub cpu_percent: Option<f64>,
    /// Seconds since the last Celery heartbeat, when one was seen.
    pub heartbeat_age_secs: Option<f64>,
    pub active: Option<u64>,
    pub processed: Option<u64>,
    /// Whether an operator stop pins the instance down.
    pub pinned: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_is_tagged_and_round_trips() {
        let env = Envelope::new(Request::Restart {
            targets: vec!["text".into()],
            rolling: true,
        });
        let json = serde_json::to_string(&env).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"request":{"type":"restart","targets":["text"],"rolling":true}}"#
        );
        let back: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn only_changing_requests_are_mutating() {
        assert!(Request::Reload.is_mutating());
        assert!(Request::Stop { targets: vec![] }.is_mutating());
        assert!(!Request::Status { targets: vec![] }.is_mutating());
        assert!(!Request::Test.is_mutating());
        assert!(
            !Request::Logs {
                target: None,
                lines: 10
            }
            .is_mutating()
        );
    }
}

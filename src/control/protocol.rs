//! The control protocol, shared by the daemon and `clearifyctl`.
//!
//! Every message is one *frame*: a 4-byte big-endian length followed by that
//! many bytes of JSON. A frame is at most [`MAX_FRAME`] bytes. Each request
//! carries [`PROTOCOL_VERSION`]; the daemon answers a request with another
//! version with [`Response::Error`] and [`ErrorKind::Version`].
//!
//! A connection may carry several requests, one at a time: the client
//! writes an [`Envelope`] frame, the daemon answers with one [`Response`]
//! frame. The daemon closes the connection after a malformed or oversized
//! frame (answered [`ErrorKind::BadRequest`]), a version mismatch, or 5 s
//! without a complete request; when it already serves 64 clients it answers
//! [`ErrorKind::Busy`] and closes. Use [`encode_frame`], [`read_frame`] /
//! [`write_frame`] (tokio) or their `_blocking` twins; never hand-roll it.
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
        /// Absent: the last `lines` lines. Present: the first `lines` lines
        /// with a timestamp strictly after this (seconds since the Unix
        /// epoch), oldest first; `clearifyctl logs -f` polls with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<f64>,
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
    /// Whether worker output goes to journald (then `clearifyctl logs -f`
    /// follows `journalctl` instead of polling the ring buffers).
    #[serde(default)]
    pub logs_to_journal: bool,
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

impl Response {
    /// Shorthand for [`Response::Error`].
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than [`MAX_FRAME`] bytes. Nothing
    /// was allocated for it.
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
    /// The bytes were not the JSON we expected.
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame: 4-byte big-endian length, then JSON.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    serde_json::to_writer(&mut buf, msg)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Checks a length prefix against [`MAX_FRAME`].
fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Reads one raw frame body. `Ok(None)` means the peer closed the
/// connection cleanly before a new frame began. The body buffer grows as
/// bytes arrive, so a length prefix alone never makes us allocate.
pub async fn read_frame_bytes<R>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = frame_len(header)?;
    let mut body = Vec::new();
    r.take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(FrameError::Truncated);
    }
    Ok(Some(body))
}

/// Reads and decodes one frame (async). `Ok(None)` on a clean EOF.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    match read_frame_bytes(r).await? {
        None => Ok(None),
        Some(body) => Ok(Some(serde_json::from_slice(&body)?)),
    }
}

/// Encodes and writes one frame (async).
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: tokio::io::AsyncWrite + Unpin,
    T: Serialize,
{
    use tokio::io::AsyncWriteExt;
    let buf = encode_frame(msg)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads and decodes one frame from a blocking reader. `Ok(None)` on a
/// clean EOF.
pub fn read_frame_blocking<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: std::io::Read,
    T: serde::de::DeserializeOwned,
{
    use std::io::Read;
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = match r.read(&mut header[got..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = frame_len(header)?;
    let mut body = Vec::new();
    r.take(len as u64).read_to_end(&mut body)?;
    if body.len() != len {
        return Err(FrameError::Truncated);
    }
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Encodes and writes one frame to a blocking writer.
pub fn write_frame_blocking<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: std::io::Write,
    T: Serialize,
{
    let buf = encode_frame(msg)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Just the version of an [`Envelope`], so that a request from another
/// protocol version can be answered with [`ErrorKind::Version`] even when
/// its request no longer parses.
#[derive(Debug, Deserialize)]
pub struct EnvelopeVersion {
    pub version: u32,
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
                lines: 10,
                since: None,
            }
            .is_mutating()
        );
    }

    #[test]
    fn frames_round_trip_and_oversized_prefix_is_refused_before_reading() {
        let env = Envelope::new(Request::Logs {
            target: Some("text-1".into()),
            lines: 5,
            since: Some(1.5),
        });
        let buf = encode_frame(&env).unwrap();
        assert_eq!(&buf[..4], &((buf.len() - 4) as u32).to_be_bytes());
        let back: Envelope = read_frame_blocking(&mut &buf[..]).unwrap().unwrap();
        assert_eq!(back, env);

        // A prefix of MAX_FRAME + 1 with no body: refused as too large, not
        // "truncated", proving the body was never awaited.
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        match read_frame_blocking::<_, Envelope>(&mut &huge[..]) {
            Err(FrameError::TooLarge(n)) => assert_eq!(n, MAX_FRAME + 1),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Clean EOF and a truncated frame.
        assert!(
            read_frame_blocking::<_, Envelope>(&mut &[][..])
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            read_frame_blocking::<_, Envelope>(&mut &buf[..buf.len() - 1]),
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn logs_since_is_optional_on_the_wire() {
        let env: Envelope = serde_json::from_str(
            r#"{"version":1,"request":{"type":"logs","target":null,"lines":3}}"#,
        )
        .unwrap();
        assert_eq!(
            env.request,
            Request::Logs {
                target: None,
                lines: 3,
                since: None
            }
        );
    }
}

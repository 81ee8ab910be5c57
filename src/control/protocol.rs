//! The control protocol, shared by the daemon and `clearifyctl`.
//!
//! Every message is one *frame*: a 4-byte big-endian length followed by that
//! many bytes of JSON. A reply frame is at most [`MAX_FRAME`] bytes, a
//! request frame at most [`MAX_REQUEST`] bytes (checked on the length prefix,
//! before anything is allocated), and a target list holds at most
//! [`MAX_TARGETS`] names of at most [`MAX_TARGET_LEN`] bytes (checked while
//! parsing, so a long list is never built). Each request carries
//! [`PROTOCOL_VERSION`]; the daemon answers a request with another version
//! with [`Response::Error`] and [`ErrorKind::Version`].
//!
//! A connection may carry several requests, one at a time: the client
//! writes an [`Envelope`] frame, the daemon answers with one [`Response`]
//! frame, except for `logs`: its lines come in as many
//! [`Response::LogsPart`] frames as they need (each at most
//! [`LOG_CHUNK`] bytes of lines), then one final [`Response::Logs`] frame.
//! The clients in [`client`](super::client) put them back together. The
//! daemon closes the connection after a malformed or oversized frame
//! (answered [`ErrorKind::BadRequest`]), a version mismatch, or 5 s without
//! a complete request; when it has no slot for a client it answers
//! [`ErrorKind::Busy`] and closes (see [`server`](super::server) for the
//! slots). Use [`encode_frame`], [`read_frame`] / [`write_frame`] (tokio) or
//! their `_blocking` twins; never hand-roll it.
//!
//! The status document ([`Status`]) is a contract that scripts rely on
//! (`clearifyctl status --json`): fields may be added, never renamed or
//! removed.

use serde::{Deserialize, Serialize};

pub use crate::model::fleet::{DeviceView, FleetView, QueuesView};
pub use crate::model::{BrokerState, InstanceState};

/// Bumped whenever a request or response changes incompatibly.
///
/// 2: `logs` answers in several frames ([`Response::LogsPart`]); request
/// frames and target lists are capped.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest frame, in bytes, that either side accepts.
pub const MAX_FRAME: usize = 1024 * 1024;

/// Largest request frame, in bytes, that the daemon accepts. The biggest
/// legitimate request (256 targets of 128 bytes) needs about 34 KiB.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Most targets one request may name.
pub const MAX_TARGETS: usize = 256;

/// Longest target name, in bytes (group names are at most 64 characters).
pub const MAX_TARGET_LEN: usize = 128;

/// Bytes of log lines (as JSON) per [`Response::LogsPart`] frame.
pub const LOG_CHUNK: usize = 256 * 1024;

/// Most [`Response::LogsPart`] frames a client takes for one request
/// (a bound against a peer that never stops sending).
pub const MAX_LOG_PARTS: usize = 4096;

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
    Status {
        #[serde(deserialize_with = "bounded_targets")]
        targets: Vec<String>,
    },
    /// Start stopped instances (clears the operator-stop pin).
    Start {
        #[serde(deserialize_with = "bounded_targets")]
        targets: Vec<String>,
    },
    /// Stop instances and pin them down until started again.
    Stop {
        #[serde(deserialize_with = "bounded_targets")]
        targets: Vec<String>,
    },
    /// Restart instances; `rolling` restarts one at a time.
    Restart {
        #[serde(deserialize_with = "bounded_targets")]
        targets: Vec<String>,
        rolling: bool,
    },
    /// Re-read the config file, as SIGHUP does.
    Reload,
    /// Recent worker output from the daemon's ring buffers.
    Logs {
        #[serde(default, deserialize_with = "bounded_target")]
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
    /// A view of the fleet registry in the shared Redis (docs/fleet.md),
    /// read by the daemon (which holds the broker credentials).
    Fleet { query: FleetQuery },
    /// Removes a device from the fleet registry at once (admin only).
    FleetForget {
        #[serde(deserialize_with = "bounded_name")]
        device_id: String,
    },
    /// Sets an autoscaled group's instance count (`Some`) until it is
    /// given back to the backlog (`None`): `clearifyctl scale GROUP N|auto`
    /// (admin only).
    Scale {
        #[serde(deserialize_with = "bounded_name")]
        group: String,
        count: Option<u32>,
    },
}

/// Which view of the fleet `clearifyctl fleet` wants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "view", rename_all = "snake_case")]
pub enum FleetQuery {
    /// One line per device.
    Devices,
    /// Per queue: backlog, consumers, shares.
    Queues,
    /// One device's groups and instances.
    Device {
        #[serde(deserialize_with = "bounded_name")]
        device_id: String,
    },
}

/// A name of at most [`MAX_TARGET_LEN`] bytes.
fn bounded_name<'de, D>(d: D) -> Result<String, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(BoundedName::deserialize(d)?.0)
}

/// A target list of at most [`MAX_TARGETS`] names of at most
/// [`MAX_TARGET_LEN`] bytes each. The check runs while the list is parsed:
/// the 257th name is an error before it is stored.
fn bounded_targets<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Targets;
    impl<'de> serde::de::Visitor<'de> for Targets {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_TARGETS} target names")
        }
        fn visit_seq<A>(self, mut seq: A) -> Result<Self::Value, A::Error>
        where
            A: serde::de::SeqAccess<'de>,
        {
            let mut out = Vec::new();
            while let Some(t) = seq.next_element::<BoundedName>()? {
                if out.len() >= MAX_TARGETS {
                    return Err(serde::de::Error::custom(format!(
                        "too many targets: at most {MAX_TARGETS} per request"
                    )));
                }
                out.push(t.0);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Targets)
}

/// An optional target of at most [`MAX_TARGET_LEN`] bytes.
fn bounded_target<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<BoundedName>::deserialize(d)?.map(|n| n.0))
}

/// A target name of at most [`MAX_TARGET_LEN`] bytes.
struct BoundedName(String);

impl<'de> Deserialize<'de> for BoundedName {
    fn deserialize<D>(d: D) -> Result<Self, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        if s.len() > MAX_TARGET_LEN {
            return Err(serde::de::Error::custom(format!(
                "target name of {} bytes: at most {MAX_TARGET_LEN}",
                s.len()
            )));
        }
        Ok(BoundedName(s.into_owned()))
    }
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
                | Request::FleetForget { .. }
                | Request::Scale { .. }
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
    /// The last (often the only) frame of a `logs` answer.
    Logs {
        lines: Vec<LogLine>,
    },
    /// Lines of a `logs` answer that come before its final
    /// [`Response::Logs`] frame, oldest first.
    LogsPart {
        lines: Vec<LogLine>,
    },
    Test(TestReport),
    Fleet(FleetView),
    FleetQueues(QueuesView),
    FleetDevice(DeviceView),
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
    /// The daemon's own resident memory, in bytes (from /proc/self/stat);
    /// null when it could not be read.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerStatus {
    /// `unknown`, `waiting`, `ok` or `unreachable`.
    pub state: BrokerState,
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
    /// Present when the group has `autoscale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleStatus>,
}

/// An autoscaled group's scaling (issue 15, workers.toml(5)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleStatus {
    pub min: u32,
    pub max: u32,
    /// What the backlog asks for (clamped to min..=max), or the manual
    /// count.
    pub desired: u32,
    /// Instances the group has now, not counting those being scaled away.
    pub current: u32,
    /// `steady`, `up`, `up-refused-memory`, `up-refused-crash-loop`,
    /// `down-waiting`, `down`, `down-pressure`, `backlog-unknown`,
    /// `manual` or `held`.
    pub state: crate::model::autoscale::Reason,
    /// Why, for humans: "backlog 57, share 0.40, mem ok".
    pub reason: String,
    /// The count set by `clearifyctl scale GROUP N`, until `auto`.
    pub manual: Option<u32>,
    /// The group's backlog at the last check; null when unknown.
    pub backlog: Option<u64>,
    /// This device's share of the fleet's capacity for the group's queues.
    pub share: f64,
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
    pub state: InstanceState,
    pub pid: Option<u32>,
    pub uptime_secs: Option<u64>,
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub memory_bytes: Option<u64>,
    pub cpu_percent: Option<f64>,
    /// CPU time (user + system) of the instance's processes since it
    /// started, in seconds; null when not sampled.
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
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
    /// A message to send would take more than [`MAX_FRAME`] bytes; it was
    /// not encoded further.
    #[error("message of more than {MAX_FRAME} bytes exceeds the frame limit")]
    EncodeTooLarge,
    /// A request's length prefix announced more than [`MAX_REQUEST`]
    /// bytes. Nothing was allocated for it.
    #[error("request of {0} bytes exceeds the limit of {MAX_REQUEST} bytes")]
    RequestTooLarge(usize),
    /// The bytes were not the JSON we expected.
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A buffer that refuses to grow past one frame.
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0.len().saturating_add(b.len()) > MAX_FRAME + 4 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "frame limit",
            ));
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes `msg` as one frame: 4-byte big-endian length, then JSON. Stops
/// as soon as the JSON passes [`MAX_FRAME`] bytes
/// ([`FrameError::EncodeTooLarge`]), so a big message never costs more
/// than one frame of memory here.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = Capped(vec![0u8; 4]);
    if let Err(e) = serde_json::to_writer(&mut buf, msg) {
        return Err(if e.is_io() {
            FrameError::EncodeTooLarge
        } else {
            e.into()
        });
    }
    let mut buf = buf.0;
    let len = buf.len() - 4;
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
    read_frame_bytes_limited(r, MAX_FRAME).await
}

/// [`read_frame_bytes`] for a request: at most [`MAX_REQUEST`] bytes, else
/// [`FrameError::RequestTooLarge`] before the body is read.
pub async fn read_request_bytes<R>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    read_frame_bytes_limited(r, MAX_REQUEST).await
}

async fn read_frame_bytes_limited<R>(r: &mut R, limit: usize) -> Result<Option<Vec<u8>>, FrameError>
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
    if len > limit {
        return Err(FrameError::RequestTooLarge(len));
    }
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

/// The frames of a `logs` answer: [`Response::LogsPart`]s of at most
/// [`LOG_CHUNK`] bytes of lines each, then a final [`Response::Logs`], in
/// order, so that every frame stays far below [`MAX_FRAME`] whatever the
/// lines hold. A line too long for a frame on its own (not one the daemon
/// keeps: its lines are at most 4 KiB) is cut, with a marker.
pub fn log_frames(lines: Vec<LogLine>) -> Vec<Response> {
    let mut frames = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0usize;
    for mut line in lines {
        let mut len = serde_json::to_vec(&line).map_or(usize::MAX, |v| v.len());
        if len > LOG_CHUNK {
            // At most 6 JSON bytes per char (\u001b); instance and stream
            // are the daemon's own short names.
            let keep = line
                .text
                .char_indices()
                .nth(LOG_CHUNK / 8)
                .map_or(line.text.len(), |(i, _)| i);
            line.text.truncate(keep);
            line.text.push_str(" [cut]");
            len = serde_json::to_vec(&line).map_or(LOG_CHUNK, |v| v.len());
        }
        if !chunk.is_empty() && size.saturating_add(len) > LOG_CHUNK {
            frames.push(Response::LogsPart {
                lines: std::mem::take(&mut chunk),
            });
            size = 0;
        }
        size = size.saturating_add(len + 1);
        chunk.push(line);
    }
    frames.push(Response::Logs { lines: chunk });
    frames
}

/// Just the version of an [`Envelope`], so that a request from another
/// protocol version can be answered with [`ErrorKind::Version`] even when
/// its request no longer parses.
#[derive(Debug, Deserialize)]
pub struct EnvelopeVersion {
    pub version: u32,
}

#[cfg(test)]
mod tests;

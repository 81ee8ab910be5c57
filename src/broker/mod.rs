//! Broker awareness: the Redis gate at boot, health while running, queue
//! backlog, Celery heartbeats and `clearifyctl test`.
//!
//! - [`probe`] answers "is the broker ready?" once: connect (TCP, TLS or
//!   unix socket), AUTH, SELECT, PING → PONG, each with an explicit timeout.
//!   `-LOADING` is *not ready*. Failures are classified ([`ProbeErrorKind`]):
//!   transient ones are retried, fatal ones are configuration errors.
//! - [`spawn_monitor`] runs the gate and then the health check in the
//!   background and reports [`BrokerEvent`]s to the supervisor: `Waiting`
//!   until the first `Up` (or `Fatal`, or `GateTimeout` once `wait_timeout`
//!   passes), then `Up`/`Down`, `Backlog` and `Heartbeat`. While the broker
//!   is up, a thread with a connection of its own pings it and fetches the
//!   backlog (`health`: why a thread, and why its RESP is written by hand);
//!   the gate, the heartbeat subscription and `clearifyctl test` use
//!   redis-rs.
//! - [`test_report`] connects afresh for `clearifyctl test`.
//! - [`decode_heartbeat`] decodes a kombu envelope from the
//!   `<key_prefix>/<db>.celeryev/worker.heartbeat` pub/sub channel.
//!
//! The policy on top (on_timeout, heartbeat timeouts, stall detection) lives
//! in the supervisor.

mod health;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::redact_url;
use crate::control::protocol::{HeartbeatSeen, QueueStatus, TestReport, TestStep};

/// Timeout for establishing a connection (TCP/TLS/unix) and for DNS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout for each reply (AUTH, SELECT, PING, LLEN pipeline, INFO).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// First retry delay of the gate / reconnect loop.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Largest retry delay of the gate / reconnect loop.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The backlog is never queried more often than this (a cache).
pub const BACKLOG_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// kombu's separator between a queue name and its priority step.
pub const PRIORITY_SEP: &str = "\x06\x16";
/// kombu's default priority steps.
pub const DEFAULT_PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// What the monitor needs to know about the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSettings {
    /// `redis://`, `rediss://`, `unix://`, `redis+socket://` URL.
    pub url: String,
    /// How long the gate waits before emitting [`BrokerEvent::GateTimeout`];
    /// `None` waits forever.
    pub wait_timeout: Option<Duration>,
    /// How often the broker is pinged while running.
    pub check_interval: Duration,
    /// kombu's `priority_steps` (default `[0, 3, 6, 9]`).
    pub priority_steps: Vec<u8>,
    /// Celery's `global_keyprefix` (default empty).
    pub key_prefix: String,
}

impl BrokerSettings {
    /// Settings with the defaults of the config file for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        BrokerSettings {
            url: url.into(),
            wait_timeout: None,
            check_interval: Duration::from_secs(10),
            priority_steps: DEFAULT_PRIORITY_STEPS.to_vec(),
            key_prefix: String::new(),
        }
    }
}

/// What the monitor reports.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerEvent {
    /// Not ready yet (before the first `Up`). Sent after the first failed
    /// attempt and whenever the reason changes; `since` is when waiting began.
    Waiting { error: String, since: SystemTime },
    /// The broker answered PING. Sent on every transition to up; the round
    /// trips of the later health checks go to [`Monitor::latency`] (an idle
    /// daemon is not woken for them).
    Up { latency: Duration },
    /// The broker stopped answering after having been up. Sent on the
    /// transition and whenever the reason changes; `since` is when it went down.
    Down { error: String, since: SystemTime },
    /// A configuration error (bad URL, authentication failure) while gating.
    /// The monitor stops after sending it.
    Fatal { error: String },
    /// `wait_timeout` passed without the broker becoming ready. Sent once;
    /// the monitor keeps trying and still sends `Up` when it gets there.
    GateTimeout,
    /// Messages waiting per queue (all priority sub-queues summed).
    Backlog(BTreeMap<String, u64>),
    /// A Celery worker heartbeat.
    Heartbeat(Heartbeat),
}

/// The fields of a Celery `worker-heartbeat` event that the supervisor uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// The node name, e.g. `text-1@host`.
    pub hostname: String,
    pub pid: u32,
    /// Tasks executing right now.
    pub active: u64,
    /// Tasks processed since the worker started.
    pub processed: u64,
    /// Heartbeat interval in seconds (2.0 by default).
    pub freq: f64,
    /// The worker's clock, seconds since the Unix epoch.
    pub timestamp: f64,
}

/// Whether a failure may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeErrorKind {
    /// Refused, timed out, DNS failure, LOADING, reset, TLS handshake…: retry.
    Transient,
    /// Malformed URL, authentication failure, bad db: a configuration error.
    Fatal,
}

/// Why the broker is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    pub kind: ProbeErrorKind,
    /// A one-line reason without credentials.
    pub message: String,
}

impl ProbeError {
    fn transient(message: impl Into<String>) -> Self {
        ProbeError {
            kind: ProbeErrorKind::Transient,
            message: message.into(),
        }
    }

    fn fatal(message: impl Into<String>) -> Self {
        ProbeError {
            kind: ProbeErrorKind::Fatal,
            message: message.into(),
        }
    }

    pub fn is_fatal(&self) -> bool {
        self.kind == ProbeErrorKind::Fatal
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProbeError {}

// ---------------------------------------------------------------------------
// URL parsing

/// A parsed broker URL.
#[derive(Clone)]
struct Target {
    /// Client with credentials and db: used for the pub/sub connection.
    full: Client,
    /// Client without credentials, db 0 and no CLIENT SETINFO: the probe
    /// does AUTH and SELECT itself so it can time and classify them.
    bare_info: redis::ConnectionInfo,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    /// Host and port for the resolve step (None for unix sockets).
    host_port: Option<(String, u16)>,
    tls: bool,
}

fn query_param(url: &url_lite::Url, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| url.query(k))
}

/// Parses the broker URL. Understands redis-rs URLs (`redis://`,
/// `rediss://`, `unix://`, `redis+unix://`) and kombu's spellings:
/// `redis+socket://` / `socket://` with `?virtual_host=<db>`, and for
/// `rediss://` the query parameters `ssl_cert_reqs` (`none`/`CERT_NONE`
/// disables verification), `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`.
fn parse_target(url: &str) -> Result<Target, ProbeError> {
    let bad =
        |why: String| ProbeError::fatal(format!("malformed broker URL {}: {why}", redact_url(url)));
    let parsed = url_lite::Url::parse(url).map_err(bad)?;
    let scheme = parsed.scheme.to_ascii_lowercase();
    let mut rewritten = url.to_string();
    let mut socket_db: Option<i64> = None;
    match scheme.as_str() {
        "redis" | "rediss" | "unix" | "redis+unix" | "valkey" | "valkeys" => {}
        "redis+socket" | "socket" => {
            // kombu: redis+socket:///path/to/redis.sock?virtual_host=1
            rewritten = format!("unix://{}", parsed.path);
            if let Some(db) = query_param(&parsed, &["virtual_host", "db"]) {
                socket_db = Some(
                    db.trim_start_matches('/')
                        .parse()
                        .map_err(|_| bad(format!("bad database number {db:?}")))?,
                );
            }
        }
        other => return Err(bad(format!("unsupported scheme {other:?}"))),
    }
    if scheme == "unix" || scheme == "redis+unix" {
        if let Some(db) = query_param(&parsed, &["db", "virtual_host"]) {
            socket_db = Some(
                db.parse()
                    .map_err(|_| bad(format!("bad database number {db:?}")))?,
            );
        }
        // redis-rs reads only `db`; strip the query so it does not choke.
        rewritten = format!("unix://{}", parsed.path);
    }
    let tls = scheme == "rediss" || scheme == "valkeys";
    if tls {
        // redis-rs ignores unknown query parameters but only accepts the
        // `#insecure` fragment; map kombu's ssl_cert_reqs=none onto it.
        let reqs = query_param(&parsed, &["ssl_cert_reqs"]).unwrap_or_default();
        let insecure = matches!(
            reqs.to_ascii_lowercase().as_str(),
            "none" | "cert_none" | "ssl.cert_none"
        ) || parsed.fragment.as_deref() == Some("insecure");
        rewritten = strip_fragment(&rewritten);
        if insecure {
            rewritten.push_str("#insecure");
        }
    }

    let mut info = rewritten
        .as_str()
        .into_connection_info()
        .map_err(|e| bad(redis_error_text(&e)))?;
    if let Some(db) = socket_db {
        let r = info.redis_settings().clone().set_db(db);
        info = info.set_redis_settings(r);
    }
    let full = if tls {
        let read = |key: &str| -> Result<Option<Vec<u8>>, ProbeError> {
            match query_param(&parsed, &[key]) {
                None => Ok(None),
                Some(path) => std::fs::read(PathBuf::from(&path))
                    .map(Some)
                    .map_err(|e| ProbeError::fatal(format!("cannot read {key} {path}: {e}"))),
            }
        };
        let root_cert = read("ssl_ca_certs")?;
        let client_tls = match (read("ssl_certfile")?, read("ssl_keyfile")?) {
            (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
            (None, None) => None,
            _ => {
                return Err(bad(
                    "ssl_certfile and ssl_keyfile must be given together".into()
                ));
            }
        };
        ensure_crypto_provider();
        if root_cert.is_some() || client_tls.is_some() {
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .map_err(|e| ProbeError::fatal(format!("TLS settings: {}", redis_error_text(&e))))?
        } else {
            Client::open(info).map_err(|e| bad(redis_error_text(&e)))?
        }
    } else {
        Client::open(info).map_err(|e| bad(redis_error_text(&e)))?
    };
    // Pub/sub and the probe speak RESP2 and skip CLIENT SETINFO.
    let full_info = full.get_connection_info().clone();
    let settings = full_info.redis_settings().clone();
    let full_info = full_info.set_redis_settings(
        settings
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP2)
            .set_skip_set_lib_name(),
    );
    let full = Client::open(full_info.clone()).map_err(|e| bad(redis_error_text(&e)))?;
    let bare_info = full_info.set_redis_settings(
        redis::RedisConnectionInfo::default()
            .set_protocol(redis::ProtocolVersion::RESP2)
            .set_skip_set_lib_name(),
    );
    let host_port = match bare_info.addr() {
        ConnectionAddr::Tcp(h, p) => Some((h.clone(), *p)),
        ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    };
    Ok(Target {
        full,
        bare_info,
        username: settings.username().map(str::to_string),
        password: settings.password().map(str::to_string),
        db: settings.db(),
        host_port,
        tls,
    })
}

/// Whether the daemon can use `url` as its broker: the very parser the
/// broker monitor runs, without connecting. `clearify-workerd --check` calls
/// it (through [`crate::config::check_broker_url`]) so that the check and the
/// daemon agree on every URL. The error is redacted.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_target(url).map(|_| ()).map_err(|e| {
        // The caller names the (redacted) URL itself.
        let prefix = format!("malformed broker URL {}: ", redact_url(url));
        match e.message.strip_prefix(&prefix) {
            Some(why) => why.to_string(),
            None => e.message,
        }
    })
}

fn strip_fragment(url: &str) -> String {
    match url.find('#') {
        Some(i) => url[..i].to_string(),
        None => url.to_string(),
    }
}

/// Installs ring as rustls' process-wide crypto provider (idempotent).
fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// ---------------------------------------------------------------------------
// Error classification

fn redis_error_text(e: &redis::RedisError) -> String {
    if let (Some(code), Some(detail)) = (e.code(), e.detail()) {
        return format!("{code} {}", detail.trim());
    }
    e.to_string().trim().to_string()
}

/// Classifies a failure of connect/AUTH/SELECT/PING.
fn classify(e: &redis::RedisError, during: &str) -> ProbeError {
    let code = e.code().unwrap_or("");
    let text = redis_error_text(e);
    let lower = text.to_ascii_lowercase();
    if code == "LOADING" || (lower.contains("loading") && e.kind() != redis::ErrorKind::Io) {
        return ProbeError::transient("Redis is loading its dataset (LOADING)");
    }
    if matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
        || e.kind() == redis::ErrorKind::AuthenticationFailed
        || lower.contains("invalid password")
        || lower.contains("invalid username-password")
        || lower.contains("without any password configured")
        || lower.contains("authentication required")
    {
        return ProbeError::fatal(format!("authentication failed during {during}: {text}"));
    }
    if during == "SELECT" && e.kind() != redis::ErrorKind::Io {
        // "ERR DB index is out of range" and friends.
        return ProbeError::fatal(format!("SELECT failed: {text}"));
    }
    if e.kind() == redis::ErrorKind::InvalidClientConfig {
        return ProbeError::fatal(format!("invalid broker configuration: {text}"));
    }
    if e.is_connection_refusal() {
        return if lower.contains("refused") {
            ProbeError::transient(format!("connection refused ({during})"))
        } else {
            // e.g. a unix socket that does not exist (yet)
            ProbeError::transient(format!("cannot connect ({during}): {text}"))
        };
    }
    if e.is_timeout() {
        return ProbeError::transient(format!("timed out ({during})"));
    }
    if e.is_connection_dropped() {
        return ProbeError::transient(format!("connection lost ({during}): {text}"));
    }
    ProbeError::transient(format!("{during} failed: {text}"))
}

async fn with_timeout<T>(
    limit: Duration,
    during: &str,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, ProbeError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(&e, during)),
        Err(_) => Err(ProbeError::transient(format!(
            "timed out after {}s ({during})",
            limit.as_secs_f64()
        ))),
    }
}

// ---------------------------------------------------------------------------
// Connecting, step by step

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

fn step(name: &str, ok: bool, took: Duration, detail: Option<String>) -> TestStep {
    TestStep {
        name: name.to_string(),
        ok,
        millis: ms(took),
        detail,
    }
}

/// Records the failed step `name`, started at `started`, with the error's
/// message as its detail, and hands the error back to be returned.
fn failed(steps: &mut Vec<TestStep>, name: &str, started: Instant, err: ProbeError) -> ProbeError {
    steps.push(step(
        name,
        false,
        started.elapsed(),
        Some(err.message.clone()),
    ));
    err
}

/// Resolve, connect, AUTH, SELECT. Each step is recorded in `steps`.
async fn connect_steps(
    target: &Target,
    steps: &mut Vec<TestStep>,
) -> Result<MultiplexedConnection, ProbeError> {
    // resolve
    let mut info = target.bare_info.clone();
    let t = Instant::now();
    match &target.host_port {
        Some((host, port)) => {
            let lookup = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::lookup_host((host.as_str(), *port)),
            )
            .await;
            let addrs: Vec<std::net::SocketAddr> = match lookup {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    let err = ProbeError::transient(format!("DNS lookup of {host} failed: {e}"));
                    return Err(failed(steps, "resolve", t, err));
                }
                Err(_) => {
                    let err = ProbeError::transient(format!(
                        "DNS lookup of {host} timed out after {}s",
                        CONNECT_TIMEOUT.as_secs_f64()
                    ));
                    return Err(failed(steps, "resolve", t, err));
                }
            };
            let Some(first) = addrs.first() else {
                let err =
                    ProbeError::transient(format!("DNS lookup of {host} returned no address"));
                return Err(failed(steps, "resolve", t, err));
            };
            steps.push(step(
                "resolve",
                true,
                t.elapsed(),
                Some(
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ));
            // Plain TCP connects to the address just resolved; TLS keeps the
            // name for SNI and certificate verification.
            if !target.tls {
                info = info.set_addr(ConnectionAddr::Tcp(first.ip().to_string(), *port));
            }
        }
        None => steps.push(step(
            "resolve",
            true,
            t.elapsed(),
            Some("unix socket, nothing to resolve".into()),
        )),
    }

    // connect
    let t = Instant::now();
    let client = match Client::open(info) {
        Ok(c) => c,
        Err(e) => {
            let err = ProbeError::fatal(format!(
                "invalid broker configuration: {}",
                redis_error_text(&e)
            ));
            return Err(failed(steps, "connect", t, err));
        }
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let mut conn = with_timeout(
        CONNECT_TIMEOUT + Duration::from_millis(500),
        "connect",
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|err| failed(steps, "connect", t, err))?;
    steps.push(step(
        "connect",
        true,
        t.elapsed(),
        Some(if target.tls { "TLS" } else { "plain" }.into()),
    ));

    // auth (AUTH and SELECT)
    let t = Instant::now();
    let mut detail = Vec::new();
    if let Some(password) = &target.password {
        let mut cmd = redis::cmd("AUTH");
        if let Some(user) = &target.username {
            cmd.arg(user);
            detail.push(format!("AUTH as {user}"));
        } else {
            detail.push("AUTH".to_string());
        }
        cmd.arg(password);
        with_timeout(
            RESPONSE_TIMEOUT,
            "AUTH",
            cmd.query_async::<Value>(&mut conn),
        )
        .await
        .map_err(|err| failed(steps, "auth", t, err))?;
    } else {
        detail.push("no password".to_string());
    }
    if target.db != 0 {
        with_timeout(
            RESPONSE_TIMEOUT,
            "SELECT",
            redis::cmd("SELECT")
                .arg(target.db)
                .query_async::<Value>(&mut conn),
        )
        .await
        .map_err(|err| failed(steps, "auth", t, err))?;
        detail.push(format!("SELECT {}", target.db));
    }
    steps.push(step("auth", true, t.elapsed(), Some(detail.join(", "))));
    Ok(conn)
}

/// PING → PONG with a timeout; returns the round trip.
async fn ping(conn: &mut MultiplexedConnection) -> Result<Duration, ProbeError> {
    let t = Instant::now();
    let reply: String = with_timeout(
        RESPONSE_TIMEOUT,
        "PING",
        redis::cmd("PING").query_async(conn),
    )
    .await?;
    if reply != "PONG" {
        return Err(ProbeError::transient(format!(
            "PING answered {reply:?} instead of PONG"
        )));
    }
    Ok(t.elapsed())
}

/// Connects, authenticates, selects the db and pings.
async fn connect_and_ping(
    target: &Target,
) -> Result<(MultiplexedConnection, Duration), ProbeError> {
    let mut steps = Vec::new();
    let mut conn = connect_steps(target, &mut steps)
        .await
        .map_err(|e| with_hint(target, e))?;
    let latency = ping(&mut conn).await.map_err(|e| with_hint(target, e))?;
    Ok((conn, latency))
}

/// Adds "the URL has no password" to a NOAUTH error when it has none.
fn with_hint(target: &Target, mut e: ProbeError) -> ProbeError {
    if e.is_fatal() && target.password.is_none() && e.message.contains("NOAUTH") {
        e.message
            .push_str(" (the broker requires a password and the URL has none)");
    }
    e
}

/// One readiness check: connect (TCP, TLS or unix socket), AUTH, SELECT,
/// PING → PONG. Returns the PING round trip.
pub async fn probe(url: &str) -> Result<Duration, ProbeError> {
    let target = parse_target(url)?;
    connect_and_ping(&target).await.map(|(_, latency)| latency)
}

// ---------------------------------------------------------------------------
// Backlog

/// The Redis keys holding queue `queue`'s messages: the queue itself and one
/// sub-queue per non-zero priority step, e.g. `q`, `q\x06\x163`,
/// `q\x06\x166`, `q\x06\x169`, each with `key_prefix` in front.
pub fn queue_keys(queue: &str, priority_steps: &[u8], key_prefix: &str) -> Vec<String> {
    let mut keys = vec![format!("{key_prefix}{queue}")];
    let mut steps: Vec<u8> = priority_steps.iter().copied().filter(|p| *p != 0).collect();
    steps.sort_unstable();
    steps.dedup();
    keys.extend(
        steps
            .into_iter()
            .map(|p| format!("{key_prefix}{queue}{PRIORITY_SEP}{p}")),
    );
    keys
}

/// The pub/sub channel Celery workers publish heartbeats on:
/// `<key_prefix>/<db>.celeryev/worker.heartbeat`.
pub fn heartbeat_channel(key_prefix: &str, db: i64) -> String {
    format!("{key_prefix}/{db}.celeryev/worker.heartbeat")
}

/// LLEN over all keys of all queues, in one pipeline: the backlog per
/// queue (for `clearifyctl test`; the running monitor's health link does
/// the same on its own connection, see [`health`]).
async fn fetch_backlog(
    conn: &mut MultiplexedConnection,
    queues: &[String],
    priority_steps: &[u8],
    key_prefix: &str,
) -> Result<BTreeMap<String, u64>, ProbeError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut owners = Vec::new();
    for q in queues {
        for key in queue_keys(q, priority_steps, key_prefix) {
            pipe.cmd("LLEN").arg(key);
            owners.push(q.as_str());
        }
    }
    let mut out: BTreeMap<String, u64> = queues.iter().map(|q| (q.clone(), 0)).collect();
    if owners.is_empty() {
        return Ok(out);
    }
    let values: Vec<Value> = with_timeout(RESPONSE_TIMEOUT, "LLEN", pipe.query_async(conn)).await?;
    for (q, v) in owners.iter().zip(values) {
        match v {
            Value::Int(n) if n > 0 => *out.entry((*q).to_string()).or_default() += n as u64,
            Value::Int(_) => {}
            other => tracing::debug!(queue = %q, reply = ?other, "LLEN did not answer a number"),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Heartbeats

/// Decodes a kombu envelope carrying a Celery `worker-heartbeat` event.
///
/// The envelope is JSON with `body` (base64 JSON when
/// `properties.body_encoding` is `base64`, else the JSON itself). Returns
/// `None` for anything else (other event types, garbage).
pub fn decode_heartbeat(payload: &[u8]) -> Option<Heartbeat> {
    let envelope: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let body = envelope.get("body")?;
    let encoding = envelope
        .get("properties")
        .and_then(|p| p.get("body_encoding"))
        .and_then(|e| e.as_str());
    let event: serde_json::Value = match (body, encoding) {
        (serde_json::Value::String(s), Some("base64")) => {
            serde_json::from_slice(&base64_decode(s)?).ok()?
        }
        (serde_json::Value::String(s), _) => serde_json::from_str(s).ok()?,
        (serde_json::Value::Object(_), _) => body.clone(),
        _ => return None,
    };
    if let Some(t) = event.get("type").and_then(|t| t.as_str())
        && t != "worker-heartbeat"
    {
        return None;
    }
    let num = |k: &str| event.get(k).and_then(|v| v.as_f64());
    let count = |k: &str| {
        event
            .get(k)
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
    };
    Some(Heartbeat {
        hostname: event.get("hostname")?.as_str()?.to_string(),
        pid: count("pid")
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
        active: count("active").unwrap_or(0),
        processed: count("processed").unwrap_or(0),
        freq: num("freq").unwrap_or(2.0),
        timestamp: num("timestamp").unwrap_or(0.0),
    })
}

/// Standard base64 (with or without padding; whitespace ignored).
/// Public for the fuzz targets (fuzz/) only.
#[doc(hidden)]
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in s.as_bytes() {
        if c == b'=' {
            break;
        }
        if c.is_ascii_whitespace() {
            continue;
        }
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// Backoff

/// Exponential backoff with ±20 % jitter between [`BACKOFF_MIN`] and [`BACKOFF_MAX`].
#[derive(Debug, Clone)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let factor: f64 = rand::random_range(0.8..1.2);
        nominal.mul_f64(factor).clamp(BACKOFF_MIN / 2, BACKOFF_MAX)
    }
}

// ---------------------------------------------------------------------------
// The monitor

/// The running broker monitor. Dropping it stops its tasks and its health
/// thread.
pub struct Monitor {
    queues: watch::Sender<Watched>,
    latency: watch::Receiver<Option<Duration>>,
    health: Arc<health::Control>,
    tasks: Vec<JoinHandle<()>>,
}

impl Monitor {
    /// Replaces the queues whose backlog is reported (refreshes soon).
    pub fn set_queues(&self, watched: Watched) {
        self.queues.send_replace(watched);
        self.health.wake();
    }

    /// The PING round trip of the latest health check while the broker is
    /// up; `None` while it is not.
    pub fn latency(&self) -> Option<Duration> {
        *self.latency.borrow()
    }

    /// Asks for a backlog refresh now (still at most one per second).
    pub fn refresh_backlog(&self) {
        self.health.refresh();
    }

    /// Stops the monitor and waits until its tasks and its health thread
    /// have ended.
    pub async fn shutdown(mut self) {
        self.health.stop();
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Some(thread) = self.health.take_thread() {
            // At once when it waits or reads a plain socket; a TLS read
            // can take up to RESPONSE_TIMEOUT.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.health.stop();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The queues the monitor reports the backlog of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    /// Every queue of the plan ([`Monitor::refresh_backlog`] reports them all).
    pub queues: Vec<String>,
    /// Whether to fetch the backlog at every health check as well (in the
    /// PING's round trip). Only stall detection needs it; without it the
    /// backlog is fetched when somebody asks ([`Monitor::refresh_backlog`],
    /// i.e. `clearifyctl status`) and when the queues change.
    pub poll: bool,
}

/// Starts the gate + health monitor and the heartbeat subscription.
/// Must be called inside a tokio runtime.
pub fn spawn_monitor(
    settings: BrokerSettings,
    watched: Watched,
    tx: mpsc::Sender<BrokerEvent>,
) -> Monitor {
    let (queues_tx, queues_rx) = watch::channel(watched);
    let (latency_tx, latency_rx) = watch::channel(None);
    // Counts transitions to up and down: the heartbeat task starts after the
    // first up and resubscribes after every outage.
    let (up_tx, up_rx) = watch::channel(LinkCounts::default());
    let target = parse_target(&settings.url);
    let health = health::Control::new().map(Arc::new);
    let heartbeats = match &target {
        Ok(t) => tokio::spawn(heartbeat_task(
            t.clone(),
            settings.key_prefix.clone(),
            up_rx,
            tx.clone(),
        )),
        Err(_) => tokio::spawn(async {}),
    };
    let (health, target) = match health {
        Ok(h) => (h, target),
        Err(e) => {
            // An eventfd could not be made (out of file descriptors): say so
            // as the monitor's fatal error rather than panic.
            let dummy = Arc::new(health::Control::dead());
            let err = ProbeError::fatal(format!("cannot start the broker monitor: {e}"));
            (dummy, Err(err))
        }
    };
    let main = tokio::spawn(main_task(
        settings,
        target,
        queues_rx,
        health.clone(),
        up_tx,
        Arc::new(latency_tx),
        tx,
    ));
    Monitor {
        queues: queues_tx,
        latency: latency_rx,
        health,
        tasks: vec![main, heartbeats],
    }
}

async fn main_task(
    settings: BrokerSettings,
    target: Result<Target, ProbeError>,
    queues: watch::Receiver<Watched>,
    health: Arc<health::Control>,
    up_tx: watch::Sender<LinkCounts>,
    latency_tx: Arc<watch::Sender<Option<Duration>>>,
    tx: mpsc::Sender<BrokerEvent>,
) {
    let url = redact_url(&settings.url);
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(broker = %url, "broker configuration error: {}", e.message);
            let _ = tx.send(BrokerEvent::Fatal { error: e.message }).await;
            return;
        }
    };
    let gate_start = Instant::now();
    let waiting_since = SystemTime::now();
    let mut gated = true;
    let mut timeout_sent = false;
    let mut backoff = Backoff::new();
    let mut last_reason: Option<String> = None;
    let mut down_since = SystemTime::now();

    loop {
        match connect_and_ping(&target).await {
            Ok((conn, latency)) => {
                if gated {
                    tracing::info!(broker = %url, latency_ms = ms(latency), "broker {url} ready ({:.1} ms)", ms(latency));
                } else {
                    tracing::info!(broker = %url, latency_ms = ms(latency), "broker {url} reachable again ({:.1} ms)", ms(latency));
                }
                gated = false;
                backoff.reset();
                latency_tx.send_replace(Some(latency));
                if tx.send(BrokerEvent::Up { latency }).await.is_err() {
                    return;
                }
                up_tx.send_modify(|c| c.ups += 1);
                // The gate's connection has proved the broker ready; the
                // health thread checks it from now on, on a link of its own.
                drop(conn);
                let err = health::run(health::Job {
                    target: target.clone(),
                    check_interval: settings.check_interval,
                    priority_steps: settings.priority_steps.clone(),
                    key_prefix: settings.key_prefix.clone(),
                    control: health.clone(),
                    queues: queues.clone(),
                    latency: latency_tx.clone(),
                    tx: tx.clone(),
                })
                .await;
                latency_tx.send_replace(None);
                let Some(err) = err else { return };
                up_tx.send_modify(|c| c.downs += 1);
                down_since = SystemTime::now();
                tracing::warn!(broker = %url, "broker unreachable: {}", err.message);
                last_reason = Some(err.message.clone());
                let ev = BrokerEvent::Down {
                    error: err.message,
                    since: down_since,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
                // Retry promptly: a dropped connection is often just that.
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(err) => {
                if gated && err.is_fatal() {
                    tracing::error!(broker = %url, "broker configuration error: {}", err.message);
                    let _ = tx.send(BrokerEvent::Fatal { error: err.message }).await;
                    return;
                }
                if last_reason.as_deref() != Some(err.message.as_str()) {
                    if gated {
                        tracing::warn!(broker = %url, "waiting for broker: {}", err.message);
                    } else {
                        tracing::warn!(broker = %url, "broker still unreachable: {}", err.message);
                    }
                    last_reason = Some(err.message.clone());
                    let ev = if gated {
                        BrokerEvent::Waiting {
                            error: err.message,
                            since: waiting_since,
                        }
                    } else {
                        BrokerEvent::Down {
                            error: err.message,
                            since: down_since,
                        }
                    };
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        }
        let mut delay = backoff.next_delay();
        if gated
            && !timeout_sent
            && let Some(limit) = settings.wait_timeout
        {
            let elapsed = gate_start.elapsed();
            if elapsed >= limit {
                tracing::warn!(broker = %url, "broker not ready after {:?} (wait_timeout)", limit);
                timeout_sent = true;
                if tx.send(BrokerEvent::GateTimeout).await.is_err() {
                    return;
                }
            } else {
                delay = delay.min(limit - elapsed);
            }
        }
        // After "connection refused" the port itself is watched once a
        // second during the delay (a bare connect, which costs a closed port
        // nothing): the gate reacts within about a second of Redis starting,
        // while the full attempts keep their 200 ms → 10 s backoff.
        let watch_port = last_reason
            .as_deref()
            .is_some_and(|r| r.contains("refused") || r.contains("No such file"));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wait_for_port(&target), if watch_port => {}
            _ = tx.closed() => return,
        }
    }
}

/// How often [`wait_for_port`] tries the broker's port.
const PORT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Returns once the broker's address accepts a connection (TCP or unix
/// socket; no Redis protocol is spoken).
async fn wait_for_port(target: &Target) {
    loop {
        tokio::time::sleep(PORT_WATCH_INTERVAL).await;
        let attempt = async {
            match target.bare_info.addr() {
                redis::ConnectionAddr::Unix(path) => {
                    tokio::net::UnixStream::connect(path).await.is_ok()
                }
                _ => match &target.host_port {
                    Some((host, port)) => tokio::net::TcpStream::connect((host.as_str(), *port))
                        .await
                        .is_ok(),
                    None => false,
                },
            }
        };
        if tokio::time::timeout(PORT_WATCH_INTERVAL, attempt)
            .await
            .unwrap_or(false)
        {
            return;
        }
    }
}

/// How often the monitor saw the broker come up and go down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LinkCounts {
    ups: u64,
    downs: u64,
}

/// Subscribes to the heartbeat channel once the broker is up, and again
/// whenever the subscription ends or the monitor sees an outage (the old
/// subscription may be half-dead). A transition to up cuts a pending retry
/// delay short.
async fn heartbeat_task(
    target: Target,
    key_prefix: String,
    mut up: watch::Receiver<LinkCounts>,
    tx: mpsc::Sender<BrokerEvent>,
) {
    let channels = vec![
        heartbeat_channel(&key_prefix, target.db),
        // With fanout_patterns=False kombu publishes all events here.
        format!("{key_prefix}/{}.celeryev", target.db),
    ];
    let mut backoff = Backoff::new();
    // Wait for the gate.
    if up.wait_for(|c| c.ups > 0).await.is_err() {
        return;
    }
    loop {
        let downs_before = up.borrow_and_update().downs;
        let subscribed = async {
            let mut pubsub =
                with_timeout(CONNECT_TIMEOUT, "subscribe", target.full.get_async_pubsub()).await?;
            with_timeout(RESPONSE_TIMEOUT, "SUBSCRIBE", pubsub.subscribe(&channels)).await?;
            Ok::<_, ProbeError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(pubsub) => {
                tracing::debug!(channel = %channels[0], "subscribed to Celery heartbeats");
                backoff.reset();
                let mut stream = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                if let Some(hb) = decode_heartbeat(msg.get_payload_bytes())
                                    && tx.send(BrokerEvent::Heartbeat(hb)).await.is_err()
                                {
                                    return;
                                }
                            }
                            None => {
                                tracing::debug!("heartbeat subscription lost");
                                break;
                            }
                        },
                        changed = up.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            // An outage since we subscribed: the subscription
                            // may be half-dead; subscribe afresh.
                            if up.borrow_and_update().downs != downs_before {
                                break;
                            }
                        }
                        _ = tx.closed() => return,
                    }
                }
            }
            Err(e) => tracing::debug!("heartbeat subscription failed: {}", e.message),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            changed = up.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

// ---------------------------------------------------------------------------
// clearifyctl test

/// Connects afresh and reports resolve/connect/auth/ping latencies, the
/// Redis version and memory, each queue's backlog, and the heartbeats the
/// caller has seen. `reachable` is true when PING answered PONG.
pub async fn test_report(
    settings: &BrokerSettings,
    queues: &[String],
    heartbeats: Vec<HeartbeatSeen>,
) -> TestReport {
    let mut report = TestReport {
        reachable: false,
        url: redact_url(&settings.url),
        steps: Vec::new(),
        error: None,
        redis_version: None,
        used_memory_bytes: None,
        queues: queues
            .iter()
            .map(|q| QueueStatus {
                name: q.clone(),
                backlog: None,
            })
            .collect(),
        heartbeats,
    };
    let target = match parse_target(&settings.url) {
        Ok(t) => t,
        Err(e) => {
            report.error = Some(e.message);
            return report;
        }
    };
    let mut conn = match connect_steps(&target, &mut report.steps).await {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(with_hint(&target, e).message);
            return report;
        }
    };
    match ping(&mut conn).await {
        Ok(latency) => {
            report
                .steps
                .push(step("ping", true, latency, Some("PONG".into())));
            report.reachable = true;
        }
        Err(e) => {
            let e = with_hint(&target, e);
            report
                .steps
                .push(step("ping", false, Duration::ZERO, Some(e.message.clone())));
            report.error = Some(e.message);
            return report;
        }
    }
    match with_timeout(
        RESPONSE_TIMEOUT,
        "INFO",
        redis::cmd("INFO").query_async::<String>(&mut conn),
    )
    .await
    {
        Ok(info) => {
            for line in info.lines() {
                if let Some(v) = line.strip_prefix("redis_version:") {
                    report.redis_version = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("used_memory:") {
                    report.used_memory_bytes = v.trim().parse().ok();
                }
            }
        }
        Err(e) => tracing::debug!("INFO failed: {}", e.message),
    }
    match fetch_backlog(
        &mut conn,
        queues,
        &settings.priority_steps,
        &settings.key_prefix,
    )
    .await
    {
        Ok(map) => {
            for q in &mut report.queues {
                q.backlog = map.get(&q.name).copied();
            }
        }
        Err(e) => report.error = Some(format!("backlog: {}", e.message)),
    }
    report
}

// ---------------------------------------------------------------------------
// A tiny URL splitter (scheme, path, query, fragment) for kombu's spellings.

mod url_lite {
    pub struct Url {
        pub scheme: String,
        pub path: String,
        query: Vec<(String, String)>,
        pub fragment: Option<String>,
    }

    impl Url {
        pub fn parse(s: &str) -> Result<Url, String> {
            let (scheme, rest) = s
                .split_once("://")
                .ok_or_else(|| "expected scheme://...".to_string())?;
            if scheme.is_empty() {
                return Err("missing scheme".into());
            }
            let (rest, fragment) = match rest.split_once('#') {
                Some((r, f)) => (r, Some(f.to_string())),
                None => (rest, None),
            };
            let (rest, query) = match rest.split_once('?') {
                Some((r, q)) => (r, q),
                None => (rest, ""),
            };
            let path = match rest.find('/') {
                Some(i) => rest[i..].to_string(),
                None => String::new(),
            };
            let query = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect();
            Ok(Url {
                scheme: scheme.to_string(),
                path,
                query,
                fragment,
            })
        }

        pub fn query(&self, key: &str) -> Option<String> {
            self.query
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        }
    }

    fn hex_val(b: Option<&u8>) -> Option<u8> {
        match *b? {
            c @ b'0'..=b'9' => Some(c - b'0'),
            c @ b'a'..=b'f' => Some(c - b'a' + 10),
            c @ b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }

    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                // Two hex digits, looked at as bytes: `%a` followed by a
                // multi-byte character must not slice inside it.
                b'%' => match (hex_val(bytes.get(i + 1)), hex_val(bytes.get(i + 2))) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                },
                b'+' => out.push(b' '),
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heartbeat captured from a real Celery 5.7 worker (kombu 5.7) on
    /// `/0.celeryev/worker.heartbeat`.
    const REAL_HEARTBEAT: &str = r#"{"body": "eyJob3N0bmFtZSI6ICJoYnRlc3RAdm0iLCAidXRjb2Zmc2V0IjogMC4wLCAicGlkIjogMjE1NjYsICJjbG9jayI6IDIsICJmcmVxIjogMi4wLCAiYWN0aXZlIjogMCwgInByb2Nlc3NlZCI6IDAsICJsb2FkYXZnIjogWzMuNDcsIDEuOTksIDAuODldLCAic3dfaWRlbnQiOiAicHktY2VsZXJ5IiwgInN3X3ZlciI6ICI1LjcuMCIsICJzd19zeXMiOiAiTGludXgiLCAidGltZXN0YW1wIjogMTc5NTg5MzgwOC45NDQzOTUsICJ0eXBlIjogIndvcmtlci1oZWFydGJlYXQifQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"hostname": "hbtest@vm"}, "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": "worker.heartbeat"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "0b87dfd7-5a99-43c3-9c93-ed0c03aea3fe"}}"#;

    /// worker-online from the same worker: not a heartbeat.
    const REAL_ONLINE: &str = r#"{"body": "eyJob3N0bmFtZSI6ICJoYnRlc3RAdm0iLCAidXRjb2Zmc2V0IjogMC4wLCAicGlkIjogMjE1NjYsICJjbG9jayI6IDEsICJmcmVxIjogMi4wLCAiYWN0aXZlIjogMCwgInByb2Nlc3NlZCI6IDAsICJsb2FkYXZnIjogWzMuNzgsIDIuMDIsIDAuOV0sICJzd19pZGVudCI6ICJweS1jZWxlcnkiLCAic3dfdmVyIjogIjUuNy4wIiwgInN3X3N5cyI6ICJMaW51eCIsICJ0aW1lc3RhbXAiOiAxNzk1ODkzODA2LjkzODEwMSwgInR5cGUiOiAid29ya2VyLW9ubGluZSJ9", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"hostname": "hbtest@vm"}, "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": "worker.online"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "2ef91d8b-354c-4581-a54f-cee175f2fe08"}}"#;

    #[test]
    fn decodes_a_real_celery_heartbeat() {
        let hb = decode_heartbeat(REAL_HEARTBEAT.as_bytes()).expect("decodes");
        assert_eq!(hb.hostname, "hbtest@vm");
        assert_eq!(hb.pid, 21566);
        assert_eq!(hb.active, 0);
        assert_eq!(hb.processed, 0);
        assert_eq!(hb.freq, 2.0);
        assert!((hb.timestamp - 1795893808.944395).abs() < 1e-6);
    }

    #[test]
    fn other_events_and_garbage_are_not_heartbeats() {
        assert_eq!(decode_heartbeat(REAL_ONLINE.as_bytes()), None);
        assert_eq!(decode_heartbeat(b"not json"), None);
        assert_eq!(
            decode_heartbeat(br#"{"body": "!!!", "properties": {"body_encoding": "base64"}}"#),
            None
        );
        assert_eq!(decode_heartbeat(br#"{"nobody": 1}"#), None);
    }

    #[test]
    fn decodes_a_plain_json_body() {
        let payload = serde_json::json!({
            "body": {"hostname": "a@b", "pid": 7, "active": 2, "processed": 40, "freq": 5.0,
                     "timestamp": 12.5, "type": "worker-heartbeat"},
            "properties": {}
        });
        let hb = decode_heartbeat(payload.to_string().as_bytes()).unwrap();
        assert_eq!(
            hb,
            Heartbeat {
                hostname: "a@b".into(),
                pid: 7,
                active: 2,
                processed: 40,
                freq: 5.0,
                timestamp: 12.5
            }
        );
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zm9v\nYmE=").unwrap(), b"fooba");
        assert!(base64_decode("Zm9*").is_none());
    }

    #[test]
    fn queue_keys_follow_kombu() {
        assert_eq!(
            queue_keys("text", &[0, 3, 6, 9], ""),
            vec!["text", "text\x06\x163", "text\x06\x166", "text\x06\x169"]
        );
        assert_eq!(queue_keys("q", &[0], "pfx:"), vec!["pfx:q"]);
        assert_eq!(queue_keys("q", &[5, 0, 5], ""), vec!["q", "q\x06\x165"]);
        assert_eq!(heartbeat_channel("", 0), "/0.celeryev/worker.heartbeat");
        assert_eq!(
            heartbeat_channel("pfx:", 3),
            "pfx:/3.celeryev/worker.heartbeat"
        );
    }

    #[test]
    fn parses_urls_and_kombu_spellings() {
        let t = parse_target("redis://app:s%40cret@127.0.0.1:6380/2").unwrap();
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.db, 2);
        assert_eq!(t.host_port, Some(("127.0.0.1".into(), 6380)));
        assert!(!t.tls);
        // The bare connection carries neither credentials nor db.
        assert_eq!(t.bare_info.redis_settings().password(), None);
        assert_eq!(t.bare_info.redis_settings().db(), 0);

        let t = parse_target("redis+socket:///run/redis/redis.sock?virtual_host=3").unwrap();
        assert_eq!(t.db, 3);
        assert_eq!(t.host_port, None);
        let t = parse_target("unix:///run/redis/redis.sock?db=4").unwrap();
        assert_eq!(t.db, 4);

        let t = parse_target("rediss://:pw@localhost:6390/0?ssl_cert_reqs=none").unwrap();
        assert!(t.tls);
        assert!(matches!(
            t.bare_info.addr(),
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
        let t = parse_target("rediss://localhost/0").unwrap();
        assert!(matches!(
            t.bare_info.addr(),
            ConnectionAddr::TcpTls {
                insecure: false,
                ..
            }
        ));
    }

    #[test]
    fn a_percent_before_a_multibyte_character_is_kept() {
        // Used to slice inside `é` and panic.
        for url in [
            "redis://h:6379/0?x=%a\u{e9}",
            "redis://h:6379/0?x=%\u{e9}",
            "redis://h:6379/0?x=%",
            "redis+socket:///s.sock?virtual_host=%\u{e9}1",
        ] {
            let _ = parse_target(url);
        }
        let u = url_lite::Url::parse("redis://h/0?a=%a\u{e9}&b=%41%4&c=%zz").unwrap();
        assert_eq!(u.query("a").as_deref(), Some("%a\u{e9}"));
        assert_eq!(u.query("b").as_deref(), Some("A%4"));
        assert_eq!(u.query("c").as_deref(), Some("%zz"));
    }

    #[test]
    fn malformed_urls_are_fatal_and_redacted() {
        for url in [
            "",
            "localhost:6379",
            "http://x/",
            "redis://:pw@h/notadb",
            "redis+socket:///s?virtual_host=x",
        ] {
            let e = parse_target(url)
                .err()
                .unwrap_or_else(|| panic!("{url} parsed"));
            assert_eq!(e.kind, ProbeErrorKind::Fatal, "{url}: {e}");
            assert!(!e.message.contains("pw@"), "{e}");
        }
        let e = parse_target("rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem")
            .err()
            .unwrap();
        assert!(
            e.is_fatal() && e.message.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(160) && first <= Duration::from_millis(240),
            "{first:?}"
        );
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= BACKOFF_MAX);
        }
        assert!(last >= Duration::from_secs(8), "{last:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(240));
    }

    #[tokio::test]
    async fn refused_connection_is_transient() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = probe(&format!("redis://127.0.0.1:{port}/0"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ProbeErrorKind::Transient);
        assert!(e.message.contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn dns_failure_is_transient() {
        // A 64-byte label cannot be encoded in a DNS query, so the lookup
        // fails locally without sending anything anywhere.
        let host = format!("{}.invalid", "a".repeat(64));
        let e = probe(&format!("redis://{host}:6379/0")).await.unwrap_err();
        assert_eq!(e.kind, ProbeErrorKind::Transient, "{e}");
        assert!(e.message.contains("DNS"), "{e}");
    }

    #[tokio::test]
    async fn silent_server_times_out_as_transient() {
        // Accepts TCP but never answers: the response timeout must fire.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let t = Instant::now();
        let e = probe(&format!("redis://127.0.0.1:{port}/0"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ProbeErrorKind::Transient, "{e}");
        assert!(e.message.contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        hold.abort();
    }
}

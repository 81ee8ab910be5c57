//! What goes wrong when talking to the broker: [`ProbeError`] (a one-line
//! reason without credentials, and whether it is transient or a
//! configuration error), the classification of redis-rs errors into it
//! ([`classify`]), and [`with_timeout`] for a redis-rs future.

use std::fmt;
use std::time::Duration;

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
    pub(super) fn transient(message: impl Into<String>) -> Self {
        ProbeError {
            kind: ProbeErrorKind::Transient,
            message: message.into(),
        }
    }

    pub(super) fn fatal(message: impl Into<String>) -> Self {
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
// Error classification

pub(super) fn redis_error_text(e: &redis::RedisError) -> String {
    if let (Some(code), Some(detail)) = (e.code(), e.detail()) {
        return format!("{code} {}", detail.trim());
    }
    e.to_string().trim().to_string()
}

/// Classifies a failure of connect/AUTH/SELECT/PING.
pub(super) fn classify(e: &redis::RedisError, during: &str) -> ProbeError {
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

pub(super) async fn with_timeout<T>(
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

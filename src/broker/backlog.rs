//! The backlog: the Redis keys of a Celery queue (the queue and its kombu
//! priority sub-queues) and their lengths. The running monitor's health
//! link fetches them on its own connection (`health`); [`fetch_backlog`]
//! does it over redis-rs for `clearifyctl test`.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::RESPONSE_TIMEOUT;
use super::error::{ProbeError, with_timeout};

/// The backlog is never queried more often than this (a cache).
pub const BACKLOG_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// kombu's separator between a queue name and its priority step.
pub const PRIORITY_SEP: &str = "\x06\x16";
/// kombu's default priority steps (defined once, in the config schema).
pub use crate::config::DEFAULT_PRIORITY_STEPS;

/// The queues the monitor reports the backlog of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    /// Every queue of the plan ([`Monitor::refresh_backlog`] reports them
    /// all).
    pub queues: Vec<String>,
    /// Whether to fetch the backlog at every health check as well (in the
    /// PING's round trip). Only stall detection needs it; without it the
    /// backlog is fetched when somebody asks ([`Monitor::refresh_backlog`],
    /// i.e. `clearifyctl status`) and when the queues change.
    ///
    /// [`Monitor::refresh_backlog`]: super::Monitor::refresh_backlog
    pub poll: bool,
}

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

/// LLEN over all keys of all queues, in one pipeline: the backlog per
/// queue (for `clearifyctl test`; the running monitor's health link does
/// the same on its own connection, see [`health`]).
pub(super) async fn fetch_backlog(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_follow_kombu() {
        assert_eq!(
            queue_keys("text", &[0, 3, 6, 9], ""),
            vec!["text", "text\x06\x163", "text\x06\x166", "text\x06\x169"]
        );
        assert_eq!(queue_keys("q", &[0], "pfx:"), vec!["pfx:q"]);
        assert_eq!(queue_keys("q", &[5, 0, 5], ""), vec!["q", "q\x06\x165"]);
    }
}

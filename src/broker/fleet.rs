//! Reading the fleet registry (issue 14, docs/fleet.md): what the daemon
//! answers to `clearifyctl fleet`, `fleet queues`, `fleet DEVICE` and
//! `fleet forget`, read from the shared Redis over redis-rs' async
//! connection (connected afresh, as `clearifyctl test` does).
//!
//! Everything read here is untrusted, and every step is bounded:
//! - the set is looked at through `ZCARD` and the [`MAX_DEVICES`] most
//!   recent members (`ZREVRANGE … WITHSCORES`): a million members cost one
//!   number; members longer than [`MAX_DEVICE_ID`] bytes, not UTF-8, or
//!   with a score that is not a finite time are skipped with a note;
//! - each record is fetched with `GETRANGE key 0 MAX_RECORD`, so a 10 MB
//!   value costs [`MAX_RECORD`] + 1 bytes, in pipelined chunks of
//!   [`CHUNK`], and parsed by [`parse_record`] (size cap, serde_json's depth
//!   limit, schema, device id); the strings a device list shows are cut to
//!   a length, and the answer to a byte budget under the frame limit;
//! - "now" is Redis `TIME`, never this machine's clock;
//! - pruning of members whose record expired runs at most once a minute
//!   across all readers (`SET <guard> <device_id> NX EX 60`), over the
//!   [`PRUNE_BATCH`] oldest members.

use std::collections::BTreeMap;

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::backlog::queue_keys;
use super::error::{ProbeError, with_timeout};
use super::probe::{connect_steps, with_hint};
use super::url::parse_target;
use super::{BrokerSettings, RESPONSE_TIMEOUT};
use crate::control::protocol::{FleetQuery, Response};
use crate::model::fleet::{
    DeviceRecord, DeviceView, Keys, MAX_DEVICE_ID, MAX_DEVICES, MAX_RECORD, QueuesView,
    ReadSummary, Seen, Skipped, device_rows, live_queues, parse_record, queue_rows,
};

/// Records fetched per pipelined round trip (at most 16 KiB each).
pub const CHUNK: usize = 64;
/// Oldest members one pruning pass looks at.
pub const PRUNE_BATCH: usize = 1000;
/// Seconds the pruning guard holds: one pass a minute across all readers.
pub const PRUNE_EVERY_SECS: u64 = 60;
/// The longest a device list's hostname, version and arch may be shown
/// (a longer one is cut, with `…`).
const MAX_SHOWN: usize = 64;
/// Skipped records named in a device list answer; more are counted.
const MAX_SKIPPED_SHOWN: usize = 100;
/// The largest device list answer, in bytes of JSON: under the control
/// protocol's frame limit, with room for the envelope.
const ANSWER_BUDGET: usize = crate::control::protocol::MAX_FRAME - 64 * 1024;

/// Why a fleet request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetError {
    /// The device is not in the registry.
    Unknown(String),
    /// The broker could not be read (or the record not used).
    Failed(String),
}

impl From<ProbeError> for FleetError {
    fn from(e: ProbeError) -> Self {
        FleetError::Failed(e.message)
    }
}

/// What a fleet reader needs: the broker and this device (the pruning
/// guard names it).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetReader {
    pub settings: BrokerSettings,
    pub device_id: String,
}

impl FleetReader {
    fn keys(&self) -> Keys {
        Keys::new(&self.settings.key_prefix)
    }

    pub(super) async fn connect(&self) -> Result<MultiplexedConnection, FleetError> {
        let target = parse_target(&self.settings.url)?;
        let mut steps = Vec::new();
        connect_steps(&target, &mut steps)
            .await
            .map_err(|e| FleetError::from(with_hint(&target, e)))
    }

    /// Answers one view: [`Response::Fleet`], [`Response::FleetQueues`] or
    /// [`Response::FleetDevice`].
    pub async fn query(&self, query: &FleetQuery) -> Result<Response, FleetError> {
        let mut conn = self.connect().await?;
        match query {
            FleetQuery::Devices => {
                let (read, seen) = self.read_all(&mut conn).await?;
                Ok(Response::Fleet(fit_budget(read, seen)))
            }
            FleetQuery::Queues => {
                let (read, seen) = self.read_all(&mut conn).await?;
                let (names, _) = live_queues(read.now, &seen);
                let backlog = self.backlog(&mut conn, &names).await?;
                let mut read = read;
                cap_skipped(&mut read);
                Ok(Response::FleetQueues(fit_queues(queue_rows(
                    read, &seen, &backlog,
                ))))
            }
            FleetQuery::Device { device_id } => self.device(&mut conn, device_id).await,
        }
    }

    /// Removes a device from the registry: its member and its record.
    pub async fn forget(&self, device_id: &str) -> Result<Vec<String>, FleetError> {
        let keys = self.keys();
        let mut conn = self.connect().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM").arg(keys.set()).arg(device_id);
        pipe.cmd("DEL").arg(keys.record(device_id));
        let (removed, deleted): (i64, i64) =
            with_timeout(RESPONSE_TIMEOUT, "ZREM", pipe.query_async(&mut conn)).await?;
        if removed == 0 && deleted == 0 {
            return Err(FleetError::Unknown(format!(
                "no device {device_id:?} in the fleet (see clearifyctl fleet)"
            )));
        }
        Ok(vec![format!("{device_id}: forgotten")])
    }

    /// TIME, ZCARD, the most recent members and their records; prunes when
    /// this reader holds the guard.
    pub(super) async fn read_all(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<(ReadSummary, Vec<Seen>), FleetError> {
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        pipe.cmd("ZCARD").arg(keys.set());
        pipe.cmd("ZREVRANGE")
            .arg(keys.set())
            .arg(0)
            .arg(MAX_DEVICES - 1)
            .arg("WITHSCORES");
        pipe.cmd("SET")
            .arg(keys.prune_guard())
            .arg(&self.device_id)
            .arg("NX")
            .arg("EX")
            .arg(PRUNE_EVERY_SECS);
        let (time, members, range, guard): (Value, i64, Value, Value) =
            with_timeout(RESPONSE_TIMEOUT, "ZREVRANGE", pipe.query_async(conn)).await?;
        let now = redis_time(&time)?;
        let mut summary = ReadSummary {
            now,
            members: u64::try_from(members).unwrap_or(0),
            read: 0,
            expired: 0,
            skipped: Vec::new(),
        };
        let mut wanted: Vec<(String, f64)> = Vec::new();
        for (member, score) in pairs(range) {
            summary.read += 1;
            match member_of(&member, &score) {
                Ok(m) => wanted.push(m),
                Err(skip) => summary.skipped.push(skip),
            }
        }
        let mut seen = Vec::with_capacity(wanted.len());
        for chunk in wanted.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (id, _) in chunk {
                pipe.cmd("GETRANGE")
                    .arg(keys.record(id))
                    .arg(0)
                    .arg(MAX_RECORD);
            }
            let values: Vec<Value> =
                with_timeout(RESPONSE_TIMEOUT, "GETRANGE", pipe.query_async(conn)).await?;
            for ((id, last_beat), v) in chunk.iter().zip(values) {
                match v {
                    Value::BulkString(b) if b.is_empty() => summary.expired += 1,
                    Value::Nil => summary.expired += 1,
                    Value::BulkString(b) => match parse_record(id, &b) {
                        Ok(record) => seen.push(Seen {
                            record,
                            last_beat: *last_beat,
                        }),
                        Err(reason) => summary.skipped.push(skip(id, reason)),
                    },
                    other => summary.skipped.push(skip(
                        id,
                        format!("record unreadable: {}", reply_text(&other)),
                    )),
                }
            }
        }
        if matches!(guard, Value::Okay)
            && let Err(e) = self.prune(conn).await
        {
            tracing::debug!(error = %e.message, "fleet pruning failed: {}", e.message);
        }
        Ok((summary, seen))
    }

    /// One pruning pass: the [`PRUNE_BATCH`] oldest members whose record
    /// no longer exists leave the set. Returns how many left.
    async fn prune(&self, conn: &mut MultiplexedConnection) -> Result<usize, ProbeError> {
        let keys = self.keys();
        let oldest: Vec<Vec<u8>> = with_timeout(
            RESPONSE_TIMEOUT,
            "ZRANGE",
            redis::cmd("ZRANGE")
                .arg(keys.set())
                .arg(0)
                .arg(PRUNE_BATCH - 1)
                .query_async(conn),
        )
        .await?;
        if oldest.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for m in &oldest {
            let mut key = keys.record("").into_bytes();
            key.extend_from_slice(m);
            pipe.cmd("EXISTS").arg(key);
        }
        let exists: Vec<i64> =
            with_timeout(RESPONSE_TIMEOUT, "EXISTS", pipe.query_async(conn)).await?;
        let gone: Vec<&Vec<u8>> = oldest
            .iter()
            .zip(exists)
            .filter(|(_, e)| *e == 0)
            .map(|(m, _)| m)
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(keys.set());
        for m in &gone {
            zrem.arg(m.as_slice());
        }
        let _: i64 = with_timeout(RESPONSE_TIMEOUT, "ZREM", zrem.query_async(conn)).await?;
        tracing::debug!(
            pruned = gone.len(),
            "fleet: pruned {} expired members",
            gone.len()
        );
        Ok(gone.len())
    }

    /// LLEN of every key of each queue (priority sub-queues summed, as in
    /// `status`).
    async fn backlog(
        &self,
        conn: &mut MultiplexedConnection,
        queues: &[String],
    ) -> Result<BTreeMap<String, u64>, FleetError> {
        let mut out = BTreeMap::new();
        if queues.is_empty() {
            return Ok(out);
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut owners = Vec::new();
        for q in queues {
            for key in queue_keys(q, &self.settings.priority_steps, &self.settings.key_prefix) {
                pipe.cmd("LLEN").arg(key);
                owners.push(q.as_str());
            }
        }
        let values: Vec<Value> =
            with_timeout(RESPONSE_TIMEOUT, "LLEN", pipe.query_async(conn)).await?;
        // A queue whose length is unknown (NOPERM for this ACL user, a key
        // of another type) has no backlog rather than a wrong one.
        let mut unknown = Vec::new();
        for (q, v) in owners.into_iter().zip(values) {
            match v {
                Value::Int(n) => {
                    let e = out.entry(q.to_string()).or_insert(0u64);
                    *e = e.saturating_add(u64::try_from(n).unwrap_or(0));
                }
                other => {
                    tracing::debug!(queue = %q, "LLEN answered {}", reply_text(&other));
                    unknown.push(q);
                }
            }
        }
        for q in unknown {
            out.remove(q);
        }
        Ok(out)
    }

    /// One device: its score and its record.
    async fn device(
        &self,
        conn: &mut MultiplexedConnection,
        device_id: &str,
    ) -> Result<Response, FleetError> {
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        pipe.cmd("ZSCORE").arg(keys.set()).arg(device_id);
        pipe.cmd("GETRANGE")
            .arg(keys.record(device_id))
            .arg(0)
            .arg(MAX_RECORD);
        let (time, score, record): (Value, Value, Value) =
            with_timeout(RESPONSE_TIMEOUT, "ZSCORE", pipe.query_async(conn)).await?;
        let now = redis_time(&time)?;
        let Some(last_beat) = score_of(&score) else {
            return Err(FleetError::Unknown(format!(
                "no device {device_id:?} in the fleet (see clearifyctl fleet)"
            )));
        };
        let bytes = match record {
            Value::BulkString(b) if !b.is_empty() => b,
            _ => {
                return Err(FleetError::Unknown(format!(
                    "device {device_id:?} has no record any more (expired; it is pruned soon)"
                )));
            }
        };
        let record = parse_record(device_id, &bytes)
            .map_err(|why| FleetError::Failed(format!("device {device_id:?}: {why}")))?;
        Ok(Response::FleetDevice(DeviceView::new(
            now,
            Seen { record, last_beat },
        )))
    }
}

/// Redis `TIME` as seconds since the epoch.
fn redis_time(v: &Value) -> Result<f64, FleetError> {
    let parts: Vec<u64> = match v {
        Value::Array(a) => a.iter().filter_map(|p| text_of(p)?.parse().ok()).collect(),
        _ => Vec::new(),
    };
    match parts.as_slice() {
        [secs, micros] => Ok(*secs as f64 + *micros as f64 / 1e6),
        _ => Err(FleetError::Failed(format!(
            "TIME answered {}",
            reply_text(v)
        ))),
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn score_of(v: &Value) -> Option<f64> {
    match v {
        Value::Double(d) => Some(*d),
        other => text_of(other)?.parse().ok(),
    }
    .filter(|s: &f64| s.is_finite())
}

/// The (member, score) pairs of a `WITHSCORES` reply, RESP2 (flat) or
/// RESP3 (pairs).
fn pairs(range: Value) -> Vec<(Value, Value)> {
    let Value::Array(items) = range else {
        return Vec::new();
    };
    if items.iter().all(|i| matches!(i, Value::Array(_))) {
        return items
            .into_iter()
            .filter_map(|i| match i {
                Value::Array(mut p) if p.len() == 2 => {
                    let s = p.pop()?;
                    Some((p.pop()?, s))
                }
                _ => None,
            })
            .collect();
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(m), Some(s)) = (it.next(), it.next()) {
        out.push((m, s));
    }
    out
}

/// A member worth reading, or why not.
fn member_of(member: &Value, score: &Value) -> Result<(String, f64), Skipped> {
    let bytes: &[u8] = match member {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.as_bytes(),
        other => return Err(skip("", format!("member is {}", reply_text(other)))),
    };
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_DEVICE_ID)]).into_owned();
    if bytes.len() > MAX_DEVICE_ID {
        return Err(skip(
            &shown,
            format!(
                "member of {} bytes, longer than a device id ({MAX_DEVICE_ID})",
                bytes.len()
            ),
        ));
    }
    let Ok(id) = std::str::from_utf8(bytes) else {
        return Err(skip(&shown, "member is not UTF-8".into()));
    };
    let Some(score) = score_of(score) else {
        return Err(skip(id, "score is not a finite time".into()));
    };
    Ok((id.to_string(), score))
}

fn skip(device_id: &str, reason: String) -> Skipped {
    Skipped {
        device_id: device_id.to_string(),
        reason,
    }
}

/// A server reply, shortly, for a note.
fn reply_text(v: &Value) -> String {
    match v {
        Value::ServerError(e) => {
            let mut s = format!("{e:?}");
            s.truncate(120);
            s
        }
        Value::Nil => "nil".into(),
        Value::Int(n) => format!("the number {n}"),
        _ => "an unexpected reply".into(),
    }
}

/// Cuts `s` to [`MAX_SHOWN`] characters.
fn cut(s: &mut String) {
    if let Some((i, _)) = s.char_indices().nth(MAX_SHOWN) {
        s.truncate(i);
        s.push('…');
    }
}

/// The device list, with the strings it shows cut, at most
/// [`MAX_SKIPPED_SHOWN`] skipped records named, and, should it still not
/// fit [`ANSWER_BUDGET`] (a thousand hostile records), the least urgent
/// devices (the list's tail) left out with a note.
fn fit_budget(mut read: ReadSummary, mut seen: Vec<Seen>) -> crate::model::fleet::FleetView {
    for s in &mut seen {
        let r: &mut DeviceRecord = &mut s.record;
        cut(&mut r.hostname);
        cut(&mut r.version);
        cut(&mut r.arch);
    }
    cap_skipped(&mut read);
    let mut view = device_rows(read, &seen);
    let devices = std::mem::take(&mut view.devices);
    let keep = fitting(json_len(&view), &devices);
    let dropped = devices.len() - keep;
    view.devices = devices;
    view.devices.truncate(keep);
    if dropped > 0 {
        view.read.skipped.push(skip(
            "",
            format!(
                "{dropped} devices not shown: the answer would exceed the control protocol's frame limit"
            ),
        ));
    }
    view
}

/// At most [`MAX_SKIPPED_SHOWN`] skipped records named; the rest counted.
fn cap_skipped(read: &mut ReadSummary) {
    if read.skipped.len() > MAX_SKIPPED_SHOWN {
        let more = read.skipped.len() - MAX_SKIPPED_SHOWN;
        read.skipped.truncate(MAX_SKIPPED_SHOWN);
        read.skipped
            .push(skip("", format!("{more} more records skipped")));
    }
}

/// How many of `items`, in order, fit [`ANSWER_BUDGET`] next to `base`
/// bytes.
fn fitting<T: serde::Serialize>(base: usize, items: &[T]) -> usize {
    let mut total = base;
    for (n, item) in items.iter().enumerate() {
        total += json_len(item) + 1;
        if total > ANSWER_BUDGET {
            return n;
        }
    }
    items.len()
}

/// The queue view under [`ANSWER_BUDGET`]: the queues that do not fit
/// (the end of the list) are counted in `queues_omitted`.
fn fit_queues(mut view: QueuesView) -> QueuesView {
    let queues = std::mem::take(&mut view.queues);
    let keep = fitting(json_len(&view), &queues);
    view.queues = queues;
    let dropped = view.queues.len() - keep;
    view.queues.truncate(keep);
    view.queues_omitted = view.queues_omitted.saturating_add(dropped as u64);
    if dropped > 0 {
        view.read.skipped.push(skip(
            "",
            format!(
                "{dropped} queues not shown: the answer would exceed the control protocol's frame limit"
            ),
        ));
    }
    view
}

/// The length of a value's JSON.
fn json_len<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withscores_replies_of_both_protocols() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![b("a"), b("1.5"), b("b"), b("2")]);
        let p = pairs(resp2);
        assert_eq!(p.len(), 2);
        assert_eq!(member_of(&p[0].0, &p[0].1).unwrap(), ("a".into(), 1.5));
        let resp3 = Value::Array(vec![Value::Array(vec![b("c"), Value::Double(3.0)])]);
        let p = pairs(resp3);
        assert_eq!(member_of(&p[0].0, &p[0].1).unwrap(), ("c".into(), 3.0));
    }

    #[test]
    fn hostile_members_are_skipped_with_a_note() {
        let long = Value::BulkString(vec![b'x'; MAX_DEVICE_ID + 1]);
        let s = member_of(&long, &Value::Double(1.0)).unwrap_err();
        assert_eq!(s.device_id.len(), MAX_DEVICE_ID);
        let bad = Value::BulkString(vec![0xff, 0xfe]);
        assert!(member_of(&bad, &Value::Double(1.0)).is_err());
        let inf = Value::BulkString(b"inf".to_vec());
        assert!(member_of(&Value::BulkString(b"d".to_vec()), &inf).is_err());
    }

    #[test]
    fn a_thousand_hostile_rows_fit_one_frame() {
        let esc = |n: usize| "\x1b".repeat(n);
        let seen: Vec<Seen> = (0..MAX_DEVICES)
            .map(|i| {
                let id = format!("{i:04}{}", esc(MAX_DEVICE_ID - 4));
                let rec = serde_json::json!({
                    "schema": 1, "device_id": id, "version": esc(3000),
                    "hostname": esc(10_000), "arch": esc(1000), "kernel": "k",
                    "uptime_secs": 1, "interval_secs": 10.0, "run": "running",
                    "limits": false, "restarts_last_hour": 0, "groups": [],
                });
                Seen {
                    record: serde_json::from_value(rec).unwrap(),
                    last_beat: 1.0,
                }
            })
            .collect();
        let read = ReadSummary {
            now: 2.0,
            members: 2000,
            read: 1000,
            expired: 0,
            skipped: (0..MAX_DEVICES)
                .map(|_| skip(&esc(MAX_DEVICE_ID), "x".repeat(200)))
                .collect(),
        };
        let view = fit_budget(read, seen);
        let frame = serde_json::to_vec(&Response::Fleet(view.clone())).unwrap();
        assert!(
            frame.len() < crate::control::protocol::MAX_FRAME,
            "{}",
            frame.len()
        );
        assert!(
            view.devices
                .iter()
                .all(|d| d.hostname.chars().count() <= MAX_SHOWN + 1)
        );
        let note = view.read.skipped.last().unwrap();
        assert!(note.reason.contains("devices not shown"), "{note:?}");
        assert!(!view.devices.is_empty());
    }

    #[test]
    fn redis_time_is_seconds_and_micros() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let t = redis_time(&Value::Array(vec![b("1700000000"), b("250000")])).unwrap();
        assert!((t - 1_700_000_000.25).abs() < 1e-6);
        assert!(redis_time(&Value::Nil).is_err());
    }
}

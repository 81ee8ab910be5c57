//! The ring buffers: the last lines of each instance, kept for
//! `clearifyctl logs` ([`LogStore`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::sink::{Stream, WorkerMeta};
use crate::control::protocol::LogLine;

/// Lines kept per instance in the ring buffer.
pub const RING_LINES: usize = 1000;
/// Text bytes kept per instance in the ring buffer: fewer than
/// [`RING_LINES`] lines are kept when they are long (a Raspberry Pi has
/// little memory; the journal has everything).
pub const RING_BYTES: usize = 512 * 1024;
/// Longest text of one line kept in the ring buffer (display only; the
/// journal gets everything).
pub const MAX_STORED_LINE: usize = 4 * 1024;

#[derive(Debug, Default)]
struct Ring {
    group: String,
    lines: VecDeque<LogLine>,
    /// Sum of the lines' text lengths.
    bytes: usize,
}

#[derive(Debug)]
struct StoreInner {
    rings: BTreeMap<String, Ring>,
    cap: usize,
    cap_bytes: usize,
    last_ts: f64,
}

/// The last lines of each instance, for `clearifyctl logs`: up to
/// [`RING_LINES`] lines and [`RING_BYTES`] of text per instance. Cheap to
/// clone.
///
/// Timestamps are unique and increasing across the whole store (a line
/// stamped in the same microsecond as the previous one gets 1 µs more), so
/// `since` never skips or repeats a line when a client follows the logs.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<StoreInner>>,
}

impl Default for LogStore {
    fn default() -> Self {
        LogStore::new()
    }
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn display_text(bytes: &[u8]) -> String {
    if bytes.len() <= MAX_STORED_LINE {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut text = String::from_utf8_lossy(&bytes[..MAX_STORED_LINE]).into_owned();
    text.push_str(&format!(
        " … [{} more bytes in the journal]",
        bytes.len() - MAX_STORED_LINE
    ));
    text
}

impl LogStore {
    /// A store keeping [`RING_LINES`] lines ([`RING_BYTES`]) per instance.
    pub fn new() -> Self {
        LogStore::with_limits(RING_LINES, RING_BYTES)
    }

    /// A store keeping `cap` lines per instance (and [`RING_BYTES`]).
    pub fn with_capacity(cap: usize) -> Self {
        LogStore::with_limits(cap, RING_BYTES)
    }

    /// A store keeping at most `lines` lines and `bytes` bytes of text per
    /// instance (always at least the newest line).
    pub fn with_limits(lines: usize, bytes: usize) -> Self {
        LogStore {
            inner: Arc::new(Mutex::new(StoreInner {
                rings: BTreeMap::new(),
                cap: lines.max(1),
                cap_bytes: bytes,
                last_ts: 0.0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a line (stamped now); returns its timestamp. Lines longer than
    /// [`MAX_STORED_LINE`] are shortened, with a note, for display.
    pub fn push(&self, meta: &WorkerMeta, stream: Stream, line: &[u8]) -> f64 {
        let text = display_text(line);
        let mut inner = self.lock();
        let mut ts = now_epoch();
        if ts <= inner.last_ts {
            ts = inner.last_ts + 1e-6;
        }
        inner.last_ts = ts;
        let (cap, cap_bytes) = (inner.cap, inner.cap_bytes);
        let ring = inner.rings.entry(meta.instance.clone()).or_default();
        if ring.group != meta.group {
            ring.group = meta.group.clone();
        }
        ring.bytes += text.len();
        while !ring.lines.is_empty() && (ring.lines.len() >= cap || ring.bytes > cap_bytes) {
            if let Some(old) = ring.lines.pop_front() {
                ring.bytes -= old.text.len();
            }
        }
        ring.lines.push_back(LogLine {
            ts,
            instance: meta.instance.clone(),
            stream: stream.as_str().to_owned(),
            text,
        });
        ts
    }

    /// The last `n` lines newer than `since`, of every instance, or of the
    /// instances whose id or group equals `target`, oldest first.
    pub fn tail(&self, target: Option<&str>, n: usize, since: Option<f64>) -> Vec<LogLine> {
        let inner = self.lock();
        let mut out: Vec<LogLine> = Vec::new();
        for (id, ring) in &inner.rings {
            if let Some(t) = target
                && t != id
                && t != ring.group
            {
                continue;
            }
            let newer = ring
                .lines
                .iter()
                .rev()
                .take_while(|l| since.is_none_or(|s| l.ts > s))
                .take(n);
            out.extend(newer.cloned());
        }
        drop(inner);
        out.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        if out.len() > n {
            out.drain(..out.len() - n);
        }
        out
    }

    /// Forgets an instance's lines.
    pub fn remove(&self, instance: &str) {
        self.lock().rings.remove(instance);
    }

    /// Lines held for an instance.
    pub fn len(&self, instance: &str) -> usize {
        self.lock().rings.get(instance).map_or(0, |r| r.lines.len())
    }

    /// Whether no lines are held at all.
    pub fn is_empty(&self) -> bool {
        self.lock().rings.values().all(|r| r.lines.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::test_util::meta;

    #[test]
    fn ring_buffer_caps_per_instance_and_tails_merged_in_order() {
        let store = LogStore::with_capacity(5);
        let a = meta("text", "text-1");
        let b = meta("text", "text-2");
        let c = meta("billing", "billing-1");
        let mut stamps = Vec::new();
        for i in 0..8 {
            stamps.push(store.push(&a, Stream::Stdout, format!("a{i}").as_bytes()));
            stamps.push(store.push(&b, Stream::Stderr, format!("b{i}").as_bytes()));
        }
        store.push(&c, Stream::Stdout, b"c0\xff");
        assert!(
            stamps.windows(2).all(|w| w[0] < w[1]),
            "timestamps strictly increase"
        );
        assert_eq!(store.len("text-1"), 5);
        assert_eq!(store.len("text-2"), 5);
        let texts = |v: Vec<LogLine>| v.into_iter().map(|l| l.text).collect::<Vec<_>>();
        assert_eq!(
            texts(store.tail(None, 3, None)),
            vec!["a7", "b7", "c0\u{fffd}"]
        );
        assert_eq!(
            texts(store.tail(Some("text"), 100, None)),
            vec!["a3", "b3", "a4", "b4", "a5", "b5", "a6", "b6", "a7", "b7"]
        );
        assert_eq!(texts(store.tail(Some("text-2"), 2, None)), vec!["b6", "b7"]);
        assert_eq!(
            texts(store.tail(Some("text"), 100, Some(stamps[12]))),
            vec!["b6", "a7", "b7"]
        );
        let line = &store.tail(Some("text-2"), 1, None)[0];
        assert_eq!(
            (line.instance.as_str(), line.stream.as_str()),
            ("text-2", "stderr")
        );
        assert!(store.tail(Some("nobody"), 10, None).is_empty());
        store.remove("text-1");
        assert_eq!(store.len("text-1"), 0);
        assert_eq!(texts(store.tail(Some("text"), 2, None)), vec!["b6", "b7"]);
        assert!(!store.is_empty());
    }

    #[test]
    fn ring_buffer_default_keeps_1000_lines_and_shortens_huge_ones() {
        let store = LogStore::new();
        let a = meta("g", "g-1");
        for i in 0..1500 {
            store.push(&a, Stream::Stdout, format!("{i}").as_bytes());
        }
        assert_eq!(store.len("g-1"), 1000);
        let all = store.tail(None, 5000, None);
        assert_eq!(all.len(), 1000);
        assert_eq!(all[0].text, "500");
        store.push(&a, Stream::Stdout, &vec![b'q'; MAX_STORED_LINE + 10]);
        let last = store.tail(None, 1, None).pop().unwrap();
        assert!(last.text.starts_with(&"q".repeat(MAX_STORED_LINE)));
        assert!(last.text.ends_with("[10 more bytes in the journal]"));
    }

    #[test]
    fn ring_buffer_byte_budget_drops_the_oldest_lines() {
        let store = LogStore::with_limits(1000, 100);
        let a = meta("g", "g-1");
        for i in 0..10 {
            store.push(
                &a,
                Stream::Stdout,
                format!("{i}{}", "x".repeat(29)).as_bytes(),
            );
        }
        // 30 bytes each: three fit in 100 bytes
        let texts: Vec<String> = store
            .tail(None, 100, None)
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(texts.len(), 3);
        assert!(texts[0].starts_with('7') && texts[2].starts_with('9'));
        // a line larger than the budget is still kept, alone
        store.push(&a, Stream::Stdout, &[b'L'; 500]);
        assert_eq!(store.len("g-1"), 1);
        store.push(&a, Stream::Stdout, b"small");
        assert_eq!(store.len("g-1"), 1);
    }
}

//! Where worker records go: journald (with the worker's fields) or the
//! daemon's stderr (`<instance> | <line>`), and the encoding of a record as
//! a journal entry.

use std::io::{self, Write};
use std::sync::atomic::Ordering;

use super::grouper::Record;
use super::journald::{JournalSender, encode_field};
use super::tracing_setup::{LogTarget, stderr_is_journal};

/// SYSLOG_IDENTIFIER of worker lines.
pub const SYSLOG_IDENTIFIER: &str = "clearify-worker";

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Who a worker is, for the journal fields and the ring buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerMeta {
    pub group: String,
    /// Instance id, e.g. `text-1`.
    pub instance: String,
    /// Celery node name, e.g. `text-1@pi-kitchen`.
    pub node: String,
    pub pid: u32,
}

/// Where worker records go.
#[derive(Debug)]
pub enum Sink {
    /// journald, with fields.
    Journal(JournalSender),
    /// The daemon's stderr, as `<instance-id> | <line>`.
    Stderr,
}

/// Encodes the journal entry of one worker record.
pub fn encode_record(meta: &WorkerMeta, stream: Stream, record: &Record) -> Vec<u8> {
    let mut e = Vec::with_capacity(record.message.len() + 256);
    encode_field(&mut e, "PRIORITY", record.priority.to_string().as_bytes());
    encode_field(&mut e, "SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER.as_bytes());
    encode_field(&mut e, "SYSLOG_PID", meta.pid.to_string().as_bytes());
    encode_field(&mut e, "CLEARIFY_GROUP", meta.group.as_bytes());
    encode_field(&mut e, "CLEARIFY_INSTANCE", meta.instance.as_bytes());
    encode_field(&mut e, "CLEARIFY_NODE", meta.node.as_bytes());
    encode_field(&mut e, "CLEARIFY_PID", meta.pid.to_string().as_bytes());
    encode_field(&mut e, "CLEARIFY_STREAM", stream.as_str().as_bytes());
    encode_field(&mut e, "MESSAGE", &record.message);
    e
}

/// Formats a record for stderr: every line prefixed with `<instance> | `.
pub fn format_stderr(instance: &str, record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.message.len() + instance.len() + 8);
    for line in record.message.split(|&b| b == b'\n') {
        out.extend_from_slice(instance.as_bytes());
        out.extend_from_slice(b" | ");
        out.extend_from_slice(String::from_utf8_lossy(line).as_bytes());
        out.push(b'\n');
    }
    out
}

fn write_stderr(bytes: &[u8]) {
    // One locked write per record keeps records of different workers from
    // interleaving. A failing stderr is nothing we can report anywhere.
    let _ = io::stderr().lock().write_all(bytes);
}

impl Sink {
    /// The default sink: journald when the daemon's stderr is the journal
    /// (it runs under systemd), else stderr.
    pub fn auto() -> Sink {
        if stderr_is_journal() {
            Sink::Journal(JournalSender::new())
        } else {
            Sink::Stderr
        }
    }

    /// The sink for a `--log-target`: worker lines go where the daemon's
    /// own logs go.
    pub fn for_target(target: LogTarget) -> Sink {
        match target {
            LogTarget::Auto => Sink::auto(),
            LogTarget::Journal => Sink::Journal(JournalSender::new()),
            LogTarget::Stderr => Sink::Stderr,
        }
    }

    /// Writes one record. Waits while journald is busy. When journald
    /// cannot be reached, the record goes to stderr instead (and the
    /// problem is logged once, until journald works again).
    pub async fn write(&self, meta: &WorkerMeta, stream: Stream, record: &Record) {
        match self {
            Sink::Stderr => write_stderr(&format_stderr(&meta.instance, record)),
            Sink::Journal(sender) => {
                let entry = encode_record(meta, stream, record);
                match sender.send_entry(&entry).await {
                    Ok(()) => {
                        if sender.failing.swap(false, Ordering::Relaxed) {
                            tracing::info!(socket = %sender.path.display(), "journald reachable again");
                        }
                    }
                    Err(e) => {
                        if !sender.failing.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                socket = %sender.path.display(),
                                error = %e,
                                "cannot send worker output to journald; writing it to stderr"
                            );
                        }
                        write_stderr(&format_stderr(&meta.instance, record));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::journald::decode_entry;

    #[test]
    fn worker_records_carry_all_fields() {
        let meta = WorkerMeta {
            group: "text".into(),
            instance: "text-1".into(),
            node: "text-1@pi".into(),
            pid: 77,
        };
        let rec = Record {
            message: b"boom\n  at x".to_vec(),
            priority: 3,
        };
        let fields = decode_entry(&encode_record(&meta, Stream::Stderr, &rec)).unwrap();
        let f: Vec<(&str, &[u8])> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            f,
            vec![
                ("PRIORITY", &b"3"[..]),
                ("SYSLOG_IDENTIFIER", b"clearify-worker"),
                ("SYSLOG_PID", b"77"),
                ("CLEARIFY_GROUP", b"text"),
                ("CLEARIFY_INSTANCE", b"text-1"),
                ("CLEARIFY_NODE", b"text-1@pi"),
                ("CLEARIFY_PID", b"77"),
                ("CLEARIFY_STREAM", b"stderr"),
                ("MESSAGE", b"boom\n  at x"),
            ]
        );
        assert_eq!(
            format_stderr(
                "text-1",
                &Record {
                    message: b"a\n\xffb".to_vec(),
                    priority: 6
                }
            ),
            "text-1 | a\ntext-1 | \u{fffd}b\n".as_bytes()
        );
    }
}

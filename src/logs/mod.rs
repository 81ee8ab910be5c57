//! Worker output: line framing, Celery level → syslog priority, grouping of
//! multi-line records, the journald native-protocol sender, the stderr sink,
//! the per-instance ring buffers, the per-group rate limit, and the
//! daemon's own logging setup.
//!
//! # The path of a worker's output
//! ```text
//! pipe ──read──► LineFramer ──Line──► Grouper ──Record──► GroupLimit ──► Sink (journald | stderr)
//!                              │                        (info and below: a token, or dropped and counted)
//!                              └────► LogStore (ring buffer, one entry per line)
//! ```
//! Everything is bytes: a worker may print anything, and invalid UTF-8 must
//! reach journald unchanged. Only the ring buffer and the stderr sink turn
//! bytes into text (lossily), because they are for display.
//!
//! # Backpressure
//! [`pump`] reads both pipes of an instance (stdout and stderr) in one task.
//! It has no read buffer of its own (it borrows a shared one for each read)
//! and holds at most the lines framed from one read and one open record per
//! stream. It awaits every send, so when journald (or the daemon's stderr)
//! is slow, the pump stops reading, the pipes fill and the worker blocks in
//! `write()`. There is no queue that could grow.
//!
//! # Rate limit
//! Before a record at info or below is written, it takes a token from its
//! group's bucket ([`ratelimit`], `[daemon] log_rate_limit`); without one
//! it is dropped and counted, and the drops are reported as one warning per
//! group every few seconds. Warnings and errors always pass. So one chatty
//! group cannot exhaust journald's per-unit limit for the others.
//!
//! # Grouping rule (one record = one journal entry)
//! A line *starts a new record* when it is a Celery log header
//! (`[<asctime>: LEVEL/<process>] …`). Otherwise it *continues* the open
//! record when any of these holds:
//! 1. it is a later chunk of an over-long line (see [`LineFramer`]): each
//!    chunk is an entry of its own, with the priority of the line's record;
//! 2. the open record began with a Celery header. Celery writes a record,
//!    its multi-line message and its traceback with one `write()`, and with
//!    its default `worker_redirect_stdouts` every `print` becomes a header
//!    line of its own; so everything up to the next header belongs to it;
//! 3. the open record began with a Python warning header
//!    (`file.py:12: SomeWarning: …`), whose message may span lines;
//! 4. the open record contains a Python traceback: the exception line,
//!    multi-line exception messages, notes, blank lines and chained
//!    tracebacks stay together;
//! 5. it starts with a space or a tab (traceback frames, source lines,
//!    carets, pretty-printed data);
//! 6. it is `Traceback (most recent call last):` or one of Python's chaining
//!    sentences ("During handling of the above exception…", "The above
//!    exception was the direct cause…").
//!
//! Anything else starts a new record. A record is flushed when the next
//! record starts, when appending would exceed [`MAX_RECORD`] bytes, when no
//! line has arrived for [`QUIET`] (so a lone line is not held back, and
//! unrelated output written later does not join an old record), when it has
//! been open for [`MAX_HOLD`], or at EOF. Time the pump spends waiting for
//! the sink does not count as quiet time, and the pump reads what the pipe
//! holds before it lets the quiet time end a record. After a flush forced by the size
//! cap or the hold time, continuation lines that follow within [`QUIET`]
//! start a new record that keeps the old one's priority and rules. Trailing
//! blank lines of a multi-line record are dropped.
//!
//! The priority of a record is that of its first line: the Celery level
//! (see [`celery_priority`]), 4 for a Python warning, else 6 (info); but a
//! record without a level (no Celery header, no warning) that contains a
//! traceback gets 3 (error). An empty line never takes continuation lines.

mod classify;
mod framer;
mod grouper;
mod journald;
mod pump;
mod ratelimit;
mod ring;
mod sink;
#[cfg(test)]
mod test_util;
mod tracing_setup;

pub use classify::{celery_priority, priority_of};
pub use framer::{Line, LineFramer, MAX_RECORD};
pub use grouper::{Grouper, MAX_HOLD, QUIET, Record};
pub use journald::{JOURNAL_SOCKET, JournalSender, decode_entry, encode_field};
pub use pump::pump;
pub use ratelimit::{
    BURST_SECS, GroupLimit, LIMITED_PRIORITY, REPORT_EVERY, RateLimits, TokenBucket, thousands,
};
pub use ring::{LogStore, MAX_STORED_LINE, RING_BYTES, RING_LINES};
pub use sink::{SYSLOG_IDENTIFIER, Sink, Stream, WorkerMeta, encode_record, format_stderr};
pub use tracing_setup::{
    LogTarget, fd_is_journal_stream, init_tracing, journal_stream_matches, stderr_colours,
    stderr_is_journal, use_colours,
};

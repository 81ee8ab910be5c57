//! Worker output: line framing, Celery level → syslog priority, grouping of
//! multi-line records, the journald native-protocol sender, the stderr sink,
//! the per-instance ring buffers, and the daemon's own logging setup.
//!
//! # The path of a worker's output
//! ```text
//! pipe ──read──► LineFramer ──Line──► Grouper ──Record──► Sink (journald | stderr)
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

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UnixDatagram;
use tokio::net::unix::pipe::Receiver;

use crate::control::protocol::LogLine;

/// journald's native-protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Largest journal entry MESSAGE we produce; longer lines are split, and a
/// multi-line record is flushed before it would grow beyond this. 48 KiB is
/// journald's own line limit for stdout streams.
pub const MAX_RECORD: usize = 48 * 1024;
/// How long an open record waits for continuation lines.
pub const QUIET: Duration = Duration::from_millis(100);
/// Longest time a record is held open while continuation lines keep coming.
pub const MAX_HOLD: Duration = Duration::from_secs(1);
/// Lines kept per instance in the ring buffer.
pub const RING_LINES: usize = 1000;
/// Text bytes kept per instance in the ring buffer: fewer than
/// [`RING_LINES`] lines are kept when they are long (a Raspberry Pi has
/// little memory; the journal has everything).
pub const RING_BYTES: usize = 512 * 1024;
/// Longest text of one line kept in the ring buffer (display only; the
/// journal gets everything).
pub const MAX_STORED_LINE: usize = 4 * 1024;
/// SYSLOG_IDENTIFIER of worker lines.
pub const SYSLOG_IDENTIFIER: &str = "clearify-worker";
/// Bytes read from a worker pipe at a time.
const READ_BUF: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Framing

/// One framed line (or chunk of an over-long line), without its terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub bytes: Vec<u8>,
    /// True for the second and later chunks of a line longer than the cap.
    pub continued: bool,
}

/// Splits a byte stream into lines on `\n`.
///
/// A `\r` before the `\n` is removed (other `\r` bytes are kept, one that
/// ends the stream too). A line
/// longer than `max` bytes is cut into chunks of `max` bytes (the last one
/// shorter); no byte is lost. A trailing line without `\n` is returned by
/// [`LineFramer::finish`].
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    max: usize,
    /// A chunk of the current line has already been emitted.
    in_long: bool,
}

impl Default for LineFramer {
    fn default() -> Self {
        LineFramer::new(MAX_RECORD)
    }
}

impl LineFramer {
    /// A framer with a maximum line (chunk) length of `max` bytes (≥ 1).
    pub fn new(max: usize) -> Self {
        LineFramer {
            buf: Vec::new(),
            max: max.max(1),
            in_long: false,
        }
    }

    /// Feeds bytes; returns the lines (and chunks) they complete.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.buf.extend_from_slice(&rest[..i]);
            rest = &rest[i + 1..];
            self.end_line(&mut out, true);
        }
        self.buf.extend_from_slice(rest);
        self.spill(&mut out);
        out
    }

    /// At EOF: returns the unterminated last line, if any.
    pub fn finish(&mut self) -> Vec<Line> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            // No `\n` follows: a final `\r` is output, not a terminator.
            self.end_line(&mut out, false);
        }
        self.in_long = false;
        out
    }

    /// Bytes held waiting for the end of a line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn emit_chunk(&mut self, out: &mut Vec<Line>, n: usize) {
        let rest = self.buf.split_off(n);
        let bytes = std::mem::replace(&mut self.buf, rest);
        out.push(Line {
            bytes,
            continued: self.in_long,
        });
        self.in_long = true;
    }

    /// Emits full chunks while more than `max` bytes are buffered, keeping
    /// a final `\r` that may belong to a `\r\n` still to come.
    fn spill(&mut self, out: &mut Vec<Line>) {
        while self.buf.len() > self.max
            && !(self.buf.len() == self.max + 1 && self.buf[self.max] == b'\r')
        {
            self.emit_chunk(out, self.max);
        }
    }

    /// Emits the buffered line; `newline`: it ended with a `\n` (so a
    /// `\r` before it is part of the terminator).
    fn end_line(&mut self, out: &mut Vec<Line>, newline: bool) {
        if newline && self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        while self.buf.len() > self.max {
            self.emit_chunk(out, self.max);
        }
        if !self.buf.is_empty() || !self.in_long {
            let bytes = std::mem::take(&mut self.buf);
            out.push(Line {
                bytes,
                continued: self.in_long,
            });
        }
        self.in_long = false;
    }
}

// ---------------------------------------------------------------------------
// Levels

/// Skips ANSI SGR/CSI escape sequences at the start of a line (Celery colours
/// its records when it thinks it writes to a terminal).
fn skip_ansi(mut s: &[u8]) -> &[u8] {
    while s.len() >= 2 && s[0] == 0x1b && s[1] == b'[' {
        match s[2..].iter().position(|b| (0x40..=0x7e).contains(b)) {
            Some(end) => s = &s[2 + end + 1..],
            None => return s,
        }
    }
    s
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The syslog priority of a Celery log header line, or `None` when the
/// line is not one.
///
/// Celery's default formats are `[%(asctime)s: %(levelname)s/%(processName)s]
/// %(message)s` and, for task loggers, the same prefix followed by
/// `%(task_name)s[%(task_id)s]: %(message)s`, e.g.
/// `[2024-05-01 12:00:00,123: ERROR/ForkPoolWorker-1] Task demo.fail[…] raised …`.
/// A header is `[`, an asctime starting with a digit, `: `, an upper-case
/// level name, `/`, a process name and `]`. Levels: CRITICAL and FATAL → 2,
/// ERROR → 3, WARNING/WARN → 4, INFO → 6, DEBUG → 7, any other upper-case
/// name → 6.
pub fn celery_priority(line: &[u8]) -> Option<u8> {
    let s = skip_ansi(line);
    if s.first() != Some(&b'[') {
        return None;
    }
    let head = &s[..s.len().min(256)];
    let close = head.iter().position(|&b| b == b']')?;
    let inner = &s[1..close];
    if !inner.first()?.is_ascii_digit() {
        return None;
    }
    let colon = find(inner, b": ")?;
    let after = &inner[colon + 2..];
    let slash = after.iter().position(|&b| b == b'/')?;
    let level = &after[..slash];
    if level.is_empty() || !level.iter().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    if slash + 1 >= after.len() {
        return None; // no process name
    }
    Some(match level {
        b"CRITICAL" | b"FATAL" => 2,
        b"ERROR" => 3,
        b"WARNING" | b"WARN" => 4,
        b"INFO" => 6,
        b"DEBUG" => 7,
        _ => 6,
    })
}

/// The priority of a single line: its Celery level, or 6 (info).
pub fn priority_of(line: &[u8]) -> u8 {
    celery_priority(line).unwrap_or(6)
}

const TRACEBACK: &[u8] = b"Traceback (most recent call last):";
const CHAIN_SENTENCES: [&[u8]; 2] = [
    b"During handling of the above exception, another exception occurred:",
    b"The above exception was the direct cause of the following exception:",
];

fn is_traceback_start(line: &[u8]) -> bool {
    line.starts_with(TRACEBACK)
}

fn is_indented(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// A Python warning as printed by `warnings.showwarning`:
/// `<file>:<lineno>: <Category>Warning: <message>`.
fn is_python_warning(line: &[u8]) -> bool {
    let mut from = 0;
    while let Some(p) = find(&line[from..], b": ") {
        let at = from + p;
        // `:<digits>` right before this ": "
        let before = &line[..at];
        let digits = before
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 && before.len() > digits && before[before.len() - digits - 1] == b':' {
            let rest = &line[at + 2..];
            let ident_len = rest
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'.')
                .count();
            let ident = &rest[..ident_len];
            if ident.ends_with(b"Warning") && rest.get(ident_len) == Some(&b':') {
                return true;
            }
        }
        from = at + 2;
    }
    false
}

// ---------------------------------------------------------------------------
// Grouping

/// One journal entry: a line, or several lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub message: Vec<u8>,
    /// syslog priority, 0 (emerg) … 7 (debug).
    pub priority: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Context {
    priority: u8,
    /// Absorbs every following non-header line (Celery record, Python warning).
    absorbing: bool,
    /// Contains a traceback (also absorbing).
    traceback: bool,
    /// The priority came from a level (Celery header or Python warning).
    explicit: bool,
}

#[derive(Debug)]
struct Open {
    message: Vec<u8>,
    lines: usize,
    ctx: Context,
    opened: Instant,
    last: Instant,
}

/// Groups lines into records; see the module documentation for the rule.
///
/// Pure: the caller passes the time. [`Grouper::push`] returns the record a
/// new line closed, [`Grouper::deadline`] says when to call
/// [`Grouper::poll`], and [`Grouper::flush`] ends the stream.
#[derive(Debug)]
pub struct Grouper {
    cap: usize,
    quiet: Duration,
    max_hold: Duration,
    open: Option<Open>,
    /// Context of a record flushed by the cap or the hold time, with the
    /// time of its last line: continuation lines within `quiet` keep it.
    carry: Option<(Context, Instant)>,
    /// Context of the last line's record, for chunks of an over-long line.
    last_ctx: Option<Context>,
}

impl Default for Grouper {
    fn default() -> Self {
        Grouper::new(MAX_RECORD, QUIET, MAX_HOLD)
    }
}

impl Grouper {
    /// `cap`: largest message in bytes; `quiet`: wait for continuation
    /// lines; `max_hold`: longest time a record stays open.
    pub fn new(cap: usize, quiet: Duration, max_hold: Duration) -> Self {
        Grouper {
            cap: cap.max(1),
            quiet,
            max_hold,
            open: None,
            carry: None,
            last_ctx: None,
        }
    }

    /// Adds a line at time `now`; returns the record it closed, if any.
    /// A line is never longer than the cap when it comes from a
    /// [`LineFramer`] with the same limit; a longer one becomes a record of
    /// its own.
    pub fn push(&mut self, line: Line, now: Instant) -> Option<Record> {
        let header = if line.continued {
            None
        } else {
            celery_priority(&line.bytes)
        };
        let tb_start = header.is_none() && is_traceback_start(&line.bytes);
        let context = if line.continued {
            self.open.as_ref().map(|o| o.ctx).or(self.last_ctx)
        } else {
            // A record of blank lines only is continued by nothing.
            let open = self.open.as_ref().filter(|o| !o.message.is_empty());
            open.map(|o| o.ctx).or_else(|| {
                self.carry
                    .filter(|(_, t)| now.saturating_duration_since(*t) < self.quiet)
                    .map(|(c, _)| c)
            })
        };
        let continues = match context {
            None => false,
            Some(ctx) => {
                line.continued
                    || (header.is_none()
                        && (ctx.absorbing
                            || ctx.traceback
                            || is_indented(&line.bytes)
                            || tb_start
                            || CHAIN_SENTENCES.iter().any(|s| line.bytes.starts_with(s))))
            }
        };

        if let (true, Some(mut ctx)) = (continues, context) {
            if tb_start && !ctx.explicit {
                // A traceback in output without a level is an error.
                ctx.priority = 3;
            }
            ctx.traceback |= tb_start;
            if let Some(open) = self.open.as_mut()
                && !line.continued
                && open.message.len() + 1 + line.bytes.len() <= self.cap
            {
                open.message.push(b'\n');
                open.message.extend_from_slice(&line.bytes);
                open.lines += 1;
                open.ctx = ctx;
                open.last = now;
                self.last_ctx = Some(ctx);
                return None;
            }
            let flushed = self.take();
            self.carry = Some((ctx, now));
            self.start(line.bytes, ctx, now);
            return flushed;
        }

        let flushed = self.take();
        self.carry = None;
        let warning = header.is_none() && !tb_start && is_python_warning(&line.bytes);
        let priority = match header {
            Some(p) => p,
            None if tb_start => 3,
            None if warning => 4,
            None => 6,
        };
        let ctx = Context {
            priority,
            // Celery records and Python warnings take all following lines.
            absorbing: header.is_some() || warning,
            traceback: tb_start,
            explicit: header.is_some() || warning,
        };
        self.start(line.bytes, ctx, now);
        flushed
    }

    /// When [`Grouper::poll`] should next be called, if a record is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.open
            .as_ref()
            .map(|o| (o.last + self.quiet).min(o.opened + self.max_hold))
    }

    /// Flushes the open record if its quiet time or hold time has passed.
    pub fn poll(&mut self, now: Instant) -> Option<Record> {
        let open = self.open.as_ref()?;
        let quiet_over = now >= open.last + self.quiet;
        let hold_over = now >= open.opened + self.max_hold;
        if !quiet_over && !hold_over {
            return None;
        }
        self.carry = if quiet_over {
            None
        } else {
            Some((open.ctx, open.last))
        };
        self.take()
    }

    /// Moves the open record's clocks forward by `by`: time the caller spent
    /// waiting for a sink is not time in which the worker was quiet.
    pub fn shift(&mut self, by: Duration) {
        if let Some(open) = self.open.as_mut() {
            open.last += by;
            open.opened += by;
        }
        if let Some((_, t)) = self.carry.as_mut() {
            *t += by;
        }
    }

    /// Flushes the open record unconditionally (EOF).
    pub fn flush(&mut self) -> Option<Record> {
        self.carry = None;
        self.take()
    }

    fn start(&mut self, bytes: Vec<u8>, ctx: Context, now: Instant) {
        self.last_ctx = Some(ctx);
        self.open = Some(Open {
            message: bytes,
            lines: 1,
            ctx,
            opened: now,
            last: now,
        });
    }

    fn take(&mut self) -> Option<Record> {
        let open = self.open.take()?;
        let mut message = open.message;
        if open.lines > 1 {
            while message.last() == Some(&b'\n') {
                message.pop();
            }
        }
        Some(Record {
            message,
            priority: open.ctx.priority,
        })
    }
}

// ---------------------------------------------------------------------------
// journald native protocol

/// Appends one field in journald's native format: `KEY=value\n` when the
/// value has no `\n`, else `KEY\n<u64 LE length><value>\n`. Values are bytes
/// and kept as they are (invalid UTF-8 included).
pub fn encode_field(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// Parses an entry in journald's native format back into its fields, in
/// order; `None` when it is malformed. (journald's side of [`encode_field`];
/// used by the tests and by anyone who wants to check an entry.)
pub fn decode_entry(mut data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let nl = data.iter().position(|&b| b == b'\n')?;
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = std::str::from_utf8(&line[..eq]).ok()?;
            fields.push((key.to_owned(), line[eq + 1..].to_vec()));
            data = &data[nl + 1..];
        } else {
            let key = std::str::from_utf8(line).ok()?;
            let rest = &data[nl + 1..];
            let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let value = rest.get(8..8usize.checked_add(len)?)?;
            if rest.get(8 + len) != Some(&b'\n') {
                return None;
            }
            fields.push((key.to_owned(), value.to_vec()));
            data = &rest[8 + len + 1..];
        }
    }
    Some(fields)
}

/// Sends entries to journald over its native datagram socket.
///
/// The socket is connected lazily on the first send and reconnected once
/// when journald went away (restart). Sends wait (asynchronously) while the
/// socket is full: that is the backpressure. An entry too large for one
/// datagram goes in a sealed memfd passed with SCM_RIGHTS, as
/// `sd_journal_send` does.
#[derive(Debug)]
pub struct JournalSender {
    path: PathBuf,
    sock: Mutex<Option<Arc<UnixDatagram>>>,
    failing: AtomicBool,
}

impl Default for JournalSender {
    fn default() -> Self {
        JournalSender::new()
    }
}

impl JournalSender {
    /// A sender to [`JOURNAL_SOCKET`].
    pub fn new() -> Self {
        JournalSender::with_path(JOURNAL_SOCKET)
    }

    /// A sender to another socket (tests).
    pub fn with_path(path: impl Into<PathBuf>) -> Self {
        JournalSender {
            path: path.into(),
            sock: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn socket(&self) -> io::Result<Arc<UnixDatagram>> {
        let mut guard = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let s = UnixDatagram::unbound()?;
        s.connect(&self.path)?;
        let s = Arc::new(s);
        *guard = Some(s.clone());
        Ok(s)
    }

    fn reset(&self) {
        *self.sock.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Sends one encoded entry (see [`encode_field`]).
    pub async fn send_entry(&self, entry: &[u8]) -> io::Result<()> {
        let mut retried = false;
        loop {
            let sock = self.socket()?;
            match sock.send(entry).await {
                Ok(n) if n == entry.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short datagram write: {n} of {} bytes", entry.len()),
                    ));
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                    return send_memfd(&sock, entry).await;
                }
                Err(e)
                    if !retried
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::ECONNREFUSED | libc::ENOTCONN | libc::ECONNRESET)
                        ) =>
                {
                    retried = true;
                    self.reset();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Encodes and sends the fields as one entry.
    pub async fn send_fields(&self, fields: &[(&str, &[u8])]) -> io::Result<()> {
        let mut entry =
            Vec::with_capacity(fields.iter().map(|(k, v)| k.len() + v.len() + 10).sum());
        for (k, v) in fields {
            encode_field(&mut entry, k, v);
        }
        self.send_entry(&entry).await
    }
}

/// Writes the entry to a sealed memfd and passes the fd to journald.
async fn send_memfd(sock: &UnixDatagram, entry: &[u8]) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

    let fd = memfd_create(
        c"clearify-journal",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(entry)?;
    // journald maps the file; rewinding also lets a plain reader read it.
    io::Seek::rewind(&mut file)?;
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    let raw = [file.as_raw_fd()];
    sock.async_io(tokio::io::Interest::WRITABLE, || {
        sendmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &[],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Sinks

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

// ---------------------------------------------------------------------------
// Ring buffers

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

// ---------------------------------------------------------------------------
// The pump

thread_local! {
    /// One read buffer for every pump of this (current-thread) runtime: a
    /// pump borrows it only between a pipe's readiness and `try_read()`,
    /// never across an await, so an idle worker costs no read buffer.
    static SHARED_READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_BUF]);
}

/// One pipe of a worker, with the framing and grouping state of its stream.
struct Pipe {
    /// `None` once the pipe reached EOF or failed.
    rx: Option<Receiver>,
    stream: Stream,
    framer: LineFramer,
    grouper: Grouper,
}

/// What one read from a ready pipe gave.
enum Read {
    Lines(Vec<Line>),
    /// Nothing after all (spurious readiness, EINTR).
    Again,
    /// EOF or a read error: the stream is over.
    End,
}

impl Pipe {
    fn new(rx: Receiver, stream: Stream) -> Self {
        Pipe {
            rx: Some(rx),
            stream,
            framer: LineFramer::new(MAX_RECORD),
            grouper: Grouper::default(),
        }
    }

    /// Reads what the pipe holds into the shared buffer and frames it.
    fn read(&mut self, meta: &WorkerMeta) -> Read {
        let Some(rx) = &self.rx else {
            return Read::End;
        };
        let framer = &mut self.framer;
        let r = SHARED_READ_BUF.with(|b| {
            let mut b = b.borrow_mut();
            match rx.try_read(&mut b[..]) {
                Ok(0) => Ok(None),
                Ok(n) => Ok(Some(framer.feed(&b[..n]))),
                Err(e) => Err(e),
            }
        });
        match r {
            Ok(None) => Read::End,
            Ok(Some(lines)) => Read::Lines(lines),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Read::Again
            }
            Err(e) => {
                tracing::warn!(instance = %meta.instance, stream = self.stream.as_str(), error = %e, "reading worker output failed");
                Read::End
            }
        }
    }
}

/// Readiness of a pipe in the current round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    No,
    Yes,
    Failed,
}

/// The state of one instance's pump: both pipes and where their lines go.
///
/// A round starts when a pipe is ready or the timer fired. It reads each
/// ready pipe once, then lets the quiet or hold time end the record of a
/// pipe that was not ready. [`Pump::next_record`] does the work of a round
/// synchronously until a record has to be written; the caller writes it and
/// calls again. So there is one await for writing and one for waiting.
struct Pump {
    pipes: [Pipe; 2],
    meta: Arc<WorkerMeta>,
    sink: Arc<Sink>,
    store: LogStore,
    ready: [Ready; 2],
    /// Position in the round: 0, 1 read pipe 0, 1; 2, 3 poll the grouping
    /// deadline of pipe 0, 1; 4 the round is over.
    step: u8,
    /// Lines of pipe `.0` not yet grouped (a record they closed is being
    /// written). With `.2` set, they are the last of the stream and its
    /// grouper is flushed after them.
    backlog: Option<(usize, std::vec::IntoIter<Line>, bool)>,
}

const ROUND_OVER: u8 = 4;

impl Pump {
    /// Advances the round until a record of a pipe is to be written;
    /// `None` when the round is over.
    fn next_record(&mut self) -> Option<(usize, Record)> {
        loop {
            if let Some((i, lines, last)) = &mut self.backlog {
                let (i, last) = (*i, *last);
                let p = &mut self.pipes[i];
                for line in lines.by_ref() {
                    self.store.push(&self.meta, p.stream, &line.bytes);
                    if let Some(rec) = p.grouper.push(line, Instant::now()) {
                        return Some((i, rec));
                    }
                }
                self.backlog = None;
                if last && let Some(rec) = p.grouper.flush() {
                    return Some((i, rec));
                }
            }
            let step = self.step;
            match step {
                0 | 1 => {
                    let i = usize::from(step);
                    self.step += 1;
                    match self.ready[i] {
                        Ready::No => {}
                        Ready::Failed => self.end(i),
                        Ready::Yes => match self.pipes[i].read(&self.meta) {
                            Read::Again => {}
                            Read::End => self.end(i),
                            Read::Lines(lines) => {
                                self.backlog = Some((i, lines.into_iter(), false))
                            }
                        },
                    }
                }
                2 | 3 => {
                    let i = usize::from(step - 2);
                    self.step += 1;
                    // The quiet (or hold) time ends a record only of a pipe
                    // that had nothing to read.
                    if self.ready[i] == Ready::No
                        && let Some(rec) = self.pipes[i].grouper.poll(Instant::now())
                    {
                        return Some((i, rec));
                    }
                }
                _ => return None,
            }
        }
    }

    /// Pipe `i` is at EOF (or failed): closes it; its last line and its
    /// open record follow.
    fn end(&mut self, i: usize) {
        let p = &mut self.pipes[i];
        p.rx = None;
        self.backlog = Some((i, p.framer.finish().into_iter(), true));
    }

    /// The pump's future. Not an `async fn`: that would keep the state
    /// twice (as the argument and as the body's local); the `async move`
    /// block uses the captured state in place.
    fn run(self) -> impl Future<Output = ()> + Send + 'static {
        let mut this = self;
        async move {
            let mut timer = None;
            loop {
                while let Some((i, record)) = this.next_record() {
                    // Awaiting the sink is the backpressure. Boxed: the
                    // sink's future (journald socket readiness, memfd path)
                    // is larger than the rest of the pump and exists only
                    // while a record is written; an idle pump should not
                    // carry room for it.
                    let started = Instant::now();
                    let stream = this.pipes[i].stream;
                    Box::pin(this.sink.write(&this.meta, stream, &record)).await;
                    // Time spent waiting is time in which no pipe was read:
                    // not quiet time for either stream.
                    let waited = started.elapsed();
                    for p in &mut this.pipes {
                        p.grouper.shift(waited);
                    }
                }
                if this.pipes.iter().all(|p| p.rx.is_none()) {
                    return;
                }
                let deadline = this.pipes.iter().filter_map(|p| p.grouper.deadline()).min();
                arm(&mut timer, deadline);
                let pipes = &this.pipes;
                this.ready = std::future::poll_fn(|cx| {
                    let mut ready = [Ready::No; 2];
                    for (r, p) in ready.iter_mut().zip(pipes) {
                        if let Some(rx) = &p.rx
                            && let Poll::Ready(res) = rx.poll_read_ready(cx)
                        {
                            *r = if res.is_ok() {
                                Ready::Yes
                            } else {
                                Ready::Failed
                            };
                        }
                    }
                    let fired = timer
                        .as_mut()
                        .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                    if fired || ready != [Ready::No; 2] {
                        Poll::Ready(ready)
                    } else {
                        Poll::Pending
                    }
                })
                .await;
                this.step = 0;
            }
        }
    }
}

/// Arms `timer` for `deadline`: a timer exists only while a record is open.
fn arm(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>, deadline: Option<Instant>) {
    let Some(d) = deadline.map(tokio::time::Instant::from_std) else {
        *timer = None;
        return;
    };
    match timer {
        Some(t) if t.deadline() == d && !t.is_elapsed() => {}
        Some(t) => t.as_mut().reset(d),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(d))),
    }
}

/// Reads both pipes of a worker instance until both reached EOF (or failed):
/// frames lines, groups them into records, writes each record to the sink
/// (awaiting it: backpressure) and keeps every line in the store, tagged
/// with its stream. Each stream has its own framing and grouping; EOF of
/// one does not stop the other. A read error ends a stream like EOF does.
///
/// One task per instance, without a read buffer of its own (see
/// [`SHARED_READ_BUF`]) and with one timer, for the earlier of the two
/// streams' grouping deadlines, that exists only while a record is open.
/// A pipe that has something to read is read before its quiet time may end
/// a record; each round reads at most one buffer from each ready pipe, so
/// a flood on one stream does not starve the other.
pub fn pump(
    stdout: Receiver,
    stderr: Receiver,
    meta: Arc<WorkerMeta>,
    sink: Arc<Sink>,
    store: LogStore,
) -> impl Future<Output = ()> + Send + 'static {
    // Not an async fn: its future would keep room for the arguments too.
    Pump {
        pipes: [
            Pipe::new(stdout, Stream::Stdout),
            Pipe::new(stderr, Stream::Stderr),
        ],
        meta,
        sink,
        store,
        ready: [Ready::No; 2],
        step: ROUND_OVER,
        backlog: None,
    }
    .run()
}

// ---------------------------------------------------------------------------
// The daemon's own logging

/// Where the daemon's own logs go (`--log-target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogTarget {
    /// journald when stderr is the journal (under systemd), else stderr.
    #[default]
    Auto,
    Journal,
    Stderr,
}

impl FromStr for LogTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LogTarget::Auto),
            "journal" => Ok(LogTarget::Journal),
            "stderr" => Ok(LogTarget::Stderr),
            other => Err(format!(
                "unknown log target {other:?}: expected auto, journal or stderr"
            )),
        }
    }
}

/// Whether `JOURNAL_STREAM` (`<dev>:<inode>`, set by systemd) names the
/// file that fd 2 is, i.e. our stderr is connected to journald.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    fd_is_journal_stream(io::stderr().as_fd(), &value.to_string_lossy())
}

/// Whether the file `fd` refers to is the one a `JOURNAL_STREAM` value
/// names.
pub fn fd_is_journal_stream(fd: std::os::fd::BorrowedFd<'_>, journal_stream: &str) -> bool {
    match nix::sys::stat::fstat(fd) {
        Ok(st) => journal_stream_matches(journal_stream, st.st_dev, st.st_ino),
        Err(_) => false,
    }
}

/// `JOURNAL_STREAM` parsing: `"<dev>:<inode>"` in decimal.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
}

/// Whether the daemon's stderr log may use colours: only on a terminal,
/// and not when `NO_COLOR` is set to anything non-empty (no-color.org).
pub fn stderr_colours() -> bool {
    use std::io::IsTerminal;
    use_colours(
        io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// [`stderr_colours`] for given facts.
pub fn use_colours(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Sets up the daemon's tracing subscriber: journald (tracing-journald,
/// SYSLOG_IDENTIFIER=clearify-workerd, event fields as `CLEARIFY_<NAME>`, so
/// an `instance = …` field lines up with the worker lines'
/// `CLEARIFY_INSTANCE`) or human-readable text on stderr (coloured only
/// per [`stderr_colours`]).
/// The filter comes from `RUST_LOG`, default `info`. `Auto` falls back to
/// stderr when the journal socket cannot be opened; `Journal` fails then.
pub fn init_tracing(target: LogTarget) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;

    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = match target {
        LogTarget::Stderr => None,
        LogTarget::Auto if !stderr_is_journal() => None,
        LogTarget::Auto => tracing_journald::layer().ok(),
        LogTarget::Journal => Some(
            tracing_journald::layer()
                .map_err(|e| anyhow::anyhow!("cannot open the journald socket: {e}"))?,
        ),
    };
    match journal {
        Some(layer) => tracing_subscriber::registry()
            .with(filter())
            .with(
                layer
                    .with_syslog_identifier("clearify-workerd".to_owned())
                    .with_field_prefix(Some("CLEARIFY".to_owned())),
            )
            .try_init()?,
        None => tracing_subscriber::registry()
            .with(filter())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(stderr_colours())
                    .with_writer(io::stderr),
            )
            .try_init()?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// stderr of a real Celery 5.7.0 worker (Python 3.11) running as root,
    /// with a task that logs a chained traceback and one that prints.
    pub(crate) const CELERY_STDERR: &str = "\
/tmp/jv/lib/python3.11/site-packages/celery/platforms.py:893: SecurityWarning: You're running the worker with superuser privileges: this is
absolutely not recommended!

Please specify a different user using the --uid option.

User information: uid=0 euid=0 gid=0 egid=0

  _warn_or_raise_security_error(egid, euid, gid, uid,
[2026-11-28 19:20:59,058: INFO/MainProcess] Connected to redis://:**@127.0.0.1:6399/0
[2026-11-28 19:21:00,142: INFO/MainProcess] t@x ready.
[2026-11-28 19:21:06,098: INFO/ForkPoolWorker-1] Task capp.add[8f94cb9d-86ef-42c1-a057-e4732d53c7bf] succeeded in 0.010311247000004187s: 3
[2026-11-28 19:21:06,111: ERROR/ForkPoolWorker-1] Task capp.fail[56d4ff6d-ec52-44cf-ad21-0a3797ec32c6] raised unexpected: ValueError('boom\\nsecond line of message')
Traceback (most recent call last):
  File \"/tmp/jcel/capp.py\", line 10, in fail
    {}[\"x\"]
    ~~^^^^^
KeyError: 'x'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File \"/tmp/jv/lib/python3.11/site-packages/celery/app/trace.py\", line 564, in trace_task
    R = retval = fun(*args, **kwargs)
                 ^^^^^^^^^^^^^^^^^^^^
  File \"/tmp/jcel/capp.py\", line 12, in fail
    raise ValueError(\"boom\\nsecond line of message\") from e
ValueError: boom
second line of message
[2026-11-28 19:21:06,120: WARNING/ForkPoolWorker-1] printed from task
[2026-11-28 19:21:06,120: WARNING/ForkPoolWorker-1] multi
line warning
[2026-11-28 19:21:06,122: INFO/ForkPoolWorker-1] Task capp.shout[cee2f182-7206-4dd3-b5b2-e5ea6fcb46e9] succeeded in 0.0022276759999613205s: None
";

    fn lines(data: &[u8]) -> Vec<Line> {
        let mut f = LineFramer::new(MAX_RECORD);
        let mut out = f.feed(data);
        out.extend(f.finish());
        out
    }

    fn group_all(data: &[u8]) -> Vec<Record> {
        let t = Instant::now();
        let mut g = Grouper::default();
        let mut out: Vec<Record> = lines(data)
            .into_iter()
            .filter_map(|l| g.push(l, t))
            .collect();
        out.extend(g.flush());
        out
    }

    fn line(s: &str) -> Line {
        Line {
            bytes: s.as_bytes().to_vec(),
            continued: false,
        }
    }

    fn text(r: &Record) -> &str {
        std::str::from_utf8(&r.message).unwrap()
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colours(true, None));
        assert!(use_colours(true, Some(OsStr::new(""))));
        assert!(!use_colours(true, Some(OsStr::new("1"))));
        assert!(!use_colours(false, None));
        assert!(!use_colours(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn framing_splits_lines_handles_crlf_and_flushes_the_tail() {
        let mut f = LineFramer::new(100);
        let got = f.feed(b"one\r\ntwo\nthr");
        assert_eq!(got, vec![line("one"), line("two")]);
        assert_eq!(f.pending(), 3);
        assert_eq!(f.feed(b"ee\r"), vec![]);
        assert_eq!(
            f.feed(b"\n\nmid\rline\n"),
            vec![line("three"), line(""), line("mid\rline")]
        );
        assert_eq!(f.feed(b"tail"), vec![]);
        assert_eq!(f.finish(), vec![line("tail")]);
        assert_eq!(f.finish(), vec![]);
    }

    #[test]
    fn framing_splits_over_long_lines_without_losing_bytes() {
        let mut f = LineFramer::new(4);
        // exactly max, max + 1, 2 * max, and max followed by \r\n split across feeds
        let mut got = f.feed(b"abcd\nabcde\nabcdefgh\nwxyz\r");
        got.extend(f.feed(b"\nend"));
        got.extend(f.finish());
        let want = [
            ("abcd", false),
            ("abcd", false),
            ("e", true),
            ("abcd", false),
            ("efgh", true),
            ("wxyz", false),
            ("end", false),
        ];
        let want: Vec<Line> = want
            .iter()
            .map(|(s, c)| Line {
                bytes: s.as_bytes().to_vec(),
                continued: *c,
            })
            .collect();
        assert_eq!(got, want);
    }

    /// Found by the property test in tests/framing.rs: a `\r` that ends
    /// the stream is not before a `\n`, so it is output, not a terminator.
    #[test]
    fn framing_keeps_a_carriage_return_at_the_end_of_the_stream() {
        let mut f = LineFramer::new(100);
        assert_eq!(f.feed(b"50%\r"), vec![]);
        assert_eq!(f.finish(), vec![line("50%\r")]);
        assert_eq!(lines(b"\r"), vec![line("\r")]);
        // held back by a full chunk, in case a \n follows: kept at EOF too
        let mut f = LineFramer::new(2);
        assert_eq!(f.feed(b"ab\r"), vec![]);
        let tail = f.finish();
        assert_eq!(tail.concat_bytes(), b"ab\r");
        assert_eq!(tail.len(), 2);
        assert!(tail[1].continued);
    }

    #[test]
    fn framing_a_one_megabyte_line_gives_48k_chunks_fed_in_pieces() {
        let big: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = big.clone();
        input.extend_from_slice(b"\nnext\n");
        let mut f = LineFramer::new(MAX_RECORD);
        let mut got = Vec::new();
        for piece in input.chunks(7000) {
            got.extend(f.feed(piece));
        }
        got.extend(f.finish());
        assert_eq!(got.len(), 1024 * 1024 / MAX_RECORD + 1 + 1);
        let (chunks, rest) = got.split_at(got.len() - 1);
        assert_eq!(rest, &[line("next")]);
        assert!(!chunks[0].continued && chunks[1..].iter().all(|c| c.continued));
        assert!(chunks.iter().all(|c| c.bytes.len() <= MAX_RECORD));
        assert_eq!(chunks.concat_bytes(), big);
    }

    trait ConcatBytes {
        fn concat_bytes(&self) -> Vec<u8>;
    }
    impl ConcatBytes for [Line] {
        fn concat_bytes(&self) -> Vec<u8> {
            self.iter().flat_map(|l| l.bytes.iter().copied()).collect()
        }
    }

    #[test]
    fn framing_keeps_binary_garbage() {
        let garbage: Vec<u8> = (0u8..=255).filter(|b| *b != b'\n').collect();
        let mut input = garbage.clone();
        input.extend_from_slice(b"\n\xff\xfe\x00\n");
        let got = lines(&input);
        assert_eq!(got.len(), 2);
        // only a \r right before the \n is a terminator; here \r (13) sits mid-line
        assert_eq!(got[0].bytes, garbage);
        assert_eq!(got[1].bytes, b"\xff\xfe\x00");
    }

    #[test]
    fn celery_levels_map_to_syslog_priorities() {
        let p = |s: &str| celery_priority(s.as_bytes());
        assert_eq!(
            p("[2024-05-01 12:00:00,123: ERROR/MainProcess] message"),
            Some(3)
        );
        assert_eq!(
            p("[2024-05-01 12:00:00,123: WARNING/ForkPoolWorker-1] text"),
            Some(4)
        );
        assert_eq!(
            p(
                "[2024-05-01 12:00:00,123: INFO/ForkPoolWorker-2] Task demo.add[0c1b] succeeded in 0.01s: 3"
            ),
            Some(6)
        );
        assert_eq!(
            p("[2024-05-01 12:00:00,123: DEBUG/MainProcess] | Worker: Preparing bootsteps."),
            Some(7)
        );
        assert_eq!(
            p("[2024-05-01 12:00:00,123: CRITICAL/MainProcess] Unrecoverable error"),
            Some(2)
        );
        assert_eq!(p("[2024-05-01 12:00:00,123: FATAL/MainProcess] x"), Some(2));
        assert_eq!(
            p("[2024-05-01 12:00:00,123: NOTICE/MainProcess] x"),
            Some(6)
        );
        assert_eq!(
            p("\x1b[1;31m[2024-05-01 12:00:00,123: ERROR/MainProcess] coloured\x1b[0m"),
            Some(3)
        );
        for not_header in [
            "plain text",
            "",
            "[tasks]",
            " -------------- [queues]",
            "[2024-05-01 12:00:00,123] no level",
            "[config: ERROR/x] no timestamp",
            "[2024-05-01 12:00:00,123: error/MainProcess] lower case",
            "[2024-05-01 12:00:00,123: ERROR/] no process",
            "x [2024-05-01 12:00:00,123: ERROR/MainProcess] not at start",
            "Traceback (most recent call last):",
        ] {
            assert_eq!(p(not_header), None, "{not_header:?}");
            assert_eq!(priority_of(not_header.as_bytes()), 6);
        }
        assert_eq!(
            priority_of(b"[2024-05-01 12:00:00,123: ERROR/MainProcess] m"),
            3
        );
    }

    #[test]
    fn python_warning_headers_are_recognised() {
        assert!(is_python_warning(
            b"/x/celery/platforms.py:893: SecurityWarning: You're running the worker"
        ));
        assert!(is_python_warning(b"app.py:1: DeprecationWarning: old"));
        assert!(!is_python_warning(b"ratio 1:2: SomeWarning fine"));
        assert!(!is_python_warning(b"app.py:1: KeyError: 'x'"));
    }

    #[test]
    fn a_real_celery_traceback_is_one_record() {
        let recs = group_all(CELERY_STDERR.as_bytes());
        let summary: Vec<(u8, &str)> = recs
            .iter()
            .map(|r| (r.priority, text(r).lines().next().unwrap_or("")))
            .collect();
        assert_eq!(recs.len(), 8, "{summary:#?}");
        // the warning with its unindented message lines and its source line
        assert_eq!(recs[0].priority, 4);
        assert!(text(&recs[0]).starts_with(
            "/tmp/jv/lib/python3.11/site-packages/celery/platforms.py:893: SecurityWarning:"
        ));
        assert!(
            text(&recs[0]).ends_with("\n  _warn_or_raise_security_error(egid, euid, gid, uid,")
        );
        assert_eq!(text(&recs[0]).lines().count(), 8);
        assert_eq!(recs[1].priority, 6);
        assert!(text(&recs[1]).ends_with("Connected to redis://:**@127.0.0.1:6399/0"));
        // the ERROR record holds both chained tracebacks and the 2-line message
        let err = &recs[4];
        assert_eq!(err.priority, 3);
        let t = text(err);
        assert!(t.starts_with("[2026-11-28 19:21:06,111: ERROR/ForkPoolWorker-1] Task capp.fail["));
        assert_eq!(t.matches("Traceback (most recent call last):").count(), 2);
        assert!(t.contains("\nKeyError: 'x'\n\nThe above exception was the direct cause"));
        assert!(t.ends_with("\nValueError: boom\nsecond line of message"));
        assert_eq!(t.lines().count(), 17);
        assert_eq!(
            (recs[5].priority, text(&recs[5])),
            (
                4,
                "[2026-11-28 19:21:06,120: WARNING/ForkPoolWorker-1] printed from task"
            )
        );
        assert_eq!(recs[6].priority, 4);
        assert!(text(&recs[6]).ends_with("] multi\nline warning"));
        assert_eq!(recs[7].priority, 6);
        // every byte is somewhere: records joined give the input back
        let joined: Vec<u8> = recs
            .iter()
            .map(|r| r.message.clone())
            .collect::<Vec<_>>()
            .join(&b'\n');
        assert_eq!(String::from_utf8(joined).unwrap() + "\n", CELERY_STDERR);
    }

    #[test]
    fn plain_output_groups_only_indented_lines_and_tracebacks() {
        let input = "hello\nworld\n  indented belongs to world\n\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nZeroDivisionError: division by zero\nnote: added\n[2024-05-01 12:00:00,123: INFO/MainProcess] next\n";
        let recs = group_all(input.as_bytes());
        let got: Vec<(u8, &str)> = recs.iter().map(|r| (r.priority, text(r))).collect();
        assert_eq!(
            got,
            vec![
                (6, "hello"),
                (6, "world\n  indented belongs to world"),
                (6, ""),
                (
                    3,
                    "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nZeroDivisionError: division by zero\nnote: added"
                ),
                (6, "[2024-05-01 12:00:00,123: INFO/MainProcess] next"),
            ]
        );
        let input = "Exception in thread Thread-1 (work):\nTraceback (most recent call last):\n  File \"t.py\", line 3, in work\nRuntimeError: x\n";
        let recs = group_all(input.as_bytes());
        assert_eq!(recs.len(), 1);
        assert_eq!((recs[0].priority, text(&recs[0])), (3, input.trim_end()));
    }

    #[test]
    fn quiet_time_flushes_a_lone_line_and_separates_later_output() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut g = Grouper::default();
        assert_eq!(
            g.push(
                line("[2024-05-01 12:00:00,123: ERROR/MainProcess] oops"),
                t0
            ),
            None
        );
        assert_eq!(g.deadline(), Some(ms(100)));
        assert_eq!(g.poll(ms(99)), None);
        assert_eq!(
            g.push(line("Traceback (most recent call last):"), ms(50)),
            None
        );
        assert_eq!(g.deadline(), Some(ms(150)));
        assert_eq!(g.poll(ms(149)), None);
        let r = g.poll(ms(150)).expect("flushed after the quiet time");
        assert_eq!(r.priority, 3);
        assert_eq!(text(&r).lines().count(), 2);
        assert_eq!(g.deadline(), None);
        // after the quiet flush, an unindented line is a record of its own
        assert_eq!(g.push(line("unrelated"), ms(400)), None);
        let r = g.flush().unwrap();
        assert_eq!((r.priority, text(&r)), (6, "unrelated"));
        assert_eq!(g.flush(), None);
    }

    #[test]
    fn time_spent_waiting_for_the_sink_is_not_quiet_time() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut g = Grouper::default();
        g.push(
            line("[2024-05-01 12:00:00,123: ERROR/MainProcess] oops"),
            t0,
        );
        g.shift(Duration::from_millis(5000));
        assert_eq!(g.poll(ms(4000)), None);
        assert_eq!(
            g.push(line("Traceback (most recent call last):"), ms(4000)),
            None
        );
        assert_eq!(
            g.flush()
                .unwrap()
                .message
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            1
        );
    }

    #[test]
    fn max_hold_and_cap_flush_with_the_priority_carried_on() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut g = Grouper::new(30, Duration::from_millis(100), Duration::from_millis(1000));
        assert_eq!(g.push(line("[2024-05-01 1: ERROR/P] e"), t0), None); // 24 bytes
        let r = g
            .push(line("continuation xx"), ms(10))
            .expect("cap reached");
        assert_eq!((r.priority, text(&r)), (3, "[2024-05-01 1: ERROR/P] e"));
        // lines keep arriving every 90 ms: held at most max_hold
        let mut flushed = Vec::new();
        for i in 1..=12u64 {
            let now = ms(10 + 90 * i);
            if let Some(r) = g.poll(now) {
                flushed.push(r);
            }
            if let Some(r) = g.push(line("x"), now) {
                flushed.push(r);
            }
        }
        assert!(flushed.iter().all(|r| r.priority == 3), "{flushed:?}");
        assert!(flushed.iter().all(|r| r.message.len() <= 30));
        assert!(!flushed.is_empty());
        // the hold time bounds the deadline
        let d = g.deadline().unwrap();
        assert!(d <= ms(10 + 90 * 12 + 100));
    }

    #[test]
    fn chunks_of_a_long_line_are_entries_with_the_line_priority() {
        let mut head = b"[2024-05-01 12:00:00,123: WARNING/MainProcess] ".to_vec();
        head.extend(std::iter::repeat_n(b'z', 100));
        let mut f = LineFramer::new(60);
        let mut g = Grouper::new(60, QUIET, MAX_HOLD);
        let t = Instant::now();
        let mut input = head.clone();
        input.extend_from_slice(b"\n  indented\n");
        let mut recs: Vec<Record> = f
            .feed(&input)
            .into_iter()
            .filter_map(|l| g.push(l, t))
            .collect();
        recs.extend(g.flush());
        // 147 bytes: chunks of 60, 60 and 27, the indented line joins the last
        assert_eq!(recs.len(), 3, "{recs:?}");
        assert!(recs.iter().all(|r| r.priority == 4));
        assert_eq!(recs[2].message.len(), 27 + 1 + 10);
        let mut all: Vec<u8> = recs[..2].iter().flat_map(|r| r.message.clone()).collect();
        all.extend_from_slice(&recs[2].message[..27]);
        assert_eq!(all, head);
        assert!(recs[2].message.ends_with(
            b"z
  indented"
        ));
    }

    #[test]
    fn fields_are_encoded_in_the_native_protocol() {
        let mut e = Vec::new();
        encode_field(&mut e, "PRIORITY", b"3");
        encode_field(&mut e, "MESSAGE", b"a\nb\xff");
        let mut want = b"PRIORITY=3\nMESSAGE\n".to_vec();
        want.extend_from_slice(&4u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\xff\n");
        assert_eq!(e, want);
        let back = decode_entry(&e).unwrap();
        assert_eq!(
            back,
            vec![
                ("PRIORITY".into(), b"3".to_vec()),
                ("MESSAGE".into(), b"a\nb\xff".to_vec())
            ]
        );
        assert_eq!(
            decode_entry(b"MESSAGE\n\x05\x00\x00\x00\x00\x00\x00\x00ab"),
            None
        );
        assert_eq!(decode_entry(b"NOEQUALS"), None);
    }

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

    fn meta(group: &str, instance: &str) -> WorkerMeta {
        WorkerMeta {
            group: group.into(),
            instance: instance.into(),
            node: format!("{instance}@dev"),
            pid: 1,
        }
    }

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

    /// The daemon keeps one pump task per instance alive for the instance's
    /// lifetime, so the size of its future is per-instance memory. Before
    /// the two pipes shared a task, each pipe had a task whose future was
    /// 960 bytes (1152 bytes on the heap with the task header, per massif).
    /// Now both pipes take 656 bytes (debug build; the state itself is 544).
    /// Any of these would break the bound: a `Sleep` kept inline (112
    /// bytes), a `readable()` future per pipe (152 each), the sink's write
    /// future not boxed (448), or an `async fn` keeping its state twice.
    #[test]
    fn the_pump_of_an_instance_is_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_out_tx, out) = tokio::net::unix::pipe::pipe().unwrap();
            let (_err_tx, err) = tokio::net::unix::pipe::pipe().unwrap();
            let m = Arc::new(meta("g", "g-1"));
            let sink = Arc::new(Sink::Stderr);
            let rec = Record {
                message: Vec::new(),
                priority: 6,
            };
            let write = sink.write(&m, Stream::Stdout, &rec);
            let write_size = std::mem::size_of_val(&write);
            drop(write);
            let f = pump(out, err, m.clone(), sink.clone(), LogStore::new());
            let size = std::mem::size_of_val(&f);
            eprintln!(
                "pump future: {size} bytes for both pipes (sink write future: {write_size} bytes, boxed)"
            );
            assert!(size < 768, "pump future is {size} bytes");
        });
    }

    #[test]
    fn log_target_and_journal_stream_parsing() {
        assert_eq!("auto".parse::<LogTarget>(), Ok(LogTarget::Auto));
        assert_eq!("journal".parse::<LogTarget>(), Ok(LogTarget::Journal));
        assert_eq!("stderr".parse::<LogTarget>(), Ok(LogTarget::Stderr));
        assert!("syslog".parse::<LogTarget>().is_err());
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 1));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert!(!journal_stream_matches("", 0, 0));
        let file = tempfile::tempfile().unwrap();
        let st = nix::sys::stat::fstat(&file).unwrap();
        let value = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(fd_is_journal_stream(file.as_fd(), &value));
        let other = tempfile::tempfile().unwrap();
        assert!(!fd_is_journal_stream(other.as_fd(), &value));
    }
}

//! The grouper: joins framed lines into records (one record = one journal
//! entry) by the rule in the [module documentation](super). Pure: the
//! caller passes the time.

use std::time::{Duration, Instant};

use super::classify::{
    CHAIN_SENTENCES, celery_priority, is_indented, is_python_warning, is_traceback_start,
};
use super::framer::{Line, MAX_RECORD};

/// How long an open record waits for continuation lines.
pub const QUIET: Duration = Duration::from_millis(100);
/// Longest time a record is held open while continuation lines keep coming.
pub const MAX_HOLD: Duration = Duration::from_secs(1);

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
    /// [`LineFramer`](super::LineFramer) with the same limit; a longer one becomes a record of
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::framer::LineFramer;
    use crate::logs::test_util::{line, lines};

    /// stderr of a real Celery 5.7.0 worker (Python 3.11) running as root,
    /// with a task that logs a chained traceback and one that prints.
    const CELERY_STDERR: &str = "\
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

    fn text(r: &Record) -> &str {
        std::str::from_utf8(&r.message).unwrap()
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
}

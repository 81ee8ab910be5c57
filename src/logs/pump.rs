//! The pump: one task per instance that reads both of its pipes, frames
//! and groups their output, writes each record to the sink (awaiting it:
//! the backpressure) and keeps every line in the ring buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tokio::net::unix::pipe::Receiver;

use super::framer::{Line, LineFramer, MAX_RECORD};
use super::grouper::{Grouper, Record};
use super::ratelimit::GroupLimit;
use super::ring::LogStore;
use super::sink::{Sink, Stream, WorkerMeta};

/// Bytes read from a worker pipe at a time.
const READ_BUF: usize = 64 * 1024;

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
    /// The group's rate limit for records at info and below; `None`: off.
    limit: Option<Arc<GroupLimit>>,
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
                // Records dropped by the rate limit are never awaited on:
                // without a yield, a flood the pipe keeps full would hold
                // the daemon's one thread (the actor, the control socket)
                // for as long as tokio's budget lasts (docs/logging.md).
                let mut dropped = false;
                while let Some((i, record)) = this.next_record() {
                    if let Some(l) = &this.limit
                        && !l.admit(&record)
                    {
                        dropped = true;
                        continue;
                    }
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
                if dropped {
                    tokio::task::yield_now().await;
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
/// `SHARED_READ_BUF`) and with one timer, for the earlier of the two
/// streams' grouping deadlines, that exists only while a record is open.
/// A pipe that has something to read is read before its quiet time may end
/// a record; each round reads at most one buffer from each ready pipe, so
/// a flood on one stream does not starve the other.
///
/// `limit` is the group's share of the rate limit (see [`super::ratelimit`]):
/// records at info and below beyond it are dropped (and counted) instead of
/// written; every line still goes to the store.
pub fn pump(
    stdout: Receiver,
    stderr: Receiver,
    meta: Arc<WorkerMeta>,
    sink: Arc<Sink>,
    limit: Option<Arc<GroupLimit>>,
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
        limit,
        store,
        ready: [Ready::No; 2],
        step: ROUND_OVER,
        backlog: None,
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::test_util::meta;

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
            let f = pump(out, err, m.clone(), sink.clone(), None, LogStore::new());
            let size = std::mem::size_of_val(&f);
            eprintln!(
                "pump future: {size} bytes for both pipes (sink write future: {write_size} bytes, boxed)"
            );
            assert!(size < 768, "pump future is {size} bytes");
        });
    }

    /// A flood the rate limit drops must not hold the daemon's one thread:
    /// the pump yields after each round that dropped records. Before, a
    /// pipe holding 1 MiB of info lines was framed and dropped in one poll
    /// (16 reads, under tokio's budget of 128), and no other task ran.
    #[test]
    fn a_pump_dropping_a_flood_lets_the_other_tasks_run() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (out_tx, out) = tokio::net::unix::pipe::pipe().unwrap();
            let (err_tx, err) = tokio::net::unix::pipe::pipe().unwrap();
            // The pump ends when both pipes are at EOF.
            drop(err_tx);
            let size =
                nix::fcntl::fcntl(&out_tx, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
            assert!(size >= 1 << 20, "pipe of {size} bytes");
            let line = b"INFO a line of a worker that floods its output\n";
            let mut flood = Vec::new();
            while flood.len() + line.len() <= 1 << 20 {
                flood.extend_from_slice(line);
            }
            let mut at = 0;
            while at < flood.len() {
                out_tx.writable().await.unwrap();
                match out_tx.try_write(&flood[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            drop(out_tx);
            let mut limits = crate::logs::RateLimits::new(1);
            limits.add_group("g");
            let limit = limits.of("g");
            let m = Arc::new(meta("g", "g-1"));
            let done = Arc::new(AtomicBool::new(false));
            let ticks = Arc::new(AtomicUsize::new(0));
            let ticker = {
                let (done, ticks) = (done.clone(), ticks.clone());
                tokio::spawn(async move {
                    while !done.load(Ordering::Relaxed) {
                        ticks.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                })
            };
            pump(
                out,
                err,
                m,
                Arc::new(Sink::Stderr),
                limit.clone(),
                LogStore::new(),
            )
            .await;
            let seen = ticks.load(Ordering::Relaxed);
            done.store(true, Ordering::Relaxed);
            ticker.await.unwrap();
            assert!(limit.unwrap().pending() > 10_000, "the flood was dropped");
            assert!(
                seen >= 8,
                "another task ran {seen} times while the pump dropped 1 MiB"
            );
        });
    }
}

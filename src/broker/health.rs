//! The health link: the broker check while the daemon is up, off the async
//! runtime.
//!
//! After the gate, one thread owns a connection of its own to the broker
//! and does on it everything the monitor needs while the broker is up:
//!
//! - every `check_interval` a `PING`, whose round trip goes to
//!   [`Monitor::latency`](super::Monitor::latency);
//! - the backlog of the watched queues (`LLEN` of every key): once at the
//!   start, when the queues change, when `clearifyctl status` asks (at most
//!   once a second), and in the PING's round trip when stall detection
//!   needs it ([`Watched::poll`]);
//! - it sees at once when the broker closes the connection (the socket is in
//!   the same `poll(2)` as the timer), instead of at the next PING;
//! - every `[fleet] interval` this device's fleet beat (`TIME`, `ZADD`,
//!   `SET … EX`, see docs/fleet.md), in the same round trip as the PING
//!   when the two intervals meet (both are 10 s by default), so publishing
//!   adds no wake-up. The beat's score is the Redis clock, read by the
//!   previous beat's `TIME` and carried forward on the monotonic clock (the
//!   first beat of a link reads it first). The record is the one the
//!   supervisor handed over: built on its systemd watchdog tick (a
//!   wake-up it has anyway), or, without a watchdog, after the previous
//!   beat ([`BrokerEvent::FleetBeat`]); its figures are at most one
//!   interval (or watchdog period) old.
//!
//! It ends with the error that broke the link; the monitor then reports
//! `Down` and goes back to the gate.
//!
//! **Why a thread with blocking I/O, and the RESP of four commands written
//! here.** An idle daemon does little else (the systemd watchdog ping),
//! and on a virtual machine its cost is set by how many distinct memory pages one check
//! touches (each may be a TLB miss or a host-side fault after 10 s asleep),
//! far more than by its instructions. Through the tokio runtime and
//! redis-rs' multiplexed connection (a driver task, a codec, a parser
//! combinator, channels, a timer) a check touched 125 private pages; this
//! loop touches 23, and the runtime stays asleep (docs/benchmarks.md,
//! "memory touched in one idle window"). Only `PING`,
//! `AUTH`, `SELECT` and `LLEN` are spoken here, and every reply they have
//! is a single line (`+`, `-`, `:`), so the protocol part is small and
//! unit-tested. `rediss://` links keep the gate's redis-rs async
//! connection instead and run each round trip on the runtime (`link`):
//! TLS is not written by hand, and a TLS check costs a record's decryption
//! anyway.
use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::{mpsc, oneshot, watch};

use super::backlog::{BACKLOG_MIN_INTERVAL, Watched, queue_keys};
use super::error::ProbeError;
use super::link::{Beat, Link, PING, PlainStream, Reply, Request, Tls, pack};
use super::url::Target;
use super::{BrokerEvent, FleetSettings};
use crate::model::fleet::Keys as FleetKeys;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// The handle the monitor keeps

/// What the monitor and its health threads share. It lives as long as the
/// monitor; each (re)connection runs a new thread under it.
pub(super) struct Control {
    /// Wakes the thread (queues changed, backlog wanted, stop). `None` only
    /// in a monitor that could not start ([`Control::dead`]).
    wake: Option<EventFd>,
    stop: AtomicBool,
    refresh: AtomicBool,
    /// A duplicate of the running plain link's socket: [`Control::stop`]
    /// shuts it down, so a thread waiting for a reply ends at once.
    socket: Mutex<Option<PlainStream>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The fleet record the next beat writes.
    record: Mutex<Option<Vec<u8>>>,
}

impl Control {
    pub(super) fn new() -> io::Result<Self> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Control {
            wake: Some(wake),
            ..Control::dead()
        })
    }

    /// A control that never runs a thread (the monitor failed to start).
    pub(super) fn dead() -> Self {
        Control {
            wake: None,
            stop: AtomicBool::new(false),
            refresh: AtomicBool::new(false),
            socket: Mutex::new(None),
            thread: Mutex::new(None),
            record: Mutex::new(None),
        }
    }

    /// The fleet record for the next beat.
    pub(super) fn set_record(&self, record: Vec<u8>) {
        *lock(&self.record) = Some(record);
    }

    /// Makes the thread look at its inputs again (e.g. new queues).
    pub(super) fn wake(&self) {
        if let Some(w) = &self.wake {
            // Only fails when the counter would overflow: it is then readable.
            let _ = w.write(1);
        }
    }

    /// Asks for the backlog (the thread keeps it to one fetch a second).
    pub(super) fn refresh(&self) {
        self.refresh.store(true, Ordering::Release);
        self.wake();
    }

    /// Ends the thread (and any later one) as soon as it can: at once when
    /// it waits, and a plain link's pending read is cut short.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
        if let Some(s) = lock(&self.socket).as_ref() {
            s.shutdown();
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The last thread started, to join it.
    pub(super) fn take_thread(&self) -> Option<JoinHandle<()>> {
        lock(&self.thread).take()
    }
}

/// What one health thread needs.
pub(super) struct Job {
    pub(super) target: Target,
    pub(super) check_interval: Duration,
    pub(super) priority_steps: Vec<u8>,
    pub(super) key_prefix: String,
    pub(super) control: Arc<Control>,
    pub(super) queues: watch::Receiver<Watched>,
    pub(super) latency: Arc<watch::Sender<Option<Duration>>>,
    pub(super) tx: mpsc::Sender<BrokerEvent>,
    /// For a `rediss://` broker: the gate's connection, which becomes the
    /// link (`None`: the thread opens a plain link of its own).
    pub(super) tls: Option<Tls>,
    /// This device's fleet beat, if published.
    pub(super) fleet: Option<FleetSettings>,
}

/// The Redis clock as last read: its time and the local instant it was
/// read at.
type Clock = (f64, Instant);

/// Runs a health thread until its link breaks. Returns the error, or `None`
/// when the monitor is stopping or the event receiver is gone.
pub(super) async fn run(job: Job) -> Option<ProbeError> {
    let control = job.control.clone();
    let tx = job.tx.clone();
    let (done_tx, done_rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("broker-health".into())
        .spawn(move || {
            let _ = done_tx.send(job.run());
        });
    match spawned {
        // The previous thread has ended (its result was awaited): its handle
        // can go.
        Ok(handle) => *lock(&control.thread) = Some(handle),
        Err(e) => {
            return Some(ProbeError::transient(format!(
                "cannot start the broker health thread: {e}"
            )));
        }
    }
    tokio::select! {
        done = done_rx => done.unwrap_or_else(|_| {
            Some(ProbeError::transient("the broker health thread ended unexpectedly"))
        }),
        _ = tx.closed() => {
            control.stop();
            None
        }
    }
}

// ---------------------------------------------------------------------------
// The thread

/// The LLEN pipeline of the watched queues, packed once per change.
#[derive(Default)]
struct Keys {
    queues: Vec<String>,
    /// The key of each LLEN, in order.
    llen: Vec<String>,
    /// The queue (index into `queues`) of each LLEN.
    owners: Vec<usize>,
    /// The LLENs in RESP.
    packed: Vec<u8>,
    poll: bool,
}

impl Keys {
    fn new(w: &Watched, priority_steps: &[u8], key_prefix: &str) -> Keys {
        let mut keys = Keys {
            queues: w.queues.clone(),
            poll: w.poll,
            ..Keys::default()
        };
        for (i, q) in w.queues.iter().enumerate() {
            for key in queue_keys(q, priority_steps, key_prefix) {
                pack(&mut keys.packed, &[b"LLEN", key.as_bytes()]);
                keys.llen.push(key);
                keys.owners.push(i);
            }
        }
        keys
    }
}

impl Job {
    fn run(mut self) -> Option<ProbeError> {
        if self.control.stopped() {
            return None;
        }
        let opened = match self.tls.take() {
            Some(tls) => Ok(Link::Tls(tls)),
            None => Link::open(&self.target),
        };
        let mut link = match opened {
            Ok(l) => l,
            Err(e) => return Some(e),
        };
        // Without the duplicate, a stop waits for the reply's timeout.
        *lock(&self.control.socket) = link.socket_clone();
        let result = self.serve(&mut link);
        *lock(&self.control.socket) = None;
        if self.control.stopped() || self.tx.is_closed() {
            return None;
        }
        result.err()
    }

    /// The loop: wait for the next check, a wake-up or the socket; do what
    /// is due. Returns `Ok` when asked to stop.
    fn serve(&mut self, link: &mut Link) -> Result<(), ProbeError> {
        let check = self.check_interval.max(Duration::from_millis(100));
        let mut next_check = Instant::now() + check;
        let mut last_backlog: Option<Instant> = None;
        // The backlog once at the start (status shows it from then on).
        let mut want_backlog = true;
        let mut keys = Keys::new(
            &self.queues.borrow_and_update(),
            &self.priority_steps,
            &self.key_prefix,
        );
        let mut request = Vec::new();
        // The first beat at once (it reads the Redis clock first).
        let mut next_beat = self.fleet.as_ref().map(|_| Instant::now());
        let mut clock: Option<Clock> = None;
        let mut beat_error: Option<String> = None;
        loop {
            if self.control.stopped() || self.tx.is_closed() {
                return Ok(());
            }
            match self.queues.has_changed() {
                Ok(false) => {}
                Ok(true) => {
                    keys = Keys::new(
                        &self.queues.borrow_and_update(),
                        &self.priority_steps,
                        &self.key_prefix,
                    );
                    want_backlog = true;
                }
                Err(_) => return Ok(()),
            }
            if self.control.refresh.swap(false, Ordering::AcqRel) {
                want_backlog = true;
            }
            let now = Instant::now();
            let ping = now >= next_check;
            if ping {
                next_check += check;
                if next_check <= now {
                    // Asleep for longer (suspend, a stopped process):
                    // missed checks are not made up.
                    next_check = now + check;
                }
            }
            let fresh = last_backlog.is_some_and(|t| now < t + BACKLOG_MIN_INTERVAL);
            let backlog = !fresh && (want_backlog || (ping && keys.poll));
            if backlog {
                want_backlog = false;
                last_backlog = Some(now);
            }
            // A beat due soon goes out with this PING rather than on a
            // wake-up of its own: with equal intervals (the default) the
            // two then stay together.
            let beat = match (&self.fleet, next_beat) {
                (Some(f), Some(t)) if now >= t || (ping && now + f.interval / 4 >= t) => {
                    self.beat(f, clock, now)
                }
                _ => None,
            };
            if let (Some(b), Some(f)) = (&beat, &self.fleet) {
                // Without a record yet, or before the clock is known, the
                // next try is soon; missed beats are not made up.
                next_beat = Some(match b.score {
                    Some(_) => now + f.interval,
                    None => now,
                });
            } else if let (Some(f), Some(t)) = (&self.fleet, next_beat)
                && now >= t
            {
                next_beat = Some(now + f.interval.min(Duration::from_secs(1)));
            }
            if ping || backlog || beat.is_some() {
                let keys = backlog.then_some(&keys);
                let outcome = self.check(link, ping, keys, beat.as_ref(), &mut request)?;
                if let Some(b) = &beat {
                    self.after_beat(b, outcome, &mut clock, &mut beat_error);
                }
            }
            // A backlog asked for within a second of the last one is
            // fetched when that second is over.
            let mut deadline = next_check;
            if want_backlog && let Some(t) = last_backlog {
                deadline = deadline.min(t + BACKLOG_MIN_INTERVAL);
            }
            if let Some(t) = next_beat {
                deadline = deadline.min(t);
            }
            self.wait(link, deadline)?;
        }
    }

    /// Sleeps until `deadline`, a wake-up, or something on the socket (which
    /// can only be the broker closing it: it never speaks unasked).
    fn wait(&self, link: &mut Link, deadline: Instant) -> Result<(), ProbeError> {
        let Some(wake) = &self.control.wake else {
            return Err(ProbeError::fatal("the broker monitor has no wake-up fd"));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up: waking a little early would only mean a second wait.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let socket = link.fd();
        let mut fds = [
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
            PollFd::new(socket.unwrap_or(wake.as_fd()), PollFlags::POLLIN),
        ];
        let n = if socket.is_some() { 2 } else { 1 };
        match poll(&mut fds[..n], timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(ProbeError::transient(format!("health-check poll: {e}"))),
        }
        let woken = fds[0].any().unwrap_or(false);
        let socket_event = n == 2 && fds[1].any().unwrap_or(false);
        if woken {
            // Resets the counter; EAGAIN when another wait took it already.
            let _ = wake.read();
        }
        if socket_event {
            return Err(link.unsolicited());
        }
        Ok(())
    }

    /// The beat due now: the record the supervisor handed over, scored on
    /// the Redis clock (`None` when there is no record yet).
    fn beat(&self, f: &FleetSettings, clock: Option<Clock>, now: Instant) -> Option<Beat> {
        let record = lock(&self.control.record).clone()?;
        let keys = FleetKeys::new(&self.key_prefix);
        Some(Beat {
            set: keys.set(),
            key: keys.record(&f.device_id),
            member: f.device_id.clone(),
            record,
            ttl_secs: f.forget_after.as_secs().max(1),
            score: clock.map(|(t, at)| t + now.saturating_duration_since(at).as_secs_f64()),
        })
    }

    /// Takes in a beat's replies: the Redis clock, and the supervisor told
    /// (for the next record). A refused `ZADD`/`SET` (an ACL without them,
    /// Redis out of memory) is logged once per change, and never breaks the
    /// link: the broker itself is fine.
    fn after_beat(
        &self,
        beat: &Beat,
        outcome: BeatOutcome,
        clock: &mut Option<Clock>,
        error: &mut Option<String>,
    ) {
        if let Some(t) = outcome.time {
            *clock = Some(t);
        }
        if beat.score.is_none() {
            return;
        }
        match outcome.error {
            None => {
                if error.take().is_some() {
                    tracing::info!("fleet: publishing this device's record again");
                }
                if let (Some(at), Some(true)) =
                    (beat.score, self.fleet.as_ref().map(|f| f.announce))
                {
                    let _ = self.tx.blocking_send(BrokerEvent::FleetBeat { at });
                }
            }
            Some(e) => {
                if error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(
                        error = %e,
                        "fleet: cannot publish this device's record: {e} (see docs/fleet.md for the Redis ACL a device needs)"
                    );
                }
                *error = Some(e);
            }
        }
    }

    /// One round trip: a PING, the backlog and/or the fleet beat.
    fn check(
        &mut self,
        link: &mut Link,
        ping: bool,
        keys: Option<&Keys>,
        beat: Option<&Beat>,
        request: &mut Vec<u8>,
    ) -> Result<BeatOutcome, ProbeError> {
        let req: &[u8] = match (keys, beat) {
            (None, None) => PING,
            (Some(k), None) if !ping => &k.packed,
            _ => {
                request.clear();
                if ping {
                    request.extend_from_slice(PING);
                }
                if let Some(k) = keys {
                    request.extend_from_slice(&k.packed);
                }
                if let Some(b) = beat {
                    b.pack(request);
                }
                request
            }
        };
        let req = Request {
            packed: req,
            ping,
            llen: keys.map_or(&[], |k| &k.llen),
            beat,
        };
        let mut backlog = keys.map(|k| vec![0u64; k.queues.len()]);
        let llen_end = usize::from(ping) + keys.map_or(0, |k| k.llen.len());
        let mut outcome = BeatOutcome::default();
        let what = if ping {
            "PING"
        } else if keys.is_some() {
            "LLEN"
        } else {
            "fleet beat"
        };
        let started = Instant::now();
        link.request(&req, what, |i, reply| {
            if ping && i == 0 {
                return match reply {
                    Reply::Status(b"PONG") => Ok(()),
                    Reply::Error(e) => Err(ProbeError::transient(format!(
                        "PING failed: {}",
                        String::from_utf8_lossy(e)
                    ))),
                    other => Err(ProbeError::transient(format!(
                        "PING answered {other:?} instead of PONG"
                    ))),
                };
            }
            if i >= llen_end {
                return outcome.take(i - llen_end, reply);
            }
            let (Some(k), Some(b)) = (keys, backlog.as_mut()) else {
                return Ok(());
            };
            let q = k.owners[i - usize::from(ping)];
            match reply {
                Reply::Int(n) if n > 0 => b[q] = add_length(b[q], n),
                Reply::Int(_) => {}
                other => {
                    tracing::debug!(queue = %k.queues[q], reply = ?other, "LLEN did not answer a number")
                }
            }
            Ok(())
        })?;
        if ping {
            self.latency.send_replace(Some(started.elapsed()));
        }
        if let (Some(k), Some(b)) = (keys, backlog) {
            let map: BTreeMap<String, u64> = k.queues.iter().cloned().zip(b).collect();
            // Fails only when the supervisor is gone: the loop sees that.
            let _ = self.tx.blocking_send(BrokerEvent::Backlog(map));
        }
        Ok(outcome)
    }
}

/// What a beat's replies said: the Redis clock, and why the record was not
/// written, if it was not.
#[derive(Default)]
struct BeatOutcome {
    time: Option<Clock>,
    error: Option<String>,
}

impl BeatOutcome {
    /// The `n`th reply of the beat: `TIME`, `ZADD`, `SET`.
    fn take(&mut self, n: usize, reply: Reply<'_>) -> Result<(), ProbeError> {
        match (n, reply) {
            (0, Reply::Time { secs, micros }) => {
                self.time = Some((secs as f64 + micros as f64 / 1e6, Instant::now()));
            }
            (0, other) => {
                return Err(ProbeError::transient(format!("TIME answered {other:?}")));
            }
            (1, Reply::Int(_)) | (2, Reply::Status(b"OK")) => {}
            (_, Reply::Error(e)) => {
                let cmd = if n == 1 { "ZADD" } else { "SET" };
                self.error
                    .get_or_insert_with(|| format!("{cmd}: {}", String::from_utf8_lossy(e)));
            }
            (_, other) => {
                self.error
                    .get_or_insert_with(|| format!("unexpected reply {other:?}"));
            }
        }
        Ok(())
    }
}

/// A queue's backlog plus one more key's `LLEN`. The reply comes from
/// Redis (anyone who can write the broker may fake one).
fn add_length(sum: u64, n: i64) -> u64 {
    sum.saturating_add(n.unsigned_abs())
}

#[cfg(test)]
mod tests {
    /// Four priority keys of a hostile Redis answering i64::MAX each do not
    /// overflow the queue's sum.
    #[test]
    fn a_queues_backlog_saturates_instead_of_overflowing() {
        let mut sum = 0;
        for _ in 0..4 {
            sum = super::add_length(sum, i64::MAX);
        }
        assert_eq!(sum, u64::MAX);
        assert_eq!(super::add_length(5, 7), 12);
    }

    use super::*;

    #[test]
    fn keys_pack_one_llen_per_priority_step() {
        let w = Watched {
            queues: vec!["a".into(), "b".into()],
            poll: true,
        };
        let k = Keys::new(&w, &[0, 9], "p:");
        assert_eq!(k.owners, [0, 0, 1, 1]);
        assert_eq!(k.llen, ["p:a", "p:a\x06\x169", "p:b", "p:b\x06\x169"]);
        let mut expected = Vec::new();
        for key in ["p:a", "p:a\x06\x169", "p:b", "p:b\x06\x169"] {
            pack(&mut expected, &[b"LLEN", key.as_bytes()]);
        }
        assert_eq!(k.packed, expected);
        assert!(k.poll);
    }
}

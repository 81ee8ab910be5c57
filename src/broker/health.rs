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
//!   the same `poll(2)` as the timer), instead of at the next PING.
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
//! unit-tested. `rediss://` links go through redis-rs' synchronous
//! connection instead: TLS is not written by hand, and a TLS check costs a
//! record's decryption anyway.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use redis::{ConnectionAddr, ConnectionLike, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    BACKLOG_MIN_INTERVAL, BrokerEvent, CONNECT_TIMEOUT, ProbeError, RESPONSE_TIMEOUT, Target,
    Watched, classify, queue_keys,
};

/// `PING` in RESP.
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// A reply line longer than this is not one of ours: a protocol error.
const MAX_REPLY_LINE: usize = 4096;

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
        }
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
}

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
    /// The queue (index into `queues`) of each LLEN, in order.
    owners: Vec<usize>,
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
        let mut link = match Link::open(&self.target) {
            Ok(l) => l,
            Err(e) => return Some(e),
        };
        if let Link::Plain(p) = &link {
            // Without the duplicate, a stop waits for the reply's timeout.
            *lock(&self.control.socket) = p.stream.try_clone().ok();
        }
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
            if ping || backlog {
                self.check(link, ping, backlog.then_some(&keys), &mut request)?;
            }
            // A backlog asked for within a second of the last one is
            // fetched when that second is over.
            let mut deadline = next_check;
            if want_backlog && let Some(t) = last_backlog {
                deadline = deadline.min(t + BACKLOG_MIN_INTERVAL);
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

    /// One round trip: a PING and/or the backlog.
    fn check(
        &mut self,
        link: &mut Link,
        ping: bool,
        keys: Option<&Keys>,
        request: &mut Vec<u8>,
    ) -> Result<(), ProbeError> {
        let req: &[u8] = match keys {
            None => PING,
            Some(k) if !ping => &k.packed,
            Some(k) => {
                request.clear();
                request.extend_from_slice(PING);
                request.extend_from_slice(&k.packed);
                request
            }
        };
        let count = usize::from(ping) + keys.map_or(0, |k| k.owners.len());
        let mut backlog = keys.map(|k| vec![0u64; k.queues.len()]);
        let what = if ping { "PING" } else { "LLEN" };
        let started = Instant::now();
        link.round_trip(req, count, what, |i, reply| {
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
            let (Some(k), Some(b)) = (keys, backlog.as_mut()) else {
                return Ok(());
            };
            let q = k.owners[i - usize::from(ping)];
            match reply {
                Reply::Int(n) if n > 0 => b[q] += n as u64,
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
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The link

/// One connection to the broker: plain (TCP or unix socket, RESP written
/// here) or TLS (redis-rs' synchronous connection).
enum Link {
    Plain(Plain),
    Tls(Box<redis::Connection>),
}

/// A plain socket, and the bytes read from it and not parsed yet (only
/// within a round trip).
struct Plain {
    stream: PlainStream,
    buf: Vec<u8>,
}

pub(super) enum PlainStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl PlainStream {
    /// Another fd for the same socket.
    fn try_clone(&self) -> io::Result<PlainStream> {
        Ok(match self {
            PlainStream::Tcp(s) => PlainStream::Tcp(s.try_clone()?),
            PlainStream::Unix(s) => PlainStream::Unix(s.try_clone()?),
        })
    }

    /// Ends the connection for every fd of it: a blocked read returns.
    fn shutdown(&self) {
        let _ = match self {
            PlainStream::Tcp(s) => s.shutdown(Shutdown::Both),
            PlainStream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            PlainStream::Tcp(s) => s.as_fd(),
            PlainStream::Unix(s) => s.as_fd(),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            PlainStream::Tcp(s) => s.write_all(data),
            PlainStream::Unix(s) => s.write_all(data),
        }
    }

    fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
        match self {
            PlainStream::Tcp(s) => s.read(into),
            PlainStream::Unix(s) => s.read(into),
        }
    }
}

impl Plain {
    /// Connects with [`CONNECT_TIMEOUT`]; reads and writes time out after
    /// [`RESPONSE_TIMEOUT`].
    fn connect(target: &Target) -> Result<Plain, ProbeError> {
        let io_err = |during: &str, e: io::Error| {
            ProbeError::transient(format!("health link: {during} failed: {e}"))
        };
        let stream = match target.bare_info.addr() {
            ConnectionAddr::Unix(path) => {
                let s = UnixStream::connect(path).map_err(|e| io_err("connect", e))?;
                s.set_read_timeout(Some(RESPONSE_TIMEOUT))
                    .and_then(|()| s.set_write_timeout(Some(RESPONSE_TIMEOUT)))
                    .map_err(|e| io_err("setsockopt", e))?;
                PlainStream::Unix(s)
            }
            _ => {
                let Some((host, port)) = &target.host_port else {
                    return Err(ProbeError::transient("health link: no address"));
                };
                let addrs = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| io_err(&format!("DNS lookup of {host}"), e))?;
                let mut last = None;
                let mut connected = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match (connected, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(io_err("connect", e)),
                    (None, None) => {
                        return Err(ProbeError::transient(format!(
                            "health link: DNS lookup of {host} returned no address"
                        )));
                    }
                };
                s.set_nodelay(true)
                    .and_then(|()| s.set_read_timeout(Some(RESPONSE_TIMEOUT)))
                    .and_then(|()| s.set_write_timeout(Some(RESPONSE_TIMEOUT)))
                    .map_err(|e| io_err("setsockopt", e))?;
                PlainStream::Tcp(s)
            }
        };
        Ok(Plain {
            stream,
            buf: Vec::with_capacity(512),
        })
    }

    /// Sends `req` and hands the `count` replies to `each`, in order.
    fn round_trip(
        &mut self,
        req: &[u8],
        count: usize,
        what: &str,
        mut each: impl FnMut(usize, Reply<'_>) -> Result<(), ProbeError>,
    ) -> Result<(), ProbeError> {
        let timed_out = || {
            ProbeError::transient(format!(
                "timed out after {}s ({what})",
                RESPONSE_TIMEOUT.as_secs_f64()
            ))
        };
        let io_err = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
            _ => ProbeError::transient(format!("connection lost ({what}): {e}")),
        };
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        self.stream.write_all(req).map_err(io_err)?;
        let buf = &mut self.buf;
        buf.clear();
        let mut parsed = 0;
        let mut done = 0;
        while done < count {
            while done < count {
                match parse_reply(&buf[parsed..])? {
                    Some((reply, used)) => {
                        each(done, reply)?;
                        parsed += used;
                        done += 1;
                    }
                    None => break,
                }
            }
            if done == count {
                break;
            }
            if Instant::now() >= deadline {
                return Err(timed_out());
            }
            let mut chunk = [0u8; 512];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(closed()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        if parsed < buf.len() {
            return Err(ProbeError::transient(format!(
                "the broker sent more than the replies to {what}"
            )));
        }
        Ok(())
    }
}

fn closed() -> ProbeError {
    ProbeError::transient("the broker closed the connection")
}

impl Link {
    /// Connects, authenticates and selects the database.
    fn open(target: &Target) -> Result<Link, ProbeError> {
        if target.tls {
            let conn = target
                .full
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .map_err(|e| classify(&e, "health link connect"))?;
            conn.set_read_timeout(Some(RESPONSE_TIMEOUT))
                .and_then(|()| conn.set_write_timeout(Some(RESPONSE_TIMEOUT)))
                .map_err(|e| classify(&e, "health link setup"))?;
            return Ok(Link::Tls(Box::new(conn)));
        }
        let mut plain = Plain::connect(target)?;
        let mut hello = Vec::new();
        let mut count = 0;
        if let Some(password) = &target.password {
            match &target.username {
                Some(user) => pack(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => pack(&mut hello, &[b"AUTH", password.as_bytes()]),
            }
            count += 1;
        }
        if target.db != 0 {
            pack(&mut hello, &[b"SELECT", target.db.to_string().as_bytes()]);
            count += 1;
        }
        if count > 0 {
            plain.round_trip(&hello, count, "AUTH/SELECT", |_, reply| match reply {
                Reply::Status(b"OK") => Ok(()),
                other => Err(ProbeError::transient(format!(
                    "health link: AUTH/SELECT answered {other:?}"
                ))),
            })?;
        }
        Ok(Link::Plain(plain))
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Link::Plain(p) => Some(p.stream.fd()),
            Link::Tls(_) => None,
        }
    }

    /// The socket became readable while no reply was due: the broker closed
    /// it (or broke the protocol).
    fn unsolicited(&mut self) -> ProbeError {
        let Link::Plain(p) = self else {
            return closed();
        };
        let mut chunk = [0u8; 64];
        loop {
            return match p.stream.read(&mut chunk) {
                Ok(0) => closed(),
                Ok(_) => ProbeError::transient("the broker sent data nobody asked for"),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => ProbeError::transient(format!("connection lost: {e}")),
            };
        }
    }

    fn round_trip(
        &mut self,
        req: &[u8],
        count: usize,
        what: &str,
        mut each: impl FnMut(usize, Reply<'_>) -> Result<(), ProbeError>,
    ) -> Result<(), ProbeError> {
        let conn = match self {
            Link::Plain(p) => return p.round_trip(req, count, what, each),
            Link::Tls(conn) => conn,
        };
        let values = conn
            .req_packed_commands(req, 0, count)
            .map_err(|e| classify(&e, what))?;
        if values.len() != count {
            return Err(ProbeError::transient(format!(
                "{what}: {} replies to {count} commands",
                values.len()
            )));
        }
        for (i, v) in values.iter().enumerate() {
            let text;
            let reply = match v {
                Value::SimpleString(s) => Reply::Status(s.as_bytes()),
                Value::Okay => Reply::Status(b"OK"),
                Value::Int(n) => Reply::Int(*n),
                Value::ServerError(e) => {
                    text = match e.details() {
                        Some(d) => format!("{} {d}", e.code()),
                        None => e.code().to_string(),
                    };
                    Reply::Error(text.as_bytes())
                }
                _ => Reply::Other,
            };
            each(i, reply)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// RESP, the part of it spoken here

/// Appends one command, as a RESP array of bulk strings.
fn pack(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A reply to one of our commands.
#[derive(PartialEq, Eq)]
enum Reply<'a> {
    /// `+OK`, `+PONG`
    Status(&'a [u8]),
    /// `-ERR …`
    Error(&'a [u8]),
    /// `:42`
    Int(i64),
    /// Something else (only from the TLS link, which parses all of RESP).
    Other,
}

impl std::fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Status(s) => write!(f, "+{}", String::from_utf8_lossy(s)),
            Reply::Error(s) => write!(f, "-{}", String::from_utf8_lossy(s)),
            Reply::Int(n) => write!(f, ":{n}"),
            Reply::Other => f.write_str("a reply of another type"),
        }
    }
}

/// Parses one single-line reply at the start of `buf`: `None` when it is
/// not complete yet, else the reply and the bytes it took. Any other type
/// is a protocol error (none of our commands has one).
fn parse_reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ProbeError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > MAX_REPLY_LINE {
            return Err(ProbeError::transient(
                "the broker sent a reply line without an end",
            ));
        }
        return Ok(None);
    };
    let line = &buf[1..end];
    let reply = match buf[0] {
        b'+' => Reply::Status(line),
        b'-' => Reply::Error(line),
        b':' => std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Reply::Int)
            .ok_or_else(|| {
                ProbeError::transient(format!(
                    "the broker sent a malformed integer: {:?}",
                    String::from_utf8_lossy(line)
                ))
            })?,
        other => {
            return Err(ProbeError::transient(format!(
                "the broker sent an unexpected reply (type {:?}) to a PING, AUTH, SELECT or LLEN",
                char::from(other)
            )));
        }
    };
    Ok(Some((reply, end + 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_commands_as_resp_arrays() {
        let mut out = Vec::new();
        pack(&mut out, &[b"PING"]);
        assert_eq!(out, PING);
        out.clear();
        pack(&mut out, &[b"LLEN", b"q\x06\x163"]);
        assert_eq!(out, b"*2\r\n$4\r\nLLEN\r\n$4\r\nq\x06\x163\r\n");
    }

    #[test]
    fn parses_single_line_replies_and_waits_for_the_rest() {
        let buf = b"+PONG\r\n:42\r\n-WRONGTYPE Operation\r\n:-1\r\n+OK";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, used)) = parse_reply(&buf[at..]).unwrap() {
            got.push(format!("{r:?}"));
            at += used;
        }
        assert_eq!(got, ["+PONG", ":42", "-WRONGTYPE Operation", ":-1"]);
        assert_eq!(&buf[at..], b"+OK", "an incomplete line waits for more");
        assert!(parse_reply(b"").unwrap().is_none());
        assert!(parse_reply(b"\r").unwrap().is_none());
    }

    #[test]
    fn other_reply_types_and_garbage_are_errors() {
        for bad in [
            &b"$4\r\nPONG\r\n"[..],
            b"*1\r\n:1\r\n",
            b":12x\r\n",
            b"HTTP/1.1 400 Bad Request\r\n",
        ] {
            let e = parse_reply(bad).map(|_| ()).unwrap_err();
            assert!(e.message.contains("the broker sent"), "{bad:?}: {e}");
        }
        let endless = vec![b'+'; MAX_REPLY_LINE + 1];
        assert!(parse_reply(&endless).is_err());
    }

    /// A plain link over a socketpair, and the broker's end of it.
    fn link_pair() -> (Plain, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(RESPONSE_TIMEOUT)).unwrap();
        let plain = Plain {
            stream: PlainStream::Unix(ours),
            buf: Vec::new(),
        };
        (plain, theirs)
    }

    fn replies(plain: &mut Plain, req: &[u8], count: usize) -> Result<Vec<String>, ProbeError> {
        let mut got = Vec::new();
        plain.round_trip(req, count, "PING", |i, r| {
            got.push(format!("{i}{r:?}"));
            Ok(())
        })?;
        Ok(got)
    }

    #[test]
    fn a_round_trip_reassembles_replies_split_across_reads() {
        let (mut plain, mut broker) = link_pair();
        let server = std::thread::spawn(move || {
            let mut req = [0u8; 64];
            let n = broker.read(&mut req).unwrap();
            for part in [&b"+PO"[..], b"NG\r\n:4", b"2\r\n:0\r", b"\n"] {
                broker.write_all(part).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            req[..n].to_vec()
        });
        let mut req = PING.to_vec();
        pack(&mut req, &[b"LLEN", b"a"]);
        pack(&mut req, &[b"LLEN", b"b"]);
        let got = replies(&mut plain, &req, 3).unwrap();
        assert_eq!(got, ["0+PONG", "1:42", "2:0"]);
        assert_eq!(server.join().unwrap(), req, "the request as sent");
    }

    #[test]
    fn a_round_trip_fails_on_extra_data_a_close_or_silence() {
        // More than the replies asked for.
        let (mut plain, mut broker) = link_pair();
        broker.write_all(b"+PONG\r\n+PONG\r\n").unwrap();
        let e = replies(&mut plain, PING, 1).unwrap_err();
        assert!(e.message.contains("more than the replies"), "{e}");

        // Closed in the middle of a reply.
        let (mut plain, mut broker) = link_pair();
        let server = std::thread::spawn(move || {
            let mut req = [0u8; 64];
            let _ = broker.read(&mut req).unwrap();
            broker.write_all(b"+PO").unwrap();
        });
        let e = replies(&mut plain, PING, 1).unwrap_err();
        assert_eq!(e.message, "the broker closed the connection");
        server.join().unwrap();
        // Closed before the request: the write fails.
        let (mut plain, broker) = link_pair();
        drop(broker);
        let e = replies(&mut plain, PING, 1).unwrap_err();
        assert!(e.message.starts_with("connection lost (PING)"), "{e}");

        // A broker that says nothing: the response timeout.
        let (mut plain, _broker) = link_pair();
        let t = Instant::now();
        let e = replies(&mut plain, PING, 1).unwrap_err();
        assert!(e.message.starts_with("timed out after 3s (PING)"), "{e}");
        assert!(t.elapsed() >= RESPONSE_TIMEOUT, "{:?}", t.elapsed());
    }

    #[test]
    fn keys_pack_one_llen_per_priority_step() {
        let w = Watched {
            queues: vec!["a".into(), "b".into()],
            poll: true,
        };
        let k = Keys::new(&w, &[0, 9], "p:");
        assert_eq!(k.owners, [0, 0, 1, 1]);
        let mut expected = Vec::new();
        for key in ["p:a", "p:a\x06\x169", "p:b", "p:b\x06\x169"] {
            pack(&mut expected, &[b"LLEN", key.as_bytes()]);
        }
        assert_eq!(k.packed, expected);
        assert!(k.poll);
    }
}

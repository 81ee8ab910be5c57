//! The health link: one connection to the broker for the health thread
//! (`health`). A plain link (TCP or unix socket) has blocking I/O and speaks
//! the commands it needs in RESP written here, which keeps an idle check to
//! a few memory pages (see `health` and docs/benchmarks.md): `PING`, `AUTH`,
//! `SELECT`, `LLEN`, and the fleet beat's `ZADD` and `SET … EX`, whose
//! replies are all single lines, and `TIME`, whose reply is an array of two
//! numbers. A TLS link
//! (`rediss://`) keeps the gate's redis-rs async connection and has each
//! round trip run on the runtime: TLS is not written by hand, and a TLS
//! check costs a record's decryption anyway.
//!
//! These are the broker's two client paths: redis-rs' async connection
//! (gate, heartbeats, `clearifyctl test`, TLS health) and this RESP.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, Value};

use super::error::{ProbeError, classify};
use super::url::Target;
use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// `PING` in RESP.
pub(super) const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// A reply line longer than this is not one of ours: a protocol error.
const MAX_REPLY_LINE: usize = 4096;

// ---------------------------------------------------------------------------
// The link

/// One connection to the broker: plain (TCP or unix socket, RESP written
/// here) or TLS (redis-rs' async connection, driven by the runtime).
pub(super) enum Link {
    Plain(Plain),
    Tls(Tls),
}

/// A TLS link: the gate's connection (authenticated, its db selected, with
/// [`RESPONSE_TIMEOUT`]) and the runtime that drives it.
pub(super) struct Tls {
    conn: MultiplexedConnection,
    runtime: tokio::runtime::Handle,
}

impl Tls {
    pub(super) fn new(conn: MultiplexedConnection, runtime: tokio::runtime::Handle) -> Tls {
        Tls { conn, runtime }
    }

    /// Runs the request on the runtime and waits for its replies.
    fn query(&self, req: &Request<'_>, what: &str) -> Result<Vec<Value>, ProbeError> {
        let mut pipe = redis::pipe();
        if req.ping {
            pipe.cmd("PING");
        }
        for key in req.llen {
            pipe.cmd("LLEN").arg(key);
        }
        if let Some(b) = req.beat {
            pipe.cmd("TIME");
            if let Some(score) = b.score {
                pipe.cmd("ZADD").arg(&b.set).arg(score).arg(&b.member);
                pipe.cmd("SET")
                    .arg(&b.key)
                    .arg(&b.record)
                    .arg("EX")
                    .arg(b.ttl_secs);
            }
        }
        let count = req.count();
        let mut conn = self.conn.clone();
        let (done_tx, done_rx) = sync_channel(1);
        self.runtime.spawn(async move {
            let _ = done_tx.send(conn.send_packed_commands(&pipe, 0, count).await);
        });
        // The connection times out by itself; this is a backstop.
        match done_rx.recv_timeout(RESPONSE_TIMEOUT + Duration::from_secs(1)) {
            Ok(replies) => replies.map_err(|e| classify(&e, what)),
            Err(RecvTimeoutError::Timeout) => Err(ProbeError::transient(format!(
                "timed out after {}s ({what})",
                RESPONSE_TIMEOUT.as_secs_f64()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(ProbeError::transient(format!(
                "{what}: the runtime is shutting down"
            ))),
        }
    }
}

/// One round trip: a `PING` first if `ping`, then an `LLEN` of each of
/// `llen`, then the fleet beat if `beat`. `packed` is the same in RESP, for
/// a plain link ([`Beat::pack`]).
pub(super) struct Request<'a> {
    pub(super) packed: &'a [u8],
    pub(super) ping: bool,
    pub(super) llen: &'a [String],
    pub(super) beat: Option<&'a Beat>,
}

impl Request<'_> {
    fn count(&self) -> usize {
        usize::from(self.ping) + self.llen.len() + self.beat.map_or(0, Beat::replies)
    }
}

/// This device's fleet beat (docs/fleet.md): `TIME` (the Redis clock, for
/// the next beat's score), `ZADD <set> <score> <member>` and
/// `SET <key> <record> EX <ttl>`.
pub(super) struct Beat {
    pub(super) set: String,
    pub(super) member: String,
    pub(super) key: String,
    pub(super) record: Vec<u8>,
    pub(super) ttl_secs: u64,
    /// The beat's time on the Redis clock, seconds. `None` before the
    /// link has read the Redis clock: then only `TIME` is sent.
    pub(super) score: Option<f64>,
}

impl Beat {
    /// Its replies: `TIME`, and `ZADD` and `SET` when it has a score.
    pub(super) fn replies(&self) -> usize {
        if self.score.is_some() { 3 } else { 1 }
    }

    /// Appends the beat's commands in RESP.
    pub(super) fn pack(&self, out: &mut Vec<u8>) {
        pack(out, &[b"TIME"]);
        let Some(score) = self.score else {
            return;
        };
        let score = format!("{score:.6}");
        pack(
            out,
            &[
                b"ZADD",
                self.set.as_bytes(),
                score.as_bytes(),
                self.member.as_bytes(),
            ],
        );
        let ttl = self.ttl_secs.to_string();
        pack(
            out,
            &[
                b"SET",
                self.key.as_bytes(),
                &self.record,
                b"EX",
                ttl.as_bytes(),
            ],
        );
    }
}

/// A plain socket, and the bytes read from it and not parsed yet (only
/// within a round trip).
pub(super) struct Plain {
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
    pub(super) fn shutdown(&self) {
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
    /// Connects a plain link, authenticates and selects the database.
    pub(super) fn open(target: &Target) -> Result<Link, ProbeError> {
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

    /// Another fd for a plain link's socket, to [`PlainStream::shutdown`]
    /// it from another thread.
    pub(super) fn socket_clone(&self) -> Option<PlainStream> {
        match self {
            Link::Plain(p) => p.stream.try_clone().ok(),
            Link::Tls(_) => None,
        }
    }

    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Link::Plain(p) => Some(p.stream.fd()),
            Link::Tls(_) => None,
        }
    }

    /// The socket became readable while no reply was due: the broker closed
    /// it (or broke the protocol).
    pub(super) fn unsolicited(&mut self) -> ProbeError {
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

    /// Sends `req` and hands its replies to `each`, in order.
    pub(super) fn request(
        &mut self,
        req: &Request<'_>,
        what: &str,
        mut each: impl FnMut(usize, Reply<'_>) -> Result<(), ProbeError>,
    ) -> Result<(), ProbeError> {
        let count = req.count();
        let tls = match self {
            Link::Plain(p) => return p.round_trip(req.packed, count, what, each),
            Link::Tls(tls) => tls,
        };
        let values = tls.query(req, what)?;
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
                Value::Array(items) => time_of(items.iter().map(|v| match v {
                    Value::BulkString(b) => Some(b.as_slice()),
                    _ => None,
                }))
                .unwrap_or(Reply::Other),
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
pub(super) fn pack(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A reply to one of our commands.
#[derive(PartialEq, Eq)]
pub(super) enum Reply<'a> {
    /// `+OK`, `+PONG`
    Status(&'a [u8]),
    /// `-ERR …`
    Error(&'a [u8]),
    /// `:42`
    Int(i64),
    /// The reply to `TIME`: an array of two bulk strings, seconds and
    /// microseconds.
    Time { secs: u64, micros: u64 },
    /// Something else (only from the TLS link, which parses all of RESP).
    Other,
}

impl std::fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Status(s) => write!(f, "+{}", String::from_utf8_lossy(s)),
            Reply::Error(s) => write!(f, "-{}", String::from_utf8_lossy(s)),
            Reply::Int(n) => write!(f, ":{n}"),
            Reply::Time { secs, micros } => write!(f, "TIME {secs}.{micros:06}"),
            Reply::Other => f.write_str("a reply of another type"),
        }
    }
}

/// A `TIME` reply from its two elements (each `None` when not a bulk string).
fn time_of<'a>(mut items: impl Iterator<Item = Option<&'a [u8]>>) -> Option<Reply<'a>> {
    let number = |b: Option<&[u8]>| std::str::from_utf8(b?).ok()?.parse::<u64>().ok();
    let secs = number(items.next()?)?;
    let micros = number(items.next()?)?;
    (items.next().is_none() && micros < 1_000_000).then_some(Reply::Time { secs, micros })
}

/// Parses `*2\r\n$N\r\n<secs>\r\n$N\r\n<micros>\r\n` (the only array
/// any of our commands gets) at the start of `buf`.
fn parse_time(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ProbeError> {
    let bad = || ProbeError::transient("the broker sent an unexpected array (only TIME has one)");
    let mut at = 0;
    let mut line = |buf: &[u8]| -> Result<Option<(usize, usize)>, ProbeError> {
        let rest = &buf[at..];
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(end) if end <= 32 => {
                let start = at;
                at += end + 2;
                Ok(Some((start, start + end)))
            }
            Some(_) => Err(bad()),
            None if rest.len() > 32 => Err(bad()),
            None => Ok(None),
        }
    };
    let Some((s, e)) = line(buf)? else {
        return Ok(None);
    };
    if &buf[s..e] != b"*2" {
        return Err(bad());
    }
    let mut parts: [&[u8]; 2] = [b"", b""];
    for part in &mut parts {
        let Some((s, _)) = line(buf)? else {
            return Ok(None);
        };
        if buf[s] != b'$' {
            return Err(bad());
        }
        let Some((s, e)) = line(buf)? else {
            return Ok(None);
        };
        *part = &buf[s..e];
    }
    let reply = time_of(parts.into_iter().map(Some)).ok_or_else(bad)?;
    Ok(Some((reply, at)))
}

/// Parses one reply at the start of `buf`: `None` when it is not complete
/// yet, else the reply and the bytes it took. A single line, or `TIME`'s
/// array; any other type is a protocol error (none of our commands has
/// one).
fn parse_reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ProbeError> {
    if buf.first() == Some(&b'*') {
        return parse_time(buf);
    }
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
                "the broker sent an unexpected reply (type {:?}) to a PING, AUTH, SELECT, LLEN, ZADD or SET",
                char::from(other)
            )));
        }
    };
    Ok(Some((reply, end + 2)))
}

#[cfg(test)]
mod tests;

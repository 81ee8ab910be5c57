//! The client side of the control socket, used by `clearifyctl`.
//!
//! [`request`] is async (tokio); [`request_blocking`] does the same with a
//! plain blocking socket and no runtime, which keeps `clearifyctl status`
//! fast.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::protocol::{
    Envelope, FrameError, LogLine, MAX_LOG_PARTS, Request, Response, read_frame,
    read_frame_blocking, write_frame, write_frame_blocking,
};

/// Why a request got no answer. Each maps to one clearifyctl exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (missing file or `ECONNREFUSED`).
    #[error(
        "cannot connect to {}: {source}; is clearify-workerd running? try: systemctl status clearify-workerd",
        socket.display()
    )]
    NotRunning { socket: PathBuf, source: io::Error },
    /// The socket exists but we may not open it (`EACCES`/`EPERM`).
    #[error(
        "permission denied opening {}: {}",
        socket.display(),
        socket_audience(socket)
    )]
    PermissionDenied { socket: PathBuf, source: io::Error },
    /// The daemon answered something we cannot read, or closed the
    /// connection without an answer.
    #[error("protocol error talking to clearify-workerd on {}: {message}", socket.display())]
    Protocol { socket: PathBuf, message: String },
    /// No answer in time.
    #[error(
        "clearify-workerd on {} did not answer within {}",
        socket.display(),
        humantime::format_duration(*after)
    )]
    Timeout { socket: PathBuf, after: Duration },
}

/// Who may open `socket`, and how to become one: "it is for root and
/// group clearify (mode 0660); an admin can add you with `adduser USER
/// clearify`, then log in again".
pub fn socket_audience(socket: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(socket) else {
        return "the control socket is for root and the daemon's groups; try sudo, or ask to be added to its group".into();
    };
    let gid = meta.gid();
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name);
    format!(
        "it is for root and members of group {group} (mode {:04o}); an admin can add you with `adduser USER {group}`, then log in again (or use sudo)",
        meta.mode() & 0o7777
    )
}

impl ClientError {
    fn from_connect(socket: &Path, e: io::Error) -> Self {
        let socket = socket.to_path_buf();
        match e.kind() {
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { socket, source: e },
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ClientError::Timeout {
                socket,
                after: Duration::ZERO,
            },
            // ENOENT, ECONNREFUSED, ENOTDIR, ENOTSOCK: nothing listens there.
            _ => ClientError::NotRunning { socket, source: e },
        }
    }

    fn from_frame(socket: &Path, e: FrameError, timeout: Duration) -> Self {
        let socket = socket.to_path_buf();
        match e {
            FrameError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                ClientError::Timeout {
                    socket,
                    after: timeout,
                }
            }
            e => ClientError::Protocol {
                socket,
                message: e.to_string(),
            },
        }
    }
}

/// Puts a multi-frame `logs` answer back together: `first` is the first
/// frame, `next` reads the following ones.
fn assemble(
    socket: &Path,
    first: Response,
    mut next: impl FnMut() -> Result<Option<Response>, ClientError>,
) -> Result<Response, ClientError> {
    let Response::LogsPart { lines } = first else {
        return Ok(first);
    };
    let mut all: Vec<LogLine> = lines;
    for _ in 0..MAX_LOG_PARTS {
        match next()? {
            Some(Response::LogsPart { lines }) => all.extend(lines),
            Some(Response::Logs { lines }) => {
                all.extend(lines);
                return Ok(Response::Logs { lines: all });
            }
            Some(other) => return Ok(other),
            None => return Err(no_answer(socket)),
        }
    }
    Err(ClientError::Protocol {
        socket: socket.to_path_buf(),
        message: format!("the logs answer did not end within {MAX_LOG_PARTS} frames"),
    })
}

fn no_answer(socket: &Path) -> ClientError {
    ClientError::Protocol {
        socket: socket.to_path_buf(),
        message: "the daemon closed the connection without an answer".into(),
    }
}

/// Sends one request and waits for its response, all within `timeout`.
pub async fn request(
    socket: &Path,
    req: Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let timed_out = || ClientError::Timeout {
        socket: socket.to_path_buf(),
        after: timeout,
    };
    tokio::time::timeout(timeout, async {
        let mut stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| ClientError::from_connect(socket, e))?;
        // If the write fails (the daemon already answered Busy and closed),
        // the answer may still be waiting to be read.
        let written = write_frame(&mut stream, &Envelope::new(req)).await;
        match read_frame::<_, Response>(&mut stream).await {
            Ok(Some(Response::LogsPart { lines })) => {
                let mut parts = vec![Response::LogsPart { lines }];
                loop {
                    let r = read_frame::<_, Response>(&mut stream)
                        .await
                        .map_err(|e| ClientError::from_frame(socket, e, timeout))?;
                    let last = !matches!(r, Some(Response::LogsPart { .. }));
                    match r {
                        Some(r) => parts.push(r),
                        None => return Err(no_answer(socket)),
                    }
                    if last || parts.len() > MAX_LOG_PARTS {
                        break;
                    }
                }
                let mut rest = parts.into_iter();
                let first = rest.next().ok_or_else(|| no_answer(socket))?;
                assemble(socket, first, || Ok(rest.next()))
            }
            Ok(Some(resp)) => Ok(resp),
            Ok(None) => Err(match written {
                Err(e) => ClientError::from_frame(socket, e, timeout),
                Ok(()) => no_answer(socket),
            }),
            Err(e) => Err(ClientError::from_frame(socket, e, timeout)),
        }
    })
    .await
    .map_err(|_| timed_out())?
}

/// [`request`] over a blocking socket, without a tokio runtime.
pub fn request_blocking(
    socket: &Path,
    req: Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let mut conn = Connection::open(socket, timeout)?;
    conn.call(req)
}

/// A blocking connection that may carry several requests. The daemon drops
/// a connection that stays idle for 5 s.
#[derive(Debug)]
pub struct Connection {
    stream: std::os::unix::net::UnixStream,
    socket: PathBuf,
    timeout: Duration,
}

impl Connection {
    /// Connects; each later [`Connection::call`] must finish within
    /// `timeout`.
    pub fn open(socket: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream = std::os::unix::net::UnixStream::connect(socket)
            .map_err(|e| ClientError::from_connect(socket, e))?;
        Ok(Connection {
            stream,
            socket: socket.to_path_buf(),
            timeout,
        })
    }

    /// Sends one request and reads its response.
    pub fn call(&mut self, req: Request) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
        };
        let timed_out = || ClientError::Timeout {
            socket: self.socket.clone(),
            after: self.timeout,
        };
        let set = |d: Option<Duration>| {
            let d = d.ok_or_else(timed_out)?;
            self.stream
                .set_write_timeout(Some(d))
                .and_then(|()| self.stream.set_read_timeout(Some(d)))
                .map_err(|e| ClientError::from_frame(&self.socket, e.into(), self.timeout))
        };
        set(left())?;
        let written = write_frame_blocking(&mut &self.stream, &Envelope::new(req));
        set(left())?;
        match read_frame_blocking::<_, Response>(&mut &self.stream) {
            Ok(Some(first)) => assemble(&self.socket, first, || {
                set(left())?;
                read_frame_blocking::<_, Response>(&mut &self.stream)
                    .map_err(|e| ClientError::from_frame(&self.socket, e, self.timeout))
            }),
            Ok(None) => Err(match written {
                Err(e) => ClientError::from_frame(&self.socket, e, self.timeout),
                Ok(()) => no_answer(&self.socket),
            }),
            Err(e) => Err(ClientError::from_frame(&self.socket, e, self.timeout)),
        }
    }
}

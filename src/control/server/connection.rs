//! One client connection: read a request, check and authorise it, forward
//! it to the supervisor, write the reply (a `logs` answer in several
//! frames, within a turn).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tracing::{debug, warn};

use super::super::protocol::{
    Envelope, EnvelopeVersion, ErrorKind, FrameError, MAX_FRAME, PROTOCOL_VERSION, Request,
    Response, log_frames, read_request_bytes, write_frame,
};
use super::{Authorizer, ControlMsg, Peer, request_name};

pub(super) struct Connection {
    /// Turns for `logs` answers ([`ServeOptions::max_log_replies`](super::ServeOptions::max_log_replies)).
    pub(super) log_turns: Arc<Semaphore>,
    pub(super) auth: Authorizer,
    pub(super) tx: mpsc::Sender<ControlMsg>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) idle_timeout: Duration,
}

impl Connection {
    pub(super) async fn run(mut self, mut stream: UnixStream, peer: Peer) {
        loop {
            let idle = self.idle_timeout;
            let read = tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => return,
                read = tokio::time::timeout(idle, read_request_bytes(&mut stream)) => read,
            };
            let body = match read {
                Err(_) => {
                    debug!(
                        uid = peer.uid,
                        pid = peer.pid,
                        "control socket: client idle too long; dropped"
                    );
                    return;
                }
                Ok(Ok(None)) => return,
                Ok(Ok(Some(body))) => body,
                Ok(Err(FrameError::Io(e))) => {
                    debug!(error = %e, "control socket: read failed");
                    return;
                }
                Ok(Err(e)) => {
                    let bad = Response::error(ErrorKind::BadRequest, e.to_string());
                    let _ = self.reply(&mut stream, bad).await;
                    return;
                }
            };
            // A `logs` turn, when taken, is held until the answer is out.
            let (response, keep_open, _turn) = self.handle(&body, &peer, stream.as_fd()).await;
            let big_request = body.len() >= BIG_REQUEST;
            drop(body);
            let sent = self.reply(&mut stream, response).await;
            if big_request {
                give_back_freed_memory();
            }
            if !sent || !keep_open {
                return;
            }
        }
    }

    /// Answers one frame body; the flag says whether the connection may
    /// stay open.
    async fn handle(
        &self,
        body: &[u8],
        peer: &Peer,
        fd: BorrowedFd<'_>,
    ) -> (Response, bool, Option<OwnedSemaphorePermit>) {
        let (response, keep_open) = match self.check(body, peer) {
            Ok(request) => {
                let turn = if matches!(request, Request::Logs { .. }) {
                    let wait = self.idle_timeout.saturating_mul(2);
                    match tokio::time::timeout(wait, Arc::clone(&self.log_turns).acquire_owned())
                        .await
                    {
                        // A client that left while it waited costs no copy.
                        Ok(Ok(_)) if peer_gone(fd) => {
                            return (
                                Response::error(ErrorKind::Refused, "client gone"),
                                false,
                                None,
                            );
                        }
                        Ok(Ok(turn)) => Some(turn),
                        _ => {
                            return (
                                Response::error(
                                    ErrorKind::Busy,
                                    "clearify-workerd is busy sending other logs answers; try again",
                                ),
                                true,
                                None,
                            );
                        }
                    }
                } else {
                    None
                };
                let (response, keep_open) = self.forward(request, peer).await;
                return (response, keep_open, turn);
            }
            Err(refusal) => *refusal,
        };
        (response, keep_open, None)
    }

    /// Parses and authorises one frame body: the request, or the answer
    /// that refuses it and whether the connection may stay open.
    fn check(&self, body: &[u8], peer: &Peer) -> Result<Request, Box<(Response, bool)>> {
        let malformed = |e: serde_json::Error| {
            Box::new((
                Response::error(ErrorKind::BadRequest, format!("malformed request: {e}")),
                false,
            ))
        };
        let version = serde_json::from_slice::<EnvelopeVersion>(body)
            .map_err(malformed)?
            .version;
        if version != PROTOCOL_VERSION {
            return Err(Box::new((
                Response::error(
                    ErrorKind::Version,
                    format!(
                        "protocol version {version} is not supported: clearify-workerd {} speaks protocol {PROTOCOL_VERSION}; use the clearifyctl of the same package",
                        crate::VERSION
                    ),
                ),
                false,
            )));
        }
        let request = serde_json::from_slice::<Envelope>(body)
            .map_err(malformed)?
            .request;
        if request.is_mutating() && !self.auth.allows(peer) {
            warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                groups = ?peer.groups,
                request = request_name(&request),
                "control socket: permission denied: {} from uid {} (gid {}, groups {:?}, pid {}); changing requests need root, the daemon's user or the admin group",
                request_name(&request),
                peer.uid,
                peer.gid,
                peer.groups,
                peer.pid
            );
            return Err(Box::new((
                Response::error(
                    ErrorKind::PermissionDenied,
                    format!(
                        "permission denied: {} needs {}; you are uid {}. An admin can add you with `adduser USER {}`; then log in again (group changes reach new log-ins only)",
                        request_name(&request),
                        self.auth.who_may(),
                        peer.uid,
                        self.auth.admin_name.as_deref().unwrap_or("ADMIN_GROUP"),
                    ),
                ),
                true,
            )));
        }
        Ok(request)
    }

    /// Sends an authorised request to the supervisor and waits for its
    /// answer; the flag says whether the connection may stay open.
    async fn forward(&self, request: Request, peer: &Peer) -> (Response, bool) {
        let (reply, rx) = oneshot::channel();
        let msg = ControlMsg {
            request,
            peer: peer.clone(),
            reply,
        };
        if self.tx.send(msg).await.is_err() {
            return (
                Response::error(ErrorKind::Refused, "clearify-workerd is shutting down"),
                false,
            );
        }
        match rx.await {
            Ok(response) => (response, true),
            Err(_) => (
                Response::error(
                    ErrorKind::Refused,
                    "clearify-workerd dropped the request (shutting down?)",
                ),
                false,
            ),
        }
    }

    /// Writes a reply within the idle timeout; false if it could not. The
    /// lines of a `logs` answer go out in several frames.
    async fn reply(&self, stream: &mut UnixStream, response: Response) -> bool {
        let Response::Logs { lines } = response else {
            return self.reply_frame(stream, &response).await;
        };
        // The whole answer, not just each frame, within the idle timeout:
        // a client that reads slowly holds a `logs` turn no longer.
        let frames = log_frames(lines);
        let big = frames.len() > 1;
        let all = async {
            for frame in frames {
                if !self.reply_frame(stream, &frame).await {
                    return false;
                }
            }
            true
        };
        let sent = tokio::time::timeout(self.idle_timeout, all)
            .await
            .unwrap_or(false);
        if big {
            give_back_freed_memory();
        }
        sent
    }

    /// Writes one frame within the idle timeout; false if it could not.
    async fn reply_frame(&self, stream: &mut UnixStream, response: &Response) -> bool {
        match tokio::time::timeout(self.idle_timeout, write_frame(stream, response)).await {
            Ok(Ok(())) => true,
            Ok(Err(FrameError::TooLarge(_) | FrameError::EncodeTooLarge)) => {
                warn!(limit = MAX_FRAME, "control socket: reply too large");
                let err = Response::error(
                    ErrorKind::Refused,
                    format!(
                        "the reply exceeds the frame limit of {MAX_FRAME} bytes; narrow the request (e.g. clearifyctl status GROUP)"
                    ),
                );
                matches!(
                    tokio::time::timeout(self.idle_timeout, write_frame(stream, &err)).await,
                    Ok(Ok(()))
                )
            }
            Ok(Err(e)) => {
                debug!(error = %e, "control socket: write failed");
                false
            }
            Err(_) => {
                debug!("control socket: client too slow to take its reply; dropped");
                false
            }
        }
    }
}

/// A request body at least this large (the cap is
/// [`MAX_REQUEST`](super::super::protocol::MAX_REQUEST)) is
/// followed by [`give_back_freed_memory`]: 32 clients with near-cap status
/// requests otherwise left the daemon ~1.1 MiB above its idle RSS, at
/// random, in `huge_status_requests_from_64_clients_do_not_grow_the_daemon`.
const BIG_REQUEST: usize = 16 * 1024;

/// Whether the peer of a connected socket has closed it (or it failed):
/// a peek that does not wait and takes nothing.
fn peer_gone(fd: BorrowedFd<'_>) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer we own; MSG_PEEK leaves the data queued.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock)
}

/// Returns the heap's free pages to the system after a big `logs` answer
/// (a copy of the ring buffers, freed in many small pieces that glibc would
/// otherwise keep) or a big request, so the daemon's RSS goes back to its
/// idle size.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

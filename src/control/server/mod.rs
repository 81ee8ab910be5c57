//! The daemon's side of the control socket.
//!
//! [`bind`] creates the socket (replacing a stale one, refusing a live one),
//! and [`serve`] accepts clients until its injected `shutdown` future
//! completes. The server owns no daemon state: every accepted request is
//! forwarded to the supervisor as a [`ControlMsg`] carrying a oneshot sender
//! for the reply, and the reply is written back to the client.
//!
//! The server protects the daemon from its clients:
//! - a request frame is at most
//!   [`MAX_REQUEST`](super::protocol::MAX_REQUEST) (64 KiB) bytes, checked on
//!   the length prefix before anything is allocated for it, and names at
//!   most [`MAX_TARGETS`](super::protocol::MAX_TARGETS) targets (checked
//!   while parsing); replies go out in frames far below
//!   [`MAX_FRAME`](super::protocol::MAX_FRAME)
//!   (`logs` in as many frames as it needs);
//! - at most [`ServeOptions::max_log_replies`] (2) `logs` answers, each
//!   holding a copy of the ring buffers, are in the making at once, and
//!   each must be taken within the idle timeout;
//! - a malformed frame is answered [`ErrorKind::BadRequest`] and the
//!   connection closed;
//! - a client that does not finish a request within
//!   [`ServeOptions::idle_timeout`] (5 s) is dropped;
//! - connection slots: at most [`ServeOptions::max_clients`] (64) clients
//!   at once, at most [`ServeOptions::max_per_uid`] (8) of them from one
//!   uid other than root, and [`ServeOptions::admin_reserve`] (8) more
//!   slots that only admins (root, the daemon's uid, the admin group) may
//!   take when the 64 are full. A client without a slot is answered
//!   [`ErrorKind::Busy`], saying which limit it hit, and closed at once. So
//!   a reader flooding the socket holds 8 slots at most, and never locks
//!   root or an admin out;
//! - changing requests from a peer that is not root, the daemon's uid or a
//!   member of the admin group are refused here and never forwarded. Group
//!   membership is the peer process's own groups, as the kernel reports
//!   them (`SO_PEERCRED`, `SO_PEERGROUPS`): no user database is consulted
//!   per request. This holds on every socket the server listens on.
//!
//! # Two sockets, three tiers
//!
//! The daemon listens on the reader socket (`[daemon].socket`, mode 0660,
//! group: the daemon's group `clearify`) and on the admin socket next to it
//! ([`admin_socket_path`], `admin.sock`, mode 0660, group: the admin group
//! `clearify-admin`). Readers can open the first, admins the second,
//! everyone else neither. [`bind`] sets mode and group before the socket
//! file exists (mode: `fchmod` on the unbound socket and a private umask;
//! group: the binding thread's own gid), never by `chmod`/`chown` on the
//! path, so there is no moment at which the file has other rights.

mod auth;
mod bind;
mod connection;
mod limits;
#[cfg(test)]
mod tests;

pub use auth::{Authorizer, Peer, peer_groups};
pub use bind::{ADMIN_SOCKET_NAME, SOCKET_MODE, admin_socket_path, bind, bind_fd, clear_stale};
pub use limits::{
    ADMIN_RESERVE, IDLE_TIMEOUT, MAX_CLIENTS, MAX_LOG_REPLIES, MAX_PER_UID, ServeOptions,
};

use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, warn};

use super::protocol::{ErrorKind, Request, Response, encode_frame};
use auth::peer_of;
use connection::Connection;
use limits::{Slots, take_slot};

/// One request for the supervisor. Answer it by sending on `reply`; if
/// `reply` is dropped, the client gets [`ErrorKind::Refused`].
#[derive(Debug)]
pub struct ControlMsg {
    pub request: Request,
    pub peer: Peer,
    pub reply: oneshot::Sender<Response>,
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "another clearify-workerd is already running on {}: stop it first (systemctl stop clearify-workerd) or set another [daemon].socket",
        path.display()
    )]
    AlreadyRunning { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot check the existing control socket {}: {source}", path.display())]
    Probe { path: PathBuf, source: io::Error },
    #[error("cannot remove the stale control socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot create the socket directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot bind the control socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error(
        "cannot create {} with group {gid}: {source}; the daemon needs CAP_SETGID for that (AmbientCapabilities=CAP_SETGID in its unit), or to run as root",
        path.display()
    )]
    Group {
        path: PathBuf,
        gid: u32,
        source: io::Error,
    },
    #[error("cannot set up the control socket {}: {source}", path.display())]
    Setup { path: PathBuf, source: io::Error },
    #[error("admin group {name:?} does not exist (set [daemon].admin_group or create it)")]
    UnknownGroup { name: String },
    #[error("cannot look up group {name:?}: {source}")]
    GroupLookup { name: String, source: nix::Error },
}

/// Serves the control socket with [`ServeOptions::default`] until
/// `shutdown` completes. See [`serve_with`].
pub async fn serve(
    listener: UnixListener,
    auth: Authorizer,
    tx: mpsc::Sender<ControlMsg>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, auth, tx, shutdown, ServeOptions::default()).await
}

/// Serves the control socket until `shutdown` completes. See
/// [`serve_sockets`], which this calls with the one listener.
pub async fn serve_with(
    listener: UnixListener,
    auth: Authorizer,
    tx: mpsc::Sender<ControlMsg>,
    shutdown: impl Future<Output = ()>,
    opts: ServeOptions,
) {
    serve_sockets(vec![listener], auth, tx, shutdown, opts).await
}

/// Accepts from whichever listener has a client first, starting the look
/// at a different listener each time, so a flood on one socket cannot
/// starve the other.
async fn accept_any(listeners: &[UnixListener], turn: &mut usize) -> io::Result<UnixStream> {
    *turn = turn.wrapping_add(1);
    let start = *turn;
    std::future::poll_fn(|cx| {
        let n = listeners.len().max(1);
        for k in 0..n {
            let Some(l) = listeners.get(start.wrapping_add(k) % n) else {
                continue;
            };
            if let Poll::Ready(r) = l.poll_accept(cx) {
                return Poll::Ready(r.map(|(s, _)| s));
            }
        }
        Poll::Pending
    })
    .await
}

/// Serves the control sockets until `shutdown` completes: each connection,
/// on any of `listeners`, gets a slot (see the module docs) and its own
/// task; each accepted request is sent to `tx` as a [`ControlMsg`]. On
/// shutdown, stops accepting, lets connections finish the request in hand
/// (up to `drain_timeout`), and removes each socket file if it is still the
/// one its listener is bound to.
pub async fn serve_sockets(
    listeners: Vec<UnixListener>,
    auth: Authorizer,
    tx: mpsc::Sender<ControlMsg>,
    shutdown: impl Future<Output = ()>,
    opts: ServeOptions,
) {
    let files: Vec<(PathBuf, (u64, u64))> = listeners
        .iter()
        .filter_map(|l| {
            let path = l.local_addr().ok()?.as_pathname()?.to_path_buf();
            let meta = std::fs::metadata(&path).ok()?;
            Some((path, (meta.dev(), meta.ino())))
        })
        .collect();
    let slots = Arc::new(Mutex::new(Slots::default()));
    let log_turns = Arc::new(Semaphore::new(opts.max_log_replies.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut turn = 0usize;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept_any(&listeners, &mut turn) => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let peer = match peer_of(&stream) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "control socket: no peer credentials ({e}); closing");
                continue;
            }
        };
        let slot = match take_slot(&slots, &peer, auth.allows(&peer), &opts) {
            Ok(slot) => slot,
            Err(why) => {
                debug!(
                    uid = peer.uid,
                    pid = peer.pid,
                    "control socket: client refused: {why}"
                );
                // The socket's send buffer is empty, so this small write
                // does not block; if it fails the client sees a closed
                // socket.
                if let Ok(frame) = encode_frame(&Response::error(ErrorKind::Busy, why)) {
                    let _ = stream.try_write(&frame);
                }
                continue;
            }
        };
        let conn = Connection {
            auth: auth.clone(),
            tx: tx.clone(),
            stop: stop_rx.clone(),
            idle_timeout: opts.idle_timeout,
            log_turns: Arc::clone(&log_turns),
        };
        tokio::spawn(async move {
            conn.run(stream, peer).await;
            drop(slot);
        });
    }

    drop(listeners);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(opts.drain_timeout, async {
        loop {
            {
                let s = slots.lock().unwrap_or_else(|p| p.into_inner());
                if s.general == 0 && s.reserve == 0 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if drained.is_err() {
        debug!("control socket: some connections still busy at shutdown");
    }
    for (path, inode) in files {
        if let Ok(meta) = std::fs::metadata(&path)
            && (meta.dev(), meta.ino()) == inode
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The command name of a request, for messages and logs.
pub fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Status { .. } => "status",
        Request::Start { .. } => "start",
        Request::Stop { .. } => "stop",
        Request::Restart { .. } => "restart",
        Request::Reload => "reload",
        Request::Logs { .. } => "logs",
        Request::Test => "test",
        Request::Version => "version",
        Request::Fleet { .. } => "fleet",
        Request::FleetForget { .. } => "fleet forget",
        Request::Scale { .. } => "scale",
    }
}

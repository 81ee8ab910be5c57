//! The daemon's side of the control socket.
//!
//! [`bind`] creates the socket (replacing a stale one, refusing a live one),
//! and [`serve`] accepts clients until its injected `shutdown` future
//! completes. The server owns no daemon state: every accepted request is
//! forwarded to the supervisor as a [`ControlMsg`] carrying a oneshot sender
//! for the reply, and the reply is written back to the client.
//!
//! The server protects the daemon from its clients:
//! - a frame is at most [`MAX_FRAME`] bytes, checked before anything is
//!   allocated for it;
//! - a malformed frame is answered [`ErrorKind::BadRequest`] and the
//!   connection closed;
//! - a client that does not finish a request within
//!   [`ServeOptions::idle_timeout`] (5 s) is dropped;
//! - at most [`ServeOptions::max_clients`] (64) are served at once; the
//!   next one is answered [`ErrorKind::Busy`] and closed at once;
//! - changing requests from a peer that is not root, the daemon's uid or a
//!   member of the admin group are refused here and never forwarded.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::{Gid, Uid};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::protocol::{
    Envelope, EnvelopeVersion, ErrorKind, FrameError, MAX_FRAME, PROTOCOL_VERSION, Request,
    Response, encode_frame, read_frame_bytes, write_frame,
};

/// Who is on the other end of a connection, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// 0 when the kernel did not say.
    pub pid: i32,
}

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
    #[error("cannot set mode 0660 and group {gid} on {}: {source}", path.display())]
    Permissions {
        path: PathBuf,
        gid: String,
        source: io::Error,
    },
    #[error("admin group {name:?} does not exist (set [daemon].admin_group or create it)")]
    UnknownGroup { name: String },
    #[error("cannot look up group {name:?}: {source}")]
    GroupLookup { name: String, source: nix::Error },
}

/// Creates the control socket at `path`.
///
/// - The parent directory is created if missing.
/// - A stale socket file (nobody accepts on it: `ECONNREFUSED`) is removed
///   and replaced; a live one means another daemon runs there, and this
///   fails with [`ControlError::AlreadyRunning`]. A path that is not a
///   socket is never removed.
/// - The socket gets mode 0660 and, when `group` is given, that group.
///
/// Must be called inside a tokio runtime.
pub fn bind(path: &Path, group: Option<Gid>) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ControlError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(ControlError::AlreadyRunning {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                info!(socket = %path.display(), "removing stale control socket {}", path.display());
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(ControlError::RemoveStale {
                            path: path.to_path_buf(),
                            source,
                        });
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ControlError::Probe {
                    path: path.to_path_buf(),
                    source,
                });
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ControlError::Probe {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let perm_err = |source: io::Error| ControlError::Permissions {
        path: path.to_path_buf(),
        gid: group.map_or_else(|| "(unchanged)".to_string(), |g| g.to_string()),
        source,
    };
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| perm_err(e.into()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(perm_err)?;
    Ok(listener)
}

/// Decides who may make changing requests: uid 0, the daemon's own uid, and
/// members of the admin group (as primary group of the connecting process,
/// or as a supplementary group of the peer's user in the group database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorizer {
    pub daemon_uid: Uid,
    pub admin_gid: Option<Gid>,
}

impl Authorizer {
    pub fn new(daemon_uid: Uid, admin_gid: Option<Gid>) -> Self {
        Authorizer {
            daemon_uid,
            admin_gid,
        }
    }

    /// The daemon's effective uid and the named admin group, looked up now.
    /// `None` means only root and the daemon's uid may change anything.
    pub fn for_current_process(admin_group: Option<&str>) -> Result<Self, ControlError> {
        let admin_gid = match admin_group {
            None => None,
            Some(name) => match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Some(g.gid),
                Ok(None) => {
                    return Err(ControlError::UnknownGroup {
                        name: name.to_string(),
                    });
                }
                Err(source) => {
                    return Err(ControlError::GroupLookup {
                        name: name.to_string(),
                        source,
                    });
                }
            },
        };
        Ok(Authorizer::new(Uid::effective(), admin_gid))
    }

    /// Whether `peer` may make changing requests. May consult the group
    /// database (NSS), so call it off the async threads.
    pub fn allows(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.daemon_uid.as_raw() {
            return true;
        }
        let Some(admin) = self.admin_gid else {
            return false;
        };
        if peer.gid == admin.as_raw() {
            return true;
        }
        let Ok(Some(user)) = nix::unistd::User::from_uid(Uid::from_raw(peer.uid)) else {
            return false;
        };
        let Ok(name) = std::ffi::CString::new(user.name) else {
            return false;
        };
        nix::unistd::getgrouplist(&name, user.gid)
            .map(|groups| groups.contains(&admin))
            .unwrap_or(false)
    }
}

/// Limits of [`serve_with`]. [`serve`] uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Clients served at once; the next one gets [`ErrorKind::Busy`].
    pub max_clients: usize,
    /// How long a client may take to send a whole request (also the idle
    /// time allowed between requests, and the time to take a reply).
    pub idle_timeout: Duration,
    /// How long [`serve_with`] waits, after `shutdown`, for connections that
    /// are in the middle of a request.
    pub drain_timeout: Duration,
}

/// At most this many clients are served at once.
pub const MAX_CLIENTS: usize = 64;
/// A client must send a whole request within this time.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_clients: MAX_CLIENTS,
            idle_timeout: IDLE_TIMEOUT,
            drain_timeout: Duration::from_secs(2),
        }
    }
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

/// Serves the control socket until `shutdown` completes: each connection
/// gets its own task; each accepted request is sent to `tx` as a
/// [`ControlMsg`]. On shutdown, stops accepting, lets connections finish the
/// request in hand (up to `drain_timeout`), and removes the socket file if
/// it is still the one this listener is bound to.
pub async fn serve_with(
    listener: UnixListener,
    auth: Authorizer,
    tx: mpsc::Sender<ControlMsg>,
    shutdown: impl Future<Output = ()>,
    opts: ServeOptions,
) {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let inode = path
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()));
    let limit = Arc::new(Semaphore::new(opts.max_clients));
    let (stop_tx, stop_rx) = watch::channel(false);
    let busy_frame = encode_frame(&Response::error(
        ErrorKind::Busy,
        format!(
            "clearify-workerd is serving {} clients already; try again",
            opts.max_clients
        ),
    ))
    .expect("a small frame encodes");

    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // The socket's send buffer is empty, so this small write does
            // not block; if it fails the client just sees a closed socket.
            let _ = stream.try_write(&busy_frame);
            debug!("control socket: client refused, {} busy", opts.max_clients);
            continue;
        };
        let conn = Connection {
            auth,
            tx: tx.clone(),
            stop: stop_rx.clone(),
            idle_timeout: opts.idle_timeout,
        };
        tokio::spawn(async move {
            conn.run(stream).await;
            drop(permit);
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(
        opts.drain_timeout,
        limit.acquire_many(opts.max_clients as u32),
    )
    .await;
    if drained.is_err() {
        debug!("control socket: some connections still busy at shutdown");
    }
    if let (Some(path), Some(inode)) = (path, inode)
        && let Ok(meta) = std::fs::metadata(&path)
        && (meta.dev(), meta.ino()) == inode
    {
        let _ = std::fs::remove_file(&path);
    }
}

struct Connection {
    auth: Authorizer,
    tx: mpsc::Sender<ControlMsg>,
    stop: watch::Receiver<bool>,
    idle_timeout: Duration,
}

impl Connection {
    async fn run(mut self, mut stream: UnixStream) {
        let peer = match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid().unwrap_or(0),
            },
            Err(e) => {
                warn!(error = %e, "control socket: no peer credentials ({e}); closing");
                return;
            }
        };
        loop {
            let idle = self.idle_timeout;
            let read = tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => return,
                read = tokio::time::timeout(idle, read_frame_bytes(&mut stream)) => read,
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
                    let _ = self.reply(&mut stream, &bad).await;
                    return;
                }
            };
            let (response, keep_open) = self.handle(&body, peer).await;
            if !self.reply(&mut stream, &response).await || !keep_open {
                return;
            }
        }
    }

    /// Answers one frame body; the flag says whether the connection may
    /// stay open.
    async fn handle(&self, body: &[u8], peer: Peer) -> (Response, bool) {
        let version = match serde_json::from_slice::<EnvelopeVersion>(body) {
            Ok(v) => v.version,
            Err(e) => {
                return (
                    Response::error(ErrorKind::BadRequest, format!("malformed request: {e}")),
                    false,
                );
            }
        };
        if version != PROTOCOL_VERSION {
            return (
                Response::error(
                    ErrorKind::Version,
                    format!(
                        "protocol version {version} is not supported: clearify-workerd {} speaks protocol {PROTOCOL_VERSION}; use the clearifyctl of the same package",
                        crate::VERSION
                    ),
                ),
                false,
            );
        }
        let request = match serde_json::from_slice::<Envelope>(body) {
            Ok(env) => env.request,
            Err(e) => {
                return (
                    Response::error(ErrorKind::BadRequest, format!("malformed request: {e}")),
                    false,
                );
            }
        };
        if request.is_mutating() {
            let auth = self.auth;
            let allowed = tokio::task::spawn_blocking(move || auth.allows(&peer))
                .await
                .unwrap_or(false);
            if !allowed {
                warn!(
                    uid = peer.uid,
                    gid = peer.gid,
                    pid = peer.pid,
                    request = request_name(&request),
                    "control socket: permission denied: {} from uid {} (gid {}, pid {}); changing requests need root, the daemon's user or the admin group",
                    request_name(&request),
                    peer.uid,
                    peer.gid,
                    peer.pid
                );
                return (
                    Response::error(
                        ErrorKind::PermissionDenied,
                        format!(
                            "permission denied: {} needs root, the daemon's user or membership in the admin group ([daemon].admin_group); you are uid {}",
                            request_name(&request),
                            peer.uid
                        ),
                    ),
                    true,
                );
            }
        }
        let (reply, rx) = oneshot::channel();
        let msg = ControlMsg {
            request,
            peer,
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

    /// Writes a reply within the idle timeout; false if it could not.
    async fn reply(&self, stream: &mut UnixStream, response: &Response) -> bool {
        match tokio::time::timeout(self.idle_timeout, write_frame(stream, response)).await {
            Ok(Ok(())) => true,
            Ok(Err(FrameError::TooLarge(n))) => {
                warn!(
                    bytes = n,
                    limit = MAX_FRAME,
                    "control socket: reply too large"
                );
                let err = Response::error(
                    ErrorKind::Refused,
                    format!("the reply ({n} bytes) exceeds the frame limit; narrow the request"),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_daemon_uid_are_always_allowed() {
        let auth = Authorizer::new(Uid::from_raw(4242), None);
        let peer = |uid| Peer {
            uid,
            gid: 65534,
            pid: 1,
        };
        assert!(auth.allows(&peer(0)));
        assert!(auth.allows(&peer(4242)));
        assert!(!auth.allows(&peer(4243)));
    }

    #[test]
    fn primary_gid_of_the_peer_counts_as_admin_membership() {
        let auth = Authorizer::new(Uid::from_raw(4242), Some(Gid::from_raw(777)));
        // A uid with no passwd entry: only the primary gid can match.
        let peer = Peer {
            uid: 3_999_999,
            gid: 777,
            pid: 1,
        };
        assert!(auth.allows(&peer));
        assert!(!auth.allows(&Peer { gid: 778, ..peer }));
    }
}

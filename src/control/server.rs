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
//!   while parsing); replies go out in frames far below [`MAX_FRAME`]
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

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use nix::unistd::{Gid, Uid};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::protocol::{
    Envelope, EnvelopeVersion, ErrorKind, FrameError, MAX_FRAME, PROTOCOL_VERSION, Request,
    Response, encode_frame, log_frames, read_request_bytes, write_frame,
};

/// Who is on the other end of a connection, as the kernel recorded it when
/// the peer connected: `SO_PEERCRED` and `SO_PEERGROUPS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// The peer's effective gid.
    pub gid: u32,
    /// 0 when the kernel did not say.
    pub pid: i32,
    /// The peer's supplementary groups; empty when the kernel could not
    /// say (Linux before 4.13).
    pub groups: Vec<u32>,
}

/// The supplementary groups of the peer of `fd`, a connected Unix socket:
/// `getsockopt(SOL_SOCKET, SO_PEERGROUPS)` (Linux 4.13), which nix does not
/// wrap.
pub fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    peer_groups_with(fd, 32)
}

/// [`peer_groups`] with room for `room` groups in the first try.
fn peer_groups_with(fd: BorrowedFd<'_>, room: usize) -> io::Result<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; room];
    // The kernel says how much room it needs (ERANGE); the peer's groups
    // never change, so the second try fits.
    for _ in 0..2 {
        let mut len = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes, and the kernel writes
        // at most `len` bytes and sets `len` to what it wrote (or needs).
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let len = len as usize / GID;
        if rc == 0 {
            groups.truncate(len);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || len <= groups.len() {
            return Err(err);
        }
        groups.resize(len, 0);
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
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

/// Creates the control socket at `path`.
///
/// - The parent directory is created if missing.
/// - A stale socket file (nobody accepts on it: `ECONNREFUSED`) is removed
///   and replaced; a live one means another daemon runs there, and this
///   fails with [`ControlError::AlreadyRunning`]. A path that is not a
///   socket is never removed.
/// - The socket gets mode 0660 and, when `group` is given, that group
///   (else the daemon's), both before the file appears ([`bind_fd`]).
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
    clear_stale(path)?;
    let fd = bind_fd(path, group)?;
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    let setup = |source| ControlError::Setup {
        path: path.to_path_buf(),
        source,
    };
    std_listener.set_nonblocking(true).map_err(setup)?;
    UnixListener::from_std(std_listener).map_err(setup)
}

/// Removes a stale socket file at `path` (nobody accepts on it:
/// `ECONNREFUSED`); a live one is [`ControlError::AlreadyRunning`], a path
/// that is not a socket [`ControlError::NotASocket`] and is left alone; no
/// file is fine.
pub fn clear_stale(path: &Path) -> Result<(), ControlError> {
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
    Ok(())
}

/// The admin socket next to the reader socket `socket`: `admin.sock` in the
/// same directory.
pub fn admin_socket_path(socket: &Path) -> PathBuf {
    socket.with_file_name(ADMIN_SOCKET_NAME)
}

/// File name of the admin socket, next to `[daemon].socket`.
pub const ADMIN_SOCKET_NAME: &str = "admin.sock";

/// Mode of both socket files.
pub const SOCKET_MODE: u32 = 0o660;

/// Binds and listens on `path` with mode [`SOCKET_MODE`] and group `group`
/// (default: the daemon's effective gid), set before the file exists:
/// on a short-lived thread that has its own umask (`unshare(CLONE_FS)`,
/// then umask 0117, so the process's umask, 0027 under the packaged unit,
/// does not take the group's write bit), its own effective gid (a raw
/// `setresgid`, which changes only the calling thread; it needs
/// CAP_SETGID unless `group` is already one of the daemon's gids), and a
/// socket whose inode mode is set with `fchmod` before `bind`. The kernel
/// gives the new file that mode masked by the umask, and the thread's gid.
pub fn bind_fd(path: &Path, group: Option<Gid>) -> Result<OwnedFd, ControlError> {
    let owned = path.to_path_buf();
    let joined = std::thread::Builder::new()
        .name("control-bind".into())
        .spawn(move || bind_on_this_thread(&owned, group));
    let setup = |source| ControlError::Setup {
        path: path.to_path_buf(),
        source,
    };
    match joined {
        Ok(handle) => handle
            .join()
            .unwrap_or_else(|_| Err(setup(io::Error::other("the bind thread panicked")))),
        Err(e) => Err(setup(e)),
    }
}

/// The body of [`bind_fd`]; changes the credentials and umask of the
/// calling thread for good, so it must be a thread of its own.
fn bind_on_this_thread(path: &Path, group: Option<Gid>) -> Result<OwnedFd, ControlError> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    let setup = |source: io::Error| ControlError::Setup {
        path: path.to_path_buf(),
        source,
    };
    // SAFETY: plain system calls; CLONE_FS gives this thread its own umask
    // and cwd, so the umask below touches no other thread.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(setup(io::Error::last_os_error()));
    }
    // SAFETY: umask cannot fail; it is this thread's own now.
    unsafe { libc::umask(0o117) };
    if let Some(gid) = group
        && gid != Gid::effective()
    {
        let keep = libc::gid_t::MAX; // -1: leave unchanged
        // SAFETY: the raw system call (not glibc's wrapper, which applies it
        // to every thread) changes this thread's effective gid only.
        let rc = unsafe { libc::syscall(libc::SYS_setresgid, keep, gid.as_raw(), keep) };
        if rc != 0 {
            return Err(ControlError::Group {
                path: path.to_path_buf(),
                gid: gid.as_raw(),
                source: io::Error::last_os_error(),
            });
        }
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| setup(e.into()))?;
    nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(SOCKET_MODE))
        .map_err(|e| setup(e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| setup(e.into()))?;
    bind(fd.as_raw_fd(), &addr).map_err(|e| ControlError::Bind {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let backlog = Backlog::new(128).map_err(|e| setup(e.into()))?;
    listen(&fd, backlog).map_err(|e| setup(e.into()))?;
    Ok(fd)
}

/// Decides who may make changing requests: uid 0, the daemon's own uid, and
/// members of the admin group. Membership means the connecting process has
/// the group, as its gid or among its supplementary groups ([`Peer`]): the
/// rule the kernel applies to the socket file's group permission. A user
/// just added to the group has it only in processes started from a new
/// log-in (or `newgrp`/`sg`), not in an existing session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorizer {
    pub daemon_uid: Uid,
    pub admin_gid: Option<Gid>,
    /// The admin group's name, for messages; `None`: say "the admin group".
    pub admin_name: Option<Arc<str>>,
}

impl Authorizer {
    pub fn new(daemon_uid: Uid, admin_gid: Option<Gid>) -> Self {
        Authorizer {
            daemon_uid,
            admin_gid,
            admin_name: None,
        }
    }

    /// The same, naming the admin group in refusals.
    pub fn named(mut self, admin_group: &str) -> Self {
        self.admin_name = Some(admin_group.into());
        self
    }

    /// How a refusal names who may: "root, the daemon's user or members of
    /// group clearify-admin ([daemon].admin_group)".
    fn who_may(&self) -> String {
        match (&self.admin_name, self.admin_gid) {
            (Some(name), Some(_)) => format!(
                "root, the daemon's user or membership in group {name} ([daemon].admin_group)"
            ),
            (_, Some(gid)) => format!(
                "root, the daemon's user or membership in the admin group (gid {gid}, [daemon].admin_group)"
            ),
            (_, None) => {
                "root or the daemon's user (no [daemon].admin_group exists on this machine)"
                    .to_string()
            }
        }
    }

    /// The daemon's effective uid and the named admin group, looked up now
    /// (in /etc/group, else NSS: [`Accounts`](crate::sys::accounts::Accounts)).
    /// `None` means only root and the daemon's uid may change anything.
    pub fn for_current_process(admin_group: Option<&str>) -> Result<Self, ControlError> {
        let admin_gid = match admin_group {
            None => None,
            Some(name) => match crate::sys::accounts::Accounts::system().group_by_name(name) {
                Ok(Some(gid)) => Some(gid),
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
        let auth = Authorizer::new(Uid::effective(), admin_gid);
        Ok(match admin_group {
            Some(name) => auth.named(name),
            None => auth,
        })
    }

    /// Whether `peer` may make changing requests. Looks only at `peer`
    /// and `self`: cheap, no user database.
    pub fn allows(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.daemon_uid.as_raw() {
            return true;
        }
        let Some(admin) = self.admin_gid.map(Gid::as_raw) else {
            return false;
        };
        peer.gid == admin || peer.groups.contains(&admin)
    }
}

/// Limits of [`serve_with`]. [`serve`] uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Clients served at once; the next one gets [`ErrorKind::Busy`]
    /// (unless it is an admin and the admin reserve has room).
    pub max_clients: usize,
    /// Connections at once from one uid (root excepted).
    pub max_per_uid: usize,
    /// Slots beyond `max_clients` that only admins may take.
    pub admin_reserve: usize,
    /// `logs` answers in the making at once (each may hold a copy of every
    /// ring buffer until the client has read it); others wait for a turn.
    pub max_log_replies: usize,
    /// How long a client may take to send a whole request (also the idle
    /// time allowed between requests, and the time to take a reply).
    pub idle_timeout: Duration,
    /// How long [`serve_with`] waits, after `shutdown`, for connections that
    /// are in the middle of a request.
    pub drain_timeout: Duration,
}

/// At most this many clients are served at once.
pub const MAX_CLIENTS: usize = 64;
/// At most this many connections from one uid other than root.
pub const MAX_PER_UID: usize = 8;
/// Slots held back for admins beyond [`MAX_CLIENTS`].
pub const ADMIN_RESERVE: usize = 8;
/// `logs` answers in the making at once.
pub const MAX_LOG_REPLIES: usize = 2;
/// A client must send a whole request within this time.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_clients: MAX_CLIENTS,
            max_per_uid: MAX_PER_UID,
            admin_reserve: ADMIN_RESERVE,
            max_log_replies: MAX_LOG_REPLIES,
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

/// Connection slots in use: per pool and per uid.
#[derive(Debug, Default)]
struct Slots {
    general: usize,
    reserve: usize,
    per_uid: HashMap<u32, usize>,
}

/// Which pool a slot came from.
#[derive(Debug, Clone, Copy)]
enum Pool {
    General,
    Reserve,
}

/// A slot held by one connection; given back on drop.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    uid: u32,
    pool: Pool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match self.pool {
            Pool::General => s.general = s.general.saturating_sub(1),
            Pool::Reserve => s.reserve = s.reserve.saturating_sub(1),
        }
        if let Some(n) = s.per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_uid.remove(&self.uid);
            }
        }
    }
}

/// Takes a slot for `peer` (an admin when `admin`), or says why not.
fn take_slot(
    slots: &Arc<Mutex<Slots>>,
    peer: &Peer,
    admin: bool,
    opts: &ServeOptions,
) -> Result<Slot, String> {
    let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
    let mine = s.per_uid.get(&peer.uid).copied().unwrap_or(0);
    if peer.uid != 0 && mine >= opts.max_per_uid {
        return Err(format!(
            "too many connections from uid {}: at most {} at once per user (another clearifyctl status --watch or logs -f?); close some and try again",
            peer.uid, opts.max_per_uid
        ));
    }
    let pool = if s.general < opts.max_clients {
        s.general += 1;
        Pool::General
    } else if admin && s.reserve < opts.admin_reserve {
        s.reserve += 1;
        Pool::Reserve
    } else {
        return Err(format!(
            "clearify-workerd is serving {} clients already; try again (root and admins have {} more slots held back)",
            opts.max_clients, opts.admin_reserve
        ));
    };
    *s.per_uid.entry(peer.uid).or_insert(0) += 1;
    Ok(Slot {
        slots: Arc::clone(slots),
        uid: peer.uid,
        pool,
    })
}

/// Who is on the other end of `stream`, from the kernel.
fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let groups = peer_groups(stream.as_fd()).unwrap_or_else(|e| {
        // Only the gid counts then; say so once, not per connection.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            warn!(error = %e, "control socket: cannot read the peers' supplementary groups (SO_PEERGROUPS: {e}); only a peer's primary group counts for [daemon].admin_group");
        });
        Vec::new()
    });
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().unwrap_or(0),
        groups,
    })
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

struct Connection {
    /// Turns for `logs` answers ([`ServeOptions::max_log_replies`]).
    log_turns: Arc<Semaphore>,
    auth: Authorizer,
    tx: mpsc::Sender<ControlMsg>,
    stop: watch::Receiver<bool>,
    idle_timeout: Duration,
}

impl Connection {
    async fn run(mut self, mut stream: UnixStream, peer: Peer) {
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
            if !self.reply(&mut stream, response).await || !keep_open {
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
        let version = match serde_json::from_slice::<EnvelopeVersion>(body) {
            Ok(v) => v.version,
            Err(e) => {
                return Err(Box::new((
                    Response::error(ErrorKind::BadRequest, format!("malformed request: {e}")),
                    false,
                )));
            }
        };
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
        let request = match serde_json::from_slice::<Envelope>(body) {
            Ok(env) => env.request,
            Err(e) => {
                return Err(Box::new((
                    Response::error(ErrorKind::BadRequest, format!("malformed request: {e}")),
                    false,
                )));
            }
        };
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
/// otherwise keep), so the daemon's RSS goes back to its idle size.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
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

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: 1,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn slots_cap_each_uid_and_hold_some_back_for_admins() {
        let opts = ServeOptions {
            max_clients: 4,
            max_per_uid: 2,
            admin_reserve: 2,
            ..ServeOptions::default()
        };
        let slots = Arc::new(Mutex::new(Slots::default()));
        let reader = |uid| peer(uid, 100, &[]);
        // One uid gets 2, whatever is free.
        let a1 = take_slot(&slots, &reader(1000), false, &opts).unwrap();
        let _a2 = take_slot(&slots, &reader(1000), false, &opts).unwrap();
        let why = take_slot(&slots, &reader(1000), false, &opts)
            .err()
            .unwrap();
        assert!(why.contains("too many connections from uid 1000"), "{why}");
        // Others fill the rest; then readers are refused ...
        let _b = take_slot(&slots, &reader(1001), false, &opts).unwrap();
        let _c = take_slot(&slots, &reader(1002), false, &opts).unwrap();
        let why = take_slot(&slots, &reader(1003), false, &opts)
            .err()
            .unwrap();
        assert!(why.contains("serving 4 clients"), "{why}");
        // ... but admins get the reserve, root beyond its per-uid cap.
        let _r1 = take_slot(&slots, &peer(0, 0, &[]), true, &opts).unwrap();
        let _r2 = take_slot(&slots, &peer(0, 0, &[]), true, &opts).unwrap();
        assert!(take_slot(&slots, &peer(0, 0, &[]), true, &opts).is_err());
        // A slot given back is free again.
        drop(a1);
        let _d = take_slot(&slots, &reader(1003), false, &opts).unwrap();
        let s = slots.lock().unwrap();
        assert_eq!((s.general, s.reserve), (4, 2));
        assert_eq!(s.per_uid.get(&1000), Some(&1));
    }

    #[test]
    fn root_and_daemon_uid_are_always_allowed() {
        let auth = Authorizer::new(Uid::from_raw(4242), None);
        assert!(auth.allows(&peer(0, 65534, &[])));
        assert!(auth.allows(&peer(4242, 65534, &[])));
        assert!(!auth.allows(&peer(4243, 65534, &[])));
        // Without an admin group, no group helps.
        assert!(!auth.allows(&peer(4243, 0, &[0, 777])));
    }

    #[test]
    fn the_peers_gid_or_supplementary_groups_make_it_an_admin() {
        let auth = Authorizer::new(Uid::from_raw(4242), Some(Gid::from_raw(777)));
        assert!(auth.allows(&peer(3_999_999, 777, &[])));
        assert!(auth.allows(&peer(3_999_999, 778, &[100, 777])));
        assert!(!auth.allows(&peer(3_999_999, 778, &[])));
        assert!(!auth.allows(&peer(3_999_999, 778, &[100, 776, 7777])));
    }

    #[test]
    fn the_user_database_is_not_consulted() {
        // root (uid 0) is in group 0 in any group database, but a peer that
        // is not uid 0 and lacks the group in its process is refused.
        let auth = Authorizer::new(Uid::from_raw(4242), Some(Gid::from_raw(0)));
        assert!(!auth.allows(&peer(65534, 65534, &[65534])));
        assert!(auth.allows(&peer(65534, 65534, &[65534, 0])));
    }

    /// A socket pair made by a thread whose own credentials (not the
    /// process's: a raw `setgroups` system call changes only the calling
    /// thread) carry `groups`, when this process may set groups (root);
    /// otherwise one made with this process's groups. Returns the pair and
    /// the groups its peers have.
    fn pair_with_groups(
        groups: &[u32],
    ) -> (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
        Vec<u32>,
    ) {
        if !nix::unistd::geteuid().is_root() {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let mine = nix::unistd::getgroups().unwrap();
            return (a, b, mine.into_iter().map(Gid::as_raw).collect());
        }
        let groups = groups.to_vec();
        std::thread::spawn(move || {
            // SAFETY: plain system call on a valid buffer; it changes this
            // thread's credentials only, and the thread ends right after.
            let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
            assert_eq!(rc, 0, "setgroups: {}", io::Error::last_os_error());
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            (a, b, groups)
        })
        .join()
        .unwrap()
    }

    #[test]
    fn peer_groups_are_the_peers_groups() {
        // Beyond the first buffer (32), and unsorted.
        let wanted: Vec<u32> = (0..100).map(|n| 50_000 - 7 * n).collect();
        let (a, b, mut expected) = pair_with_groups(&wanted);
        expected.sort_unstable();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(expected.len(), 100);
            assert!(
                nix::unistd::getgroups().unwrap().len() < 100,
                "the groups were set on the helper thread only"
            );
        }
        for end in [&a, &b] {
            // 0: the kernel first says how much room it needs (ERANGE).
            for room in [0, 1, 32, 100, 70_000] {
                let mut got = peer_groups_with(end.as_fd(), room).unwrap();
                got.sort_unstable();
                assert_eq!(got, expected, "room for {room}");
            }
            let mut got = peer_groups(end.as_fd()).unwrap();
            got.sort_unstable();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_socket_without_a_peer_has_no_peer_groups() {
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        assert!(peer_groups(fd.as_fd()).is_err());
    }
}

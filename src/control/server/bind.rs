//! Creating the control sockets: the stale-socket check, and binding with
//! mode and group set before the socket file exists.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::unistd::Gid;
use tokio::net::UnixListener;
use tracing::info;

use super::ControlError;

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

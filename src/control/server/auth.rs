//! Who is on the other end of the control socket, and who may change
//! anything: the peer's credentials as the kernel recorded them
//! (`SO_PEERCRED`, `SO_PEERGROUPS`) and the [`Authorizer`] that decides
//! from them alone.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use nix::unistd::{Gid, Uid};
use tokio::net::UnixStream;
use tracing::warn;

use super::ControlError;

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
pub(super) fn peer_groups_with(fd: BorrowedFd<'_>, room: usize) -> io::Result<Vec<u32>> {
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
    pub(super) fn who_may(&self) -> String {
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

/// Who is on the other end of `stream`, from the kernel.
pub(super) fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
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

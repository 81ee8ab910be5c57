//! The socket family: the control socket (exists, is a socket, its mode
//! and group, this user can connect), the daemon behind it (answers
//! `version` with our version) and the admin socket next to it.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use super::{Finding, whoami};
use crate::VERSION;
use crate::config;
use crate::control::client::{ClientError, Connection};
use crate::control::protocol::{PROTOCOL_VERSION, Request, Response};
use crate::control::server::{ADMIN_SOCKET_NAME, SOCKET_MODE, admin_socket_path};
use crate::sys::accounts::Accounts;

const SYSTEMCTL_HINT: &str = "is clearify-workerd running? check with `systemctl status clearify-workerd`, \
     start it with `systemctl start clearify-workerd` (logs: `journalctl -u clearify-workerd`)";

/// The findings about the control socket, and whether doctor could
/// connect to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSocket {
    pub findings: Vec<Finding>,
    pub connected: bool,
}

impl ControlSocket {
    fn failed(finding: Finding) -> ControlSocket {
        ControlSocket {
            findings: vec![finding],
            connected: false,
        }
    }
}

/// The control socket: it exists, is a socket (its mode and group), this
/// user can connect, and the daemon answers `version` with ours. Gives the
/// `control socket` check and, once connected, the `daemon` check.
pub fn socket_checks(socket: &Path, timeout: Duration) -> ControlSocket {
    const NAME: &str = "control socket";
    let shown = socket.display();
    let meta = match std::fs::metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return ControlSocket::failed(Finding::fail(
                NAME,
                format!("{shown} does not exist"),
                SYSTEMCTL_HINT,
            ));
        }
        Err(e) => {
            let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                group_hint(socket)
            } else {
                SYSTEMCTL_HINT.to_string()
            };
            return ControlSocket::failed(Finding::fail(
                NAME,
                format!("cannot stat {shown}: {e}"),
                hint,
            ));
        }
    };
    if !meta.file_type().is_socket() {
        return ControlSocket::failed(Finding::fail(
            NAME,
            format!("{shown} is not a socket"),
            "remove it (the daemon creates the socket when it starts) or set another \
             [daemon].socket / --socket",
        ));
    }
    let (what, mode, group) = describe(socket, &meta);
    let mut checks = Vec::new();
    let mut conn = match Connection::open(socket, timeout) {
        Ok(c) => c,
        Err(ClientError::PermissionDenied { .. }) => {
            return ControlSocket::failed(Finding::fail(
                NAME,
                format!("{what}: permission denied for {}", whoami()),
                format!(
                    "run as root (sudo), or join the socket's group: sudo usermod -aG {group} $USER \
                     (then log in again)"
                ),
            ));
        }
        Err(e) => {
            let reason = match &e {
                ClientError::NotRunning { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            return ControlSocket::failed(Finding::fail(
                NAME,
                format!("{what}: cannot connect: {reason} (a stale socket: nothing listens)"),
                SYSTEMCTL_HINT,
            ));
        }
    };
    if mode & 0o002 != 0 {
        checks.push(Finding::warn(
            NAME,
            format!("{what}: connected, but anyone may connect"),
            "the daemon creates it with mode 0660; something changed it: restart the daemon",
        ));
    } else {
        checks.push(Finding::ok(NAME, format!("{what}: connected")));
    }
    checks.push(match conn.call(Request::Version) {
        Ok(Response::Version { version, protocol }) => {
            if version == VERSION && protocol == PROTOCOL_VERSION {
                Finding::ok(
                    "daemon",
                    format!(
                        "clearify-workerd {version} (protocol {protocol}) answers; \
                         same version as clearifyctl"
                    ),
                )
            } else {
                Finding::warn(
                    "daemon",
                    format!(
                        "clearify-workerd {version} (protocol {protocol}) answers, but clearifyctl is \
                         {VERSION} (protocol {PROTOCOL_VERSION})"
                    ),
                    "restart the daemon after an upgrade: systemctl restart clearify-workerd",
                )
            }
        }
        Ok(Response::Error { kind, message }) => Finding::fail(
            "daemon",
            format!("the daemon refused `version` ({kind:?}): {message}"),
            "check that clearifyctl and clearify-workerd come from the same package version",
        ),
        Ok(other) => Finding::fail(
            "daemon",
            format!("unexpected answer to `version`: {other:?}"),
            "check that clearifyctl and clearify-workerd come from the same package version",
        ),
        Err(e) => Finding::fail(
            "daemon",
            format!("no answer to `version`: {e}"),
            "the daemon may be hung: journalctl -u clearify-workerd; systemctl restart clearify-workerd",
        ),
    });
    ControlSocket {
        findings: checks,
        connected: true,
    }
}

/// `PATH (srw-rw----, mode 0660, OWNER:GROUP)`, the mode and the group's
/// name of a socket file.
fn describe(socket: &Path, meta: &std::fs::Metadata) -> (String, u32, String) {
    let mode = meta.permissions().mode() & 0o7777;
    let owner = user_name(meta.uid());
    let group = group_name(meta.gid());
    let what = format!(
        "{} ({}, mode {mode:04o}, {owner}:{group})",
        socket.display(),
        mode_string(mode)
    );
    (what, mode, group)
}

/// The admin socket next to `socket` (`admin.sock`): when the admin group
/// `admin_group` exists, the daemon listens there, and the file must be a
/// socket of that group with mode 0660 so that the group's members (and
/// nobody else) may open it. Without the group there is no admin socket,
/// and only root and the daemon's user may change anything: a warning.
pub fn admin_socket_check(socket: &Path, admin_group: &str) -> Finding {
    const NAME: &str = "admin socket";
    let admin = admin_socket_path(socket);
    let shown = admin.display();
    let restart = format!(
        "restart the daemon (systemctl restart clearify-workerd): it creates {ADMIN_SOCKET_NAME} \
         with mode {SOCKET_MODE:04o} and group {admin_group} ([daemon].admin_group) when it starts"
    );
    let gid = match Accounts::system().group_by_name(admin_group) {
        Ok(Some(gid)) => gid,
        Ok(None) => {
            let exists = std::fs::symlink_metadata(&admin).is_ok();
            return Finding::warn(
                NAME,
                format!(
                    "there is no group {admin_group} ([daemon].admin_group), so {}only root and the \
                     daemon's user may start, stop, restart or reload",
                    if exists {
                        format!("{shown} is left over and ")
                    } else {
                        String::new()
                    }
                ),
                format!(
                    "to let admins in: sudo groupadd --system {admin_group}; sudo adduser USER {admin_group}; \
                     then restart the daemon (systemctl restart clearify-workerd)"
                ),
            );
        }
        Err(e) => {
            return Finding::fail(
                NAME,
                format!("cannot look up group {admin_group} ([daemon].admin_group): {e}"),
                "check /etc/group and NSS (getent group)",
            );
        }
    };
    let meta = match std::fs::symlink_metadata(&admin) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Finding::fail(
                NAME,
                format!(
                    "{shown} does not exist, though group {admin_group} does: its members cannot \
                     start, stop, restart or reload"
                ),
                restart,
            );
        }
        Err(e) => {
            let fix = if e.kind() == io::ErrorKind::PermissionDenied {
                group_hint(&admin)
            } else {
                restart
            };
            return Finding::fail(NAME, format!("cannot stat {shown}: {e}"), fix);
        }
    };
    if !meta.file_type().is_socket() {
        return Finding::fail(
            NAME,
            format!("{shown} is not a socket"),
            format!("remove it, then {restart}"),
        );
    }
    let (what, mode, group) = describe(&admin, &meta);
    if meta.gid() != gid.as_raw() {
        return Finding::fail(
            NAME,
            format!("{what}: its group is {group}, not the admin group {admin_group}"),
            restart,
        );
    }
    if mode & 0o020 == 0 {
        return Finding::fail(
            NAME,
            format!("{what}: the group {admin_group} may not connect"),
            restart,
        );
    }
    if mode & 0o002 != 0 {
        return Finding::warn(
            NAME,
            format!("{what}: anyone may connect"),
            format!("something changed its mode; {restart}"),
        );
    }
    Finding::ok(
        NAME,
        format!("{what}: for group {admin_group} ([daemon].admin_group)"),
    )
}

fn group_hint(socket: &Path) -> String {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    format!(
        "this user may not reach {}: run as root (sudo), or join the daemon's group \
         (sudo usermod -aG {} $USER, then log in again)",
        dir.display(),
        config::DEFAULT_ADMIN_GROUP
    )
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(gid.into()) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// `srw-rw----` for a socket with mode 0660.
pub(super) fn mode_string(mode: u32) -> String {
    let mut s = String::from("s");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

//! The journald family: journald's socket accepts datagrams.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use super::Finding;

/// journald's socket exists and accepts a connection (nothing is sent).
/// Absent means no systemd journal: a warning, the daemon logs to stderr.
pub fn journald_check(socket: &Path) -> Finding {
    let shown = socket.display();
    match std::fs::symlink_metadata(socket) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Finding::warn(
                "journald",
                format!("{shown} does not exist: no systemd journal on this host"),
                "without journald the daemon and its workers log to stderr; \
                 run it as the clearify-workerd.service unit on a systemd host for journald logging",
            );
        }
        Err(e) => {
            return Finding::fail(
                "journald",
                format!("cannot stat {shown}: {e}"),
                "check that systemd-journald is running: systemctl status systemd-journald",
            );
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Finding::fail(
                "journald",
                format!("{shown} is not a socket"),
                "something else occupies journald's socket path; check systemd-journald.socket",
            );
        }
        Ok(_) => {}
    }
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            return Finding::fail(
                "journald",
                format!("cannot create a datagram socket: {e}"),
                "check the process limits (ulimit -n)",
            );
        }
    };
    match sock.connect(socket) {
        Ok(()) => Finding::ok("journald", format!("{shown} accepts datagrams")),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Finding::fail(
            "journald",
            format!("{shown}: {e}"),
            "this user may not log to journald; the daemon's user needs write access to the socket",
        ),
        Err(e) => Finding::fail(
            "journald",
            format!("{shown} does not accept datagrams: {e}"),
            "journald is not listening: systemctl status systemd-journald systemd-journald.socket",
        ),
    }
}

//! `clearifyctl`: everything but `main`. The binary parses [`Args`] with
//! clap and calls [`run`]; here are the arguments ([`args`]), where the
//! socket is, how requests are driven ([`socket`], `commands`), exit codes
//! ([`exit`]), how answers are rendered for people ([`render`]) and the
//! doctor ([`doctor`]).

pub mod args;
mod commands;
pub mod doctor;
pub mod exit;
pub mod fleet;
pub mod render;
pub mod socket;
mod watch;

pub use args::{Args, Command};
pub use commands::run;
pub use exit::{exit_code_for, exit_code_for_client};

use std::path::{Path, PathBuf};

use crate::config::DEFAULT_SOCKET;

/// The control socket to use: `--socket`/`CLEARIFY_SOCKET` (`explicit`),
/// else `[daemon].socket` from the config file (resolved as the daemon
/// resolves it, [`crate::config::daemon_socket_of`]), else [`DEFAULT_SOCKET`].
pub fn resolve_socket(explicit: Option<&Path>, config: &Path) -> PathBuf {
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return p.to_path_buf();
    }
    crate::config::daemon_socket_of(config).unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// `[daemon].socket` from a config file's text ([`crate::config::daemon_socket`]).
pub fn socket_from_config(text: &str) -> Option<PathBuf> {
    crate::config::daemon_socket(text)
}

/// The sockets to try, in order, for a request to the daemon whose reader
/// socket is `reader`: changing requests try the admin socket next to it
/// (`admin.sock`) first, reading requests the reader socket first; the
/// other is the fallback when the first cannot be opened (no permission,
/// or not there). A `reader` that is itself an `admin.sock` is tried alone.
pub fn socket_candidates(reader: &Path, mutating: bool) -> Vec<PathBuf> {
    let admin = crate::control::server::admin_socket_path(reader);
    if admin == reader {
        return vec![admin];
    }
    if mutating {
        vec![admin, reader.to_path_buf()]
    } else {
        vec![reader.to_path_buf(), admin]
    }
}

/// Targets for a status query: "all" means everything (no filter).
pub fn status_targets(targets: &[String]) -> Vec<String> {
    if crate::model::target::names_all(targets) {
        Vec::new()
    } else {
        targets.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::ErrorKind;

    #[test]
    fn socket_comes_from_the_daemon_table() {
        let text = "[daemon]\nsocket = \"/run/x/ctl.sock\" # here\n[groups.text]\nqueues=[\"a\"]\n";
        assert_eq!(
            socket_from_config(text),
            Some(PathBuf::from("/run/x/ctl.sock"))
        );
        assert_eq!(socket_from_config("[daemon]\nlog_level = \"info\"\n"), None);
        assert_eq!(socket_from_config("[other]\nsocket = \"/a\"\n"), None);
    }

    #[test]
    fn a_broken_config_still_yields_its_socket() {
        let text = "[daemon]\nsocket = '/run/y.sock'\n[groups.text\nbroken = = =\n";
        assert!(text.parse::<toml::Table>().is_err());
        assert_eq!(socket_from_config(text), Some(PathBuf::from("/run/y.sock")));
    }

    #[test]
    fn explicit_socket_wins_then_config_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("workers.toml");
        std::fs::write(&cfg, "[daemon]\nsocket = \"/from/config.sock\"\n").unwrap();
        assert_eq!(
            resolve_socket(Some(Path::new("/flag.sock")), &cfg),
            PathBuf::from("/flag.sock")
        );
        assert_eq!(
            resolve_socket(None, &cfg),
            PathBuf::from("/from/config.sock")
        );
        assert_eq!(
            resolve_socket(None, &dir.path().join("missing.toml")),
            PathBuf::from(DEFAULT_SOCKET)
        );
    }

    #[test]
    fn changing_requests_try_the_admin_socket_first() {
        let r = Path::new("/run/clearify-workerd/control.sock");
        let a = PathBuf::from("/run/clearify-workerd/admin.sock");
        assert_eq!(socket_candidates(r, true), vec![a.clone(), r.to_path_buf()]);
        assert_eq!(
            socket_candidates(r, false),
            vec![r.to_path_buf(), a.clone()]
        );
        assert_eq!(socket_candidates(&a, false), vec![a.clone()]);
    }

    #[test]
    fn error_kinds_map_to_documented_exit_codes() {
        assert_eq!(exit_code_for(ErrorKind::PermissionDenied), 4);
        assert_eq!(exit_code_for(ErrorKind::UnknownTarget), 1);
        assert_eq!(exit_code_for(ErrorKind::Refused), 1);
    }
}

//! `clearifyctl doctor`: checks the host, the config, the control sockets,
//! the broker and the Celery app, and says how to fix what is wrong.
//!
//! Each family of checks has its file ([`config`], [`cgroup`],
//! [`journald`], [`socket`], [`broker`], [`celery`]) and returns
//! [`Finding`]s, each with its fix, so tests can call them one by one.
//! [`run`] calls them all in order on the facts of one [`Host`];
//! [`render`] prints them, one aligned line each plus an indented hint for
//! warn and fail. The exit code ([`exit_code`]) is 0 when nothing failed,
//! 1 otherwise.

pub mod broker;
pub mod celery;
pub mod cgroup;
pub mod config;
pub mod journald;
mod render;
pub mod socket;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::broker::broker_check;
pub use self::celery::{CELERY_TIMEOUT, celery_check};
pub use self::cgroup::cgroup_checks;
pub use self::config::config_check;
pub use self::journald::journald_check;
pub use self::render::render;
pub use self::socket::{admin_socket_check, socket_checks};
pub use crate::logs::JOURNAL_SOCKET;
use crate::sys::cgroup::{self as cg, CgroupFacts, Layout};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One line of `clearifyctl doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked, e.g. `config`, `broker`.
    pub check: String,
    pub status: Status,
    /// What was found. May span several lines (diagnostics, command
    /// output); the renderer indents the continuation lines.
    pub detail: String,
    /// How to fix it; shown for warn and fail.
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &str, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.to_string(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Everything `clearifyctl doctor` looks at: the command line's config
/// and socket, and where this host keeps what is checked. [`Host::new`]
/// reads the real host; tests point the fields at fakes.
#[derive(Debug, Clone)]
pub struct Host {
    /// The config file (`--config`).
    pub config: PathBuf,
    /// `--socket` / `$CLEARIFY_SOCKET`, when given.
    pub socket: Option<PathBuf>,
    /// Timeout of the `version` request to the daemon.
    pub request_timeout: Duration,
    /// Timeout of `celery … report`.
    pub celery_timeout: Duration,
    /// journald's socket (normally [`JOURNAL_SOCKET`]).
    pub journal_socket: PathBuf,
    /// The cgroupfs root, normally /sys/fs/cgroup.
    pub cgroup_root: PathBuf,
    /// The layout of the cgroupfs at `cgroup_root`.
    pub cgroup_layout: Layout,
    /// /proc/self/cgroup of the doctor process.
    pub proc_self_cgroup: Option<String>,
    /// /proc/cmdline.
    pub proc_cmdline: Option<String>,
    /// The daemon's cgroup when it runs under systemd
    /// ([`SERVICE_CGROUP`](crate::sys::cgroup::SERVICE_CGROUP)).
    pub service_cgroup: PathBuf,
}

impl Host {
    /// This host, with `config` and `socket` from the command line.
    pub fn new(config: &Path, socket: Option<&Path>) -> Host {
        let root = PathBuf::from(cg::DEFAULT_ROOT);
        Host {
            config: config.to_path_buf(),
            socket: socket.map(Path::to_path_buf),
            request_timeout: Duration::from_secs_f64(super::args::REQUEST_TIMEOUT_SECS),
            celery_timeout: CELERY_TIMEOUT,
            journal_socket: PathBuf::from(JOURNAL_SOCKET),
            cgroup_layout: cg::detect_layout(&root),
            cgroup_root: root,
            proc_self_cgroup: std::fs::read_to_string("/proc/self/cgroup").ok(),
            proc_cmdline: std::fs::read_to_string("/proc/cmdline").ok(),
            service_cgroup: PathBuf::from(cg::SERVICE_CGROUP),
        }
    }

    /// What cgroupfs says about this process and the service.
    pub fn cgroup_facts(&self) -> CgroupFacts {
        CgroupFacts::read(
            &self.cgroup_root,
            self.proc_self_cgroup.as_deref(),
            &self.service_cgroup,
        )
    }
}

/// Every check, in the order they are printed: config, cgroup, journald,
/// control socket and daemon, admin socket, broker, celery.
pub fn run(host: &Host) -> Vec<Finding> {
    let mut findings = Vec::new();
    let (config_findings, loaded) = config_check(&host.config);
    findings.extend(config_findings);
    let require_limits = loaded.as_ref().is_ok_and(|c| c.daemon.require_limits);
    findings.extend(cgroup_checks(host, require_limits));
    findings.push(journald_check(&host.journal_socket));
    let socket = super::resolve_socket(host.socket.as_deref(), &host.config);
    let mut control = socket_checks(&socket, host.request_timeout);
    let explicit = host
        .socket
        .as_deref()
        .is_some_and(|p| !p.as_os_str().is_empty());
    if !explicit
        && std::fs::read_to_string(&host.config).is_err()
        && let Some(first) = control.findings.first_mut()
    {
        first.note_on_first_line(&format!(
            "(the default: [daemon].socket could not be read from {})",
            host.config.display()
        ));
    }
    findings.extend(control.findings);
    // The admin socket matters only once the daemon answers: until then,
    // the control socket's finding says what to do first.
    if control.connected {
        let admin_group = loaded
            .as_ref()
            .map_or(crate::config::DEFAULT_ADMIN_GROUP, |c| {
                c.daemon.admin_group.as_str()
            });
        findings.push(admin_socket_check(&socket, admin_group));
    }
    match &loaded {
        Ok(config) => {
            findings.push(broker_check(config));
            findings.push(celery_check(config, host.celery_timeout));
        }
        Err(why) => {
            let fix = "fix the config first (see above), then run clearifyctl doctor again";
            findings.push(Finding::warn("broker", format!("not checked: {why}"), fix));
            findings.push(Finding::warn("celery", format!("not checked: {why}"), fix));
        }
    }
    findings
}

impl Finding {
    /// Appends `note` to the first line of the detail.
    fn note_on_first_line(&mut self, note: &str) {
        let (head, rest) = match self.detail.split_once('\n') {
            Some((h, r)) => (h, Some(r)),
            None => (self.detail.as_str(), None),
        };
        let mut detail = format!("{head} {note}");
        if let Some(r) = rest {
            detail = format!("{detail}\n{r}");
        }
        self.detail = detail;
    }
}

/// 0 when no check failed, 1 otherwise.
pub fn exit_code(findings: &[Finding]) -> i32 {
    if findings.iter().any(|f| f.status == Status::Fail) {
        super::exit::REFUSED
    } else {
        super::exit::OK
    }
}

/// "user NAME", or "uid N" when the user has no name.
fn whoami() -> String {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => format!("user {}", u.name),
        _ => format!("uid {uid}"),
    }
}

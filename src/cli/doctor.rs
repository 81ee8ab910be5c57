//! `clearifyctl doctor`: checks the host, the config, the control socket,
//! the broker and the Celery app, and says how to fix what is wrong.
//!
//! Each check is a small function returning [`Check`]s, so tests can call
//! them one by one; [`run`] calls them all in order and [`render`] prints
//! them, one aligned line each plus an indented hint for warn and fail.
//! The exit code ([`exit_code`]) is 0 when nothing failed, 1 otherwise.

use std::fmt::Write as _;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::VERSION;
use crate::cli::render::{Newlines, escape};
use crate::config::{self, Config, ConfigError, Severity};
use crate::control::client::{ClientError, Connection};
use crate::control::protocol::{PROTOCOL_VERSION, Request, Response};
use crate::plan::{self, shell_quote};

pub use crate::sys::cgroup::Level;

/// journald's socket for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// How long `celery … report` may take.
pub const CELERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many lines of a failed command's output are shown.
const TAIL_LINES: usize = 12;

const SYSTEMCTL_HINT: &str = "is clearify-workerd running? check with `systemctl status clearify-workerd`, \
     start it with `systemctl start clearify-workerd` (logs: `journalctl -u clearify-workerd`)";

/// One line of `clearifyctl doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked, e.g. `config`, `broker`.
    pub name: String,
    pub level: Level,
    /// What was found. May span several lines (diagnostics, command
    /// output); the renderer indents the continuation lines.
    pub detail: String,
    /// How to fix it; shown for warn and fail.
    pub hint: Option<String>,
}

impl Check {
    pub fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            level: Level::Ok,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn warn(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            level: Level::Warn,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn fail(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            level: Level::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

/// What `clearifyctl doctor` looks at.
#[derive(Debug, Clone)]
pub struct Options {
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
}

impl Options {
    /// The defaults for `config`, with `socket` from the command line.
    pub fn new(config: &Path, socket: Option<&Path>) -> Options {
        Options {
            config: config.to_path_buf(),
            socket: socket.map(Path::to_path_buf),
            request_timeout: Duration::from_secs(10),
            celery_timeout: CELERY_TIMEOUT,
            journal_socket: PathBuf::from(JOURNAL_SOCKET),
        }
    }
}

/// Every check, in the order they are printed: config, cgroup, journald,
/// control socket and daemon, broker, celery.
pub fn run(opts: &Options) -> Vec<Check> {
    let mut checks = Vec::new();
    let (config_checks, loaded) = config_check(&opts.config);
    checks.extend(config_checks);
    let require_limits = loaded.as_ref().is_ok_and(|c| c.daemon.require_limits);
    checks.extend(cgroup_checks(crate::sys::cgroup::doctor(), require_limits));
    checks.push(journald_check(&opts.journal_socket));
    let socket = super::resolve_socket(opts.socket.as_deref(), &opts.config);
    let mut sock_checks = socket_checks(&socket, opts.request_timeout);
    let explicit = opts
        .socket
        .as_deref()
        .is_some_and(|p| !p.as_os_str().is_empty());
    if !explicit
        && std::fs::read_to_string(&opts.config).is_err()
        && let Some(first) = sock_checks.first_mut()
    {
        let (head, rest) = first
            .detail
            .split_once('\n')
            .map_or((first.detail.as_str(), None), |(h, r)| (h, Some(r)));
        let mut detail = format!(
            "{head} (the default: [daemon].socket could not be read from {})",
            opts.config.display()
        );
        if let Some(r) = rest {
            detail = format!("{detail}\n{r}");
        }
        first.detail = detail;
    }
    checks.extend(sock_checks);
    match &loaded {
        Ok(config) => {
            checks.push(broker_check(config));
            checks.push(celery_check(config, opts.celery_timeout));
        }
        Err(why) => {
            let hint = "fix the config first (see above), then run clearifyctl doctor again";
            checks.push(Check::warn("broker", format!("not checked: {why}"), hint));
            checks.push(Check::warn("celery", format!("not checked: {why}"), hint));
        }
    }
    checks
}

/// 0 when no check failed, 1 otherwise.
pub fn exit_code(checks: &[Check]) -> i32 {
    if checks.iter().any(|c| c.level == Level::Fail) {
        super::exit::REFUSED
    } else {
        super::exit::OK
    }
}

/// The report: one aligned line per check (`level  name  detail`), detail
/// continuation lines indented under the detail, a `hint:` line under
/// warn and fail, and a summary line. Control characters are escaped
/// ([`escape`]).
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    // Details and hints quote text from outside (`celery report`, the
    // daemon's replies, file names): escaped, one line at a time.
    let esc = |s| escape(s, Newlines::Escape);
    for c in checks {
        let mut lines = c.detail.lines();
        let first = esc(lines.next().unwrap_or(""));
        let _ = writeln!(out, "{:<4}  {:<width$}  {first}", c.level, c.name);
        for l in lines {
            let _ = writeln!(out, "{:<4}  {:<width$}  {}", "", "", esc(l));
        }
        if c.level != Level::Ok
            && let Some(h) = &c.hint
        {
            let _ = writeln!(out, "      hint: {}", esc(h));
        }
    }
    let count = |l: Level| checks.iter().filter(|c| c.level == l).count();
    let _ = writeln!(
        out,
        "\n{} ok, {} warn, {} fail",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail)
    );
    out
}

// ---------------------------------------------------------------------------
// config

/// `config::load` of `path`: ok (with each warning as a warn), or fail with
/// every diagnostic, or warn when this user may not read it. Also returns
/// the config for the later checks, or why they cannot run.
pub fn config_check(path: &Path) -> (Vec<Check>, Result<Config, String>) {
    let shown = path.display();
    match config::load(path) {
        Ok(loaded) => {
            let c = &loaded.config;
            let instances: u32 = c.groups.iter().map(|g| g.instances).sum();
            let mut checks = vec![Check::ok(
                "config",
                format!(
                    "{shown}: valid, {} group(s), {instances} instance(s)",
                    c.groups.len()
                ),
            )];
            if !loaded.warnings.is_empty() {
                checks.push(Check::warn(
                    "config warnings",
                    diagnostics_detail(
                        &format!("{} warning(s) in {shown}", loaded.warnings.len()),
                        &loaded.warnings,
                    ),
                    format!("see workers.toml(5); check again with: clearify-workerd --check --config {shown}"),
                ));
            }
            (checks, Ok(loaded.config))
        }
        Err(ConfigError::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
            let why = format!("cannot read {shown}: {source}");
            (
                vec![Check::warn(
                    "config",
                    format!("{why} (as {})", whoami()),
                    unreadable_hint(),
                )],
                Err(format!("{shown} is not readable by this user")),
            )
        }
        Err(ConfigError::Io { source, .. }) => {
            let hint = if source.kind() == io::ErrorKind::NotFound {
                format!(
                    "create it (the package installs an example as {}), or pass --config PATH",
                    config::DEFAULT_CONFIG_PATH
                )
            } else {
                "make it a readable file, or pass --config PATH".to_string()
            };
            (
                vec![Check::fail(
                    "config",
                    format!("cannot read {shown}: {source}"),
                    hint,
                )],
                Err(format!("{shown} cannot be read")),
            )
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            let diags = e.diagnostics();
            let errors: Vec<_> = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .collect();
            // Only an env_file this user may not read: not the config's fault.
            let unreadable = !errors.is_empty()
                && !nix::unistd::geteuid().is_root()
                && errors.iter().all(|d| {
                    d.message.starts_with("cannot read") && d.message.contains("ermission denied")
                });
            if unreadable {
                let detail = diagnostics_detail(
                    &format!("cannot read the files the config names (as {})", whoami()),
                    diags,
                );
                return (
                    vec![Check::warn("config", detail, unreadable_hint())],
                    Err("the env_file is not readable by this user".into()),
                );
            }
            let detail =
                diagnostics_detail(&format!("{} error(s) in {shown}", e.error_count()), diags);
            (
                vec![Check::fail(
                    "config",
                    detail,
                    format!(
                        "fix the errors above (see workers.toml(5)); check again with: \
                         clearify-workerd --check --config {shown}"
                    ),
                )],
                Err(format!("{shown} is invalid")),
            )
        }
    }
}

fn diagnostics_detail(head: &str, diags: &[config::Diagnostic]) -> String {
    let mut s = head.to_string();
    for d in diags {
        let _ = write!(s, "\n{d}");
    }
    s
}

fn unreadable_hint() -> String {
    format!(
        "run doctor as root (sudo clearifyctl doctor) or as a member of the {} group, \
         which may read the config and its env_file",
        config::DEFAULT_ADMIN_GROUP
    )
}

fn whoami() -> String {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => format!("user {}", u.name),
        _ => format!("uid {uid}"),
    }
}

// ---------------------------------------------------------------------------
// cgroup

/// The cgroup checks of [`crate::sys::cgroup::doctor`], with the "Fix: …" part
/// of each detail moved into the hint. Without delegated cgroup v2 the
/// daemon runs without limits, which is only an error with
/// `require_limits = true`: otherwise failures become warnings.
pub fn cgroup_checks(checks: Vec<crate::sys::cgroup::Check>, require_limits: bool) -> Vec<Check> {
    checks
        .into_iter()
        .map(|c| {
            let (detail, fix) = match c.detail.split_once(" Fix: ") {
                Some((d, f)) => (d.trim_end_matches('.').to_string(), Some(f.to_string())),
                None => (c.detail.clone(), None),
            };
            let fix = fix.unwrap_or_else(|| cgroup_fallback_hint(&c.name).to_string());
            let (level, hint) = match c.level {
                Level::Ok => (Level::Ok, None),
                Level::Warn => (Level::Warn, Some(fix)),
                Level::Fail if require_limits => (
                    Level::Fail,
                    Some(format!(
                        "{fix}; [daemon].require_limits = true, so the daemon will not start without limits"
                    )),
                ),
                Level::Fail => (
                    Level::Warn,
                    Some(format!(
                        "{fix}; until then the daemon runs without limits \
                         (allowed unless [daemon].require_limits = true)"
                    )),
                ),
            };
            Check {
                name: c.name,
                level,
                detail,
                hint,
            }
        })
        .collect()
}

/// A hint for a cgroup check whose detail carries no "Fix:".
fn cgroup_fallback_hint(name: &str) -> &'static str {
    match name {
        "delegation" | "delegated controllers" => {
            "start the service (systemctl start clearify-workerd) and run clearifyctl doctor again; \
             `journalctl -u clearify-workerd` says why limits are off"
        }
        "controllers" => {
            "a kernel without these controllers cannot enforce those limits; \
             io_weight alone needs io, the other limits work without it"
        }
        "own cgroup" => "mount cgroup v2 (the unified hierarchy, the Debian 12 default) and reboot",
        _ => "`journalctl -u clearify-workerd` says why limits are off",
    }
}

// ---------------------------------------------------------------------------
// journald

/// journald's socket exists and accepts a connection (nothing is sent).
/// Absent means no systemd journal: a warning, the daemon logs to stderr.
pub fn journald_check(socket: &Path) -> Check {
    let shown = socket.display();
    match std::fs::symlink_metadata(socket) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Check::warn(
                "journald",
                format!("{shown} does not exist: no systemd journal on this host"),
                "without journald the daemon and its workers log to stderr; \
                 run it as the clearify-workerd.service unit on a systemd host for journald logging",
            );
        }
        Err(e) => {
            return Check::fail(
                "journald",
                format!("cannot stat {shown}: {e}"),
                "check that systemd-journald is running: systemctl status systemd-journald",
            );
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Check::fail(
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
            return Check::fail(
                "journald",
                format!("cannot create a datagram socket: {e}"),
                "check the process limits (ulimit -n)",
            );
        }
    };
    match sock.connect(socket) {
        Ok(()) => Check::ok("journald", format!("{shown} accepts datagrams")),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Check::fail(
            "journald",
            format!("{shown}: {e}"),
            "this user may not log to journald; the daemon's user needs write access to the socket",
        ),
        Err(e) => Check::fail(
            "journald",
            format!("{shown} does not accept datagrams: {e}"),
            "journald is not listening: systemctl status systemd-journald systemd-journald.socket",
        ),
    }
}

// ---------------------------------------------------------------------------
// control socket

/// The control socket: it exists, is a socket (its mode and group), this
/// user can connect, and the daemon answers `version` with ours. Gives the
/// `control socket` check and, once connected, the `daemon` check.
pub fn socket_checks(socket: &Path, timeout: Duration) -> Vec<Check> {
    const NAME: &str = "control socket";
    let shown = socket.display();
    let meta = match std::fs::metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return vec![Check::fail(
                NAME,
                format!("{shown} does not exist"),
                SYSTEMCTL_HINT,
            )];
        }
        Err(e) => {
            let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                group_hint(socket)
            } else {
                SYSTEMCTL_HINT.to_string()
            };
            return vec![Check::fail(NAME, format!("cannot stat {shown}: {e}"), hint)];
        }
    };
    if !meta.file_type().is_socket() {
        return vec![Check::fail(
            NAME,
            format!("{shown} is not a socket"),
            "remove it (the daemon creates the socket when it starts) or set another \
             [daemon].socket / --socket",
        )];
    }
    let mode = meta.permissions().mode() & 0o7777;
    let owner = user_name(meta.uid());
    let group = group_name(meta.gid());
    let what = format!(
        "{shown} ({}, mode {mode:04o}, {owner}:{group})",
        mode_string(mode)
    );
    let mut checks = Vec::new();
    let mut conn = match Connection::open(socket, timeout) {
        Ok(c) => c,
        Err(ClientError::PermissionDenied { .. }) => {
            return vec![Check::fail(
                NAME,
                format!("{what}: permission denied for {}", whoami()),
                format!(
                    "run as root (sudo), or join the socket's group: sudo usermod -aG {group} $USER \
                     (then log in again)"
                ),
            )];
        }
        Err(e) => {
            let reason = match &e {
                ClientError::NotRunning { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            return vec![Check::fail(
                NAME,
                format!("{what}: cannot connect: {reason} (a stale socket: nothing listens)"),
                SYSTEMCTL_HINT,
            )];
        }
    };
    if mode & 0o002 != 0 {
        checks.push(Check::warn(
            NAME,
            format!("{what}: connected, but anyone may connect"),
            "the daemon creates it with mode 0660; something changed it: restart the daemon",
        ));
    } else {
        checks.push(Check::ok(NAME, format!("{what}: connected")));
    }
    checks.push(match conn.call(Request::Version) {
        Ok(Response::Version { version, protocol }) => {
            if version == VERSION && protocol == PROTOCOL_VERSION {
                Check::ok(
                    "daemon",
                    format!(
                        "clearify-workerd {version} (protocol {protocol}) answers; \
                         same version as clearifyctl"
                    ),
                )
            } else {
                Check::warn(
                    "daemon",
                    format!(
                        "clearify-workerd {version} (protocol {protocol}) answers, but clearifyctl is \
                         {VERSION} (protocol {PROTOCOL_VERSION})"
                    ),
                    "restart the daemon after an upgrade: systemctl restart clearify-workerd",
                )
            }
        }
        Ok(Response::Error { kind, message }) => Check::fail(
            "daemon",
            format!("the daemon refused `version` ({kind:?}): {message}"),
            "check that clearifyctl and clearify-workerd come from the same package version",
        ),
        Ok(other) => Check::fail(
            "daemon",
            format!("unexpected answer to `version`: {other:?}"),
            "check that clearifyctl and clearify-workerd come from the same package version",
        ),
        Err(e) => Check::fail(
            "daemon",
            format!("no answer to `version`: {e}"),
            "the daemon may be hung: journalctl -u clearify-workerd; systemctl restart clearify-workerd",
        ),
    });
    checks
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
fn mode_string(mode: u32) -> String {
    let mut s = String::from("s");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

// ---------------------------------------------------------------------------
// broker

/// `broker::probe` of the configured URL (shown redacted).
pub fn broker_check(config: &Config) -> Check {
    let Some(broker) = &config.broker else {
        return Check::warn(
            "broker",
            "not checked: the config has no [broker] (and no groups)",
            "add [broker] url = \"redis://…\" and some [group.*] sections",
        );
    };
    let shown = config::redact_url(&broker.url);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Check::fail(
                "broker",
                format!("{shown}: cannot start a runtime to probe it: {e}"),
                "check the process limits",
            );
        }
    };
    let result = rt.block_on(crate::broker::probe(&broker.url));
    drop(rt);
    match result {
        Ok(latency) => Check::ok(
            "broker",
            format!(
                "{shown} answers PING in {:.1} ms",
                latency.as_secs_f64() * 1000.0
            ),
        ),
        Err(e) if e.is_fatal() => Check::fail(
            "broker",
            format!("{shown}: {e}"),
            "a configuration error: check the URL, its password and db in [broker] \
             (or the variable named by url_env)",
        ),
        Err(e) => Check::fail(
            "broker",
            format!("{shown}: {e}"),
            format!(
                "start Redis or fix [broker].url; test it by hand with: redis-cli -u '{shown}' ping \
                 (with the real password)"
            ),
        ),
    }
}

// ---------------------------------------------------------------------------
// celery

/// Runs the configured celery command with `-A <app> report` in the
/// workdir, with the first instance's environment, as the worker user when
/// doctor runs as root, within `timeout`: ok on exit 0, fail with the last
/// lines of its output otherwise.
pub fn celery_check(config: &Config, timeout: Duration) -> Check {
    const NAME: &str = "celery";
    let built = plan::build(config);
    let Some(spec) = built.instances().next() else {
        return Check::warn(
            NAME,
            "not checked: the config has no groups",
            "add a [group.NAME] section with queues = [...]",
        );
    };
    let app = config.celery.app.clone().unwrap_or_default();
    let mut args = config.celery.command_args.clone();
    args.extend(["-A".to_string(), app.clone(), "report".to_string()]);
    let run_as = match crate::sys::process::resolve_user(spec.user.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(NAME, e.to_string(), "set [celery].user to the worker user");
        }
    };
    let who = run_as
        .as_ref()
        .map_or_else(whoami, |u| format!("user {}", u.name));
    let cmdline = std::iter::once(spec.program.to_string_lossy().into_owned())
        .chain(args.iter().cloned())
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let by_hand = match &run_as {
        Some(u) => format!(
            "cd {} && sudo -u {} {cmdline}",
            shell_quote(&spec.cwd.to_string_lossy()),
            shell_quote(&u.name)
        ),
        None => format!(
            "cd {} && {cmdline}",
            shell_quote(&spec.cwd.to_string_lossy())
        ),
    };

    let mut cmd = Command::new(&spec.program);
    cmd.args(&args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .process_group(0);
    let (reader, writer) = match io::pipe() {
        Ok(p) => p,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot create a pipe: {e}"),
                "check the process limits",
            );
        }
    };
    let (out, err) = match (writer.try_clone(), writer) {
        (Ok(a), b) => (a, b),
        (Err(e), _) => {
            return Check::fail(
                NAME,
                format!("cannot create a pipe: {e}"),
                "check the process limits",
            );
        }
    };
    cmd.stdout(out).stderr(err);
    if let Some(u) = &run_as {
        cmd.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
        let ids = crate::sys::privdrop::Ids::of(u);
        // SAFETY: runs between fork and exec; only system calls on data
        // prepared above, no allocation, no lock.
        unsafe {
            cmd.pre_exec(move || crate::sys::privdrop::drop_to(Some(&ids)));
        }
    }
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            drop(cmd); // closes our copies of the pipe's write end
            return Check::fail(
                NAME,
                format!("cannot run {} as {who}: {e}", spec.program.display()),
                "install Celery for the worker user, or fix [celery].command (e.g. a venv's bin/celery, \
                 or [\"python3\", \"-m\", \"celery\"])",
            );
        }
    };
    drop(cmd); // the child holds the write ends now; EOF comes when it exits

    // Read everything in a thread, so a chatty command cannot block on a
    // full pipe, and a grandchild keeping the pipe open cannot hang doctor.
    let output = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    {
        let output = Arc::clone(&output);
        let mut reader = reader;
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output
                    .lock()
                    .expect("output lock")
                    .extend_from_slice(&buf[..n]);
            }
            let _ = done_tx.send(());
        });
    }

    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break Err(format!(
                    "timed out after {}; killed it",
                    humantime::format_duration(timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("waiting for it failed: {e}")),
        }
    };
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    let text = String::from_utf8_lossy(&output.lock().expect("output lock")).into_owned();
    let took = started.elapsed();

    let ran = format!("`{cmdline}` in {} as {who}", spec.cwd.display());
    match status {
        Ok(st) if st.success() => Check::ok(
            NAME,
            format!(
                "{ran}: exit 0 in {:.1} s (app {app} imports)",
                took.as_secs_f64()
            ),
        ),
        Ok(st) => {
            let how = match (
                st.code(),
                std::os::unix::process::ExitStatusExt::signal(&st),
            ) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => st.to_string(),
            };
            Check::fail(
                NAME,
                format!("{ran}: {how}{}", tail(&text)),
                format!(
                    "check that [celery].app = {app:?} imports from [celery].workdir with the worker's \
                     environment (env_file), and that Celery is installed for that user; \
                     run it by hand: {by_hand}"
                ),
            )
        }
        Err(why) => Check::fail(
            NAME,
            format!("{ran}: {why}{}", tail(&text)),
            format!("a broker or import that hangs? run it by hand: {by_hand}"),
        ),
    }
}

/// The last non-empty lines of `text`, each on its own line after a
/// heading, or nothing when there is no output.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "; no output".to_string();
    }
    let start = lines.len().saturating_sub(TAIL_LINES);
    let mut s = format!("; last {} line(s) of its output:", lines.len() - start);
    for l in &lines[start..] {
        let _ = write!(s, "\n  {}", l.trim_end());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cg(name: &str, level: Level, detail: &str) -> crate::sys::cgroup::Check {
        crate::sys::cgroup::Check {
            name: name.into(),
            level,
            detail: detail.into(),
        }
    }

    #[test]
    fn journald_accepts_a_connection_to_a_real_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let c = journald_check(&path);
        assert_eq!(c.level, Level::Ok, "{c:?}");
        assert!(c.detail.ends_with("accepts datagrams"), "{c:?}");
        // Connecting sends nothing.
        server.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            server.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );

        // Nobody listening any more: a stale socket file.
        drop(server);
        let c = journald_check(&path);
        assert_eq!(c.level, Level::Fail, "{c:?}");
        assert!(c.detail.contains("does not accept datagrams"), "{c:?}");
        assert!(
            c.hint
                .unwrap()
                .contains("systemctl status systemd-journald")
        );

        let c = journald_check(&dir.path().join("missing"));
        assert_eq!(c.level, Level::Warn, "{c:?}");
        assert!(c.detail.contains("does not exist: no systemd journal"));

        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let c = journald_check(&file);
        assert_eq!(c.level, Level::Fail, "{c:?}");
        assert!(c.detail.ends_with("is not a socket"), "{c:?}");
    }

    #[test]
    fn cgroup_failures_are_warnings_unless_limits_are_required() {
        let input = vec![
            cg("cgroup v2", Level::Ok, "cgroup2 mounted at /sys/fs/cgroup"),
            cg(
                "memory controller",
                Level::Fail,
                "not in /sys/fs/cgroup/cgroup.controllers: memory limits are off. Fix: add cgroup_enable=memory",
            ),
            cg("controllers", Level::Warn, "io not available"),
        ];
        let optional = cgroup_checks(input.clone(), false);
        assert_eq!(
            optional.iter().map(|c| c.level).collect::<Vec<_>>(),
            vec![Level::Ok, Level::Warn, Level::Warn]
        );
        assert_eq!(
            optional[1].detail,
            "not in /sys/fs/cgroup/cgroup.controllers: memory limits are off"
        );
        let hint = optional[1].hint.as_deref().unwrap();
        assert!(hint.starts_with("add cgroup_enable=memory; "), "{hint}");
        assert!(hint.contains("runs without limits"), "{hint}");
        assert_eq!(optional[0].hint, None);

        let required = cgroup_checks(input, true);
        assert_eq!(required[1].level, Level::Fail);
        assert!(
            required[1]
                .hint
                .as_deref()
                .unwrap()
                .contains("require_limits = true, so the daemon will not start")
        );
        assert_eq!(required[2].level, Level::Warn);
        assert!(
            required[2].hint.as_deref().unwrap().contains("io_weight"),
            "every warn has a hint: {:?}",
            required[2]
        );
        let d = cgroup_checks(
            vec![cg(
                "delegation",
                Level::Warn,
                "clearify-workerd is not running",
            )],
            false,
        );
        assert!(
            d[0].hint
                .as_deref()
                .unwrap()
                .contains("systemctl start clearify-workerd")
        );
    }

    #[test]
    fn render_aligns_names_indents_details_and_shows_hints_for_warn_and_fail() {
        let checks = vec![
            Check::ok("config", "valid"),
            Check::fail("control socket", "missing\nsecond line", "start it"),
            Check::warn("journald", "absent", "use systemd"),
        ];
        let out = render(&checks);
        assert_eq!(
            out,
            "ok    config          valid\n\
             fail  control socket  missing\n\
             \x20                     second line\n\
             \x20     hint: start it\n\
             warn  journald        absent\n\
             \x20     hint: use systemd\n\
             \n1 ok, 1 warn, 1 fail\n"
        );
        assert_eq!(exit_code(&checks), 1);
        assert_eq!(exit_code(&checks[..1]), 0);
        assert_eq!(exit_code(&[checks[0].clone(), checks[2].clone()]), 0);
    }

    #[test]
    fn render_escapes_control_characters_from_outside() {
        // `celery report` output and the daemon's replies are text from
        // outside (the app, a worker, a peer): no escape sequence may reach
        // the terminal raw (issue 12 §6).
        let checks = vec![Check::fail(
            "celery",
            "report:\n\x1b]0;owned\x07\x1b[2Jtitle\rgone",
            "fix \x1b[31mit",
        )];
        let out = render(&checks);
        assert!(
            !out.contains('\x1b') && !out.contains('\x07') && !out.contains('\r'),
            "{out:?}"
        );
        assert!(
            out.contains("\\x1b]0;owned\\x07\\x1b[2Jtitle\\x0dgone"),
            "{out}"
        );
        assert!(out.contains("hint: fix \\x1b[31mit"), "{out}");
    }

    #[test]
    fn socket_modes_read_like_ls() {
        assert_eq!(mode_string(0o660), "srw-rw----");
        assert_eq!(mode_string(0o755), "srwxr-xr-x");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (1..=20).map(|i| format!("line {i}\n\n")).collect();
        let t = tail(&text);
        assert!(
            t.starts_with("; last 12 line(s) of its output:\n  line 9\n"),
            "{t}"
        );
        assert!(t.ends_with("\n  line 20"), "{t}");
        assert_eq!(tail(" \n"), "; no output");
    }
}

//! clearifyctl: inspect and control clearify-workerd over its control socket.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, Parser, Subcommand};

use clearify_workerd::VERSION;
use clearify_workerd::cli::{self, DEFAULT_CONFIG, exit, render};
use clearify_workerd::control::client::{ClientError, request_blocking};
use clearify_workerd::control::protocol::{
    ErrorKind, InstanceStatus, PROTOCOL_VERSION, Request, Response, Status,
};
use clearify_workerd::model::{InstanceState, target};

const ABOUT: &str = "Inspect and control clearify-workerd, the Celery worker supervisor";

const LONG_ABOUT: &str = "\
Inspect and control clearify-workerd, the Celery worker supervisor, over its control sockets.

Three tiers:
  readers  (status, logs, test, version): members of group clearify, through
           control.sock (mode 0660, group clearify);
  admins   (start, stop, restart, reload too): root, the daemon's user, and members of
           the admin group ([daemon].admin_group, default \"clearify-admin\"), through
           admin.sock next to it (mode 0660, that group);
  everyone else cannot open either socket.
The groups of this process count: after `sudo adduser USER clearify-admin`, log in again.
clearifyctl picks the socket itself: admin.sock first for changing requests, control.sock
first for reading ones, the other when the first cannot be opened.

A TARGET is a group name (e.g. text), an instance id (e.g. text-1), or \"all\".

The reader socket is --socket, else $CLEARIFY_SOCKET, else [daemon].socket in the config file
(--config, default /etc/clearify/workers.toml), else /run/clearify-workerd/control.sock; the
admin socket is admin.sock in the same directory.

Text from workers, the broker or the daemon is shown with control characters escaped
(ESC as \\x1b, CR as \\x0d…; tabs kept); `logs --raw` and `--json` give it unchanged.";

const AFTER_HELP: &str = "\
Examples:
  clearifyctl status                   table of groups, queues and instances
  clearifyctl status --watch           redraw every 2 s (like watch -n 2)
  clearifyctl status --json | jq '.groups[].instances[] | select(.state != \"running\") | .id'
  clearifyctl stop text-2              stop one instance and wait until it is stopped
  clearifyctl restart text             restart a group, wait until it runs again
  clearifyctl restart --rolling text   one instance at a time
  clearifyctl reload                   re-read workers.toml (as systemctl reload)
  clearifyctl logs text-1 -n 100       recent output of one instance
  clearifyctl logs -f                  follow all worker output
  clearifyctl test                     check the broker from the daemon
  sudo clearifyctl doctor              check host, config, socket, broker and celery

Exit codes:
  0  ok
  1  the daemon refused, a target is unknown, or waiting timed out
  2  usage error
  3  daemon not running, or socket missing
  4  permission denied";

const DOCTOR_ABOUT: &str = "\
Check this host, the config, the control socket, the broker and the Celery app.

Prints one line per check with ok, warn or fail; under each warn or fail, a hint says how to fix it.
  config          the --config file is valid (every error with file:line:col)
  cgroup ...      cgroup v2, the cpu/memory/pids controllers (memory: the Raspberry Pi
                  cmdline.txt hint) and delegation; warn unless [daemon].require_limits = true
  journald        /run/systemd/journal/socket accepts datagrams (warn when absent)
  control socket  exists, is a socket, its mode and group, this user can connect
  daemon          answers `version`, with the same version as clearifyctl
  broker          the [broker] URL answers PING
  celery          `<command> -A <app> report` exits 0 in the workdir with the worker's
                  environment, as the worker user when run as root (30 s timeout)

Reading the config and its env_file normally needs root or the clearify group; without
them the broker and celery checks are skipped (warn).";

#[derive(Debug, Parser)]
#[command(
    name = "clearifyctl",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
)]
struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "CLEARIFY_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = DEFAULT_CONFIG,
        help = "Config file to read [daemon].socket from"
    )]
    config: PathBuf,

    /// Seconds to wait for each answer from the daemon (more than 0, at most 86400).
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        default_value_t = 10.0,
        value_parser = positive_secs
    )]
    request_timeout: f64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon, the broker, and every group and instance.
    #[command(
        after_help = "Examples:\n  clearifyctl status\n  clearifyctl status text\n  \
        clearifyctl status --watch 5 text\n  clearifyctl status --json"
    )]
    Status {
        /// Print the status document as JSON (a stable contract for scripts).
        #[arg(long)]
        json: bool,
        /// Redraw every SECS seconds (default 2) until interrupted; with --json,
        /// print one compact document per line instead.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<String>,
        /// Groups or instances to show (default: all).
        #[arg(value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// Start stopped instances (clears an operator stop).
    Start {
        #[arg(value_name = "TARGET", required = true)]
        targets: Vec<String>,
    },
    /// Stop instances and keep them stopped until started; waits until they are stopped.
    Stop {
        #[arg(value_name = "TARGET", required = true)]
        targets: Vec<String>,
        /// Return as soon as the daemon accepted the request.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for the targets to stop.
        #[arg(long, value_name = "SECS", default_value_t = 120.0, value_parser = positive_secs)]
        timeout: f64,
    },
    /// Restart instances; waits until they run again (with a new pid).
    #[command(
        after_help = "Examples:\n  clearifyctl restart text-1\n  clearifyctl restart all\n  \
        clearifyctl restart --rolling text"
    )]
    Restart {
        #[arg(value_name = "TARGET", required = true)]
        targets: Vec<String>,
        /// Restart the instances of one GROUP one at a time, each running again before the next.
        #[arg(long)]
        rolling: bool,
        /// Return as soon as the daemon accepted the request.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for the targets to run again.
        #[arg(long, value_name = "SECS", default_value_t = 120.0, value_parser = positive_secs)]
        timeout: f64,
    },
    /// Re-read the config file (as SIGHUP); prints what changed, or the errors.
    Reload,
    /// Recent worker output from the daemon's buffers.
    #[command(
        after_help = "Examples:\n  clearifyctl logs\n  clearifyctl logs text-1 -n 200\n  \
        clearifyctl logs text -f\n\nWhen the daemon logs to journald, -f runs \
        journalctl -f -u clearify-workerd with CLEARIFY_GROUP= or CLEARIFY_INSTANCE= matches."
    )]
    Logs {
        /// A group or instance (default: all).
        #[arg(value_name = "TARGET")]
        target: Option<String>,
        /// Number of lines.
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 50)]
        lines: usize,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Print the lines exactly as the workers wrote them, control characters
        /// included (for pipes); by default they are escaped (ESC as \x1b).
        #[arg(long)]
        raw: bool,
    },
    /// Check the broker from the daemon; exit 0 only when it is reachable.
    Test,
    /// Show the versions of clearifyctl and the daemon; warns when they differ.
    Version,
    /// Check this host, the config, the control socket, the broker and the Celery app.
    #[command(
        long_about = DOCTOR_ABOUT,
        after_help = "Examples:\n  sudo clearifyctl doctor\n  \
        clearifyctl doctor --config ./workers.toml --socket ./control.sock\n\n\
        Exit status: 0 when no check failed (warnings allowed), 1 otherwise."
    )]
    Doctor,
}

/// Longest time any SECS option accepts: one day.
const MAX_SECS: f64 = 86_400.0;

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= MAX_SECS => Ok(v),
        Ok(v) if v.is_finite() && v > MAX_SECS => Err(format!(
            "{s:?} seconds is too long: at most {MAX_SECS} (one day)"
        )),
        _ => Err(format!(
            "{s:?} is not a positive number of seconds (more than 0, at most {MAX_SECS})"
        )),
    }
}

/// How a command ended, when not with success.
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::new(cli::exit_code_for_client(&e), e.to_string())
    }
}

type Outcome = Result<i32, Failure>;

struct Ctx {
    /// The reader socket; the admin socket is next to it.
    socket: PathBuf,
    timeout: Duration,
}

impl Ctx {
    /// One request, on the admin or the reader socket
    /// ([`cli::socket_candidates`]): the next is tried when one cannot be
    /// opened. When none can, the first one's error, or, when every one
    /// refused permission, a message naming both groups.
    fn send(&self, req: &Request) -> Result<Response, Failure> {
        let mut first: Option<ClientError> = None;
        let mut denied = Vec::new();
        for sock in cli::socket_candidates(&self.socket, req.is_mutating()) {
            match request_blocking(&sock, req.clone(), self.timeout) {
                Ok(r) => return Ok(r),
                Err(
                    e @ (ClientError::PermissionDenied { .. } | ClientError::NotRunning { .. }),
                ) => {
                    // A missing admin socket (no admin group) is no news;
                    // report the reader socket's error then.
                    let is_reader = sock == self.socket;
                    if matches!(e, ClientError::PermissionDenied { .. }) {
                        denied.push(sock);
                    }
                    if first.is_none()
                        || (is_reader && matches!(first, Some(ClientError::NotRunning { .. })))
                    {
                        first = Some(e);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if denied.len() > 1 {
            let each: Vec<String> = denied
                .iter()
                .map(|p| {
                    format!(
                        "{}: {}",
                        p.display(),
                        clearify_workerd::control::client::socket_audience(p)
                    )
                })
                .collect();
            return Err(Failure::new(
                exit::PERMISSION,
                format!(
                    "permission denied: this process may open neither control socket. {} needs {}.\n  {}",
                    clearify_workerd::control::server::request_name(req),
                    if req.is_mutating() {
                        "the admin group (admin.sock), root or the daemon's user"
                    } else {
                        "the reader group (control.sock) or the admin group (admin.sock)"
                    },
                    each.join("\n  ")
                ),
            ));
        }
        Err(first.map_or_else(
            || Failure::new(exit::NOT_RUNNING, "no control socket to try"),
            Failure::from,
        ))
    }

    /// One request; a Busy daemon is retried briefly. Error answers become
    /// failures with their exit code.
    fn call(&self, req: Request) -> Result<Response, Failure> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.send(&req)? {
                Response::Error {
                    kind: ErrorKind::Busy,
                    ..
                } if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Response::Error { kind, message } => {
                    return Err(Failure::new(cli::exit_code_for(kind), message));
                }
                other => return Ok(other),
            }
        }
    }

    fn status(&self, targets: &[String]) -> Result<Status, Failure> {
        match self.call(Request::Status {
            targets: cli::status_targets(targets),
        })? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(resp: &Response) -> Failure {
    Failure::new(
        exit::REFUSED,
        format!("unexpected answer from clearify-workerd: {resp:?}"),
    )
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`clearifyctl logs | head`), like other
    // Unix tools, instead of panicking on the failed write.
    // SAFETY: setting a signal disposition to SIG_DFL before any threads.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let ctx = Ctx {
        socket: cli::resolve_socket(cli.socket.as_deref(), &cli.config),
        timeout: Duration::from_secs_f64(cli.request_timeout),
    };
    let outcome = match cli.command {
        Command::Logs {
            target,
            lines,
            follow,
            raw,
        } => logs(&ctx, target, lines, follow, raw),
        Command::Status {
            json,
            watch,
            targets,
        } => status(&ctx, json, watch, targets),
        Command::Start { targets } => start(&ctx, targets),
        Command::Stop {
            targets,
            no_wait,
            timeout,
        } => stop(&ctx, targets, no_wait, timeout),
        Command::Restart {
            targets,
            rolling,
            no_wait,
            timeout,
        } => restart(&ctx, targets, rolling, no_wait, timeout),
        Command::Reload => reload(&ctx),
        Command::Test => test(&ctx),
        Command::Version => version(&ctx),
        Command::Doctor => doctor(&cli.config, cli.socket.as_deref(), ctx.timeout),
    };
    let code = match outcome {
        Ok(code) => code,
        Err(f) => {
            // The message may quote the daemon, and through it a worker.
            eprintln!(
                "clearifyctl: {}",
                render::escape(&f.message, render::Newlines::Keep)
            );
            f.code
        }
    };
    let _ = std::io::stdout().flush();
    ExitCode::from(code as u8)
}

fn usage_error(msg: &str) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::InvalidValue, msg)
        .exit()
}

fn status(ctx: &Ctx, json: bool, watch: Option<String>, mut targets: Vec<String>) -> Outcome {
    let Some(watch) = watch else {
        let s = ctx.status(&targets)?;
        print_status(&s, json);
        return Ok(exit::OK);
    };
    // `--watch text` means a target, not an interval.
    let every = match watch.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= MAX_SECS => v,
        Ok(_) => usage_error("--watch SECS must be a positive number of seconds, at most 86400"),
        Err(_) => {
            targets.insert(0, watch);
            2.0
        }
    };
    let every = Duration::from_secs_f64(every);
    loop {
        let result = ctx.status(&targets);
        if json {
            match &result {
                Ok(s) => println!("{}", serde_json::to_string(s).expect("status serialises")),
                Err(f) => eprintln!(
                    "clearifyctl: {}",
                    render::escape(&f.message, render::Newlines::Keep)
                ),
            }
        } else {
            let body = match &result {
                Ok(s) => render::status_table(s),
                Err(f) => format!(
                    "clearifyctl: {}\n",
                    render::escape(&f.message, render::Newlines::Keep)
                ),
            };
            let now = humantime::format_rfc3339_seconds(SystemTime::now());
            print!(
                "\x1b[H\x1b[2JEvery {}: clearifyctl status    {now}\n\n{body}",
                humantime::format_duration(every)
            );
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(every);
    }
}

fn print_status(s: &Status, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(s).expect("status serialises")
        );
    } else {
        print!("{}", render::status_table(s));
    }
}

fn print_done(resp: Response) -> Result<(), Failure> {
    match resp {
        Response::Done { messages } => {
            for m in messages {
                println!("{}", render::escape(&m, render::Newlines::Keep));
            }
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

fn start(ctx: &Ctx, targets: Vec<String>) -> Outcome {
    print_done(ctx.call(Request::Start { targets })?)?;
    Ok(exit::OK)
}

fn instances(s: &Status) -> impl Iterator<Item = &InstanceStatus> {
    s.groups.iter().flat_map(|g| g.instances.iter())
}

/// Polls status until `done` holds for every instance of `targets`.
/// `done` may fail early (e.g. crash-loop).
fn wait_for(
    ctx: &Ctx,
    targets: &[String],
    timeout: f64,
    what: &str,
    done: impl Fn(&InstanceStatus) -> Result<bool, String>,
) -> Outcome {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(timeout);
    loop {
        let s = ctx.status(targets)?;
        let mut pending = Vec::new();
        for i in instances(&s) {
            match done(i) {
                Ok(true) => {}
                Ok(false) => pending.push(format!("{} ({})", i.id, i.state)),
                Err(msg) => return Err(Failure::new(exit::REFUSED, msg)),
            }
        }
        if pending.is_empty() {
            return Ok(exit::OK);
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(
                exit::REFUSED,
                format!(
                    "timed out after {timeout}s waiting for {what}: {}",
                    pending.join(", ")
                ),
            ));
        }
        // Look often at first (a warm shutdown is often quick), then less.
        let pause = if started.elapsed() < Duration::from_secs(2) {
            50
        } else {
            200
        };
        std::thread::sleep(Duration::from_millis(pause));
    }
}

fn stop(ctx: &Ctx, targets: Vec<String>, no_wait: bool, timeout: f64) -> Outcome {
    print_done(ctx.call(Request::Stop {
        targets: targets.clone(),
    })?)?;
    if no_wait {
        return Ok(exit::OK);
    }
    wait_for(ctx, &targets, timeout, "instances to stop", |i| {
        Ok(i.state == InstanceState::Stopped)
    })?;
    println!("stopped: {}", targets.join(" "));
    Ok(exit::OK)
}

fn restart(ctx: &Ctx, targets: Vec<String>, rolling: bool, no_wait: bool, timeout: f64) -> Outcome {
    if rolling && (targets.len() != 1 || target::names_all(&targets)) {
        usage_error("restart --rolling takes exactly one GROUP");
    }
    // Remember the pids, to tell a restarted instance from one not yet
    // restarted. Instances that were stopped are not waited for.
    let before: HashMap<String, (Option<u32>, Option<InstanceState>)> = if no_wait {
        HashMap::new()
    } else {
        instances(&ctx.status(&targets)?)
            .map(|i| (i.id.clone(), (i.pid, Some(i.state))))
            .collect()
    };
    print_done(ctx.call(Request::Restart {
        targets: targets.clone(),
        rolling,
    })?)?;
    if no_wait {
        return Ok(exit::OK);
    }
    wait_for(ctx, &targets, timeout, "instances to run again", |i| {
        let (old_pid, old_state) = before.get(&i.id).cloned().unwrap_or((None, None));
        match i.state {
            InstanceState::CrashLoop => Err(format!(
                "{} is in crash-loop (last exit: {})",
                i.id,
                i.last_exit.as_deref().unwrap_or("unknown")
            )),
            InstanceState::Running => Ok(old_pid.is_none() || i.pid != old_pid),
            InstanceState::WaitingForBroker => Ok(true),
            InstanceState::Stopped => Ok(old_state == Some(InstanceState::Stopped)),
            _ => Ok(false),
        }
    })?;
    println!("running: {}", targets.join(" "));
    Ok(exit::OK)
}

fn reload(ctx: &Ctx) -> Outcome {
    match ctx.call(Request::Reload)? {
        Response::Reloaded(r) => {
            let text = render::reload_report(&r);
            if r.applied {
                print!("{text}");
                Ok(exit::OK)
            } else {
                eprint!("{text}");
                Ok(exit::REFUSED)
            }
        }
        other => Err(unexpected(&other)),
    }
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn logs(ctx: &Ctx, target: Option<String>, lines: usize, follow: bool, raw: bool) -> Outcome {
    // "all" is no filter.
    let target = target.filter(|t| t != clearify_workerd::model::target::ALL);
    if follow {
        let s = ctx.status(&[])?;
        if s.daemon.logs_to_journal {
            return follow_journal(&s, target.as_deref(), lines);
        }
    }
    let fetched = match ctx.call(Request::Logs {
        target: target.clone(),
        lines,
        since: None,
    })? {
        Response::Logs { lines } => lines,
        other => return Err(unexpected(&other)),
    };
    let mut since = fetched.last().map_or_else(now_epoch, |l| l.ts);
    let mut out = std::io::stdout().lock();
    for l in &fetched {
        let _ = writeln!(out, "{}", render::log_line_with(l, raw));
    }
    drop(out);
    if !follow {
        return Ok(exit::OK);
    }
    const BATCH: usize = 200;
    loop {
        let _ = std::io::stdout().flush();
        let batch = match ctx.call(Request::Logs {
            target: target.clone(),
            lines: BATCH,
            since: Some(since),
        })? {
            Response::Logs { lines } => lines,
            other => return Err(unexpected(&other)),
        };
        let mut out = std::io::stdout().lock();
        for l in &batch {
            if writeln!(out, "{}", render::log_line_with(l, raw)).is_err() {
                return Ok(exit::OK); // stdout closed (e.g. `| head`)
            }
            since = since.max(l.ts);
        }
        drop(out);
        if batch.len() < BATCH {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `logs -f` under journald: exec journalctl with the matching field.
fn follow_journal(s: &Status, target: Option<&str>, lines: usize) -> Outcome {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args(["-f", "-u", "clearify-workerd", "-n", &lines.to_string()]);
    if let Some(t) = target {
        if s.groups.iter().any(|g| g.name == t) {
            cmd.arg(format!("CLEARIFY_GROUP={t}"));
        } else if instances(s).any(|i| i.id == t) {
            cmd.arg(format!("CLEARIFY_INSTANCE={t}"));
        } else {
            return Err(Failure::new(
                exit::REFUSED,
                format!("unknown target {t:?}: not a group or instance (see clearifyctl status)"),
            ));
        }
    }
    let err = cmd.exec();
    Err(Failure::new(
        exit::REFUSED,
        format!("cannot run journalctl: {err}"),
    ))
}

fn test(ctx: &Ctx) -> Outcome {
    match ctx.call(Request::Test)? {
        Response::Test(t) => {
            print!("{}", render::test_report(&t));
            Ok(if t.reachable { exit::OK } else { exit::REFUSED })
        }
        other => Err(unexpected(&other)),
    }
}

fn doctor(config: &Path, socket: Option<&Path>, timeout: Duration) -> Outcome {
    let mut opts = cli::doctor::Options::new(config, socket);
    opts.request_timeout = timeout;
    let checks = cli::doctor::run(&opts);
    print!("{}", cli::doctor::render(&checks));
    Ok(cli::doctor::exit_code(&checks))
}

fn version(ctx: &Ctx) -> Outcome {
    println!("clearifyctl {VERSION} (protocol {PROTOCOL_VERSION})");
    match ctx.call(Request::Version) {
        Ok(Response::Version { version, protocol }) => {
            let shown = render::escape(&version, render::Newlines::Escape);
            println!("clearify-workerd {shown} (protocol {protocol})");
            if version != VERSION || protocol != PROTOCOL_VERSION {
                eprintln!(
                    "warning: clearifyctl {VERSION} and clearify-workerd {shown} differ; \
                     restart the daemon after an upgrade (systemctl restart clearify-workerd)"
                );
            }
            Ok(exit::OK)
        }
        Ok(other) => Err(unexpected(&other)),
        Err(f) => Err(f),
    }
}

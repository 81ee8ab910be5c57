//! clearifyctl's command line: every option, subcommand and help text, as
//! clap parses them. The binary parses [`Args`] and hands them to
//! [`run`](super::run); `--help` is documented in clearifyctl(1).

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_CONFIG_PATH;

const ABOUT: &str = "Inspect and control clearify-workerd, the Celery worker supervisor";

const LONG_ABOUT: &str = "\
Inspect and control clearify-workerd, the Celery worker supervisor, over its control sockets.

Three tiers:
  readers  (status, logs, test, fleet, version): members of group clearify, through
           control.sock (mode 0660, group clearify);
  admins   (start, stop, restart, reload, scale, fleet forget too): root, the daemon's user, and members of
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
  clearifyctl fleet                    every device on the same Redis
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
  admin socket    once the daemon answers: admin.sock exists when [daemon].admin_group
                  does, mode 0660, that group (warn when there is no such group)
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
pub struct Args {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "CLEARIFY_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = DEFAULT_CONFIG_PATH,
        help = "Config file to read [daemon].socket from"
    )]
    pub config: PathBuf,

    /// Seconds to wait for each answer from the daemon (more than 0, at most 86400).
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        default_value_t = REQUEST_TIMEOUT_SECS,
        value_parser = positive_secs
    )]
    pub request_timeout: f64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the daemon, the broker, and every group and instance.
    #[command(
        after_help = "Examples:\n  clearifyctl status\n  clearifyctl status text\n  \
        clearifyctl status --watch 5 text\n  clearifyctl status --json\n  \
        clearifyctl status --format prometheus"
    )]
    Status {
        /// Print the status document as JSON (a stable contract for scripts);
        /// the same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// text (the table), json (the status document) or prometheus (the
        /// text exposition format, as [metrics] textfile).
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Text)]
        format: Format,
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
    /// Set an autoscaled group's instance count by hand, or give it back to the backlog.
    #[command(
        long_about = "Set the instance count of a group with `autoscale` (workers.toml(5)) by hand:         COUNT (0..=autoscale.max) applies at once (new instances start, the highest-numbered         ones stop warmly) and holds until `clearifyctl scale GROUP auto` gives the group back         to its backlog. Admins only. A reload keeps the count; a restart of the daemon forgets it.",
        after_help = "Examples:
  clearifyctl scale text 3      hold group text at 3 instances
          clearifyctl scale text 0      stop all of text's workers (warm shutdown)
          clearifyctl scale text auto   follow the backlog again
          clearifyctl status --json | jq '.groups[] | {name, autoscale}'"
    )]
    Scale {
        /// The group (it must have `autoscale`).
        #[arg(value_name = "GROUP")]
        group: String,
        /// A count, 0..=autoscale.max, or `auto`.
        #[arg(value_name = "COUNT|auto", value_parser = scale_count)]
        count: ScaleCount,
    },
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
    /// The fleet: every device publishing to the same Redis (docs/fleet.md).
    #[command(
        after_help = "Views:\n  clearifyctl fleet                 one line per device, problems first\n  \
        clearifyctl fleet queues          per queue: backlog, consumers, each device's share\n  \
        clearifyctl fleet DEVICE          one device's groups and instances\n  \
        clearifyctl fleet forget DEVICE   remove a device from the registry (admin)\n\n\
        Examples:\n  clearifyctl fleet --watch\n  clearifyctl fleet queues --json\n  \
        clearifyctl fleet --json | jq '.devices[] | select(.presence != \"up\") | .device_id'"
    )]
    Fleet {
        /// Print the view as JSON (a stable contract for scripts,
        /// docs/fleet.md); the same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// text (a table), json (the view) or prometheus (the device list in
        /// the text exposition format, docs/metrics.md).
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Text)]
        format: Format,
        /// Redraw every SECS seconds (default 2) until interrupted; with --json,
        /// print one compact document per line instead.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<String>,
        /// Nothing (the device list), `queues`, a DEVICE, or `forget DEVICE`.
        #[arg(value_name = "VIEW")]
        args: Vec<String>,
    },
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

/// How a command prints what it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: a table.
    Text,
    /// The JSON document (a contract for scripts).
    Json,
    /// The Prometheus text exposition format.
    Prometheus,
}

/// `clearifyctl scale`'s COUNT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleCount {
    Auto,
    Count(u32),
}

fn scale_count(s: &str) -> Result<ScaleCount, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(ScaleCount::Auto);
    }
    s.parse::<u32>()
        .map(ScaleCount::Count)
        .map_err(|_| format!("{s:?} is neither a count (0, 1, 2 …) nor `auto`"))
}

/// Default of `--request-timeout`: seconds to wait for each answer.
pub const REQUEST_TIMEOUT_SECS: f64 = 10.0;

/// Longest time any SECS option accepts: one day.
pub const MAX_SECS: f64 = 86_400.0;

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

/// Exits with a usage error (clap's format and exit code 2).
pub fn usage_error(msg: &str) -> ! {
    Args::command()
        .error(clap::error::ErrorKind::InvalidValue, msg)
        .exit()
}

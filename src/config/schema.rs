//! The schema of workers.toml: defaults, bounds, the public types the
//! checker fills in, the keys of each table and the rules for names.
//!
//! What it may import: std, `crate::model` and `crate::sys` constants.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use crate::model::autoscale::Autoscale;
use crate::model::spec::{Limits, Timing};

/// Where the daemon looks for its config unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/clearify/workers.toml";
/// Default `[daemon].socket`.
pub const DEFAULT_SOCKET: &str = "/run/clearify-workerd/control.sock";
/// `PATH` given to workers when the daemon has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Where the default `device_id` takes its machine part from.
pub const DEFAULT_MACHINE_ID_PATH: &str = "/etc/machine-id";
/// Default `[daemon].admin_group`: a group of its own, created by the
/// package, so that admins need not be readers (`clearify`) and readers are
/// not admins.
pub const DEFAULT_ADMIN_GROUP: &str = "clearify-admin";
/// Default `[broker].priority_steps`.
pub const DEFAULT_PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
/// Default `[broker].check_interval`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// `[fleet] interval`.
pub const DEFAULT_FLEET_INTERVAL: Duration = Duration::from_secs(10);
/// `[fleet] forget_after`.
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Bounds of `[fleet] interval`: Redis `EX` takes whole seconds, and a
/// beat a second is already far more than a fleet view needs.
pub const MIN_FLEET_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_FLEET_INTERVAL: Duration = Duration::from_secs(3600);
/// Default `[celery].command`: looked up in `PATH`.
pub const DEFAULT_COMMAND: &str = "celery";
/// Default `[celery].workdir`.
pub const DEFAULT_WORKDIR: &str = "/";
/// Default `[celery].loglevel`.
pub const DEFAULT_LOGLEVEL: &str = "info";
/// Longest path a Unix socket address can hold (sun_path minus the NUL).
pub(super) const MAX_SOCKET_PATH: usize = 107;

// Bounds (workers.toml(5), "Limits"). Every count, duration and size in the
// config has one, so that nothing the check accepts can overflow the
// daemon's arithmetic or make it allocate without bound.

/// Most `instances` of one group.
pub const MAX_INSTANCES: u32 = 1024;
/// Most `autoscale.backlog_per_instance`.
pub const MAX_BACKLOG_PER_INSTANCE: u32 = 1_000_000;
/// Shortest `autoscale.scale_down_after`.
pub const MIN_SCALE_DOWN_AFTER: Duration = Duration::from_secs(1);
/// Most `concurrency` (`-c`) of one worker.
pub const MAX_CONCURRENCY: u32 = 1024;
/// Most `[group.NAME]` sections.
pub const MAX_GROUPS: usize = 1024;
/// Most worker processes of all groups together.
pub const MAX_TOTAL_INSTANCES: u64 = 4096;
/// Longest duration: one year as humantime counts it (`"1y"`, 365.25 days).
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);
/// Largest size (`memory_max`, `memory_high`, `memory_swap_max`): 1 PiB.
pub const MAX_SIZE: u64 = 1 << 50;
/// Largest `pids_max`: the kernel's PID_MAX_LIMIT on 64-bit.
pub const MAX_PIDS: u64 = 4_194_304;
/// Largest `cpu_max`, in CPUs.
pub const MAX_CPUS: f64 = 1024.0;
/// Default `[daemon] log_rate_limit`, records per second at info and
/// below, all groups together: with the burst of 10 s of the rate, at most
/// 200 × 10 + 200 × 30 = 8,000 in journald's 30 s window, below its default
/// limit of 10,000 per unit (`logs::RateLimits` has the arithmetic).
pub const DEFAULT_LOG_RATE_LIMIT: u32 = 200;
/// Largest `[daemon] log_rate_limit`, records per second.
pub const MAX_LOG_RATE_LIMIT: u32 = 1_000_000;
/// Longest group name: it is a cgroup directory and part of the node name.
pub const MAX_GROUP_NAME: usize = 64;
/// Group names the daemon uses itself (its own cgroup leaf).
pub const RESERVED_GROUP_NAMES: &[&str] = &[crate::sys::cgroup::SUPERVISOR];
/// Most elements of a list of strings (`queues`, `extra_args`, `command`)
/// and most variables of an `env` table.
pub const MAX_LIST: usize = 256;
/// Longest string value, in bytes (the kernel refuses longer arguments and
/// environment strings than 128 KiB).
pub const MAX_STRING: usize = 64 * 1024;
/// Largest `env_file`.
pub const MAX_ENV_FILE: u64 = 1 << 20;
/// Largest config file. A full 1024-group file is far smaller; parsing
/// takes up to about 70 times the file's size in memory, transiently.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// A validated, fully defaulted configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, as given.
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    /// `None` only when there are no groups and no `[broker]` section.
    pub broker: Option<BrokerConfig>,
    pub celery: CeleryConfig,
    pub fleet: FleetConfig,
    pub metrics: MetricsConfig,
    /// In file order.
    pub groups: Vec<GroupConfig>,
}

impl Config {
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub device_id: String,
    pub admin_group: String,
    pub require_limits: bool,
    /// Worker records per second at info and below, all groups together,
    /// before journald (`logs::RateLimits`); 0: no limit.
    pub log_rate_limit: u32,
}

/// `[fleet]`: this device's record in the shared Redis (docs/fleet.md).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Whether to publish the record at all.
    pub publish: bool,
    /// How often.
    pub interval: Duration,
    /// The record's TTL: how long a lost device stays visible.
    pub forget_after: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            publish: true,
            interval: DEFAULT_FLEET_INTERVAL,
            forget_after: DEFAULT_FORGET_AFTER,
        }
    }
}

/// `[metrics]`: the Prometheus text file for node_exporter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsConfig {
    /// Written atomically every `[fleet] interval` (`None`: not written).
    pub textfile: Option<PathBuf>,
}

/// What to do once `[broker].wait_timeout` has passed without a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnTimeout {
    /// Keep waiting (as if the timeout were infinite, but say so).
    #[default]
    Wait,
    /// Start the workers anyway.
    Start,
    /// Exit non-zero.
    Fail,
}

impl OnTimeout {
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Wait => "wait",
            OnTimeout::Start => "start",
            OnTimeout::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// The resolved URL (from `url`, or the variable named by `url_env`).
    /// Contains the password: print it only through [`redact_url`].
    pub url: String,
    /// The variable the URL came from, when `url_env` was used.
    pub url_env: Option<String>,
    /// `None` = infinite.
    pub wait_timeout: Option<Duration>,
    pub on_timeout: OnTimeout,
    pub check_interval: Duration,
    /// Sorted, without duplicates.
    pub priority_steps: Vec<u8>,
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CeleryConfig {
    /// `-A`; `None` only when there are no groups.
    pub app: Option<String>,
    /// The executable, resolved: an absolute path when it was found.
    pub command: PathBuf,
    /// Arguments that come with the command when `command` is a list, e.g.
    /// `["python3", "-m", "celery"]` gives `python3` (resolved) and
    /// `["-m", "celery"]`; they precede `-A`. Empty for the string form.
    pub command_args: Vec<String>,
    pub workdir: PathBuf,
    pub env_file: Option<PathBuf>,
    /// The parsed contents of `env_file` (empty without one).
    pub env_file_vars: BTreeMap<String, String>,
    pub user: Option<String>,
    /// Lower case, one of debug, info, warning, error, critical, fatal.
    pub loglevel: String,
    pub extra_args: Vec<String>,
    /// The `PATH` workers get: the daemon's, or [`DEFAULT_PATH`].
    pub worker_path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub name: String,
    pub queues: Vec<String>,
    pub concurrency: u32,
    /// Without `autoscale`: the fixed count. With it: the count at start
    /// (within min..=max; `min` unless written).
    pub instances: u32,
    /// `autoscale = { … }`: the count follows the backlog.
    pub autoscale: Option<Autoscale>,
    pub timing: Timing,
    pub limits: Limits,
    pub extra_args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl GroupConfig {
    /// The most instances the group can have: `autoscale.max`, else
    /// `instances`. Ids `<group>-1` … `<group>-<max>` may exist.
    pub fn max_instances(&self) -> u32 {
        self.autoscale.map_or(self.instances, |a| a.max)
    }
}

/// What the config is checked against: facts about the machine and the
/// daemon's environment. [`Environment::system`] reads the real ones.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `None` when it cannot be determined.
    pub hostname: Option<String>,
    /// Normally [`DEFAULT_MACHINE_ID_PATH`].
    pub machine_id_path: PathBuf,
    /// The daemon's environment variables (for `url_env` and `PATH`).
    pub vars: HashMap<String, String>,
}

impl Environment {
    /// The running system: its hostname, `/etc/machine-id` and this
    /// process's environment (non-UTF-8 variables are left out).
    pub fn system() -> Environment {
        Environment {
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty()),
            machine_id_path: PathBuf::from(DEFAULT_MACHINE_ID_PATH),
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub(super) fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

pub(super) const TOP_KEYS: &[&str] = &[
    "daemon", "broker", "celery", "fleet", "metrics", "defaults", "group",
];
pub(super) const LOGLEVELS: &[&str] = &["debug", "info", "warning", "error", "critical", "fatal"];
/// The control characters an environment value may hold (`env`,
/// `env_file`): tab and newline, e.g. for a PEM key. NUL cannot be passed at
/// all, and the rest (CR, ESC …) would rewrite a terminal that shows them.
pub(super) const ENV_VALUE_CONTROLS: &[char] = &['\t', '\n'];
/// Variables the daemon sets for every worker.
pub(super) const RESERVED_ENV: &[&str] = &[
    "PYTHONUNBUFFERED",
    "CLEARIFY_INSTANCE",
    "CLEARIFY_GROUP",
    "CLEARIFY_NODE",
];

/// Whether `name` is a valid group name (see [`group_name_problem`]).
pub fn is_valid_group_name(name: &str) -> bool {
    group_name_problem(name).is_none()
}

/// Why `name` is not a valid group name, or `None` when it is: at most
/// [`MAX_GROUP_NAME`] characters of `[a-z0-9_-]`, starting with a letter or
/// digit, and not a name the daemon uses itself ([`RESERVED_GROUP_NAMES`]).
/// A group name is a cgroup directory, part of every Celery node name
/// (`<group>-<i>@<device_id>`) and a `clearifyctl` target.
pub fn group_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Some("use only a-z, 0-9, `_` and `-`".into());
    }
    if name.len() > MAX_GROUP_NAME {
        return Some(format!(
            "{} characters long; at most {MAX_GROUP_NAME} characters are allowed",
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some("must start with a letter or digit".into());
    }
    if RESERVED_GROUP_NAMES.contains(&name) {
        return Some(format!(
            "`{name}` is reserved (the daemon's own cgroup leaf)"
        ));
    }
    None
}

/// A description of the first control character in `s` (C0, DEL or C1)
/// that is not in `allowed`, naming its code point and position but never
/// the text around it.
pub(super) fn control_char(s: &str, allowed: &[char]) -> Option<String> {
    let (i, c) = s
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !allowed.contains(c))?;
    Some(format!(
        "contains the control character U+{:04X} at character {}; control characters are not allowed here (the value is not shown)",
        u32::from(c),
        i + 1
    ))
}

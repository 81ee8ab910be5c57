//! The `workers.toml` configuration: schema, defaults and validation.
//!
//! [`load`] reads the file, [`load_str`] checks a text against an injected
//! [`Environment`] (hostname, machine-id, process environment), so tests are
//! deterministic. Validation never stops at the first problem: every error
//! and warning is collected as a [`Diagnostic`] with file, line, column and
//! the dotted key, printed as `PATH:LINE:COL: error: KEY: MESSAGE`.
//!
//! # Schema (workers.toml(5))
//!
//! Keys are snake_case. An unknown key is an error. Relative paths
//! (`socket`, `command` with a `/`, `workdir`, `env_file`) are resolved
//! against the directory of the config file.
//!
//! ## `[daemon]`
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `socket` | path | `/run/clearify-workerd/control.sock` | control socket (≤ 107 bytes) |
//! | `device_id` | string `[A-Za-z0-9._-]+` | hostname + `-` + first 6 hex digits of `/etc/machine-id` | this machine's unique name on the shared broker; part of every node name |
//! | `admin_group` | string | `clearify-admin` | Unix group whose members may start, stop, restart and reload (besides root and the daemon's user), through the admin socket `admin.sock` next to `socket` (mode 0660, this group). The default group may be missing (then only root and the daemon's user may); a group named here must exist, else the daemon does not start |
//! | `require_limits` | bool | `false` | refuse to start when cgroup v2 limits cannot be applied |
//!
//! ## `[broker]` (required when at least one group exists)
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `url` | string | — | `redis://[user][:password@]host[:port][/db]`, `rediss://…`, `redis+socket:///path.sock[?virtual_host=N]`, `socket://…`, `unix:///path.sock[?db=N]`, `redis+unix://…`, `valkey://…`, `valkeys://…` ([`broker_url`]) |
//! | `url_env` | string | — | name of a variable holding the URL, looked up in `celery.env_file` first, then in the daemon's environment |
//! | `wait_timeout` | duration or `"infinite"` | `"infinite"` | how long to wait for the broker at start |
//! | `on_timeout` | `"wait"`, `"start"`, `"fail"` | `"wait"` | what to do once `wait_timeout` is exceeded |
//! | `check_interval` | duration > 0 | `"10s"` | broker health ping interval |
//! | `priority_steps` | list of integers 0..=9 | `[0, 3, 6, 9]` | Celery priority sub-queues counted in the backlog |
//! | `key_prefix` | string | `""` | Celery's `global_keyprefix` |
//!
//! Exactly one of `url` and `url_env` must be set.
//!
//! ## `[celery]`
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `app` | string | — (required when groups exist) | `celery -A <app>` |
//! | `command` | string or list of strings | `celery` | the celery executable: a bare name is looked up in `PATH`, a path must exist and be executable. A list such as `["python3", "-m", "celery"]` gives the executable and the arguments that precede `-A` |
//! | `workdir` | path | `/` | working directory of the workers; must be a directory |
//! | `env_file` | path | none | `KEY=VALUE` lines passed to the workers (see below) |
//! | `user` | string | none | user the workers run as (the package sets `clearify-worker`); when it is not the daemon's own user, the daemon needs root or CAP_SETUID, CAP_SETGID and CAP_KILL; never `root`; required when the daemon runs as root |
//! | `loglevel` | `debug`, `info`, `warning`, `error`, `critical`, `fatal` | `info` | `--loglevel=` |
//! | `extra_args` | list of strings | `[]` | appended to every worker's command line, before the group's |
//!
//! `env_file` syntax: one `KEY=VALUE` per line; blank lines and lines
//! starting with `#` are ignored; an optional `export ` prefix; the value may
//! be in single quotes (literal) or double quotes (`\n`, `\t`, `\"`, `\\`
//! escapes); an unquoted value ends at ` #` (a comment). No variable
//! expansion is performed. A value may hold tab and newline but no other
//! control character; the file is at most 1 MiB. An error names the file,
//! line, column and variable, and never shows the value or the line.
//!
//! ## `[defaults]` and `[group.NAME]`
//! Every group inherits each key it does not set from `[defaults]`, and from
//! the built-in default after that. `env` tables are merged key by key (the
//! group wins); every other key, `extra_args` included, is replaced as a
//! whole. Group names match `[a-z0-9][a-z0-9_-]*`, are at most 64
//! characters long (a cgroup directory, part of every node name) and are not
//! `supervisor` (the daemon's own cgroup leaf); a group name may not equal
//! an instance id of another group (`text-1`). At most 1024 groups.
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `queues` | non-empty list of queue names | — (required) | `-Q`; a queue consumed by two groups is a warning |
//! | `concurrency` | integer 1..=1024 | `1` | `-c` |
//! | `instances` | integer 1..=1024, ≤ 4096 in all groups | `1` | worker processes of the group, ids `<group>-1` … |
//! | `stop_timeout` | duration | `"60s"` | SIGTERM (warm shutdown) → SIGQUIT after this long |
//! | `restart_delay` | duration | `"100ms"` | first restart delay |
//! | `restart_delay_max` | duration ≥ `restart_delay` | `"60s"` | cap of the doubling restart delay |
//! | `stable_after` | duration | `"30s"` | a run this long resets the backoff |
//! | `heartbeat_timeout` | duration, `0` = off | `"60s"` | restart when Celery heartbeats stop this long |
//! | `stall_timeout` | duration, `0` = off | `"300s"` | restart when backlog waits and nothing progresses this long |
//! | `extra_args` | list of strings | `[]` | appended after `celery.extra_args` |
//! | `env` | table of strings | `{}` | extra environment, over `env_file` |
//! | `memory_max`, `memory_high`, `memory_swap_max` | size or `"max"` | none | cgroup v2 memory limits of the group |
//! | `cpu_max` | number of CPUs 0.01..=1024 (e.g. `1.5`) or `"max"` | none | cgroup `cpu.max` |
//! | `cpu_weight` | 1..=10000 | none | cgroup `cpu.weight` |
//! | `pids_max` | integer 1..=4194304 or `"max"` | none | cgroup `pids.max` |
//! | `io_weight` | 1..=10000 | none | cgroup `io.weight` |
//!
//! Durations are humantime strings: `"100ms"`, `"60s"`, `"1m 30s"`, `"2h"`,
//! at most `"1y"` (365.25 days).
//! Sizes are integers (bytes) or strings with a binary unit: `"512M"`,
//! `"1.5G"`, `"200MiB"`; `K`, `M`, `G`, `T` are powers of 1024; at most
//! `"1024T"` (1 PiB).
//!
//! ## Limits
//! Every count, duration and size has a bound (the `MAX_*` constants
//! below), so that nothing `--check` accepts can overflow the daemon's
//! arithmetic or make it allocate without bound; a value out of bounds is an
//! error naming file, line, column and key:
//!
//! | what | bound |
//! |---|---|
//! | `instances` | 1..=1024 per group ([`MAX_INSTANCES`]), ≤ 4096 in all groups ([`MAX_TOTAL_INSTANCES`]) |
//! | groups | ≤ 1024 ([`MAX_GROUPS`]) |
//! | `concurrency` | 1..=1024 ([`MAX_CONCURRENCY`]) |
//! | group name | ≤ 64 characters ([`MAX_GROUP_NAME`]), not `supervisor` |
//! | every duration | ≤ 1y ([`MAX_DURATION`]); `check_interval` > 0 |
//! | `memory_max`, `memory_high`, `memory_swap_max` | ≤ 1024T ([`MAX_SIZE`]) |
//! | `cpu_max` | 0.01..=1024 CPUs ([`MAX_CPUS`]) |
//! | `cpu_weight`, `io_weight` | 1..=10000 |
//! | `pids_max` | 1..=4194304 ([`MAX_PIDS`]) |
//! | a string | ≤ 64 KiB ([`MAX_STRING`]), no control characters (C0, DEL, C1); env values may hold tab and newline |
//! | a list (`queues`, `extra_args`, `command`), an `env` table | ≤ 256 entries ([`MAX_LIST`]) |
//! | `env_file` | ≤ 1 MiB ([`MAX_ENV_FILE`]) |
//! | the config file | ≤ 1 MiB ([`MAX_CONFIG_FILE`]) |
//! | `socket` | ≤ 107 bytes |
//!
//! An error about a string never quotes it (it may be a secret): it names
//! the control character's code point and position.
//!
//! `extra_args` may never contain `--detach`/`-D` (the worker would leave
//! supervision), `--pidfile` (stale pidfiles cause crash loops) or
//! `--logfile`/`-f` (output must reach journald), nor the options the daemon
//! sets itself (`-A`, `-Q`, `-c`, `-n`, `-l` and their long forms).
//!
//! ## The command line of instance `i` of group `g`
//! ```text
//! <command> [<command list args>] -A <app> worker -Q <queues joined by ,> -c <concurrency> -n <g>-<i>@<device_id>
//!     --loglevel=<loglevel> <celery.extra_args...> <group.extra_args...>
//! ```
//! run in `workdir` with exactly this environment: `PATH` (the daemon's, or
//! `/usr/local/bin:/usr/bin:/bin`), `LANG=C.UTF-8`, then `env_file`, then
//! the group's `env`, then `PYTHONUNBUFFERED=1`, `CLEARIFY_INSTANCE`,
//! `CLEARIFY_GROUP` and `CLEARIFY_NODE`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::model::spec::{Limits, Timing};

pub mod broker_url;

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
/// Longest path a Unix socket address can hold (sun_path minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

// Bounds (workers.toml(5), "Limits"). Every count, duration and size in the
// config has one, so that nothing the check accepts can overflow the
// daemon's arithmetic or make it allocate without bound.

/// Most `instances` of one group.
pub const MAX_INSTANCES: u32 = 1024;
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

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// A validated, fully defaulted configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, as given.
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    /// `None` only when there are no groups and no `[broker]` section.
    pub broker: Option<BrokerConfig>,
    pub celery: CeleryConfig,
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
    pub instances: u32,
    pub timing: Timing,
    pub limits: Limits,
    pub extra_args: Vec<String>,
    pub env: BTreeMap<String, String>,
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

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in the config (or in its `env_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The dotted key, e.g. `group.text.concurrency`; empty for syntax
    /// errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: ",
            self.file.display(),
            self.line,
            self.column,
            self.severity
        )?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// A valid config and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config is invalid. Holds every error, and the warnings too,
    /// sorted by position; displayed one per line.
    #[error("{}", display_lines(diagnostics))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

impl ConfigError {
    /// All diagnostics (errors and warnings); empty for an I/O error.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid { diagnostics } => diagnostics,
        }
    }

    /// The number of errors (an I/O error counts as one).
    pub fn error_count(&self) -> usize {
        match self {
            ConfigError::Io { .. } => 1,
            ConfigError::Invalid { diagnostics } => diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count(),
        }
    }
}

fn display_lines(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Read and validate the config file at `path` against the running system.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    use std::io::Read as _;
    let io_err = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_FILE + 1).read_to_end(&mut bytes))
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE {
        return Err(ConfigError::Invalid {
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line: 1,
                column: 1,
                key: String::new(),
                message: format!(
                    "the file is larger than {} MiB; a config is far smaller",
                    MAX_CONFIG_FILE >> 20
                ),
            }],
        });
    }
    match String::from_utf8(bytes) {
        Ok(text) => load_str(&text, path, &Environment::system()),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let text = String::from_utf8_lossy(valid);
            let src = Source::new(&text);
            let (line, column) = src.position(text.len());
            Err(ConfigError::Invalid {
                diagnostics: vec![Diagnostic {
                    severity: Severity::Error,
                    file: path.to_path_buf(),
                    line,
                    column,
                    key: String::new(),
                    message: "the file is not valid UTF-8".into(),
                }],
            })
        }
    }
}

/// Validate `text` as if read from `path`, against `env`. Files named by
/// the config (env_file, command, workdir) are checked on the real file
/// system.
pub fn load_str(text: &str, path: &Path, env: &Environment) -> Result<Loaded, ConfigError> {
    let mut checker = Checker::new(path, text, env);
    let config = checker.run();
    let mut diags = checker.diags;
    diags.sort_by(|a, b| {
        let file_rank = |d: &Diagnostic| (d.file != path) as u8;
        (file_rank(a), &a.file, a.line, a.column, a.severity).cmp(&(
            file_rank(b),
            &b.file,
            b.line,
            b.column,
            b.severity,
        ))
    });
    match config {
        Some(config) if diags.iter().all(|d| d.severity == Severity::Warning) => Ok(Loaded {
            config,
            warnings: diags,
        }),
        _ => Err(ConfigError::Invalid { diagnostics: diags }),
    }
}

/// `url` with its password replaced by `***` ([`broker_url::redact`]).
pub use broker_url::redact as redact_url;

/// Parse a size: an integer number of bytes, or a number with a binary unit
/// (`K`, `M`, `G`, `T`, optionally followed by `iB` or `B`; powers of 1024),
/// e.g. `"512M"`, `"1.5G"`, `"200MiB"`. `"max"` gives `None` (no limit).
pub fn parse_size(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("max") || t.eq_ignore_ascii_case("infinity") {
        return Ok(None);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(format!(
            "invalid size `{s}`: expected a number with an optional unit, e.g. \"512M\" or \"1.5G\""
        ));
    }
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "invalid size `{s}`: unknown unit `{unit}` (use K, M, G or T, powers of 1024)"
            ));
        }
    };
    let multiplier = (1u64 << shift) as f64;
    let bytes = if let Ok(n) = num.parse::<u64>() {
        n.checked_mul(1u64 << shift)
    } else {
        match num.parse::<f64>() {
            Ok(f) if f.is_finite() && f * multiplier < u64::MAX as f64 => {
                Some((f * multiplier) as u64)
            }
            Ok(_) => None,
            Err(_) => {
                return Err(format!("invalid size `{s}`: `{num}` is not a number"));
            }
        }
    };
    bytes
        .map(Some)
        .ok_or_else(|| format!("invalid size `{s}`: too large"))
}

/// Parse a humantime duration (`"100ms"`, `"60s"`, `"1m 30s"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration `{s}`: {e} (write e.g. \"100ms\", \"60s\" or \"1m 30s\")")
    })
}

/// A malformed line of an env file. The message never holds any part of
/// a value (nor of a line that has no `=`): env files hold secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The variable, when the line starts with a valid name.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(k) = &self.key {
            write!(f, "variable `{k}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What [`parse_env_line`] reports: column, variable (when known), message.
type EnvLineError = (usize, Option<String>, String);

/// Parse the text of an env file: `KEY=VALUE` lines (see the module docs).
/// Returns the variables in file order (a later duplicate overrides), or
/// every bad line.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, Vec<EnvFileError>> {
    let mut vars = Vec::new();
    let mut errors = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        match parse_env_line(raw) {
            Ok(Some(kv)) => vars.push(kv),
            Ok(None) => {}
            Err((column, key, message)) => errors.push(EnvFileError {
                line: line_no,
                column,
                key,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(vars)
    } else {
        Err(errors)
    }
}

/// One env-file line: `Ok(None)` for blanks and comments, `Err((column,
/// variable, message))` when malformed. No error quotes the line.
fn parse_env_line(raw: &str) -> Result<Option<(String, String)>, EnvLineError> {
    let line = raw.strip_suffix('\r').unwrap_or(raw);
    let indent = line.len() - line.trim_start().len();
    let body = line.trim_start();
    if body.is_empty() || body.starts_with('#') {
        return Ok(None);
    }
    let col_of = |byte: usize| line[..byte].chars().count() + 1;
    let mut start = indent;
    if let Some(rest) = body.strip_prefix("export ") {
        start += body.len() - rest.len() + (rest.len() - rest.trim_start().len());
    }
    let Some(eq_rel) = line[start..].find('=') else {
        // Name the variable only when the line starts with a valid one;
        // the rest may be a value (`OTHER_URL redis://:pw@h/0`).
        let first = line[start..]
            .split(|c: char| c.is_whitespace())
            .next()
            .filter(|w| is_env_name(w))
            .map(str::to_string);
        return Err((
            col_of(start),
            first,
            "expected KEY=VALUE (no `=` on this line; the line is not shown)".into(),
        ));
    };
    let key = line[start..start + eq_rel].trim_end();
    if !is_env_name(key) {
        return Err((
            col_of(start),
            None,
            "invalid variable name before `=` (use letters, digits and `_`, not starting with a digit; the line is not shown)".into(),
        ));
    }
    let name = || Some(key.to_string());
    let value_start = start + eq_rel + 1;
    let vs = &line[value_start..];
    let lead = vs.len() - vs.trim_start().len();
    let v = vs.trim_start();
    let v_col = col_of(value_start + lead);
    let value = if let Some(inner) = v.strip_prefix('\'') {
        let Some(end) = inner.find('\'') else {
            return Err((v_col, name(), "unterminated single-quoted value".into()));
        };
        check_env_trailer(&inner[end + 1..], v_col).map_err(|(c, m)| (c, name(), m))?;
        inner[..end].to_string()
    } else if let Some(inner) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.char_indices();
        let mut closed = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    closed = Some(i);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '$')) => out.push('$'),
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        let Some(end) = closed else {
            return Err((v_col, name(), "unterminated double-quoted value".into()));
        };
        check_env_trailer(&inner[end + 1..], v_col).map_err(|(c, m)| (c, name(), m))?;
        out
    } else {
        let mut value = v;
        if v.starts_with('#') {
            value = "";
        } else if let Some(hash) = v.find(" #").or_else(|| v.find("\t#")) {
            value = &v[..hash];
        }
        value.trim_end().to_string()
    };
    if let Some(why) = control_char(&value, ENV_VALUE_CONTROLS) {
        return Err((v_col, name(), format!("the value {why}")));
    }
    Ok(Some((key.to_string(), value)))
}

fn check_env_trailer(rest: &str, col: usize) -> Result<(), (usize, String)> {
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err((
            col,
            "unexpected text after the closing quote (the value is not shown)".into(),
        ))
    }
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

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
fn control_char(s: &str, allowed: &[char]) -> Option<String> {
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

/// `[daemon].socket` as written in a config file's text, or `None` when it
/// is not set (or not a non-empty string). Lenient, for clearifyctl: TOML
/// errors elsewhere in the file (the daemon reports them) do not hide it,
/// as the same recoverable parser [`load_str`] uses reads what it can.
pub fn daemon_socket(text: &str) -> Option<PathBuf> {
    let (doc, _errors) = DeTable::parse_recoverable(text);
    let doc = doc.into_inner();
    let (_, daemon) = doc.iter().find(|(k, _)| k.get_ref() == "daemon")?;
    let DeValue::Table(daemon) = daemon.get_ref() else {
        return None;
    };
    let (_, socket) = daemon.iter().find(|(k, _)| k.get_ref() == "socket")?;
    match socket.get_ref() {
        DeValue::String(s) if !s.is_empty() => Some(PathBuf::from(s.as_ref())),
        _ => None,
    }
}

/// The control socket the daemon binds with the config file at `path`:
/// its `[daemon].socket`, resolved against the file's directory as the
/// daemon resolves it, or `None` when the file cannot be read (or is
/// larger than [`MAX_CONFIG_FILE`]) or does not set it.
pub fn daemon_socket_of(path: &Path) -> Option<PathBuf> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_FILE).read_to_string(&mut text))
        .ok()?;
    Some(resolve_against(path, &daemon_socket(&text)?))
}

/// `p` resolved against the directory of the config file `config_path`
/// (unchanged when absolute), with `.` components dropped.
fn resolve_against(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let base_dir = std::path::absolute(config_path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/"));
    // Lexically drop `.` components: "./x" → "<dir>/x".
    base_dir.join(p).components().collect()
}

/// Whether the daemon can use `url` as its broker ([`broker_url::check`]):
/// the very parser the broker monitor runs, so that a URL `--check`
/// accepts is one the daemon can use.
pub fn check_broker_url(url: &str) -> Result<(), String> {
    broker_url::check(url)
}

// ---------------------------------------------------------------------------
// Positions
// ---------------------------------------------------------------------------

struct Source<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str) -> Source<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source { text, line_starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let mut end = offset;
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        (line + 1, self.text[start..end].chars().count() + 1)
    }
}

// ---------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------

type Val<'i> = Spanned<DeValue<'i>>;

/// A value with where it came from.
#[derive(Debug, Clone)]
struct At<T> {
    v: T,
    span: Range<usize>,
    key: String,
}

const TOP_KEYS: &[&str] = &["daemon", "broker", "celery", "defaults", "group"];
const DAEMON_KEYS: &[&str] = &["socket", "device_id", "admin_group", "require_limits"];
const BROKER_KEYS: &[&str] = &[
    "url",
    "url_env",
    "wait_timeout",
    "on_timeout",
    "check_interval",
    "priority_steps",
    "key_prefix",
];
const CELERY_KEYS: &[&str] = &[
    "app",
    "command",
    "workdir",
    "env_file",
    "user",
    "loglevel",
    "extra_args",
];
const GROUP_KEYS: &[&str] = &[
    "queues",
    "concurrency",
    "instances",
    "stop_timeout",
    "restart_delay",
    "restart_delay_max",
    "stable_after",
    "heartbeat_timeout",
    "stall_timeout",
    "extra_args",
    "env",
    "memory_max",
    "memory_high",
    "memory_swap_max",
    "cpu_max",
    "cpu_weight",
    "pids_max",
    "io_weight",
];
const LOGLEVELS: &[&str] = &["debug", "info", "warning", "error", "critical", "fatal"];
/// The control characters an environment value may hold (`env`,
/// `env_file`): tab and newline, e.g. for a PEM key. NUL cannot be passed at
/// all, and the rest (CR, ESC …) would rewrite a terminal that shows them.
const ENV_VALUE_CONTROLS: &[char] = &['\t', '\n'];
/// Variables the daemon sets for every worker.
const RESERVED_ENV: &[&str] = &[
    "PYTHONUNBUFFERED",
    "CLEARIFY_INSTANCE",
    "CLEARIFY_GROUP",
    "CLEARIFY_NODE",
];

/// The per-group keys as written in one table ([defaults] or a group).
#[derive(Debug, Clone, Default)]
struct RawGroup {
    /// `queues` was written (even if invalid).
    queues_written: bool,
    queues: Option<At<Vec<At<String>>>>,
    concurrency: Option<At<u32>>,
    instances: Option<At<u32>>,
    stop_timeout: Option<At<Duration>>,
    restart_delay: Option<At<Duration>>,
    restart_delay_max: Option<At<Duration>>,
    stable_after: Option<At<Duration>>,
    heartbeat_timeout: Option<At<Option<Duration>>>,
    stall_timeout: Option<At<Option<Duration>>>,
    extra_args: Option<At<Vec<String>>>,
    env: Option<At<BTreeMap<String, String>>>,
    memory_max: Option<At<Option<u64>>>,
    memory_high: Option<At<Option<u64>>>,
    memory_swap_max: Option<At<Option<u64>>>,
    cpu_max: Option<At<Option<f64>>>,
    cpu_weight: Option<At<u32>>,
    pids_max: Option<At<Option<u64>>>,
    io_weight: Option<At<u32>>,
}

struct Checker<'a> {
    path: &'a Path,
    src: Source<'a>,
    env: &'a Environment,
    diags: Vec<Diagnostic>,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl<'a> Checker<'a> {
    fn new(path: &'a Path, text: &'a str, env: &'a Environment) -> Checker<'a> {
        Checker {
            path,
            src: Source::new(text),
            env,
            diags: Vec::new(),
        }
    }

    fn push(&mut self, severity: Severity, span: &Range<usize>, key: &str, message: String) {
        let (line, column) = self.src.position(span.start);
        self.diags.push(Diagnostic {
            severity,
            file: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        });
    }

    fn error(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        self.push(Severity::Error, span, key, message.into());
    }

    fn warning(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        self.push(Severity::Warning, span, key, message.into());
    }

    fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }

    fn resolve_path(&self, p: &str) -> PathBuf {
        resolve_against(self.path, Path::new(p))
    }

    fn unknown_key(&mut self, span: &Range<usize>, prefix: &str, name: &str, known: &[&str]) {
        let mut msg = format!("unknown key `{}`", name.escape_debug());
        if let Some(best) = known
            .iter()
            .filter(|k| distance(k, name) <= 2.max(name.len() / 4))
            .min_by_key(|k| distance(k, name))
        {
            msg.push_str(&format!("; did you mean `{best}`?"));
        } else {
            msg.push_str(&format!("; expected one of: {}", known.join(", ")));
        }
        self.error(span, &join(prefix, &name.escape_debug().to_string()), msg);
    }

    fn wrong_type(&mut self, v: &Val<'_>, key: &str, expected: &str) {
        let found = type_name(v.get_ref());
        self.error(
            &v.span(),
            key,
            format!("expected {expected}, found {found}"),
        );
    }

    // ----- typed getters: each reports its own error and returns None -----

    fn table<'t, 'i>(&mut self, v: &'t Val<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(v, key, "a table");
                None
            }
        }
    }

    /// A string without control characters, at most [`MAX_STRING`] bytes.
    fn string(&mut self, v: &Val<'_>, key: &str) -> Option<String> {
        self.string_allowing(v, key, &[])
    }

    /// A string whose control characters are only those in `allowed`. The
    /// error never quotes the value: it may be a secret.
    fn string_allowing(&mut self, v: &Val<'_>, key: &str, allowed: &[char]) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => {
                if s.len() > MAX_STRING {
                    self.error(
                        &v.span(),
                        key,
                        format!(
                            "is {} bytes long; at most {MAX_STRING} are allowed",
                            s.len()
                        ),
                    );
                    return None;
                }
                if let Some(why) = control_char(s, allowed) {
                    self.error(&v.span(), key, why);
                    return None;
                }
                Some(s.to_string())
            }
            _ => {
                self.wrong_type(v, key, "a string");
                None
            }
        }
    }

    fn nonempty_string(&mut self, v: &Val<'_>, key: &str) -> Option<String> {
        let s = self.string(v, key)?;
        if s.trim().is_empty() {
            self.error(&v.span(), key, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, v: &Val<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(v, key, "a boolean (true or false)");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    fn int_in(&mut self, v: &Val<'_>, key: &str, min: i64, max: i64) -> Option<i64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(v, key, "an integer");
            return None;
        };
        let Ok(n) = i64::from_str_radix(i.as_str(), i.radix()) else {
            self.error(&v.span(), key, format!("integer {i} is out of range"));
            return None;
        };
        if n < min || n > max {
            let msg = if max == i64::MAX || max == u32::MAX as i64 {
                format!("must be at least {min}, found {n}")
            } else {
                format!("must be from {min} to {max}, found {n}")
            };
            self.error(&v.span(), key, msg);
            return None;
        }
        Some(n)
    }

    fn u32_in(&mut self, v: &Val<'_>, key: &str, min: u32, max: u32) -> Option<u32> {
        self.int_in(v, key, min.into(), max.into())
            .and_then(|n| u32::try_from(n).ok())
    }

    /// A list of strings, each element with its own span.
    fn string_list(&mut self, v: &Val<'_>, key: &str) -> Option<Vec<At<String>>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(v, key, "an array of strings");
            return None;
        };
        if items.len() > MAX_LIST {
            self.error(
                &v.span(),
                key,
                format!(
                    "has {} elements; at most {MAX_LIST} are allowed",
                    items.len()
                ),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (idx, item) in items.iter().enumerate() {
            let ikey = format!("{key}[{idx}]");
            match self.string(item, &ikey) {
                Some(s) => out.push(At {
                    v: s,
                    span: item.span(),
                    key: ikey,
                }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A duration string. With `off_allowed`, zero (`"0s"` or the integer
    /// 0) gives `Some(None)`.
    fn duration(&mut self, v: &Val<'_>, key: &str, off_allowed: bool) -> Option<Option<Duration>> {
        match v.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) if d > MAX_DURATION => {
                    self.error(
                        &v.span(),
                        key,
                        format!(
                            "must be at most 1y (365.25 days), found {}",
                            humantime::format_duration(d)
                        ),
                    );
                    None
                }
                Ok(d) if off_allowed && d.is_zero() => Some(None),
                Ok(d) => Some(Some(d)),
                Err(e) => {
                    self.error(&v.span(), key, e);
                    None
                }
            },
            DeValue::Integer(i) if i.as_str() == "0" => {
                if off_allowed {
                    Some(None)
                } else {
                    Some(Some(Duration::ZERO))
                }
            }
            DeValue::Integer(i) => {
                self.error(
                    &v.span(),
                    key,
                    format!("write a duration as a string with a unit, e.g. \"{i}s\""),
                );
                None
            }
            _ => {
                self.wrong_type(v, key, "a duration string such as \"60s\"");
                None
            }
        }
    }

    fn plain_duration(&mut self, v: &Val<'_>, key: &str) -> Option<Duration> {
        self.duration(v, key, false).map(|d| d.unwrap_or_default())
    }

    /// A size: integer bytes or a string with a unit; `"max"` → `Some(None)`.
    fn size(&mut self, v: &Val<'_>, key: &str, zero_ok: bool) -> Option<Option<u64>> {
        let parsed = match v.get_ref() {
            DeValue::String(s) => match parse_size(s) {
                Ok(n) => n,
                Err(e) => {
                    self.error(&v.span(), key, e);
                    return None;
                }
            },
            DeValue::Integer(_) => Some(self.int_in(v, key, 0, i64::MAX)? as u64),
            _ => {
                self.wrong_type(v, key, "a size such as \"512M\" or \"1G\"");
                return None;
            }
        };
        if let Some(n) = parsed {
            if n > MAX_SIZE {
                self.error(
                    &v.span(),
                    key,
                    format!("must be at most 1024T (1 PiB), found {n} bytes"),
                );
                return None;
            }
            if n == 0 && !zero_ok {
                self.error(
                    &v.span(),
                    key,
                    "must be greater than 0 (use \"max\" for no limit)",
                );
                return None;
            }
            if n > 0 && n < 1 << 20 {
                self.warning(
                    &v.span(),
                    key,
                    format!(
                        "only {n} bytes; sizes without a unit are bytes (did you mean \"{n}M\"?)"
                    ),
                );
            }
        }
        Some(parsed)
    }

    fn at<T>(&self, v: T, val: &Val<'_>, key: &str) -> At<T> {
        At {
            v,
            span: val.span(),
            key: key.to_string(),
        }
    }

    // ----- sections -----

    fn run(&mut self) -> Option<Config> {
        let (doc, errors) = DeTable::parse_recoverable(self.src.text);
        if !errors.is_empty() {
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                self.error(&span, "", format!("TOML syntax: {}", e.message()));
            }
            return None;
        }
        let doc = doc.into_inner();
        let mut sections: HashMap<&str, &Val<'_>> = HashMap::new();
        for (k, v) in doc.iter() {
            let name: &str = k.get_ref();
            if TOP_KEYS.contains(&name) {
                sections.insert(name, v);
            } else {
                self.unknown_key(&k.span(), "", name, TOP_KEYS);
            }
        }

        // Groups first: whether any exist decides what else is required.
        let defaults = match sections.get("defaults") {
            Some(v) => match self.table(v, "defaults") {
                Some(t) => self.raw_group(t, "defaults"),
                None => RawGroup::default(),
            },
            None => RawGroup::default(),
        };
        let mut raw_groups: Vec<(At<String>, Range<usize>, RawGroup)> = Vec::new();
        if let Some(gv) = sections.get("group")
            && let Some(gt) = self.table(gv, "group")
        {
            let mut entries: Vec<_> = gt.iter().collect();
            entries.sort_by_key(|(k, _)| k.span().start);
            let total = entries.len();
            for (n, (k, v)) in entries.into_iter().enumerate() {
                let name = k.get_ref().to_string();
                let prefix = format!("group.{}", name.escape_debug());
                if n == MAX_GROUPS {
                    // The file is refused anyway: checking the rest would
                    // only cost time and memory in proportion to its size.
                    self.error(
                        &k.span(),
                        &prefix,
                        format!("too many groups: {total} groups, at most {MAX_GROUPS} are allowed (this one and the ones after it are not checked)"),
                    );
                    break;
                }
                if let Some(why) = group_name_problem(&name) {
                    self.error(
                        &k.span(),
                        &prefix,
                        format!("invalid group name `{}`: {why}", name.escape_debug()),
                    );
                }
                if let Some(t) = self.table(v, &prefix) {
                    let raw = self.raw_group(t, &prefix);
                    raw_groups.push((
                        At {
                            v: name,
                            span: k.span(),
                            key: prefix,
                        },
                        v.span(),
                        raw,
                    ));
                }
            }
        }
        let has_groups = !raw_groups.is_empty();
        let first_group_span = raw_groups.first().map(|g| g.1.clone()).unwrap_or(0..0);
        if !has_groups && !sections.contains_key("group") {
            self.warning(
                &(0..0),
                "group",
                "no [group.NAME] sections: no workers will run",
            );
        }

        let daemon = self.daemon(sections.get("daemon").copied());
        let celery = self.celery(
            sections.get("celery").copied(),
            has_groups,
            &first_group_span,
        );
        let broker = match sections.get("broker") {
            Some(v) => self.broker(v, &celery),
            None => {
                if has_groups {
                    self.error(
                        &first_group_span,
                        "broker",
                        "a [broker] section with `url` or `url_env` is required when groups are defined",
                    );
                }
                None
            }
        };

        let groups = self.groups(&defaults, &raw_groups);

        if self.has_errors() {
            return None;
        }
        Some(Config {
            path: self.path.to_path_buf(),
            daemon: daemon?,
            broker,
            celery: celery.config?,
            groups,
        })
    }

    fn daemon(&mut self, v: Option<&Val<'_>>) -> Option<DaemonConfig> {
        let mut socket = PathBuf::from(DEFAULT_SOCKET);
        let mut device_id = None;
        let mut admin_group = DEFAULT_ADMIN_GROUP.to_string();
        let mut require_limits = false;
        let mut ok = true;
        if let Some(v) = v
            && let Some(t) = self.table(v, "daemon")
        {
            for (k, v) in t.iter() {
                let name = k.get_ref().as_ref();
                let key = join("daemon", name);
                match name {
                    "socket" => match self.nonempty_string(v, &key) {
                        Some(s) => {
                            let p = self.resolve_path(&s);
                            let len = p.as_os_str().len();
                            if len > MAX_SOCKET_PATH {
                                self.error(
                                    &v.span(),
                                    &key,
                                    format!("the path is {len} bytes long; Unix socket paths are limited to {MAX_SOCKET_PATH}"),
                                );
                                ok = false;
                            }
                            socket = p;
                        }
                        None => ok = false,
                    },
                    "device_id" => match self.nonempty_string(v, &key) {
                        Some(s) => {
                            if s.chars().all(|c| {
                                c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'
                            }) {
                                device_id = Some(s);
                            } else {
                                self.error(
                                    &v.span(),
                                    &key,
                                    format!("invalid device_id `{s}`: use only letters, digits, `.`, `_` and `-` (it becomes part of the Celery node name)"),
                                );
                                ok = false;
                            }
                        }
                        None => ok = false,
                    },
                    "admin_group" => match self.nonempty_string(v, &key) {
                        Some(s) => admin_group = s,
                        None => ok = false,
                    },
                    "require_limits" => match self.boolean(v, &key) {
                        Some(b) => require_limits = b,
                        None => ok = false,
                    },
                    _ => self.unknown_key(&k.span(), "daemon", name, DAEMON_KEYS),
                }
            }
        }
        let device_id = match device_id {
            Some(d) => d,
            None => self.default_device_id()?,
        };
        ok.then_some(DaemonConfig {
            socket,
            device_id,
            admin_group,
            require_limits,
        })
    }

    /// hostname + "-" + the first 6 hex digits of the machine id.
    fn default_device_id(&mut self) -> Option<String> {
        let Some(host) = self.env.hostname.clone() else {
            self.error(
                &(0..0),
                "daemon.device_id",
                "cannot determine the hostname for the default device_id; set [daemon].device_id",
            );
            return None;
        };
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let path = &self.env.machine_id_path;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let id = text.trim();
                if id.len() >= 6 && id.chars().take(6).all(|c| c.is_ascii_hexdigit()) {
                    Some(format!("{host}-{}", id[..6].to_ascii_lowercase()))
                } else {
                    self.warning(
                        &(0..0),
                        "daemon.device_id",
                        format!("{} does not hold a machine id; device_id defaults to the hostname `{host}` alone, which may not be unique on a shared broker; set [daemon].device_id", path.display()),
                    );
                    Some(host)
                }
            }
            Err(e) => {
                self.warning(
                    &(0..0),
                    "daemon.device_id",
                    format!("cannot read {}: {e}; device_id defaults to the hostname `{host}` alone, which may not be unique on a shared broker; set [daemon].device_id", path.display()),
                );
                Some(host)
            }
        }
    }

    fn celery(
        &mut self,
        v: Option<&Val<'_>>,
        has_groups: bool,
        group_span: &Range<usize>,
    ) -> CeleryParts {
        let mut app = None;
        let mut app_written = false;
        let mut command_args = Vec::new();
        let mut command: Option<At<String>> = None;
        let mut workdir: Option<At<String>> = None;
        let mut env_file: Option<At<String>> = None;
        let mut user = None;
        let mut loglevel = "info".to_string();
        let mut extra_args = Vec::new();
        let mut ok = true;
        let mut header = group_span.clone();
        if let Some(v) = v
            && let Some(t) = self.table(v, "celery")
        {
            header = v.span();
            for (k, v) in t.iter() {
                let name = k.get_ref().as_ref();
                let key = join("celery", name);
                match name {
                    "app" => {
                        app_written = true;
                        match self.nonempty_string(v, &key) {
                            Some(s) => app = Some(s),
                            None => ok = false,
                        }
                    }
                    "command" => match v.get_ref() {
                        DeValue::Array(_) => match self.string_list(v, &key) {
                            Some(list) if list.is_empty() => {
                                self.error(&v.span(), &key, "must not be an empty list");
                                ok = false;
                            }
                            Some(list) => {
                                let mut list = list.into_iter();
                                command = list.next();
                                command_args = list.map(|a| a.v).collect();
                            }
                            None => ok = false,
                        },
                        _ => match self.nonempty_string(v, &key) {
                            Some(s) => command = Some(self.at(s, v, &key)),
                            None => ok = false,
                        },
                    },
                    "workdir" => match self.nonempty_string(v, &key) {
                        Some(s) => workdir = Some(self.at(s, v, &key)),
                        None => ok = false,
                    },
                    "env_file" => match self.nonempty_string(v, &key) {
                        Some(s) => env_file = Some(self.at(s, v, &key)),
                        None => ok = false,
                    },
                    "user" => match self.nonempty_string(v, &key) {
                        Some(s) => {
                            if self.check_user(&s, v, &key) {
                                user = Some(s);
                            } else {
                                ok = false;
                            }
                        }
                        None => ok = false,
                    },
                    "loglevel" => match self.string(v, &key) {
                        Some(s) if LOGLEVELS.contains(&s.to_ascii_lowercase().as_str()) => {
                            loglevel = s.to_ascii_lowercase();
                        }
                        Some(s) => {
                            self.error(
                                &v.span(),
                                &key,
                                format!(
                                    "invalid loglevel `{s}`; expected one of: {}",
                                    LOGLEVELS.join(", ")
                                ),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    },
                    "extra_args" => match self.string_list(v, &key) {
                        Some(args) => {
                            self.check_worker_args(&args);
                            extra_args = args.into_iter().map(|a| a.v).collect();
                        }
                        None => ok = false,
                    },
                    _ => self.unknown_key(&k.span(), "celery", name, CELERY_KEYS),
                }
            }
        }
        if has_groups && !app_written {
            self.error(&header, "celery.app", "missing required key `app` (the Celery app for `celery -A`), required when groups are defined");
        }

        let worker_path = self
            .env
            .var("PATH")
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_PATH)
            .to_string();

        // command: checked when groups will run it, or when set explicitly.
        let command_path = match &command {
            Some(c) => self.resolve_command(&c.v, &worker_path, Some(c)),
            None if has_groups => self.resolve_command("celery", &worker_path, None),
            None => Some(PathBuf::from("celery")),
        };

        let workdir_path = match &workdir {
            Some(w) => {
                let p = self.resolve_path(&w.v);
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_dir() => Some(p),
                    Ok(_) => {
                        self.error(
                            &w.span,
                            &w.key,
                            format!("{} is not a directory", p.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.error(&w.span, &w.key, format!("{}: {e}", p.display()));
                        None
                    }
                }
            }
            None => Some(PathBuf::from("/")),
        };

        let mut env_file_vars = BTreeMap::new();
        let mut env_file_path = None;
        let mut env_file_ok = true;
        if let Some(f) = &env_file {
            let p = self.resolve_path(&f.v);
            match std::fs::read(&p) {
                Ok(bytes) if bytes.len() as u64 > MAX_ENV_FILE => {
                    env_file_ok = false;
                    self.error(
                        &f.span,
                        &f.key,
                        format!(
                            "env_file {} is {} bytes long; at most {MAX_ENV_FILE} are allowed",
                            p.display(),
                            bytes.len()
                        ),
                    );
                }
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    match parse_env_file(&text) {
                        Ok(vars) => {
                            let lines = env_line_numbers(&text);
                            for (k, v) in vars {
                                if RESERVED_ENV.contains(&k.as_str()) {
                                    let line = lines.get(&k).copied().unwrap_or(1);
                                    self.diags.push(Diagnostic {
                                        severity: Severity::Warning,
                                        file: p.clone(),
                                        line,
                                        column: 1,
                                        key: "celery.env_file".into(),
                                        message: format!("`{k}` is set by clearify-workerd for each worker; this value is ignored"),
                                    });
                                }
                                if v.contains("${") {
                                    let line = lines.get(&k).copied().unwrap_or(1);
                                    self.diags.push(Diagnostic {
                                        severity: Severity::Warning,
                                        file: p.clone(),
                                        line,
                                        column: 1,
                                        key: "celery.env_file".into(),
                                        message: format!("`{k}` contains `${{`, but no variable expansion is performed"),
                                    });
                                }
                                env_file_vars.insert(k, v);
                            }
                        }
                        Err(errors) => {
                            env_file_ok = false;
                            for e in errors {
                                self.diags.push(Diagnostic {
                                    severity: Severity::Error,
                                    file: p.clone(),
                                    line: e.line,
                                    column: e.column,
                                    key: "celery.env_file".into(),
                                    message: e.to_string(),
                                });
                            }
                        }
                    }
                    env_file_path = Some(p);
                }
                Err(e) => {
                    env_file_ok = false;
                    self.error(
                        &f.span,
                        &f.key,
                        format!("cannot read env_file {}: {e}", p.display()),
                    );
                }
            }
        }

        let config = (ok && env_file_ok).then_some(()).and_then(|()| {
            Some(CeleryConfig {
                app: app.clone(),
                command: command_path.clone()?,
                command_args: command_args.clone(),
                workdir: workdir_path.clone()?,
                env_file: env_file_path.clone(),
                env_file_vars: env_file_vars.clone(),
                user: user.clone(),
                loglevel: loglevel.clone(),
                extra_args: extra_args.clone(),
                worker_path: worker_path.clone(),
            })
        });
        CeleryParts {
            config,
            env_file_vars,
            env_file_path,
        }
    }

    fn check_user(&mut self, name: &str, v: &Val<'_>, key: &str) -> bool {
        match crate::sys::accounts::Accounts::system().user_by_name(name) {
            Ok(Some(u)) if u.uid.is_root() => {
                self.error(
                    &v.span(),
                    key,
                    format!("user `{name}` is root; workers never run as root"),
                );
                false
            }
            Ok(Some(_)) => true,
            Ok(None) => {
                self.error(&v.span(), key, format!("no such user `{name}`"));
                false
            }
            Err(e) => {
                self.error(&v.span(), key, format!("cannot look up user `{name}`: {e}"));
                false
            }
        }
    }

    /// Find the celery executable: a bare name in `path_var`, anything with
    /// a `/` as a path (relative to the config's directory).
    fn resolve_command(
        &mut self,
        cmd: &str,
        path_var: &str,
        at: Option<&At<String>>,
    ) -> Option<PathBuf> {
        let (span, key) = match at {
            Some(a) => (a.span.clone(), a.key.clone()),
            None => (0..0, "celery.command".to_string()),
        };
        if cmd.contains('/') {
            let p = self.resolve_path(cmd);
            match std::fs::metadata(&p) {
                Ok(m) if !m.is_file() => {
                    self.error(
                        &span,
                        &key,
                        format!("{} is not a regular file", p.display()),
                    );
                    None
                }
                Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                    self.error(
                        &span,
                        &key,
                        format!("{} is not executable (chmod +x it)", p.display()),
                    );
                    None
                }
                Ok(_) => Some(p),
                Err(e) => {
                    self.error(&span, &key, format!("{}: {e}", p.display()));
                    None
                }
            }
        } else {
            for dir in path_var.split(':').filter(|d| !d.is_empty()) {
                let p = Path::new(dir).join(cmd);
                if let Ok(m) = std::fs::metadata(&p)
                    && m.is_file()
                    && m.permissions().mode() & 0o111 != 0
                {
                    return Some(p);
                }
            }
            let how = if at.is_some() {
                ""
            } else {
                " (the default celery.command)"
            };
            self.error(
                &span,
                &key,
                format!("`{cmd}`{how} is not an executable in PATH ({path_var}); set celery.command to its full path, e.g. /opt/clearify/venv/bin/celery"),
            );
            None
        }
    }

    fn broker(&mut self, v: &Val<'_>, celery: &CeleryParts) -> Option<BrokerConfig> {
        let t = self.table(v, "broker")?;
        let mut url: Option<At<String>> = None;
        let mut url_env: Option<At<String>> = None;
        let mut url_written = false;
        let mut wait_timeout = None;
        let mut on_timeout = OnTimeout::Wait;
        let mut check_interval = Duration::from_secs(10);
        let mut priority_steps = DEFAULT_PRIORITY_STEPS.to_vec();
        let mut key_prefix = String::new();
        let mut ok = true;
        for (k, val) in t.iter() {
            let name = k.get_ref().as_ref();
            let key = join("broker", name);
            match name {
                "url" => {
                    url_written = true;
                    match self.nonempty_string(val, &key) {
                        Some(s) => url = Some(self.at(s, val, &key)),
                        None => ok = false,
                    }
                }
                "url_env" => {
                    url_written = true;
                    match self.nonempty_string(val, &key) {
                        Some(s) => url_env = Some(self.at(s, val, &key)),
                        None => ok = false,
                    }
                }
                "wait_timeout" => match val.get_ref() {
                    DeValue::String(s) if s.trim().eq_ignore_ascii_case("infinite") => {}
                    _ => match self.duration(val, &key, false) {
                        Some(d) => wait_timeout = d,
                        None => ok = false,
                    },
                },
                "on_timeout" => {
                    match self.string(val, &key).as_deref() {
                        Some("wait") => on_timeout = OnTimeout::Wait,
                        Some("start") => on_timeout = OnTimeout::Start,
                        Some("fail") => on_timeout = OnTimeout::Fail,
                        Some(other) => {
                            self.error(&val.span(), &key, format!("invalid value `{other}`; expected \"wait\", \"start\" or \"fail\""));
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                "check_interval" => match self.plain_duration(val, &key) {
                    Some(d) if d.is_zero() => {
                        self.error(&val.span(), &key, "must be greater than 0");
                        ok = false;
                    }
                    Some(d) => check_interval = d,
                    None => ok = false,
                },
                "priority_steps" => {
                    let DeValue::Array(items) = val.get_ref() else {
                        self.wrong_type(val, &key, "an array of integers from 0 to 9");
                        ok = false;
                        continue;
                    };
                    if items.is_empty() {
                        self.error(
                            &val.span(),
                            &key,
                            "must not be empty (use [0] for no priorities)",
                        );
                        ok = false;
                        continue;
                    }
                    let mut steps = Vec::new();
                    for (idx, item) in items.iter().enumerate() {
                        match self.int_in(item, &format!("{key}[{idx}]"), 0, 9) {
                            Some(n) => steps.push(n as u8),
                            None => ok = false,
                        }
                    }
                    steps.sort_unstable();
                    steps.dedup();
                    priority_steps = steps;
                }
                "key_prefix" => match self.string(val, &key) {
                    Some(s) => key_prefix = s,
                    None => ok = false,
                },
                _ => self.unknown_key(&k.span(), "broker", name, BROKER_KEYS),
            }
        }
        let resolved = match (&url, &url_env) {
            (Some(_), Some(e)) => {
                self.error(&e.span, &e.key, "set either `url` or `url_env`, not both");
                None
            }
            (None, None) => {
                if !url_written {
                    self.error(&v.span(), "broker.url", "missing `url` (or `url_env`)");
                }
                None
            }
            (Some(u), None) => match check_broker_url(&u.v) {
                Ok(()) => Some(u.v.clone()),
                Err(e) => {
                    self.error(
                        &u.span,
                        &u.key,
                        format!(
                            "invalid broker URL `{}`: {e}",
                            redact_url(&u.v).escape_debug()
                        ),
                    );
                    None
                }
            },
            (None, Some(e)) => {
                let from_file = celery.env_file_vars.get(&e.v).cloned();
                let (value, source) = match from_file {
                    Some(val) => (
                        Some(val),
                        format!(
                            "env_file {}",
                            celery
                                .env_file_path
                                .as_ref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ),
                    ),
                    None => (
                        self.env.var(&e.v).map(str::to_string),
                        "the daemon's environment".to_string(),
                    ),
                };
                match value {
                    None => {
                        let where_ = match &celery.env_file_path {
                            Some(p) => format!(
                                "in env_file {} nor in the daemon's environment",
                                p.display()
                            ),
                            None => {
                                "in the daemon's environment (and no celery.env_file is set)".into()
                            }
                        };
                        self.error(
                            &e.span,
                            &e.key,
                            format!("variable `{}` is not set {where_}", e.v),
                        );
                        None
                    }
                    Some(u) => {
                        match check_broker_url(&u) {
                            Ok(()) => Some(u),
                            Err(err) => {
                                self.error(
                                &e.span,
                                &e.key,
                                format!("`{}` from {source} is not a valid broker URL (`{}`): {err}", e.v, redact_url(&u).escape_debug()),
                            );
                                None
                            }
                        }
                    }
                }
            }
        };
        let url = resolved?;
        ok.then_some(BrokerConfig {
            url,
            url_env: url_env.map(|e| e.v),
            wait_timeout,
            on_timeout,
            check_interval,
            priority_steps,
            key_prefix,
        })
    }

    /// Reject options that take the worker out of supervision or clash
    /// with the ones the daemon sets.
    fn check_worker_args(&mut self, args: &[At<String>]) {
        for a in args {
            let s = a.v.as_str();
            let name = s.split_once('=').map_or(s, |(n, _)| n);
            let why: Option<&str> = if name == "--detach" || s == "-D" {
                Some(
                    "it would fork the worker into the background, out of clearify-workerd's supervision; workers must run in the foreground",
                )
            } else if name == "--pidfile" {
                Some(
                    "stale pidfiles make restarted workers refuse to start (a crash loop); clearify-workerd tracks the processes itself",
                )
            } else if name == "--logfile" || s.starts_with("-f") {
                Some(
                    "worker output must go to stdout/stderr so that clearify-workerd can send it to journald",
                )
            } else if matches!(name, "-A" | "--app") || (s.starts_with("-A") && s.len() > 2) {
                Some("clearify-workerd sets the app; use celery.app")
            } else if matches!(name, "-Q" | "--queues") || (s.starts_with("-Q") && s.len() > 2) {
                Some("clearify-workerd sets the queues; use the group's `queues`")
            } else if matches!(name, "-c" | "--concurrency") || (s.starts_with("-c") && s.len() > 2)
            {
                Some("clearify-workerd sets the concurrency; use the group's `concurrency`")
            } else if matches!(name, "-n" | "--hostname") || (s.starts_with("-n") && s.len() > 2) {
                Some(
                    "clearify-workerd sets the node name (`<group>-<i>@<device_id>`), which must stay unique; set daemon.device_id instead",
                )
            } else if matches!(name, "-l" | "--loglevel") || (s.starts_with("-l") && s.len() > 2) {
                Some("clearify-workerd sets the log level; use celery.loglevel")
            } else {
                None
            };
            if let Some(why) = why {
                self.error(&a.span, &a.key, format!("`{s}` is not allowed: {why}"));
            }
        }
    }

    /// Read the per-group keys of one table ([defaults] or [group.NAME]).
    fn raw_group(&mut self, t: &DeTable<'_>, prefix: &str) -> RawGroup {
        let mut g = RawGroup::default();
        for (k, v) in t.iter() {
            let name = k.get_ref().as_ref();
            let key = join(prefix, name);
            match name {
                "queues" => {
                    g.queues_written = true;
                    if let Some(list) = self.string_list(v, &key) {
                        if list.is_empty() {
                            self.error(&v.span(), &key, "must list at least one queue");
                            continue;
                        }
                        let mut good = true;
                        let mut seen: HashSet<&str> = HashSet::new();
                        for q in &list {
                            if q.v.trim().is_empty() {
                                self.error(&q.span, &q.key, "a queue name must not be empty");
                                good = false;
                            } else if q.v.contains(',') || q.v.chars().any(char::is_whitespace) {
                                self.error(
                                    &q.span,
                                    &q.key,
                                    format!(
                                        "queue name `{}` must not contain `,` or whitespace",
                                        q.v
                                    ),
                                );
                                good = false;
                            } else if !seen.insert(&q.v) {
                                self.warning(
                                    &q.span,
                                    &q.key,
                                    format!("queue `{}` is listed twice", q.v),
                                );
                            }
                        }
                        if good {
                            let mut kept: HashSet<String> = HashSet::new();
                            let uniq: Vec<At<String>> = list
                                .into_iter()
                                .filter(|q| kept.insert(q.v.clone()))
                                .collect();
                            g.queues = Some(self.at(uniq, v, &key));
                        }
                    }
                }
                "concurrency" => {
                    g.concurrency = self
                        .u32_in(v, &key, 1, MAX_CONCURRENCY)
                        .map(|n| self.at(n, v, &key))
                }
                "instances" => {
                    g.instances = self
                        .u32_in(v, &key, 1, MAX_INSTANCES)
                        .map(|n| self.at(n, v, &key))
                }
                "stop_timeout" => {
                    g.stop_timeout = self.plain_duration(v, &key).map(|d| self.at(d, v, &key))
                }
                "restart_delay" => {
                    g.restart_delay = self.plain_duration(v, &key).map(|d| self.at(d, v, &key))
                }
                "restart_delay_max" => {
                    g.restart_delay_max = self.plain_duration(v, &key).map(|d| self.at(d, v, &key))
                }
                "stable_after" => {
                    g.stable_after = self.plain_duration(v, &key).map(|d| self.at(d, v, &key))
                }
                "heartbeat_timeout" => {
                    g.heartbeat_timeout = self.duration(v, &key, true).map(|d| self.at(d, v, &key))
                }
                "stall_timeout" => {
                    g.stall_timeout = self.duration(v, &key, true).map(|d| self.at(d, v, &key))
                }
                "extra_args" => {
                    if let Some(args) = self.string_list(v, &key) {
                        self.check_worker_args(&args);
                        g.extra_args =
                            Some(self.at(args.into_iter().map(|a| a.v).collect(), v, &key));
                    }
                }
                "env" => {
                    let Some(et) = self.table(v, &key) else {
                        continue;
                    };
                    let mut env = BTreeMap::new();
                    if et.len() > MAX_LIST {
                        self.error(
                            &v.span(),
                            &key,
                            format!("has {} variables; at most {MAX_LIST} are allowed", et.len()),
                        );
                        continue;
                    }
                    for (ek, ev) in et.iter() {
                        let var = ek.get_ref().to_string();
                        let vkey = join(&key, &var.escape_debug().to_string());
                        if !is_env_name(&var) {
                            self.error(&ek.span(), &vkey, format!("invalid variable name `{}` (use letters, digits and `_`, not starting with a digit)", var.escape_debug()));
                            continue;
                        }
                        if RESERVED_ENV.contains(&var.as_str()) {
                            self.error(
                                &ek.span(),
                                &vkey,
                                format!("`{var}` is set by clearify-workerd for each worker"),
                            );
                            continue;
                        }
                        if let Some(s) = self.string_allowing(ev, &vkey, ENV_VALUE_CONTROLS) {
                            env.insert(var, s);
                        }
                    }
                    g.env = Some(self.at(env, v, &key));
                }
                "memory_max" => {
                    g.memory_max = self.size(v, &key, false).map(|s| self.at(s, v, &key))
                }
                "memory_high" => {
                    g.memory_high = self.size(v, &key, false).map(|s| self.at(s, v, &key))
                }
                "memory_swap_max" => {
                    g.memory_swap_max = self.size(v, &key, true).map(|s| self.at(s, v, &key))
                }
                "cpu_max" => {
                    let parsed = match v.get_ref() {
                        DeValue::String(s) if s.trim().eq_ignore_ascii_case("max") => Some(None),
                        DeValue::Float(f) => match f.as_str().parse::<f64>() {
                            Ok(x) if x.is_finite() => Some(Some(x)),
                            _ => {
                                self.error(&v.span(), &key, format!("invalid number {f}"));
                                None
                            }
                        },
                        DeValue::Integer(_) => self
                            .int_in(v, &key, i64::MIN, i64::MAX)
                            .map(|n| Some(n as f64)),
                        _ => {
                            self.wrong_type(v, &key, "a number of CPUs, e.g. 1.5 (or \"max\")");
                            None
                        }
                    };
                    match parsed {
                        Some(Some(x)) if x < 0.01 => {
                            self.error(
                                &v.span(),
                                &key,
                                format!("must be at least 0.01 CPUs, found {x}"),
                            );
                        }
                        Some(Some(x)) if x > MAX_CPUS => {
                            self.error(
                                &v.span(),
                                &key,
                                format!("must be at most {MAX_CPUS} CPUs, found {x}"),
                            );
                        }
                        Some(p) => g.cpu_max = Some(self.at(p, v, &key)),
                        None => {}
                    }
                }
                "cpu_weight" => {
                    g.cpu_weight = self.u32_in(v, &key, 1, 10_000).map(|n| self.at(n, v, &key))
                }
                "io_weight" => {
                    g.io_weight = self.u32_in(v, &key, 1, 10_000).map(|n| self.at(n, v, &key))
                }
                "pids_max" => {
                    g.pids_max = match v.get_ref() {
                        DeValue::String(s) if s.trim().eq_ignore_ascii_case("max") => {
                            Some(self.at(None, v, &key))
                        }
                        DeValue::Integer(_) => self
                            .int_in(v, &key, 1, MAX_PIDS as i64)
                            .map(|n| self.at(Some(n.unsigned_abs()), v, &key)),
                        _ => {
                            self.wrong_type(v, &key, "an integer (or \"max\")");
                            None
                        }
                    }
                }
                _ => self.unknown_key(&k.span(), prefix, name, GROUP_KEYS),
            }
        }
        g
    }

    /// Merge each group over [defaults] and the built-in defaults, and check
    /// what spans groups (missing queues, shared queues, id clashes).
    fn groups(
        &mut self,
        defaults: &RawGroup,
        raws: &[(At<String>, Range<usize>, RawGroup)],
    ) -> Vec<GroupConfig> {
        fn pick<T: Clone>(g: &Option<At<T>>, d: &Option<At<T>>) -> Option<At<T>> {
            g.clone().or_else(|| d.clone())
        }
        let builtin = Timing::default();
        let mut out = Vec::new();
        let mut total_instances: u64 = 0;
        let mut queue_owner: HashMap<String, (String, usize)> = HashMap::new();
        for (name, table_span, g) in raws {
            let Some(queues) = pick(&g.queues, &defaults.queues) else {
                // Only report a missing key when it was absent, not invalid.
                if !g.queues_written && !defaults.queues_written {
                    self.error(
                        table_span,
                        &name.key,
                        "missing required key `queues` (a non-empty list of queue names)",
                    );
                }
                continue;
            };
            for q in &queues.v {
                if let Some((other, line)) = queue_owner.get(&q.v) {
                    if other != &name.v {
                        self.warning(
                            &q.span,
                            &q.key,
                            format!(
                                "queue `{}` is also consumed by group `{other}` (line {line})",
                                q.v
                            ),
                        );
                    }
                } else {
                    let (line, _) = self.src.position(q.span.start);
                    queue_owner.insert(q.v.clone(), (name.v.clone(), line));
                }
            }
            let val = |o: Option<At<Duration>>, dflt: Duration| o.map_or(dflt, |a| a.v);
            let restart_delay = pick(&g.restart_delay, &defaults.restart_delay);
            let restart_delay_max = pick(&g.restart_delay_max, &defaults.restart_delay_max);
            let rd = val(restart_delay.clone(), builtin.restart_delay);
            let rdm = val(restart_delay_max.clone(), builtin.restart_delay_max);
            if rdm < rd {
                let at = restart_delay_max.or(restart_delay).unwrap_or(At {
                    v: Duration::ZERO,
                    span: table_span.clone(),
                    key: name.key.clone(),
                });
                self.error(
                    &at.span,
                    &at.key,
                    format!(
                        "group `{}`: restart_delay_max ({}) is shorter than restart_delay ({})",
                        name.v,
                        humantime::format_duration(rdm),
                        humantime::format_duration(rd)
                    ),
                );
            }
            let memory_max = pick(&g.memory_max, &defaults.memory_max).and_then(|a| a.v);
            let memory_high = pick(&g.memory_high, &defaults.memory_high);
            if let (
                Some(max),
                Some(At {
                    v: Some(high),
                    span,
                    key,
                }),
            ) = (memory_max, &memory_high)
                && *high > max
            {
                self.warning(
                    span,
                    key,
                    format!(
                        "group `{}`: memory_high is above memory_max, so it has no effect",
                        name.v
                    ),
                );
            }
            let instances = pick(&g.instances, &defaults.instances).map_or(1, |a| a.v);
            let before = total_instances;
            total_instances = total_instances.saturating_add(u64::from(instances));
            if before <= MAX_TOTAL_INSTANCES && total_instances > MAX_TOTAL_INSTANCES {
                let (span, key) = match &g.instances {
                    Some(a) => (a.span.clone(), a.key.clone()),
                    None => (name.span.clone(), name.key.clone()),
                };
                self.error(
                    &span,
                    &key,
                    format!(
                        "group `{}` brings the number of worker processes to {total_instances}; at most {MAX_TOTAL_INSTANCES} instances in total are allowed",
                        name.v
                    ),
                );
            }
            let mut env = defaults
                .env
                .as_ref()
                .map(|a| a.v.clone())
                .unwrap_or_default();
            if let Some(ge) = &g.env {
                env.extend(ge.v.clone());
            }
            out.push(GroupConfig {
                name: name.v.clone(),
                queues: queues.v.into_iter().map(|q| q.v).collect(),
                concurrency: pick(&g.concurrency, &defaults.concurrency).map_or(1, |a| a.v),
                instances,
                timing: Timing {
                    stop_timeout: val(
                        pick(&g.stop_timeout, &defaults.stop_timeout),
                        builtin.stop_timeout,
                    ),
                    restart_delay: rd,
                    restart_delay_max: rdm,
                    stable_after: val(
                        pick(&g.stable_after, &defaults.stable_after),
                        builtin.stable_after,
                    ),
                    heartbeat_timeout: pick(&g.heartbeat_timeout, &defaults.heartbeat_timeout)
                        .map_or(builtin.heartbeat_timeout, |a| a.v),
                    stall_timeout: pick(&g.stall_timeout, &defaults.stall_timeout)
                        .map_or(builtin.stall_timeout, |a| a.v),
                },
                limits: Limits {
                    memory_max,
                    memory_high: memory_high.and_then(|a| a.v),
                    memory_swap_max: pick(&g.memory_swap_max, &defaults.memory_swap_max)
                        .and_then(|a| a.v),
                    cpu_max: pick(&g.cpu_max, &defaults.cpu_max).and_then(|a| a.v),
                    cpu_weight: pick(&g.cpu_weight, &defaults.cpu_weight).map(|a| a.v),
                    pids_max: pick(&g.pids_max, &defaults.pids_max).and_then(|a| a.v),
                    io_weight: pick(&g.io_weight, &defaults.io_weight).map(|a| a.v),
                },
                extra_args: pick(&g.extra_args, &defaults.extra_args)
                    .map(|a| a.v)
                    .unwrap_or_default(),
                env,
            });
        }
        // A group name that is also another group's instance id would make
        // control targets ambiguous ("text-1": group or instance?). An id is
        // `<group>-<i>` with a canonical decimal `i`, so only the split at
        // the last `-` can match: one lookup per group.
        let instances: HashMap<&str, u32> =
            out.iter().map(|g| (g.name.as_str(), g.instances)).collect();
        for (name, _, _) in raws {
            if let Some((group, n)) = instance_id_clash(&name.v, |g| instances.get(g).copied()) {
                self.error(
                    &name.span,
                    &name.key,
                    format!("group name `{}` is also the id of instance {n} of group `{group}`; rename one of them", name.v),
                );
            }
        }
        out
    }
}

/// When `name` is the id of an instance of another group (`<group>-<i>`,
/// `i` in `1..=instances`, written without leading zeros): that group and
/// `i`. An id has a single split point, the last `-`, so `instances_of` is
/// asked at most once: the check is linear in the number of groups.
fn instance_id_clash(
    name: &str,
    mut instances_of: impl FnMut(&str) -> Option<u32>,
) -> Option<(&str, u32)> {
    let (group, i) = name.rsplit_once('-')?;
    let n = i.parse::<u32>().ok().filter(|n| n.to_string() == i)?;
    let count = instances_of(group)?;
    (n >= 1 && n <= count).then_some((group, n))
}

/// What [`Checker::celery`] hands to the broker check (url_env lookup).
struct CeleryParts {
    config: Option<CeleryConfig>,
    env_file_vars: BTreeMap<String, String>,
    env_file_path: Option<PathBuf>,
}

/// The line each variable of an env file was (last) set on.
fn env_line_numbers(text: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if let Ok(Some((k, _))) = parse_env_line(line) {
            out.insert(k, n + 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use tempfile::TempDir;

    /// A sandbox: a fake `celery` on PATH, a machine-id file, hostname "pi".
    struct Fx {
        dir: TempDir,
        env: Environment,
    }

    impl Fx {
        fn new() -> Fx {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("bin");
            fs::create_dir(&bin).unwrap();
            write_exe(&bin.join("celery"));
            let mid = dir.path().join("machine-id");
            fs::write(&mid, "0123ABcdef0123456789abcdef012345\n").unwrap();
            let mut vars = HashMap::new();
            vars.insert("PATH".to_string(), bin.display().to_string());
            let env = Environment {
                hostname: Some("pi".into()),
                machine_id_path: mid,
                vars,
            };
            Fx { dir, env }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("workers.toml")
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(name);
            fs::write(&p, text).unwrap();
            p
        }

        fn load(&self, text: &str) -> Result<Loaded, ConfigError> {
            load_str(text, &self.path(), &self.env)
        }

        fn ok(&self, text: &str) -> Loaded {
            match self.load(text) {
                Ok(l) => l,
                Err(e) => panic!("expected a valid config, got:\n{e}"),
            }
        }

        fn errors(&self, text: &str) -> Vec<Diagnostic> {
            match self.load(text) {
                Ok(_) => panic!("expected errors for:\n{text}"),
                Err(e) => e
                    .diagnostics()
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .cloned()
                    .collect(),
            }
        }
    }

    fn write_exe(p: &Path) {
        fs::write(p, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    const BASE: &str = "[broker]\nurl = \"redis://:secret@127.0.0.1:6379/0\"\n[celery]\napp = \"demo.celery_app\"\n";

    fn with_base(rest: &str) -> String {
        format!("{BASE}{rest}")
    }

    /// The only error whose key is `key`, asserting its position.
    fn assert_error(diags: &[Diagnostic], key: &str, line: usize, column: usize, needle: &str) {
        let found: Vec<_> = diags.iter().filter(|d| d.key == key).collect();
        assert_eq!(
            found.len(),
            1,
            "expected one diagnostic for {key}, got {diags:#?}"
        );
        let d = found[0];
        assert_eq!((d.line, d.column), (line, column), "position of {d}");
        assert!(d.message.contains(needle), "`{needle}` not in: {d}");
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let fx = Fx::new();
        let l = fx.ok(&with_base("[group.text]\nqueues = [\"text\"]\n"));
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let c = l.config;
        assert_eq!(c.path, fx.path());
        assert_eq!(c.daemon.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.daemon.device_id, "pi-0123ab");
        assert_eq!(c.daemon.admin_group, "clearify-admin");
        assert!(!c.daemon.require_limits);
        let b = c.broker.unwrap();
        assert_eq!(b.url, "redis://:secret@127.0.0.1:6379/0");
        assert_eq!(b.url_env, None);
        assert_eq!(b.wait_timeout, None);
        assert_eq!(b.on_timeout, OnTimeout::Wait);
        assert_eq!(b.check_interval, Duration::from_secs(10));
        assert_eq!(b.priority_steps, vec![0, 3, 6, 9]);
        assert_eq!(b.key_prefix, "");
        assert_eq!(c.celery.app.as_deref(), Some("demo.celery_app"));
        assert_eq!(c.celery.command, fx.dir.path().join("bin/celery"));
        assert_eq!(c.celery.workdir, PathBuf::from("/"));
        assert_eq!(c.celery.env_file, None);
        assert_eq!(c.celery.user, None);
        assert_eq!(c.celery.loglevel, "info");
        assert!(c.celery.extra_args.is_empty());
        assert_eq!(c.celery.worker_path, fx.env.vars["PATH"]);
        let g = &c.groups[0];
        assert_eq!(g.name, "text");
        assert_eq!(g.queues, vec!["text"]);
        assert_eq!((g.concurrency, g.instances), (1, 1));
        assert_eq!(g.timing, Timing::default());
        assert_eq!(g.timing.stop_timeout, Duration::from_secs(60));
        assert_eq!(g.timing.restart_delay, Duration::from_millis(100));
        assert_eq!(g.timing.restart_delay_max, Duration::from_secs(60));
        assert_eq!(g.timing.stable_after, Duration::from_secs(30));
        assert_eq!(g.timing.heartbeat_timeout, Some(Duration::from_secs(60)));
        assert_eq!(g.timing.stall_timeout, Some(Duration::from_secs(300)));
        assert!(g.limits.is_empty());
        assert!(g.extra_args.is_empty() && g.env.is_empty());
    }

    #[test]
    fn groups_inherit_defaults_and_keep_file_order() {
        let fx = Fx::new();
        let c = fx
            .ok(&with_base(
                r#"[defaults]
concurrency = 3
instances = 2
stop_timeout = "2m"
restart_delay = "1s"
heartbeat_timeout = 0
stall_timeout = "0s"
extra_args = ["--without-gossip"]
env = { A = "1", B = "1" }
memory_max = "512M"
cpu_max = 1.5

[group.zeta]
queues = ["z"]
concurrency = 5
stall_timeout = "10m"
extra_args = ["--max-tasks-per-child=100"]
env = { B = "2", C = "3" }
memory_max = "max"

[group.alpha]
queues = ["a", "b"]
"#,
            ))
            .config;
        let names: Vec<_> = c.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"], "file order, not alphabetical");
        let (z, a) = (&c.groups[0], &c.groups[1]);
        assert_eq!((z.concurrency, z.instances), (5, 2));
        assert_eq!((a.concurrency, a.instances), (3, 2));
        for g in [z, a] {
            assert_eq!(g.timing.stop_timeout, Duration::from_secs(120));
            assert_eq!(g.timing.restart_delay, Duration::from_secs(1));
            assert_eq!(g.timing.heartbeat_timeout, None, "0 turns it off");
            assert_eq!(g.limits.cpu_max, Some(1.5));
        }
        assert_eq!(z.timing.stall_timeout, Some(Duration::from_secs(600)));
        assert_eq!(a.timing.stall_timeout, None);
        assert_eq!(
            z.extra_args,
            ["--max-tasks-per-child=100"],
            "replaced, not appended"
        );
        assert_eq!(a.extra_args, ["--without-gossip"]);
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            z.env,
            env(&[("A", "1"), ("B", "2"), ("C", "3")]),
            "merged key by key"
        );
        assert_eq!(a.env, env(&[("A", "1"), ("B", "1")]));
        assert_eq!(z.limits.memory_max, None, "\"max\" lifts the default");
        assert_eq!(a.limits.memory_max, Some(512 << 20));
        assert_eq!(c.group("alpha").unwrap().queues, ["a", "b"]);
    }

    #[test]
    fn all_sections_and_limits_parse() {
        let fx = Fx::new();
        let c = fx
            .ok(r#"[daemon]
socket = "ctl.sock"
device_id = "pi-kitchen"
admin_group = "ops"
require_limits = true

[broker]
url = "rediss://user:pw@[::1]:6380/2"
wait_timeout = "5m"
on_timeout = "fail"
check_interval = "2s"
priority_steps = [9, 0, 5, 5]
key_prefix = "clearify:"

[celery]
app = "app.core.celery_app"
command = "bin/celery"
workdir = "."
loglevel = "WARNING"
extra_args = ["-O", "fair"]

[group.big]
queues = ["q"]
memory_max = "1.5G"
memory_high = "1G"
memory_swap_max = 0
cpu_max = 2
cpu_weight = 200
pids_max = 64
io_weight = 10000
"#)
            .config;
        assert_eq!(
            c.daemon.socket,
            fx.dir.path().join("ctl.sock"),
            "relative to the config's dir"
        );
        assert_eq!(c.daemon.device_id, "pi-kitchen");
        assert_eq!(c.daemon.admin_group, "ops");
        assert!(c.daemon.require_limits);
        let b = c.broker.unwrap();
        assert_eq!(b.wait_timeout, Some(Duration::from_secs(300)));
        assert_eq!(b.on_timeout, OnTimeout::Fail);
        assert_eq!(b.check_interval, Duration::from_secs(2));
        assert_eq!(b.priority_steps, vec![0, 5, 9]);
        assert_eq!(b.key_prefix, "clearify:");
        assert_eq!(c.celery.command, fx.dir.path().join("bin/celery"));
        assert_eq!(c.celery.workdir, fx.dir.path());
        assert_eq!(c.celery.loglevel, "warning");
        assert_eq!(c.celery.extra_args, ["-O", "fair"]);
        let l = &c.groups[0].limits;
        assert_eq!(l.memory_max, Some(1536 << 20));
        assert_eq!(l.memory_high, Some(1 << 30));
        assert_eq!(l.memory_swap_max, Some(0));
        assert_eq!(l.cpu_max, Some(2.0));
        assert_eq!(
            (l.cpu_weight, l.pids_max, l.io_weight),
            (Some(200), Some(64), Some(10000))
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_position_and_hint() {
        let fx = Fx::new();
        let diags = fx.errors(&with_base(
            "[group.text]\nqueues = [\"t\"]\nconcurency = 2\n[daemon]\n  bogus = 1\n[extra]\n",
        ));
        // BASE is 4 lines, so [group.text] is line 5.
        assert_error(
            &diags,
            "group.text.concurency",
            7,
            1,
            "did you mean `concurrency`?",
        );
        assert_error(&diags, "daemon.bogus", 9, 3, "unknown key `bogus`");
        assert_error(&diags, "extra", 10, 2, "unknown key `extra`");
        assert_eq!(diags.len(), 3, "{diags:#?}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let fx = Fx::new();
        let diags = fx.errors(&with_base(
            "[group.text]\nqueues = \"t\"\nconcurrency = \"2\"\nenv = { A = 1 }\n",
        ));
        assert_error(
            &diags,
            "group.text.queues",
            6,
            10,
            "expected an array of strings, found a string",
        );
        assert_error(
            &diags,
            "group.text.concurrency",
            7,
            15,
            "expected an integer, found a string",
        );
        assert_error(
            &diags,
            "group.text.env.A",
            8,
            13,
            "expected a string, found an integer",
        );
        assert_eq!(
            diags.len(),
            3,
            "no extra 'missing queues' error: {diags:#?}"
        );
    }

    #[test]
    fn queues_must_be_a_nonempty_list_of_names() {
        let fx = Fx::new();
        let diags = fx.errors(&with_base(
            "[group.a]\nqueues = []\n[group.b]\nqueues = [\"ok\", \"\"]\n[group.c]\ninstances = 1\n[group.d]\nqueues = [\"x,y\"]\n",
        ));
        assert_error(&diags, "group.a.queues", 6, 10, "at least one queue");
        assert_error(&diags, "group.b.queues[1]", 8, 17, "must not be empty");
        assert_error(&diags, "group.c", 9, 1, "missing required key `queues`");
        assert_error(&diags, "group.d.queues[0]", 12, 11, "must not contain `,`");
    }

    #[test]
    fn bad_group_names_and_zero_counts() {
        let fx = Fx::new();
        let diags = fx.errors(&with_base(
            "[group.Text]\nqueues = [\"t\"]\ninstances = 0\n[group.\"a b\"]\nqueues = [\"u\"]\nconcurrency = 0\ncpu_weight = 0\nio_weight = 10001\n",
        ));
        assert_error(&diags, "group.Text", 5, 8, "invalid group name `Text`");
        assert_error(
            &diags,
            "group.Text.instances",
            7,
            13,
            "must be from 1 to 1024, found 0",
        );
        assert_error(&diags, "group.a b", 8, 8, "invalid group name");
        assert_error(&diags, "group.a b.concurrency", 10, 15, "from 1 to 1024");
        assert_error(&diags, "group.a b.cpu_weight", 11, 14, "from 1 to 10000");
        assert_error(
            &diags,
            "group.a b.io_weight",
            12,
            13,
            "from 1 to 10000, found 10001",
        );
    }

    #[test]
    fn group_name_may_not_be_another_groups_instance_id() {
        let fx = Fx::new();
        let diags = fx.errors(&with_base(
            "[group.text]\nqueues = [\"t\"]\ninstances = 2\n[group.text-2]\nqueues = [\"u\"]\n",
        ));
        assert_error(&diags, "group.text-2", 8, 8, "instance 2 of group `text`");
        // text-3 does not exist, so a group of that name is fine.
        fx.ok(&with_base(
            "[group.text]\nqueues = [\"t\"]\ninstances = 2\n[group.text-3]\nqueues = [\"u\"]\n",
        ));
    }

    #[test]
    fn files_named_by_the_config_are_checked() {
        let fx = Fx::new();
        let not_exec = fx.file("not-exec", "#!/bin/sh\n");
        fs::set_permissions(&not_exec, fs::Permissions::from_mode(0o644)).unwrap();
        let plain = fx.file("plain", "x");
        let text = format!(
            "[broker]\nurl = \"redis://127.0.0.1\"\n[celery]\napp = \"x\"\ncommand = \"{}\"\nenv_file = \"/nonexistent/worker.env\"\nworkdir = \"{}\"\n[group.g]\nqueues = [\"q\"]\n",
            not_exec.display(),
            plain.display()
        );
        let diags = fx.errors(&text);
        assert_error(&diags, "celery.command", 5, 11, "is not executable");
        assert_error(
            &diags,
            "celery.env_file",
            6,
            12,
            "cannot read env_file /nonexistent/worker.env",
        );
        assert_error(&diags, "celery.workdir", 7, 11, "is not a directory");

        let diags = fx.errors(
            "[broker]\nurl = \"redis://127.0.0.1\"\n[celery]\napp = \"x\"\ncommand = \"/nonexistent/celery\"\nworkdir = \"/nonexistent\"\n[group.g]\nqueues = [\"q\"]\n",
        );
        assert_error(
            &diags,
            "celery.command",
            5,
            11,
            "/nonexistent/celery: No such file",
        );
        assert_error(&diags, "celery.workdir", 6, 11, "No such file");

        let diags = fx.errors("[broker]\nurl = \"redis://127.0.0.1\"\n[celery]\napp = \"x\"\ncommand = \"no-such-celery\"\n[group.g]\nqueues = [\"q\"]\n");
        assert_error(
            &diags,
            "celery.command",
            5,
            11,
            "`no-such-celery` is not an executable in PATH",
        );

        // The default command "celery" must be found in PATH when groups exist.
        let mut env = fx.env.clone();
        env.vars.insert("PATH".into(), "/nonexistent".into());
        let err = load_str(
            &with_base("[group.g]\nqueues = [\"q\"]\n"),
            &fx.path(),
            &env,
        )
        .unwrap_err();
        assert!(err.to_string().contains("celery.command: `celery` (the default celery.command) is not an executable in PATH (/nonexistent)"), "{err}");
    }

    #[test]
    fn malformed_durations_and_sizes() {
        let fx = Fx::new();
        let diags = fx.errors(&with_base(
            "[group.g]\nqueues = [\"q\"]\nstop_timeout = \"ten seconds\"\nrestart_delay = 5\nmemory_max = \"12X\"\nmemory_high = \"lots\"\ncpu_max = 0.0\n",
        ));
        assert_error(
            &diags,
            "group.g.stop_timeout",
            7,
            16,
            "invalid duration `ten seconds`",
        );
        assert_error(&diags, "group.g.restart_delay", 8, 17, "e.g. \"5s\"");
        assert_error(&diags, "group.g.memory_max", 9, 14, "unknown unit `X`");
        assert_error(&diags, "group.g.memory_high", 10, 15, "invalid size `lots`");
        assert_error(&diags, "group.g.cpu_max", 11, 11, "at least 0.01");
    }

    #[test]
    fn every_count_duration_and_size_is_bounded() {
        let fx = Fx::new();
        let diags = fx.errors(&with_base(concat!(
            "[group.g]\nqueues = [\"q\"]\n",
            "instances = 4294967295\n",
            "concurrency = 1025\n",
            "stop_timeout = \"300000000000y\"\n",
            "restart_delay = \"400d\"\n",
            "restart_delay_max = \"300000000000y\"\n",
            "stable_after = \"366d\"\n",
            "heartbeat_timeout = \"2y\"\n",
            "stall_timeout = \"2y\"\n",
            "memory_max = \"2048T\"\n",
            "memory_high = 1125899906842625\n",
            "memory_swap_max = \"1025T\"\n",
            "pids_max = 4194305\n",
            "cpu_max = 1025\n",
            "[group.h]\nqueues = [\"r\"]\ncpu_max = 1024.5\ninstances = 1025\n",
        )));
        let year = "must be at most 1y";
        assert_error(
            &diags,
            "group.g.instances",
            7,
            13,
            "from 1 to 1024, found 4294967295",
        );
        assert_error(
            &diags,
            "group.g.concurrency",
            8,
            15,
            "from 1 to 1024, found 1025",
        );
        assert_error(&diags, "group.g.stop_timeout", 9, 16, year);
        assert_error(&diags, "group.g.restart_delay", 10, 17, year);
        assert_error(&diags, "group.g.restart_delay_max", 11, 21, year);
        assert_error(&diags, "group.g.stable_after", 12, 16, year);
        assert_error(&diags, "group.g.heartbeat_timeout", 13, 21, year);
        assert_error(&diags, "group.g.stall_timeout", 14, 17, year);
        assert_error(&diags, "group.g.memory_max", 15, 14, "at most 1024T");
        assert_error(&diags, "group.g.memory_high", 16, 15, "at most 1024T");
        assert_error(&diags, "group.g.memory_swap_max", 17, 19, "at most 1024T");
        assert_error(&diags, "group.g.pids_max", 18, 12, "from 1 to 4194304");
        assert_error(&diags, "group.g.cpu_max", 19, 11, "at most 1024 CPUs");
        assert_error(&diags, "group.h.cpu_max", 22, 11, "at most 1024 CPUs");
        assert_error(&diags, "group.h.instances", 23, 13, "from 1 to 1024");
        assert_eq!(diags.len(), 15, "{diags:#?}");

        let diags = fx.errors(&with_base("[group.g]\nqueues = [\"q\"]\n").replace(
            "[broker]\n",
            "[broker]\nwait_timeout = \"300000000000y\"\ncheck_interval = \"2y\"\n",
        ));
        assert_error(&diags, "broker.wait_timeout", 2, 16, "must be at most 1y");
        assert_error(&diags, "broker.check_interval", 3, 18, "must be at most 1y");

        // The bounds themselves are fine.
        let l = fx.ok(&with_base(concat!(
            "[group.g]\nqueues = [\"q\"]\n",
            "instances = 1024\nconcurrency = 1024\n",
            "stop_timeout = \"1y\"\nrestart_delay = \"1y\"\nrestart_delay_max = \"1y\"\n",
            "stable_after = \"1y\"\nheartbeat_timeout = \"1y\"\nstall_timeout = \"1y\"\n",
            "memory_max = \"1024T\"\nmemory_high = 1125899906842624\nmemory_swap_max = \"1024T\"\n",
            "pids_max = 4194304\ncpu_max = 1024\n",
        )));
        let g = &l.config.groups[0];
        assert_eq!((g.instances, g.concurrency), (1024, 1024));
        assert_eq!(g.timing.stop_timeout, MAX_DURATION);
        assert_eq!(g.limits.memory_max, Some(MAX_SIZE));
    }

    #[test]
    fn the_instance_id_clash_check_asks_once_per_group() {
        let groups: HashMap<String, u32> = (0..100_000)
            .map(|i| (format!("g{i}"), 3))
            .chain([("a-b".to_string(), 2)])
            .collect();
        let mut asked = 0usize;
        let mut clashes = Vec::new();
        let names = groups
            .keys()
            .map(String::as_str)
            .chain(["g7-3", "g7-4", "g7-03", "g7-0", "a-b-2", "a-b-3", "x-1"]);
        let mut count = 0usize;
        for name in names {
            count += 1;
            let lookup = |g: &str| {
                asked += 1;
                groups.get(g).copied()
            };
            if let Some(c) = instance_id_clash(name, lookup) {
                clashes.push((name.to_string(), c.0.to_string(), c.1));
            }
        }
        clashes.sort();
        assert_eq!(
            clashes,
            [
                ("a-b-2".to_string(), "a-b".to_string(), 2),
                ("g7-3".to_string(), "g7".to_string(), 3),
            ]
        );
        assert!(asked <= count, "{asked} lookups for {count} names");
    }

    #[test]
    fn a_full_config_finds_clashes_and_shared_queues_at_its_far_end() {
        let fx = Fx::new();
        let mut text = with_base("[group.g]\nqueues = [\"q\"]\ninstances = 2\n");
        for i in 0..MAX_GROUPS - 2 {
            text.push_str(&format!("[group.w{i}]\nqueues = [\"q{i}\"]\n"));
        }
        text.push_str("[group.g-2]\nqueues = [\"q0\"]\n");
        let err = fx.load(&text).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("group name `g-2` is also the id of instance 2 of group `g`"),
            "{shown}"
        );
        assert!(
            shown.contains("queue `q0` is also consumed by group `w0`"),
            "{shown}"
        );
        assert_eq!(err.error_count(), 1, "{shown}");
    }

    #[test]
    fn huge_config_and_env_files_are_refused_unread() {
        let fx = Fx::new();
        let big = format!("# {}\n", "x".repeat(MAX_CONFIG_FILE as usize));
        let err = load(&fx.file("workers.toml", &big)).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(":1:1: error: the file is larger than 1 MiB; a config is far smaller"),
            "{err}"
        );
        fx.file(
            "worker.env",
            &format!("A={}\n", "x".repeat(MAX_ENV_FILE as usize)),
        );
        let diags = fx.errors(
            &with_base("[group.g]\nqueues = [\"q\"]\n")
                .replace("[celery]\n", "[celery]\nenv_file = \"worker.env\"\n"),
        );
        assert_error(
            &diags,
            "celery.env_file",
            4,
            12,
            "at most 1048576 are allowed",
        );
    }

    #[test]
    fn total_instances_and_groups_are_capped() {
        let fx = Fx::new();
        let mut text = with_base("");
        for i in 0..5 {
            text.push_str(&format!(
                "[group.g{i}]\nqueues = [\"q{i}\"]\ninstances = 1000\n"
            ));
        }
        let diags = fx.errors(&text);
        // g4 takes the total to 5000.
        assert_error(
            &diags,
            "group.g4.instances",
            19,
            13,
            "4096 instances in total",
        );
        assert_eq!(diags.len(), 1, "{diags:#?}");

        let mut text = with_base("");
        for i in 0..=MAX_GROUPS {
            text.push_str(&format!("[group.g{i}]\nqueues = [\"q{i}\"]\n"));
        }
        let diags = fx.errors(&text);
        let key = format!("group.g{MAX_GROUPS}");
        assert_error(
            &diags,
            &key,
            5 + 2 * MAX_GROUPS,
            8,
            "1025 groups, at most 1024 are allowed",
        );
        assert_eq!(diags.len(), 1, "{diags:#?}");
    }

    #[test]
    fn control_characters_are_rejected_without_quoting_the_value() {
        let fx = Fx::new();
        let diags = fx.errors(concat!(
            "[daemon]\nadmin_group = \"whl\\u0007\"\ndevice_id = \"dev\"\n",
            "[broker]\nurl = \"redis://h/0\\u0000\"\nkey_prefix = \"p\\u001b[2J\"\n",
            "[celery]\napp = \"demo\\u0000x\"\nextra_args = [\"--x=\\u001b]0;pwned\\u0007\"]\n",
            "command = [\"python3\", \"-m\\u0000\"]\n",
            "[group.g]\nqueues = [\"q\\u0000\", \"r\\u009b\"]\n",
            "extra_args = [\"ok\", \"--y=\\r\"]\n",
            "env = { A = \"Hunter2\\u0000Secret\", B = \"Hunter2\\rSecret\", C = \"x\\u007f\" }\n",
        ));
        let want = "control character";
        assert_error(&diags, "daemon.admin_group", 2, 15, want);
        assert_error(&diags, "broker.url", 5, 7, want);
        assert_error(&diags, "broker.key_prefix", 6, 14, want);
        assert_error(&diags, "celery.app", 8, 7, want);
        assert_error(&diags, "celery.extra_args[0]", 9, 15, want);
        assert_error(&diags, "celery.command[1]", 10, 23, want);
        assert_error(&diags, "group.g.queues[0]", 12, 11, want);
        assert_error(&diags, "group.g.queues[1]", 12, 22, want);
        assert_error(&diags, "group.g.extra_args[1]", 13, 21, want);
        assert_error(&diags, "group.g.env.A", 14, 13, want);
        assert_error(&diags, "group.g.env.B", 14, 40, want);
        assert_error(&diags, "group.g.env.C", 14, 63, want);
        let shown = diags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for secret in ["Hunter2", "Secret", "pwned", "[2J", "demo", "whl"] {
            assert!(!shown.contains(secret), "`{secret}` shown:\n{shown}");
        }
        // Tabs and newlines are fine in environment values (a PEM key).
        let l = fx.ok(&with_base(
            "[group.g]\nqueues = [\"q\"]\nenv = { PEM = \"a\\nb\\tc\" }\n",
        ));
        assert_eq!(l.config.groups[0].env["PEM"], "a\nb\tc");
    }

    #[test]
    fn group_names_are_valid_cgroup_and_node_names() {
        let fx = Fx::new();
        let long = "a".repeat(65);
        let diags = fx.errors(&with_base(&format!(
            "[group.supervisor]\nqueues = [\"a\"]\n[group.{long}]\nqueues = [\"b\"]\n[group.-x]\nqueues = [\"c\"]\n[group._y]\nqueues = [\"d\"]\n"
        )));
        assert_error(&diags, "group.supervisor", 5, 8, "reserved");
        assert_error(
            &diags,
            &format!("group.{long}"),
            7,
            8,
            "at most 64 characters",
        );
        assert_error(
            &diags,
            "group.-x",
            9,
            8,
            "must start with a letter or digit",
        );
        assert_error(
            &diags,
            "group._y",
            11,
            8,
            "must start with a letter or digit",
        );
        assert_eq!(diags.len(), 4, "{diags:#?}");
        let ok = "a".repeat(64);
        fx.ok(&with_base(&format!(
            "[group.{ok}]\nqueues = [\"a\"]\n[group.9-x_y]\nqueues = [\"b\"]\n"
        )));
        assert!(!is_valid_group_name("supervisor"));
        assert!(!is_valid_group_name(&long));
        assert!(is_valid_group_name(&ok));
    }

    /// clearifyctl reads `[daemon].socket` through config (one TOML
    /// reader) and resolves a relative one as the daemon does: against the
    /// config file's directory, not clearifyctl's working directory.
    #[test]
    fn clearifyctl_finds_the_socket_the_daemon_binds() {
        let fx = Fx::new();
        let text = "[daemon]\nsocket = \"./run/ctl.sock\"\n";
        fx.file("workers.toml", text);
        let bound = fx.ok(text).config.daemon.socket;
        assert_eq!(bound, fx.dir.path().join("run/ctl.sock"));
        assert_eq!(daemon_socket_of(&fx.path()), Some(bound));
        assert_eq!(
            daemon_socket(text),
            Some(PathBuf::from("./run/ctl.sock")),
            "as written"
        );
        // Not set, not a string, empty, or no file: none.
        for text in [
            "",
            "[daemon]\nsocket = 3\n",
            "[daemon]\nsocket = \"\"\n",
            "daemon = 1\n",
            "[other]\nsocket = \"/a\"\n",
        ] {
            assert_eq!(daemon_socket(text), None, "{text:?}");
        }
        assert_eq!(daemon_socket_of(&fx.dir.path().join("missing.toml")), None);
        // A TOML error elsewhere does not hide it.
        assert_eq!(
            daemon_socket("[daemon]\nsocket = '/run/y.sock'\n[group.text\nbroken = = =\n"),
            Some(PathBuf::from("/run/y.sock"))
        );
    }

    #[test]
    fn broker_url_check_agrees_with_the_broker() {
        // The shape is fine, but the daemon's parser refuses it: --check
        // must refuse it too. Both run broker_url (the broker through
        // BrokerUrl::parse and BrokerUrl::client).
        let url = "rediss://:pw@h:6379/0?ssl_certfile=/etc/hostname";
        assert!(broker_url::BrokerUrl::parse(url).is_err());
        let e = check_broker_url(url).unwrap_err();
        assert_eq!(e, "ssl_certfile and ssl_keyfile must be given together");
        assert!(!e.contains("pw"), "{e}");
        // A `%` before a multi-byte character is accepted by both.
        check_broker_url("redis://h:6379/0?x=%a\u{e9}").unwrap();
    }

    #[test]
    fn restart_delay_max_below_restart_delay_is_an_error() {
        let fx = Fx::new();
        let diags = fx.errors(&with_base(
            "[defaults]\nrestart_delay_max = \"1s\"\n[group.g]\nqueues = [\"q\"]\nrestart_delay = \"5s\"\n",
        ));
        assert_error(
            &diags,
            "defaults.restart_delay_max",
            6,
            21,
            "shorter than restart_delay (5s)",
        );
    }

    #[test]
    fn toml_syntax_errors_have_positions() {
        let fx = Fx::new();
        let diags = fx.errors(
            "[daemon]\nsocket = \"/x\"\n\n[group.a]\nqueues = [\"a\",\nconcurrency = = 2\n",
        );
        assert!(!diags.is_empty());
        for d in &diags {
            assert_eq!(d.key, "");
            assert!(d.message.starts_with("TOML syntax: "), "{d}");
            assert!(d.line >= 5, "{d}");
        }
        let diags = fx.errors("a = 1\na = 2\n");
        assert_eq!(diags.len(), 1);
        assert_eq!((diags[0].line, diags[0].column), (2, 1));
        assert!(diags[0].message.contains("duplicate key"), "{}", diags[0]);
    }

    #[test]
    fn every_error_is_reported_at_once_in_file_order() {
        let fx = Fx::new();
        let text = r#"[daemon]
device_id = "pi kitchen"
[broker]
url = "http://127.0.0.1"
on_timeout = "panic"
[celery]
loglevel = "loud"
[group.A]
queues = []
instances = 0
stall_timeout = "soon"
"#;
        let err = fx.load(text).unwrap_err();
        let keys: Vec<_> = err.diagnostics().iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "daemon.device_id",
                "broker.url",
                "broker.on_timeout",
                "celery.app",
                "celery.loglevel",
                "group.A",
                "group.A.queues",
                "group.A.instances",
                "group.A.stall_timeout",
            ]
        );
        assert_eq!(err.error_count(), 9);
        let shown = err.to_string();
        assert_eq!(shown.lines().count(), 9);
        let first = format!(
            "{}:2:13: error: daemon.device_id: invalid device_id `pi kitchen`",
            fx.path().display()
        );
        assert!(shown.starts_with(&first), "{shown}");
        assert!(shown.contains(":4:7: error: broker.url: invalid broker URL `http://127.0.0.1`: unsupported scheme `http`"), "{shown}");
    }

    #[test]
    fn queue_in_two_groups_is_a_warning() {
        let fx = Fx::new();
        let l = fx.ok(&with_base(
            "[group.a]\nqueues = [\"shared\", \"a\"]\n[group.b]\nqueues = [\"b\", \"shared\"]\n",
        ));
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        let w = &l.warnings[0];
        assert_eq!(w.severity, Severity::Warning);
        assert_eq!(
            (w.line, w.column, w.key.as_str()),
            (8, 16, "group.b.queues[1]")
        );
        assert!(
            w.message.contains("also consumed by group `a` (line 6)"),
            "{w}"
        );
        assert!(
            w.to_string()
                .contains(":8:16: warning: group.b.queues[1]: queue `shared`"),
            "{w}"
        );
    }

    #[test]
    fn forbidden_worker_options_are_errors_explaining_why() {
        let fx = Fx::new();
        let diags = fx.errors(
            r#"[broker]
url = "redis://127.0.0.1"
[celery]
app = "x"
extra_args = ["--detach", "-D", "-O", "fair"]
[group.g]
queues = ["q"]
extra_args = ["--pidfile=/run/x.pid", "--logfile", "/var/log/x", "-f/tmp/x", "-n", "me@host", "--concurrency=4"]
"#,
        );
        assert_error(
            &diags,
            "celery.extra_args[0]",
            5,
            15,
            "out of clearify-workerd's supervision",
        );
        assert_error(&diags, "celery.extra_args[1]", 5, 27, "`-D`");
        assert_error(&diags, "group.g.extra_args[0]", 8, 15, "stale pidfiles");
        assert_error(&diags, "group.g.extra_args[1]", 8, 39, "journald");
        assert_error(&diags, "group.g.extra_args[3]", 8, 66, "journald");
        assert_error(&diags, "group.g.extra_args[4]", 8, 78, "node name");
        assert_error(&diags, "group.g.extra_args[6]", 8, 95, "concurrency");
        assert_eq!(diags.len(), 7, "{diags:#?}");
    }

    #[test]
    fn size_parsing() {
        assert_eq!(parse_size("512M"), Ok(Some(512 << 20)));
        assert_eq!(parse_size("1G"), Ok(Some(1 << 30)));
        assert_eq!(parse_size("200M"), Ok(Some(200 << 20)));
        assert_eq!(parse_size("1.5G"), Ok(Some(3 << 29)));
        assert_eq!(parse_size("64K"), Ok(Some(64 << 10)));
        assert_eq!(parse_size("2T"), Ok(Some(2 << 40)));
        assert_eq!(parse_size("100MiB"), Ok(Some(100 << 20)));
        assert_eq!(parse_size("3 GiB"), Ok(Some(3 << 30)));
        assert_eq!(parse_size("4096"), Ok(Some(4096)));
        assert_eq!(parse_size("512m"), Ok(Some(512 << 20)));
        assert_eq!(parse_size("max"), Ok(None));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("1.2.3G").is_err());
        assert!(parse_size("12X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("-1G").is_err());
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
        // Integers in TOML are bytes; tiny values warn.
        let fx = Fx::new();
        let l = fx.ok(&with_base(
            "[group.g]\nqueues = [\"q\"]\nmemory_max = 1073741824\nmemory_high = 512\n",
        ));
        assert_eq!(l.config.groups[0].limits.memory_max, Some(1 << 30));
        assert_eq!(l.warnings.len(), 1);
        assert!(
            l.warnings[0].message.contains("did you mean \"512M\""),
            "{}",
            l.warnings[0]
        );
    }

    #[test]
    fn duration_parsing() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("soon").is_err());
        let fx = Fx::new();
        let c = fx
            .ok(&with_base("[group.g]\nqueues = [\"q\"]\nrestart_delay = \"0s\"\nheartbeat_timeout = \"0s\"\nstall_timeout = 0\n"))
            .config;
        let t = &c.groups[0].timing;
        assert_eq!(
            t.restart_delay,
            Duration::ZERO,
            "0s is a real delay, not off"
        );
        assert_eq!((t.heartbeat_timeout, t.stall_timeout), (None, None));
    }

    #[test]
    fn env_file_parsing() {
        let text = "# comment\n\nA=1\nexport B = two words  \nC='single # kept'\nD=\"dq \\\"x\\\" \\n y\"  # comment\nE=val # comment\nF=\nG=a=b\nA=override\n  H=indented\n";
        let vars = parse_env_file(text).unwrap();
        let m: BTreeMap<_, _> = vars.into_iter().collect();
        assert_eq!(m["A"], "override");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "single # kept");
        assert_eq!(m["D"], "dq \"x\" \n y");
        assert_eq!(m["E"], "val");
        assert_eq!(m["F"], "");
        assert_eq!(m["G"], "a=b");
        assert_eq!(m["H"], "indented");
        assert_eq!(m.len(), 8);

        let errors =
            parse_env_file("OK=1\nnot a line\n1BAD=x\nQ='open\nR=\"x\" trailing\n").unwrap_err();
        let pos: Vec<_> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(pos, [(2, 1), (3, 1), (4, 3), (5, 3)]);
        assert!(errors[0].message.contains("no `=`"));
        assert_eq!(
            errors[0].key.as_deref(),
            Some("not"),
            "the first word is a name"
        );
        assert!(errors[1].message.contains("invalid variable name"));
        assert_eq!(errors[1].key, None);
        assert!(errors[2].message.contains("unterminated single-quoted"));
        assert_eq!(
            errors[2].to_string(),
            "variable `Q`: unterminated single-quoted value"
        );
        assert!(
            errors[3]
                .message
                .contains("unexpected text after the closing quote")
        );
        assert_eq!(errors[3].key.as_deref(), Some("R"));
        for e in &errors {
            for shown in ["1BAD", "open", "trailing", "a line"] {
                assert!(!e.to_string().contains(shown), "{e}");
            }
        }
    }

    #[test]
    fn env_file_errors_name_the_env_file_and_line() {
        let fx = Fx::new();
        let env_file = fx.file("worker.env", "GOOD=1\nBAD LINE\n");
        let err = fx
            .load(
                &with_base("[group.g]\nqueues = [\"q\"]\n")
                    .replace("[celery]\n", "[celery]\nenv_file = \"worker.env\"\n"),
            )
            .unwrap_err();
        let d = &err.diagnostics()[0];
        assert_eq!(d.file, env_file);
        assert_eq!(
            (d.line, d.column, d.key.as_str()),
            (2, 1, "celery.env_file")
        );
        assert!(
            err.to_string().starts_with(&format!(
                "{}:2:1: error: celery.env_file: variable `BAD`: expected KEY=VALUE",
                env_file.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn broker_url_from_env_file_then_environment() {
        let fx = Fx::new();
        fx.file(
            "worker.env",
            "CELERY_BROKER_URL=\"redis://:fromfile@127.0.0.1:6379/1\"\n",
        );
        let text = |var: &str| {
            format!(
                "[broker]\nurl_env = \"{var}\"\n[celery]\napp = \"x\"\nenv_file = \"worker.env\"\n[group.g]\nqueues = [\"q\"]\n"
            )
        };
        let mut env = fx.env.clone();
        env.vars.insert(
            "CELERY_BROKER_URL".into(),
            "redis://:fromenv@127.0.0.1/0".into(),
        );
        env.vars
            .insert("OTHER_URL".into(), "redis://:other@127.0.0.1/0".into());
        env.vars
            .insert("BAD_URL".into(), "redis://:pw@127.0.0.1:notaport/0".into());
        let load = |t: &str| load_str(t, &fx.path(), &env);
        let b = load(&text("CELERY_BROKER_URL"))
            .unwrap()
            .config
            .broker
            .unwrap();
        assert_eq!(b.url, "redis://:fromfile@127.0.0.1:6379/1", "env_file wins");
        assert_eq!(b.url_env.as_deref(), Some("CELERY_BROKER_URL"));
        let b = load(&text("OTHER_URL")).unwrap().config.broker.unwrap();
        assert_eq!(b.url, "redis://:other@127.0.0.1/0");

        let err = load(&text("MISSING_URL")).unwrap_err();
        assert_error(
            err.diagnostics(),
            "broker.url_env",
            2,
            11,
            "`MISSING_URL` is not set in env_file",
        );
        let err = load(&text("BAD_URL")).unwrap_err();
        assert_error(
            err.diagnostics(),
            "broker.url_env",
            2,
            11,
            "port `notaport`",
        );
        assert!(
            !err.to_string().contains(":pw@"),
            "the password leaked: {err}"
        );

        let diags = fx.errors("[broker]\nurl = \"redis://127.0.0.1\"\nurl_env = \"X\"\n[celery]\napp = \"x\"\n[group.g]\nqueues = [\"q\"]\n");
        assert_error(&diags, "broker.url_env", 3, 11, "not both");
        let diags = fx.errors(
            "[broker]\nkey_prefix = \"p\"\n[celery]\napp = \"x\"\n[group.g]\nqueues = [\"q\"]\n",
        );
        assert_error(&diags, "broker.url", 1, 1, "missing `url`");
    }

    #[test]
    fn broker_and_app_are_required_only_with_groups() {
        let fx = Fx::new();
        let diags = fx.errors("[group.g]\nqueues = [\"q\"]\n");
        assert_error(&diags, "broker", 1, 1, "[broker] section");
        assert_error(&diags, "celery.app", 1, 1, "missing required key `app`");
        let l = fx.ok("[daemon]\ndevice_id = \"x\"\n");
        assert!(l.config.groups.is_empty() && l.config.broker.is_none());
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].message.contains("no workers will run"));
    }

    #[test]
    fn missing_required_keys_are_reported_next_to_other_errors() {
        let fx = Fx::new();
        let diags = fx.errors(
            "[broker]\nwait_timeout = \"x\"\n[celery]\nloglevel = \"loud\"\n[group.g]\nqueues = [\"q\"]\n",
        );
        assert_error(&diags, "broker.url", 1, 1, "missing `url`");
        assert_error(&diags, "broker.wait_timeout", 2, 16, "invalid duration");
        assert_error(&diags, "celery.app", 3, 1, "missing required key `app`");
        assert_error(&diags, "celery.loglevel", 4, 12, "invalid loglevel");
        assert_eq!(diags.len(), 4, "{diags:#?}");
    }

    #[test]
    fn command_may_be_a_list() {
        let fx = Fx::new();
        let text = |cmd: &str| {
            with_base("[group.g]\nqueues = [\"q\"]\n")
                .replace("[celery]\n", &format!("[celery]\ncommand = {cmd}\n"))
        };
        let c = fx.ok(&text(r#"["celery", "-m", "celery"]"#)).config;
        assert_eq!(c.celery.command, fx.dir.path().join("bin/celery"));
        assert_eq!(c.celery.command_args, ["-m", "celery"]);
        let c = fx.ok(&text(r#""celery""#)).config;
        assert!(c.celery.command_args.is_empty());
        assert_error(
            &fx.errors(&text("[]")),
            "celery.command",
            4,
            11,
            "empty list",
        );
        assert_error(
            &fx.errors(&text(r#"["nope-4711", "-m"]"#)),
            "celery.command[0]",
            4,
            12,
            "not an executable in PATH",
        );
    }

    #[test]
    fn broker_key_validation() {
        let fx = Fx::new();
        let diags = fx.errors(&with_base("[group.g]\nqueues = [\"q\"]\n").replace(
            "[celery]",
            "wait_timeout = \"never\"\ncheck_interval = \"0s\"\npriority_steps = [0, 10]\n[celery]",
        ));
        assert_error(
            &diags,
            "broker.wait_timeout",
            3,
            16,
            "invalid duration `never`",
        );
        assert_error(&diags, "broker.check_interval", 4, 18, "greater than 0");
        assert_error(
            &diags,
            "broker.priority_steps[1]",
            5,
            22,
            "from 0 to 9, found 10",
        );
        for (url, ok) in [
            ("redis://127.0.0.1", true),
            ("redis://:p@127.0.0.1:6379/0", true),
            ("rediss://u:p@host:6380/15?ssl_cert_reqs=required", true),
            ("redis://[::1]:6379", true),
            ("unix:///run/redis/redis.sock?db=2", true),
            ("redis+unix://:pw@/run/redis.sock", true),
            ("redis://", false),
            ("redis://host:99999", false),
            ("redis://host/zero", false),
            ("unix://relative.sock", false),
            ("amqp://host", false),
            ("127.0.0.1:6379", false),
        ] {
            assert_eq!(
                check_broker_url(url).is_ok(),
                ok,
                "{url}: {:?}",
                check_broker_url(url)
            );
        }
    }

    #[test]
    fn device_id_default_and_fallback() {
        let fx = Fx::new();
        let text = with_base("[group.g]\nqueues = [\"q\"]\n");
        assert_eq!(fx.ok(&text).config.daemon.device_id, "pi-0123ab");
        let mut env = fx.env.clone();
        env.machine_id_path = fx.dir.path().join("missing-machine-id");
        let l = load_str(&text, &fx.path(), &env).unwrap();
        assert_eq!(l.config.daemon.device_id, "pi");
        assert_eq!(l.warnings.len(), 1);
        assert!(
            l.warnings[0].message.contains("missing-machine-id"),
            "{}",
            l.warnings[0]
        );
        env.hostname = None;
        let err = load_str(&text, &fx.path(), &env).unwrap_err();
        assert!(
            err.to_string()
                .contains("daemon.device_id: cannot determine the hostname"),
            "{err}"
        );
        // An explicit device_id needs neither.
        let l = load_str(
            &format!("[daemon]\ndevice_id = \"pi-kitchen\"\n{text}"),
            &fx.path(),
            &env,
        )
        .unwrap();
        assert_eq!(l.config.daemon.device_id, "pi-kitchen");
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn user_must_exist_and_not_be_root() {
        let fx = Fx::new();
        let text = |u: &str| {
            with_base("[group.g]\nqueues = [\"q\"]\n")
                .replace("[celery]\n", &format!("[celery]\nuser = \"{u}\"\n"))
        };
        assert_error(
            &fx.errors(&text("root")),
            "celery.user",
            4,
            8,
            "never run as root",
        );
        assert_error(
            &fx.errors(&text("no-such-user-4711")),
            "celery.user",
            4,
            8,
            "no such user",
        );
        let nobody = fx.ok(&text("nobody"));
        assert_eq!(nobody.config.celery.user.as_deref(), Some("nobody"));
    }

    #[test]
    fn reserved_env_names_and_long_socket_paths() {
        let fx = Fx::new();
        let long = format!("/run/{}", "x".repeat(120));
        let diags = fx.errors(&format!(
            "[daemon]\nsocket = \"{long}\"\n{}",
            with_base("[group.g]\nqueues = [\"q\"]\nenv = { CLEARIFY_NODE = \"x\", \"bad-name\" = \"y\" }\n")
        ));
        assert_error(&diags, "daemon.socket", 2, 10, "limited to 107");
        assert_error(
            &diags,
            "group.g.env.CLEARIFY_NODE",
            9,
            9,
            "set by clearify-workerd",
        );
        assert_error(
            &diags,
            "group.g.env.bad-name",
            9,
            30,
            "invalid variable name",
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("redis://:secret@192.168.1.109:6379/0"),
            "redis://:***@192.168.1.109:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:p@ss@host/0"),
            "rediss://user:***@host/0"
        );
        assert_eq!(redact_url("redis://host:6379/0"), "redis://host:6379/0");
        assert_eq!(redact_url("redis://user@host"), "redis://user@host");
        assert_eq!(
            redact_url("unix://:pw@/run/redis.sock?db=1"),
            "unix://:***@/run/redis.sock?db=1"
        );
        assert_eq!(
            redact_url("redis://host/0?password=abc&x=1"),
            "redis://host/0?password=***&x=1"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn load_reads_the_file_and_names_it_on_io_errors() {
        let fx = Fx::new();
        let missing = fx.dir.path().join("nope.toml");
        let err = load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        assert_eq!(err.error_count(), 1);
        let bad = fx.dir.path().join("bad.toml");
        fs::write(&bad, b"[daemon]\nadmin_group = \"\xff\"\n").unwrap();
        let err = load(&bad).unwrap_err();
        assert_eq!(err.diagnostics()[0].line, 2);
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    }
}

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
//! Each key is declared once, with its default and meaning, in
//! [`keys`]: [`keys::DAEMON_KEYS`], [`keys::BROKER_KEYS`] (required when at
//! least one group exists; exactly one of `url` and `url_env`, the URL
//! read by [`broker_url`]), [`keys::CELERY_KEYS`] and, for `[defaults]` and
//! `[group.NAME]`, [`keys::GROUP_KEYS`]. workers.toml(5) says each at
//! length; a test checks that it names every key with its default.
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

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

pub mod broker_url;
mod checker;
mod diagnostics;
mod envfile;
mod keys;
mod schema;
mod units;

pub use diagnostics::{ConfigError, Diagnostic, Loaded, Severity};
pub use envfile::{EnvFileError, parse_env_file};
pub use schema::*;
pub use units::{parse_duration, parse_size};

use checker::Checker;
use diagnostics::Source;

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

#[cfg(test)]
mod tests;

//! The daemon's own logging: `--log-target`, whether stderr is the
//! journal (`JOURNAL_STREAM`), colours, and the tracing subscriber.

use std::io;
use std::os::fd::AsFd;
use std::str::FromStr;
use tracing_subscriber::filter::{LevelFilter, Targets};

/// Where the daemon's own logs go (`--log-target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogTarget {
    /// journald when stderr is the journal (under systemd), else stderr.
    #[default]
    Auto,
    Journal,
    Stderr,
}

impl FromStr for LogTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LogTarget::Auto),
            "journal" => Ok(LogTarget::Journal),
            "stderr" => Ok(LogTarget::Stderr),
            other => Err(format!(
                "unknown log target {other:?}: expected auto, journal or stderr"
            )),
        }
    }
}

/// Whether `JOURNAL_STREAM` (`<dev>:<inode>`, set by systemd) names the
/// file that fd 2 is, i.e. our stderr is connected to journald.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    fd_is_journal_stream(io::stderr().as_fd(), &value.to_string_lossy())
}

/// Whether the file `fd` refers to is the one a `JOURNAL_STREAM` value
/// names.
pub fn fd_is_journal_stream(fd: std::os::fd::BorrowedFd<'_>, journal_stream: &str) -> bool {
    match nix::sys::stat::fstat(fd) {
        Ok(st) => journal_stream_matches(journal_stream, st.st_dev, st.st_ino),
        Err(_) => false,
    }
}

/// `JOURNAL_STREAM` parsing: `"<dev>:<inode>"` in decimal.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
}

/// Whether the daemon's stderr log may use colours: only on a terminal,
/// and not when `NO_COLOR` is set to anything non-empty (no-color.org).
pub fn stderr_colours() -> bool {
    use std::io::IsTerminal;
    use_colours(
        io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// [`stderr_colours`] for given facts.
pub fn use_colours(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Sets up the daemon's tracing subscriber: journald (tracing-journald,
/// SYSLOG_IDENTIFIER=clearify-workerd, event fields as `CLEARIFY_<NAME>`, so
/// an `instance = …` field lines up with the worker lines'
/// `CLEARIFY_INSTANCE`) or human-readable text on stderr (coloured only
/// per [`stderr_colours`]).
/// The filter comes from `RUST_LOG` ([`log_filter`]), default `info`.
/// `Auto` falls back to stderr when the journal socket cannot be opened;
/// `Journal` fails then.
pub fn init_tracing(target: LogTarget) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;

    let rust_log = std::env::var("RUST_LOG").ok();
    let (targets, refused) = log_filter(rust_log.as_deref());
    let filter = || targets.clone();
    let journal = match target {
        LogTarget::Stderr => None,
        LogTarget::Auto if !stderr_is_journal() => None,
        LogTarget::Auto => tracing_journald::layer().ok(),
        LogTarget::Journal => Some(
            tracing_journald::layer()
                .map_err(|e| anyhow::anyhow!("cannot open the journald socket: {e}"))?,
        ),
    };
    match journal {
        Some(layer) => tracing_subscriber::registry()
            .with(filter())
            .with(
                layer
                    .with_syslog_identifier("clearify-workerd".to_owned())
                    .with_field_prefix(Some("CLEARIFY".to_owned())),
            )
            .try_init()?,
        None => tracing_subscriber::registry()
            .with(filter())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(stderr_colours())
                    .with_writer(io::stderr),
            )
            .try_init()?,
    }
    if let Some(why) = refused {
        tracing::warn!("{why}");
    }
    Ok(())
}

/// The log filter for a `RUST_LOG` value: comma-separated `LEVEL` and
/// `TARGET=LEVEL` directives (`warn,clearify_workerd=debug`), else `info`.
/// A value that is set but not such a list gives `info` and the sentence
/// that says so (logged once the subscriber is up: nothing is ignored
/// silently).
///
/// `Targets`, not `EnvFilter`: `EnvFilter`'s span and field matching pulls
/// in regex-automata and regex-syntax, about 150 KiB of the daemon's mapped
/// code and so of its RSS (docs/benchmarks.md, run N).
pub fn log_filter(rust_log: Option<&str>) -> (Targets, Option<String>) {
    let info = || Targets::new().with_default(LevelFilter::INFO);
    match rust_log.map(str::trim) {
        None | Some("") => (info(), None),
        Some(v) => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (
                info(),
                Some(format!(
                    "RUST_LOG={v:?} is not a log filter ({e}); logging at info. It takes LEVEL and TARGET=LEVEL, comma-separated, e.g. RUST_LOG=warn,clearify_workerd=debug"
                )),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_is_a_list_of_directives_else_info_and_a_reason() {
        use tracing::Level;
        let enabled = |t: &Targets, target: &str, level: Level| t.would_enable(target, &level);
        for unset in [None, Some(""), Some("  ")] {
            let (t, why) = log_filter(unset);
            assert!(why.is_none(), "{unset:?}");
            assert!(enabled(&t, "clearify_workerd::supervisor", Level::INFO));
            assert!(!enabled(&t, "clearify_workerd::supervisor", Level::DEBUG));
        }
        let (t, why) = log_filter(Some("warn,clearify_workerd=debug"));
        assert!(why.is_none());
        assert!(enabled(&t, "clearify_workerd::control", Level::DEBUG));
        assert!(!enabled(&t, "redis", Level::INFO));
        assert!(enabled(&t, "redis", Level::WARN));
        let (t, why) = log_filter(Some("debug"));
        assert!(why.is_none());
        assert!(enabled(&t, "anything", Level::DEBUG));
        for bad in ["clearify_workerd=loud", "[span{x=1}]=debug=x", "a=b=c"] {
            let (t, why) = log_filter(Some(bad));
            let why = why.unwrap_or_else(|| panic!("{bad} was taken"));
            assert!(
                why.contains(&format!("RUST_LOG={bad:?}")) && why.contains("logging at info"),
                "{why}"
            );
            assert!(enabled(&t, "clearify_workerd", Level::INFO));
            assert!(!enabled(&t, "clearify_workerd", Level::DEBUG));
        }
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colours(true, None));
        assert!(use_colours(true, Some(OsStr::new(""))));
        assert!(!use_colours(true, Some(OsStr::new("1"))));
        assert!(!use_colours(false, None));
        assert!(!use_colours(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn log_target_and_journal_stream_parsing() {
        assert_eq!("auto".parse::<LogTarget>(), Ok(LogTarget::Auto));
        assert_eq!("journal".parse::<LogTarget>(), Ok(LogTarget::Journal));
        assert_eq!("stderr".parse::<LogTarget>(), Ok(LogTarget::Stderr));
        assert!("syslog".parse::<LogTarget>().is_err());
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 1));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert!(!journal_stream_matches("", 0, 0));
        let file = tempfile::tempfile().unwrap();
        let st = nix::sys::stat::fstat(&file).unwrap();
        let value = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(fd_is_journal_stream(file.as_fd(), &value));
        let other = tempfile::tempfile().unwrap();
        assert!(!fd_is_journal_stream(other.as_fd(), &value));
    }
}

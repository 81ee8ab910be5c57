//! The keys of workers.toml, each declared once. The per-group keys
//! (`[defaults]` and `[group.NAME]`, [`GROUP_KEYS`]) with their name, how
//! each is read and bounded ([`Kind`]), its built-in default, its meaning
//! and where it goes in a [`GroupConfig`]; the keys of `[daemon]`,
//! `[broker]` and `[celery]` ([`DAEMON_KEYS`], [`BROKER_KEYS`],
//! [`CELERY_KEYS`]) with their name, default and meaning (each section's
//! checker reads them: their rules differ key by key).
//!
//! Adding a per-group key: one [`GroupKey`] entry here (and the field its
//! `apply` fills, in [`GroupConfig`] or `model::spec::{Timing, Limits}`),
//! its entry in
//! packaging/man/workers.toml.5 (the test `every_key_is_in_the_man_page_with_its_default`
//! checks the name and the default), and a test of it in config/tests.rs
//! (copy `stall_timeout` in `every_count_duration_and_size_is_bounded`).
//! The checker reads, bounds, merges over `[defaults]` and applies every
//! key through this table.

use std::collections::BTreeMap;
use std::time::Duration;

use super::diagnostics::At;
use super::schema::{
    DEFAULT_ADMIN_GROUP, DEFAULT_CHECK_INTERVAL, DEFAULT_COMMAND, DEFAULT_FLEET_INTERVAL,
    DEFAULT_FORGET_AFTER, DEFAULT_LOGLEVEL, DEFAULT_SOCKET, DEFAULT_WORKDIR, GroupConfig,
    MAX_CONCURRENCY, MAX_INSTANCES,
};
use crate::model::autoscale::Autoscale;

/// How a key's value is read and bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A non-empty list of queue names.
    Queues,
    /// An integer in `min..=max`.
    Int { min: u32, max: u32 },
    /// A duration up to [`super::MAX_DURATION`]; with `off`, zero turns
    /// the feature off.
    Duration { off: bool },
    /// A size up to [`super::MAX_SIZE`] or `"max"`; `zero_ok` allows 0.
    Size { zero_ok: bool },
    /// A number of CPUs, 0.01..=[`super::MAX_CPUS`], or `"max"`.
    Cpus,
    /// 1..=[`super::MAX_PIDS`] or `"max"`.
    Pids,
    /// Worker arguments (checked against the options the daemon owns).
    Args,
    /// A table of environment variables, merged key by key over
    /// `[defaults]` (every other kind is replaced as a whole).
    Env,
    /// `{ min, max, backlog_per_instance, scale_down_after,
    /// memory_headroom }` (config/checker/autoscale.rs).
    Autoscale,
}

/// The value of one per-group key, as read.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Queues(Vec<At<String>>),
    Int(u32),
    /// `None`: off.
    Duration(Option<Duration>),
    /// `None`: `"max"`.
    Size(Option<u64>),
    /// `None`: `"max"`.
    Cpus(Option<f64>),
    /// `None`: `"max"`.
    Pids(Option<u64>),
    Args(Vec<String>),
    Env(BTreeMap<String, String>),
    Autoscale(Autoscale),
}

/// One per-group key.
pub(super) struct GroupKey {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    /// The built-in default, as TOML (read through the same checks as a
    /// written value); `None`: required (`queues`) or no limit.
    pub(super) default: Option<&'static str>,
    /// The meaning, as workers.toml(5) says it (the man page has the
    /// long form; read by the tests).
    #[allow(dead_code, reason = "documentation, for the reader of this table")]
    pub(super) doc: &'static str,
    /// Put the value into the group.
    pub(super) apply: fn(&mut GroupConfig, Value),
}

/// cpu.weight and io.weight: the kernel's range.
const WEIGHT: Kind = Kind::Int {
    min: 1,
    max: 10_000,
};

/// Every per-group key, in the order of workers.toml(5).
pub(super) const GROUP_KEYS: &[GroupKey] = &[
    GroupKey {
        name: "queues",
        kind: Kind::Queues,
        default: None,
        doc: "`-Q`; a queue consumed by two groups is a warning",
        apply: |g, v| {
            if let Value::Queues(q) = v {
                g.queues = q.into_iter().map(|q| q.v).collect();
            }
        },
    },
    GroupKey {
        name: "concurrency",
        kind: Kind::Int {
            min: 1,
            max: MAX_CONCURRENCY,
        },
        default: Some("1"),
        doc: "`-c`",
        apply: |g, v| {
            if let Value::Int(n) = v {
                g.concurrency = n;
            }
        },
    },
    GroupKey {
        name: "instances",
        kind: Kind::Int {
            min: 1,
            max: MAX_INSTANCES,
        },
        default: Some("1"),
        doc: "worker processes of the group, ids `<group>-1` …; at most 4096 in all groups",
        apply: |g, v| {
            if let Value::Int(n) = v {
                g.instances = n;
            }
        },
    },
    GroupKey {
        name: "autoscale",
        kind: Kind::Autoscale,
        default: None,
        doc: "`{ min, max, backlog_per_instance = 20, scale_down_after = \"2m\", memory_headroom = \"300M\" }`: the instance count follows the backlog; `instances` is then the count at start",
        apply: |g, v| {
            if let Value::Autoscale(a) = v {
                g.autoscale = Some(a);
            }
        },
    },
    GroupKey {
        name: "stop_timeout",
        kind: Kind::Duration { off: false },
        default: Some("\"60s\""),
        doc: "SIGTERM (warm shutdown) → SIGQUIT after this long",
        apply: |g, v| {
            if let Value::Duration(d) = v {
                g.timing.stop_timeout = d.unwrap_or_default();
            }
        },
    },
    GroupKey {
        name: "restart_delay",
        kind: Kind::Duration { off: false },
        default: Some("\"100ms\""),
        doc: "first restart delay",
        apply: |g, v| {
            if let Value::Duration(d) = v {
                g.timing.restart_delay = d.unwrap_or_default();
            }
        },
    },
    GroupKey {
        name: "restart_delay_max",
        kind: Kind::Duration { off: false },
        default: Some("\"60s\""),
        doc: "cap of the doubling restart delay; at least `restart_delay`",
        apply: |g, v| {
            if let Value::Duration(d) = v {
                g.timing.restart_delay_max = d.unwrap_or_default();
            }
        },
    },
    GroupKey {
        name: "stable_after",
        kind: Kind::Duration { off: false },
        default: Some("\"30s\""),
        doc: "a run this long resets the backoff",
        apply: |g, v| {
            if let Value::Duration(d) = v {
                g.timing.stable_after = d.unwrap_or_default();
            }
        },
    },
    GroupKey {
        name: "heartbeat_timeout",
        kind: Kind::Duration { off: true },
        default: Some("\"60s\""),
        doc: "restart when Celery heartbeats stop this long; 0 = off",
        apply: |g, v| {
            if let Value::Duration(d) = v {
                g.timing.heartbeat_timeout = d;
            }
        },
    },
    GroupKey {
        name: "stall_timeout",
        kind: Kind::Duration { off: true },
        default: Some("\"300s\""),
        doc: "restart when backlog waits and nothing progresses this long; 0 = off",
        apply: |g, v| {
            if let Value::Duration(d) = v {
                g.timing.stall_timeout = d;
            }
        },
    },
    GroupKey {
        name: "extra_args",
        kind: Kind::Args,
        default: Some("[]"),
        doc: "appended after `celery.extra_args`",
        apply: |g, v| {
            if let Value::Args(a) = v {
                g.extra_args = a;
            }
        },
    },
    GroupKey {
        name: "env",
        kind: Kind::Env,
        default: Some("{}"),
        doc: "extra environment, over `env_file`; merged key by key over `[defaults]`",
        apply: |g, v| {
            if let Value::Env(e) = v {
                g.env.extend(e);
            }
        },
    },
    GroupKey {
        name: "memory_max",
        kind: Kind::Size { zero_ok: false },
        default: None,
        doc: "cgroup `memory.max` of the group",
        apply: |g, v| {
            if let Value::Size(s) = v {
                g.limits.memory_max = s;
            }
        },
    },
    GroupKey {
        name: "memory_high",
        kind: Kind::Size { zero_ok: false },
        default: None,
        doc: "cgroup `memory.high` of the group",
        apply: |g, v| {
            if let Value::Size(s) = v {
                g.limits.memory_high = s;
            }
        },
    },
    GroupKey {
        name: "memory_swap_max",
        kind: Kind::Size { zero_ok: true },
        default: None,
        doc: "cgroup `memory.swap.max` of the group",
        apply: |g, v| {
            if let Value::Size(s) = v {
                g.limits.memory_swap_max = s;
            }
        },
    },
    GroupKey {
        name: "cpu_max",
        kind: Kind::Cpus,
        default: None,
        doc: "cgroup `cpu.max`, in CPUs (e.g. 1.5)",
        apply: |g, v| {
            if let Value::Cpus(c) = v {
                g.limits.cpu_max = c;
            }
        },
    },
    GroupKey {
        name: "cpu_weight",
        kind: WEIGHT,
        default: None,
        doc: "cgroup `cpu.weight`",
        apply: |g, v| {
            if let Value::Int(n) = v {
                g.limits.cpu_weight = Some(n);
            }
        },
    },
    GroupKey {
        name: "pids_max",
        kind: Kind::Pids,
        default: None,
        doc: "cgroup `pids.max`",
        apply: |g, v| {
            if let Value::Pids(p) = v {
                g.limits.pids_max = p;
            }
        },
    },
    GroupKey {
        name: "io_weight",
        kind: WEIGHT,
        default: None,
        doc: "cgroup `io.weight`",
        apply: |g, v| {
            if let Value::Int(n) = v {
                g.limits.io_weight = Some(n);
            }
        },
    },
];

/// The names of [`GROUP_KEYS`], for "did you mean" hints.
pub(super) fn group_key_names() -> Vec<&'static str> {
    GROUP_KEYS.iter().map(|k| k.name).collect()
}

/// A default of a `[daemon]`, `[broker]` or `[celery]` key, as the
/// checker's constant holds it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Dflt {
    /// A string value.
    Str(&'static str),
    /// A duration, shown as humantime writes it.
    Duration(Duration),
    /// Any other value, as TOML.
    Toml(&'static str),
}

impl Dflt {
    /// As TOML.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn toml(self) -> String {
        match self {
            Dflt::Str(s) => format!("{s:?}"),
            Dflt::Duration(d) => format!("\"{}\"", humantime::format_duration(d)),
            Dflt::Toml(t) => t.to_string(),
        }
    }
}

/// One key of `[daemon]`, `[broker]` or `[celery]`.
pub(super) struct SectionKey {
    pub(super) name: &'static str,
    /// `None`: required, computed (`device_id`) or unset by default.
    #[allow(dead_code, reason = "documentation, checked against the man page")]
    pub(super) default: Option<Dflt>,
    #[allow(dead_code, reason = "documentation, for the reader of this table")]
    pub(super) doc: &'static str,
}

const fn key(name: &'static str, default: Option<Dflt>, doc: &'static str) -> SectionKey {
    SectionKey { name, default, doc }
}

/// `[daemon]`.
pub(super) const DAEMON_KEYS: &[SectionKey] = &[
    key(
        "socket",
        Some(Dflt::Str(DEFAULT_SOCKET)),
        "the control socket (at most 107 bytes); admin.sock is next to it",
    ),
    key(
        "device_id",
        None,
        "this machine's unique name on the shared broker; hostname + `-` + 6 hex digits of /etc/machine-id by default",
    ),
    key(
        "admin_group",
        Some(Dflt::Str(DEFAULT_ADMIN_GROUP)),
        "the Unix group whose members may start, stop, restart and reload",
    ),
    key(
        "require_limits",
        Some(Dflt::Toml("false")),
        "refuse to start when cgroup v2 limits cannot be applied",
    ),
    key(
        "log_rate_limit",
        Some(Dflt::Toml("200")),
        "worker records per second at info and below that go to journald, all groups together, split evenly between the groups; warnings and errors always pass; 0 turns the limit off",
    ),
];

/// `[broker]` (required when a group exists; exactly one of `url` and
/// `url_env`).
pub(super) const BROKER_KEYS: &[SectionKey] = &[
    key("url", None, "the broker URL ([`super::broker_url`])"),
    key(
        "url_env",
        None,
        "a variable holding the URL, looked up in `celery.env_file`, then in the daemon's environment",
    ),
    key(
        "wait_timeout",
        Some(Dflt::Str("infinite")),
        "how long to wait for the broker at start",
    ),
    key(
        "on_timeout",
        Some(Dflt::Str("wait")),
        "`wait`, `start` or `fail` once `wait_timeout` is exceeded",
    ),
    key(
        "check_interval",
        Some(Dflt::Duration(DEFAULT_CHECK_INTERVAL)),
        "broker health ping interval, > 0",
    ),
    key(
        "priority_steps",
        Some(Dflt::Toml("[0, 3, 6, 9]")),
        "Celery priority sub-queues counted in the backlog, 0..=9",
    ),
    key(
        "key_prefix",
        Some(Dflt::Str("")),
        "Celery's `global_keyprefix`",
    ),
];

/// `[celery]`.
pub(super) const CELERY_KEYS: &[SectionKey] = &[
    key(
        "app",
        None,
        "`celery -A <app>`; required when a group exists",
    ),
    key(
        "command",
        Some(Dflt::Str(DEFAULT_COMMAND)),
        "the celery executable (a name in `PATH`, or a path), or a list: executable and its first arguments",
    ),
    key(
        "workdir",
        Some(Dflt::Str(DEFAULT_WORKDIR)),
        "the workers' working directory",
    ),
    key("env_file", None, "`KEY=VALUE` lines for the workers"),
    key(
        "user",
        None,
        "the user the workers run as; never root; required when the daemon runs as root",
    ),
    key(
        "loglevel",
        Some(Dflt::Str(DEFAULT_LOGLEVEL)),
        "`--loglevel=`: debug, info, warning, error, critical or fatal",
    ),
    key(
        "extra_args",
        Some(Dflt::Toml("[]")),
        "appended to every worker's command line, before the group's",
    ),
];

/// `[fleet]`.
pub(super) const FLEET_KEYS: &[SectionKey] = &[
    key(
        "publish",
        Some(Dflt::Toml("true")),
        "publish this device's record in the shared Redis",
    ),
    key(
        "interval",
        Some(Dflt::Duration(DEFAULT_FLEET_INTERVAL)),
        "how often the record is written, 1s to 1h",
    ),
    key(
        "forget_after",
        Some(Dflt::Duration(DEFAULT_FORGET_AFTER)),
        "the record's TTL: how long a lost device stays visible; at least 3 intervals",
    ),
];

/// `[metrics]`.
pub(super) const METRICS_KEYS: &[SectionKey] = &[key(
    "textfile",
    None,
    "a .prom file written atomically every [fleet] interval, for node_exporter's textfile collector",
)];

/// The names of a section's keys, for "did you mean" hints.
pub(super) fn section_key_names(keys: &[SectionKey]) -> Vec<&'static str> {
    keys.iter().map(|k| k.name).collect()
}

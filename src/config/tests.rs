//! Unit tests of the config checker.

use super::*;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::checker::groups::instance_id_clash;
use crate::model::spec::Timing;
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

const BASE: &str =
    "[broker]\nurl = \"redis://:secret@127.0.0.1:6379/0\"\n[celery]\napp = \"demo.celery_app\"\n";

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

/// `[daemon] log_rate_limit`: 200 by default, 0 (off) to 1,000,000.
#[test]
fn the_log_rate_limit_has_a_default_and_a_bound() {
    let fx = Fx::new();
    let c = fx.ok(&with_base("")).config;
    assert_eq!(c.daemon.log_rate_limit, DEFAULT_LOG_RATE_LIMIT);
    assert_eq!(DEFAULT_LOG_RATE_LIMIT, 200);
    for n in [0, 1_000_000] {
        let c = fx
            .ok(&format!("[daemon]\nlog_rate_limit = {n}\n{BASE}"))
            .config;
        assert_eq!(c.daemon.log_rate_limit, n);
    }
    for (v, needle) in [
        ("1000001", "from 0 to 1000000, found 1000001"),
        ("-1", "from 0 to 1000000, found -1"),
        ("\"fast\"", "an integer"),
    ] {
        let diags = fx.errors(&format!("[daemon]\nlog_rate_limit = {v}\n{BASE}"));
        assert_error(&diags, "daemon.log_rate_limit", 2, 18, needle);
    }
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
    let diags =
        fx.errors("[daemon]\nsocket = \"/x\"\n\n[group.a]\nqueues = [\"a\",\nconcurrency = = 2\n");
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
        with_base(
            "[group.g]\nqueues = [\"q\"]\nenv = { CLEARIFY_NODE = \"x\", \"bad-name\" = \"y\" }\n"
        )
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

/// The lines of workers.toml(5)'s section `.SH <title>`.
fn man_section(title: &str) -> Vec<&'static str> {
    let man = include_str!("../../packaging/man/workers.toml.5");
    man.lines()
        .skip_while(|l| *l != format!(".SH {title}"))
        .skip(1)
        .take_while(|l| !l.starts_with(".SH "))
        .collect()
}

/// The entry (`.TP`, then `.B name` or `.BR a ", " name …`) of `name` in
/// `lines`, up to the next entry or paragraph, joined by newlines.
fn man_entry(lines: &[&str], name: &str) -> Option<String> {
    let at = (1..lines.len()).find(|&i| {
        let l = lines[i];
        lines[i - 1] == ".TP"
            && (l.starts_with(".B ") || l.starts_with(".BR "))
            && l.split([' ', '"']).any(|w| w == name)
    })?;
    let entry: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| !l.starts_with(".TP") && !l.starts_with(".PP"))
        .copied()
        .collect();
    Some(entry.join("\n"))
}

/// That the man page `entry` of `name` states `default` (TOML) after
/// "Default".
fn assert_man_default(name: &str, entry: &str, default: &str) {
    let shown = default.replace('"', "\\(dq").replace('-', "\\-");
    let after = entry
        .split_once("Default")
        .map(|(_, rest)| rest.trim_start_matches(':'))
        .unwrap_or_else(|| panic!("the entry of `{name}` states no default:\n{entry}"));
    assert!(
        after
            .trim_start_matches(['\n', ' '])
            .trim_start_matches(".BR ")
            .trim_start_matches(".B ")
            .trim_start_matches('"')
            .starts_with(&shown),
        "the man page gives `{name}` another default than {default}:\n{entry}"
    );
}

/// Each key of [`super::keys`] has its entry in its section of
/// workers.toml(5), which states the default the table declares: adding a
/// key is one table entry, its man page entry and a test.
#[test]
fn every_key_is_in_the_man_page_with_its_default() {
    let group = man_section("[defaults] AND [group.NAME]");
    for k in super::keys::GROUP_KEYS {
        assert!(!k.doc.is_empty(), "{} has no doc", k.name);
        let entry = man_entry(&group, k.name)
            .unwrap_or_else(|| panic!("workers.toml(5) has no entry for `{}`", k.name));
        if let Some(default) = k.default {
            assert_man_default(k.name, &entry, default);
        }
    }
    for (title, keys) in [
        ("[daemon]", super::keys::DAEMON_KEYS),
        ("[broker]", super::keys::BROKER_KEYS),
        ("[celery]", super::keys::CELERY_KEYS),
        ("[fleet]", super::keys::FLEET_KEYS),
        ("[metrics]", super::keys::METRICS_KEYS),
    ] {
        let lines = man_section(title);
        for k in keys {
            assert!(!k.doc.is_empty(), "{} has no doc", k.name);
            let entry = man_entry(&lines, k.name).unwrap_or_else(|| {
                panic!("{title} of workers.toml(5) has no entry for `{}`", k.name)
            });
            if let Some(default) = k.default {
                assert_man_default(k.name, &entry, &default.toml());
            }
        }
    }
}

/// The modules a file under `src/<dir>` (or the file `src/<dir>`) names
/// through `crate::`.
fn crate_imports(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if p.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), out);
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p.to_path_buf());
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir),
        &mut files,
    );
    assert!(!files.is_empty(), "{dir}");
    let mut out = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let module: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::` in prose or a format string names no module.
            if !module.is_empty() {
                out.push((f.clone(), module));
            }
        }
    }
    out
}

/// Issue 13: no import cycles. The flow runs downhill: config imports only
/// model and sys (never plan, broker, supervisor, control or cli); plan
/// imports config and model; model imports nothing of the crate.
#[test]
fn config_plan_and_model_import_downhill() {
    for (dir, allowed) in [
        ("config", &["config", "model", "sys"][..]),
        ("plan.rs", &["config", "model", "plan"][..]),
        ("model", &["model"][..]),
    ] {
        for (file, module) in crate_imports(dir) {
            assert!(
                allowed.contains(&module.as_str()),
                "{} imports crate::{module}; {dir} may import only {allowed:?}",
                file.display()
            );
        }
    }
}

#[test]
fn fleet_and_metrics_have_defaults_and_bounds() {
    let fx = Fx::new();
    let l = fx.ok(&with_base(""));
    assert_eq!(l.config.fleet, FleetConfig::default());
    assert!(l.config.fleet.publish);
    assert_eq!(l.config.fleet.interval, Duration::from_secs(10));
    assert_eq!(l.config.fleet.forget_after, Duration::from_secs(86400));
    assert_eq!(l.config.metrics.textfile, None);

    let l = fx.ok(&with_base(
        "[fleet]\npublish = false\ninterval = \"30s\"\nforget_after = \"2h\"\n[metrics]\ntextfile = \"/var/lib/prometheus/node-exporter/clearify.prom\"\n",
    ));
    assert!(!l.config.fleet.publish);
    assert_eq!(l.config.fleet.interval, Duration::from_secs(30));
    assert_eq!(
        l.config.metrics.textfile.as_deref(),
        Some(Path::new("/var/lib/prometheus/node-exporter/clearify.prom"))
    );

    let diags = fx.errors(&with_base("[fleet]\ninterval = \"500ms\"\n"));
    assert_error(&diags, "fleet.interval", 6, 12, "between 1s and 1h");
    let diags = fx.errors(&with_base("[fleet]\ninterval = \"1500ms\"\n"));
    assert_error(&diags, "fleet.interval", 6, 12, "whole number of seconds");
    let diags = fx.errors(&with_base(
        "[fleet]\ninterval = \"1m\"\nforget_after = \"2m\"\n",
    ));
    assert_error(
        &diags,
        "fleet.forget_after",
        7,
        16,
        "at least 3 × interval (3m)",
    );
    let diags = fx.errors(&with_base("[fleet]\nintervall = \"1m\"\n"));
    assert_error(&diags, "fleet.intervall", 6, 1, "did you mean `interval`");
    let diags = fx.errors(&with_base("[metrics]\ntextfile = \"/tmp/clearify.txt\"\n"));
    assert_error(&diags, "metrics.textfile", 6, 12, "must end in `.prom`");
}

/// `autoscale = { … }`: every field read, its defaults, and `instances`
/// as the count at start.
#[test]
fn autoscale_reads_its_fields_and_defaults() {
    let fx = Fx::new();
    let l = fx.ok(&with_base(concat!(
        "[group.text]\nqueues = [\"q\"]\nconcurrency = 2\n",
        "autoscale = { min = 1, max = 4, backlog_per_instance = 30, scale_down_after = \"3m\", memory_headroom = \"512M\" }\n",
        "[group.zero]\nqueues = [\"z\"]\n",
        "autoscale = { min = 0, max = 2 }\n",
        "[group.warm]\nqueues = [\"w\"]\ninstances = 3\n",
        "autoscale = { min = 2, max = 5 }\n",
    )));
    let g = |n: &str| l.config.group(n).unwrap().clone();
    let a = g("text").autoscale.unwrap();
    assert_eq!(
        (
            a.min,
            a.max,
            a.backlog_per_instance,
            a.scale_down_after,
            a.memory_headroom
        ),
        (1, 4, 30, Duration::from_secs(180), 512 << 20)
    );
    assert_eq!(g("text").instances, 1, "the start count is min");
    let z = g("zero").autoscale.unwrap();
    assert_eq!(
        (
            z.min,
            z.max,
            z.backlog_per_instance,
            z.scale_down_after,
            z.memory_headroom
        ),
        (0, 2, 20, Duration::from_secs(120), 300 << 20)
    );
    assert_eq!(g("zero").instances, 0);
    assert_eq!(
        g("warm").instances,
        3,
        "a written instances is the start count"
    );
    assert_eq!(g("warm").max_instances(), 5);
}

/// Each wrong field of `autoscale` is an error at its own value.
#[test]
fn autoscale_errors_name_the_field_and_its_position() {
    let fx = Fx::new();
    let diags = fx.errors(&with_base(concat!(
        "[group.a]\nqueues = [\"a\"]\n",
        "autoscale = { min = 3, max = 2 }\n",
        "[group.b]\nqueues = [\"b\"]\n",
        "autoscale = { min = 1 }\n",
        "[group.c]\nqueues = [\"c\"]\n",
        "autoscale = { min = 1, max = 2, maxx = 3 }\n",
        "[group.d]\nqueues = [\"d\"]\n",
        "autoscale = { min = 0, max = 1, scale_down_after = \"0s\", memory_headroom = \"max\", backlog_per_instance = 0 }\n",
        "[group.e]\nqueues = [\"e\"]\n",
        "autoscale = { min = 1025, max = 1025 }\n",
        "[group.f]\nqueues = [\"f\"]\ninstances = 5\n",
        "autoscale = { min = 1, max = 4 }\n",
        "[group.g]\nqueues = [\"g\"]\nautoscale = 3\n",
    )));
    assert_error(
        &diags,
        "group.a.autoscale.max",
        7,
        30,
        "max (2) is below min (3)",
    );
    assert_error(&diags, "group.b.autoscale", 10, 13, "missing `max`");
    assert_error(
        &diags,
        "group.c.autoscale.maxx",
        13,
        33,
        "unknown key `maxx`; did you mean `max`?",
    );
    assert_error(
        &diags,
        "group.d.autoscale.scale_down_after",
        16,
        52,
        "at least 1s",
    );
    assert_error(
        &diags,
        "group.d.autoscale.memory_headroom",
        16,
        76,
        "\"max\" would refuse",
    );
    assert_error(
        &diags,
        "group.d.autoscale.backlog_per_instance",
        16,
        106,
        "from 1 to 1000000",
    );
    let e: Vec<_> = diags
        .iter()
        .filter(|d| d.key.starts_with("group.e.autoscale"))
        .collect();
    assert_eq!(e.len(), 2, "min and max out of bounds: {e:#?}");
    assert_error(
        &diags,
        "group.f.instances",
        22,
        13,
        "must be within min..=max (1..=4, line 23)",
    );
    assert_error(&diags, "group.g.autoscale", 26, 13, "a table");
    assert_eq!(diags.len(), 10, "{diags:#?}");
}

/// `autoscale.max` counts towards the total, and its ids clash as the
/// fixed ones do.
#[test]
fn autoscale_max_counts_for_the_total_and_the_ids() {
    let fx = Fx::new();
    let mut text = BASE.to_string();
    for i in 0..4 {
        text.push_str(&format!(
            "[group.g{i}]\nqueues = [\"q{i}\"]\nautoscale = {{ min = 0, max = 1024 }}\n"
        ));
    }
    fx.ok(&text);
    text.push_str("[group.g4]\nqueues = [\"q4\"]\nautoscale = { min = 0, max = 1 }\n");
    let diags = fx.errors(&text);
    assert_error(
        &diags,
        "group.g4.autoscale",
        19,
        13,
        "at most 4096 instances",
    );
    let diags = fx.errors(&with_base(concat!(
        "[group.text]\nqueues = [\"q\"]\nautoscale = { min = 1, max = 3 }\n",
        "[group.text-3]\nqueues = [\"r\"]\n",
    )));
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert!(
        diags[0].message.contains("instance 3 of group `text`"),
        "{diags:#?}"
    );
}

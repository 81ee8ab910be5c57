//! The plan: what the daemon should run, derived from a validated config.
//!
//! [`Plan`] is plain data. The supervisor compares two plans on reload
//! ([`diff`]) and starts each [`InstanceSpec`] exactly as written here, so
//! `clearify-workerd --check` can print the very command lines that will run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, redact_url};
pub use crate::model::spec::{GroupPlan, InstanceSpec, Limits, Plan, PlanDiff, Timing, diff};

/// Build the plan from a validated config: for each group (in config
/// order) and each instance `i` in `1..=instances`, the exact process to run.
///
/// argv: `[<celery.command list args>] -A <app> worker -Q <queues joined by ,> -c <concurrency>
/// -n <group>-<i>@<device_id> --loglevel=<loglevel> <celery.extra_args...>
/// <group.extra_args...>`. env: `PATH` and `LANG=C.UTF-8`, then the
/// env_file, then the group's `env`, then `PYTHONUNBUFFERED=1`,
/// `CLEARIFY_INSTANCE`, `CLEARIFY_GROUP` and `CLEARIFY_NODE` (later wins).
pub fn build(config: &Config) -> Plan {
    let device_id = &config.daemon.device_id;
    let celery = &config.celery;
    let groups = config
        .groups
        .iter()
        .map(|g| {
            let instances = (1..=g.max_instances())
                .map(|i| {
                    let id = format!("{}-{i}", g.name);
                    let node = format!("{id}@{device_id}");
                    let mut args: Vec<String> = celery.command_args.clone();
                    args.extend([
                        "-A".into(),
                        celery.app.clone().unwrap_or_default(),
                        "worker".into(),
                        "-Q".into(),
                        g.queues.join(","),
                        "-c".into(),
                        g.concurrency.to_string(),
                        "-n".into(),
                        node.clone(),
                        format!("--loglevel={}", celery.loglevel),
                    ]);
                    args.extend(celery.extra_args.iter().cloned());
                    args.extend(g.extra_args.iter().cloned());
                    let mut env = BTreeMap::new();
                    env.insert("PATH".to_string(), celery.worker_path.clone());
                    env.insert("LANG".to_string(), "C.UTF-8".to_string());
                    env.extend(celery.env_file_vars.clone());
                    env.extend(g.env.clone());
                    env.insert("PYTHONUNBUFFERED".to_string(), "1".to_string());
                    env.insert("CLEARIFY_INSTANCE".to_string(), id.clone());
                    env.insert("CLEARIFY_GROUP".to_string(), g.name.clone());
                    env.insert("CLEARIFY_NODE".to_string(), node.clone());
                    Arc::new(InstanceSpec {
                        id,
                        group: g.name.clone(),
                        index: i,
                        node,
                        program: celery.command.clone(),
                        args,
                        env,
                        cwd: celery.workdir.clone(),
                        user: celery.user.clone(),
                        timing: g.timing.clone(),
                    })
                })
                .collect();
            GroupPlan {
                name: g.name.clone(),
                queues: g.queues.clone(),
                limits: g.limits.clone(),
                instances,
                concurrency: g.concurrency,
                autoscale: g.autoscale,
                start: g.instances,
            }
        })
        .collect();
    Plan {
        device_id: device_id.clone(),
        groups,
    }
}

/// Quote `s` for a POSIX shell: unchanged when it is made only of safe
/// characters, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// [`shell_quote`], except that a value holding tab or newline (which an
/// environment value may) is written as `$'…'` with `\t` and `\n`, so that
/// every variable stays on one line of the `--check` report. Any other
/// control character (the config refuses them) is escaped too.
fn shell_quote_value(s: &str) -> String {
    if s.chars().any(char::is_control) {
        format!("$'{}'", s.escape_default())
    } else {
        shell_quote(s)
    }
}

/// The command line of an instance, shell-quoted, as it will be exec'd.
pub fn command_line(spec: &InstanceSpec) -> String {
    std::iter::once(spec.program.to_string_lossy().into_owned())
        .chain(spec.args.iter().cloned())
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A size in bytes as the largest exact binary unit: `1G`, `1536M`, `100`.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// The limits as `key=value` pairs, e.g. `memory_max=1G cpu_max=1.5`, or
/// `none`.
pub fn format_limits(l: &Limits) -> String {
    let mut parts = Vec::new();
    let size = |k: &str, v: Option<u64>, parts: &mut Vec<String>| {
        if let Some(v) = v {
            parts.push(format!("{k}={}", format_size(v)));
        }
    };
    size("memory_max", l.memory_max, &mut parts);
    size("memory_high", l.memory_high, &mut parts);
    size("memory_swap_max", l.memory_swap_max, &mut parts);
    if let Some(c) = l.cpu_max {
        parts.push(format!("cpu_max={c}"));
    }
    if let Some(w) = l.cpu_weight {
        parts.push(format!("cpu_weight={w}"));
    }
    if let Some(p) = l.pids_max {
        parts.push(format!("pids_max={p}"));
    }
    if let Some(w) = l.io_weight {
        parts.push(format!("io_weight={w}"));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(" ")
    }
}

/// Whether an environment variable's name suggests a secret value.
fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "AUTH",
        "PRIVATE",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// An environment value as `--check` shows it: `***` for secret-looking
/// names, URLs with their password redacted.
pub fn display_env_value(key: &str, value: &str) -> String {
    if looks_secret(key) && !value.is_empty() {
        "***".to_string()
    } else if value.contains("://") {
        redact_url(value)
    } else {
        value.to_string()
    }
}

fn fmt_opt_duration(d: Option<Duration>, none: &str) -> String {
    d.map_or_else(
        || none.to_string(),
        |d| humantime::format_duration(d).to_string(),
    )
}

/// The report of `clearify-workerd --check`: the broker, then per group its
/// queues and limits, and per instance the exact command line
/// (shell-quoted), cwd, user and environment (secrets hidden), then a
/// summary line.
pub fn render_check(plan: &Plan, config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "config: {}", config.path.display());
    let _ = writeln!(out, "device_id: {}", plan.device_id);
    let _ = writeln!(out, "socket: {}", config.daemon.socket.display());
    match &config.broker {
        Some(b) => {
            let from = b
                .url_env
                .as_ref()
                .map(|v| format!(" (from ${v})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "broker: {}{from}; wait_timeout {}, on_timeout {}, check_interval {}",
                redact_url(&b.url),
                fmt_opt_duration(b.wait_timeout, "infinite"),
                b.on_timeout.as_str(),
                humantime::format_duration(b.check_interval),
            );
        }
        None => {
            let _ = writeln!(out, "broker: none");
        }
    }
    if let Some(f) = &config.celery.env_file {
        let _ = writeln!(
            out,
            "env_file: {} ({} variables)",
            f.display(),
            config.celery.env_file_vars.len()
        );
    }
    for g in &plan.groups {
        let cfg = config.group(&g.name);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "group {}: queues {}; {} instance(s) × concurrency {}",
            g.name,
            g.queues.join(","),
            g.instances.len(),
            cfg.map_or(0, |c| c.concurrency),
        );
        if let Some(a) = &g.autoscale {
            let _ = writeln!(
                out,
                "  autoscale: {}..{} instances, {} at start; one per {} messages of backlog × this device's share; down after {}; memory headroom {}",
                a.min,
                a.max,
                g.start,
                a.backlog_per_instance,
                humantime::format_duration(a.scale_down_after),
                format_size(a.memory_headroom),
            );
        }
        let _ = writeln!(out, "  limits: {}", format_limits(&g.limits));
        if let Some(i) = g.instances.first() {
            let t = &i.timing;
            let _ = writeln!(
                out,
                "  timing: stop_timeout {}, restart_delay {}..{}, stable_after {}, heartbeat_timeout {}, stall_timeout {}",
                humantime::format_duration(t.stop_timeout),
                humantime::format_duration(t.restart_delay),
                humantime::format_duration(t.restart_delay_max),
                humantime::format_duration(t.stable_after),
                fmt_opt_duration(t.heartbeat_timeout, "off"),
                fmt_opt_duration(t.stall_timeout, "off"),
            );
        }
        for i in &g.instances {
            let _ = writeln!(out, "  instance {} (node {})", i.id, i.node);
            let _ = writeln!(out, "    command: {}", command_line(i));
            let _ = writeln!(out, "    cwd: {}", i.cwd.display());
            let _ = writeln!(
                out,
                "    user: {}",
                i.user.as_deref().unwrap_or("(the daemon's user)")
            );
            let _ = writeln!(out, "    env:");
            for (k, v) in &i.env {
                let shown = display_env_value(k, v);
                let shown = if shown == *v || shown.chars().any(char::is_control) {
                    shell_quote_value(&shown)
                } else {
                    shown
                };
                let _ = writeln!(out, "      {k}={shown}");
            }
        }
    }
    let instances: usize = plan.groups.iter().map(|g| g.instances.len()).sum();
    let processes: u64 = config
        .groups
        .iter()
        .map(|g| u64::from(g.max_instances()) * u64::from(g.concurrency))
        .sum();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "summary: config ok: {} group(s), {} instance(s), {} pool process(es) in total",
        plan.groups.len(),
        instances,
        processes
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Environment, load_str};
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    struct Fx {
        dir: tempfile::TempDir,
        env: Environment,
    }

    impl Fx {
        fn new() -> Fx {
            let dir = tempfile::tempdir().unwrap();
            let celery = dir.path().join("celery");
            std::fs::write(&celery, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&celery, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(
                dir.path().join("worker.env"),
                "CELERY_BROKER_URL=redis://:hunter2@127.0.0.1:6379/0\nAPI_TOKEN=abc123\nPLAIN=hello world\nOMP_NUM_THREADS=4\n",
            )
            .unwrap();
            let env = Environment {
                hostname: Some("pi".into()),
                machine_id_path: dir.path().join("no-machine-id"),
                vars: HashMap::from([("PATH".to_string(), "/opt/bin:/usr/bin".to_string())]),
            };
            Fx { dir, env }
        }

        fn config(&self, groups: &str) -> Config {
            let text = format!(
                r#"[daemon]
device_id = "pi-kitchen"
[broker]
url_env = "CELERY_BROKER_URL"
[celery]
app = "demo.celery_app"
command = "celery"
workdir = "."
env_file = "worker.env"
user = "nobody"
loglevel = "debug"
extra_args = ["-O", "fair"]
{groups}"#
            );
            let text = text.replace(
                "command = \"celery\"",
                &format!("command = \"{}\"", self.dir.path().join("celery").display()),
            );
            match load_str(&text, &self.dir.path().join("workers.toml"), &self.env) {
                Ok(l) => l.config,
                Err(e) => panic!("{e}"),
            }
        }
    }

    const GROUPS: &str = r#"[group.text]
queues = ["text_processing"]
concurrency = 2
instances = 2
extra_args = ["--max-tasks-per-child=100"]
env = { OMP_NUM_THREADS = "1" }
memory_max = "1G"
cpu_max = 1.5
[group.billing]
queues = ["payments", "webhooks"]
"#;

    #[test]
    fn build_gives_exact_argv_env_and_ids() {
        let fx = Fx::new();
        let config = fx.config(GROUPS);
        let plan = build(&config);
        assert_eq!(plan.device_id, "pi-kitchen");
        let ids: Vec<_> = plan.instances().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["text-1", "text-2", "billing-1"]);
        let t2 = &plan.groups[0].instances[1];
        assert_eq!(t2.group, "text");
        assert_eq!(t2.index, 2);
        assert_eq!(t2.node, "text-2@pi-kitchen");
        assert_eq!(t2.program, fx.dir.path().join("celery"));
        assert_eq!(
            t2.args,
            [
                "-A",
                "demo.celery_app",
                "worker",
                "-Q",
                "text_processing",
                "-c",
                "2",
                "-n",
                "text-2@pi-kitchen",
                "--loglevel=debug",
                "-O",
                "fair",
                "--max-tasks-per-child=100",
            ]
        );
        assert_eq!(t2.cwd, fx.dir.path());
        assert_eq!(t2.user.as_deref(), Some("nobody"));
        let expect: BTreeMap<String, String> = [
            ("PATH", "/opt/bin:/usr/bin"),
            ("LANG", "C.UTF-8"),
            ("CELERY_BROKER_URL", "redis://:hunter2@127.0.0.1:6379/0"),
            ("API_TOKEN", "abc123"),
            ("PLAIN", "hello world"),
            ("OMP_NUM_THREADS", "1"),
            ("PYTHONUNBUFFERED", "1"),
            ("CLEARIFY_INSTANCE", "text-2"),
            ("CLEARIFY_GROUP", "text"),
            ("CLEARIFY_NODE", "text-2@pi-kitchen"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            t2.env, expect,
            "group env overrides env_file; nothing else inherited"
        );
        let b1 = &plan.groups[1].instances[0];
        assert_eq!(&b1.args[3..5], ["-Q", "payments,webhooks"]);
        assert_eq!(b1.args.last().unwrap(), "fair");
        assert_eq!(b1.env["OMP_NUM_THREADS"], "4", "from env_file");
        assert_eq!(plan.groups[0].limits.memory_max, Some(1 << 30));
        assert_eq!(plan.groups[0].limits.cpu_max, Some(1.5));
        assert!(plan.groups[1].limits.is_empty());
        assert_eq!(plan.groups[1].queues, ["payments", "webhooks"]);
    }

    /// With autoscale the plan holds every instance the group may have
    /// (`max`), and how many of them run at start; `--check` says so.
    #[test]
    fn an_autoscaled_group_plans_max_instances_and_its_start_count() {
        let fx = Fx::new();
        let c = fx.config(
            "[group.warm]\nqueues = [\"w\"]\ninstances = 3\nautoscale = { min = 2, max = 5 }\n",
        );
        let plan = build(&c);
        let warm = plan.group("warm").unwrap();
        assert_eq!((warm.instances.len(), warm.start), (5, 3));
        assert_eq!(warm.instances[4].id, "warm-5");
        assert_eq!(warm.autoscale.map(|a| (a.min, a.max)), Some((2, 5)));
        let text = render_check(&plan, &c);
        assert!(
            text.contains("autoscale: 2..5 instances, 3 at start; one per 20 messages of backlog"),
            "{text}"
        );
    }

    #[test]
    fn list_command_args_precede_the_app() {
        let fx = Fx::new();
        let mut config = fx.config(GROUPS);
        config.celery.command_args = vec!["-m".into(), "celery".into()];
        let plan = build(&config);
        let spec = &plan.groups[1].instances[0];
        assert_eq!(
            &spec.args[..5],
            ["-m", "celery", "-A", "demo.celery_app", "worker"]
        );
    }

    #[test]
    fn worker_path_defaults_when_daemon_has_none() {
        let mut fx = Fx::new();
        fx.env.vars.clear();
        let plan = build(&fx.config(GROUPS));
        assert_eq!(
            plan.groups[0].instances[0].env["PATH"],
            "/usr/local/bin:/usr/bin:/bin"
        );
    }

    #[test]
    fn render_check_shows_exact_command_lines_and_hides_secrets() {
        let fx = Fx::new();
        let config = fx.config(&format!("{GROUPS}[group.odd]\nqueues = [\"q\"]\nextra_args = [\"--hostname-suffix=it's here\"]\nenv = {{ DB_PASSWORD = \"pw\" }}\n"));
        let plan = build(&config);
        let out = render_check(&plan, &config);
        let celery = fx.dir.path().join("celery").display().to_string();
        let line = format!(
            "    command: {celery} -A demo.celery_app worker -Q text_processing -c 2 -n text-1@pi-kitchen --loglevel=debug -O fair --max-tasks-per-child=100\n"
        );
        assert!(out.contains(&line), "{out}");
        assert!(out.contains(&format!("    command: {celery} -A demo.celery_app worker -Q payments,webhooks -c 1 -n billing-1@pi-kitchen --loglevel=debug -O fair\n")), "{out}");
        assert!(
            out.contains(r#"'--hostname-suffix=it'\''s here'"#),
            "shell-quoted: {out}"
        );
        assert!(out.contains(&format!("    cwd: {}\n", fx.dir.path().display())));
        assert!(out.contains("    user: nobody\n"));
        assert!(out.contains("group text: queues text_processing; 2 instance(s) × concurrency 2\n  limits: memory_max=1G cpu_max=1.5\n"), "{out}");
        assert!(out.contains("group billing: queues payments,webhooks; 1 instance(s) × concurrency 1\n  limits: none\n"), "{out}");
        assert!(
            out.contains("      CELERY_BROKER_URL=redis://:***@127.0.0.1:6379/0\n"),
            "{out}"
        );
        assert!(out.contains("      API_TOKEN=***\n"), "{out}");
        assert!(out.contains("      DB_PASSWORD=***\n"), "{out}");
        assert!(out.contains("      PLAIN='hello world'\n"), "{out}");
        assert!(
            out.contains("      CLEARIFY_NODE=text-1@pi-kitchen\n"),
            "{out}"
        );
        assert!(out.contains("broker: redis://:***@127.0.0.1:6379/0 (from $CELERY_BROKER_URL); wait_timeout infinite, on_timeout wait, check_interval 10s\n"), "{out}");
        assert!(
            !out.contains("hunter2") && !out.contains("abc123"),
            "a secret leaked: {out}"
        );
        assert!(
            out.ends_with(
                "summary: config ok: 3 group(s), 4 instance(s), 6 pool process(es) in total\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn multi_line_env_values_stay_on_one_line_of_the_report() {
        let fx = Fx::new();
        let config = fx.config(
            "[group.g]\nqueues = [\"q\"]\nenv = { PEM = \"a\\nsummary: fake\\tx'y\", URL = \"redis://:pw@h/0\\n\" }\n",
        );
        let out = render_check(&build(&config), &config);
        assert!(
            out.contains("      PEM=$'a\\nsummary: fake\\tx\\'y'\n"),
            "{out}"
        );
        assert!(out.contains("      URL=$'redis://:***@h/0\\n'\n"), "{out}");
        assert!(!out.contains("\nsummary: fake"), "{out}");
        assert!(!out.contains(":pw@"), "{out}");
    }

    #[test]
    fn shell_quoting_and_sizes() {
        assert_eq!(shell_quote("-Q"), "-Q");
        assert_eq!(shell_quote("a,b"), "a,b");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
    }

    #[test]
    fn diff_of_rebuilt_plans() {
        let fx = Fx::new();
        let old = build(&fx.config(GROUPS));
        assert_eq!(
            diff(&old, &build(&fx.config(GROUPS))),
            PlanDiff {
                unchanged: vec!["text".into(), "billing".into()],
                ..PlanDiff::default()
            }
        );
        let changed = GROUPS.replace("concurrency = 2", "concurrency = 3");
        let d = diff(&old, &build(&fx.config(&changed)));
        assert_eq!(d.changed, ["text"]);
        assert_eq!(d.unchanged, ["billing"]);
        assert!(d.added.is_empty() && d.removed.is_empty());
        let limits = GROUPS.replace("memory_max = \"1G\"", "memory_max = \"2G\"");
        assert_eq!(diff(&old, &build(&fx.config(&limits))).changed, ["text"]);
        let removed = GROUPS.split("[group.billing]").next().unwrap().to_string();
        let d = diff(&old, &build(&fx.config(&removed)));
        assert_eq!(
            (d.removed, d.unchanged),
            (vec!["billing".to_string()], vec!["text".to_string()])
        );
        let added = format!("{GROUPS}[group.mail]\nqueues = [\"mail\"]\n");
        let d = diff(&old, &build(&fx.config(&added)));
        assert_eq!(d.added, ["mail"]);
        assert_eq!(d.unchanged, ["text", "billing"]);
    }
}

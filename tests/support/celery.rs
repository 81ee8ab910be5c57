//! Real Celery for tests: the venv's python and `celery` (the .venv that
//! scripts/setup-deps.sh creates, or `$CLEARIFY_TEST_PYTHON`), the example
//! app in examples/demo_app, examples/send_tasks.py as the client, and a
//! daemon config that runs that app's workers.
//!
//! Include with `#[path = "support/celery.rs"] mod celery_support;` next to
//! `daemon_support` (and `redis_support`, for the broker). Everything here
//! fails loudly when the venv is missing: these tests never skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::daemon_support::Daemon;

/// How long a worker may take to come up and consume.
pub const CELERY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python; fails loudly when the venv is missing.
pub fn python() -> PathBuf {
    let p = std::env::var_os("CLEARIFY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup-deps.sh (creates .venv with Celery)",
        p.display()
    );
    p
}

pub fn celery() -> PathBuf {
    let c = python().parent().unwrap().join("celery");
    assert!(
        c.exists(),
        "{} is missing: run scripts/setup-deps.sh",
        c.display()
    );
    c
}

/// examples/send_tasks.py with `args`, talking to the broker `url`, not
/// started yet.
pub fn client_command(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("examples/send_tasks.py"))
        .args(args)
        .env("CELERY_BROKER_URL", url);
    cmd
}

/// Run examples/send_tasks.py with `args`; returns its stdout lines as JSON.
pub fn client(url: &str, args: &[&str]) -> Vec<Value> {
    String::from_utf8_lossy(&run_client(url, args))
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Run examples/send_tasks.py with `args`; its stdout, after asserting it
/// succeeded.
pub fn run_client(url: &str, args: &[&str]) -> Vec<u8> {
    let out = client_command(url, args)
        .output()
        .expect("run send_tasks.py");
    assert!(
        out.status.success(),
        "send_tasks.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Send one task without waiting; its id.
pub fn send(url: &str, task: &str, args: &str, queue: &str) -> String {
    String::from_utf8_lossy(&run_client(url, &["send", task, args, queue]))
        .trim()
        .to_string()
}

/// A daemon config (device id `ci`, check_interval 1s) whose `[celery]`
/// runs the demo app from the venv, with `groups` appended.
pub fn celery_config(url: &str, groups: &str) -> String {
    format!(
        r#"[daemon]
socket = "{{dir}}/control.sock"
device_id = "ci"

[broker]
url = "{url}"
check_interval = "1s"

[celery]
app = "demo.celery_app"
command = "{celery}"
workdir = "{workdir}"
user = "{{user}}"
extra_args = ["--without-mingle", "--without-gossip"]

[defaults]
stop_timeout = "60s"
stable_after = "5s"
env = {{ CELERY_BROKER_URL = "{url}" }}

{groups}
"#,
        celery = celery().display(),
        workdir = repo().join("examples/demo_app").display(),
    )
}

/// Wait until the worker's heartbeat shows in status: it consumes.
pub fn wait_consuming(d: &Daemon, id: &str) -> Value {
    d.wait_instance(id, "running with a heartbeat", CELERY_TIMEOUT, |i| {
        i["state"] == "running" && !i["heartbeat_age_secs"].is_null()
    })
}

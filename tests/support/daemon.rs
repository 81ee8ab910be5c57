//! The real `clearify-workerd` binary under test, with a config in a
//! tempdir, and the real `clearifyctl` to talk to it.
//!
//! Include with `#[path = "support/daemon.rs"] mod daemon_support;` (it
//! needs `redis_support` too, for the broker every config names).

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_clearify-workerd");
pub const CTL: &str = env!("CARGO_BIN_EXE_clearifyctl");

/// The fake `celery` executable.
pub fn fake_celery() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bin/fake-celery")
}

/// An unprivileged user for workers when the tests run as root.
pub const WORKER_USER: &str = "nobody";

/// Poll `f` every 20 ms until it returns Some, or panic after `timeout`
/// with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tempdir laid out for one daemon: workers.toml, worker.env, records/,
/// the socket and the daemon's stderr log.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
}

impl Daemon {
    /// A directory with `config` written as workers.toml. `{dir}`, `{celery}`,
    /// `{records}` and `{user}` in the text are replaced.
    pub fn new(config: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("clearify-daemon-")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let records = dir.path().join("records");
        fs::create_dir(&records).unwrap();
        // Workers run as an unprivileged user and write their records here.
        fs::set_permissions(&records, fs::Permissions::from_mode(0o1777)).unwrap();
        let d = Daemon { dir, child: None };
        d.write_config(config);
        d
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("control.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("workers.toml")
    }

    pub fn records(&self) -> PathBuf {
        self.path("records")
    }

    pub fn expand(&self, text: &str) -> String {
        text.replace("{dir}", &self.dir.path().display().to_string())
            .replace("{celery}", &fake_celery().display().to_string())
            .replace("{records}", &self.records().display().to_string())
            .replace("{user}", WORKER_USER)
    }

    pub fn write_config(&self, text: &str) {
        let text = self.expand(text);
        let tmp = self.path("workers.toml.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.config_path()).unwrap();
    }

    /// Start the daemon in the foreground (stderr to `daemon.log`) and wait
    /// until its socket answers.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    pub fn spawn(&mut self) {
        let cmd = self.command(Command::new(DAEMON));
        self.spawn_command(cmd);
    }

    /// `cmd` (the daemon binary, or a wrapper such as setpriv that execs
    /// it as its last arguments) with the daemon's arguments and
    /// environment, stdin from /dev/null and stdout/stderr to `daemon.log`.
    pub fn command(&self, mut cmd: Command) -> Command {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .unwrap();
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("--log-target")
            .arg("stderr")
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd
    }

    /// Start the daemon with a command built by [`Daemon::command`].
    pub fn spawn_command(&mut self, mut cmd: Command) {
        let child = cmd.spawn().expect("start clearify-workerd");
        self.child = Some(child);
    }

    /// Hand the directory (and everything in it) to `uid`, for a daemon
    /// that runs as that user.
    pub fn chown_to(&self, uid: u32, gid: u32) {
        for e in walk(self.dir.path()) {
            std::os::unix::fs::lchown(&e, Some(uid), Some(gid)).unwrap();
        }
    }

    pub fn wait_ready(&mut self) {
        let sock = self.socket();
        let start = Instant::now();
        loop {
            if sock.exists() && self.ctl(&["version"]).status.success() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("daemon exited early ({st}):\n{}", self.log());
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!("daemon did not come up:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("started").id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Run the real clearifyctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(CTL)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run clearifyctl")
    }

    /// `clearifyctl status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// The status entry of one instance.
    pub fn instance(&self, id: &str) -> Value {
        let s = self.status();
        for g in s["groups"].as_array().unwrap() {
            for i in g["instances"].as_array().unwrap() {
                if i["id"] == id {
                    return i.clone();
                }
            }
        }
        panic!("no instance {id} in status: {s}");
    }

    /// Poll `id`'s status entry every 20 ms until `done` holds for it and
    /// return it; after `timeout`, panic saying `id` is not `what`, with the
    /// last entry seen and the daemon's log.
    pub fn wait_instance(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let last = self.instance(id);
            if done(&last) {
                return last;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{id} not {what} after {timeout:?}; last: {last}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `id` is in `state` and return its status entry.
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        self.wait_instance(id, state, timeout, |i| i["state"] == state)
    }

    /// Wait until `id` was restarted: running again, under a pid other than
    /// `old_pid`. Returns its status entry (the new pid is its `pid`).
    pub fn wait_restarted(&self, id: &str, old_pid: u32, timeout: Duration) -> Value {
        self.wait_instance(
            id,
            &format!("restarted (running under a pid other than {old_pid})"),
            timeout,
            |i| i["state"] == "running" && i["pid"] != old_pid,
        )
    }

    /// The pid of a running instance, once it is running.
    pub fn running_pid(&self, id: &str) -> u32 {
        let i = self.wait_state(id, "running", Duration::from_secs(20));
        i["pid"].as_u64().expect("running has a pid") as u32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Wait for the daemon to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let child = self.child.as_mut().expect("started");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                panic!("daemon did not exit in {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The record files the fake celery wrote, for one instance: their pids
    /// in start order.
    pub fn recorded_pids(&self, id: &str) -> Vec<u32> {
        let mut v: Vec<(std::time::SystemTime, u32)> = fs::read_dir(self.records())
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let rest = name.strip_prefix(&format!("{id}."))?;
                let pid = rest.strip_suffix(".argv")?.parse().ok()?;
                Some((e.metadata().ok()?.modified().ok()?, pid))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, p)| p).collect()
    }

    pub fn record(&self, id: &str, pid: u32, kind: &str) -> String {
        fs::read_to_string(self.records().join(format!("{id}.{pid}.{kind}"))).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() && !p.is_symlink() {
        for e in fs::read_dir(p).unwrap().flatten() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// Live (not zombie) processes whose command line contains `needle` as
/// one whole argument.
pub fn processes_with_arg(needle: &str) -> Vec<i32> {
    live_pids()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == needle.as_bytes()))
        })
        .collect()
}

/// The pids of live (not zombie) processes.
fn live_pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            stat.rfind(')')
                .is_some_and(|i| !matches!(stat.get(i + 2..i + 3), Some("Z") | Some("X")))
        })
}

/// One `Name:\tvalue` field of /proc/PID/status.
pub fn proc_status_field(pid: u32, name: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
}

/// Write an executable shell script `name` in `dir`.
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Every live process whose environment carries the run marker of the
/// daemon with pid `daemon_pid` (`CLEARIFY_RUN=…@<pid>`).
pub fn processes_of_daemon(daemon_pid: u32) -> Vec<i32> {
    let suffix = format!("@{daemon_pid}");
    live_pids()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|kv| kv.starts_with(b"CLEARIFY_RUN=") && kv.ends_with(suffix.as_bytes()))
            })
        })
        .collect()
}

/// A minimal config for the fake celery: `groups` is TOML for the
/// `[group.*]` sections; the broker is `broker_url`.
pub fn fake_config(broker_url: &str, groups: &str) -> String {
    format!(
        r#"[daemon]
socket = "{{dir}}/control.sock"
device_id = "testdev"

[broker]
url = "{broker_url}"
check_interval = "1s"

[celery]
app = "demo.celery_app"
command = "{{celery}}"
workdir = "{{dir}}"
user = "{{user}}"

[defaults]
stop_timeout = "5s"
restart_delay = "50ms"
restart_delay_max = "2s"
stable_after = "2s"
env = {{ FAKE_RECORD_DIR = "{{records}}" }}

{groups}
"#
    )
}

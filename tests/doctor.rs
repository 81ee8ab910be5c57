//! `clearifyctl doctor`: the real binary against real things: a config in a
//! tempdir, a stand-in `celery` script, a real redis-server, the real
//! daemon, and this host's cgroups and journald.

#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clearify_workerd::cli::doctor::{self, Host, Status as Level};
use clearify_workerd::config;
use clearify_workerd::sys::cgroup::{self, Layout};
use redis_support::RedisServer;

const CTL: &str = env!("CARGO_BIN_EXE_clearifyctl");
const WORKER_USER: &str = "nobody";

/// A `celery` that records how `report` was called and exits 0; as a
/// worker it runs until SIGTERM (for the daemon case).
const CELERY_OK: &str = r#"#!/bin/sh
if [ "$3" = report ]; then
    { for a in "$@"; do printf 'arg %s\n' "$a"; done
      printf 'cwd %s\n' "$(pwd)"
      printf 'uid %s\n' "$(id -u)"
      printf 'group %s\n' "$CLEARIFY_GROUP"
      printf 'from_env_file %s\n' "$FROM_ENV_FILE"
    } > "$RECORD_DIR/report"
    echo "software -> celery:5.3.6 (emerald-rush) kombu:5.3.4 py:3.11.2"
    exit 0
fi
trap 'exit 0' TERM
while :; do sleep 1 & wait $!; done
"#;

/// A `celery` whose app does not import.
const CELERY_IMPORT_ERROR: &str = r#"#!/bin/sh
echo "Usage: celery [OPTIONS] COMMAND [ARGS]..."
echo "Traceback (most recent call last):" >&2
echo '  File "/usr/lib/python3/dist-packages/celery/app/utils.py", line 383, in find_app' >&2
echo "ImportError: cannot import name 'celery_app' from 'app' (/srv/app/app/__init__.py)" >&2
echo "Error: Invalid value for '-A' / '--app': Unable to load celery application." >&2
exit 1
"#;

/// A `celery` that never finishes `report` and leaves a child behind.
const CELERY_HANGS: &str = r#"#!/bin/sh
sleep 300 &
echo $! > "$RECORD_DIR/child"
echo $$ > "$RECORD_DIR/main"
echo "connecting to the broker..."
wait
"#;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    /// A tempdir with workers.toml (broker `broker_url`), `celery` (the
    /// given script), a workdir, a world-writable records dir and an
    /// env_file.
    fn new(broker_url: &str, require_limits: bool, script: &str) -> Case {
        let dir = tempfile::Builder::new()
            .prefix("clearify-doctor-")
            .tempdir()
            .expect("tempdir");
        // The worker user must reach the script and the workdir.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let case = Case { dir };
        fs::create_dir(case.workdir()).unwrap();
        fs::create_dir(case.records()).unwrap();
        fs::set_permissions(case.records(), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(case.path("worker.env"), "FROM_ENV_FILE=yes\n").unwrap();
        case.install_script(script);
        case.write_config(&format!(
            r#"[daemon]
socket = "{dir}/control.sock"
device_id = "testdev"
require_limits = {require_limits}

[broker]
url = "{broker_url}"
check_interval = "1s"

[celery]
app = "app"
command = "{dir}/celery"
workdir = "{dir}/work"
env_file = "{dir}/worker.env"
user = "{WORKER_USER}"

[defaults]
stop_timeout = "5s"
env = {{ RECORD_DIR = "{dir}/records" }}

[group.text]
queues = ["text_processing"]
"#,
            dir = case.dir.path().display()
        ));
        case
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn workdir(&self) -> PathBuf {
        self.path("work")
    }

    fn records(&self) -> PathBuf {
        self.path("records")
    }

    fn config_path(&self) -> PathBuf {
        self.path("workers.toml")
    }

    fn write_config(&self, text: &str) {
        fs::write(self.config_path(), text).unwrap();
    }

    /// Installs `script` as `celery` through a child process: a file
    /// written through an fd of this process could be inherited by a
    /// concurrent test's fork and make its exec fail with ETXTBSY.
    fn install_script(&self, script: &str) {
        let src = self.path("celery.src");
        fs::write(&src, script).unwrap();
        let st = Command::new("install")
            .args(["-m", "0755"])
            .arg(&src)
            .arg(self.path("celery"))
            .status()
            .expect("this test needs install (coreutils)");
        assert!(st.success(), "install celery script: {st}");
    }

    fn doctor(&self) -> Run {
        self.doctor_with(&[])
    }

    fn doctor_with(&self, extra: &[&str]) -> Run {
        let out = Command::new(CTL)
            .env_remove("CLEARIFY_SOCKET")
            .arg("--config")
            .arg(self.config_path())
            .args(extra)
            .arg("doctor")
            .stdin(Stdio::null())
            .output()
            .expect("run clearifyctl");
        Run::from(out)
    }
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The block of check `name`: its line, its detail continuation lines
    /// and its hint. Panics when there is no such check.
    fn check(&self, name: &str) -> (Level, String) {
        let mut lines = self.stdout.lines().peekable();
        while let Some(line) = lines.next() {
            let Some((level, rest)) = line.split_once("  ") else {
                continue;
            };
            let level = match level.trim() {
                "ok" => Level::Ok,
                "warn" => Level::Warn,
                "fail" => Level::Fail,
                _ => continue,
            };
            let rest = rest.trim_start();
            if !rest.starts_with(&format!("{name}  ")) {
                continue;
            }
            let mut block = line.to_string();
            while let Some(next) = lines.peek() {
                if !next.starts_with(' ') {
                    break;
                }
                block.push('\n');
                block.push_str(lines.next().unwrap());
            }
            return (level, block);
        }
        panic!("no check {name:?} in the output:\n{self:?}");
    }

    fn expect(&self, name: &str, level: Level) -> String {
        let (l, block) = self.check(name);
        assert_eq!(
            l, level,
            "{name}: {block}\n\nwhole output:\n{}",
            self.stdout
        );
        block
    }

    fn levels(&self) -> Vec<(String, Level)> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let (level, rest) = l.split_once("  ")?;
                let level = match level.trim() {
                    "ok" => Level::Ok,
                    "warn" => Level::Warn,
                    "fail" => Level::Fail,
                    _ => return None,
                };
                let name = rest.trim_start().split("  ").next()?.to_string();
                Some((name, level))
            })
            .collect()
    }
}

fn record(case: &Case, name: &str) -> String {
    fs::read_to_string(case.records().join(name)).unwrap_or_default()
}

/// What doctor must say about cgroups on this host, from the library's own
/// view: failures are warnings unless require_limits.
fn assert_cgroup_lines(run: &Run, require_limits: bool) {
    // With require_limits the library keeps each failure a failure.
    let host = doctor::cgroup_checks(
        &Host::new(Path::new("/nonexistent/workers.toml"), None),
        true,
    );
    assert!(!host.is_empty());
    for c in &host {
        let want = match (c.status, require_limits) {
            (Level::Fail, false) => Level::Warn,
            (l, _) => l,
        };
        let block = run.expect(&c.check, want);
        if want != Level::Ok {
            assert!(block.contains("\n      hint: "), "{block}");
        }
    }
    let v2 = run.check("cgroup v2").1;
    match cgroup::detect_layout(Path::new(cgroup::DEFAULT_ROOT)) {
        Layout::Hybrid => {
            assert!(v2.contains("hybrid layout"), "{v2}");
            assert!(
                v2.contains("hint: boot with the unified cgroup v2 hierarchy"),
                "the fix is the hint: {v2}"
            );
            let want = if require_limits {
                Level::Fail
            } else {
                Level::Warn
            };
            assert_eq!(run.check("cgroup v2").0, want);
            if require_limits {
                assert!(v2.contains("require_limits = true, so the daemon will not start"));
            } else {
                assert!(v2.contains("runs without limits"), "{v2}");
            }
        }
        Layout::Unified => assert_eq!(run.check("cgroup v2").0, Level::Ok, "{v2}"),
        other => assert!(
            v2.contains("cgroup v1") || v2.contains("not"),
            "{other:?}: {v2}"
        ),
    }
}

fn assert_journald_line(run: &Run) {
    let (level, block) = run.check("journald");
    if Path::new(doctor::JOURNAL_SOCKET).exists() {
        assert_eq!(level, Level::Ok, "{block}");
    } else {
        assert_eq!(level, Level::Warn, "{block}");
        assert!(
            block.contains("/run/systemd/journal/socket does not exist"),
            "{block}"
        );
    }
}

#[test]
fn a_valid_setup_passes_config_broker_and_celery_checks() {
    let redis = RedisServer::start_with(Some("s3cret-pw"));
    let case = Case::new(&redis.url(), false, CELERY_OK);
    let run = case.doctor();

    let cfg = run.expect("config", Level::Ok);
    assert!(cfg.contains("valid, 1 group(s), 1 instance(s)"), "{cfg}");
    let broker = run.expect("broker", Level::Ok);
    assert!(
        broker.contains(&format!(
            "redis://:***@127.0.0.1:{}/0 answers PING",
            redis.port()
        )),
        "{broker}"
    );
    assert!(
        !run.stdout.contains("s3cret-pw"),
        "password leaked: {run:?}"
    );
    let celery = run.expect("celery", Level::Ok);
    assert!(celery.contains("-A app report"), "{celery}");
    assert!(celery.contains("exit 0"), "{celery}");

    // It really ran: `-A app report`, in the workdir, with the worker env.
    let rec = record(&case, "report");
    assert_eq!(
        rec.lines()
            .filter(|l| l.starts_with("arg "))
            .collect::<Vec<_>>(),
        vec!["arg -A", "arg app", "arg report"],
        "{rec}"
    );
    assert!(
        rec.contains(&format!("cwd {}\n", case.workdir().display())),
        "{rec}"
    );
    assert!(rec.contains("group text\n"), "{rec}");
    assert!(rec.contains("from_env_file yes\n"), "{rec}");
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name(WORKER_USER).unwrap().unwrap();
        assert!(
            rec.contains(&format!("uid {}\n", nobody.uid)),
            "as the worker user: {rec}"
        );
        assert!(celery.contains("as user nobody"), "{celery}");
    }

    assert_cgroup_lines(&run, false);
    assert_journald_line(&run);
    // No daemon runs: that is the only failure.
    run.expect("control socket", Level::Fail);
    let fails: Vec<_> = run
        .levels()
        .into_iter()
        .filter(|(_, l)| *l == Level::Fail)
        .collect();
    assert_eq!(
        fails,
        vec![("control socket".to_string(), Level::Fail)],
        "{run:?}"
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
    assert!(
        run.stdout.ends_with(" warn, 1 fail\n"),
        "summary line: {run:?}"
    );
}

#[test]
fn require_limits_turns_missing_cgroup_v2_into_a_failure() {
    let redis = RedisServer::start();
    let case = Case::new(&redis.url(), true, CELERY_OK);
    let run = case.doctor();
    run.expect("config", Level::Ok);
    assert_cgroup_lines(&run, true);
    assert_eq!(run.code, 1, "{run:?}");
}

#[test]
fn a_broker_that_is_down_fails_with_the_reason() {
    let redis = RedisServer::new_stopped(None);
    let case = Case::new(&redis.url(), false, CELERY_OK);
    let run = case.doctor();
    let broker = run.expect("broker", Level::Fail);
    assert!(
        broker.contains(&format!("redis://127.0.0.1:{}/0: ", redis.port())),
        "{broker}"
    );
    assert!(broker.contains("refused"), "{broker}");
    assert!(
        broker.contains("hint: start Redis or fix [broker].url"),
        "{broker}"
    );
    assert_eq!(run.code, 1);
}

#[test]
fn a_broken_config_fails_with_every_diagnostic() {
    let case = Case::new("redis://127.0.0.1:1/0", false, CELERY_OK);
    let text = fs::read_to_string(case.config_path())
        .unwrap()
        .replace(
            "queues = [\"text_processing\"]",
            "queues = []\nconcurrency = \"two\"",
        )
        .replace("check_interval = \"1s\"", "check_interval = \"soon\"");
    case.write_config(&text);
    let run = case.doctor();
    let block = run.expect("config", Level::Fail);
    let path = case.config_path().display().to_string();
    let err = config::load(&case.config_path()).expect_err("the config is broken");
    assert!(err.error_count() >= 3, "{err}");
    assert!(block.contains(&format!("{} error(s) in {path}", err.error_count())));
    for d in err.diagnostics() {
        let line = d.to_string();
        assert!(line.starts_with(&format!("{path}:")), "{line}");
        assert!(block.contains(&line), "missing {line:?} in:\n{block}");
    }
    // The positions are file:line:col of the offending values.
    for at in [
        "8:18: error: broker.check_interval: invalid duration `soon`",
        "22:10: error: group.text.queues: must list at least one queue",
        "23:15: error: group.text.concurrency: expected an integer, found a string",
    ] {
        assert!(block.contains(&format!("{path}:{at}")), "{at}: {block}");
    }
    assert!(block.contains("hint: fix the errors above"), "{block}");
    assert!(block.contains(&format!("clearify-workerd --check --config {path}")));
    // The checks that need the config are skipped, with the reason.
    for name in ["broker", "celery"] {
        let b = run.expect(name, Level::Warn);
        assert!(
            b.contains(&format!("not checked: {path} is invalid")),
            "{b}"
        );
    }
    assert_eq!(run.code, 1);
}

#[test]
fn an_app_that_does_not_import_fails_with_its_output() {
    let redis = RedisServer::start();
    let case = Case::new(&redis.url(), false, CELERY_IMPORT_ERROR);
    let run = case.doctor();
    run.expect("broker", Level::Ok);
    let celery = run.expect("celery", Level::Fail);
    assert!(celery.contains("exit status 1"), "{celery}");
    assert!(
        celery.contains(
            "ImportError: cannot import name 'celery_app' from 'app' (/srv/app/app/__init__.py)"
        ),
        "{celery}"
    );
    assert!(
        celery.contains("Unable to load celery application"),
        "{celery}"
    );
    assert!(celery.contains("hint: check that [celery].app = \"app\" imports"));
    assert!(
        celery.contains(&format!(
            "run it by hand: cd {} && ",
            case.workdir().display()
        )),
        "{celery}"
    );
    assert_eq!(run.code, 1);
}

#[test]
fn without_a_daemon_the_socket_check_fails_with_the_systemctl_hint() {
    let case = Case::new("redis://127.0.0.1:1/0", false, CELERY_OK);
    let run = case.doctor();
    let sock = case.path("control.sock");
    let block = run.expect("control socket", Level::Fail);
    assert!(
        block.contains(&format!("{} does not exist", sock.display())),
        "socket from [daemon].socket: {block}"
    );
    assert!(
        block.contains(
            "hint: is clearify-workerd running? check with `systemctl status clearify-workerd`"
        ),
        "{block}"
    );
    assert!(
        !run.stdout.contains("daemon  "),
        "no daemon check without a connection: {run:?}"
    );
    // A stale socket file: nothing listens.
    let stale = case.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let run = case.doctor_with(&["--socket", stale.to_str().unwrap()]);
    let block = run.expect("control socket", Level::Fail);
    assert!(block.contains("cannot connect"), "{block}");
    assert!(block.contains("refused"), "{block}");
    assert!(
        block.contains("systemctl status clearify-workerd"),
        "{block}"
    );
    // Not a socket at all.
    let run = case.doctor_with(&["--socket", case.config_path().to_str().unwrap()]);
    let block = run.expect("control socket", Level::Fail);
    assert!(block.contains("is not a socket"), "{block}");
}

#[test]
fn with_the_real_daemon_the_socket_and_versions_are_ok() {
    let redis = RedisServer::start();
    let case = Case::new(&redis.url(), false, CELERY_OK);
    let sock = case.path("control.sock");
    let daemon = start_daemon(&case, &sock);

    let run = case.doctor();
    let block = run.expect("control socket", Level::Ok);
    assert!(
        block.contains(&format!("{} (srw-rw----, mode 0660, ", sock.display())),
        "{block}"
    );
    assert!(block.contains("connected"), "{block}");
    let d = run.expect("daemon", Level::Ok);
    assert!(
        d.contains(&format!(
            "clearify-workerd {} (protocol {}) answers; same version as clearifyctl",
            clearify_workerd::VERSION,
            clearify_workerd::control::protocol::PROTOCOL_VERSION
        )),
        "{d}"
    );
    run.expect("config", Level::Ok);
    run.expect("broker", Level::Ok);
    run.expect("celery", Level::Ok);
    assert_cgroup_lines(&run, false);
    assert_journald_line(&run);
    // Nothing fails: exit 0 (warnings are allowed).
    assert_eq!(run.code, 0, "{run:?}");
    drop(daemon);
}

/// Starts the real daemon on `case`'s config and waits until `socket`
/// exists.
fn start_daemon(case: &Case, socket: &Path) -> Guard {
    let log = fs::File::create(case.path("daemon.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_clearify-workerd"))
        .arg("--config")
        .arg(case.config_path())
        .args(["--log-target", "stderr"])
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start clearify-workerd");
    let daemon = Guard(child);
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the daemon did not create {}:\n{}",
            socket.display(),
            fs::read_to_string(case.path("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

#[test]
fn the_admin_socket_is_checked_for_its_mode_and_group() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root: the daemon creates admin.sock with the group nogroup"
    );
    let redis = RedisServer::start();
    let case = Case::new(&redis.url(), false, CELERY_OK);
    let text = fs::read_to_string(case.config_path()).unwrap().replace(
        "device_id = \"testdev\"",
        "device_id = \"testdev\"\nadmin_group = \"nogroup\"",
    );
    case.write_config(&text);
    let admin = case.path("admin.sock");
    let daemon = start_daemon(&case, &admin);
    let shown = admin.display();

    // As the daemon made it: mode 0660, group nogroup.
    let run = case.doctor();
    let block = run.expect("admin socket", Level::Ok);
    assert!(
        block.contains(&format!(
            "{shown} (srw-rw----, mode 0660, root:nogroup): for group nogroup ([daemon].admin_group)"
        )),
        "{block}"
    );
    assert_eq!(run.code, 0, "{run:?}");

    // Anyone may connect: a warning (changing requests still need the group).
    fs::set_permissions(&admin, fs::Permissions::from_mode(0o666)).unwrap();
    let block = case.doctor().expect("admin socket", Level::Warn);
    assert!(block.contains("mode 0666"), "{block}");
    assert!(block.contains("anyone may connect"), "{block}");
    assert!(
        block.contains("hint: something changed its mode; restart the daemon"),
        "{block}"
    );

    // The group may not connect.
    fs::set_permissions(&admin, fs::Permissions::from_mode(0o600)).unwrap();
    let run = case.doctor();
    let block = run.expect("admin socket", Level::Fail);
    assert!(
        block.contains("the group nogroup may not connect"),
        "{block}"
    );
    assert_eq!(run.code, 1, "{run:?}");

    // Another group.
    fs::set_permissions(&admin, fs::Permissions::from_mode(0o660)).unwrap();
    nix::unistd::chown(&admin, None, Some(nix::unistd::Gid::from_raw(0))).unwrap();
    let block = case.doctor().expect("admin socket", Level::Fail);
    assert!(
        block.contains("its group is root, not the admin group nogroup"),
        "{block}"
    );
    assert!(
        block.contains("hint: restart the daemon (systemctl restart clearify-workerd)"),
        "{block}"
    );

    // Gone, though the group exists: admins are locked out.
    fs::remove_file(&admin).unwrap();
    let run = case.doctor();
    let block = run.expect("admin socket", Level::Fail);
    assert!(
        block.contains(&format!(
            "{shown} does not exist, though group nogroup does"
        )),
        "{block}"
    );
    assert_eq!(run.code, 1, "{run:?}");
    drop(daemon);
}

/// Stops the daemon (TERM, then KILL) when the test ends, even on panic.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_hanging_report_times_out_and_its_process_group_is_killed() {
    let case = Case::new("redis://127.0.0.1:1/0", false, CELERY_HANGS);
    let loaded = config::load(&case.config_path()).unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let check = doctor::celery_check(&loaded.config, Duration::from_secs(1));
    assert!(start.elapsed() < Duration::from_secs(10), "{check:?}");
    assert_eq!(check.status, Level::Fail, "{check:?}");
    assert!(
        check.detail.contains("timed out after 1s; killed it"),
        "{check:?}"
    );
    assert!(
        check.detail.contains("connecting to the broker..."),
        "its output: {check:?}"
    );
    let child: i32 = record(&case, "child").trim().parse().expect("child pid");
    let gone = |pid: i32| match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let i = s.rfind(')').unwrap();
            matches!(&s[i + 2..i + 3], "Z" | "X")
        }
        Err(_) => true,
    };
    let t = Instant::now();
    while !gone(child) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the report's child {child} survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_unreadable_config_is_a_warning_and_skips_broker_and_celery() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root, to run clearifyctl as {WORKER_USER} with setpriv"
    );
    let case = Case::new("redis://127.0.0.1:1/0", false, CELERY_OK);
    fs::set_permissions(case.config_path(), fs::Permissions::from_mode(0o600)).unwrap();
    // A copy of the binary the worker user can run, whatever the target
    // dir's mode (installed by a child process, see install_script).
    let bin = case.path("clearifyctl");
    let st = Command::new("install")
        .args(["-m", "0755", CTL])
        .arg(&bin)
        .status()
        .expect("this test needs install (coreutils)");
    assert!(st.success());
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            WORKER_USER,
            "--regid",
            "nogroup",
            "--clear-groups",
            "--",
        ])
        .arg(&bin)
        .env_remove("CLEARIFY_SOCKET")
        .arg("--config")
        .arg(case.config_path())
        .arg("doctor")
        .stdin(Stdio::null())
        .output()
        .expect("this test needs setpriv (util-linux)");
    let run = Run::from(out);
    let cfg = run.expect("config", Level::Warn);
    assert!(cfg.contains("Permission denied"), "{cfg}");
    assert!(cfg.contains("(as user nobody)"), "{cfg}");
    assert!(cfg.contains("hint: run doctor as root"), "{cfg}");
    for name in ["broker", "celery"] {
        let b = run.expect(name, Level::Warn);
        assert!(b.contains("is not readable by this user"), "{b}");
    }
    // The socket comes from the default (the config is unreadable), and it says so.
    let sock = run.expect("control socket", Level::Fail);
    assert!(
        sock.contains(&format!(
            "{} does not exist (the default: [daemon].socket could not be read from {})",
            clearify_workerd::config::DEFAULT_SOCKET,
            case.config_path().display()
        )),
        "{sock}"
    );
    assert_eq!(run.code, 1, "{run:?}");
}

/// The Python with Celery: `$CLEARIFY_TEST_PYTHON` or `<repo>/.venv/bin/python`
/// (as in tests/broker.rs).
fn python() -> PathBuf {
    let p = std::env::var_os("CLEARIFY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        p.exists(),
        "Python with Celery not found at {} (set CLEARIFY_TEST_PYTHON, or create it: \
         python3 -m venv .venv && .venv/bin/pip install 'celery[redis]==5.*')",
        p.display()
    );
    p
}

/// A config running the real Celery on the example app, as `python -m celery`.
fn real_celery_case(redis: &RedisServer, app: &str) -> Case {
    let case = Case::new(&redis.url(), false, CELERY_OK);
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo_app");
    fs::write(
        case.path("worker.env"),
        format!("CELERY_BROKER_URL={}\n", redis.url()),
    )
    .unwrap();
    let text = fs::read_to_string(case.config_path())
        .unwrap()
        .replace(
            &format!("command = \"{}/celery\"", case.dir.path().display()),
            &format!("command = [\"{}\", \"-m\", \"celery\"]", python().display()),
        )
        .replace("app = \"app\"", &format!("app = \"{app}\""))
        .replace(
            &format!("workdir = \"{}/work\"", case.dir.path().display()),
            &format!("workdir = \"{}\"", demo.display()),
        );
    case.write_config(&text);
    case
}

#[test]
fn the_real_celery_reports_on_the_example_app() {
    let redis = RedisServer::start();
    let case = real_celery_case(&redis, "demo.celery_app");
    let run = case.doctor();
    run.expect("config", Level::Ok);
    let celery = run.expect("celery", Level::Ok);
    assert!(
        celery.contains(&format!(
            "`{} -m celery -A demo.celery_app report`",
            python().display()
        )),
        "{celery}"
    );
    assert!(celery.contains("(app demo.celery_app imports)"), "{celery}");
}

#[test]
fn the_real_celery_fails_on_an_app_that_does_not_import() {
    let redis = RedisServer::start();
    let case = real_celery_case(&redis, "demo.no_such_module");
    let run = case.doctor();
    run.expect("config", Level::Ok);
    let celery = run.expect("celery", Level::Fail);
    assert!(celery.contains("exit status 2"), "{celery}");
    for line in [
        "Unable to load celery application.",
        "The module demo.no_such_module was not found.",
    ] {
        assert!(
            celery.lines().any(|l| l.trim() == line),
            "Celery's own error is shown: {celery}"
        );
    }
}

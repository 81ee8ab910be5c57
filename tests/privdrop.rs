//! The one privilege drop (`sys::privdrop`): the worker spawn and doctor's
//! celery check start their programs as the same user, with the same
//! groups and no capabilities. Real processes; needs root (the tests drop
//! to `nobody`, and start doctor under another uid with `setpriv`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clearify_workerd::cli::doctor::{self, Status};
use clearify_workerd::{config, plan, sys};

const CTL: &str = env!("CARGO_BIN_EXE_clearifyctl");
const WORKER_USER: &str = "nobody";
/// The unprivileged uid doctor runs as in the capability test (unused by
/// the other test files).
const DOCTOR_UID: u32 = 47_813;

/// A `celery` that records its credentials from /proc: as `report` (the
/// doctor's call) in `$RECORD_DIR/doctor`, else (a worker) in
/// `$RECORD_DIR/worker`.
const CELERY_RECORDS_IDS: &str = r#"#!/bin/sh
case " $* " in
    *" report "*) who=doctor ;;
    *) who=worker ;;
esac
grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapAmb):' /proc/$$/status > "$RECORD_DIR/$who.tmp"
mv "$RECORD_DIR/$who.tmp" "$RECORD_DIR/$who"
echo "software -> celery:5.3.6"
"#;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the privilege drop tests need root (they drop to {WORKER_USER}); run the tests as root"
    );
}

/// A tempdir the worker user can reach, with the script as `celery`, a
/// workdir, a world-writable records dir and a config that runs the
/// script as `WORKER_USER`.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::Builder::new()
            .prefix("clearify-privdrop-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let case = Case { dir };
        fs::create_dir(case.path("work")).unwrap();
        fs::create_dir(case.path("records")).unwrap();
        fs::set_permissions(case.path("records"), fs::Permissions::from_mode(0o1777)).unwrap();
        // Installed by a child process: a file this (multi-threaded) test
        // process opened for writing could be inherited by a concurrent
        // fork and make the exec fail with ETXTBSY.
        fs::write(case.path("celery.src"), CELERY_RECORDS_IDS).unwrap();
        case.install(&case.path("celery.src"), "celery");
        fs::write(
            case.path("workers.toml"),
            format!(
                r#"[daemon]
socket = "{dir}/control.sock"
device_id = "testdev"

[broker]
url = "redis://127.0.0.1:1/0"

[celery]
app = "app"
command = "{dir}/celery"
workdir = "{dir}/work"
user = "{WORKER_USER}"

[defaults]
env = {{ RECORD_DIR = "{dir}/records" }}

[group.g]
queues = ["q"]
"#,
                dir = case.dir.path().display()
            ),
        )
        .unwrap();
        case
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn install(&self, from: &Path, name: &str) -> PathBuf {
        let to = self.path(name);
        let st = Command::new("install")
            .args(["-m", "0755"])
            .arg(from)
            .arg(&to)
            .status()
            .expect("this test needs install (coreutils)");
        assert!(st.success(), "install {name}: {st}");
        to
    }

    fn config(&self) -> config::Config {
        config::load(&self.path("workers.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
            .config
    }

    /// The credentials `who` (doctor or worker) recorded.
    fn record(&self, who: &str) -> String {
        let path = self.path("records").join(who);
        let start = Instant::now();
        loop {
            if let Ok(s) = fs::read_to_string(&path) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{who} recorded nothing in {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The value of `field` in a /proc status record.
fn field<'a>(record: &'a str, field: &str) -> &'a str {
    record
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {record}"))
        .trim()
}

/// The uid, gid and groups of `WORKER_USER`, no capabilities: what both
/// paths must give.
fn assert_dropped_to_the_worker_user(who: &str, record: &str) {
    let user = nix::unistd::User::from_name(WORKER_USER).unwrap().unwrap();
    let uid = user.uid.to_string();
    let gid = user.gid.to_string();
    for (name, want) in [("Uid", &uid), ("Gid", &gid)] {
        let got = field(record, name);
        assert!(
            got.split_whitespace().all(|v| v == want.as_str()),
            "{who}: {name} {got}, want {want} (real, effective, saved, fs)"
        );
    }
    let name = std::ffi::CString::new(WORKER_USER).unwrap();
    let mut want: Vec<String> = nix::unistd::getgrouplist(&name, user.gid)
        .unwrap()
        .iter()
        .map(|g| g.to_string())
        .collect();
    want.sort();
    want.dedup();
    let mut got: Vec<String> = field(record, "Groups")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    got.sort();
    assert_eq!(got, want, "{who}: supplementary groups");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(record, cap), "0000000000000000", "{who}: {cap}");
    }
}

#[test]
fn the_doctor_and_the_worker_spawn_drop_to_the_same_ids_without_capabilities() {
    require_root();
    let case = Case::new();
    let config = case.config();

    // The doctor's path: its celery check.
    let check = doctor::celery_check(&config, Duration::from_secs(10));
    assert_eq!(check.status, Status::Ok, "{check:?}");
    let by_doctor = case.record("doctor");

    // The worker's path: the daemon's spawn, on a runtime (its pipes are
    // tokio's).
    let built = plan::build(&config);
    let spec = built.instances().next().expect("one instance");
    let run_as = sys::privdrop::resolve_user(spec.user.as_deref())
        .unwrap()
        .expect("root drops to the worker user");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spawned = rt
        .block_on(async { sys::process::spawn(spec, 1, Some(&run_as), None) })
        .expect("spawn the worker");
    let by_worker = case.record("worker");
    // The spawn leaves reaping to the daemon's reaper: here, the test.
    let pid = nix::unistd::Pid::from_raw(spawned.pid as i32);
    nix::sys::wait::waitpid(pid, None).unwrap();
    drop(spawned);

    assert_dropped_to_the_worker_user("doctor", &by_doctor);
    assert_dropped_to_the_worker_user("worker", &by_worker);
    assert_eq!(by_doctor, by_worker, "the same ids and capabilities");
}

/// Ambient capabilities survive a setuid between two non-root uids: a
/// doctor run by an unprivileged user with ambient CAP_SETUID, CAP_SETGID
/// and CAP_KILL (as the packaged daemon's user may have) must not hand them
/// to the celery command it runs as the worker user.
#[test]
fn a_doctor_with_ambient_capabilities_runs_celery_without_any() {
    require_root();
    let case = Case::new();
    // A copy of the binary the other uid can run, whatever the target
    // dir's mode.
    let bin = case.install(Path::new(CTL), "clearifyctl");
    let caps = "+setuid,+setgid,+kill";
    let out = Command::new("setpriv")
        .args([
            format!("--reuid={DOCTOR_UID}"),
            format!("--regid={DOCTOR_UID}"),
            "--clear-groups".to_string(),
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
            "--".to_string(),
        ])
        .arg(&bin)
        .env_remove("CLEARIFY_SOCKET")
        .arg("--config")
        .arg(case.path("workers.toml"))
        .arg("doctor")
        .stdin(Stdio::null())
        .output()
        .expect("this test needs setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let record = case.record("doctor");
    assert_dropped_to_the_worker_user("doctor", &record);
    assert!(stdout.contains("celery"), "{stdout}");
}

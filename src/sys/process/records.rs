//! Records of the runs a daemon started, one file per instance, so that
//! the next daemon can find the workers of one that died without stopping
//! them (SIGKILL, panic, OOM kill) and stop them before it starts its own.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{error, info, warn};

/// The longest stop_timeout a record may ask for at start-up.
const MAX_STOP_WAIT: Duration = Duration::from_secs(3600);
/// How long the final SIGKILL of an old run may take.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// The largest record file read.
const MAX_RECORD: u64 = 4096;

/// The default state directory: `workers/` next to the control socket
/// (`/run/clearify-workerd/workers` with the packaged config).
pub fn default_dir(socket: &Path) -> PathBuf {
    socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("workers")
}

/// One run of one instance, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub instance: String,
    pub node: String,
    pub pid: i32,
    /// /proc/PID/stat start time of `pid`.
    pub start: u64,
    pub uid: u32,
    pub stop_timeout: Duration,
    /// The kernel's boot id when the run started: start times count
    /// from boot, so a record from before a reboot names nothing.
    pub boot_id: String,
}

/// This boot's id (/proc/sys/kernel/random/boot_id).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl RunRecord {
    #[cfg(test)]
    pub(crate) fn render_for_test(&self) -> String {
        self.render()
    }

    fn render(&self) -> String {
        format!(
            "instance={}\nnode={}\npid={}\nstart={}\nuid={}\nstop_timeout_ms={}\nboot_id={}\n",
            self.instance,
            self.node,
            self.pid,
            self.start,
            self.uid,
            self.stop_timeout.as_millis(),
            self.boot_id
        )
    }

    /// Parse a record; `None` for anything malformed.
    pub fn parse(text: &str) -> Option<RunRecord> {
        let mut instance = None;
        let mut node = None;
        let mut pid = None;
        let mut start = None;
        let mut uid = None;
        let mut stop = None;
        let mut boot = None;
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            match k {
                "instance" if valid_name(v) => instance = Some(v.to_string()),
                "node" => node = Some(v.to_string()),
                "pid" => pid = v.parse::<i32>().ok().filter(|p| *p > 1),
                "start" => start = v.parse::<u64>().ok(),
                "uid" => uid = v.parse::<u32>().ok(),
                "stop_timeout_ms" => stop = v.parse::<u64>().ok().map(Duration::from_millis),
                "boot_id" => boot = Some(v.to_string()),
                _ => {}
            }
        }
        Some(RunRecord {
            instance: instance?,
            node: node?,
            pid: pid?,
            start: start?,
            uid: uid?,
            stop_timeout: stop?.min(MAX_STOP_WAIT),
            boot_id: boot?,
        })
    }
}

/// An instance id usable as a file name.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// The state directory, owned by the daemon's uid and closed to others.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// Create (mode 0700) or open the directory. It must be a real
    /// directory owned by the daemon's uid and not writable by others.
    pub fn open(dir: &Path) -> io::Result<Records> {
        match fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
        {
            Ok(()) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create the state directory {}: {e}", dir.display()),
                ));
            }
        }
        let meta = fs::symlink_metadata(dir)?;
        let euid = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "state directory {}: must be a directory owned by uid {euid} and writable by it only",
                    dir.display()
                ),
            ));
        }
        if meta.mode() & 0o077 != 0 {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
        Ok(Records {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, instance: &str) -> Option<PathBuf> {
        valid_name(instance).then(|| self.dir.join(format!("{instance}.run")))
    }

    /// Write (atomically: a temporary file, then rename) the record of
    /// a run that was just started.
    pub fn write(&self, r: &RunRecord) -> io::Result<()> {
        let path = self
            .path_of(&r.instance)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid instance name"))?;
        let tmp = self.dir.join(format!(".{}.tmp", r.instance));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(r.render().as_bytes())?;
        drop(f);
        fs::rename(&tmp, &path)
    }

    /// Remove the record of `instance` if it still names `pid`.
    pub fn remove(&self, instance: &str, pid: u32) {
        let Some(path) = self.path_of(instance) else {
            return;
        };
        if read_record(&path).is_some_and(|r| r.pid as u32 == pid) {
            let _ = fs::remove_file(&path);
        }
    }

    /// Every record in the directory, with its path. Malformed files
    /// are removed with a warning.
    pub fn load(&self) -> Vec<(PathBuf, RunRecord)> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return out;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".run") {
                continue;
            }
            match read_record(&path) {
                Some(r) => out.push((path, r)),
                None => {
                    warn!(path = %path.display(), "ignoring the malformed run record {}", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        }
        out
    }
}

fn read_record(path: &Path) -> Option<RunRecord> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut text = String::new();
    io::Read::read_to_string(&mut io::Read::take(f, MAX_RECORD), &mut text).ok()?;
    RunRecord::parse(&text)
}

/// Whether the process a record names is still that process: same
/// start time (a reused pid has another) and same real uid.
fn is_live(r: &RunRecord) -> bool {
    r.pid != std::process::id() as i32
        && r.boot_id == boot_id()
        && super::procfs::start_time(r.pid) == Some(r.start)
        && super::procfs::real_uid(r.pid) == Some(r.uid)
        && super::procfs::read_stat(r.pid).is_some_and(|s| !s.zombie)
}

/// At start-up, before any worker of this daemon starts: stop the
/// workers a previous daemon left running, warmly, like a stop: SIGTERM
/// to the main process, up to its stop_timeout to exit, then SIGKILL to
/// its whole tree (process group, session, descendants). All at once;
/// returns when none is left. Records are removed once handled.
/// `extend` asks the service manager for the time the wait may take.
pub async fn stop_previous(records: &Records, extend: impl Fn(Duration)) {
    let mut runs = Vec::new();
    for (path, r) in records.load() {
        if is_live(&r) {
            info!(
                instance = %r.instance, pid = r.pid, node = %r.node,
                "{}: worker pid {} ({}) left by a previous run of the daemon; stopping it (SIGTERM, warm shutdown) before starting workers",
                r.instance, r.pid, r.node
            );
            if let Err(e) = kill(Pid::from_raw(r.pid), Signal::SIGTERM) {
                warn!(instance = %r.instance, pid = r.pid, "{}: cannot signal pid {}: {e}", r.instance, r.pid);
            }
            runs.push((path, r, false));
        } else {
            let _ = fs::remove_file(&path);
        }
    }
    if runs.is_empty() {
        return;
    }
    let longest = runs
        .iter()
        .map(|(_, r, _)| r.stop_timeout)
        .max()
        .unwrap_or_default();
    extend(longest + KILL_WAIT + Duration::from_secs(5));
    let start = Instant::now();
    let mut killed = 0;
    loop {
        let mut waiting = false;
        for (_, r, done) in runs.iter_mut().filter(|(_, _, d)| !*d) {
            if is_live(r) && start.elapsed() < r.stop_timeout {
                waiting = true;
                continue;
            }
            if is_live(r) {
                warn!(instance = %r.instance, pid = r.pid, "{}: the old worker did not stop within {:?}; SIGKILL", r.instance, r.stop_timeout);
            }
            *done = true;
        }
        if !waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL what is left of every old run: its process group and
    // session (the main is its leader) and their descendants.
    let kill_start = Instant::now();
    for (path, r, _) in &runs {
        loop {
            // Never the group or session of a process that reuses the
            // old main's pid (see group_id_is_the_runs).
            if !super::kill::group_id_is_the_runs(r.pid, |_| is_live(r)) {
                break;
            }
            let _ = kill(Pid::from_raw(-r.pid), Signal::SIGKILL);
            let mut members = super::procfs::session_tree(r.pid);
            if is_live(r) && !members.contains(&r.pid) {
                members.push(r.pid);
            }
            if members.is_empty() {
                break;
            }
            let mut refused = Vec::new();
            super::kill::sigkill_all(&members, &mut refused);
            killed += members.len();
            if !refused.is_empty() {
                error!(instance = %r.instance, ?refused, "{}: not allowed to kill pids {refused:?} of the old run (EPERM: the daemon needs CAP_KILL)", r.instance);
            }
            if kill_start.elapsed() >= KILL_WAIT {
                error!(instance = %r.instance, "{}: {} processes of the old run survived SIGKILL", r.instance, members.len());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = fs::remove_file(path);
    }
    info!(
        runs = runs.len(),
        "stopped {} worker(s) left by a previous run ({} process(es) killed after the warm stop)",
        runs.len(),
        killed
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_records_round_trip_and_reject_malformed_text() {
        let r = RunRecord {
            instance: "text-1".into(),
            node: "text-1@dev".into(),
            pid: 4242,
            start: 987_654,
            uid: 65534,
            stop_timeout: Duration::from_secs(30),
            boot_id: "b1".into(),
        };
        assert_eq!(RunRecord::parse(&r.render_for_test()), Some(r.clone()));
        let text = r.render_for_test();
        for (from, to) in [
            ("pid=4242", "pid=1"),
            ("pid=4242", "pid=-5"),
            ("pid=4242", "pid=x"),
            ("instance=text-1", "instance=../etc"),
            ("start=987654", "start="),
            ("boot_id=b1\n", ""),
        ] {
            assert_eq!(
                RunRecord::parse(&text.replace(from, to)),
                None,
                "{from} -> {to}"
            );
        }
        assert_eq!(RunRecord::parse("garbage"), None);
        // A stop_timeout is bounded.
        let long = text.replace(
            "stop_timeout_ms=30000",
            "stop_timeout_ms=18446744073709551615",
        );
        assert_eq!(
            RunRecord::parse(&long).map(|r| r.stop_timeout),
            Some(Duration::from_secs(3600))
        );
    }
}

//! Process effects: spawn a worker, signal it, kill everything it left
//! behind, and reap every child.
//!
//! * **Spawn.** A worker starts in its own session (`setsid`), so terminal
//!   signals never reach it and its main pid is also its process group and
//!   session id. It joins its cgroup leaf *before* exec (a write of "0" to an
//!   fd of the leaf's `cgroup.procs`, opened beforehand), and drops to the
//!   worker user (as root, or with CAP_SETUID and CAP_SETGID). Everything `pre_exec` needs is
//!   prepared before the fork: it only makes system calls. The worker is the
//!   child subreaper of its own tree, so its descendants' orphans stay
//!   below it while it lives (a worker that never reaps them keeps them as
//!   zombies until it exits).
//! * **Reap.** One reaper owns all reaping: on SIGCHLD it calls
//!   `waitpid(-1, WNOHANG)` until nothing is left and reports every exit. The
//!   daemon is a child subreaper, so orphaned pool children come back to it
//!   and are reaped there too. Nothing else in the daemon may wait for
//!   children (no `tokio::process`).
//! * **Kill tree.** The last step of a stop, and the clean-up after a crash:
//!   SIGKILL to the run's process group, to its session, to every descendant
//!   of those, and to every orphan that came back to the daemon and belongs
//!   to no live run (a grandchild that called setsid and dropped its
//!   environment is one), until none is left. Nothing is read from the
//!   processes' environment. The kill is async and starts no thread or
//!   process, so it works when none can be started. At exit the daemon
//!   kills every descendant it still has.
//! * **Capabilities and fds.** A worker starts with empty capability sets
//!   (ambient cleared, then capset to zero) and with only fds 0, 1 and 2
//!   (everything else close-on-exec).
//! * **Records.** Each run is recorded (pid, start time, uid, node) in the
//!   state directory, so a daemon started after one that died can stop the
//!   workers it left before starting its own ([`records`]).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::model::ExitReason;
use crate::plan::InstanceSpec;
use crate::sys::accounts::Accounts;

/// The environment variable that marks every process of one run of an
/// instance: `<instance id>.<generation>@<daemon pid>`. Informational (a
/// process can drop it): the kill path does not rely on it.
pub const RUN_MARKER: &str = "CLEARIFY_RUN";

/// The user a worker runs as, resolved once before spawning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Why the daemon cannot run workers as the configured user.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "clearify-workerd runs as root but [celery].user is not set: workers never run as root; set user = \"clearify-worker\" (or another unprivileged user) in [celery]"
    )]
    NoUser,
    #[error("[celery].user = {0:?}: no such user")]
    Unknown(String),
    #[error("[celery].user = {0:?} is root (uid 0): workers never run as root")]
    Root(String),
    #[error("looking up user {0:?}: {1}")]
    Lookup(String, nix::Error),
    #[error(
        "[celery].user = {name:?} (uid {uid}): the daemon runs as uid {daemon_uid} without {missing}, so it cannot {what}; give it the capabilities (systemd: AmbientCapabilities=CAP_SETUID CAP_SETGID CAP_KILL), run it as root, or set [celery].user to the daemon's own user"
    )]
    MissingCaps {
        name: String,
        uid: u32,
        daemon_uid: u32,
        missing: String,
        what: &'static str,
    },
}

/// Capability numbers (linux/capability.h).
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;

/// The daemon's effective capability set, from /proc/self/status (0 when
/// it cannot be read: then nothing is assumed).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Decide who workers run as.
///
/// * `user` set to another uid than the daemon's: workers drop to it. That
///   takes root, or CAP_SETUID and CAP_SETGID (and CAP_KILL, to signal
///   them); without those, a start-up error names the key and what is
///   missing.
/// * `user` set to the daemon's own uid, or not set while the daemon is not
///   root: workers run as the daemon's user (no switch is needed).
/// * Never root: `user` naming uid 0 is an error, and so is no `user` for a
///   daemon that runs as root.
///
/// The user and its groups come from /etc/passwd and /etc/group when they
/// have it, else from NSS ([`Accounts`]).
pub fn resolve_user(user: Option<&str>) -> Result<Option<RunAs>, UserError> {
    let euid = nix::unistd::geteuid();
    let Some(name) = user else {
        return if euid.is_root() {
            Err(UserError::NoUser)
        } else {
            Ok(None)
        };
    };
    let accounts = Accounts::system();
    let u = accounts
        .user_by_name(name)
        .map_err(|e| UserError::Lookup(name.to_string(), e))?
        .ok_or_else(|| UserError::Unknown(name.to_string()))?;
    if u.uid.is_root() {
        return Err(UserError::Root(name.to_string()));
    }
    if u.uid == euid {
        return Ok(None);
    }
    if !euid.is_root() {
        let caps = effective_caps();
        let lacks = |cap: u32| caps & (1u64 << cap) == 0;
        let mut missing = Vec::new();
        for (cap, cname) in [
            (CAP_SETUID, "CAP_SETUID"),
            (CAP_SETGID, "CAP_SETGID"),
            (CAP_KILL, "CAP_KILL"),
        ] {
            if lacks(cap) {
                missing.push(cname);
            }
        }
        if !missing.is_empty() {
            let what = if lacks(CAP_SETUID) || lacks(CAP_SETGID) {
                "switch workers to that user"
            } else {
                "signal workers of another user"
            };
            return Err(UserError::MissingCaps {
                name: name.to_string(),
                uid: u.uid.as_raw(),
                daemon_uid: euid.as_raw(),
                missing: missing.join(", "),
                what,
            });
        }
    }
    let groups = accounts
        .groups_of(&u)
        .map_err(|e| UserError::Lookup(name.to_string(), e))?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    Ok(Some(RunAs {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        groups,
        home: u.home.to_string_lossy().into_owned(),
    }))
}

/// A worker that was started.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// The marker value of one run.
pub fn run_marker(id: &str, generation: u64) -> String {
    format!("{id}.{generation}@{}", std::process::id())
}

/// Start a worker for `spec`. `cgroup_procs` is an open, writable fd of the
/// cgroup leaf's `cgroup.procs`, which the child joins before exec.
pub fn spawn(
    spec: &InstanceSpec,
    generation: u64,
    run_as: Option<&RunAs>,
    cgroup_procs: Option<RawFd>,
) -> io::Result<Spawned> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .env(RUN_MARKER, run_marker(&spec.id, generation))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ids = run_as.map(|u| {
        cmd.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
        (
            u.uid as libc::uid_t,
            u.gid as libc::gid_t,
            u.groups
                .iter()
                .map(|g| *g as libc::gid_t)
                .collect::<Vec<_>>(),
        )
    });
    // Everything the closure needs, prepared here: after the fork only
    // system calls on this data are allowed.
    let fd_limit = fd_scan_limit();
    // SAFETY: the closure runs between fork and exec. It only makes system
    // calls (setsid, write, setgroups, setgid, setuid, prctl, capset,
    // close_range, fcntl, getuid) on data prepared above; it allocates
    // nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = cgroup_procs {
                crate::sys::cgroup::join_cgroup_fd(fd)?;
            }
            // The worker is the subreaper of its own tree (this survives
            // exec): while it lives, whatever its descendants orphan stays
            // below it, so it is found and killed with its run; only once
            // it has died do they come back to the daemon.
            if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &ids
                && (libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0)
            {
                return Err(io::Error::last_os_error());
            }
            // Never a worker as root, whatever the daemon was told.
            if libc::getuid() == 0 || libc::geteuid() == 0 {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            drop_all_capabilities()?;
            close_inherited_fds(fd_limit);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", spec.program.display())))?;
    let pid = child.id();
    let stdout: OwnedFd = child.stdout.take().expect("piped").into();
    let stderr: OwnedFd = child.stderr.take().expect("piped").into();
    // The Child is dropped without waiting: the reaper owns reaping.
    drop(child);
    Ok(Spawned {
        pid,
        stdout: pipe::Receiver::from_owned_fd(stdout)?,
        stderr: pipe::Receiver::from_owned_fd(stderr)?,
    })
}

/// The highest fd + 1 that [`close_inherited_fds`] walks when the kernel
/// has no `close_range`: the soft RLIMIT_NOFILE, at most 65536.
fn fd_scan_limit() -> i32 {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => soft.min(65_536) as i32,
        Err(_) => 1024,
    }
}

/// Mark every fd from 3 up close-on-exec, so the worker starts with 0, 1
/// and 2 only, whatever the daemon inherited. Close-on-exec rather than
/// close: std's exec-error pipe must stay open until the exec. Async-signal
/// safe: `close_range` (Linux 5.11), else `fcntl` on each fd below `limit`.
fn close_inherited_fds(limit: i32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: system calls on integers only.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        for fd in 3..limit {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empty the ambient, effective, permitted and inheritable capability sets
/// of the calling process. Ambient capabilities survive a setuid between
/// two non-root uids and pass through execve: a worker of a daemon with
/// ambient CAP_SETUID/CAP_KILL would keep them. Dropping capabilities needs
/// none. Async-signal safe (prctl and capset only, on stack data).
fn drop_all_capabilities() -> io::Result<()> {
    // SAFETY: prctl with integer arguments; capset with pointers to
    // initialised structs on the stack.
    unsafe {
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) < 0
        {
            // EINVAL: a kernel before 4.3 has no ambient set to clear.
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Send `sig` to one process. A process that is already gone is not an
/// error. EPERM (a worker of another uid, and the daemon lacks CAP_KILL)
/// says so.
pub fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    let target = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    match kill(Pid::from_raw(target), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(Errno::EPERM) => Err(eperm(pid)),
        Err(e) => Err(e.into()),
    }
}

/// The error for a signal the kernel refused.
fn eperm(pid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "permission denied signalling pid {pid}: the daemon needs CAP_KILL (or root) to signal workers of another user"
        ),
    )
}

/// Make the daemon a child subreaper: orphans of its workers (pool children
/// whose main process died) are re-parented to it instead of PID 1, so they
/// can be found, killed and reaped.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An exit the reaper saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    pub reason: ExitReason,
}

/// Reap every child that has exited, without blocking.
pub fn reap_all() -> Vec<Exit> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push(Exit {
                pid: pid.as_raw() as u32,
                reason: ExitReason::Code(code),
            }),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push(Exit {
                pid: pid.as_raw() as u32,
                reason: ExitReason::Signal(sig as i32),
            }),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    out
}

/// Run the reaper: on every SIGCHLD, reap all exited children and send
/// their exits. Ends when the receiver is dropped.
pub fn spawn_reaper(tx: mpsc::UnboundedSender<Exit>) -> io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigchld = signal(SignalKind::child())?;
    Ok(tokio::spawn(async move {
        loop {
            for exit in reap_all() {
                if tx.send(exit).is_err() {
                    return;
                }
            }
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }))
}

/// One line of /proc/PID/stat, the fields we need.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    #[cfg_attr(not(test), allow(dead_code))]
    pid: i32,
    ppid: i32,
    pgrp: i32,
    session: i32,
    zombie: bool,
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        ppid,
        pgrp,
        session,
        zombie: state == "Z" || state == "X",
    })
}

/// CPU time and resident memory of a process and all its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// user + system time, in microseconds.
    pub cpu_usec: u64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// [`TreeUsage`] of `pid` and its descendants (found through
/// `/proc/<pid>/task/*/children`), from one read of `/proc/<pid>/stat`
/// each. `None` when `pid` itself is gone.
pub fn tree_usage(pid: u32) -> Option<TreeUsage> {
    let tick_usec = 1_000_000 / clock_ticks_per_sec();
    let page = page_size();
    let mut total = TreeUsage::default();
    let mut stack = vec![i32::try_from(pid).ok()?];
    let mut first = true;
    while let Some(p) = stack.pop() {
        let Some((ticks, pages)) = fs::read(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|b| parse_stat_usage(&b))
        else {
            if first {
                return None;
            }
            continue;
        };
        first = false;
        total.cpu_usec += ticks * tick_usec;
        total.rss_bytes += pages * page;
        stack.extend(children_of(p));
    }
    Some(total)
}

/// utime + stime (clock ticks) and rss (pages) from a `/proc/<pid>/stat`
/// line. The command name (field 2) may hold spaces and parentheses: the
/// fields after it start after its last `)`.
pub fn parse_stat_usage(stat: &[u8]) -> Option<(u64, u64)> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // rest: " <state> <ppid> …": field 3 is index 0 here.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(24)?))
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// Direct children of `pid`, from `/proc/<pid>/task/*/children`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = fs::read_to_string(t.path().join("children")) {
                out.extend(
                    c.split_ascii_whitespace()
                        .filter_map(|x| x.parse::<i32>().ok()),
                );
            }
        }
    }
    out
}

/// The main pids of the runs that are live now, shared between the
/// supervisor (which adds a pid right after the spawn and removes it when
/// the exit is reaped) and the kill tasks (which must never touch another
/// live run). Everything runs on the one runtime thread, so a kill task
/// never sees a main that was forked but not yet added.
#[derive(Debug, Clone, Default)]
pub struct LiveMains(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<i32>>>);

impl LiveMains {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<i32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn insert(&self, pid: u32) {
        if let Ok(p) = i32::try_from(pid) {
            self.lock().insert(p);
        }
    }
    pub fn remove(&self, pid: u32) {
        if let Ok(p) = i32::try_from(pid) {
            self.lock().remove(&p);
        }
    }
    pub fn snapshot(&self) -> std::collections::HashSet<i32> {
        self.lock().clone()
    }
}

/// The live processes that belong to one run, with all their descendants:
///
/// - the main process (`pgid`) while it is still that run's session leader;
/// - every child of the daemon (the subreaper) that is not the main of a
///   live run, nor in the process group or session of one. Each worker
///   main is the subreaper of its own tree, so while it lives the orphans
///   of its descendants stay below it: a process that comes back to the
///   daemon is from a run whose main has died, i.e. one that is ending,
///   even when it left its session and environment behind
///   (`setsid env -i …`) and nothing else ties it to that run. It is killed
///   with the run that ends now rather than left unsupervised.
///
/// Reads only those processes, not all of /proc.
pub fn run_members(
    pgid: Option<u32>,
    main_start: Option<u64>,
    live_mains: &std::collections::HashSet<i32>,
) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut roots: Vec<i32> = Vec::new();
    let own = pgid.and_then(|g| i32::try_from(g).ok());
    if let Some(g) = own
        && main_start.is_some()
        && is_main(g, main_start)
    {
        // Only while it is still that run's main: once reaped, its pid may
        // belong to an unrelated process.
        roots.push(g);
    }
    for c in children_of(me) {
        if Some(c) == own || live_mains.contains(&c) {
            continue;
        }
        let Some(st) = read_stat(c) else { continue };
        let of_live_run = Some(st.pgrp) != own
            && Some(st.session) != own
            && (live_mains.contains(&st.pgrp) || live_mains.contains(&st.session));
        if !of_live_run {
            roots.push(c);
        }
    }
    descendants_alive(roots, me)
}

/// `roots` and all their descendants, without zombies and without `me`.
fn descendants_alive(mut roots: Vec<i32>, me: i32) -> Vec<i32> {
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    while let Some(pid) = roots.pop() {
        if pid == me || pid <= 1 || !seen.insert(pid) {
            continue;
        }
        roots.extend(children_of(pid));
    }
    seen.into_iter()
        .filter(|p| read_stat(*p).is_some_and(|s| !s.zombie))
        .collect()
}

/// Whether process group (and session) id `g`, that of a run whose main
/// had pid `g`, still names that run. While any process is in the group or
/// session, the kernel does not hand its id out as a pid again; so when no
/// process has pid `g`, what is left in group `g` is the run's. When one
/// has, it must be the run's main itself (`is_main`): else the pid was
/// reused, the old group is empty, and `-g` would name someone else's.
fn group_id_is_the_runs(g: i32, is_main: impl Fn(&ProcStat) -> bool) -> bool {
    match read_stat(g) {
        None => true,
        Some(st) => is_main(&st),
    }
}

/// What a kill left behind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KillReport {
    /// Processes still alive when the time was up (0: done).
    pub left: usize,
    /// Processes the kernel would not let the daemon signal (EPERM).
    pub refused: Vec<i32>,
}

/// SIGKILL `pids`; those the kernel refuses (EPERM) go to `refused`.
fn sigkill_all(pids: &[i32], refused: &mut Vec<i32>) {
    for pid in pids {
        if let Err(Errno::EPERM) = kill(Pid::from_raw(*pid), Signal::SIGKILL)
            && !refused.contains(pid)
        {
            refused.push(*pid);
        }
    }
}

/// Async and thread-free: it only makes system calls and sleeps on
/// the runtime's timer, so it works when the system (or the daemon's uid)
/// can start no thread and no process.
/// The identity of a run's main process when a kill is decided: its start
/// time while it is still the daemon's child (a zombie included), `None`
/// once it has been reaped.
pub fn main_identity(pgid: Option<u32>) -> Option<u64> {
    let g = i32::try_from(pgid?).ok()?;
    let st = read_stat(g)?;
    (st.ppid == std::process::id() as i32).then(|| start_time(g))?
}

/// Whether pid `g` is still the main process identified by `main_start`.
fn is_main(g: i32, main_start: Option<u64>) -> bool {
    main_start.is_some()
        && read_stat(g).is_some_and(|st| st.ppid == std::process::id() as i32)
        && start_time(g) == main_start
}

/// SIGKILL every process of one run until none is left, or `timeout`
/// passes. `main_start` is [`main_identity`] of `pgid`, taken when the
/// kill was decided.
pub async fn kill_run(
    pgid: Option<u32>,
    main_start: Option<u64>,
    live: &LiveMains,
    timeout: Duration,
) -> KillReport {
    sigkill_until_gone(timeout, || {
        if let Some(g) = pgid.and_then(|g| i32::try_from(g).ok()).filter(|g| *g > 1)
            && group_id_is_the_runs(g, |_| is_main(g, main_start))
        {
            // The whole process group at once, even when its leader is gone.
            let _ = kill(Pid::from_raw(-g), Signal::SIGKILL);
        }
        run_members(pgid, main_start, &live.snapshot())
    })
    .await
}

/// SIGKILL every descendant of the daemon until none is left or `timeout`
/// passes: the last step before the daemon exits, so nothing it started
/// (even an orphan that dropped its session and environment) outlives it.
pub async fn kill_all_descendants(timeout: Duration) -> KillReport {
    let me = std::process::id() as i32;
    sigkill_until_gone(timeout, || descendants_alive(children_of(me), me)).await
}

/// SIGKILLs the processes `members` finds, every 5 ms, until it finds
/// none or `timeout` passes. Starts no thread or process.
async fn sigkill_until_gone(
    timeout: Duration,
    mut members: impl FnMut() -> Vec<i32>,
) -> KillReport {
    let start = Instant::now();
    let mut refused = Vec::new();
    loop {
        let found = members();
        if found.is_empty() {
            return KillReport { left: 0, refused };
        }
        sigkill_all(&found, &mut refused);
        if start.elapsed() >= timeout {
            return KillReport {
                left: found.len(),
                refused,
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The start time of a process (field 22 of /proc/PID/stat, in clock
/// ticks since boot): with the pid, it names one process, never a later
/// one that reuses the pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = s.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(s.get(close + 1..)?).ok()?;
    // rest: " <state> …": field 3 is index 0 here.
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// The real uid of a process, from /proc/PID/status.
fn real_uid(pid: i32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every live process in session `sid` or process group `sid`, with their
/// descendants: the tree of a worker that is not the daemon's child (one
/// left by a previous daemon). Scans /proc.
fn session_tree(sid: i32) -> Vec<i32> {
    let mut roots = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if read_stat(pid).is_some_and(|s| s.session == sid || s.pgrp == sid) {
                roots.push(pid);
            }
        }
    }
    descendants_alive(roots, std::process::id() as i32)
}

pub mod records;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let me = std::process::id() as i32;
        let s = read_stat(me).expect("own stat");
        assert_eq!(s.pid, me);
        assert!(!s.zombie);
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw());
    }

    #[test]
    fn stat_usage_fields_come_after_the_last_parenthesis() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime prio nice threads
        // itrealvalue starttime vsize rss …
        let line = b"42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 \
                     700 50 9 9 20 0 1 0 12345 1000000 321 18446744073709551615";
        assert_eq!(parse_stat_usage(line), Some((750, 321)));
        assert_eq!(parse_stat_usage(b"42 (x) S 1"), None);
        assert_eq!(parse_stat_usage(b"garbage"), None);
    }

    #[test]
    fn tree_usage_counts_a_process_and_its_children() {
        // A child that burns CPU for a while, then waits: its usage is part
        // of the tree of this (test) process.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .expect("sh");
        let cpid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let alone = tree_usage(cpid).expect("the child is alive");
        assert!(alone.rss_bytes > 0, "{alone:?}");
        let me = tree_usage(std::process::id()).expect("own usage");
        assert!(me.rss_bytes >= alone.rss_bytes, "{me:?} vs {alone:?}");
        assert!(me.cpu_usec >= alone.cpu_usec, "{me:?} vs {alone:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(tree_usage(cpid), None, "a reaped pid has no usage");
    }

    #[test]
    fn run_records_round_trip_and_reject_malformed_text() {
        use records::RunRecord;
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

    #[test]
    fn a_main_is_identified_until_it_is_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let id = main_identity(Some(pid));
        assert!(id.is_some());
        assert!(is_main(pid as i32, id));
        assert!(
            !is_main(pid as i32, id.map(|t| t + 1)),
            "another start time"
        );
        assert!(!is_main(pid as i32, None));
        // Not a child of this process: never a main.
        assert_eq!(main_identity(Some(1)), None);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(main_identity(Some(pid)), None, "reaped");
        assert!(!is_main(pid as i32, id));
        // A free pid: what is left in its group can only be the run's.
        assert!(group_id_is_the_runs(pid as i32, |_| false) || read_stat(pid as i32).is_some());
    }

    #[test]
    fn start_time_names_one_process() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn run_marker_names_instance_generation_and_daemon() {
        assert_eq!(
            run_marker("text-1", 3),
            format!("text-1.3@{}", std::process::id())
        );
    }
}

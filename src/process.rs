//! Process effects: spawn a worker, signal it, kill everything it left
//! behind, and reap every child.
//!
//! * **Spawn.** A worker starts in its own session (`setsid`), so terminal
//!   signals never reach it and its main pid is also its process group and
//!   session id. It joins its cgroup leaf *before* exec (a write of "0" to an
//!   fd of the leaf's `cgroup.procs`, opened beforehand), and drops to the
//!   worker user when the daemon runs as root. Everything `pre_exec` needs is
//!   prepared before the fork: it only makes system calls.
//! * **Reap.** One reaper owns all reaping: on SIGCHLD it calls
//!   `waitpid(-1, WNOHANG)` until nothing is left and reports every exit. The
//!   daemon is a child subreaper, so orphaned pool children come back to it
//!   and are reaped there too. Nothing else in the daemon may wait for
//!   children (no `tokio::process`).
//! * **Kill tree.** The last step of a stop, and the clean-up after a crash:
//!   SIGKILL to the run's process group, to its session, to every descendant
//!   of those, and to adopted orphans that carry the run's marker in their
//!   environment (grandchildren that called setsid), until none is left.

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

use crate::accounts::Accounts;
use crate::plan::InstanceSpec;
use crate::supervisor::machine::ExitReason;

/// The environment variable that marks every process of one run of an
/// instance: `<instance id>.<generation>@<daemon pid>`.
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
        "clearify-workerd runs as root but [celery].user is not set: workers never run as root; set user = \"clearify\" (or another unprivileged user) in [celery]"
    )]
    NoUser,
    #[error("[celery].user = {0:?}: no such user")]
    Unknown(String),
    #[error("[celery].user = {0:?} is root (uid 0): workers never run as root")]
    Root(String),
    #[error("looking up user {0:?}: {1}")]
    Lookup(String, nix::Error),
}

/// Decide who workers run as. As root, `user` must name an unprivileged
/// user; otherwise workers simply run as the daemon's own user, and `user`
/// is ignored (systemd already chose the user). The user and its groups come
/// from /etc/passwd and /etc/group when they have it, else from NSS
/// ([`Accounts`]).
pub fn resolve_user(user: Option<&str>) -> Result<Option<RunAs>, UserError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let name = user.ok_or(UserError::NoUser)?;
    let accounts = Accounts::system();
    let u = accounts
        .user_by_name(name)
        .map_err(|e| UserError::Lookup(name.to_string(), e))?
        .ok_or_else(|| UserError::Unknown(name.to_string()))?;
    if u.uid.is_root() {
        return Err(UserError::Root(name.to_string()));
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
    // SAFETY: the closure runs between fork and exec. It only makes system
    // calls (setsid, write, setgroups, setgid, setuid) on data prepared
    // above; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = cgroup_procs {
                crate::cgroup::join_cgroup_fd(fd)?;
            }
            if let Some((uid, gid, groups)) = &ids
                && (libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0)
            {
                return Err(io::Error::last_os_error());
            }
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

/// Send `sig` to one process. A process that is already gone is not an error.
pub fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    match kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
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
    #[cfg_attr(not(test), allow(dead_code))]
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

fn has_marker(pid: i32, marker: &[u8]) -> bool {
    let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    env.split(|b| *b == 0).any(|kv| kv == marker)
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

/// The live processes that belong to one run: the main process (`pgid`) if
/// it is still there, and the daemon's own children that are not the main
/// process of another instance and are in the run's process group or
/// session or carry its marker (orphans adopted by the subreaper), with all
/// their descendants. Reads only those processes, not all of /proc.
pub fn run_members(
    pgid: Option<u32>,
    marker: &str,
    live_mains: &std::collections::HashSet<i32>,
) -> Vec<i32> {
    let me = std::process::id() as i32;
    let marker_kv = format!("{RUN_MARKER}={marker}").into_bytes();
    let mut roots: Vec<i32> = Vec::new();
    if let Some(g) = pgid {
        // Only while it is still that run's session leader: once reaped, its
        // pid may belong to an unrelated process.
        let g = g as i32;
        if read_stat(g).is_some_and(|p| p.pgrp == g || p.session == g) {
            roots.push(g);
        }
    }
    for c in children_of(me) {
        if Some(c) == pgid.map(|g| g as i32) || live_mains.contains(&c) {
            continue;
        }
        let in_run = pgid.is_some_and(|g| {
            read_stat(c).is_some_and(|p| p.pgrp == g as i32 || p.session == g as i32)
        });
        if in_run || has_marker(c, &marker_kv) {
            roots.push(c);
        }
    }
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    while let Some(pid) = roots.pop() {
        if pid == me || !seen.insert(pid) {
            continue;
        }
        roots.extend(children_of(pid));
    }
    seen.into_iter()
        .filter(|p| read_stat(*p).is_some_and(|s| !s.zombie))
        .collect()
}

/// SIGKILL every process of one run until none is left, or `timeout`
/// passes. Returns how many are left (0 on success). Blocking: call it from
/// a blocking task.
pub fn kill_run(
    pgid: Option<u32>,
    marker: &str,
    live_mains: &std::collections::HashSet<i32>,
    timeout: Duration,
) -> usize {
    let start = Instant::now();
    loop {
        if let Some(g) = pgid {
            // The whole process group at once, even when its leader is gone.
            let _ = kill(Pid::from_raw(-(g as i32)), Signal::SIGKILL);
        }
        let members = run_members(pgid, marker, live_mains);
        if members.is_empty() {
            return 0;
        }
        for pid in &members {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        if start.elapsed() >= timeout {
            return members.len();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

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
    fn run_marker_names_instance_generation_and_daemon() {
        assert_eq!(
            run_marker("text-1", 3),
            format!("text-1.3@{}", std::process::id())
        );
    }
}

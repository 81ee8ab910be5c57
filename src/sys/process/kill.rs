//! Signals and the kill tree: SIGKILL a run's process group, session and
//! descendants (and the orphans that came back to the daemon) until none
//! is left. Async and thread-free.

use std::io;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::procfs::{ProcStat, children_of, descendants_alive, read_stat, start_time};

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

/// Whether process group (and session) id `g`, that of a run whose main
/// had pid `g`, still names that run. While any process is in the group or
/// session, the kernel does not hand its id out as a pid again; so when no
/// process has pid `g`, what is left in group `g` is the run's. When one
/// has, it must be the run's main itself (`is_main`): else the pid was
/// reused, the old group is empty, and `-g` would name someone else's.
pub(super) fn group_id_is_the_runs(g: i32, is_main: impl Fn(&ProcStat) -> bool) -> bool {
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
pub(super) fn sigkill_all(pids: &[i32], refused: &mut Vec<i32>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

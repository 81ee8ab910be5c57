//! Reaping: the one place that waits for children. The daemon is a child
//! subreaper, so orphans of its workers come back to it and are reaped
//! here too.

use std::io;

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::model::ExitReason;

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

/// The text of an exit, as status and the journal show it. Here rather
/// than in `model`, because the signal names come from the OS crate.
impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Code(c) => write!(f, "exit {c}"),
            ExitReason::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {s}"));
                write!(f, "killed by {name}")
            }
            ExitReason::OomKilled => f.write_str("oom-killed"),
            ExitReason::SpawnFailed(e) => write!(f, "spawn failed: {e}"),
        }
    }
}

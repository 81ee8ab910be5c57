//! Spawning a worker: its own session, its cgroup leaf joined before exec,
//! the subreaper of its own tree, dropped to the worker user with no
//! capabilities ([`privdrop`](crate::sys::privdrop)), and only fds 0, 1
//! and 2.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use tokio::net::unix::pipe;

use crate::model::spec::InstanceSpec;
use crate::sys::privdrop::{self, RunAs};

/// The environment variable that marks every process of one run of an
/// instance: `<instance id>.<generation>@<daemon pid>`. Informational (a
/// process can drop it): the kill path does not rely on it.
pub const RUN_MARKER: &str = "CLEARIFY_RUN";

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
    if let Some(u) = run_as {
        cmd.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
    }
    let ids = run_as.map(privdrop::Ids::of);
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
            privdrop::drop_to(ids.as_ref())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_marker_names_instance_generation_and_daemon() {
        assert_eq!(
            run_marker("text-1", 3),
            format!("text-1.3@{}", std::process::id())
        );
    }
}

//! The one privilege drop. Who a child runs as ([`resolve_user`] gives a
//! [`RunAs`], checked once before any spawn), and the switch to that user
//! between fork and exec ([`drop_to`]): supplementary groups, gid, uid,
//! never root, and no capabilities left. Every `pre_exec` that starts a
//! program for the worker user calls [`drop_to`]: the worker spawn
//! ([`crate::sys::process::spawn`], which adds its own steps around it:
//! session, cgroup, subreaper, fds) and doctor's celery check.
//!
//! May import: `std`, `libc`, `nix`, [`crate::sys::accounts`]. Nothing
//! here allocates or locks after the fork: [`Ids`] is prepared before it.

use std::io;

use crate::sys::accounts::Accounts;

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

/// The ids a child drops to, prepared before the fork: after it, only
/// system calls on this data are allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

impl Ids {
    /// The uid, primary gid and supplementary groups of `user`.
    pub fn of(user: &RunAs) -> Ids {
        Ids {
            uid: user.uid as libc::uid_t,
            gid: user.gid as libc::gid_t,
            groups: user.groups.iter().map(|g| *g as libc::gid_t).collect(),
        }
    }
}

/// Drops the calling process's privileges; call it between fork and exec.
/// With `to`: sets the supplementary groups, the gid and the uid (in that
/// order: each step needs the privilege the next one gives up). Then, in
/// every case: refuses to go on as root (uid or euid 0: `EPERM`), and
/// empties the ambient, effective, permitted and inheritable capability
/// sets. Async-signal safe: system calls on `to`'s data only, no
/// allocation, no lock.
pub fn drop_to(to: Option<&Ids>) -> io::Result<()> {
    // SAFETY: setgroups, setgid, setuid, getuid and geteuid with integers
    // and a pointer to a live slice of `groups.len()` gids.
    unsafe {
        if let Some(ids) = to
            && (libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) < 0
                || libc::setgid(ids.gid) < 0
                || libc::setuid(ids.uid) < 0)
        {
            return Err(io::Error::last_os_error());
        }
        // Never a child as root, whatever the caller was told.
        if libc::getuid() == 0 || libc::geteuid() == 0 {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    drop_all_capabilities()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    /// Runs `id -u` with [`drop_to`] in its `pre_exec`.
    fn id_u(to: Option<Ids>) -> io::Result<String> {
        let mut cmd = Command::new("id");
        cmd.arg("-u");
        // SAFETY: drop_to is async-signal safe; `to` is prepared here.
        unsafe {
            cmd.pre_exec(move || drop_to(to.as_ref()));
        }
        let out = cmd.output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    #[test]
    fn a_child_never_stays_root_and_drops_to_the_given_user() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (it drops to nobody); run the tests as root"
        );
        let e = id_u(None).expect_err("a child left as root is refused");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        let nobody = resolve_user(Some("nobody")).unwrap().expect("not root");
        assert_eq!(
            id_u(Some(Ids::of(&nobody))).unwrap(),
            nobody.uid.to_string()
        );
    }
}

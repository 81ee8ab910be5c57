//! What this host's cgroups look like, for `clearifyctl doctor`: plain
//! reading of cgroupfs, no judgement. The doctor
//! (`cli::doctor::cgroup`) turns these facts into findings with fixes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};

use super::{CgroupTree, SUPERVISOR, parse_controllers, parse_own_cgroup};

/// The service's cgroup under systemd.
pub const SERVICE_CGROUP: &str = "/system.slice/clearify-workerd.service";

/// The cgroups of this process and of the service, as read from cgroupfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFacts {
    /// This process's cgroup (the `0::` line of /proc/self/cgroup).
    pub own: Option<PathBuf>,
    /// Whether this process may write its cgroup's `cgroup.subtree_control`.
    pub own_writable: bool,
    /// What the kernel offers: the root's `cgroup.controllers`.
    pub kernel: Vec<String>,
    /// The service's cgroup directory under the root.
    pub service_dir: PathBuf,
    /// The service's cgroup; `None` when its directory does not exist (the
    /// service is not running).
    pub service: Option<ServiceFacts>,
}

/// The service's cgroup, when it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFacts {
    /// Whether the daemon's own sub-cgroup ([`SUPERVISOR`]) exists.
    pub supervisor: bool,
    /// The uid owning the service's cgroup, or why it could not be read.
    pub owner: Result<u32, String>,
    /// Its `cgroup.controllers`: what systemd delegated to it.
    pub delegated: Vec<String>,
    /// Its `cgroup.subtree_control`: what the daemon enabled for the groups.
    pub enabled: Vec<String>,
}

fn controllers_at(dir: &Path, file: &str) -> Option<Vec<String>> {
    fs::read_to_string(dir.join(file))
        .ok()
        .map(|t| parse_controllers(&t))
}

impl CgroupFacts {
    /// Reads the cgroupfs at `root`, for a process whose /proc/self/cgroup
    /// says `proc_self_cgroup`, and a service whose cgroup is
    /// `service_cgroup` (normally [`SERVICE_CGROUP`]).
    pub fn read(root: &Path, proc_self_cgroup: Option<&str>, service_cgroup: &Path) -> Self {
        let own = proc_self_cgroup.and_then(parse_own_cgroup);
        let own_writable = own.as_ref().is_some_and(|p| {
            let dir = CgroupTree::dir_of(root, p);
            access(&dir.join("cgroup.subtree_control"), AccessFlags::W_OK).is_ok()
        });
        let service_dir = CgroupTree::dir_of(root, service_cgroup);
        let service = service_dir.is_dir().then(|| ServiceFacts {
            supervisor: service_dir.join(SUPERVISOR).is_dir(),
            owner: fs::metadata(&service_dir)
                .map(|m| m.uid())
                .map_err(|e| e.to_string()),
            delegated: controllers_at(&service_dir, "cgroup.controllers").unwrap_or_default(),
            enabled: controllers_at(&service_dir, "cgroup.subtree_control").unwrap_or_default(),
        });
        CgroupFacts {
            own,
            own_writable,
            kernel: controllers_at(root, "cgroup.controllers").unwrap_or_default(),
            service_dir,
            service,
        }
    }
}

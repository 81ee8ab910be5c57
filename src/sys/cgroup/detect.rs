//! Detection of a delegated cgroup v2 subtree and the one-time setup.

use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC, statfs};
use nix::unistd::{AccessFlags, access};

use super::{
    CgroupError, CgroupTree, SUPERVISOR, WANTED_CONTROLLERS, make_dir, parse_controllers,
    parse_pids, read_file, write_file,
};

/// Controllers without which the daemon runs without limits.
pub const REQUIRED_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

pub(crate) const FIX_UNIFIED: &str = "boot with the unified cgroup v2 hierarchy (the Debian 12 default): \
     remove systemd.unified_cgroup_hierarchy=0 from the kernel command line and reboot";
pub(crate) const FIX_DELEGATE: &str =
    "run the daemon as the clearify-workerd.service unit, which has Delegate=yes";
pub(crate) const FIX_MEMORY: &str = "add cgroup_enable=memory to the kernel command line and reboot \
     (Raspberry Pi OS: append it to the single line in /boot/firmware/cmdline.txt)";

/// What kind of filesystem a path is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsKind {
    Cgroup2,
    Cgroup1,
    Tmpfs,
    /// Anything else, with its magic number in hex.
    Other(String),
}

impl FsKind {
    /// statfs(2) of `path`; `None` when it does not exist or cannot be read.
    pub fn of(path: &Path) -> Option<FsKind> {
        let st = statfs(path).ok()?;
        let t = st.filesystem_type();
        Some(if t == CGROUP2_SUPER_MAGIC {
            FsKind::Cgroup2
        } else if t == CGROUP_SUPER_MAGIC {
            FsKind::Cgroup1
        } else if t == TMPFS_MAGIC {
            FsKind::Tmpfs
        } else {
            FsKind::Other(format!("{:#x}", t.0))
        })
    }
}

/// How cgroups are mounted at the root (usually /sys/fs/cgroup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup2 at the root: what the daemon needs.
    Unified,
    /// tmpfs with v1 controllers, plus cgroup2 (without controllers) at
    /// `<root>/unified`.
    Hybrid,
    /// tmpfs with v1 controllers only.
    Legacy,
    /// The root does not exist.
    Missing,
    /// The root is some other filesystem (a plain directory, a v1 mount).
    NotCgroup(String),
}

/// Classify from statfs results of the root and of `<root>/unified`.
pub fn classify_layout(root: Option<FsKind>, unified: Option<FsKind>) -> Layout {
    match root {
        None => Layout::Missing,
        Some(FsKind::Cgroup2) => Layout::Unified,
        Some(FsKind::Tmpfs) if unified == Some(FsKind::Cgroup2) => Layout::Hybrid,
        Some(FsKind::Tmpfs) => Layout::Legacy,
        Some(FsKind::Cgroup1) => Layout::NotCgroup("cgroup (v1)".into()),
        Some(FsKind::Other(magic)) => Layout::NotCgroup(format!("filesystem magic {magic}")),
    }
}

/// statfs the root (and `<root>/unified`) and classify.
pub fn detect_layout(root: &Path) -> Layout {
    classify_layout(FsKind::of(root), FsKind::of(&root.join("unified")))
}

/// The cgroup v2 path of the process from `/proc/self/cgroup` (the `0::`
/// line), e.g. `/system.slice/clearify-workerd.service`.
pub fn parse_own_cgroup(proc_self_cgroup: &str) -> Option<PathBuf> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim_end()))
}

/// Everything [`setup_with`] looks at besides the cgroupfs tree itself, so
/// tests can inject a layout and an own cgroup for a fake tree.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The cgroupfs root, normally /sys/fs/cgroup.
    pub root: PathBuf,
    pub layout: Layout,
    /// The contents of /proc/self/cgroup (`None` when unreadable).
    pub proc_self_cgroup: Option<String>,
    /// The pid moved into `<own>/supervisor`.
    pub pid: u32,
}

impl Probe {
    /// Probe this process on this host.
    pub fn host(root: &Path) -> Probe {
        Probe {
            root: root.to_path_buf(),
            layout: detect_layout(root),
            proc_self_cgroup: fs::read_to_string("/proc/self/cgroup").ok(),
            pid: std::process::id(),
        }
    }
}

/// The result of [`setup`].
#[derive(Debug)]
pub enum Availability {
    /// The delegated subtree is ready: the daemon is in `<own>/supervisor`
    /// and the controllers are enabled for the groups.
    Enabled(CgroupTree),
    /// No limits. `reason` is one line for logs and status, `fix` says what
    /// to change.
    Disabled { reason: String, fix: String },
}

impl Availability {
    fn disabled(reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Availability::Disabled {
            reason: reason.into(),
            fix: fix.into(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        matches!(self, Availability::Enabled(_))
    }

    pub fn tree(&self) -> Option<&CgroupTree> {
        match self {
            Availability::Enabled(t) => Some(t),
            Availability::Disabled { .. } => None,
        }
    }

    /// For the status document's `limits` field: "on" or "off (reason)".
    pub fn status_line(&self) -> String {
        match self {
            Availability::Enabled(_) => "on".to_string(),
            Availability::Disabled { reason, .. } => format!("off ({reason})"),
        }
    }

    /// The line to log once at startup when limits are off, with the fix.
    pub fn log_line(&self) -> Option<String> {
        match self {
            Availability::Enabled(_) => None,
            Availability::Disabled { reason, fix } => {
                Some(format!("resource limits are off: {reason}. Fix: {fix}"))
            }
        }
    }

    /// Apply `[daemon].require_limits`: `Ok(Some(tree))` when enabled,
    /// `Ok(None)` when disabled and not required, an error (with the reason
    /// and the fix) when disabled but required.
    pub fn require(self, require_limits: bool) -> Result<Option<CgroupTree>, CgroupError> {
        match self {
            Availability::Enabled(t) => Ok(Some(t)),
            Availability::Disabled { .. } if !require_limits => Ok(None),
            Availability::Disabled { reason, fix } => {
                Err(CgroupError::LimitsRequired { reason, fix })
            }
        }
    }
}

/// Detect the delegated cgroup v2 subtree of this process and set it up:
/// create `<own>/supervisor`, move the daemon there, enable the
/// controllers in `<own>/cgroup.subtree_control`. Call it once, before any
/// worker is started and before READY=1. Never fails: whatever stands in
/// the way becomes [`Availability::Disabled`].
pub fn setup(root: &Path) -> Availability {
    setup_with(&Probe::host(root))
}

/// [`setup`] with the probe results injected.
pub fn setup_with(probe: &Probe) -> Availability {
    let root = &probe.root;
    match &probe.layout {
        Layout::Unified => {}
        Layout::Hybrid => {
            return Availability::disabled(
                format!(
                    "cgroup v1/hybrid layout: {} holds v1 controllers and cgroup2 is only \
                     mounted at {}/unified, without controllers",
                    root.display(),
                    root.display()
                ),
                FIX_UNIFIED,
            );
        }
        Layout::Legacy => {
            return Availability::disabled(
                format!(
                    "cgroup v1 (legacy) layout: no cgroup2 mounted at {}",
                    root.display()
                ),
                FIX_UNIFIED,
            );
        }
        Layout::Missing => {
            return Availability::disabled(
                format!("{} does not exist (no cgroupfs mounted)", root.display()),
                FIX_UNIFIED,
            );
        }
        Layout::NotCgroup(what) => {
            return Availability::disabled(
                format!("{} is not a cgroup2 mount ({what})", root.display()),
                FIX_UNIFIED,
            );
        }
    }

    // Controllers the kernel offers at all (the root cgroup has them all).
    let root_controllers = match read_file(&root.join("cgroup.controllers")) {
        Ok(t) => parse_controllers(&t),
        Err(e) => return Availability::disabled(e.to_string(), FIX_UNIFIED),
    };
    if !root_controllers.iter().any(|c| c == "memory") {
        return Availability::disabled(
            format!(
                "the memory controller is disabled in the kernel (not in {}/cgroup.controllers)",
                root.display()
            ),
            FIX_MEMORY,
        );
    }
    let missing = required_missing_from(&root_controllers);
    if !missing.is_empty() {
        return Availability::disabled(
            format!(
                "the {} controller(s) are not available in the kernel (not in {}/cgroup.controllers)",
                missing.join(", "),
                root.display()
            ),
            "use a kernel with these controllers and no cgroup_disable= on its command line",
        );
    }

    let Some(mut own) = probe.proc_self_cgroup.as_deref().and_then(parse_own_cgroup) else {
        return Availability::disabled(
            "no cgroup v2 entry (0::) in /proc/self/cgroup",
            FIX_UNIFIED,
        );
    };
    // A daemon restarted in place (exec) is already in <own>/supervisor.
    if own.file_name().is_some_and(|n| n == SUPERVISOR) {
        own.pop();
    }
    let dir = CgroupTree::dir_of(root, &own);
    if own == Path::new("/") && !dir.join("cgroup.type").exists() {
        return Availability::disabled(
            "the daemon runs in the root cgroup, not in a delegated one (not started by systemd)",
            FIX_DELEGATE,
        );
    }
    if !dir.is_dir() {
        return Availability::disabled(
            format!(
                "own cgroup {} (from /proc/self/cgroup) not found at {}",
                own.display(),
                dir.display()
            ),
            FIX_DELEGATE,
        );
    }
    for p in [
        dir.clone(),
        dir.join("cgroup.procs"),
        dir.join("cgroup.subtree_control"),
    ] {
        if let Err(e) = access(&p, AccessFlags::W_OK) {
            return Availability::disabled(
                format!(
                    "own cgroup {} is not delegated: {} is not writable by uid {} ({e})",
                    own.display(),
                    p.display(),
                    nix::unistd::geteuid()
                ),
                FIX_DELEGATE,
            );
        }
    }

    let own_controllers = match read_file(&dir.join("cgroup.controllers")) {
        Ok(t) => parse_controllers(&t),
        Err(e) => return Availability::disabled(e.to_string(), FIX_DELEGATE),
    };
    let missing = required_missing_from(&own_controllers);
    if !missing.is_empty() {
        return Availability::disabled(
            format!(
                "the {} controller(s) are not delegated to {} (not in its cgroup.controllers)",
                missing.join(", "),
                own.display()
            ),
            FIX_DELEGATE,
        );
    }

    match enter_supervisor(&dir, probe.pid, &own_controllers) {
        Ok((enabled, warnings)) => {
            Availability::Enabled(CgroupTree::new(root.clone(), own, enabled, warnings))
        }
        Err(e) => Availability::disabled(
            format!(
                "setting up the delegated cgroup {} failed: {e}",
                own.display()
            ),
            format!(
                "{FIX_DELEGATE}, as the user that owns {} (systemd chowns it with User=)",
                dir.display()
            ),
        ),
    }
}

/// Steps 1 and 2 of the layout: the daemon (and anything else still in
/// `<own>`) moves to `<own>/supervisor`, then the controllers are enabled
/// for the children. The order matters: a cgroup with processes cannot
/// enable controllers for children (no internal processes).
fn enter_supervisor(
    dir: &Path,
    pid: u32,
    available: &[String],
) -> Result<(Vec<String>, Vec<String>), CgroupError> {
    let sup = dir.join(SUPERVISOR);
    make_dir(&sup)?;
    let sup_procs = sup.join("cgroup.procs");
    write_file(&sup_procs, &pid.to_string())?;

    let mut warnings = Vec::new();
    // Anything else left in <own> (there should be nothing) would make the
    // subtree_control write fail with EBUSY.
    let own_procs = dir.join("cgroup.procs");
    let left = parse_pids(&own_procs, &read_file(&own_procs)?)?;
    for other in left.into_iter().filter(|&p| p != pid as i32) {
        if let Err(e) = write_file(&sup_procs, &other.to_string()) {
            warnings.push(format!(
                "could not move pid {other} out of {}: {e}",
                dir.display()
            ));
        }
    }

    let wanted: Vec<String> = WANTED_CONTROLLERS
        .iter()
        .filter(|c| available.iter().any(|a| a == *c))
        .map(|c| c.to_string())
        .collect();
    let subtree = dir.join("cgroup.subtree_control");
    match write_file(&subtree, &plus_list(&wanted)) {
        Ok(()) => Ok((wanted, warnings)),
        Err(e) if wanted.iter().any(|c| c == "io") => {
            // Retry without the optional io controller.
            let required: Vec<String> = wanted.into_iter().filter(|c| c != "io").collect();
            write_file(&subtree, &plus_list(&required))?;
            warnings.push(format!(
                "io controller not enabled, io_weight is ignored: {e}"
            ));
            Ok((required, warnings))
        }
        Err(e) => Err(e),
    }
}

/// "+cpu +memory +pids"
pub(crate) fn plus_list(controllers: &[String]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}
/// The [`REQUIRED_CONTROLLERS`] that `have` lacks.
fn required_missing_from(have: &[String]) -> Vec<&'static str> {
    REQUIRED_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !have.iter().any(|h| h == c))
        .collect()
}

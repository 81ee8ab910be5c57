//! The cgroup part of `clearifyctl doctor`.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};
use serde::{Deserialize, Serialize};

use super::detect::{FIX_DELEGATE, FIX_MEMORY, FIX_UNIFIED};
use super::{
    CgroupTree, DEFAULT_ROOT, Layout, REQUIRED_CONTROLLERS, SUPERVISOR, detect_layout,
    parse_controllers, parse_own_cgroup,
};

/// The service's cgroup under systemd.
pub const SERVICE_CGROUP: &str = "/system.slice/clearify-workerd.service";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        })
    }
}

/// One line of `clearifyctl doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub detail: String,
}

impl Check {
    fn new(name: &str, level: Level, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            level,
            detail: detail.into(),
        }
    }
}

/// What the doctor looks at, injectable for tests.
#[derive(Debug, Clone)]
pub struct DoctorEnv {
    /// The cgroupfs root, normally /sys/fs/cgroup.
    pub root: PathBuf,
    pub layout: Layout,
    /// /proc/self/cgroup of the doctor process.
    pub proc_self_cgroup: Option<String>,
    /// /proc/cmdline.
    pub proc_cmdline: Option<String>,
    /// The daemon's cgroup when it runs under systemd ([`SERVICE_CGROUP`]).
    pub service_cgroup: PathBuf,
}

impl DoctorEnv {
    pub fn host() -> DoctorEnv {
        let root = PathBuf::from(DEFAULT_ROOT);
        DoctorEnv {
            layout: detect_layout(&root),
            root,
            proc_self_cgroup: fs::read_to_string("/proc/self/cgroup").ok(),
            proc_cmdline: fs::read_to_string("/proc/cmdline").ok(),
            service_cgroup: PathBuf::from(SERVICE_CGROUP),
        }
    }
}

/// The cgroup checks of `clearifyctl doctor` on this host.
pub fn doctor() -> Vec<Check> {
    doctor_with(&DoctorEnv::host())
}

fn controllers_at(dir: &Path, file: &str) -> Option<Vec<String>> {
    fs::read_to_string(dir.join(file))
        .ok()
        .map(|t| parse_controllers(&t))
}

fn missing<'a>(wanted: &[&'a str], have: &[String]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|w| !have.iter().any(|h| h == w))
        .collect()
}

/// [`doctor`] with the environment injected.
pub fn doctor_with(env: &DoctorEnv) -> Vec<Check> {
    let root = &env.root;
    let mut checks = Vec::new();

    let v2 = match &env.layout {
        Layout::Unified => Check::new(
            "cgroup v2",
            Level::Ok,
            format!("cgroup2 mounted at {}", root.display()),
        ),
        Layout::Hybrid => Check::new(
            "cgroup v2",
            Level::Fail,
            format!(
                "hybrid layout: cgroup v1 controllers at {r}, cgroup2 only at {r}/unified \
                 without controllers. Fix: {FIX_UNIFIED}",
                r = root.display()
            ),
        ),
        Layout::Legacy => Check::new(
            "cgroup v2",
            Level::Fail,
            format!(
                "cgroup v1 (legacy) layout at {}, no cgroup2. Fix: {FIX_UNIFIED}",
                root.display()
            ),
        ),
        Layout::Missing => Check::new(
            "cgroup v2",
            Level::Fail,
            format!("{} does not exist. Fix: {FIX_UNIFIED}", root.display()),
        ),
        Layout::NotCgroup(what) => Check::new(
            "cgroup v2",
            Level::Fail,
            format!(
                "{} is not a cgroup2 mount ({what}). Fix: {FIX_UNIFIED}",
                root.display()
            ),
        ),
    };
    let unified = v2.level == Level::Ok;
    checks.push(v2);

    let own = env.proc_self_cgroup.as_deref().and_then(parse_own_cgroup);
    checks.push(match &own {
        Some(p) => Check::new("own cgroup", Level::Ok, p.display().to_string()),
        None => Check::new(
            "own cgroup",
            Level::Fail,
            "no cgroup v2 entry (0::) in /proc/self/cgroup",
        ),
    });
    if !unified {
        return checks;
    }

    // What the kernel offers: the root cgroup lists every controller.
    let kernel = controllers_at(root, "cgroup.controllers").unwrap_or_default();
    let memory_off_on_cmdline = env
        .proc_cmdline
        .as_deref()
        .is_some_and(|c| c.split_whitespace().any(|w| w == "cgroup_disable=memory"));
    checks.push(if kernel.iter().any(|c| c == "memory") {
        Check::new("memory controller", Level::Ok, "available")
    } else {
        Check::new(
            "memory controller",
            Level::Fail,
            format!(
                "not in {}/cgroup.controllers{}: memory limits and OOM handling are off. Fix: {FIX_MEMORY}",
                root.display(),
                if memory_off_on_cmdline {
                    " (the kernel command line has cgroup_disable=memory)"
                } else {
                    ""
                }
            ),
        )
    });
    let gone = missing(&REQUIRED_CONTROLLERS, &kernel);
    checks.push(if !gone.is_empty() {
        Check::new(
            "controllers",
            Level::Fail,
            format!(
                "{} not available in the kernel (have: {})",
                gone.join(", "),
                kernel.join(" ")
            ),
        )
    } else if !kernel.iter().any(|c| c == "io") {
        Check::new(
            "controllers",
            Level::Warn,
            format!(
                "io not available, io_weight is ignored (have: {})",
                kernel.join(" ")
            ),
        )
    } else {
        Check::new(
            "controllers",
            Level::Ok,
            format!("cpu memory pids io available (have: {})", kernel.join(" ")),
        )
    });

    let svc_dir = CgroupTree::dir_of(root, &env.service_cgroup);
    let svc = env.service_cgroup.display();
    if !svc_dir.is_dir() {
        // The service is not running; say what we can about this process.
        let own_note = match &own {
            Some(p) => {
                let dir = CgroupTree::dir_of(root, p);
                if access(&dir.join("cgroup.subtree_control"), AccessFlags::W_OK).is_ok() {
                    format!("; this process's cgroup {} is writable", p.display())
                } else {
                    format!("; this process's cgroup {} is not writable", p.display())
                }
            }
            None => String::new(),
        };
        checks.push(Check::new(
            "delegation",
            Level::Warn,
            format!(
                "clearify-workerd is not running ({} does not exist), start it and run doctor again{own_note}",
                svc_dir.display()
            ),
        ));
        checks.push(Check::new(
            "delegated controllers",
            Level::Warn,
            format!("not checked: {svc} does not exist"),
        ));
        return checks;
    }

    let sup = svc_dir.join(SUPERVISOR);
    checks.push(if sup.is_dir() {
        let owner = fs::metadata(&svc_dir).map_or_else(|e| e.to_string(), |m| m.uid().to_string());
        Check::new(
            "delegation",
            Level::Ok,
            format!("the daemon runs in {svc}/{SUPERVISOR} ({svc} owned by uid {owner})"),
        )
    } else {
        Check::new(
            "delegation",
            Level::Fail,
            format!(
                "{svc} has no {SUPERVISOR}/ sub-cgroup: the daemon runs without limits \
                 (see `journalctl -u clearify-workerd` for the reason). Fix: {FIX_DELEGATE}"
            ),
        )
    });

    let delegated = controllers_at(&svc_dir, "cgroup.controllers").unwrap_or_default();
    let enabled = controllers_at(&svc_dir, "cgroup.subtree_control").unwrap_or_default();
    let not_delegated = missing(&REQUIRED_CONTROLLERS, &delegated);
    let not_enabled = missing(&REQUIRED_CONTROLLERS, &enabled);
    checks.push(if !not_delegated.is_empty() {
        Check::new(
            "delegated controllers",
            Level::Fail,
            format!(
                "{} not delegated to {svc} (its cgroup.controllers: {}). Fix: {FIX_DELEGATE}",
                not_delegated.join(", "),
                delegated.join(" ")
            ),
        )
    } else if !not_enabled.is_empty() {
        Check::new(
            "delegated controllers",
            Level::Fail,
            format!(
                "{} not enabled in {svc}/cgroup.subtree_control (have: {}): the daemon runs without limits",
                not_enabled.join(", "),
                enabled.join(" ")
            ),
        )
    } else if !enabled.iter().any(|c| c == "io") {
        Check::new(
            "delegated controllers",
            Level::Warn,
            format!(
                "io not enabled for the groups, io_weight is ignored (enabled: {})",
                enabled.join(" ")
            ),
        )
    } else {
        Check::new(
            "delegated controllers",
            Level::Ok,
            format!("enabled for the groups: {}", enabled.join(" ")),
        )
    });
    checks
}

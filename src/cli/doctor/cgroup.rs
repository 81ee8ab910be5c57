//! The cgroup family: cgroup v2, this process's cgroup, the kernel's
//! controllers (memory: the Raspberry Pi hint) and the service's
//! delegation, judged from the facts [`CgroupFacts`] reads. Without
//! delegated cgroup v2 the daemon runs without limits, which is only an
//! error with `[daemon].require_limits = true`: otherwise what would fail
//! is a warning.

use super::{Finding, Host, Status};
use crate::sys::cgroup::{
    CgroupFacts, FIX_DELEGATE, FIX_MEMORY, FIX_UNIFIED, Layout, REQUIRED_CONTROLLERS, SUPERVISOR,
};

const FIX_START: &str = "start the service (systemctl start clearify-workerd) and run clearifyctl doctor again; \
     `journalctl -u clearify-workerd` says why limits are off";
const FIX_CONTROLLERS: &str = "a kernel without these controllers cannot enforce those limits; \
     io_weight alone needs io, the other limits work without it";
const FIX_MOUNT: &str = "mount cgroup v2 (the unified hierarchy, the Debian 12 default) and reboot";

/// The cgroup findings for `host`, in order: `cgroup v2`, `own cgroup`,
/// then (on cgroup v2) `memory controller`, `controllers`, `delegation`,
/// `delegated controllers`.
pub fn cgroup_checks(host: &Host, require_limits: bool) -> Vec<Finding> {
    let facts = host.cgroup_facts();
    judge(host, &facts)
        .into_iter()
        .map(|f| with_limits_rule(f, require_limits))
        .collect()
}

/// The findings as the facts have them, before `require_limits` decides
/// what a failure means.
fn judge(host: &Host, facts: &CgroupFacts) -> Vec<Finding> {
    let root = host.cgroup_root.display();
    let mut out = Vec::new();
    let unified_fail = |detail: String| Finding::fail("cgroup v2", detail, FIX_UNIFIED);
    out.push(match &host.cgroup_layout {
        Layout::Unified => Finding::ok("cgroup v2", format!("cgroup2 mounted at {root}")),
        Layout::Hybrid => unified_fail(format!(
            "hybrid layout: cgroup v1 controllers at {root}, cgroup2 only at {root}/unified \
             without controllers"
        )),
        Layout::Legacy => unified_fail(format!("cgroup v1 (legacy) layout at {root}, no cgroup2")),
        Layout::Missing => unified_fail(format!("{root} does not exist")),
        Layout::NotCgroup(what) => unified_fail(format!("{root} is not a cgroup2 mount ({what})")),
    });
    out.push(match &facts.own {
        Some(p) => Finding::ok("own cgroup", p.display().to_string()),
        None => Finding::fail(
            "own cgroup",
            "no cgroup v2 entry (0::) in /proc/self/cgroup",
            FIX_MOUNT,
        ),
    });
    if host.cgroup_layout != Layout::Unified {
        return out;
    }

    let kernel = &facts.kernel;
    let have = kernel.join(" ");
    let memory_off_on_cmdline = host
        .proc_cmdline
        .as_deref()
        .is_some_and(|c| c.split_whitespace().any(|w| w == "cgroup_disable=memory"));
    out.push(if kernel.iter().any(|c| c == "memory") {
        Finding::ok("memory controller", "available")
    } else {
        Finding::fail(
            "memory controller",
            format!(
                "not in {root}/cgroup.controllers{}: memory limits and OOM handling are off",
                if memory_off_on_cmdline {
                    " (the kernel command line has cgroup_disable=memory)"
                } else {
                    ""
                }
            ),
            FIX_MEMORY,
        )
    });
    let gone = missing(kernel);
    out.push(if !gone.is_empty() {
        Finding::fail(
            "controllers",
            format!(
                "{} not available in the kernel (have: {have})",
                gone.join(", ")
            ),
            FIX_CONTROLLERS,
        )
    } else if !kernel.iter().any(|c| c == "io") {
        Finding::warn(
            "controllers",
            format!("io not available, io_weight is ignored (have: {have})"),
            FIX_CONTROLLERS,
        )
    } else {
        Finding::ok(
            "controllers",
            format!("cpu memory pids io available (have: {have})"),
        )
    });

    let svc = host.service_cgroup.display();
    let Some(service) = &facts.service else {
        // The service is not running; say what we can about this process.
        let own_note = match &facts.own {
            Some(p) if facts.own_writable => {
                format!("; this process's cgroup {} is writable", p.display())
            }
            Some(p) => format!("; this process's cgroup {} is not writable", p.display()),
            None => String::new(),
        };
        out.push(Finding::warn(
            "delegation",
            format!(
                "clearify-workerd is not running ({} does not exist), start it and run doctor again{own_note}",
                facts.service_dir.display()
            ),
            FIX_START,
        ));
        out.push(Finding::warn(
            "delegated controllers",
            format!("not checked: {svc} does not exist"),
            FIX_START,
        ));
        return out;
    };

    out.push(if service.supervisor {
        let owner = match &service.owner {
            Ok(uid) => uid.to_string(),
            Err(e) => e.clone(),
        };
        Finding::ok(
            "delegation",
            format!("the daemon runs in {svc}/{SUPERVISOR} ({svc} owned by uid {owner})"),
        )
    } else {
        Finding::fail(
            "delegation",
            format!(
                "{svc} has no {SUPERVISOR}/ sub-cgroup: the daemon runs without limits \
                 (see `journalctl -u clearify-workerd` for the reason)"
            ),
            FIX_DELEGATE,
        )
    });
    let not_delegated = missing(&service.delegated);
    let not_enabled = missing(&service.enabled);
    let enabled = service.enabled.join(" ");
    out.push(if !not_delegated.is_empty() {
        Finding::fail(
            "delegated controllers",
            format!(
                "{} not delegated to {svc} (its cgroup.controllers: {})",
                not_delegated.join(", "),
                service.delegated.join(" ")
            ),
            FIX_DELEGATE,
        )
    } else if !not_enabled.is_empty() {
        Finding::fail(
            "delegated controllers",
            format!(
                "{} not enabled in {svc}/cgroup.subtree_control (have: {enabled}): the daemon runs without limits",
                not_enabled.join(", "),
            ),
            FIX_START,
        )
    } else if !service.enabled.iter().any(|c| c == "io") {
        Finding::warn(
            "delegated controllers",
            format!("io not enabled for the groups, io_weight is ignored (enabled: {enabled})"),
            FIX_START,
        )
    } else {
        Finding::ok(
            "delegated controllers",
            format!("enabled for the groups: {enabled}"),
        )
    });
    out
}

/// The required controllers missing from `have`.
fn missing(have: &[String]) -> Vec<&'static str> {
    REQUIRED_CONTROLLERS
        .iter()
        .copied()
        .filter(|w| !have.iter().any(|h| h == w))
        .collect()
}

/// What a failure means: an error with `require_limits`, else a warning
/// (the daemon runs without limits). An ok finding has no fix.
fn with_limits_rule(mut f: Finding, require_limits: bool) -> Finding {
    let fix = f.fix.take().unwrap_or_default();
    f.fix = match f.status {
        Status::Ok => None,
        Status::Warn => Some(fix),
        Status::Fail if require_limits => Some(format!(
            "{fix}; [daemon].require_limits = true, so the daemon will not start without limits"
        )),
        Status::Fail => {
            f.status = Status::Warn;
            Some(format!(
                "{fix}; until then the daemon runs without limits \
                 (allowed unless [daemon].require_limits = true)"
            ))
        }
    };
    f
}

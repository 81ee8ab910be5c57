//! Memory pressure of a group, for autoscaling (issue 15): the counters of
//! the group cgroup's `memory.events` (`high`, `oom`, `oom_kill`), its
//! `memory.current`, and PSI's `some avg10` from its `memory.pressure`
//! (else the host's `/proc/pressure/memory`; `None` when PSI is off).
//! [`MemoryPressure::read`] samples; [`under_pressure`] judges two samples,
//! purely.
//!
//! Every file is read with a size cap ([`MAX_FILE`]) and parsed without
//! panicking: a file that is too long, not UTF-8 or not in the kernel's
//! format gives zero counters or `None`, never an error (a missing figure
//! must not stop a check).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{parse_keyed, parse_single};

/// The host's memory PSI file.
pub const PROC_PRESSURE_MEMORY: &str = "/proc/pressure/memory";

/// PSI `some avg10` (percent) above which a group is under memory
/// pressure: tasks stalled on memory (reclaim, swap-in, refaults) for more
/// than a second of the last ten. A healthy host sits near 0; systemd-oomd
/// starts killing at 60 % (its `DefaultMemoryPressureLimit`), so 10 leaves
/// room to shed an instance warmly long before that, without reacting to
/// the short stalls of a page-cache flush.
pub const PSI_SOME_AVG10_THRESHOLD: f64 = 10.0;

/// The most bytes read of one interface file (the kernel's are under 200;
/// a longer one is not the kernel's and is ignored).
pub const MAX_FILE: u64 = 4096;

/// One sample of a group's memory pressure.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MemoryPressure {
    /// `memory.events` `high`: times the group was throttled at `memory.high`.
    pub high: u64,
    /// `memory.events` `oom`: times it hit `memory.max` and the OOM killer
    /// was about to run.
    pub oom: u64,
    /// `memory.events` `oom_kill`: processes killed by an OOM killer.
    pub oom_kill: u64,
    /// `memory.current`, bytes.
    pub current: Option<u64>,
    /// PSI `some avg10`, percent (0..=100); `None` when PSI is off or
    /// unreadable.
    pub psi_some_avg10: Option<f64>,
}

impl MemoryPressure {
    /// From the files' contents (`None`: missing or unreadable).
    pub fn parse(events: Option<&str>, current: Option<&str>, psi: Option<&str>) -> Self {
        let counter = |key| events.and_then(|e| parse_keyed(e, key)).unwrap_or(0);
        MemoryPressure {
            high: counter("high"),
            oom: counter("oom"),
            oom_kill: counter("oom_kill"),
            current: current.and_then(parse_single),
            psi_some_avg10: psi.and_then(parse_psi_some_avg10),
        }
    }

    /// Samples the group cgroup at `group_dir` (`None`: limits are off),
    /// with PSI from its `memory.pressure`, else from `host_psi`
    /// (normally [`PROC_PRESSURE_MEMORY`]).
    pub fn read(group_dir: Option<&Path>, host_psi: &Path) -> Self {
        let file = |name: &str| group_dir.and_then(|d| read_capped(&d.join(name)));
        let psi = file("memory.pressure").or_else(|| read_capped(host_psi));
        MemoryPressure::parse(
            file("memory.events").as_deref(),
            file("memory.current").as_deref(),
            psi.as_deref(),
        )
    }
}

/// Whether `now` shows memory pressure: since `before` (the previous sample
/// of the same group; `None` for the first) the `high`, `oom` or `oom_kill`
/// counter went up, or PSI `some avg10` is above
/// [`PSI_SOME_AVG10_THRESHOLD`]. A counter that went down (the cgroup was
/// made anew) is no pressure.
pub fn under_pressure(before: Option<&MemoryPressure>, now: &MemoryPressure) -> bool {
    let counters =
        before.is_some_and(|b| now.high > b.high || now.oom > b.oom || now.oom_kill > b.oom_kill);
    counters
        || now
            .psi_some_avg10
            .is_some_and(|p| p > PSI_SOME_AVG10_THRESHOLD)
}

/// `avg10` of the `some` line of a PSI file (`some avg10=1.23 avg60=… `),
/// when it is a percentage.
pub fn parse_psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let v: f64 = line
        .split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()?;
    (0.0..=100.0).contains(&v).then_some(v)
}

/// A file's text, if it is at most [`MAX_FILE`] bytes of UTF-8.
fn read_capped(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    File::open(path)
        .ok()?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > MAX_FILE {
        return None;
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests;

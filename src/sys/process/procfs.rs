//! Reading /proc: stat fields, start times, uids, children, the usage of a
//! process tree and the live descendants of a set of processes.

use std::collections::BTreeSet;
use std::fs;

/// One line of /proc/PID/stat, the fields we need.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProcStat {
    #[cfg_attr(not(test), allow(dead_code))]
    pid: i32,
    pub(super) ppid: i32,
    pub(super) pgrp: i32,
    pub(super) session: i32,
    pub(super) zombie: bool,
}

pub(super) fn read_stat(pid: i32) -> Option<ProcStat> {
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

/// Resident memory of this process alone (not its children), in bytes.
pub fn own_rss() -> Option<u64> {
    // statm, not stat: the same figure, but qemu-user (the arm64 unit
    // tests) fakes this process's stat with an rss of 0.
    let statm = fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_ascii_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_size())
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
pub(super) fn children_of(pid: i32) -> Vec<i32> {
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

/// `roots` and all their descendants, without zombies and without `me`.
pub(super) fn descendants_alive(mut roots: Vec<i32>, me: i32) -> Vec<i32> {
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    while let Some(pid) = roots.pop() {
        if pid == me || pid <= 1 || !seen.insert(pid) {
            continue;
        }
        roots.extend(children_of(pid));
    }
    seen.into_iter()
        .filter(|p| read_stat(*p).is_some_and(|s| !s.zombie))
        .collect()
}

/// The start time of a process (field 22 of /proc/PID/stat, in clock
/// ticks since boot): with the pid, it names one process, never a later
/// one that reuses the pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = s.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(s.get(close + 1..)?).ok()?;
    // rest: " <state> …": field 3 is index 0 here.
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// The real uid of a process, from /proc/PID/status.
pub(super) fn real_uid(pid: i32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every live process in session `sid` or process group `sid`, with their
/// descendants: the tree of a worker that is not the daemon's child (one
/// left by a previous daemon). Scans /proc.
pub(super) fn session_tree(sid: i32) -> Vec<i32> {
    let mut roots = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if read_stat(pid).is_some_and(|s| s.session == sid || s.pgrp == sid) {
                roots.push(pid);
            }
        }
    }
    descendants_alive(roots, std::process::id() as i32)
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
        // This process's own figure (statm). Not compared with `me`: under
        // qemu-user (the arm64 unit tests) the stat `me` read is faked.
        let own = own_rss().unwrap();
        assert!(own > 0, "{own}");
        assert!(me.cpu_usec >= alone.cpu_usec, "{me:?} vs {alone:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(tree_usage(cpid), None, "a reaped pid has no usage");
    }

    #[test]
    fn start_time_names_one_process() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(i32::MAX), None);
    }
}

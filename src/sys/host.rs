//! The host, as the fleet record shows it: facts read once (hostname,
//! architecture, kernel release, boot time: [`Facts`]) and the figures read at each
//! beat (load, memory, the daemon's RSS: [`Load`]). Four small /proc files
//! a beat; every field is `None` when its file cannot be read or parsed.

use std::fs;

/// What does not change while the daemon runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub hostname: String,
    /// Debian's architecture name (`amd64`, `arm64`, `armhf`, `i386`),
    /// else Rust's.
    pub arch: String,
    /// `uname -r`.
    pub kernel: String,
    /// Seconds since the Unix epoch.
    pub boot_time: Option<u64>,
}

impl Facts {
    pub fn read() -> Facts {
        Facts {
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            arch: debian_arch(std::env::consts::ARCH).to_string(),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            boot_time: fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| boot_time(&s)),
        }
    }
}

/// Rust's architecture name as Debian spells it.
pub fn debian_arch(rust: &str) -> &str {
    match rust {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        "x86" => "i386",
        other => other,
    }
}

/// The figures of one beat.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load {
    /// 1, 5 and 15 minute load averages.
    pub load: Option<[f64; 3]>,
    pub mem_total_bytes: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    /// The daemon's own resident set.
    pub rss_bytes: Option<u64>,
}

impl Load {
    pub fn read() -> Load {
        let mem = fs::read_to_string("/proc/meminfo").ok();
        Load {
            load: fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|s| loadavg(&s)),
            mem_total_bytes: mem.as_deref().and_then(|m| meminfo_bytes(m, "MemTotal")),
            mem_available_bytes: mem
                .as_deref()
                .and_then(|m| meminfo_bytes(m, "MemAvailable")),
            rss_bytes: super::process::own_rss(),
        }
    }
}

/// `MemAvailable` of /proc/meminfo, bytes (one small read: the autoscaler
/// asks at each check).
pub fn mem_available() -> Option<u64> {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| meminfo_bytes(&m, "MemAvailable"))
}

/// `btime` of /proc/stat.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The three load averages of /proc/loadavg.
fn loadavg(s: &str) -> Option<[f64; 3]> {
    let mut f = s.split_ascii_whitespace().map(|v| v.parse::<f64>().ok());
    Some([f.next()??, f.next()??, f.next()??])
}

/// A `<key>: <n> kB` line of /proc/meminfo, in bytes.
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        kb.checked_mul(1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_files_it_reads() {
        let meminfo = "MemTotal:        3884816 kB\nMemFree:          120000 kB\nMemAvailable:    2911740 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), Some(3_884_816 * 1024));
        assert_eq!(
            meminfo_bytes(meminfo, "MemAvailable"),
            Some(2_911_740 * 1024)
        );
        assert_eq!(meminfo_bytes(meminfo, "Mem"), None);
        assert_eq!(meminfo_bytes("MemTotal: lots kB\n", "MemTotal"), None);
        // Garbage and overflow: None, not a panic.
        let huge = format!("MemAvailable: {} kB\n", u64::MAX);
        assert_eq!(meminfo_bytes(&huge, "MemAvailable"), None);
        assert_eq!(meminfo_bytes("MemAvailable: -5 kB\n", "MemAvailable"), None);
        assert_eq!(
            meminfo_bytes("MemAvailable:\u{0}\u{ff}", "MemAvailable"),
            None
        );
        assert_eq!(meminfo_bytes("MemAvailable: 5 MB\n", "MemAvailable"), None);
        assert_eq!(
            loadavg("0.52 0.58 0.59 1/389 12345\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(loadavg("0.52\n"), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1764900000\nprocesses 9\n"),
            Some(1_764_900_000)
        );
        assert_eq!(debian_arch("aarch64"), "arm64");
        assert_eq!(debian_arch("riscv64"), "riscv64");
    }

    #[test]
    fn reads_this_machine() {
        let f = Facts::read();
        assert!(!f.hostname.is_empty() && !f.kernel.is_empty());
        assert!(f.boot_time.is_some());
        let l = Load::read();
        assert!(l.load.is_some() && l.mem_total_bytes.is_some());
        assert!(l.mem_available_bytes <= l.mem_total_bytes);
        assert!(l.rss_bytes.is_some_and(|r| r > 0));
        let avail = mem_available();
        assert!(avail.is_some_and(|a| a > 0), "{avail:?}");
        assert!(avail <= l.mem_total_bytes);
    }
}

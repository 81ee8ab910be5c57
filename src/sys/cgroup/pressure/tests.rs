use std::fs;
use std::path::Path;

use super::*;

const EVENTS: &str = "low 0\nhigh 12\nmax 3\noom 2\noom_kill 1\noom_group_kill 1\n";
const PSI: &str = "some avg10=12.50 avg60=3.10 avg300=0.80 total=123456\n\
                   full avg10=4.00 avg60=1.00 avg300=0.20 total=45678\n";

/// A group cgroup with these files (`None`: absent), and a host PSI file.
fn fake(
    dir: &Path,
    events: Option<&[u8]>,
    current: Option<&[u8]>,
    psi: Option<&[u8]>,
    host: Option<&[u8]>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let group = dir.join("text");
    fs::create_dir_all(&group).unwrap();
    for (name, data) in [
        ("memory.events", events),
        ("memory.current", current),
        ("memory.pressure", psi),
    ] {
        if let Some(d) = data {
            fs::write(group.join(name), d).unwrap();
        }
    }
    let host_psi = dir.join("proc-pressure-memory");
    if let Some(h) = host {
        fs::write(&host_psi, h).unwrap();
    }
    (group, host_psi)
}

#[test]
fn reads_the_group_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (group, host) = fake(
        tmp.path(),
        Some(EVENTS.as_bytes()),
        Some(b"314572800\n"),
        Some(PSI.as_bytes()),
        Some(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
    );
    let p = MemoryPressure::read(Some(&group), &host);
    assert_eq!(
        p,
        MemoryPressure {
            high: 12,
            oom: 2,
            oom_kill: 1,
            current: Some(300 << 20),
            psi_some_avg10: Some(12.5),
        }
    );
}

#[test]
fn psi_falls_back_to_the_host_then_to_none() {
    let tmp = tempfile::tempdir().unwrap();
    let host_line = b"some avg10=0.75 avg60=0.00 avg300=0.00 total=9\n";
    let (group, host) = fake(tmp.path(), Some(b"high 0\n"), None, None, Some(host_line));
    let p = MemoryPressure::read(Some(&group), &host);
    assert_eq!(p.psi_some_avg10, Some(0.75));
    assert_eq!(p.current, None);
    // Limits off: no group cgroup, the host's PSI only.
    let p = MemoryPressure::read(None, &host);
    assert_eq!(
        p,
        MemoryPressure {
            psi_some_avg10: Some(0.75),
            ..MemoryPressure::default()
        }
    );
    // PSI off (no file anywhere): None.
    let p = MemoryPressure::read(Some(&group), &tmp.path().join("absent"));
    assert_eq!(p.psi_some_avg10, None);
    // A group that does not exist (yet): zeros and None, no error.
    let p = MemoryPressure::read(Some(&tmp.path().join("gone")), &host);
    assert_eq!((p.high, p.current), (0, None));
}

#[test]
fn hostile_contents_give_zeros_and_none_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let huge = format!(
        "some avg10=50.00 avg60=0 avg300=0 total=0\n{}",
        "x".repeat(10_000)
    );
    let nasty: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xff, 0xfe, 0x00, b'\n'],
        b"high\nhigh -1\noom 99999999999999999999999\noom_kill 1.5\n".to_vec(),
        b"some avg10=NaN avg60=0\n".to_vec(),
        b"some avg10=inf\n".to_vec(),
        b"some avg10=-3\n".to_vec(),
        b"some avg10=100.01\n".to_vec(),
        b"some avg10=\nsome\n".to_vec(),
        b"full avg10=90.00\n".to_vec(),
        b"avg10=90 some\n".to_vec(),
        huge.into_bytes(),
        "some avg10=١٢\n".as_bytes().to_vec(),
    ];
    for (n, bytes) in nasty.iter().enumerate() {
        let dir = tmp.path().join(n.to_string());
        let (group, host) = fake(&dir, Some(bytes), Some(bytes), Some(bytes), Some(bytes));
        let p = MemoryPressure::read(Some(&group), &host);
        assert_eq!(p, MemoryPressure::default(), "case {n}: {p:?}");
        assert!(!under_pressure(Some(&p), &p), "case {n}");
    }
    // Over the cap: not read at all, even where it starts well.
    let long = format!("high 7\n{}", " ".repeat(MAX_FILE as usize));
    let (group, host) = fake(
        &tmp.path().join("long"),
        Some(long.as_bytes()),
        None,
        None,
        None,
    );
    assert_eq!(MemoryPressure::read(Some(&group), &host).high, 0);
    // A directory where a file should be.
    let (group, host) = fake(&tmp.path().join("dir"), None, None, None, None);
    fs::create_dir(group.join("memory.events")).unwrap();
    fs::create_dir(&host).unwrap();
    assert_eq!(
        MemoryPressure::read(Some(&group), &host),
        MemoryPressure::default()
    );
}

#[test]
fn pressure_is_a_counter_going_up_or_psi_over_the_threshold() {
    let calm = MemoryPressure {
        high: 5,
        oom: 1,
        oom_kill: 1,
        current: Some(1 << 30),
        psi_some_avg10: Some(0.0),
    };
    let with = |f: fn(&mut MemoryPressure)| {
        let mut p = calm;
        f(&mut p);
        p
    };
    // (before, now, pressure)
    let table: Vec<(Option<MemoryPressure>, MemoryPressure, bool)> = vec![
        (Some(calm), calm, false),
        (None, calm, false),
        (Some(calm), with(|p| p.high += 1), true),
        (Some(calm), with(|p| p.oom += 1), true),
        (Some(calm), with(|p| p.oom_kill += 1), true),
        // The first sample: counters say nothing.
        (None, with(|p| p.oom_kill += 1), false),
        // Counters reset (the cgroup was made anew): not pressure.
        (Some(calm), with(|p| p.high = 0), false),
        // memory.current alone is no pressure.
        (Some(calm), with(|p| p.current = Some(u64::MAX)), false),
        (
            Some(calm),
            with(|p| p.psi_some_avg10 = Some(PSI_SOME_AVG10_THRESHOLD)),
            false,
        ),
        (Some(calm), with(|p| p.psi_some_avg10 = Some(10.01)), true),
        (None, with(|p| p.psi_some_avg10 = Some(75.0)), true),
        (Some(calm), with(|p| p.psi_some_avg10 = None), false),
    ];
    for (n, (before, now, want)) in table.iter().enumerate() {
        assert_eq!(
            under_pressure(before.as_ref(), now),
            *want,
            "case {n}: {before:?} → {now:?}"
        );
    }
}

#[test]
fn psi_of_this_machine() {
    // This host's /proc/pressure/memory: present (PSI on) or not. Either
    // way the answer must match what the file says.
    let host = Path::new(PROC_PRESSURE_MEMORY);
    let p = MemoryPressure::read(None, host);
    match fs::read_to_string(host) {
        Ok(text) if text.starts_with("some avg10=") => {
            let v = p.psi_some_avg10.expect("PSI is on: some avg10 is read");
            assert!((0.0..=100.0).contains(&v), "{v}");
        }
        // Absent, or EOPNOTSUPP with psi=0 on the kernel command line.
        other => assert_eq!(p.psi_some_avg10, None, "{other:?}"),
    }
    assert_eq!((p.high, p.oom, p.oom_kill, p.current), (0, 0, 0, None));
}

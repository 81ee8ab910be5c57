//! The cgroup v2 layer against a fake cgroupfs in a tempdir (the files the
//! kernel would create are pre-created), plus real checks on this host.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clearify_workerd::cli::doctor::{self, Finding, Host, Status as Level};
use clearify_workerd::plan::Limits;
use clearify_workerd::sys::cgroup::{
    self, Availability, CgroupError, CgroupTree, FsKind, KillMethod, Layout, OomCounts, Probe,
    Stats,
};

const OWN: &str = "/system.slice/clearify-workerd.service";
const ALL: &str = "cpuset cpu io memory hugetlb pids rdma misc";

/// A fake cgroupfs: directories with the interface files the kernel would
/// show, as plain files.
struct Fake {
    tmp: tempfile::TempDir,
}

impl Fake {
    /// A root cgroup offering `controllers`.
    fn new(controllers: &str) -> Fake {
        let f = Fake {
            tmp: tempfile::tempdir().unwrap(),
        };
        let r = f.root();
        fs::write(r.join("cgroup.controllers"), format!("{controllers}\n")).unwrap();
        fs::write(r.join("cgroup.subtree_control"), "").unwrap();
        fs::write(r.join("cgroup.procs"), "").unwrap();
        f
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel.trim_start_matches('/'))
    }

    /// A non-root cgroup at `rel` whose parent enabled `controllers`.
    fn cgroup(&self, rel: &str, controllers: &str) -> PathBuf {
        let d = self.path(rel);
        fs::create_dir_all(&d).unwrap();
        let mut files: Vec<(&str, &str)> = vec![
            ("cgroup.controllers", controllers),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("cgroup.type", "domain\n"),
            ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
        ];
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") {
            files.extend([
                ("memory.max", "max\n"),
                ("memory.high", "max\n"),
                ("memory.swap.max", "max\n"),
                ("memory.current", "0\n"),
                ("memory.oom.group", "0\n"),
                (
                    "memory.events",
                    "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
                ),
            ]);
        }
        if has("cpu") {
            files.extend([("cpu.max", "max 100000\n"), ("cpu.weight", "100\n")]);
        }
        if has("pids") {
            files.extend([("pids.max", "max\n"), ("pids.current", "0\n")]);
        }
        if has("io") {
            files.push(("io.weight", "default 100\n"));
        }
        for (name, content) in files {
            fs::write(d.join(name), content).unwrap();
        }
        d
    }

    fn read(&self, rel: &str) -> String {
        let p = self.path(rel);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    fn write(&self, rel: &str, data: &str) {
        fs::write(self.path(rel), data).unwrap();
    }

    fn probe(&self, proc_self_cgroup: &str, pid: u32) -> Probe {
        Probe {
            root: self.root(),
            layout: Layout::Unified,
            proc_self_cgroup: Some(proc_self_cgroup.to_string()),
            pid,
        }
    }

    /// A delegated service cgroup with its supervisor child, as systemd
    /// and the kernel would present it.
    fn service(&self, controllers: &str) {
        self.cgroup(OWN, controllers);
        self.cgroup(&format!("{OWN}/supervisor"), "");
    }

    /// Every file under `rel` with its content.
    fn snapshot(&self, rel: &str) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for e in fs::read_dir(self.path(rel)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                out.insert(e.path(), fs::read_to_string(e.path()).unwrap());
            }
        }
        out
    }
}

fn enabled(a: Availability) -> CgroupTree {
    match a {
        Availability::Enabled(t) => t,
        Availability::Disabled { reason, fix } => panic!("disabled: {reason} / {fix}"),
    }
}

fn disabled(a: Availability) -> (String, String) {
    match a {
        Availability::Enabled(t) => panic!("unexpectedly enabled at {}", t.dir().display()),
        Availability::Disabled { reason, fix } => (reason, fix),
    }
}

fn proc_line(own: &str) -> String {
    format!("0::{own}\n")
}

// ---------------------------------------------------------------- setup

#[test]
fn setup_moves_the_daemon_then_enables_controllers() {
    let fake = Fake::new("cpuset cpu memory hugetlb pids");
    fake.service("cpuset cpu memory hugetlb pids");
    let before = fake.snapshot(OWN);
    let pid = std::process::id();

    let tree = enabled(cgroup::setup_with(&fake.probe(&proc_line(OWN), pid)));

    assert_eq!(
        fake.read(&format!("{OWN}/supervisor/cgroup.procs")),
        pid.to_string()
    );
    assert_eq!(
        fake.read(&format!("{OWN}/cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert_eq!(tree.controllers(), ["cpu", "memory", "pids"]);
    assert_eq!(tree.own(), Path::new(OWN));
    assert_eq!(tree.dir(), fake.path(OWN));
    assert!(
        tree.setup_warnings().is_empty(),
        "{:?}",
        tree.setup_warnings()
    );
    // Of <own> itself only cgroup.subtree_control was written.
    let after = fake.snapshot(OWN);
    let changed: Vec<_> = after
        .iter()
        .filter(|(p, c)| before.get(*p) != Some(*c))
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(changed, ["cgroup.subtree_control"]);
}

#[test]
fn setup_enables_io_when_available() {
    let fake = Fake::new(ALL);
    fake.service(ALL);
    let tree = enabled(cgroup::setup_with(&fake.probe(&proc_line(OWN), 77)));
    assert_eq!(
        fake.read(&format!("{OWN}/cgroup.subtree_control")),
        "+cpu +memory +pids +io"
    );
    assert_eq!(tree.controllers(), ["cpu", "memory", "pids", "io"]);
}

#[test]
fn setup_does_not_enable_controllers_when_the_move_fails() {
    // The no-internal-processes rule: subtree_control only after the move.
    let fake = Fake::new(ALL);
    fake.cgroup(OWN, ALL);
    // The supervisor "cgroup" has no cgroup.procs: the move fails.
    fs::create_dir(fake.path(&format!("{OWN}/supervisor"))).unwrap();
    let (reason, fix) = disabled(cgroup::setup_with(&fake.probe(&proc_line(OWN), 77)));
    let procs = fake.path(&format!("{OWN}/supervisor/cgroup.procs"));
    assert!(reason.contains(&procs.display().to_string()), "{reason}");
    assert!(
        reason.contains("\"77\""),
        "names the data written: {reason}"
    );
    assert!(fix.contains("Delegate=yes"), "{fix}");
    assert_eq!(fake.read(&format!("{OWN}/cgroup.subtree_control")), "");
}

#[test]
fn setup_after_restart_in_place_uses_the_parent_of_supervisor() {
    let fake = Fake::new(ALL);
    fake.service(ALL);
    let tree = enabled(cgroup::setup_with(
        &fake.probe(&proc_line(&format!("{OWN}/supervisor")), 5),
    ));
    assert_eq!(tree.own(), Path::new(OWN));
    assert_eq!(fake.read(&format!("{OWN}/supervisor/cgroup.procs")), "5");
}

#[test]
fn hybrid_layout_is_disabled_with_reason_and_fix() {
    let fake = Fake::new(ALL);
    fake.service(ALL);
    let mut probe = fake.probe(&proc_line(OWN), 5);
    probe.layout = Layout::Hybrid;
    let a = cgroup::setup_with(&probe);
    assert!(
        a.status_line().starts_with("off (cgroup v1/hybrid layout"),
        "{}",
        a.status_line()
    );
    let log = a.log_line().unwrap();
    assert!(log.contains("unified"), "{log}");
    let (reason, fix) = disabled(a);
    assert!(reason.contains("/unified"), "{reason}");
    assert!(!reason.contains('\n') && !fix.contains('\n'));
    assert!(fix.contains("systemd.unified_cgroup_hierarchy"), "{fix}");
    // Nothing was touched.
    assert_eq!(fake.read(&format!("{OWN}/supervisor/cgroup.procs")), "");

    probe.layout = Layout::Legacy;
    let (reason, _) = disabled(cgroup::setup_with(&probe));
    assert!(reason.contains("legacy"), "{reason}");
}

#[test]
fn layout_classification() {
    use cgroup::classify_layout as c;
    assert_eq!(c(Some(FsKind::Cgroup2), None), Layout::Unified);
    assert_eq!(
        c(Some(FsKind::Tmpfs), Some(FsKind::Cgroup2)),
        Layout::Hybrid
    );
    assert_eq!(c(Some(FsKind::Tmpfs), None), Layout::Legacy);
    assert_eq!(c(Some(FsKind::Tmpfs), Some(FsKind::Tmpfs)), Layout::Legacy);
    assert_eq!(c(None, None), Layout::Missing);
    assert!(
        matches!(c(Some(FsKind::Other("0xef53".into())), None), Layout::NotCgroup(s) if s.contains("0xef53"))
    );
}

#[test]
fn a_plain_directory_is_not_cgroup2() {
    let fake = Fake::new(ALL);
    let layout = cgroup::detect_layout(&fake.root());
    assert!(
        matches!(layout, Layout::Legacy | Layout::NotCgroup(_)),
        "{layout:?}"
    );
    let (reason, _) = disabled(cgroup::setup(&fake.root()));
    assert!(
        reason.contains(&fake.root().display().to_string()),
        "{reason}"
    );

    let (reason, _) = disabled(cgroup::setup(&fake.path("nonexistent")));
    assert!(reason.contains("does not exist"), "{reason}");
}

#[test]
fn this_hybrid_host_is_disabled_for_real() {
    // This build machine: cgroup v1 controllers + cgroup2 at
    // /sys/fs/cgroup/unified (the VM test covers real cgroup v2).
    let root = Path::new("/sys/fs/cgroup");
    assert_eq!(
        cgroup::detect_layout(root),
        Layout::Hybrid,
        "this test expects the build host's hybrid cgroup layout"
    );
    let a = cgroup::setup(root);
    let status = a.status_line();
    let (reason, fix) = disabled(a);
    assert!(reason.contains("hybrid"), "{reason}");
    assert!(reason.contains("/sys/fs/cgroup/unified"), "{reason}");
    assert!(fix.contains("unified"), "{fix}");
    assert_eq!(status, format!("off ({reason})"));
}

#[test]
fn missing_memory_controller_gives_the_raspberry_pi_hint() {
    let fake = Fake::new("cpuset cpu io pids");
    fake.service("cpuset cpu io pids");
    let (reason, fix) = disabled(cgroup::setup_with(&fake.probe(&proc_line(OWN), 5)));
    assert!(reason.contains("memory controller"), "{reason}");
    assert!(fix.contains("cgroup_enable=memory"), "{fix}");
    assert!(fix.contains("/boot/firmware/cmdline.txt"), "{fix}");
    assert_eq!(fake.read(&format!("{OWN}/cgroup.subtree_control")), "");
}

#[test]
fn controller_not_delegated_to_own_cgroup() {
    let fake = Fake::new(ALL);
    fake.service("cpu io");
    let (reason, fix) = disabled(cgroup::setup_with(&fake.probe(&proc_line(OWN), 5)));
    assert!(reason.contains("memory, pids"), "{reason}");
    assert!(reason.contains("not delegated"), "{reason}");
    assert!(fix.contains("Delegate=yes"), "{fix}");
}

#[test]
fn root_cgroup_and_missing_v2_entry_are_disabled() {
    let fake = Fake::new(ALL);
    let (reason, fix) = disabled(cgroup::setup_with(&fake.probe("0::/\n", 5)));
    assert!(reason.contains("root cgroup"), "{reason}");
    assert!(fix.contains("Delegate=yes"), "{fix}");
    assert!(!fake.path("supervisor").exists());

    let (reason, _) = disabled(cgroup::setup_with(&fake.probe("4:memory:/x\n1:cpu:/\n", 5)));
    assert!(reason.contains("0::"), "{reason}");

    let (reason, _) = disabled(cgroup::setup_with(
        &fake.probe(&proc_line("/gone.service"), 5),
    ));
    assert!(reason.contains("/gone.service"), "{reason}");
}

#[test]
fn require_limits_turns_disabled_into_an_error() {
    let off = || Availability::Disabled {
        reason: "no cgroup v2".into(),
        fix: "boot with it".into(),
    };
    assert!(off().require(false).unwrap().is_none());
    let err = off().require(true).unwrap_err();
    assert!(matches!(err, CgroupError::LimitsRequired { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("no cgroup v2") && msg.contains("boot with it"),
        "{msg}"
    );

    let fake = Fake::new(ALL);
    fake.service(ALL);
    let on = cgroup::setup_with(&fake.probe(&proc_line(OWN), 5));
    assert_eq!(on.status_line(), "on");
    assert!(on.log_line().is_none());
    assert!(on.require(true).unwrap().is_some());
}

// ---------------------------------------------------------------- limits

fn tree_with(fake: &Fake, controllers: &str) -> CgroupTree {
    fake.cgroup(OWN, controllers);
    CgroupTree::at(fake.root(), OWN.into())
}

#[test]
fn cpu_max_conversion() {
    let v = |c| cgroup::cpu_max_value(Some(c)).unwrap();
    assert_eq!(v(1.5), "150000 100000");
    assert_eq!(v(0.5), "50000 100000");
    assert_eq!(v(2.0), "200000 100000");
    assert_eq!(v(0.01), "1000 100000");
    assert_eq!(v(0.333333), "33333 100000");
    assert_eq!(cgroup::cpu_max_value(None).unwrap(), "max 100000");
    for bad in [0.0, -1.0, 0.001, f64::NAN, f64::INFINITY] {
        let e = cgroup::cpu_max_value(Some(bad)).unwrap_err();
        assert!(e.to_string().contains("cpu_max"), "{e}");
    }
}

#[test]
fn group_limits_are_written_and_reset_on_reload() {
    let fake = Fake::new(ALL);
    let tree = tree_with(&fake, ALL);
    let g = format!("{OWN}/text");
    fake.cgroup(&g, ALL);

    let limits = Limits {
        memory_max: Some(512 << 20),
        memory_high: Some(400 << 20),
        memory_swap_max: Some(0),
        cpu_max: Some(1.5),
        cpu_weight: Some(200),
        pids_max: Some(64),
        io_weight: Some(50),
    };
    let warnings = tree.prepare_group("text", &limits).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(fake.read(&format!("{g}/memory.max")), "536870912");
    assert_eq!(fake.read(&format!("{g}/memory.high")), "419430400");
    assert_eq!(fake.read(&format!("{g}/memory.swap.max")), "0");
    assert_eq!(fake.read(&format!("{g}/cpu.max")), "150000 100000");
    assert_eq!(fake.read(&format!("{g}/cpu.weight")), "200");
    assert_eq!(fake.read(&format!("{g}/pids.max")), "64");
    assert_eq!(fake.read(&format!("{g}/io.weight")), "default 50");
    assert_eq!(
        fake.read(&format!("{g}/cgroup.subtree_control")),
        "+cpu +memory +pids +io"
    );

    // A reload without limits puts every file back to the default.
    tree.prepare_group("text", &Limits::default()).unwrap();
    assert_eq!(fake.read(&format!("{g}/memory.max")), "max");
    assert_eq!(fake.read(&format!("{g}/memory.high")), "max");
    assert_eq!(fake.read(&format!("{g}/memory.swap.max")), "max");
    assert_eq!(fake.read(&format!("{g}/cpu.max")), "max 100000");
    assert_eq!(fake.read(&format!("{g}/cpu.weight")), "100");
    assert_eq!(fake.read(&format!("{g}/pids.max")), "max");
    assert_eq!(fake.read(&format!("{g}/io.weight")), "default 100");
}

#[test]
fn limits_that_this_host_cannot_apply_are_warnings() {
    let fake = Fake::new("cpu memory pids");
    let tree = tree_with(&fake, "cpu memory pids");
    let g = format!("{OWN}/text");
    fake.cgroup(&g, "cpu memory pids");
    fs::remove_file(fake.path(&format!("{g}/memory.swap.max"))).unwrap(); // no swap accounting
    let limits = Limits {
        memory_swap_max: Some(0),
        io_weight: Some(50),
        pids_max: Some(10),
        ..Limits::default()
    };
    let warnings = tree.prepare_group("text", &limits).unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("memory_swap_max") && warnings[0].contains("memory.swap.max"));
    assert!(warnings[1].contains("io_weight") && warnings[1].contains("io controller"));
    assert_eq!(fake.read(&format!("{g}/pids.max")), "10");
    assert_eq!(
        fake.read(&format!("{g}/cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert!(!fake.path(&format!("{g}/io.weight")).exists());

    // Unset and unavailable: no warning.
    assert!(
        tree.prepare_group("text", &Limits::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn invalid_limits_and_names_are_errors_naming_them() {
    let fake = Fake::new(ALL);
    let tree = tree_with(&fake, ALL);
    let e = tree
        .prepare_group(
            "text",
            &Limits {
                cpu_weight: Some(0),
                ..Limits::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("cpu_weight = 0"), "{e}");
    assert!(
        !fake.path(&format!("{OWN}/text")).exists(),
        "nothing created on a bad limit"
    );
    for bad in ["", "..", "a/b", "cgroup.procs", "supervisor"] {
        assert!(
            matches!(
                tree.prepare_group(bad, &Limits::default()),
                Err(CgroupError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        tree.prepare_instance("text", "../x"),
        Err(CgroupError::InvalidName { .. })
    ));
    // A write that fails names the file and the data.
    fake.cgroup(&format!("{OWN}/g"), ALL);
    fs::remove_file(fake.path(&format!("{OWN}/g/cgroup.subtree_control"))).unwrap();
    let e = tree
        .prepare_group("g", &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("g/cgroup.subtree_control") && e.contains("\"+cpu +memory +pids +io\""),
        "{e}"
    );
}

// ---------------------------------------------------------------- leaves

#[test]
fn instance_leaf_sets_oom_group_and_a_child_joins_it_before_exec() {
    let fake = Fake::new(ALL);
    let tree = tree_with(&fake, ALL);
    fake.cgroup(&format!("{OWN}/text"), ALL);
    tree.prepare_group("text", &Limits::default()).unwrap();
    let leaf_rel = format!("{OWN}/text/text-1");
    fake.cgroup(&leaf_rel, ALL);

    let leaf = tree.prepare_instance("text", "text-1").unwrap();
    assert_eq!(fake.read(&format!("{leaf_rel}/memory.oom.group")), "1");
    assert_eq!(leaf.path(), fake.path(&leaf_rel));
    assert_eq!(leaf.oom_baseline(), OomCounts::default());

    let fd = leaf.procs_fd();
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert!(flags & libc::FD_CLOEXEC != 0, "procs fd must be CLOEXEC");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("readlink /proc/$$/fd/{fd} || echo closed"))
        .stdout(Stdio::piped());
    unsafe {
        cmd.pre_exec(move || cgroup::join_cgroup_fd(fd));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    // The child wrote "0" (itself) to the leaf's cgroup.procs...
    assert_eq!(fake.read(&format!("{leaf_rel}/cgroup.procs")), "0");
    // ...and the worker does not inherit the fd.
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        !seen.contains("cgroup.procs"),
        "fd leaked into the worker: {seen}"
    );
}

#[test]
fn join_failure_is_reported() {
    // A closed fd: the child must fail to spawn instead of running outside.
    let mut cmd = Command::new("true");
    unsafe {
        cmd.pre_exec(|| cgroup::join_cgroup_fd(987_654));
    }
    let e = cmd.spawn().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));
}

#[test]
fn stats_are_parsed() {
    let fake = Fake::new(ALL);
    let tree = tree_with(&fake, ALL);
    let leaf = format!("{OWN}/text/text-1");
    fake.cgroup(&format!("{OWN}/text"), ALL);
    fake.cgroup(&leaf, ALL);
    fake.write(&format!("{leaf}/memory.current"), "123456\n");
    fake.write(
        &format!("{leaf}/cpu.stat"),
        "usage_usec 7890\nuser_usec 5000\nsystem_usec 2890\nnr_periods 0\n",
    );
    fake.write(&format!("{leaf}/pids.current"), "3\n");
    fake.write(
        &format!("{leaf}/memory.events"),
        "low 0\nhigh 2\nmax 5\noom 1\noom_kill 1\noom_group_kill 1\n",
    );
    assert_eq!(
        tree.stats("text", "text-1"),
        Some(Stats {
            memory_current: Some(123456),
            cpu_usage_usec: Some(7890),
            pids_current: Some(3),
            oom: Some(OomCounts {
                oom_kill: 1,
                oom_group_kill: 1
            }),
        })
    );
    assert_eq!(tree.stats("text", "text-9"), None);
    // A leaf without the memory/pids controllers.
    let bare = format!("{OWN}/text/text-2");
    fake.cgroup(&bare, "");
    let s = tree.stats("text", "text-2").unwrap();
    assert_eq!(
        (s.memory_current, s.pids_current, s.oom),
        (None, None, None)
    );
    assert_eq!(s.cpu_usage_usec, Some(0));
    assert!(tree.group_stats("text").is_some());
}

#[test]
fn oom_kill_is_detected_by_comparing_counts() {
    let fake = Fake::new(ALL);
    let tree = tree_with(&fake, ALL);
    let leaf = format!("{OWN}/text/text-1");
    fake.cgroup(&format!("{OWN}/text"), ALL);
    fake.cgroup(&leaf, ALL);
    fake.write(
        &format!("{leaf}/memory.events"),
        "oom 3\noom_kill 2\noom_group_kill 0\n",
    );
    let l = tree.prepare_instance("text", "text-1").unwrap();
    let base = l.oom_baseline();
    assert_eq!(
        base,
        OomCounts {
            oom_kill: 2,
            oom_group_kill: 0
        }
    );
    assert!(!tree.was_oom_killed("text", "text-1", &base));
    fake.write(
        &format!("{leaf}/memory.events"),
        "oom 4\noom_kill 3\noom_group_kill 0\n",
    );
    assert!(tree.was_oom_killed("text", "text-1", &base));
    fake.write(
        &format!("{leaf}/memory.events"),
        "oom 4\noom_kill 2\noom_group_kill 1\n",
    );
    assert!(tree.was_oom_killed("text", "text-1", &base));
    assert!(!tree.was_oom_killed("text", "gone", &base));
}

// ---------------------------------------------------------------- kill

fn leaf_in(fake: &Fake, tree: &CgroupTree, cgroup_kill: bool) -> String {
    fake.cgroup(&format!("{OWN}/text"), ALL);
    tree.prepare_group("text", &Limits::default()).unwrap();
    let leaf = format!("{OWN}/text/text-1");
    fake.cgroup(&leaf, ALL);
    if cgroup_kill {
        fake.write(&format!("{leaf}/cgroup.kill"), "");
    }
    leaf
}

#[test]
fn final_kill_without_cgroup_kill_signals_every_pid_in_cgroup_procs() {
    let fake = Fake::new(ALL);
    let tree = tree_with(&fake, ALL);
    let leaf = leaf_in(&fake, &tree, false);
    let mut child = Command::new("sleep")
        .arg("100")
        .spawn()
        .expect("spawn sleep");
    fake.write(
        &format!("{leaf}/cgroup.procs"),
        &format!("{}\n", child.id()),
    );
    fake.write(&format!("{leaf}/cgroup.events"), "populated 1\nfrozen 0\n");

    // Play the kernel: once the process is gone the cgroup is unpopulated.
    let events = fake.path(&format!("{leaf}/cgroup.events"));
    let reaper = std::thread::spawn(move || {
        let status = child.wait().unwrap();
        fs::write(events, "populated 0\nfrozen 0\n").unwrap();
        status
    });
    let start = Instant::now();
    let outcome = tree.kill_instance("text", "text-1").unwrap();
    let status = reaper.join().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(
        matches!(outcome.method, KillMethod::Signals { rounds } if rounds >= 1),
        "{outcome:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    tree.remove_instance("text", "text-1").unwrap();
    assert!(!fake.path(&leaf).exists());
    // Removing again is fine.
    tree.remove_instance("text", "text-1").unwrap();
}

#[test]
fn final_kill_uses_cgroup_kill_when_present() {
    let fake = Fake::new(ALL);
    let tree = tree_with(&fake, ALL);
    let leaf = leaf_in(&fake, &tree, true);
    let outcome = tree.kill_instance("text", "text-1").unwrap();
    assert_eq!(outcome.method, KillMethod::CgroupKill);
    assert_eq!(fake.read(&format!("{leaf}/cgroup.kill")), "1");
    assert_eq!(
        tree.kill_instance("text", "nope").unwrap().method,
        KillMethod::Absent
    );
}

#[test]
fn final_kill_is_bounded_and_names_the_cgroup() {
    let fake = Fake::new(ALL);
    let tree = tree_with(&fake, ALL);
    let leaf = leaf_in(&fake, &tree, true);
    fake.write(&format!("{leaf}/cgroup.events"), "populated 1\nfrozen 0\n");
    let start = Instant::now();
    let e = tree.kill_instance("text", "text-1").unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(matches!(e, CgroupError::StillPopulated { .. }));
    assert!(e.to_string().contains("text/text-1"), "{e}");
}

#[test]
fn pids_that_are_not_positive_are_rejected() {
    let p = Path::new("/x/cgroup.procs");
    assert_eq!(cgroup::parse_pids(p, "12\n34\n").unwrap(), [12, 34]);
    for bad in ["0\n", "-1\n", "12\nabc\n"] {
        let e = cgroup::parse_pids(p, bad).unwrap_err().to_string();
        assert!(e.contains("/x/cgroup.procs"), "{e}");
    }
}

#[test]
fn removing_a_group_removes_its_leaves() {
    let fake = Fake::new(ALL);
    let tree = tree_with(&fake, ALL);
    fake.cgroup(&format!("{OWN}/supervisor"), "");
    for g in ["text", "mail"] {
        fake.cgroup(&format!("{OWN}/{g}"), ALL);
        tree.prepare_group(g, &Limits::default()).unwrap();
    }
    fake.cgroup(&format!("{OWN}/text/text-1"), ALL);
    fake.cgroup(&format!("{OWN}/text/text-2"), ALL);
    tree.prepare_instance("text", "text-1").unwrap();
    assert_eq!(tree.groups().unwrap(), ["mail", "text"]);

    tree.remove_group("text").unwrap();
    assert!(!fake.path(&format!("{OWN}/text")).exists());
    assert_eq!(tree.groups().unwrap(), ["mail"]);
    tree.remove_group("text").unwrap();
}

// ---------------------------------------------------------------- doctor

/// The cgroup findings of `clearifyctl doctor` on the fake cgroupfs, with
/// `require_limits = true`, so a failure stays a failure.
fn doctor_with(fake: &Fake, layout: Layout, cmdline: &str) -> Vec<Finding> {
    let mut host = Host::new(Path::new("/nonexistent/workers.toml"), None);
    host.cgroup_root = fake.root();
    host.cgroup_layout = layout;
    host.proc_self_cgroup = Some("0::/user.slice/user-0.slice/session-1.scope\n".into());
    host.proc_cmdline = Some(cmdline.into());
    host.service_cgroup = OWN.into();
    doctor::cgroup_checks(&host, true)
}

/// The status of check `name`, and its detail and fix.
fn level_of(checks: &[Finding], name: &str) -> (Level, String) {
    let c = checks
        .iter()
        .find(|c| c.check == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:?}"));
    let fix = c.fix.as_deref().unwrap_or_default();
    (c.status, format!("{}\nfix: {fix}", c.detail))
}

#[test]
fn doctor_all_ok_on_a_delegated_service() {
    let fake = Fake::new(ALL);
    fake.service(ALL);
    fake.write(
        &format!("{OWN}/cgroup.subtree_control"),
        "cpu io memory pids\n",
    );
    let checks = doctor_with(&fake, Layout::Unified, "quiet");
    let names: Vec<_> = checks.iter().map(|c| c.check.as_str()).collect();
    assert_eq!(
        names,
        [
            "cgroup v2",
            "own cgroup",
            "memory controller",
            "controllers",
            "delegation",
            "delegated controllers"
        ]
    );
    for c in &checks {
        assert_eq!(c.status, Level::Ok, "{c:?}");
    }
    assert!(
        level_of(&checks, "own cgroup")
            .1
            .contains("session-1.scope")
    );
}

#[test]
fn doctor_raspberry_pi_without_memory_controller() {
    let fake = Fake::new("cpuset cpu io pids");
    let checks = doctor_with(
        &fake,
        Layout::Unified,
        "console=tty1 cgroup_disable=memory rootwait",
    );
    let (level, detail) = level_of(&checks, "memory controller");
    assert_eq!(level, Level::Fail);
    assert!(detail.contains("cgroup_enable=memory"), "{detail}");
    assert!(detail.contains("/boot/firmware/cmdline.txt"), "{detail}");
    assert!(detail.contains("has cgroup_disable=memory"), "{detail}");
    assert_eq!(level_of(&checks, "controllers").0, Level::Fail);
    // The service is not running here.
    assert_eq!(level_of(&checks, "delegation").0, Level::Warn);
    assert_eq!(Level::Fail.to_string(), "fail");
}

#[test]
fn doctor_service_without_delegation() {
    let fake = Fake::new("cpu memory pids");
    fake.cgroup(OWN, "cpu");
    let checks = doctor_with(&fake, Layout::Unified, "");
    assert_eq!(
        level_of(&checks, "controllers").0,
        Level::Warn,
        "io missing"
    );
    let (level, detail) = level_of(&checks, "delegation");
    assert_eq!(level, Level::Fail);
    assert!(detail.contains("Delegate=yes"), "{detail}");
    let (level, detail) = level_of(&checks, "delegated controllers");
    assert_eq!(level, Level::Fail);
    assert!(detail.contains("memory, pids"), "{detail}");
}

#[test]
fn doctor_on_this_hybrid_host() {
    let checks = doctor::cgroup_checks(
        &Host::new(Path::new("/nonexistent/workers.toml"), None),
        true,
    );
    let (level, detail) = level_of(&checks, "cgroup v2");
    assert_eq!(
        level,
        Level::Fail,
        "this test expects the build host's hybrid layout"
    );
    assert!(detail.contains("hybrid"), "{detail}");
    assert_eq!(level_of(&checks, "own cgroup").0, Level::Ok);
    assert_eq!(checks.len(), 2, "{checks:?}");
}

// ------------------------------------------------- a previous daemon's leaves

/// A child that notes SIGTERM in `term_file` and exits, or (with
/// `ignore`) ignores it; the fake kernel (a thread) empties `leaf`'s
/// cgroup.procs and marks it unpopulated once the child is gone.
fn worker_in_leaf(
    fake: &Fake,
    leaf: &str,
    term_file: &Path,
    ignore: bool,
) -> std::thread::JoinHandle<std::process::ExitStatus> {
    let script = if ignore {
        "trap '' TERM; while :; do sleep 0.05; done".to_string()
    } else {
        format!(
            "trap 'touch {}; exit 0' TERM; while :; do sleep 0.05; done",
            term_file.display()
        )
    };
    let mut child = Command::new("sh").arg("-c").arg(script).spawn().unwrap();
    fake.write(
        &format!("{leaf}/cgroup.procs"),
        &format!("{}\n", child.id()),
    );
    fake.write(&format!("{leaf}/cgroup.events"), "populated 1\nfrozen 0\n");
    let procs = fake.path(&format!("{leaf}/cgroup.procs"));
    let events = fake.path(&format!("{leaf}/cgroup.events"));
    std::thread::spawn(move || {
        let status = child.wait().unwrap();
        fs::write(procs, "").unwrap();
        fs::write(events, "populated 0\nfrozen 0\n").unwrap();
        status
    })
}

#[test]
fn workers_left_in_leaves_by_a_previous_daemon_are_stopped_warmly_then_killed() {
    let fake = Fake::new(ALL);
    let tree = tree_with(&fake, ALL);
    fake.cgroup(&format!("{OWN}/text"), ALL);
    tree.prepare_group("text", &Limits::default()).unwrap();
    let warm_leaf = format!("{OWN}/text/text-1");
    let deaf_leaf = format!("{OWN}/text/text-2");
    fake.cgroup(&warm_leaf, ALL);
    fake.cgroup(&deaf_leaf, ALL);
    let dir = tempfile::tempdir().unwrap();
    let warm_term = dir.path().join("warm.term");
    let warm = worker_in_leaf(&fake, &warm_leaf, &warm_term, false);
    let deaf = worker_in_leaf(&fake, &deaf_leaf, &dir.path().join("deaf.term"), true);
    // Let the shells set their traps.
    std::thread::sleep(Duration::from_millis(200));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    rt.block_on(cgroup::stop_leftover_leaves(&tree, Duration::from_secs(1)));
    let warm_status = warm.join().unwrap();
    let deaf_status = deaf.join().unwrap();
    assert!(warm_term.exists(), "text-1 got SIGTERM first");
    assert_eq!(warm_status.code(), Some(0), "{warm_status:?}");
    assert_eq!(deaf_status.signal(), Some(libc::SIGKILL), "{deaf_status:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "text-2 had its stop_timeout: {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

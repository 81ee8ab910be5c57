//! Unit tests of the doctor: each family on small fakes, and the text.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use super::celery::tail;
use super::socket::mode_string;
use super::*;

#[test]
fn journald_accepts_a_connection_to_a_real_datagram_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    let server = UnixDatagram::bind(&path).unwrap();
    let c = journald_check(&path);
    assert_eq!(c.status, Status::Ok, "{c:?}");
    assert!(c.detail.ends_with("accepts datagrams"), "{c:?}");
    // Connecting sends nothing.
    server.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        server.recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );

    // Nobody listening any more: a stale socket file.
    drop(server);
    let c = journald_check(&path);
    assert_eq!(c.status, Status::Fail, "{c:?}");
    assert!(c.detail.contains("does not accept datagrams"), "{c:?}");
    assert!(c.fix.unwrap().contains("systemctl status systemd-journald"));

    let c = journald_check(&dir.path().join("missing"));
    assert_eq!(c.status, Status::Warn, "{c:?}");
    assert!(c.detail.contains("does not exist: no systemd journal"));

    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let c = journald_check(&file);
    assert_eq!(c.status, Status::Fail, "{c:?}");
    assert!(c.detail.ends_with("is not a socket"), "{c:?}");
}

/// A host whose cgroupfs is a tempdir offering `controllers` at its root,
/// with no service running.
fn fake_host(controllers: &str) -> (tempfile::TempDir, Host) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
    let mut host = Host::new(Path::new("/nonexistent/workers.toml"), None);
    host.cgroup_root = dir.path().to_path_buf();
    host.cgroup_layout = Layout::Unified;
    host.proc_self_cgroup = Some("0::/user.slice\n".into());
    host.proc_cmdline = Some("quiet".into());
    (dir, host)
}

#[test]
fn cgroup_failures_are_warnings_unless_limits_are_required() {
    let (_dir, host) = fake_host("cpu io pids\n");
    let optional = cgroup_checks(&host, false);
    let statuses = |fs: &[Finding]| {
        fs.iter()
            .map(|f| (f.check.clone(), f.status))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        statuses(&optional),
        [
            ("cgroup v2".to_string(), Status::Ok),
            ("own cgroup".to_string(), Status::Ok),
            ("memory controller".to_string(), Status::Warn),
            ("controllers".to_string(), Status::Warn),
            ("delegation".to_string(), Status::Warn),
            ("delegated controllers".to_string(), Status::Warn),
        ]
    );
    let memory = &optional[2];
    assert_eq!(
        memory.detail,
        format!(
            "not in {}/cgroup.controllers: memory limits and OOM handling are off",
            host.cgroup_root.display()
        )
    );
    let fix = memory.fix.as_deref().unwrap();
    assert!(fix.starts_with("add cgroup_enable=memory "), "{fix}");
    assert!(fix.contains("/boot/firmware/cmdline.txt"), "{fix}");
    assert!(fix.contains("runs without limits"), "{fix}");
    assert_eq!(optional[0].fix, None);
    assert!(
        optional[4]
            .fix
            .as_deref()
            .unwrap()
            .contains("systemctl start clearify-workerd"),
        "{optional:?}"
    );

    let required = cgroup_checks(&host, true);
    assert_eq!(required[2].status, Status::Fail);
    assert!(
        required[2]
            .fix
            .as_deref()
            .unwrap()
            .contains("require_limits = true, so the daemon will not start")
    );
    assert_eq!(required[3].status, Status::Fail);
    assert!(
        required[3].fix.as_deref().unwrap().contains("io_weight"),
        "{:?}",
        required[3]
    );
    // Warnings stay warnings.
    assert_eq!(required[4].status, Status::Warn);
}

#[test]
fn render_aligns_names_indents_details_and_shows_hints_for_warn_and_fail() {
    let findings = vec![
        Finding::ok("config", "valid"),
        Finding::fail("control socket", "missing\nsecond line", "start it"),
        Finding::warn("journald", "absent", "use systemd"),
    ];
    let out = render(&findings);
    assert_eq!(
        out,
        "ok    config          valid\n\
         fail  control socket  missing\n\
         \x20                     second line\n\
         \x20     hint: start it\n\
         warn  journald        absent\n\
         \x20     hint: use systemd\n\
         \n1 ok, 1 warn, 1 fail\n"
    );
    assert_eq!(exit_code(&findings), 1);
    assert_eq!(exit_code(&findings[..1]), 0);
    assert_eq!(exit_code(&[findings[0].clone(), findings[2].clone()]), 0);
}

#[test]
fn render_escapes_control_characters_from_outside() {
    // `celery report` output and the daemon's replies are text from
    // outside (the app, a worker, a peer): no escape sequence may reach
    // the terminal raw (issue 12 §6).
    let findings = vec![Finding::fail(
        "celery",
        "report:\n\x1b]0;owned\x07\x1b[2Jtitle\rgone",
        "fix \x1b[31mit",
    )];
    let out = render(&findings);
    assert!(
        !out.contains('\x1b') && !out.contains('\x07') && !out.contains('\r'),
        "{out:?}"
    );
    assert!(
        out.contains("\\x1b]0;owned\\x07\\x1b[2Jtitle\\x0dgone"),
        "{out}"
    );
    assert!(out.contains("hint: fix \\x1b[31mit"), "{out}");
}

#[test]
fn socket_modes_read_like_ls() {
    assert_eq!(mode_string(0o660), "srw-rw----");
    assert_eq!(mode_string(0o755), "srwxr-xr-x");
}

#[test]
fn tail_keeps_the_last_lines() {
    let text: String = (1..=20).map(|i| format!("line {i}\n\n")).collect();
    let t = tail(&text);
    assert!(
        t.starts_with("; last 12 line(s) of its output:\n  line 9\n"),
        "{t}"
    );
    assert!(t.ends_with("\n  line 20"), "{t}");
    assert_eq!(tail(" \n"), "; no output");
}

#[test]
fn an_admin_group_that_does_not_exist_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let f = admin_socket_check(&socket, "clearify-no-such-group");
    assert_eq!(f.check, "admin socket");
    assert_eq!(f.status, Status::Warn, "{f:?}");
    assert_eq!(
        f.detail,
        "there is no group clearify-no-such-group ([daemon].admin_group), so only root and \
         the daemon's user may start, stop, restart or reload"
    );
    assert!(
        f.fix
            .as_deref()
            .unwrap()
            .contains("sudo groupadd --system clearify-no-such-group"),
        "{f:?}"
    );
    // A left-over admin.sock is named.
    std::fs::write(dir.path().join("admin.sock"), "").unwrap();
    let f = admin_socket_check(&socket, "clearify-no-such-group");
    assert!(
        f.detail.contains("admin.sock is left over and only root"),
        "{f:?}"
    );
}

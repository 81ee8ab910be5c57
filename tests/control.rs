//! The control server in-process, on a real Unix socket in a tempdir, with a
//! fake supervisor answering behind it (tests/control_support).

mod control_support;
#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/redis.rs"]
mod redis_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use clearify_workerd::control::client::{self, ClientError, Connection};
use clearify_workerd::control::protocol::{
    Envelope, ErrorKind, MAX_FRAME, MAX_REQUEST, MAX_TARGET_LEN, MAX_TARGETS, PROTOCOL_VERSION,
    Request, Response, encode_frame, read_frame,
};
use clearify_workerd::control::server::{
    self, ADMIN_RESERVE, ControlError, IDLE_TIMEOUT, MAX_CLIENTS, ServeOptions,
};
use control_support::{Fake, canned_status, root_only};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

const T: Duration = Duration::from_secs(5);

fn opts(idle_ms: u64) -> ServeOptions {
    ServeOptions {
        idle_timeout: Duration::from_millis(idle_ms),
        ..ServeOptions::default()
    }
}

async fn ask(socket: &Path, req: Request) -> Response {
    client::request(socket, req, T).await.expect("request")
}

/// Reads one response, or None when the server closed the connection.
async fn read_response(s: &mut UnixStream) -> Option<Response> {
    tokio::time::timeout(T, read_frame::<_, Response>(s))
        .await
        .expect("server answers or closes within 5 s")
        .unwrap_or(None)
}

async fn send_raw(s: &mut UnixStream, bytes: &[u8]) {
    // The server may close as soon as it has seen enough; ignore EPIPE.
    let _ = s.write_all(bytes).await;
}

fn expect_error(resp: Option<Response>, want: ErrorKind) -> String {
    match resp {
        Some(Response::Error { kind, message }) if kind == want => message,
        other => panic!("expected Error {{{want:?}}}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_type_round_trips_to_the_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let fake = Fake::start(&sock, root_only(), None, opts(2000));

    match ask(&sock, Request::Status { targets: vec![] }).await {
        Response::Status(s) => assert_eq!(s, canned_status()),
        other => panic!("{other:?}"),
    }
    match ask(
        &sock,
        Request::Status {
            targets: vec!["webhook".into()],
        },
    )
    .await
    {
        Response::Status(s) => {
            assert_eq!(s.groups.len(), 1);
            assert_eq!(s.groups[0].instances[0].id, "webhook-1");
        }
        other => panic!("{other:?}"),
    }
    let stop = Request::Stop {
        targets: vec!["text-1".into()],
    };
    assert_eq!(
        ask(&sock, stop.clone()).await,
        Response::Done {
            messages: vec!["text-1: stopping".into()]
        }
    );
    let start = Request::Start {
        targets: vec!["text-1".into()],
    };
    assert!(matches!(
        ask(&sock, start.clone()).await,
        Response::Done { .. }
    ));
    let restart = Request::Restart {
        targets: vec!["text".into()],
        rolling: true,
    };
    assert_eq!(
        ask(&sock, restart.clone()).await,
        Response::Done {
            messages: vec!["text-1: restarting".into(), "text-2: restarting".into()]
        }
    );
    match ask(&sock, Request::Reload).await {
        Response::Reloaded(r) => assert!(r.applied && r.added == ["images-1"]),
        other => panic!("{other:?}"),
    }
    let logs = Request::Logs {
        target: Some("text-1".into()),
        lines: 3,
        since: None,
    };
    match ask(&sock, logs.clone()).await {
        Response::Logs { lines } => {
            let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
            assert_eq!(texts, ["line 24", "line 26", "line 28"]);
        }
        other => panic!("{other:?}"),
    }
    match ask(&sock, Request::Test).await {
        Response::Test(t) => assert!(t.reachable && t.redis_version.as_deref() == Some("7.0.15")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ask(&sock, Request::Version).await,
        Response::Version {
            version: clearify_workerd::VERSION.into(),
            protocol: PROTOCOL_VERSION
        }
    );
    let unknown = Request::Stop {
        targets: vec!["nope-9".into()],
    };
    let msg = match ask(&sock, unknown.clone()).await {
        Response::Error {
            kind: ErrorKind::UnknownTarget,
            message,
        } => message,
        other => panic!("{other:?}"),
    };
    assert!(msg.contains("nope-9"), "{msg}");

    // The supervisor saw exactly these requests, in order, from us.
    let seen = fake.seen();
    assert_eq!(seen.len(), 10);
    assert_eq!(seen[2], stop);
    assert_eq!(seen[3], start);
    assert_eq!(seen[4], restart);
    assert_eq!(seen[5], Request::Reload);
    assert_eq!(seen[6], logs);
    assert_eq!(seen[9], unknown);
    let peer = fake.state.seen.lock().unwrap()[0].1.clone();
    assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
    assert_eq!(peer.gid, nix::unistd::getgid().as_raw());
    assert_eq!(peer.pid, std::process::id() as i32);
    let mut groups: Vec<u32> = nix::unistd::getgroups()
        .unwrap()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    groups.sort_unstable();
    let mut seen_groups = peer.groups.clone();
    seen_groups.sort_unstable();
    assert_eq!(seen_groups, groups, "SO_PEERGROUPS: the client's groups");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_several_requests_and_the_blocking_client_works() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let fake = Fake::start(&sock, root_only(), None, opts(2000));
    let sock2 = sock.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let mut conn = Connection::open(&sock2, T).unwrap();
        let a = conn.call(Request::Version).unwrap();
        let b = conn.call(Request::Status { targets: vec![] }).unwrap();
        let c = client::request_blocking(&sock2, Request::Test, T).unwrap();
        (a, b, c)
    })
    .await
    .unwrap();
    assert!(matches!(answers.0, Response::Version { .. }));
    assert!(matches!(answers.1, Response::Status(_)));
    assert!(matches!(answers.2, Response::Test(_)));
    assert_eq!(fake.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_refused_and_others_keep_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let fake = Fake::start(&sock, root_only(), None, opts(2000));

    // A well-behaved client connected before the garbage arrives.
    let mut good = UnixStream::connect(&sock).await.unwrap();

    // Not JSON.
    let mut s = UnixStream::connect(&sock).await.unwrap();
    send_raw(&mut s, b"\x00\x00\x00\x05hello").await;
    let m = expect_error(read_response(&mut s).await, ErrorKind::BadRequest);
    assert!(m.contains("malformed"), "{m}");
    assert!(
        read_response(&mut s).await.is_none(),
        "closed after a bad frame"
    );

    // JSON, but no such request.
    let mut s = UnixStream::connect(&sock).await.unwrap();
    let body = format!(r#"{{"version":{PROTOCOL_VERSION},"request":{{"type":"format_disk"}}}}"#);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body.as_bytes());
    send_raw(&mut s, &frame).await;
    expect_error(read_response(&mut s).await, ErrorKind::BadRequest);
    assert!(read_response(&mut s).await.is_none());

    // A length prefix of 4 GiB - 1 with nothing behind it: refused at once
    // (nothing is allocated or awaited), then closed.
    let mut s = UnixStream::connect(&sock).await.unwrap();
    send_raw(&mut s, &u32::MAX.to_be_bytes()).await;
    let m = expect_error(read_response(&mut s).await, ErrorKind::BadRequest);
    assert!(m.contains("exceeds the limit"), "{m}");
    assert!(read_response(&mut s).await.is_none());

    // One byte over the limit, with the body actually sent.
    let mut s = UnixStream::connect(&sock).await.unwrap();
    let mut big = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    big.resize(4 + MAX_FRAME + 1, b' ');
    send_raw(&mut s, &big).await;
    expect_error(read_response(&mut s).await, ErrorKind::BadRequest);

    // A request over 64 KiB: refused on its length prefix.
    let mut s = UnixStream::connect(&sock).await.unwrap();
    send_raw(&mut s, &((MAX_REQUEST + 1) as u32).to_be_bytes()).await;
    let m = expect_error(read_response(&mut s).await, ErrorKind::BadRequest);
    assert!(m.contains("exceeds the limit of 65536 bytes"), "{m}");

    // 257 targets, or a target name over 128 bytes: refused while parsing.
    for targets in [
        (0..=MAX_TARGETS).map(|n| n.to_string()).collect::<Vec<_>>(),
        vec!["x".repeat(MAX_TARGET_LEN + 1)],
    ] {
        let mut s = UnixStream::connect(&sock).await.unwrap();
        let frame = encode_frame(&Envelope::new(Request::Stop { targets })).unwrap();
        send_raw(&mut s, &frame).await;
        let m = expect_error(read_response(&mut s).await, ErrorKind::BadRequest);
        assert!(m.contains("at most"), "{m}");
    }
    // 256 are fine (and unknown here).
    let targets: Vec<String> = (0..MAX_TARGETS).map(|n| n.to_string()).collect();
    match ask(&sock, Request::Status { targets }).await {
        Response::Error {
            kind: ErrorKind::UnknownTarget,
            ..
        } => {}
        other => panic!("{other:?}"),
    }

    // A frame cut short by the client closing its side: answered, closed.
    let mut s = UnixStream::connect(&sock).await.unwrap();
    send_raw(&mut s, b"\x00\x00\x01\x00{\"ver").await;
    s.shutdown().await.unwrap();
    let m = expect_error(read_response(&mut s).await, ErrorKind::BadRequest);
    assert!(m.contains("closed in the middle"), "{m}");
    assert!(read_response(&mut s).await.is_none());

    // Another protocol version: answered with Error{Version}.
    let mut s = UnixStream::connect(&sock).await.unwrap();
    let env =
        serde_json::json!({"version": PROTOCOL_VERSION + 1, "request": {"type": "status_v2"}});
    send_raw(&mut s, &encode_frame(&env).unwrap()).await;
    let m = expect_error(read_response(&mut s).await, ErrorKind::Version);
    assert!(
        m.contains(&format!("protocol version {}", PROTOCOL_VERSION + 1)),
        "{m}"
    );

    // None of that reached the supervisor (but the 256 targets); the good
    // client is still served.
    assert_eq!(fake.seen().len(), 1);
    send_raw(
        &mut good,
        &encode_frame(&Envelope::new(Request::Version)).unwrap(),
    )
    .await;
    assert!(matches!(
        read_response(&mut good).await,
        Some(Response::Version { .. })
    ));
    assert!(matches!(
        ask(&sock, Request::Status { targets: vec![] }).await,
        Response::Status(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_idle_timeout_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let _fake = Fake::start(&sock, root_only(), None, opts(600));

    let started = Instant::now();
    let mut silent = UnixStream::connect(&sock).await.unwrap();
    // A slow client: half a request, then nothing.
    let mut slow = UnixStream::connect(&sock).await.unwrap();
    send_raw(&mut slow, b"\x00\x00\x00\x40{\"version\"").await;

    // Meanwhile others are served promptly.
    for _ in 0..5 {
        let t = Instant::now();
        assert!(matches!(
            ask(&sock, Request::Version).await,
            Response::Version { .. }
        ));
        assert!(t.elapsed() < Duration::from_millis(500));
    }
    assert!(
        read_response(&mut silent).await.is_none(),
        "silent client closed"
    );
    assert!(
        read_response(&mut slow).await.is_none(),
        "slow client closed"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "dropped after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_idle_timeout_is_five_seconds() {
    assert_eq!(IDLE_TIMEOUT, Duration::from_secs(5));
    assert_eq!(ServeOptions::default().idle_timeout, IDLE_TIMEOUT);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let listener = server::bind(&sock, None).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    tokio::spawn(server::serve(
        listener,
        root_only(),
        tx,
        std::future::pending(),
    ));

    let started = Instant::now();
    let mut silent = UnixStream::connect(&sock).await.unwrap();
    let closed = tokio::time::timeout(
        Duration::from_secs(9),
        read_frame::<_, Response>(&mut silent),
    )
    .await
    .expect("closed within 9 s");
    assert!(matches!(closed, Ok(None)), "{closed:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4900),
        "dropped too early: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_64_clients_and_8_more_admins_are_served_at_once() {
    assert_eq!(MAX_CLIENTS, 64);
    assert_eq!(ADMIN_RESERVE, 8);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let fake = Fake::start(&sock, root_only(), None, opts(20_000));

    // 64 clients, each answered once (so each holds a slot), then idle;
    // this test runs as root, an admin, so 8 more get the held-back slots.
    let mut held = Vec::new();
    for _ in 0..MAX_CLIENTS + ADMIN_RESERVE {
        let mut s = UnixStream::connect(&sock).await.unwrap();
        send_raw(
            &mut s,
            &encode_frame(&Envelope::new(Request::Version)).unwrap(),
        )
        .await;
        assert!(matches!(
            read_response(&mut s).await,
            Some(Response::Version { .. })
        ));
        held.push(s);
    }
    // The 73rd is told the daemon is busy, and closed.
    let m = match ask(&sock, Request::Version).await {
        Response::Error {
            kind: ErrorKind::Busy,
            message,
        } => message,
        other => panic!("expected Busy, got {other:?}"),
    };
    assert!(m.contains("64"), "{m}");
    // ... which disturbed none of the 64.
    let mut first = held.remove(0);
    send_raw(
        &mut first,
        &encode_frame(&Envelope::new(Request::Status { targets: vec![] })).unwrap(),
    )
    .await;
    assert!(matches!(
        read_response(&mut first).await,
        Some(Response::Status(_))
    ));
    // Freeing a slot lets a new client in.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match ask(&sock, Request::Version).await {
            Response::Version { .. } => break,
            Response::Error {
                kind: ErrorKind::Busy,
                ..
            } if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("slot never freed: {other:?}"),
        }
    }
    assert_eq!(fake.seen().len(), MAX_CLIENTS + ADMIN_RESERVE + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_all_get_their_answers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let fake = Fake::start(&sock, root_only(), None, opts(2000));
    let mut tasks = Vec::new();
    for n in 0..32 {
        let sock = sock.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..10 {
                let req = if (n + k) % 2 == 0 {
                    Request::Status { targets: vec![] }
                } else {
                    Request::Logs {
                        target: None,
                        lines: 5,
                        since: None,
                    }
                };
                match client::request(&sock, req, T).await.unwrap() {
                    Response::Status(s) => assert_eq!(s.groups.len(), 2),
                    Response::Logs { lines } => assert_eq!(lines.len(), 5),
                    other => panic!("{other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fake.seen().len(), 320);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_created_0660_with_the_group_and_parent_dir() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/clearify-workerd/control.sock");
    let nogroup = nix::unistd::Gid::from_raw(65534);
    let _l = server::bind(&sock, Some(nogroup)).unwrap();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), 65534);
    assert!(sock.parent().unwrap().is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    // A crashed daemon leaves its socket file behind: nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let err = std::os::unix::net::UnixStream::connect(&sock).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

    let mut fake = Fake::start(&sock, root_only(), None, opts(2000));
    assert!(matches!(
        ask(&sock, Request::Version).await,
        Response::Version { .. }
    ));

    // A second daemon on the same socket refuses, naming the path, and
    // leaves the first one serving.
    let err = server::bind(&sock, None).unwrap_err();
    assert!(matches!(err, ControlError::AlreadyRunning { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "another clearify-workerd is already running on {}",
            sock.display()
        )),
        "{msg}"
    );
    assert!(matches!(
        ask(&sock, Request::Version).await,
        Response::Version { .. }
    ));

    // Shutdown stops serving and removes the socket file.
    fake.shutdown();
    tokio::time::timeout(T, fake.server.take().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!sock.exists());
    match client::request(&sock, Request::Version, T).await {
        Err(e @ ClientError::NotRunning { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains(&sock.display().to_string())
                    && m.contains("systemctl status clearify-workerd"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_is_not_a_socket_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    std::fs::write(&path, "precious").unwrap();
    let err = server::bind(&path, None).unwrap_err();
    assert!(matches!(err, ControlError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_dropped_request_gets_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let listener = server::bind(&sock, None).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<server::ControlMsg>(4);
    // A supervisor that drops every reply sender (e.g. shutting down).
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            drop(msg.reply);
        }
    });
    tokio::spawn(server::serve_with(
        listener,
        root_only(),
        tx,
        std::future::pending(),
        opts(2000),
    ));
    match ask(&sock, Request::Reload).await {
        Response::Error {
            kind: ErrorKind::Refused,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_name_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.sock");
    let e = client::request(&missing, Request::Version, T)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::NotRunning { .. }));
    assert!(e.to_string().contains(&missing.display().to_string()));

    // A listener that accepts but never answers: Timeout.
    let sock = dir.path().join("mute.sock");
    let _l = tokio::net::UnixListener::bind(&sock).unwrap();
    let e = client::request(&sock, Request::Version, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    let e =
        client::request_blocking(&sock, Request::Version, Duration::from_millis(200)).unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------
// The socket file: mode and group set before it exists.

/// Binds `sock` with `group` on a thread whose umask is `umask` (its own:
/// `unshare(CLONE_FS)`), watching the directory with inotify; returns the
/// events seen for the socket's name.
fn bind_watched(sock: &Path, group: Option<nix::unistd::Gid>, umask: u32) -> Vec<u32> {
    let dir = sock.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    // SAFETY: plain system calls on valid buffers.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0);
    let cdir = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    let wd = unsafe {
        libc::inotify_add_watch(
            fd,
            cdir.as_ptr(),
            libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MODIFY,
        )
    };
    assert!(wd >= 0);
    let handle = tokio::runtime::Handle::current();
    let path = sock.to_path_buf();
    let listener = std::thread::spawn(move || {
        let _rt = handle.enter();
        // SAFETY: this thread's own umask from here on.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_FS), 0);
            libc::umask(umask);
        }
        server::bind(&path, group)
    })
    .join()
    .unwrap()
    .unwrap();
    std::mem::forget(listener); // keep the file; the test's tempdir goes
    let mut buf = vec![0u8; 64 * 1024];
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    unsafe { libc::close(fd) };
    let name = sock.file_name().unwrap().to_str().unwrap();
    let mut events = Vec::new();
    let mut off = 0usize;
    let n = n.max(0) as usize;
    let head = std::mem::size_of::<libc::inotify_event>();
    while off + head <= n {
        // SAFETY: the kernel wrote whole events.
        let ev: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
        let raw = &buf[off + head..off + head + ev.len as usize];
        let evname = std::str::from_utf8(raw).unwrap().trim_end_matches('\0');
        if evname == name {
            events.push(ev.mask);
        }
        off += head + ev.len as usize;
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_born_0660_with_its_group_no_chmod_or_chown_after() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root to pick a group"
    );
    let dir = tempfile::tempdir().unwrap();
    let nogroup = nix::unistd::Gid::from_raw(65534);
    // The packaged unit's umask, and a stricter one.
    for (umask, name) in [(0o027, "a.sock"), (0o077, "b.sock")] {
        let sock = dir.path().join(name);
        let events = bind_watched(&sock, Some(nogroup), umask);
        let meta = std::fs::metadata(&sock).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "umask {umask:o}");
        assert_eq!(meta.gid(), 65534);
        // Created once, never changed afterwards: no IN_ATTRIB (chmod,
        // chown) and nothing else.
        assert_eq!(
            events,
            vec![libc::IN_CREATE],
            "umask {umask:o}: {events:x?}"
        );
    }
    // Without a group: the daemon's own.
    let sock = dir.path().join("c.sock");
    let events = bind_watched(&sock, None, 0o027);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), nix::unistd::getegid().as_raw());
    assert_eq!(events, vec![libc::IN_CREATE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cap_setgid_another_group_is_a_clear_error() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root to drop to nobody"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.path().join("admin.sock");
    let handle = tokio::runtime::Handle::current();
    let path = sock.clone();
    let err = std::thread::spawn(move || {
        let _rt = handle.enter();
        // SAFETY: this thread's own credentials (raw system calls); leaving
        // uid 0 drops its capabilities, CAP_SETGID among them.
        unsafe {
            let groups = [65534u32];
            assert_eq!(libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()), 0);
            assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
        }
        server::bind(&path, Some(nix::unistd::Gid::from_raw(0))).map(|_| ())
    })
    .join()
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, ControlError::Group { gid: 0, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("CAP_SETGID") && msg.contains("admin.sock"),
        "{msg}"
    );
    assert!(!sock.exists(), "no socket file with the wrong group");
}

// ---------------------------------------------------------------------------
// The real daemon under abuse.

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The daemon's RSS once it is idle: after one of each kind of request
/// (so lazily built state exists) and two samples 500 ms apart that agree
/// within 64 KiB.
fn idle_rss(d: &daemon_support::Daemon) -> u64 {
    use std::io::Write;
    for args in [&["status"][..], &["logs", "-n", "5"], &["version"]] {
        assert!(d.ctl(args).status.success(), "{args:?}");
    }
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(d.socket()) {
        let _ = s.write_all(&u32::MAX.to_be_bytes());
    }
    let pid = d.pid();
    let mut last = vm_kib(pid, "VmRSS:");
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = vm_kib(pid, "VmRSS:");
        if now.abs_diff(last) <= 64 {
            return now;
        }
        last = now;
    }
    last
}

/// Waits (at most 15 s) until the RSS of `pid` has settled (two samples
/// 500 ms apart agree within 64 KiB) within 1 MiB of `idle`; returns it.
fn settled_rss(pid: u32, idle: u64) -> u64 {
    let mut last = vm_kib(pid, "VmRSS:");
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = vm_kib(pid, "VmRSS:");
        if now.abs_diff(last) <= 64 && now <= idle + 1024 {
            return now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "RSS did not settle within 1 MiB of idle ({idle} KiB): {last} KiB, then {now} KiB"
        );
        last = now;
    }
}

fn one_group_daemon(redis: &redis_support::RedisServer, extra: &str) -> daemon_support::Daemon {
    let mut d = daemon_support::Daemon::new(&daemon_support::fake_config(
        &redis.url(),
        &format!("[group.text]\nqueues = [\"text\"]\ninstances = 1\n{extra}"),
    ));
    d.start();
    d.running_pid("text-1");
    d
}

/// A `status` request of `bytes` bytes, its targets a list of short names.
fn status_frame(bytes: usize) -> (Vec<u8>, usize) {
    let mut body =
        format!(r#"{{"version":{PROTOCOL_VERSION},"request":{{"type":"status","targets":["a""#)
            .into_bytes();
    let mut n = 1;
    while body.len() + 8 < bytes {
        body.extend_from_slice(br#","a""#);
        n += 1;
    }
    body.extend_from_slice(b"]}}");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    (frame, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_status_requests_from_64_clients_do_not_grow_the_daemon() {
    use std::io::{Read, Write};
    let redis = redis_support::RedisServer::start();
    let d = one_group_daemon(&redis, "");
    let pid = d.pid();
    let idle = idle_rss(&d);
    // Reset the high-water mark (VmHWM) to now.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();

    // 1 MiB with ~262k targets (the issue's attack), and one just under
    // the request cap with ~16k targets (parsed, refused at the 257th).
    let (big, big_n) = status_frame(1024 * 1024);
    let (near, near_n) = status_frame(60 * 1024);
    assert!(big_n > 170_000 && near_n > 10_000);
    let sock = d.socket();
    let started = Instant::now();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            while started.elapsed() < Duration::from_secs(6) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(v) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(v, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut attackers = Vec::new();
    for n in 0..64 {
        let (sock, frame) = (
            sock.clone(),
            if n % 2 == 0 {
                big.clone()
            } else {
                near.clone()
            },
        );
        attackers.push(std::thread::spawn(move || {
            let mut answers = Vec::new();
            for _ in 0..3 {
                let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) else {
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let _ = s.write_all(&frame);
                let mut reply = Vec::new();
                let _ = s.read_to_end(&mut reply);
                answers.push(String::from_utf8_lossy(reply.get(4..).unwrap_or(&[])).into_owned());
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for a in attackers {
        answers.extend(a.join().unwrap());
    }
    let attack_time = started.elapsed();
    sampler.join().unwrap();
    let hwm = vm_kib(pid, "VmHWM:");
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed).max(hwm);

    eprintln!("RSS: idle {idle} KiB, peak during the attack {peak} KiB");
    assert!(
        peak <= 2 * idle + 8 * 1024,
        "RSS went from {idle} KiB to {peak} KiB during the attack"
    );
    // After: back to idle within 1 MiB.
    let after = settled_rss(pid, idle);
    eprintln!("RSS after the attack: {after} KiB (the attack took {attack_time:?})");
    // Every answer that arrived is a refusal, with the reason.
    assert!(
        answers
            .iter()
            .any(|a| a.contains("exceeds the limit of 65536")),
        "{:?}",
        &answers[..answers.len().min(3)]
    );
    assert!(
        answers.iter().any(|a| a.contains("too many targets")),
        "{:?}",
        &answers[..answers.len().min(3)]
    );
    // (Or Busy, when a client reconnects before its last connection's slot
    // is given back.)
    for a in &answers {
        assert!(
            a.is_empty() || a.contains("bad_request") || a.contains("\"busy\""),
            "{a}"
        );
    }
    // And it still answers.
    assert_eq!(d.instance("text-1")["state"], "running");
}

/// The real daemon with two instances of a worker that prints 1000 lines
/// of 4000 control bytes (6 JSON bytes each: the rings hold ~6 MiB of
/// JSON), then terminal escapes, then waits; returned once `logs` shows
/// both tails, with that `clearifyctl logs -n 1000` run.
fn noisy_daemon(
    redis: &redis_support::RedisServer,
) -> (daemon_support::Daemon, std::process::Output) {
    let d0 = daemon_support::Daemon::new("");
    let script = d0.path("noisy-celery");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         trap 'exit 0' TERM\n\
         i=0\n\
         while [ $i -lt 1000 ]; do\n\
           head -c 4000 /dev/zero | tr '\\000' '\\001'; echo \" $i\"\n\
           i=$((i+1))\n\
         done\n\
         printf 'tail \\033]0;pwned\\007\\r\\033[2J end\\n'\n\
         while :; do sleep 1 & wait $!; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = daemon_support::fake_config(
        &redis.url(),
        "[group.text]\nqueues = [\"text\"]\ninstances = 2\n",
    )
    .replace(
        "command = \"{celery}\"",
        &format!("command = \"{}\"", script.display()),
    );
    let mut d = d0;
    d.write_config(&config);
    d.start();
    d.running_pid("text-1");
    // Wait until both rings are full of the long lines.
    let out = daemon_support::wait_for(Duration::from_secs(30), "the tail lines", || {
        let o = d.ctl(&["logs", "-n", "1000"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.success() && text.matches("tail ").count() == 2).then_some(o)
    });
    (d, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_any_size_arrive_in_several_frames() {
    let redis = redis_support::RedisServer::start();
    let (d, out) = noisy_daemon(&redis);
    let text = String::from_utf8(out.stdout).unwrap();
    let long = text.lines().filter(|l| l.contains("\\x01\\x01")).count();
    // Far more than one frame's worth: > 3 MiB of JSON.
    assert!(
        long >= 200,
        "only {long} long lines:\n{}",
        &text[..text.len().min(500)]
    );
    assert!(text.len() > 3 * 1024 * 1024 / 2, "{} bytes", text.len());
    // Escaped for the terminal ...
    assert!(!text.contains('\x1b') && !text.contains('\x01') && !text.contains('\r'));
    assert!(
        text.contains("tail \\x1b]0;pwned\\x07\\x0d\\x1b[2J end"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    // ... and exact with --raw.
    let raw = d.ctl(&["logs", "-n", "1000", "--raw"]);
    assert!(raw.status.success());
    let raw = String::from_utf8(raw.stdout).unwrap();
    assert!(raw.contains("tail \x1b]0;pwned\x07\r\x1b[2J end"));
    assert!(raw.contains(&"\x01".repeat(4000)));
    // The async client puts the frames together too.
    match client::request(
        &d.socket(),
        Request::Logs {
            target: Some("text".into()),
            lines: 1000,
            since: None,
        },
        T,
    )
    .await
    .unwrap()
    {
        Response::Logs { lines } => assert!(lines.len() >= 200, "{}", lines.len()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_admin_group_is_fatal_only_when_configured() {
    let redis = redis_support::RedisServer::start();
    // Named in the config but absent: no start, file and key named.
    let mut d =
        daemon_support::Daemon::new(&daemon_support::fake_config(&redis.url(), "").replace(
            "device_id = \"testdev\"",
            "device_id = \"testdev\"\nadmin_group = \"clearify-test-no-such-group\"",
        ));
    d.spawn();
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 1, "{}", d.log());
    let log = d.log();
    assert!(
        log.contains(&format!(
            "{}: [daemon].admin_group",
            d.config_path().display()
        )) && log.contains("clearify-test-no-such-group")
            && log.contains("does not exist"),
        "{log}"
    );
    assert!(!d.socket().exists());

    // The built-in default (clearify-admin): used when the machine has it,
    // else a warning and only root and the daemon's user are admins (and a
    // stale admin.sock of an earlier run is removed).
    let mut d = daemon_support::Daemon::new(&daemon_support::fake_config(&redis.url(), ""));
    let admin_sock = d.socket().with_file_name("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&admin_sock).unwrap());
    d.start();
    match nix::unistd::Group::from_name("clearify-admin").unwrap() {
        None => {
            let log = d.log();
            assert!(
                log.contains("WARN")
                    && log.contains("clearify-admin")
                    && log.contains("only root and the daemon's user"),
                "{log}"
            );
            assert!(!admin_sock.exists());
        }
        Some(g) => {
            let meta = std::fs::metadata(&admin_sock).unwrap();
            assert_eq!(meta.gid(), g.gid.as_raw());
            assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
        }
    }
    // Root may still stop: through the reader socket.
    let out = d.ctl(&["version"]);
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_ask_for_big_logs_and_never_read_do_not_grow_the_daemon() {
    use std::io::Write;
    let redis = redis_support::RedisServer::start();
    let (d, _) = noisy_daemon(&redis);
    let pid = d.pid();
    let idle = idle_rss(&d);
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();

    // 64 clients ask for every line, then read nothing for 3 s.
    let frame = encode_frame(&Envelope::new(Request::Logs {
        target: None,
        lines: 1000,
        since: None,
    }))
    .unwrap();
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
        s.write_all(&frame).unwrap();
        held.push(s);
    }
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(3) {
        peak = peak.max(vm_kib(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(held);
    let peak = peak.max(vm_kib(pid, "VmHWM:"));
    eprintln!("RSS with 64 unread logs replies: idle {idle} KiB, peak {peak} KiB");
    assert!(
        peak <= 2 * idle + 8 * 1024,
        "RSS went from {idle} KiB to {peak} KiB"
    );
    let after = settled_rss(pid, idle);
    eprintln!("RSS after: {after} KiB");
    // Others are still served, logs included.
    let out = d.ctl(&["logs", "-n", "1000"]);
    assert!(out.status.success(), "{out:?}");
}

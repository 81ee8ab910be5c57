//! The control server in-process, on a real Unix socket in a tempdir, with a
//! fake supervisor answering behind it (tests/control_support).

mod control_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use clearify_workerd::control::client::{self, ClientError, Connection};
use clearify_workerd::control::protocol::{
    Envelope, ErrorKind, MAX_FRAME, PROTOCOL_VERSION, Request, Response, encode_frame, read_frame,
};
use clearify_workerd::control::server::{
    self, ControlError, IDLE_TIMEOUT, MAX_CLIENTS, ServeOptions,
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
    let body = br#"{"version":1,"request":{"type":"format_disk"}}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
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

    // None of that reached the supervisor; the good client is still served.
    assert!(fake.seen().is_empty());
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
async fn at_most_64_clients_are_served_at_once() {
    assert_eq!(MAX_CLIENTS, 64);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let fake = Fake::start(&sock, root_only(), None, opts(20_000));

    // 64 clients, each answered once (so each holds a slot), then idle.
    let mut held = Vec::new();
    for _ in 0..MAX_CLIENTS {
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
    // The 65th is told the daemon is busy, and closed.
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
    assert_eq!(fake.seen().len(), MAX_CLIENTS + 2);
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

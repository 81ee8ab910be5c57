//! The whole daemon in-process: `app::run` with an injected shutdown, as
//! mini-redis's server tests start its server. A test binary of its own:
//! start-up makes this process a child subreaper with a reaper for all its
//! children, which would race other tests' children.

use std::time::Duration;

use clearify_workerd::app::{self, Host, Options};
use clearify_workerd::control::client;
use clearify_workerd::control::protocol::{Request, Response};
use clearify_workerd::logs::LogTarget;
use clearify_workerd::sys::notify::Notifier;
use tokio::sync::oneshot;

fn options(dir: &std::path::Path, config: &str) -> Options {
    let path = dir.join("workers.toml");
    std::fs::write(&path, config).unwrap();
    Options {
        config: path,
        log_target: LogTarget::Stderr,
        state_dir: Some(dir.join("state")),
    }
}

/// Limits off (no cgroup v2 mount there), no systemd.
fn host(dir: &std::path::Path) -> Host {
    Host {
        cgroup_root: dir.join("no-cgroup"),
        notifier: Notifier::disabled(),
    }
}

#[tokio::test]
async fn the_daemon_runs_in_process_until_its_shutdown_future_completes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let config = format!(
        "[daemon]\nsocket = \"{}\"\ndevice_id = \"testdev\"\n",
        socket.display()
    );
    let opts = options(dir.path(), &config);
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(app::run(opts, host(dir.path()), stopped));

    // It answers on its socket once started.
    let mut status = None;
    for _ in 0..500 {
        let req = Request::Status { targets: vec![] };
        if let Ok(Response::Status(s)) = client::request(&socket, req, Duration::from_secs(5)).await
        {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = status.expect("the daemon answers status");
    assert!(
        status
            .daemon
            .summary
            .starts_with("idle: no worker groups configured"),
        "{}",
        status.daemon.summary
    );
    assert!(
        status.daemon.limits.starts_with("off ("),
        "{}",
        status.daemon.limits
    );
    assert!(!daemon.is_finished());

    stop.send(()).unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), daemon)
        .await
        .expect("stopped within 10 s")
        .unwrap();
    assert_eq!(code, 0);
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[tokio::test]
async fn a_start_up_failure_returns_1_without_waiting_for_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), "[daemon]\nsocket = 7\n");
    let never = std::future::pending::<()>();
    let code = tokio::time::timeout(
        Duration::from_secs(10),
        app::run(opts, host(dir.path()), never),
    )
    .await
    .expect("returns at once");
    assert_eq!(code, 1);
}

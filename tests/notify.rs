//! `Notifier::from_env` with a real NOTIFY_SOCKET. Environment variables are
//! process-global, so this binary holds exactly one test.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use clearify_workerd::sys::notify::Notifier;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification should arrive");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn from_env_notifies_the_socket_in_order_and_reads_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // SAFETY: the only test in this binary; nothing else reads the
    // environment concurrently.
    unsafe {
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
    }
    let off = Notifier::from_env();
    assert!(!off.is_enabled());
    assert!(!off.ready());
    assert_eq!(off.watchdog_interval(), None);

    unsafe {
        std::env::set_var("NOTIFY_SOCKET", &path);
        std::env::set_var("WATCHDOG_USEC", "8000000");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    }
    let n = Notifier::from_env();
    assert!(n.is_enabled());
    assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(4)));
    assert!(n.ready());
    assert!(n.status("waiting for broker redis://127.0.0.1:6379/0: connection refused"));
    assert!(n.watchdog());
    assert!(n.stopping());
    assert!(n.extend_timeout(Duration::from_secs(30)));
    assert_eq!(recv(&rx), "READY=1\n");
    assert_eq!(
        recv(&rx),
        "STATUS=waiting for broker redis://127.0.0.1:6379/0: connection refused\n"
    );
    assert_eq!(recv(&rx), "WATCHDOG=1\n");
    assert_eq!(recv(&rx), "STOPPING=1\n");
    assert_eq!(recv(&rx), "EXTEND_TIMEOUT_USEC=30000000\n");

    // the watchdog belongs to another process: no pings expected from us
    unsafe { std::env::set_var("WATCHDOG_PID", "1") };
    assert_eq!(Notifier::from_env().watchdog_interval(), None);
}

//! sd_notify: readiness, status, reload, stop and watchdog messages to the
//! service manager (systemd `Type=notify`).
//!
//! [`Notifier::from_env`] reads `NOTIFY_SOCKET` once (a path, or `@name` for
//! an abstract socket) and `WATCHDOG_USEC`/`WATCHDOG_PID`. Without
//! `NOTIFY_SOCKET` every call is a no-op. Sending errors are logged (once
//! until sending works again), never returned as fatal: systemd's own
//! timeouts and the watchdog deal with a manager we cannot reach.
//!
//! The message texts come from the `sd-notify` crate's [`NotifyState`]; the
//! socket handling is ours, because that crate re-reads the environment on
//! every call and cannot reach abstract sockets.
//!
//! Note for whoever spawns workers: the environment variables
//! `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` are meant for the
//! daemon only and should not be passed on to workers.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use sd_notify::NotifyState;

/// How long a send may block before it is given up (and logged).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Target {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// NOTIFY_SOCKET as given, for messages.
    name: String,
}

#[derive(Debug)]
struct Inner {
    target: Option<Target>,
    failing: AtomicBool,
}

/// Sends notifications to the service manager. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
    watchdog: Option<Duration>,
}

/// Parses a NOTIFY_SOCKET value into a socket address: `@name` is an
/// abstract socket (Linux), anything else a filesystem path.
pub fn parse_socket_addr(value: &OsStr) -> io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty notify socket address",
        ));
    }
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name)
    } else {
        SocketAddr::from_pathname(value)
    }
}

/// The watchdog ping interval: half of `WATCHDOG_USEC`, when that is set to
/// a positive number and `WATCHDOG_PID` is unset or equals `our_pid`.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        match pid.trim().parse::<u32>() {
            Ok(p) if p == our_pid => {}
            _ => return None,
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. A socket
    /// that cannot be set up is logged and leaves the notifier disabled.
    pub fn from_env() -> Notifier {
        let watchdog = watchdog_interval_from(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        let target = match std::env::var_os("NOTIFY_SOCKET") {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => match make_target(&v) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(socket = %v.to_string_lossy(), error = %e, "cannot use NOTIFY_SOCKET; not notifying systemd");
                    None
                }
            },
        };
        Notifier::build(target, watchdog)
    }

    /// Notifies the given socket (a path, or `@name` for an abstract
    /// socket), without a watchdog. For tests and explicit setups.
    pub fn with_socket(addr: impl AsRef<OsStr>) -> io::Result<Notifier> {
        Ok(Notifier::build(Some(make_target(addr.as_ref())?), None))
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier::build(None, None)
    }

    /// The same notifier with another watchdog interval.
    pub fn with_watchdog(mut self, interval: Option<Duration>) -> Notifier {
        self.watchdog = interval;
        self
    }

    fn build(target: Option<Target>, watchdog: Option<Duration>) -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                target,
                failing: AtomicBool::new(false),
            }),
            watchdog,
        }
    }

    /// Whether notifications are sent anywhere.
    pub fn is_enabled(&self) -> bool {
        self.inner.target.is_some()
    }

    /// How often to call [`Notifier::watchdog`]: half of WATCHDOG_USEC, or
    /// `None` when the watchdog is off.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends the states as one message. Returns whether it was sent
    /// (`false` also when disabled). Errors are logged, not returned.
    pub fn notify(&self, states: &[NotifyState<'_>]) -> bool {
        if self.inner.target.is_none() {
            return false;
        }
        let mut msg = String::new();
        for s in states {
            // A newline inside a value would start a new assignment.
            let text = s.to_string().replace('\n', " ");
            msg.push_str(&text);
            msg.push('\n');
        }
        self.send(&msg)
    }

    /// Sends one message as it is.
    fn send(&self, msg: &str) -> bool {
        let Some(target) = &self.inner.target else {
            return false;
        };
        match target.sock.send_to_addr(msg.as_bytes(), &target.addr) {
            Ok(_) => {
                if self.inner.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(socket = %target.name, "sd_notify works again");
                }
                true
            }
            Err(e) => {
                if !self.inner.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(socket = %target.name, error = %e, message = %msg.trim_end(), "sd_notify failed");
                } else {
                    tracing::debug!(socket = %target.name, error = %e, "sd_notify failed again");
                }
                false
            }
        }
    }

    /// `READY=1`: start-up (or a reload) is complete.
    pub fn ready(&self) -> bool {
        self.notify(&[NotifyState::Ready])
    }

    /// `READY=1` with a `STATUS=` in the same message.
    pub fn ready_with_status(&self, status: &str) -> bool {
        self.notify(&[NotifyState::Ready, NotifyState::Status(status)])
    }

    /// `STATUS=<text>` (newlines become spaces).
    pub fn status(&self, status: &str) -> bool {
        self.notify(&[NotifyState::Status(status)])
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (required by systemd ≥ 253).
    /// Follow it with [`Notifier::ready`] when the reload is done.
    pub fn reloading(&self) -> bool {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.notify(&[NotifyState::Reloading, now]),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC; sending RELOADING=1 alone");
                self.notify(&[NotifyState::Reloading])
            }
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) -> bool {
        self.notify(&[NotifyState::Stopping])
    }

    /// `EXTEND_TIMEOUT_USEC=`: asks for `by` more time for the current
    /// start-up, reload or stop; send it again before it runs out.
    pub fn extend_timeout(&self, by: Duration) -> bool {
        let usec = by.as_micros().min(u64::MAX as u128);
        let text = format!("EXTEND_TIMEOUT_USEC={usec}");
        self.notify(&[NotifyState::Custom(&text)])
    }

    /// `WATCHDOG=1`. Send it from the supervision loop itself every
    /// [`Notifier::watchdog_interval`], so that a hung loop stops the pings.
    /// The message is a constant: the ping of an idle daemon allocates
    /// nothing.
    pub fn watchdog(&self) -> bool {
        self.send("WATCHDOG=1\n")
    }
}

fn make_target(value: &OsStr) -> io::Result<Target> {
    let addr = parse_socket_addr(value)?;
    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    Ok(Target {
        sock,
        addr,
        name: value.to_string_lossy().into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification should arrive");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn bound() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, path, sock)
    }

    #[test]
    fn sequence_arrives_in_order_on_a_real_socket() {
        let (_dir, path, rx) = bound();
        let n = Notifier::with_socket(&path).unwrap();
        assert!(n.is_enabled());
        assert!(n.ready());
        assert!(n.status("5/5 workers running, broker ok"));
        assert!(n.watchdog());
        assert!(n.stopping());
        assert_eq!(recv(&rx), "READY=1\n");
        assert_eq!(recv(&rx), "STATUS=5/5 workers running, broker ok\n");
        assert_eq!(recv(&rx), "WATCHDOG=1\n");
        assert_eq!(recv(&rx), "STOPPING=1\n");
    }

    #[test]
    fn reload_extend_and_multiline_status() {
        let (_dir, path, rx) = bound();
        let n = Notifier::with_socket(&path).unwrap();
        n.reloading();
        let msg = recv(&rx);
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .expect("MONOTONIC_USEC follows RELOADING")
            .parse()
            .unwrap();
        assert!(usec > 0);
        n.ready_with_status("reloaded");
        assert_eq!(recv(&rx), "READY=1\nSTATUS=reloaded\n");
        n.extend_timeout(Duration::from_secs(90));
        assert_eq!(recv(&rx), "EXTEND_TIMEOUT_USEC=90000000\n");
        n.status("line one\nREADY=1");
        assert_eq!(recv(&rx), "STATUS=line one READY=1\n");
    }

    #[test]
    fn abstract_socket_names_work() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "clearify-notify-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::with_socket(format!("@{name}")).unwrap();
        assert!(n.ready());
        assert_eq!(recv(&rx), "READY=1\n");
    }

    #[test]
    fn unreachable_socket_is_not_fatal_and_disabled_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::with_socket(dir.path().join("nobody-listens")).unwrap();
        assert!(!n.ready());
        assert!(!n.watchdog());
        let d = Notifier::disabled();
        assert!(!d.is_enabled());
        assert!(!d.ready());
        assert_eq!(d.watchdog_interval(), None);
    }

    #[test]
    fn watchdog_interval_math() {
        let me = 4242;
        assert_eq!(
            watchdog_interval_from(Some("10000000"), None, me),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            watchdog_interval_from(Some("3000001"), Some("4242"), me),
            Some(Duration::from_nanos(1_500_000_500))
        );
        assert_eq!(
            watchdog_interval_from(Some("10000000"), Some("1"), me),
            None
        );
        assert_eq!(
            watchdog_interval_from(Some("10000000"), Some("x"), me),
            None
        );
        assert_eq!(watchdog_interval_from(Some("0"), None, me), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, me), None);
        assert_eq!(watchdog_interval_from(None, Some("4242"), me), None);
        let n = Notifier::disabled().with_watchdog(Some(Duration::from_secs(2)));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn socket_address_parsing() {
        assert!(parse_socket_addr(OsStr::new("")).is_err());
        let a = parse_socket_addr(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            a.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        use std::os::linux::net::SocketAddrExt;
        let b = parse_socket_addr(OsStr::new("@abc")).unwrap();
        assert_eq!(b.as_abstract_name(), Some(&b"abc"[..]));
    }
}

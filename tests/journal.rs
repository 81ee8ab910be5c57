//! The worker-output path against real things: a real datagram socket in a
//! tempdir standing in for journald, and real child processes writing to
//! real pipes, read by the daemon's pump (one task for both pipes of an
//! instance).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clearify_workerd::logs::{
    JournalSender, LogStore, MAX_RECORD, Sink, WorkerMeta, decode_entry, pump,
};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};
use tokio::net::unix::pipe::Receiver;

/// One entry as journald would receive it.
#[derive(Debug)]
struct Received {
    fields: Vec<(String, Vec<u8>)>,
    via_memfd: bool,
}

impl Received {
    fn get(&self, key: &str) -> &[u8] {
        let mut it = self.fields.iter().filter(|(k, _)| k == key);
        let (_, v) = it
            .next()
            .unwrap_or_else(|| panic!("no field {key} in {:?}", self.fields));
        assert!(it.next().is_none(), "field {key} twice");
        v
    }
    fn message(&self) -> &[u8] {
        self.get("MESSAGE")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(self.message()).into_owned()
    }
    fn priority(&self) -> u8 {
        std::str::from_utf8(self.get("PRIORITY"))
            .unwrap()
            .parse()
            .unwrap()
    }
}

fn bind(dir: &Path) -> (std::path::PathBuf, UnixDatagram) {
    let path = dir.join("journal.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    (path, sock)
}

/// Receives one entry (datagram or memfd), like journald does; `None` on
/// timeout.
fn recv_entry(sock: &UnixDatagram, timeout: Duration) -> Option<Received> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = vec![0u8; 512 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => return None,
            Err(e) => panic!("recvmsg: {e}"),
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds.extend(v);
            }
        }
        (msg.bytes, fds)
    };
    if let Some(&fd) = fds.first() {
        assert_eq!(n, 0, "a memfd comes with an empty datagram");
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        let seals = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap();
        let want = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        assert_eq!(seals & want, want, "the memfd must be fully sealed");
        // journald mmaps the memfd from offset 0; do the same with pread.
        let len = file.metadata().unwrap().len() as usize;
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, 0).unwrap();
        let fields = decode_entry(&data).expect("a well-formed entry in the memfd");
        return Some(Received {
            fields,
            via_memfd: true,
        });
    }
    let fields = decode_entry(&buf[..n]).expect("a well-formed datagram");
    Some(Received {
        fields,
        via_memfd: false,
    })
}

/// Receives entries on a thread until told to stop and the socket is quiet.
struct Collector {
    done: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Received>>,
}

impl Collector {
    fn start(sock: UnixDatagram) -> Collector {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let handle = std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match recv_entry(&sock, Duration::from_millis(200)) {
                    Some(r) => got.push(r),
                    None if d.load(Ordering::SeqCst) => return got,
                    None => {}
                }
            }
        });
        Collector { done, handle }
    }
    fn finish(self) -> Vec<Received> {
        self.done.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

fn meta(pid: u32) -> Arc<WorkerMeta> {
    Arc::new(WorkerMeta {
        group: "text".into(),
        instance: "text-1".into(),
        node: "text-1@testbox".into(),
        pid,
    })
}

fn python() -> tokio::process::Command {
    let mut c = tokio::process::Command::new("python3");
    c.env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

fn spawn(mut cmd: tokio::process::Command) -> tokio::process::Child {
    cmd.spawn()
        .expect("python3 must be installed for this test (apt-get install python3)")
}

fn sh(script: &str) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().expect("sh must be installed")
}

/// The child's stdout and stderr as the daemon holds them: pipe receivers
/// (see `process::spawn`).
fn pipes(child: &mut tokio::process::Child) -> (Receiver, Receiver) {
    let out = child.stdout.take().unwrap().into_owned_fd().unwrap();
    let err = child.stderr.take().unwrap().into_owned_fd().unwrap();
    (
        Receiver::from_owned_fd(out).unwrap(),
        Receiver::from_owned_fd(err).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_safe_fields_round_trip_through_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (path, rx) = bind(dir.path());
    let sender = JournalSender::with_path(&path);
    let value: &[u8] = b"first line\nsecond \xff\xfe invalid utf-8\n\x00nul";
    sender
        .send_fields(&[
            ("MESSAGE", value),
            ("PRIORITY", b"3"),
            ("PLAIN", b"\xc3\x28"),
        ])
        .await
        .unwrap();
    let got = recv_entry(&rx, Duration::from_secs(5)).expect("an entry");
    assert!(!got.via_memfd);
    assert_eq!(
        got.fields,
        vec![
            ("MESSAGE".to_string(), value.to_vec()),
            ("PRIORITY".to_string(), b"3".to_vec()),
            ("PLAIN".to_string(), b"\xc3\x28".to_vec()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_48k_record_fits_one_datagram_and_a_huge_entry_goes_by_memfd() {
    let dir = tempfile::tempdir().unwrap();
    let (path, rx) = bind(dir.path());
    let sender = JournalSender::with_path(&path);
    let full: Vec<u8> = (0..MAX_RECORD).map(|i| b'A' + (i % 23) as u8).collect();
    sender.send_fields(&[("MESSAGE", &full)]).await.unwrap();
    let got = recv_entry(&rx, Duration::from_secs(5)).unwrap();
    assert!(!got.via_memfd, "48 KiB must fit in a datagram");
    assert_eq!(got.message(), &full[..]);

    let huge: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    sender
        .send_fields(&[("MESSAGE", &huge), ("PRIORITY", b"6")])
        .await
        .unwrap();
    let got = recv_entry(&rx, Duration::from_secs(5)).unwrap();
    assert!(got.via_memfd, "3 MiB cannot be one datagram");
    assert_eq!(got.message(), &huge[..]);
    assert_eq!(got.priority(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_socket_makes_the_sender_wait_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (path, rx) = bind(dir.path());
    let sender = Arc::new(JournalSender::with_path(&path));
    const N: usize = 3000;
    let sent = Arc::new(AtomicUsize::new(0));
    let task = {
        let (sender, sent) = (sender.clone(), sent.clone());
        tokio::spawn(async move {
            let pad = vec![b'p'; 1000];
            for i in 0..N {
                let msg = format!("entry {i:05} {}", String::from_utf8_lossy(&pad));
                sender
                    .send_fields(&[("MESSAGE", msg.as_bytes())])
                    .await
                    .unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stalled_at = sent.load(Ordering::SeqCst);
    assert!(stalled_at < N, "the sender must wait while nobody reads");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        sent.load(Ordering::SeqCst),
        stalled_at,
        "no progress, no drops"
    );
    assert!(!task.is_finished());

    let got = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        while got.len() < N {
            got.push(recv_entry(&rx, Duration::from_secs(10)).expect("every entry arrives"));
        }
        got
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the sender finishes once the receiver reads")
        .unwrap();
    for (i, r) in got.iter().enumerate() {
        assert!(
            r.text().starts_with(&format!("entry {i:05} ")),
            "entry {i} in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pump_sends_a_real_python_traceback_as_one_entry_with_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (path, rx) = bind(dir.path());
    let collector = Collector::start(rx);
    let script = r#"
import logging, sys
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG,
    format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")
log = logging.getLogger("demo")
log.info("worker starting")
def inner():
    return {}["missing"]
try:
    try:
        inner()
    except KeyError as e:
        raise ValueError("bad value\nsecond line") from e
except ValueError:
    log.exception("Task demo.fail[1234] raised unexpected")
log.warning("multi\nline warning")
log.debug("debugging")
log.critical("the end")
import time; time.sleep(0.4)  # longer than the quiet time: not part of "the end"
sys.stderr.write("tail without newline")
"#;
    let mut cmd = python();
    cmd.arg("-c").arg(script);
    let mut child = spawn(cmd);
    let pid = child.id().unwrap();
    let store = LogStore::new();
    let sink = Arc::new(Sink::Journal(JournalSender::with_path(&path)));
    let (stdout, stderr) = pipes(&mut child);
    let p = tokio::spawn(pump(stdout, stderr, meta(pid), sink, None, store.clone()));
    assert!(child.wait().await.unwrap().success());
    p.await.unwrap();
    let got = collector.finish();

    let summary: Vec<(u8, String)> = got.iter().map(|r| (r.priority(), r.text())).collect();
    assert_eq!(got.len(), 6, "{summary:#?}");
    let prios: Vec<u8> = got.iter().map(|r| r.priority()).collect();
    assert_eq!(prios, vec![6, 3, 4, 7, 2, 6]);
    let tb = got[1].text();
    assert!(tb.contains("ERROR/MainProcess] Task demo.fail[1234] raised unexpected\nTraceback (most recent call last):\n"), "{tb}");
    assert!(tb.contains("KeyError: 'missing'\n\nThe above exception was the direct cause of the following exception:\n\nTraceback"));
    assert!(tb.ends_with("ValueError: bad value\nsecond line"), "{tb}");
    assert!(
        got[2]
            .text()
            .ends_with("WARNING/MainProcess] multi\nline warning")
    );
    assert_eq!(got[5].text(), "tail without newline");
    for r in &got {
        assert_eq!(r.get("SYSLOG_IDENTIFIER"), b"clearify-worker");
        assert_eq!(r.get("CLEARIFY_GROUP"), b"text");
        assert_eq!(r.get("CLEARIFY_INSTANCE"), b"text-1");
        assert_eq!(r.get("CLEARIFY_NODE"), b"text-1@testbox");
        assert_eq!(r.get("CLEARIFY_PID"), pid.to_string().as_bytes());
        assert_eq!(r.get("CLEARIFY_STREAM"), b"stderr");
    }
    // the ring buffer has every line, one by one
    let lines = store.tail(Some("text"), 1000, None);
    let total_lines: usize = got
        .iter()
        .map(|r| r.message().split(|&b| b == b'\n').count())
        .sum();
    assert_eq!(lines.len(), total_lines);
    assert_eq!(lines.last().unwrap().text, "tail without newline");
    assert!(
        lines
            .iter()
            .all(|l| l.stream == "stderr" && l.instance == "text-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pump_keeps_stdout_and_stderr_apart_and_drains_stderr_after_stdout_eof() {
    let dir = tempfile::tempdir().unwrap();
    let (path, rx) = bind(dir.path());
    let collector = Collector::start(rx);
    let script = r#"
import os, sys, time
def out(b): os.write(1, b)
def err(b): os.write(2, b)
# a record on each stream, their lines interleaved
out(b"[2024-05-01 12:00:00,000: ERROR/MainProcess] out record\n")
err(b"err start\n")
out(b"  out continuation 1\n")
err(b"Traceback (most recent call last):\n")
out(b"  out continuation 2\n")
err(b'  File "x.py", line 1, in <module>\n')
err(b"ZeroDivisionError: division by zero\n")
time.sleep(0.4)  # the quiet time ends both records
for i in range(50):
    out(b"out %d\n" % i)
    err(b"err %d\n" % i)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # EOF on stdout
err(b"stdout closed\n")
sys.stdin.readline()
for i in range(50, 100):
    err(b"err %d\n" % i)
time.sleep(0.3)
err(b"Traceback (most recent call last):\n  File \"y.py\", line 2, in <module>\nKeyError: 'late'\n")
time.sleep(0.3)
err(b"err last")
"#;
    let mut cmd = python();
    cmd.arg("-c").arg(script).stdin(Stdio::piped());
    let mut child = spawn(cmd);
    let pid = child.id().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let store = LogStore::new();
    let sink = Arc::new(Sink::Journal(JournalSender::with_path(&path)));
    let (stdout, stderr) = pipes(&mut child);
    let p = tokio::spawn(pump(stdout, stderr, meta(pid), sink, None, store.clone()));

    // stdout is at EOF and the worker waits: the pump must still run
    let until = Instant::now() + Duration::from_secs(10);
    while !store
        .tail(None, 1000, None)
        .iter()
        .any(|l| l.text == "stdout closed")
    {
        assert!(Instant::now() < until, "the worker's output never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!p.is_finished(), "stderr is still open: the pump goes on");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"go\n")
        .await
        .unwrap();
    drop(stdin);
    assert!(child.wait().await.unwrap().success());
    tokio::time::timeout(Duration::from_secs(5), p)
        .await
        .expect("the pump ends when both pipes are at EOF")
        .unwrap();
    let got = collector.finish();

    let of = |stream: &[u8]| -> Vec<(u8, String)> {
        got.iter()
            .filter(|r| r.get("CLEARIFY_STREAM") == stream)
            .map(|r| (r.priority(), r.text()))
            .collect()
    };
    let (out, err) = (of(b"stdout"), of(b"stderr"));
    assert_eq!(out.len() + err.len(), got.len());
    let mut want_out = vec![(
        3,
        "[2024-05-01 12:00:00,000: ERROR/MainProcess] out record\n  out continuation 1\n  out continuation 2".to_string(),
    )];
    want_out.extend((0..50).map(|i| (6, format!("out {i}"))));
    assert_eq!(out, want_out);
    let mut want_err = vec![(
        3,
        "err start\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nZeroDivisionError: division by zero".to_string(),
    )];
    want_err.extend((0..50).map(|i| (6, format!("err {i}"))));
    want_err.push((6, "stdout closed".to_string()));
    want_err.extend((50..100).map(|i| (6, format!("err {i}"))));
    want_err.push((
        3,
        "Traceback (most recent call last):\n  File \"y.py\", line 2, in <module>\nKeyError: 'late'"
            .to_string(),
    ));
    want_err.push((6, "err last".to_string()));
    assert_eq!(err, want_err);

    // the ring buffer: every line, tagged with its stream, in order per stream
    let lines = store.tail(Some("text-1"), 1000, None);
    let texts = |stream: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text.clone())
            .collect()
    };
    let lines_of = |records: &[(u8, String)]| -> Vec<String> {
        records
            .iter()
            .flat_map(|(_, t)| t.split('\n').map(str::to_string).collect::<Vec<_>>())
            .collect()
    };
    assert_eq!(texts("stdout"), lines_of(&want_out));
    assert_eq!(texts("stderr"), lines_of(&want_err));
    assert_eq!(lines.len(), 53 + 109);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pump_splits_a_1mb_line_and_passes_binary_garbage_through() {
    let dir = tempfile::tempdir().unwrap();
    let (path, rx) = bind(dir.path());
    let collector = Collector::start(rx);
    let script = r#"
import sys
out = sys.stdout.buffer
big = bytes((i * 7) % 256 for i in range(1024 * 1024)).replace(b"\n", b"N")
out.write(big + b"\n")
out.write(bytes(b for b in range(256) if b != 10) + b"\r\n")
out.write(b"\xff\xfe\xfd end\n")
out.flush()
"#;
    let mut cmd = python();
    cmd.arg("-c").arg(script);
    let mut child = spawn(cmd);
    let pid = child.id().unwrap();
    let sink = Arc::new(Sink::Journal(JournalSender::with_path(&path)));
    let store = LogStore::new();
    let (stdout, stderr) = pipes(&mut child);
    let p = tokio::spawn(pump(stdout, stderr, meta(pid), sink, None, store.clone()));
    assert!(child.wait().await.unwrap().success());
    p.await.unwrap();
    let got = collector.finish();

    let big: Vec<u8> = (0..1024 * 1024usize)
        .map(|i| ((i * 7) % 256) as u8)
        .map(|b| if b == b'\n' { b'N' } else { b })
        .collect();
    let chunks = big.len().div_ceil(MAX_RECORD);
    assert_eq!(got.len(), chunks + 2);
    let mut joined = Vec::new();
    for r in &got[..chunks] {
        assert!(r.message().len() <= MAX_RECORD);
        assert!(!r.via_memfd);
        assert_eq!(r.get("CLEARIFY_STREAM"), b"stdout");
        joined.extend_from_slice(r.message());
    }
    assert_eq!(joined, big, "the 1 MB line arrives whole, in order");
    let garbage: Vec<u8> = (0u8..=255).filter(|b| *b != b'\n').collect();
    assert_eq!(
        got[chunks].message(),
        &garbage[..],
        "binary bytes unchanged, \\r\\n removed"
    );
    assert_eq!(got[chunks + 1].message(), b"\xff\xfe\xfd end");
    assert_eq!(store.len("text-1"), chunks + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_line_is_not_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let (path, rx) = bind(dir.path());
    let mut child =
        sh("printf '[2024-05-01 12:00:00,123: ERROR/MainProcess] lone\\n'; sleep 3; echo later");
    let started = Instant::now();
    let sink = Arc::new(Sink::Journal(JournalSender::with_path(&path)));
    let (stdout, stderr) = pipes(&mut child);
    let p = tokio::spawn(pump(
        stdout,
        stderr,
        meta(child.id().unwrap()),
        sink,
        None,
        LogStore::new(),
    ));
    let first = tokio::task::spawn_blocking(move || {
        let r = recv_entry(&rx, Duration::from_secs(2));
        (r, rx)
    })
    .await
    .unwrap();
    let (first, rx) = (
        first.0.expect("the line arrives while the worker sleeps"),
        first.1,
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(first.priority(), 3);
    assert!(first.text().ends_with("] lone"));
    child.wait().await.unwrap();
    p.await.unwrap();
    let later = recv_entry(&rx, Duration::from_secs(2)).unwrap();
    assert_eq!(later.text(), "later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_blocks_the_worker_instead_of_dropping_or_buffering() {
    let dir = tempfile::tempdir().unwrap();
    let (path, rx) = bind(dir.path());
    const N: usize = 20_000;
    let script = format!(
        "import sys\nfor i in range({N}):\n    sys.stdout.write('burst %06d %s\\n' % (i, 'x' * 100))\nsys.stdout.flush()\n"
    );
    let mut cmd = python();
    cmd.arg("-c").arg(script);
    let mut child = spawn(cmd);
    let sink = Arc::new(Sink::Journal(JournalSender::with_path(&path)));
    let store = LogStore::new();
    let (stdout, stderr) = pipes(&mut child);
    let p = tokio::spawn(pump(
        stdout,
        stderr,
        meta(child.id().unwrap()),
        sink,
        None,
        store.clone(),
    ));

    // Nobody reads: the socket fills, the pump waits, the pipe fills and the
    // worker blocks in write(). ~2.2 MB cannot fit in the pipe and socket.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker must be blocked, not finished"
    );
    let held = store.len("text-1");
    assert!(
        held < N,
        "the pump must not have read everything ({held} lines)"
    );

    let collector = Collector::start(rx);
    assert!(child.wait().await.unwrap().success());
    p.await.unwrap();
    let got = collector.finish();
    assert_eq!(got.len(), N, "every line arrives");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.text(), format!("burst {i:06} {}", "x".repeat(100)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_journald_the_pump_still_finishes_and_keeps_lines() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Sink::Journal(JournalSender::with_path(
        dir.path().join("absent.sock"),
    )));
    let mut child = sh("echo one; echo two >&2");
    let store = LogStore::new();
    let (stdout, stderr) = pipes(&mut child);
    let p = tokio::spawn(pump(
        stdout,
        stderr,
        meta(child.id().unwrap()),
        sink,
        None,
        store.clone(),
    ));
    child.wait().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), p)
        .await
        .expect("the pump ends at EOF")
        .unwrap();
    let mut lines: Vec<(String, String)> = store
        .tail(None, 10, None)
        .into_iter()
        .map(|l| (l.stream, l.text))
        .collect();
    // stdout and stderr are read in rounds: the order between them is open
    lines.sort();
    assert_eq!(
        lines,
        vec![
            ("stderr".to_string(), "two".to_string()),
            ("stdout".to_string(), "one".to_string())
        ]
    );
}

#[test]
fn tracing_setup_explicit_targets() {
    use clearify_workerd::logs::{LogTarget, init_tracing};
    // Journal fails exactly when there is no journald socket (as here, in
    // a container without systemd), and then installs nothing.
    let journald = Path::new("/run/systemd/journal/socket").exists();
    assert_eq!(init_tracing(LogTarget::Journal).is_ok(), journald);
    if !journald {
        init_tracing(LogTarget::Stderr).expect("stderr logging can always be set up");
    }
    // a second setup reports the error instead of panicking
    assert!(init_tracing(LogTarget::Stderr).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_reconnects_after_journald_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (path, rx) = bind(dir.path());
    let sender = JournalSender::with_path(&path);
    sender.send_fields(&[("MESSAGE", b"before")]).await.unwrap();
    assert_eq!(
        recv_entry(&rx, Duration::from_secs(5)).unwrap().message(),
        b"before"
    );
    // journald goes away and comes back on the same path
    drop(rx);
    std::fs::remove_file(&path).unwrap();
    let (_, rx) = bind(dir.path());
    sender.send_fields(&[("MESSAGE", b"after")]).await.unwrap();
    assert_eq!(
        recv_entry(&rx, Duration::from_secs(5)).unwrap().message(),
        b"after"
    );
    // and with nobody there at all, sending fails (the sink falls back to stderr)
    drop(rx);
    std::fs::remove_file(&path).unwrap();
    assert!(sender.send_fields(&[("MESSAGE", b"lost?")]).await.is_err());
}

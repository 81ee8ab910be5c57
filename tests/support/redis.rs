//! A real `redis-server` for tests, on a free 127.0.0.1 port with its own
//! temporary directory.
//!
//! Self-contained: include it with `#[path = "support/redis.rs"] mod redis_support;`.
//! It needs only `std` and the `tempfile` dev-dependency. It panics with a
//! message naming the missing tool when `redis-server` cannot be run
//! (override the binary with `CLEARIFY_TEST_REDIS_SERVER`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start*` waits for the server to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The redis-server binary: `$CLEARIFY_TEST_REDIS_SERVER` or `redis-server` on PATH.
pub fn redis_server_binary() -> PathBuf {
    std::env::var_os("CLEARIFY_TEST_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// A redis-server child process. Dropping it kills the server.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
    /// Extra command-line arguments used on every (re)start.
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server without a password.
    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// Starts a server, with `requirepass` when `password` is given.
    pub fn start_with(password: Option<&str>) -> RedisServer {
        RedisServer::start_with_args(password, &[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--databases", "4"]`).
    pub fn start_with_args(password: Option<&str>, extra_args: &[&str]) -> RedisServer {
        let mut server = RedisServer::unstarted(0, password, extra_args);
        // The port is picked by binding port 0 and releasing it, so another
        // process may grab it before redis does: retry on conflict.
        let mut last_err = String::new();
        for _ in 0..10 {
            server.port = free_port();
            match server.spawn_and_wait(&[]) {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server on a free port: {last_err}");
    }

    /// Starts a server that listens only on its unix socket
    /// ([`RedisServer::socket_path`]): no TCP port at all (`--port 0`), so
    /// a client reaches it only through the socket.
    pub fn start_unix_only() -> RedisServer {
        let mut server = RedisServer::unstarted(0, None, &[]);
        if let Err(e) = server.spawn_and_wait(&[]) {
            panic!("could not start redis-server on a unix socket: {e}");
        }
        server
    }

    /// A server that is not running yet, with a port reserved for it (free a
    /// moment ago): use `url()` now, `restart()` to start it later.
    pub fn new_stopped(password: Option<&str>) -> RedisServer {
        RedisServer::unstarted(free_port(), password, &[])
    }

    /// A server with its own tempdir, not started; port 0: no TCP port.
    fn unstarted(port: u16, password: Option<&str>, extra_args: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("clearify-redis-")
            .tempdir()
            .expect("create tempdir for redis-server");
        RedisServer {
            child: None,
            port,
            password: password.map(str::to_string),
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A server that spends a few seconds (at least ~`approx_secs`) loading a
    /// dataset at start-up, so PING answers `-LOADING` meanwhile. The dataset
    /// is generated with `DEBUG POPULATE` + `SAVE`, and the load is slowed
    /// with the debug config `key-load-delay`.
    ///
    /// Returns the server right after it started listening (still loading).
    pub fn start_loading(approx_secs: u64) -> RedisServer {
        let mut server = RedisServer::start_with_args(None, &["--enable-debug-command", "yes"]);
        let keys: u64 = 100_000;
        server
            .command(&["DEBUG", "POPULATE", &keys.to_string()])
            .expect("DEBUG POPULATE");
        server.command(&["SAVE"]).expect("SAVE");
        // microseconds per key
        let delay_us = (approx_secs * 1_000_000 / keys).max(1);
        server.kill_child();
        let args = [
            "--key-load-delay".to_string(),
            delay_us.to_string(),
            "--loading-process-events-interval-bytes".to_string(),
            "1024".to_string(),
        ];
        let mut last_err = String::new();
        for _ in 0..50 {
            match server.spawn_and_wait_listening(&args) {
                Ok(()) => return server,
                Err(e) => {
                    last_err = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("could not restart redis-server in loading mode: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis://[:password@]127.0.0.1:<port>/<db>`.
    pub fn url_db(&self, db: u32) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/{db}", self.port),
            None => format!("redis://127.0.0.1:{}/{db}", self.port),
        }
    }

    /// `redis://[:password@]127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// The server's unix socket (`<dir>/redis.sock`).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        self.kill_child();
    }

    /// Starts the server again on the same port (after `stop`, or kills it first).
    pub fn restart(&mut self) {
        self.kill_child();
        let mut last_err = String::new();
        // The port may linger briefly; redis sets SO_REUSEADDR, so this is quick.
        for _ in 0..50 {
            match self.spawn_and_wait(&[]) {
                Ok(()) => return,
                Err(e) => {
                    last_err = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!(
            "could not restart redis-server on port {}: {last_err}",
            self.port
        );
    }

    /// Runs one command over a fresh RESP connection (authenticating when a
    /// password is set) and returns the reply rendered as text; an error
    /// reply is an `Err`. A server started with
    /// [`RedisServer::start_unix_only`] is reached through its unix socket.
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        if self.port == 0 {
            let path = self.socket_path();
            let stream = UnixStream::connect(&path)
                .map_err(|e| format!("connect {}: {e}", path.display()))?;
            return self.round_trip(stream, args);
        }
        let stream = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("connect 127.0.0.1:{}: {e}", self.port))?;
        self.round_trip(stream, args)
    }

    /// AUTH when a password is set, then `args`; the reply as text.
    fn round_trip<S: Stream>(&self, mut stream: S, args: &[&str]) -> Result<String, String> {
        stream
            .set_timeout(Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream.dup().map_err(|e| e.to_string())?);
        let reply = (|| {
            if let Some(p) = &self.password {
                write_command(&mut stream, &["AUTH", p])?;
                read_reply(&mut reader)?;
            }
            write_command(&mut stream, args)?;
            read_reply(&mut reader)
        })();
        stream.close();
        reply
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn base_args(&self) -> Vec<String> {
        let mut args = vec!["--port".to_string(), self.port.to_string()];
        if self.port != 0 {
            args.extend(["--bind".to_string(), "127.0.0.1".to_string()]);
        }
        args.extend([
            "--save".to_string(),
            String::new(),
            "--appendonly".to_string(),
            "no".to_string(),
            "--dir".to_string(),
            self.dir.path().display().to_string(),
            "--logfile".to_string(),
            self.dir.path().join("redis.log").display().to_string(),
            "--daemonize".to_string(),
            "no".to_string(),
            "--unixsocket".to_string(),
            self.socket_path().display().to_string(),
            "--unixsocketperm".to_string(),
            "700".to_string(),
        ]);
        if let Some(p) = &self.password {
            args.push("--requirepass".to_string());
            args.push(p.clone());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self, more: &[String]) -> Result<(), String> {
        let bin = redis_server_binary();
        let child = Command::new(&bin)
            .args(self.base_args())
            .args(more)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (redis-server is required for these tests; \
                     install the redis-server package or set CLEARIFY_TEST_REDIS_SERVER): {e}",
                    bin.display()
                )
            });
        self.child = Some(child);
        Ok(())
    }

    /// Spawns and waits until PING answers PONG.
    fn spawn_and_wait(&mut self, more: &[String]) -> Result<(), String> {
        self.spawn_wait(more, true)
    }

    /// Spawns and waits until the port accepts connections (any reply, e.g. LOADING).
    fn spawn_and_wait_listening(&mut self, more: &[String]) -> Result<(), String> {
        self.spawn_wait(more, false)
    }

    fn spawn_wait(&mut self, more: &[String], want_pong: bool) -> Result<(), String> {
        self.spawn(more)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                self.child = None;
                return Err(format!(
                    "redis-server exited with {status}: {err} {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            match self.command(&["PING"]) {
                Ok(r) if r == "PONG" => return Ok(()),
                Ok(_) if !want_pong => return Ok(()),
                Err(e) if !want_pong && e.starts_with("LOADING") => return Ok(()),
                _ => {}
            }
            if Instant::now() > deadline {
                self.kill_child();
                return Err(format!(
                    "redis-server on port {} did not answer within {START_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill_child();
    }
}

/// A TCP or unix stream, for [`RedisServer::command`].
trait Stream: Read + Write + Sized {
    fn set_timeout(&self, d: Duration) -> std::io::Result<()>;
    fn dup(&self) -> std::io::Result<Self>;
    fn close(&self);
}

/// The same for both: their inherent methods have the same names.
macro_rules! impl_stream {
    ($($t:ty),*) => {$(
        impl Stream for $t {
            fn set_timeout(&self, d: Duration) -> std::io::Result<()> {
                self.set_read_timeout(Some(d))
            }
            fn dup(&self) -> std::io::Result<Self> {
                self.try_clone()
            }
            fn close(&self) {
                let _ = self.shutdown(Shutdown::Both);
            }
        }
    )*};
}

impl_stream!(TcpStream, UnixStream);

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn write_command(stream: &mut impl Write, args: &[&str]) -> Result<(), String> {
    let mut buf = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    stream.write_all(&buf).map_err(|e| e.to_string())
}

/// Reads one RESP2 reply; arrays are rendered as their items joined by '\n'.
fn read_reply(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed".to_string());
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => Err(rest.to_string()),
        "$" => {
            let len: i64 = rest
                .parse()
                .map_err(|_| format!("bad bulk length {rest}"))?;
            if len < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0u8; len as usize + 2];
            reader.read_exact(&mut buf).map_err(|e| e.to_string())?;
            buf.truncate(len as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let len: i64 = rest
                .parse()
                .map_err(|_| format!("bad array length {rest}"))?;
            let mut items = Vec::new();
            for _ in 0..len.max(0) {
                items.push(read_reply(reader)?);
            }
            Ok(items.join("\n"))
        }
        _ => Err(format!("unexpected reply {line}")),
    }
}

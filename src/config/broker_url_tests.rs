//! Table tests of [`super`]: kombu's and Celery's documented URL examples,
//! the broker monitor's old `parse_target` cases and the old `--check`
//! cases, each a row.

use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;

use redis::ConnectionAddr;

use super::{BrokerUrl, Endpoint, Tls, bare_info, check, redact};

fn tcp(host: &str, port: u16) -> Endpoint {
    Endpoint::Tcp {
        host: host.into(),
        port,
    }
}

fn unix(path: &str) -> Endpoint {
    Endpoint::Unix { path: path.into() }
}

/// What a row expects of a URL that parses.
struct Want {
    endpoint: Endpoint,
    db: i64,
    username: Option<&'static str>,
    password: Option<&'static str>,
    tls: Option<Tls>,
}

fn want(endpoint: Endpoint, db: i64) -> Want {
    Want {
        endpoint,
        db,
        username: None,
        password: None,
        tls: None,
    }
}

impl Want {
    fn user(mut self, u: &'static str) -> Want {
        self.username = Some(u);
        self
    }
    fn pass(mut self, p: &'static str) -> Want {
        self.password = Some(p);
        self
    }
    fn tls(mut self, insecure: bool) -> Want {
        self.tls = Some(Tls {
            insecure,
            ..Tls::default()
        });
        self
    }
    fn tls_files(mut self, ca: &str, cert: &str, key: &str) -> Want {
        self.tls = Some(Tls {
            insecure: false,
            ca_certs: Some(ca.into()),
            client_cert: Some((cert.into(), key.into())),
        });
        self
    }
}

fn assert_parses(url: &str, w: Want) {
    let u = BrokerUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(u.endpoint, w.endpoint, "{url}");
    assert_eq!(u.db, w.db, "{url}");
    assert_eq!(u.username.as_deref(), w.username, "{url}");
    assert_eq!(u.password.as_deref(), w.password, "{url}");
    assert_eq!(u.tls, w.tls, "{url}");
}

/// The examples of the Celery "Using Redis" page and of kombu's Redis
/// transport docs (docs.celeryq.dev: getting-started/backends-and-brokers/redis,
/// kombu reference kombu.transport.redis), and Celery's `socket://` and
/// `rediss://` result-backend examples, with their placeholders filled in.
#[test]
fn kombu_and_celery_documented_examples() {
    let rows: Vec<(&str, Want)> = vec![
        // app.conf.broker_url = 'redis://localhost:6379/0'
        ("redis://localhost:6379/0", want(tcp("localhost", 6379), 0)),
        // redis://:password@hostname:port/db_number
        (
            "redis://:password@hostname:6380/2",
            want(tcp("hostname", 6380), 2).pass("password"),
        ),
        // redis+socket:///path/to/redis.sock
        (
            "redis+socket:///path/to/redis.sock",
            want(unix("/path/to/redis.sock"), 0),
        ),
        // redis+socket:///path/to/redis.sock?virtual_host=db_number
        (
            "redis+socket:///path/to/redis.sock?virtual_host=5",
            want(unix("/path/to/redis.sock"), 5),
        ),
        // socket:///path/to/redis.sock?virtual_host=0 (result backend)
        (
            "socket:///path/to/redis.sock?virtual_host=0",
            want(unix("/path/to/redis.sock"), 0),
        ),
        // kombu: redis://[USER:PASSWORD@]REDIS_ADDRESS[:PORT][/VIRTUALHOST]
        (
            "redis://user:secret@redis.example.com:6379/3",
            want(tcp("redis.example.com", 6379), 3)
                .user("user")
                .pass("secret"),
        ),
        (
            "redis://redis.example.com",
            want(tcp("redis.example.com", 6379), 0),
        ),
        // kombu: rediss://[USER:PASSWORD@]REDIS_ADDRESS[:PORT][/VIRTUALHOST]
        (
            "rediss://user:secret@redis.example.com:6380/1",
            want(tcp("redis.example.com", 6380), 1)
                .user("user")
                .pass("secret")
                .tls(false),
        ),
        // Celery: rediss://:password@host:port/db?ssl_cert_reqs=required
        (
            "rediss://:password@vandelay.com:6379/1?ssl_cert_reqs=required",
            want(tcp("vandelay.com", 6379), 1)
                .pass("password")
                .tls(false),
        ),
        (
            "rediss://:password@vandelay.com:6379/1?ssl_cert_reqs=CERT_NONE",
            want(tcp("vandelay.com", 6379), 1)
                .pass("password")
                .tls(true),
        ),
        (
            "rediss://:password@vandelay.com:6379/1?ssl_cert_reqs=CERT_REQUIRED\
             &ssl_ca_certs=/var/ssl/ca.pem&ssl_certfile=/var/ssl/client-cert.pem\
             &ssl_keyfile=/var/ssl/client-key.pem",
            want(tcp("vandelay.com", 6379), 1)
                .pass("password")
                .tls_files(
                    "/var/ssl/ca.pem",
                    "/var/ssl/client-cert.pem",
                    "/var/ssl/client-key.pem",
                ),
        ),
        // redis-py: unix://[username@]/path/to/socket.sock?db=0[&password=password]
        (
            "unix:///path/to/socket.sock?db=0&password=pw",
            want(unix("/path/to/socket.sock"), 0).pass("pw"),
        ),
        // valkey, as redis.
        ("valkey://127.0.0.1:6379/4", want(tcp("127.0.0.1", 6379), 4)),
        (
            "valkeys://:pw@127.0.0.1/0#insecure",
            want(tcp("127.0.0.1", 6379), 0).pass("pw").tls(true),
        ),
    ];
    for (url, w) in rows {
        assert_parses(url, w);
    }
    // Sentinel is a different kombu transport: refused, naming the schemes.
    let e = BrokerUrl::parse("sentinel://localhost:26379").unwrap_err();
    assert!(e.contains("unsupported scheme `sentinel`"), "{e}");
    assert!(e.contains("redis+socket"), "{e}");
}

/// The cases of the broker monitor's own parser (broker::parse_target's
/// tests) and of the old `--check` shape check: the one parser agrees
/// with both.
#[test]
fn old_parser_cases() {
    assert_parses(
        "redis://app:s%40cret@127.0.0.1:6380/2",
        want(tcp("127.0.0.1", 6380), 2).user("app").pass("s@cret"),
    );
    assert_parses(
        "redis+socket:///run/redis/redis.sock?virtual_host=3",
        want(unix("/run/redis/redis.sock"), 3),
    );
    assert_parses(
        "unix:///run/redis/redis.sock?db=4",
        want(unix("/run/redis/redis.sock"), 4),
    );
    assert_parses(
        "rediss://:pw@localhost:6390/0?ssl_cert_reqs=none",
        want(tcp("localhost", 6390), 0).pass("pw").tls(true),
    );
    assert_parses(
        "rediss://localhost/0",
        want(tcp("localhost", 6379), 0).tls(false),
    );
    assert_parses("redis://[::1]:6379", want(tcp("::1", 6379), 0));
    assert_parses(
        "redis+unix://:pw@/run/redis.sock",
        want(unix("/run/redis.sock"), 0).pass("pw"),
    );
    assert_parses(
        "unix:///run/re%64is.sock?db=1",
        want(unix("/run/redis.sock"), 1), // percent-decoded
    );
    let u = BrokerUrl::parse("unix:///run/%ff.sock").unwrap();
    assert_eq!(
        u.endpoint,
        Endpoint::Unix {
            path: std::ffi::OsString::from_vec(b"/run/\xff.sock".to_vec()).into()
        },
        "a path need not be UTF-8"
    );
    assert_parses(
        "REDIS://Host:1/0",
        want(tcp("Host", 1), 0), // the scheme is case-insensitive
    );
    // A `%` before a multi-byte character is kept, not sliced into.
    for url in [
        "redis://h:6379/0?x=%a\u{e9}",
        "redis://h:6379/0?x=%\u{e9}",
        "redis://h:6379/0?x=%",
    ] {
        assert_parses(url, want(tcp("h", 6379), 0));
    }
    for (url, why) in [
        ("", "not a URL"),
        ("localhost:6379", "not a URL"),
        ("127.0.0.1:6379", "not a URL"),
        ("http://x/", "unsupported scheme `http`"),
        ("amqp://host", "unsupported scheme `amqp`"),
        ("redis://:pw@h/notadb", "database `notadb` is not a number"),
        ("redis://host/zero", "database `zero` is not a number"),
        ("redis://host/0?db=x", "db `x` is not a number"),
        (
            "redis+socket:///s?virtual_host=x",
            "virtual_host `x` is not a number",
        ),
        (
            "redis+socket:///s.sock?virtual_host=%\u{e9}1",
            "virtual_host `%\u{e9}1` is not a number",
        ),
        ("redis://", "the URL has no host"),
        ("redis://:pw@", "the URL has no host"),
        (
            "redis://host:99999",
            "port `99999` is not a number from 0 to 65535",
        ),
        ("redis://[::1", "unclosed `[`"),
        ("redis://0.0.0.0:6379", "wildcard"),
        ("unix://relative.sock", "needs an absolute socket path"),
        ("redis+socket://", "needs an absolute socket path"),
        ("socket://host/x.sock", "needs an absolute socket path"),
        ("redis://h /0", "whitespace"),
        (
            "redis://h/0?protocol=4",
            "protocol `4` is not 2, resp2, 3 or resp3",
        ),
        ("redis://h\u{7}/0", "U+0007"),
        (
            "rediss://:pw@h:6379/0?ssl_certfile=/etc/hostname",
            "ssl_certfile and ssl_keyfile must be given together",
        ),
    ] {
        let e = BrokerUrl::parse(url)
            .err()
            .unwrap_or_else(|| panic!("{url:?} parsed"));
        assert!(e.contains(why), "{url:?}: `{e}` does not say `{why}`");
        assert!(!e.contains("pw"), "{url:?}: {e}");
    }
}

#[test]
fn redis_connection_info_carries_everything() {
    let u = BrokerUrl::parse("redis://app:s%40cret@127.0.0.1:6380/2").unwrap();
    let full = u.connection_info().unwrap();
    assert_eq!(full.addr(), &ConnectionAddr::Tcp("127.0.0.1".into(), 6380));
    assert_eq!(full.redis_settings().username(), Some("app"));
    assert_eq!(full.redis_settings().password(), Some("s@cret"));
    assert_eq!(full.redis_settings().db(), 2);
    // The bare connection carries neither credentials nor db.
    let bare = bare_info(&u.client().unwrap());
    assert_eq!(bare.redis_settings().password(), None);
    assert_eq!(bare.redis_settings().username(), None);
    assert_eq!(bare.redis_settings().db(), 0);
    assert_eq!(u.host_port(), Some(("127.0.0.1".into(), 6380)));
    assert!(!u.is_tls());

    let u = BrokerUrl::parse("redis+socket:///run/redis/redis.sock?virtual_host=3").unwrap();
    assert_eq!(u.host_port(), None);
    assert_eq!(
        u.connection_info().unwrap().addr(),
        &ConnectionAddr::Unix(PathBuf::from("/run/redis/redis.sock"))
    );

    for (url, insecure) in [
        ("rediss://:pw@localhost:6390/0?ssl_cert_reqs=none", true),
        ("rediss://localhost/0", false),
    ] {
        let u = BrokerUrl::parse(url).unwrap();
        assert!(u.is_tls());
        let addr = bare_info(&u.client().unwrap()).addr().clone();
        assert!(
            matches!(addr, ConnectionAddr::TcpTls { insecure: i, .. } if i == insecure),
            "{url}: {addr:?}"
        );
    }
}

/// The bare connection keeps the TLS certificates the URL names (a CA
/// made here with openssl): the probe verifies the server as the
/// subscriber does.
#[test]
fn the_bare_connection_keeps_the_tls_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (key, ca) = (dir.path().join("ca.key"), dir.path().join("ca.pem"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=test-ca", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("openssl is needed for this test");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let url = format!(
        "rediss://:pw@localhost:6390/3?ssl_ca_certs={}",
        ca.display()
    );
    let u = BrokerUrl::parse(&url).unwrap();
    let full = u.client().unwrap();
    let bare = bare_info(&full);
    assert!(
        matches!(
            bare.addr(),
            ConnectionAddr::TcpTls {
                tls_params: Some(_),
                ..
            }
        ),
        "{:?}",
        bare.addr()
    );
    assert_eq!(bare.redis_settings().password(), None);
    assert_eq!(full.get_connection_info().redis_settings().db(), 3);
}

#[test]
fn client_reads_the_tls_files_and_names_a_missing_one() {
    let e = check("rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem").unwrap_err();
    assert!(
        e.starts_with("cannot read ssl_ca_certs /nonexistent/ca.pem:"),
        "{e}"
    );
    let e = check("rediss://h/0?ssl_certfile=/nonexistent/c.pem&ssl_keyfile=/etc/hostname")
        .unwrap_err();
    assert!(
        e.starts_with("cannot read ssl_certfile /nonexistent/c.pem:"),
        "{e}"
    );
    check("redis+socket:///run/redis/redis.sock").unwrap();
}

#[test]
fn debug_hides_the_password() {
    let u = BrokerUrl::parse("redis://:hunter2@h/0").unwrap();
    let shown = format!("{u:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("***"),
        "{shown}"
    );
}

#[test]
fn redaction() {
    for (url, shown) in [
        (
            "redis://:secret@192.168.1.109:6379/0",
            "redis://:***@192.168.1.109:6379/0",
        ),
        ("rediss://user:p@ss@host/0", "rediss://user:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host", "redis://user@host"),
        (
            "unix://:pw@/run/redis.sock?db=1",
            "unix://:***@/run/redis.sock?db=1",
        ),
        (
            "redis://host/0?password=abc&x=1",
            "redis://host/0?password=***&x=1",
        ),
        (
            "unix:///s.sock?db=0&pass=abc",
            "unix:///s.sock?db=0&pass=***",
        ),
        (
            "redis+socket://:pw@/run/redis.sock?virtual_host=1",
            "redis+socket://:***@/run/redis.sock?virtual_host=1",
        ),
        ("not a url", "not a url"),
        // An `@` in the query is not the end of a userinfo.
        (
            "redis://h/0?password=abcd&y=@z",
            "redis://h/0?password=***&y=@z",
        ),
        // A `?` in the password does not start the query.
        ("redis://:pa?ss@h/0", "redis://:***@h/0"),
        ("redis://:pa/ss@h/0", "redis://:***@h/0"),
    ] {
        assert_eq!(redact(url), shown, "{url}");
    }
}

/// Whatever the parser takes as the password, the redaction hides.
#[test]
fn redaction_hides_what_the_parser_reads_as_the_password() {
    for url in [
        "redis://:s3cr%65t@h/0",
        "redis://u:s3cret@h/0",
        "redis://h/0?password=s3cret",
        "unix:///s.sock?password=s3cret",
        "redis+socket://:s3cret@/s.sock",
        "rediss://u:s3:cret@h/0",
        "redis://h/0?password=s3cret&y=@z",
    ] {
        let u = BrokerUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let pw = u.password.clone().unwrap();
        assert!(pw.starts_with("s3"), "{url}: {pw}");
        let shown = redact(url);
        assert!(!shown.contains("s3"), "{url} shown as {shown}");
    }
}

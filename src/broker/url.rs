//! The broker URL: [`parse_target`] turns `redis://`, `rediss://`,
//! `unix://`, `redis+socket://`, `socket://` and `valkey(s)://` URLs (with
//! kombu's query parameters) into the [`Target`] the probe, the health link
//! and the heartbeat subscription connect to; [`check_url`] is the same parser
//! for `--check`.
//!
//! Moved here verbatim from `broker/mod.rs` (only `pub(super)` added so the
//! sibling modules can read a `Target`): issue 13 replaces it with the one
//! broker-URL parser of `config::broker_url`.

use std::path::PathBuf;

use redis::{Client, ConnectionAddr, IntoConnectionInfo};

use super::error::{ProbeError, redis_error_text};
use crate::config::redact_url;

/// A parsed broker URL.
#[derive(Clone)]
pub(super) struct Target {
    /// Client with credentials and db: used for the pub/sub connection.
    pub(super) full: Client,
    /// Client without credentials, db 0 and no CLIENT SETINFO: the probe
    /// does AUTH and SELECT itself so it can time and classify them.
    pub(super) bare_info: redis::ConnectionInfo,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) db: i64,
    /// Host and port for the resolve step (None for unix sockets).
    pub(super) host_port: Option<(String, u16)>,
    pub(super) tls: bool,
}

fn query_param(url: &url_lite::Url, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| url.query(k))
}

/// Parses the broker URL. Understands redis-rs URLs (`redis://`,
/// `rediss://`, `unix://`, `redis+unix://`) and kombu's spellings:
/// `redis+socket://` / `socket://` with `?virtual_host=<db>`, and for
/// `rediss://` the query parameters `ssl_cert_reqs` (`none`/`CERT_NONE`
/// disables verification), `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`.
pub(super) fn parse_target(url: &str) -> Result<Target, ProbeError> {
    let bad =
        |why: String| ProbeError::fatal(format!("malformed broker URL {}: {why}", redact_url(url)));
    let parsed = url_lite::Url::parse(url).map_err(bad)?;
    let scheme = parsed.scheme.to_ascii_lowercase();
    let mut rewritten = url.to_string();
    let mut socket_db: Option<i64> = None;
    match scheme.as_str() {
        "redis" | "rediss" | "unix" | "redis+unix" | "valkey" | "valkeys" => {}
        "redis+socket" | "socket" => {
            // kombu: redis+socket:///path/to/redis.sock?virtual_host=1
            rewritten = format!("unix://{}", parsed.path);
            if let Some(db) = query_param(&parsed, &["virtual_host", "db"]) {
                socket_db = Some(
                    db.trim_start_matches('/')
                        .parse()
                        .map_err(|_| bad(format!("bad database number {db:?}")))?,
                );
            }
        }
        other => return Err(bad(format!("unsupported scheme {other:?}"))),
    }
    if scheme == "unix" || scheme == "redis+unix" {
        if let Some(db) = query_param(&parsed, &["db", "virtual_host"]) {
            socket_db = Some(
                db.parse()
                    .map_err(|_| bad(format!("bad database number {db:?}")))?,
            );
        }
        // redis-rs reads only `db`; strip the query so it does not choke.
        rewritten = format!("unix://{}", parsed.path);
    }
    let tls = scheme == "rediss" || scheme == "valkeys";
    if tls {
        // redis-rs ignores unknown query parameters but only accepts the
        // `#insecure` fragment; map kombu's ssl_cert_reqs=none onto it.
        let reqs = query_param(&parsed, &["ssl_cert_reqs"]).unwrap_or_default();
        let insecure = matches!(
            reqs.to_ascii_lowercase().as_str(),
            "none" | "cert_none" | "ssl.cert_none"
        ) || parsed.fragment.as_deref() == Some("insecure");
        rewritten = strip_fragment(&rewritten);
        if insecure {
            rewritten.push_str("#insecure");
        }
    }

    let mut info = rewritten
        .as_str()
        .into_connection_info()
        .map_err(|e| bad(redis_error_text(&e)))?;
    if let Some(db) = socket_db {
        let r = info.redis_settings().clone().set_db(db);
        info = info.set_redis_settings(r);
    }
    let full = if tls {
        let read = |key: &str| -> Result<Option<Vec<u8>>, ProbeError> {
            match query_param(&parsed, &[key]) {
                None => Ok(None),
                Some(path) => std::fs::read(PathBuf::from(&path))
                    .map(Some)
                    .map_err(|e| ProbeError::fatal(format!("cannot read {key} {path}: {e}"))),
            }
        };
        let root_cert = read("ssl_ca_certs")?;
        let client_tls = match (read("ssl_certfile")?, read("ssl_keyfile")?) {
            (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
            (None, None) => None,
            _ => {
                return Err(bad(
                    "ssl_certfile and ssl_keyfile must be given together".into()
                ));
            }
        };
        ensure_crypto_provider();
        if root_cert.is_some() || client_tls.is_some() {
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .map_err(|e| ProbeError::fatal(format!("TLS settings: {}", redis_error_text(&e))))?
        } else {
            Client::open(info).map_err(|e| bad(redis_error_text(&e)))?
        }
    } else {
        Client::open(info).map_err(|e| bad(redis_error_text(&e)))?
    };
    // Pub/sub and the probe speak RESP2 and skip CLIENT SETINFO.
    let full_info = full.get_connection_info().clone();
    let settings = full_info.redis_settings().clone();
    let full_info = full_info.set_redis_settings(
        settings
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP2)
            .set_skip_set_lib_name(),
    );
    let full = Client::open(full_info.clone()).map_err(|e| bad(redis_error_text(&e)))?;
    let bare_info = full_info.set_redis_settings(
        redis::RedisConnectionInfo::default()
            .set_protocol(redis::ProtocolVersion::RESP2)
            .set_skip_set_lib_name(),
    );
    let host_port = match bare_info.addr() {
        ConnectionAddr::Tcp(h, p) => Some((h.clone(), *p)),
        ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    };
    Ok(Target {
        full,
        bare_info,
        username: settings.username().map(str::to_string),
        password: settings.password().map(str::to_string),
        db: settings.db(),
        host_port,
        tls,
    })
}

/// Whether the daemon can use `url` as its broker: the very parser the
/// broker monitor runs, without connecting. `clearify-workerd --check` calls
/// it (through [`crate::config::check_broker_url`]) so that the check and the
/// daemon agree on every URL. The error is redacted.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_target(url).map(|_| ()).map_err(|e| {
        // The caller names the (redacted) URL itself.
        let prefix = format!("malformed broker URL {}: ", redact_url(url));
        match e.message.strip_prefix(&prefix) {
            Some(why) => why.to_string(),
            None => e.message,
        }
    })
}

fn strip_fragment(url: &str) -> String {
    match url.find('#') {
        Some(i) => url[..i].to_string(),
        None => url.to_string(),
    }
}

/// Installs ring as rustls' process-wide crypto provider (idempotent).
fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// ---------------------------------------------------------------------------
// A tiny URL splitter (scheme, path, query, fragment) for kombu's spellings.

mod url_lite {
    pub struct Url {
        pub scheme: String,
        pub path: String,
        query: Vec<(String, String)>,
        pub fragment: Option<String>,
    }

    impl Url {
        pub fn parse(s: &str) -> Result<Url, String> {
            let (scheme, rest) = s
                .split_once("://")
                .ok_or_else(|| "expected scheme://...".to_string())?;
            if scheme.is_empty() {
                return Err("missing scheme".into());
            }
            let (rest, fragment) = match rest.split_once('#') {
                Some((r, f)) => (r, Some(f.to_string())),
                None => (rest, None),
            };
            let (rest, query) = match rest.split_once('?') {
                Some((r, q)) => (r, q),
                None => (rest, ""),
            };
            let path = match rest.find('/') {
                Some(i) => rest[i..].to_string(),
                None => String::new(),
            };
            let query = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect();
            Ok(Url {
                scheme: scheme.to_string(),
                path,
                query,
                fragment,
            })
        }

        pub fn query(&self, key: &str) -> Option<String> {
            self.query
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        }
    }

    fn hex_val(b: Option<&u8>) -> Option<u8> {
        match *b? {
            c @ b'0'..=b'9' => Some(c - b'0'),
            c @ b'a'..=b'f' => Some(c - b'a' + 10),
            c @ b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }

    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                // Two hex digits, looked at as bytes: `%a` followed by a
                // multi-byte character must not slice inside it.
                b'%' => match (hex_val(bytes.get(i + 1)), hex_val(bytes.get(i + 2))) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                },
                b'+' => out.push(b' '),
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ProbeErrorKind;

    #[test]
    fn parses_urls_and_kombu_spellings() {
        let t = parse_target("redis://app:s%40cret@127.0.0.1:6380/2").unwrap();
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.db, 2);
        assert_eq!(t.host_port, Some(("127.0.0.1".into(), 6380)));
        assert!(!t.tls);
        // The bare connection carries neither credentials nor db.
        assert_eq!(t.bare_info.redis_settings().password(), None);
        assert_eq!(t.bare_info.redis_settings().db(), 0);

        let t = parse_target("redis+socket:///run/redis/redis.sock?virtual_host=3").unwrap();
        assert_eq!(t.db, 3);
        assert_eq!(t.host_port, None);
        let t = parse_target("unix:///run/redis/redis.sock?db=4").unwrap();
        assert_eq!(t.db, 4);

        let t = parse_target("rediss://:pw@localhost:6390/0?ssl_cert_reqs=none").unwrap();
        assert!(t.tls);
        assert!(matches!(
            t.bare_info.addr(),
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
        let t = parse_target("rediss://localhost/0").unwrap();
        assert!(matches!(
            t.bare_info.addr(),
            ConnectionAddr::TcpTls {
                insecure: false,
                ..
            }
        ));
    }

    #[test]
    fn a_percent_before_a_multibyte_character_is_kept() {
        // Used to slice inside `é` and panic.
        for url in [
            "redis://h:6379/0?x=%a\u{e9}",
            "redis://h:6379/0?x=%\u{e9}",
            "redis://h:6379/0?x=%",
            "redis+socket:///s.sock?virtual_host=%\u{e9}1",
        ] {
            let _ = parse_target(url);
        }
        let u = url_lite::Url::parse("redis://h/0?a=%a\u{e9}&b=%41%4&c=%zz").unwrap();
        assert_eq!(u.query("a").as_deref(), Some("%a\u{e9}"));
        assert_eq!(u.query("b").as_deref(), Some("A%4"));
        assert_eq!(u.query("c").as_deref(), Some("%zz"));
    }

    #[test]
    fn malformed_urls_are_fatal_and_redacted() {
        for url in [
            "",
            "localhost:6379",
            "http://x/",
            "redis://:pw@h/notadb",
            "redis+socket:///s?virtual_host=x",
        ] {
            let e = parse_target(url)
                .err()
                .unwrap_or_else(|| panic!("{url} parsed"));
            assert_eq!(e.kind, ProbeErrorKind::Fatal, "{url}: {e}");
            assert!(!e.message.contains("pw@"), "{e}");
        }
        let e = parse_target("rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem")
            .err()
            .unwrap();
        assert!(
            e.is_fatal() && e.message.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }
}

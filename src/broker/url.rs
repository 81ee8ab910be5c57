//! The broker URL as the monitor connects to it: [`parse_target`] reads it
//! with the one parser, [`crate::config::broker_url`] (the one `--check`
//! uses), and builds the redis-rs clients from it; [`check_url`] is the same
//! construction without connecting.

use super::error::ProbeError;
use crate::config::broker_url::{self, BrokerUrl};
use crate::config::redact_url;

/// A parsed broker URL.
#[derive(Clone)]
pub(super) struct Target {
    /// Client with credentials and db: used for the pub/sub connection.
    pub(super) full: redis::Client,
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

/// Parses the broker URL (every scheme kombu's Redis transport accepts, see
/// [`crate::config::broker_url`]) and builds its clients; reads the TLS
/// files a `rediss://` URL names. Errors are fatal and redacted.
pub(super) fn parse_target(url: &str) -> Result<Target, ProbeError> {
    let u = BrokerUrl::parse(url).map_err(|why| {
        ProbeError::fatal(format!("malformed broker URL {}: {why}", redact_url(url)))
    })?;
    let full = u.client().map_err(ProbeError::fatal)?;
    Ok(Target {
        // From `full`, not from the URL alone: it keeps the TLS certificates.
        bare_info: broker_url::bare_info(&full),
        full,
        username: u.username.clone(),
        password: u.password.clone(),
        db: u.db,
        host_port: u.host_port(),
        tls: u.is_tls(),
    })
}

/// Whether the monitor can build its clients from `url`, without
/// connecting (the fuzz target `broker_url` checks that this accepts what
/// `--check` accepts). The error is redacted.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ProbeErrorKind;
    use redis::ConnectionAddr;

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

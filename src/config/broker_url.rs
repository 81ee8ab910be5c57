//! THE broker URL: the one parser of `[broker].url` and the one redaction.
//!
//! `clearify-workerd --check` ([`check`]) and the broker monitor read the
//! URL through [`BrokerUrl::parse`], so they cannot disagree. The schemes
//! are those of kombu's Redis transport and of redis-rs:
//!
//! | scheme | what |
//! |---|---|
//! | `redis://[user][:password@]host[:port][/db]` | TCP, port 6379 by default |
//! | `rediss://…`, `valkeys://…` | the same over TLS; `?ssl_cert_reqs=none` (or `#insecure`) skips verification, `?ssl_ca_certs=`, `?ssl_certfile=` + `?ssl_keyfile=` name PEM files |
//! | `valkey://…` | as `redis://` |
//! | `redis+socket:///path.sock[?virtual_host=N]`, `socket://…` | kombu's Unix socket spelling |
//! | `unix:///path.sock[?db=N]`, `redis+unix://…` | redis-py's and redis-rs's |
//!
//! A password comes from the userinfo (`:password@`, percent-decoded) or
//! from a `password=` query parameter (redis-py). [`redact`] hides both.
//!
//! What it may import: std, `url`, `percent-encoding` and redis-rs's
//! connection types (data, no I/O). [`BrokerUrl::client`] is the only
//! function that touches the file system (it reads the TLS PEM files).

use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;

use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo as _, ProtocolVersion, RedisConnectionInfo,
};

use super::schema::control_char;

/// The port of `redis://host` without one.
pub const DEFAULT_PORT: u16 = 6379;

const HINT: &str =
    "expected e.g. redis://:password@host:6379/0 or redis+socket:///run/redis/redis.sock";

/// The schemes [`BrokerUrl::parse`] accepts, in the order the error names them.
pub const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis+socket",
    "socket",
    "unix",
    "redis+unix",
    "valkey",
    "valkeys",
];

/// Where the broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Host name or IP address (IPv6 without brackets) and port.
    Tcp { host: String, port: u16 },
    /// An absolute Unix socket path.
    Unix { path: PathBuf },
}

/// TLS settings of a `rediss://` or `valkeys://` URL (kombu's query
/// parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// Do not verify the server's certificate (`ssl_cert_reqs=none` or
    /// `CERT_NONE`, or the `#insecure` fragment of redis-rs).
    pub insecure: bool,
    /// `ssl_ca_certs`: PEM file of the CA to trust.
    pub ca_certs: Option<PathBuf>,
    /// `ssl_certfile` and `ssl_keyfile`: the client's certificate and key.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A parsed broker URL.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Lower case, one of [`SCHEMES`].
    pub scheme: String,
    pub endpoint: Endpoint,
    /// The database (`SELECT`), 0 by default; 0..=4294967295.
    pub db: i64,
    pub username: Option<String>,
    /// Secret: never print it (`Debug` hides it).
    pub password: Option<String>,
    /// `Some` for `rediss://` and `valkeys://`.
    pub tls: Option<Tls>,
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("scheme", &self.scheme)
            .field("endpoint", &self.endpoint)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// Whether `url` is a broker URL the daemon can use: [`BrokerUrl::parse`],
/// then [`BrokerUrl::client`] (which reads the TLS files it names). The
/// error never shows the password.
pub fn check(url: &str) -> Result<(), String> {
    BrokerUrl::parse(url)?.client().map(|_| ())
}

impl BrokerUrl {
    /// Parse `url`. The error says what is wrong without quoting the URL
    /// (the caller names it, through [`redact`]).
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        if let Some(why) = control_char(url, &[]) {
            return Err(format!("the URL {why}"));
        }
        if url.chars().any(char::is_whitespace) {
            return Err(format!("the URL contains whitespace; {HINT}"));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("not a URL; {HINT}"));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !SCHEMES.contains(&scheme.as_str()) {
            return Err(format!(
                "unsupported scheme `{}`; use {}",
                scheme.escape_debug(),
                SCHEMES.join(", ")
            ));
        }
        // Split as the url crate does: the authority ends at the first `/`,
        // `?` or `#`; the userinfo at the last `@` in it.
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = rest.split('/').next().unwrap_or("");
        let path = &rest[authority.len()..];
        let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("", authority));
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let param = |keys: &[&'static str]| param(&pairs, keys);
        let db_param = |keys: &[&'static str]| -> Result<Option<i64>, String> {
            match param(keys) {
                None => Ok(None),
                Some((key, v)) => v
                    .trim_start_matches('/')
                    .parse::<u32>()
                    .map(|n| Some(n.into()))
                    .map_err(|_| format!("{key} `{}` is not a number", v.escape_debug())),
            }
        };
        let decode = |s: &str, what: &str| -> Result<Option<String>, String> {
            if s.is_empty() {
                return Ok(None);
            }
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|d| Some(d.into_owned()))
                .map_err(|_| format!("the {what} is not valid UTF-8 once percent-decoded"))
        };
        let (user, pass) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        let username = decode(user, "user name")?;
        let password = match pass {
            Some(p) => decode(p, "password")?,
            None => param(&["password"]).map(|(_, v)| v.to_string()),
        };
        // redis-rs refuses an unknown `protocol=`; the daemon speaks RESP2
        // whatever it says.
        if let Some((_, p)) = param(&["protocol"])
            && !matches!(p, "2" | "resp2" | "3" | "resp3")
        {
            return Err(format!(
                "protocol `{}` is not 2, resp2, 3 or resp3",
                p.escape_debug()
            ));
        }
        let unix = matches!(
            scheme.as_str(),
            "unix" | "redis+unix" | "redis+socket" | "socket"
        );
        let (endpoint, db) = if unix {
            // Bytes, as redis-rs reads the path: a socket path need not be UTF-8.
            let path: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
            if !hostport.is_empty() || path.len() < 2 {
                return Err(format!(
                    "a {scheme}:// URL needs an absolute socket path, e.g. {scheme}:///run/redis/redis.sock"
                ));
            }
            // kombu spells the database `virtual_host`, redis-rs `db`.
            let keys: &[&str] = if scheme.ends_with("socket") {
                &["virtual_host", "db"]
            } else {
                &["db", "virtual_host"]
            };
            let db = db_param(keys)?.unwrap_or(0);
            let path = PathBuf::from(std::ffi::OsString::from_vec(path));
            (Endpoint::Unix { path }, db)
        } else {
            check_host_port(hostport)?;
            // Host and port as redis-rs reads them: through the url crate.
            let parsed = url::Url::parse(&format!("{scheme}://{hostport}"))
                .map_err(|e| format!("{e}; {HINT}"))?;
            let host = match parsed.host() {
                Some(url::Host::Domain(d)) => d.to_string(),
                Some(url::Host::Ipv4(a)) => a.to_string(),
                Some(url::Host::Ipv6(a)) => a.to_string(),
                None => String::new(),
            };
            if host.is_empty() {
                return Err(format!("the URL has no host; {HINT}"));
            }
            if host == "0.0.0.0" || host == "::" {
                return Err("cannot connect to a wildcard address (0.0.0.0 or ::)".into());
            }
            let path = path.trim_matches('/');
            let db = if path.is_empty() {
                0
            } else {
                path.parse::<u32>()
                    .map_err(|_| format!("database `{}` is not a number", path.escape_debug()))?
                    .into()
            };
            // A `db=` parameter is not used over TCP, but a bad one is
            // still a mistake worth naming.
            db_param(&["db"])?;
            let port = parsed.port().unwrap_or(DEFAULT_PORT);
            (Endpoint::Tcp { host, port }, db)
        };
        let tls = if scheme == "rediss" || scheme == "valkeys" {
            let reqs = param(&["ssl_cert_reqs"]).map_or("", |(_, v)| v);
            let insecure = matches!(
                reqs.to_ascii_lowercase().as_str(),
                "none" | "cert_none" | "ssl.cert_none"
            ) || fragment == Some("insecure");
            let path = |key: &'static str| param(&[key]).map(|(_, v)| PathBuf::from(v));
            let client_cert = match (path("ssl_certfile"), path("ssl_keyfile")) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err("ssl_certfile and ssl_keyfile must be given together".into()),
            };
            Some(Tls {
                insecure,
                ca_certs: path("ssl_ca_certs"),
                client_cert,
            })
        } else {
            None
        };
        Ok(BrokerUrl {
            scheme,
            endpoint,
            db,
            username,
            password,
            tls,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Host and port, for a TCP endpoint.
    pub fn host_port(&self) -> Option<(String, u16)> {
        match &self.endpoint {
            Endpoint::Tcp { host, port } => Some((host.clone(), *port)),
            Endpoint::Unix { .. } => None,
        }
    }

    /// The address as redis-rs connects to it (TLS without custom
    /// certificates; [`BrokerUrl::client`] adds them).
    pub fn addr(&self) -> ConnectionAddr {
        match (&self.endpoint, &self.tls) {
            (Endpoint::Tcp { host, port }, None) => ConnectionAddr::Tcp(host.clone(), *port),
            (Endpoint::Tcp { host, port }, Some(tls)) => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: tls.insecure,
                tls_params: None,
            },
            (Endpoint::Unix { path }, _) => ConnectionAddr::Unix(path.clone()),
        }
    }

    /// The full connection: credentials and db, RESP2, no `CLIENT SETINFO`.
    pub fn connection_info(&self) -> Result<ConnectionInfo, String> {
        let mut r = RedisConnectionInfo::default()
            .set_db(self.db)
            .set_protocol(ProtocolVersion::RESP2)
            .set_skip_set_lib_name();
        if let Some(u) = &self.username {
            r = r.set_username(u);
        }
        if let Some(p) = &self.password {
            r = r.set_password(p);
        }
        Ok(info(self.addr())?.set_redis_settings(r))
    }

    /// A redis-rs client for [`BrokerUrl::connection_info`], with the TLS
    /// certificates the URL names read from disk. Does not connect.
    pub fn client(&self) -> Result<redis::Client, String> {
        let info = self.connection_info()?;
        let Some(tls) = &self.tls else {
            return redis::Client::open(info).map_err(|e| e.to_string());
        };
        let read = |key: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read {key} {}: {e}", path.display()))
        };
        let root_cert = tls
            .ca_certs
            .as_ref()
            .map(|p| read("ssl_ca_certs", p))
            .transpose()?;
        let client_tls = match &tls.client_cert {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read("ssl_certfile", cert)?,
                client_key: read("ssl_keyfile", key)?,
            }),
            None => None,
        };
        // rustls needs a process-wide crypto provider; installing it twice
        // is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if root_cert.is_none() && client_tls.is_none() {
            return redis::Client::open(info).map_err(|e| e.to_string());
        }
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| format!("TLS settings: {}", e.to_string().trim()))
    }
}

/// `client`'s connection (address and TLS certificates) without
/// credentials, db 0, RESP2 and no `CLIENT SETINFO`: for a caller that
/// authenticates and selects itself, and times each step.
pub fn bare_info(client: &redis::Client) -> ConnectionInfo {
    client.get_connection_info().clone().set_redis_settings(
        RedisConnectionInfo::default()
            .set_protocol(ProtocolVersion::RESP2)
            .set_skip_set_lib_name(),
    )
}

fn info(addr: ConnectionAddr) -> Result<ConnectionInfo, String> {
    addr.into_connection_info().map_err(|e| e.to_string())
}

/// The first of `keys` that the query has, and its (decoded) value.
fn param<'a>(
    pairs: &'a [(String, String)],
    keys: &[&'static str],
) -> Option<(&'static str, &'a str)> {
    keys.iter().find_map(|k| {
        pairs
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| (*k, v.as_str()))
    })
}

/// The messages of `--check` for a bad host or port, before the url crate
/// (whose messages do not name the part).
fn check_host_port(hostport: &str) -> Result<(), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(format!("unclosed `[` in the host; {HINT}")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("the URL has no host; {HINT}"));
    }
    if let Some(p) = port
        && !p.is_empty()
        && p.parse::<u16>().is_err()
    {
        return Err(format!(
            "port `{}` is not a number from 0 to 65535",
            p.escape_debug()
        ));
    }
    Ok(())
}

/// `url` with its password (userinfo, and a `password=` or `pass=` query
/// parameter) replaced by `***`. Works on any text, parsed or not: use it
/// wherever a broker URL is shown or logged. It hides rather too much than
/// too little: the userinfo ends at the last `@` (a password may hold `/`,
/// `?` or `#` that the parser would stop at), and every `password=`
/// parameter after the first `?` is hidden, wherever that `?` is.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&rest[at..]);
        }
        None => out.push_str(rest),
    }
    let Some(q) = out[rest_start..].find('?').map(|i| i + rest_start + 1) else {
        return out;
    };
    let params: Vec<String> = out[q..]
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _))
                if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass") =>
            {
                format!("{k}=***")
            }
            _ => p.to_string(),
        })
        .collect();
    out.truncate(q);
    out.push_str(&params.join("&"));
    out
}

#[cfg(test)]
#[path = "broker_url_tests.rs"]
mod tests;

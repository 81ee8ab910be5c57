//! One readiness check ([`probe`]): connect (TCP, TLS or unix socket), AUTH,
//! SELECT, PING → PONG over redis-rs' async connection, each step with an
//! explicit timeout and recorded ([`connect_steps`]). What fails is a
//! [`ProbeError`] (`error`). The gate, `clearifyctl test` and
//! `clearify-workerd doctor` use it.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, Value};

use super::error::{ProbeError, redis_error_text, with_timeout};
use super::url::{Target, parse_target};
use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::control::protocol::TestStep;

// ---------------------------------------------------------------------------
// Connecting, step by step

pub(super) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

pub(super) fn step(name: &str, ok: bool, took: Duration, detail: Option<String>) -> TestStep {
    TestStep {
        name: name.to_string(),
        ok,
        millis: ms(took),
        detail,
    }
}

/// Records the failed step `name`, started at `started`, with the error's
/// message as its detail, and hands the error back to be returned.
fn failed(steps: &mut Vec<TestStep>, name: &str, started: Instant, err: ProbeError) -> ProbeError {
    steps.push(step(
        name,
        false,
        started.elapsed(),
        Some(err.message.clone()),
    ));
    err
}

/// Resolve, connect, AUTH, SELECT. Each step is recorded in `steps`.
pub(super) async fn connect_steps(
    target: &Target,
    steps: &mut Vec<TestStep>,
) -> Result<MultiplexedConnection, ProbeError> {
    // resolve
    let mut info = target.bare_info.clone();
    let t = Instant::now();
    match &target.host_port {
        Some((host, port)) => {
            let lookup = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::lookup_host((host.as_str(), *port)),
            )
            .await;
            let addrs: Vec<std::net::SocketAddr> = match lookup {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    let err = ProbeError::transient(format!("DNS lookup of {host} failed: {e}"));
                    return Err(failed(steps, "resolve", t, err));
                }
                Err(_) => {
                    let err = ProbeError::transient(format!(
                        "DNS lookup of {host} timed out after {}s",
                        CONNECT_TIMEOUT.as_secs_f64()
                    ));
                    return Err(failed(steps, "resolve", t, err));
                }
            };
            let Some(first) = addrs.first() else {
                let err =
                    ProbeError::transient(format!("DNS lookup of {host} returned no address"));
                return Err(failed(steps, "resolve", t, err));
            };
            steps.push(step(
                "resolve",
                true,
                t.elapsed(),
                Some(
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ));
            // Plain TCP connects to the address just resolved; TLS keeps the
            // name for SNI and certificate verification.
            if !target.tls {
                info = info.set_addr(ConnectionAddr::Tcp(first.ip().to_string(), *port));
            }
        }
        None => steps.push(step(
            "resolve",
            true,
            t.elapsed(),
            Some("unix socket, nothing to resolve".into()),
        )),
    }

    // connect
    let t = Instant::now();
    let client = match Client::open(info) {
        Ok(c) => c,
        Err(e) => {
            let err = ProbeError::fatal(format!(
                "invalid broker configuration: {}",
                redis_error_text(&e)
            ));
            return Err(failed(steps, "connect", t, err));
        }
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let mut conn = with_timeout(
        CONNECT_TIMEOUT + Duration::from_millis(500),
        "connect",
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|err| failed(steps, "connect", t, err))?;
    steps.push(step(
        "connect",
        true,
        t.elapsed(),
        Some(if target.tls { "TLS" } else { "plain" }.into()),
    ));

    // auth (AUTH and SELECT)
    let t = Instant::now();
    let mut detail = Vec::new();
    if let Some(password) = &target.password {
        let mut cmd = redis::cmd("AUTH");
        if let Some(user) = &target.username {
            cmd.arg(user);
            detail.push(format!("AUTH as {user}"));
        } else {
            detail.push("AUTH".to_string());
        }
        cmd.arg(password);
        with_timeout(
            RESPONSE_TIMEOUT,
            "AUTH",
            cmd.query_async::<Value>(&mut conn),
        )
        .await
        .map_err(|err| failed(steps, "auth", t, err))?;
    } else {
        detail.push("no password".to_string());
    }
    if target.db != 0 {
        with_timeout(
            RESPONSE_TIMEOUT,
            "SELECT",
            redis::cmd("SELECT")
                .arg(target.db)
                .query_async::<Value>(&mut conn),
        )
        .await
        .map_err(|err| failed(steps, "auth", t, err))?;
        detail.push(format!("SELECT {}", target.db));
    }
    steps.push(step("auth", true, t.elapsed(), Some(detail.join(", "))));
    Ok(conn)
}

/// PING → PONG with a timeout; returns the round trip.
pub(super) async fn ping(conn: &mut MultiplexedConnection) -> Result<Duration, ProbeError> {
    let t = Instant::now();
    let reply: String = with_timeout(
        RESPONSE_TIMEOUT,
        "PING",
        redis::cmd("PING").query_async(conn),
    )
    .await?;
    if reply != "PONG" {
        return Err(ProbeError::transient(format!(
            "PING answered {reply:?} instead of PONG"
        )));
    }
    Ok(t.elapsed())
}

/// Connects, authenticates, selects the db and pings.
pub(super) async fn connect_and_ping(
    target: &Target,
) -> Result<(MultiplexedConnection, Duration), ProbeError> {
    let mut steps = Vec::new();
    let mut conn = connect_steps(target, &mut steps)
        .await
        .map_err(|e| with_hint(target, e))?;
    let latency = ping(&mut conn).await.map_err(|e| with_hint(target, e))?;
    Ok((conn, latency))
}

/// Adds "the URL has no password" to a NOAUTH error when it has none.
pub(super) fn with_hint(target: &Target, mut e: ProbeError) -> ProbeError {
    if e.is_fatal() && target.password.is_none() && e.message.contains("NOAUTH") {
        e.message
            .push_str(" (the broker requires a password and the URL has none)");
    }
    e
}

/// One readiness check: connect (TCP, TLS or unix socket), AUTH, SELECT,
/// PING → PONG. Returns the PING round trip.
pub async fn probe(url: &str) -> Result<Duration, ProbeError> {
    let target = parse_target(url)?;
    connect_and_ping(&target).await.map(|(_, latency)| latency)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ProbeErrorKind;

    #[tokio::test]
    async fn refused_connection_is_transient() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = probe(&format!("redis://127.0.0.1:{port}/0"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ProbeErrorKind::Transient);
        assert!(e.message.contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn dns_failure_is_transient() {
        // A 64-byte label cannot be encoded in a DNS query, so the lookup
        // fails locally without sending anything anywhere.
        let host = format!("{}.invalid", "a".repeat(64));
        let e = probe(&format!("redis://{host}:6379/0")).await.unwrap_err();
        assert_eq!(e.kind, ProbeErrorKind::Transient, "{e}");
        assert!(e.message.contains("DNS"), "{e}");
    }

    #[tokio::test]
    async fn silent_server_times_out_as_transient() {
        // Accepts TCP but never answers: the response timeout must fire.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let t = Instant::now();
        let e = probe(&format!("redis://127.0.0.1:{port}/0"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ProbeErrorKind::Transient, "{e}");
        assert!(e.message.contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        hold.abort();
    }
}

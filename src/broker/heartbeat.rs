//! Celery heartbeats: the pub/sub channel workers publish them on
//! ([`heartbeat_channel`]), the subscription the monitor keeps to it
//! (redis-rs' async pub/sub), and the decoding of a kombu envelope carrying a
//! `worker-heartbeat` event ([`decode_heartbeat`]).

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::error::{ProbeError, with_timeout};
use super::url::Target;
use super::{BrokerEvent, CONNECT_TIMEOUT, RESPONSE_TIMEOUT, gate};

/// The fields of a Celery `worker-heartbeat` event that the supervisor uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// The node name, e.g. `text-1@host`.
    pub hostname: String,
    pub pid: u32,
    /// Tasks executing right now.
    pub active: u64,
    /// Tasks processed since the worker started.
    pub processed: u64,
    /// Heartbeat interval in seconds (2.0 by default).
    pub freq: f64,
    /// The worker's clock, seconds since the Unix epoch.
    pub timestamp: f64,
}

/// The pub/sub channel Celery workers publish heartbeats on:
/// `<key_prefix>/<db>.celeryev/worker.heartbeat`.
pub fn heartbeat_channel(key_prefix: &str, db: i64) -> String {
    format!("{key_prefix}/{db}.celeryev/worker.heartbeat")
}

/// Decodes a kombu envelope carrying a Celery `worker-heartbeat` event.
///
/// The envelope is JSON with `body` (base64 JSON when
/// `properties.body_encoding` is `base64`, else the JSON itself). Returns
/// `None` for anything else (other event types, garbage).
pub fn decode_heartbeat(payload: &[u8]) -> Option<Heartbeat> {
    let envelope: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let body = envelope.get("body")?;
    let encoding = envelope
        .get("properties")
        .and_then(|p| p.get("body_encoding"))
        .and_then(|e| e.as_str());
    let event: serde_json::Value = match (body, encoding) {
        (serde_json::Value::String(s), Some("base64")) => {
            serde_json::from_slice(&base64_decode(s)?).ok()?
        }
        (serde_json::Value::String(s), _) => serde_json::from_str(s).ok()?,
        (serde_json::Value::Object(_), _) => body.clone(),
        _ => return None,
    };
    if let Some(t) = event.get("type").and_then(|t| t.as_str())
        && t != "worker-heartbeat"
    {
        return None;
    }
    let num = |k: &str| event.get(k).and_then(|v| v.as_f64());
    let count = |k: &str| {
        event
            .get(k)
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
    };
    Some(Heartbeat {
        hostname: event.get("hostname")?.as_str()?.to_string(),
        pid: count("pid")
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
        active: count("active").unwrap_or(0),
        processed: count("processed").unwrap_or(0),
        freq: num("freq").unwrap_or(2.0),
        timestamp: num("timestamp").unwrap_or(0.0),
    })
}

/// kombu's `body_encoding = "base64"` is standard base64 with padding
/// (Python's `base64.b64encode`). The `base64` crate decodes it, with this
/// engine read leniently as the hand-written decoder did before it: no
/// padding needed, and bits left over at the end are dropped.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// Base64 in either alphabet (standard or URL-safe), with or without
/// padding; ASCII whitespace is skipped and anything from the first `=` on
/// is ignored. Public for the fuzz targets (fuzz/) only.
#[doc(hidden)]
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let text = s.split('=').next().unwrap_or_default();
    let standard: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| match c {
            b'-' => b'+',
            b'_' => b'/',
            c => c,
        })
        .collect();
    LENIENT.decode(standard).ok()
}

/// How often the monitor saw the broker come up and go down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct LinkCounts {
    pub(super) ups: u64,
    pub(super) downs: u64,
}

/// Subscribes to the heartbeat channel once the broker is up, and again
/// whenever the subscription ends or the monitor sees an outage (the old
/// subscription may be half-dead). A transition to up cuts a pending retry
/// delay short.
pub(super) async fn heartbeat_task(
    target: Target,
    key_prefix: String,
    mut up: watch::Receiver<LinkCounts>,
    tx: mpsc::Sender<BrokerEvent>,
) {
    let channels = vec![
        heartbeat_channel(&key_prefix, target.db),
        // With fanout_patterns=False kombu publishes all events here.
        format!("{key_prefix}/{}.celeryev", target.db),
    ];
    let mut backoff = gate::retry();
    // Wait for the gate.
    if up.wait_for(|c| c.ups > 0).await.is_err() {
        return;
    }
    loop {
        let downs_before = up.borrow_and_update().downs;
        let subscribed = async {
            let mut pubsub =
                with_timeout(CONNECT_TIMEOUT, "subscribe", target.full.get_async_pubsub()).await?;
            with_timeout(RESPONSE_TIMEOUT, "SUBSCRIBE", pubsub.subscribe(&channels)).await?;
            Ok::<_, ProbeError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(pubsub) => {
                tracing::debug!(channel = %channels[0], "subscribed to Celery heartbeats");
                backoff.reset();
                let mut stream = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                if let Some(hb) = decode_heartbeat(msg.get_payload_bytes())
                                    && tx.send(BrokerEvent::Heartbeat(hb)).await.is_err()
                                {
                                    return;
                                }
                            }
                            None => {
                                tracing::debug!("heartbeat subscription lost");
                                break;
                            }
                        },
                        changed = up.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            // An outage since we subscribed: the subscription
                            // may be half-dead; subscribe afresh.
                            if up.borrow_and_update().downs != downs_before {
                                break;
                            }
                        }
                        _ = tx.closed() => return,
                    }
                }
            }
            Err(e) => tracing::debug!("heartbeat subscription failed: {}", e.message),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay(gate::jitter())) => {}
            changed = up.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heartbeat captured from a real Celery 5.7 worker (kombu 5.7) on
    /// `/0.celeryev/worker.heartbeat`.
    const REAL_HEARTBEAT: &str = r#"{"body": "eyJob3N0bmFtZSI6ICJoYnRlc3RAdm0iLCAidXRjb2Zmc2V0IjogMC4wLCAicGlkIjogMjE1NjYsICJjbG9jayI6IDIsICJmcmVxIjogMi4wLCAiYWN0aXZlIjogMCwgInByb2Nlc3NlZCI6IDAsICJsb2FkYXZnIjogWzMuNDcsIDEuOTksIDAuODldLCAic3dfaWRlbnQiOiAicHktY2VsZXJ5IiwgInN3X3ZlciI6ICI1LjcuMCIsICJzd19zeXMiOiAiTGludXgiLCAidGltZXN0YW1wIjogMTc5NTg5MzgwOC45NDQzOTUsICJ0eXBlIjogIndvcmtlci1oZWFydGJlYXQifQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"hostname": "hbtest@vm"}, "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": "worker.heartbeat"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "0b87dfd7-5a99-43c3-9c93-ed0c03aea3fe"}}"#;

    /// worker-online from the same worker: not a heartbeat.
    const REAL_ONLINE: &str = r#"{"body": "eyJob3N0bmFtZSI6ICJoYnRlc3RAdm0iLCAidXRjb2Zmc2V0IjogMC4wLCAicGlkIjogMjE1NjYsICJjbG9jayI6IDEsICJmcmVxIjogMi4wLCAiYWN0aXZlIjogMCwgInByb2Nlc3NlZCI6IDAsICJsb2FkYXZnIjogWzMuNzgsIDIuMDIsIDAuOV0sICJzd19pZGVudCI6ICJweS1jZWxlcnkiLCAic3dfdmVyIjogIjUuNy4wIiwgInN3X3N5cyI6ICJMaW51eCIsICJ0aW1lc3RhbXAiOiAxNzk1ODkzODA2LjkzODEwMSwgInR5cGUiOiAid29ya2VyLW9ubGluZSJ9", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"hostname": "hbtest@vm"}, "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": "worker.online"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "2ef91d8b-354c-4581-a54f-cee175f2fe08"}}"#;

    #[test]
    fn decodes_a_real_celery_heartbeat() {
        let hb = decode_heartbeat(REAL_HEARTBEAT.as_bytes()).expect("decodes");
        assert_eq!(hb.hostname, "hbtest@vm");
        assert_eq!(hb.pid, 21566);
        assert_eq!(hb.active, 0);
        assert_eq!(hb.processed, 0);
        assert_eq!(hb.freq, 2.0);
        assert!((hb.timestamp - 1795893808.944395).abs() < 1e-6);
    }

    #[test]
    fn other_events_and_garbage_are_not_heartbeats() {
        assert_eq!(decode_heartbeat(REAL_ONLINE.as_bytes()), None);
        assert_eq!(decode_heartbeat(b"not json"), None);
        assert_eq!(
            decode_heartbeat(br#"{"body": "!!!", "properties": {"body_encoding": "base64"}}"#),
            None
        );
        assert_eq!(decode_heartbeat(br#"{"nobody": 1}"#), None);
    }

    #[test]
    fn decodes_a_plain_json_body() {
        let payload = serde_json::json!({
            "body": {"hostname": "a@b", "pid": 7, "active": 2, "processed": 40, "freq": 5.0,
                     "timestamp": 12.5, "type": "worker-heartbeat"},
            "properties": {}
        });
        let hb = decode_heartbeat(payload.to_string().as_bytes()).unwrap();
        assert_eq!(
            hb,
            Heartbeat {
                hostname: "a@b".into(),
                pid: 7,
                active: 2,
                processed: 40,
                freq: 5.0,
                timestamp: 12.5
            }
        );
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zm9v\nYmE=").unwrap(), b"fooba");
        assert!(base64_decode("Zm9*").is_none());
        // As leniently as ever: both alphabets, any ASCII whitespace, and
        // nothing from the first `=` on.
        assert_eq!(base64_decode("+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64_decode(" Zm9v\r\n\tYmFy ").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zm8=Zm9v!").unwrap(), b"fo");
        assert_eq!(
            base64_decode("Zm9=").unwrap(),
            b"fo",
            "trailing bits dropped"
        );
        // A lone symbol at the end carries no whole byte: not base64 (the
        // hand-written decoder dropped it silently).
        assert!(base64_decode("Zm9vY").is_none());
    }

    #[test]
    fn heartbeat_channel_follows_kombu() {
        assert_eq!(heartbeat_channel("", 0), "/0.celeryev/worker.heartbeat");
        assert_eq!(
            heartbeat_channel("pfx:", 3),
            "pfx:/3.celeryev/worker.heartbeat"
        );
    }
}

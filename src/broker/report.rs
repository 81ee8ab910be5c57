//! `clearifyctl test`: connect afresh, step by step, and report what each
//! step took, the Redis version and memory, and each queue's backlog.

use std::time::Duration;

use super::backlog::fetch_backlog;
use super::error::with_timeout;
use super::probe::{connect_steps, ping, step, with_hint};
use super::url::parse_target;
use super::{BrokerSettings, RESPONSE_TIMEOUT};
use crate::config::redact_url;
use crate::control::protocol::{HeartbeatSeen, QueueStatus, TestReport};

/// Connects afresh and reports resolve/connect/auth/ping latencies, the
/// Redis version and memory, each queue's backlog, and the heartbeats the
/// caller has seen. `reachable` is true when PING answered PONG.
pub async fn test_report(
    settings: &BrokerSettings,
    queues: &[String],
    heartbeats: Vec<HeartbeatSeen>,
) -> TestReport {
    let mut report = TestReport {
        reachable: false,
        url: redact_url(&settings.url),
        steps: Vec::new(),
        error: None,
        redis_version: None,
        used_memory_bytes: None,
        queues: queues
            .iter()
            .map(|q| QueueStatus {
                name: q.clone(),
                backlog: None,
            })
            .collect(),
        heartbeats,
    };
    let target = match parse_target(&settings.url) {
        Ok(t) => t,
        Err(e) => {
            report.error = Some(e.message);
            return report;
        }
    };
    let mut conn = match connect_steps(&target, &mut report.steps).await {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(with_hint(&target, e).message);
            return report;
        }
    };
    match ping(&mut conn).await {
        Ok(latency) => {
            report
                .steps
                .push(step("ping", true, latency, Some("PONG".into())));
            report.reachable = true;
        }
        Err(e) => {
            let e = with_hint(&target, e);
            report
                .steps
                .push(step("ping", false, Duration::ZERO, Some(e.message.clone())));
            report.error = Some(e.message);
            return report;
        }
    }
    match with_timeout(
        RESPONSE_TIMEOUT,
        "INFO",
        redis::cmd("INFO").query_async::<String>(&mut conn),
    )
    .await
    {
        Ok(info) => {
            for line in info.lines() {
                if let Some(v) = line.strip_prefix("redis_version:") {
                    report.redis_version = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("used_memory:") {
                    report.used_memory_bytes = v.trim().parse().ok();
                }
            }
        }
        Err(e) => tracing::debug!("INFO failed: {}", e.message),
    }
    match fetch_backlog(
        &mut conn,
        queues,
        &settings.priority_steps,
        &settings.key_prefix,
    )
    .await
    {
        Ok(map) => {
            for q in &mut report.queues {
                q.backlog = map.get(&q.name).copied();
            }
        }
        Err(e) => report.error = Some(format!("backlog: {}", e.message)),
    }
    report
}

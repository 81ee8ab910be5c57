//! The broker family: the configured broker answers PING.

use super::Finding;
use crate::config::{self, Config};

/// `broker::probe` of the configured URL (shown redacted).
pub fn broker_check(config: &Config) -> Finding {
    let Some(broker) = &config.broker else {
        return Finding::warn(
            "broker",
            "not checked: the config has no [broker] (and no groups)",
            "add [broker] url = \"redis://…\" and some [group.*] sections",
        );
    };
    let shown = config::redact_url(&broker.url);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Finding::fail(
                "broker",
                format!("{shown}: cannot start a runtime to probe it: {e}"),
                "check the process limits",
            );
        }
    };
    let result = rt.block_on(crate::broker::probe(&broker.url));
    drop(rt);
    match result {
        Ok(latency) => Finding::ok(
            "broker",
            format!(
                "{shown} answers PING in {:.1} ms",
                latency.as_secs_f64() * 1000.0
            ),
        ),
        Err(e) if e.is_fatal() => Finding::fail(
            "broker",
            format!("{shown}: {e}"),
            "a configuration error: check the URL, its password and db in [broker] \
             (or the variable named by url_env)",
        ),
        Err(e) => Finding::fail(
            "broker",
            format!("{shown}: {e}"),
            format!(
                "start Redis or fix [broker].url; test it by hand with: redis-cli -u '{shown}' ping \
                 (with the real password)"
            ),
        ),
    }
}

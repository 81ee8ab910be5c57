//! The last fleet beat, at a clean stop: the record marked stopped, with
//! the Redis time of the stop. The beats while the daemon runs go over
//! the health link (`health`); this one is sent after the workers have
//! stopped, on a connection of its own (redis-rs, the async client path),
//! so it does not depend on the health thread being up.

use redis::Value;

use super::error::{ProbeError, with_timeout};
use super::probe::connect_and_ping;
use super::url::Target;
use super::{FleetSettings, RESPONSE_TIMEOUT};
use crate::model::fleet::{DaemonRun, DeviceRecord, Keys};

/// Writes `record` marked stopped; returns the Redis time of the stop.
pub(super) async fn publish_stopped(
    target: &Target,
    key_prefix: &str,
    settings: &FleetSettings,
    mut record: DeviceRecord,
) -> Result<f64, ProbeError> {
    let (mut conn, _) = connect_and_ping(target).await?;
    let time: Value = with_timeout(
        RESPONSE_TIMEOUT,
        "TIME",
        redis::cmd("TIME").query_async(&mut conn),
    )
    .await?;
    let now = redis_time(&time).ok_or_else(|| ProbeError::transient("TIME: not two numbers"))?;
    record.run = DaemonRun::Stopped;
    record.stopped_at = Some(now);
    let keys = Keys::new(key_prefix);
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD")
        .arg(keys.set())
        .arg(now)
        .arg(&settings.device_id)
        .ignore();
    pipe.cmd("SET")
        .arg(keys.record(&settings.device_id))
        .arg(record.encode())
        .arg("EX")
        .arg(settings.forget_after.as_secs().max(1))
        .ignore();
    with_timeout(
        RESPONSE_TIMEOUT,
        "ZADD/SET",
        pipe.query_async::<()>(&mut conn),
    )
    .await?;
    Ok(now)
}

/// Seconds of a `TIME` reply.
fn redis_time(v: &Value) -> Option<f64> {
    let Value::Array(items) = v else { return None };
    let num = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse::<u64>().ok(),
        _ => None,
    };
    match items.as_slice() {
        [s, us] => Some(num(s)? as f64 + num(us)? as f64 / 1e6),
        _ => None,
    }
}

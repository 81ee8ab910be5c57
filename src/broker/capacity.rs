//! The monitor's periodic fleet read for autoscaling (issue 15): every
//! fleet interval, the registry is read with the fleet reader's own code
//! ([`FleetReader`]: [`MAX_DEVICES`] members, `GETRANGE` of
//! [`MAX_RECORD`] bytes, the record parser's caps) and turned into the
//! other live devices' capacity for this device's queues
//! ([`capacities`]), sent as [`BrokerEvent::FleetCapacity`].
//!
//! A task of its own: one read at a time (the next waits for the last),
//! each bounded by [`READ_TIMEOUT`], so neither a slow Redis nor a
//! thousand records ever delays the gate, the health check or the
//! heartbeats. The connection is kept between reads and made anew after a
//! failure. The event goes out after the first read and whenever the
//! answer changes: a failed read is `None` (the share falls back to 1).
//!
//! [`MAX_DEVICES`]: crate::model::fleet::MAX_DEVICES
//! [`MAX_RECORD`]: crate::model::fleet::MAX_RECORD

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::BrokerEvent;
use super::backlog::Watched;
use super::fleet::{FleetError, FleetReader};
use crate::model::fleet::{Capacity, capacities};

/// The longest one read may take (connect, the member list, the records'
/// chunks); a read that takes longer counts as failed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest time between two reads, whatever the interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the fleet every `interval` and reports the capacities of the other
/// live devices for the queues in `queues` (every queue of the plan) until
/// `tx` closes.
pub(super) async fn capacity_task(
    reader: FleetReader,
    interval: Duration,
    queues: watch::Receiver<Watched>,
    tx: mpsc::Sender<BrokerEvent>,
) {
    let mut tick = tokio::time::interval(interval.max(MIN_INTERVAL));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn: Option<MultiplexedConnection> = None;
    let mut last: Option<Option<Vec<Capacity>>> = None;
    loop {
        tick.tick().await;
        let consumed = queues.borrow().queues.clone();
        let read = tokio::time::timeout(READ_TIMEOUT, read_once(&reader, &mut conn, &consumed))
            .await
            .unwrap_or_else(|_| Err(FleetError::Failed(format!("no answer in {READ_TIMEOUT:?}"))));
        let now = match read {
            Ok(c) => Some(c),
            Err(e) => {
                conn = None;
                let why = match e {
                    FleetError::Failed(m) | FleetError::Unknown(m) => m,
                };
                if last.as_ref().is_none_or(Option::is_some) {
                    tracing::warn!(error = %why, "cannot read the fleet for autoscaling ({why}); each group's share is 1 until it can");
                }
                None
            }
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        if matches!(last, Some(None)) && now.is_some() {
            tracing::info!("the fleet is readable again for autoscaling");
        }
        last = Some(now.clone());
        if tx.send(BrokerEvent::FleetCapacity(now)).await.is_err() {
            return;
        }
    }
}

/// One read over `conn` (connected first when there is none).
async fn read_once(
    reader: &FleetReader,
    conn: &mut Option<MultiplexedConnection>,
    consumed: &[String],
) -> Result<Vec<Capacity>, FleetError> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(reader.connect().await?),
    };
    let (read, seen) = reader.read_all(c).await?;
    Ok(capacities(read.now, &seen, &reader.device_id, consumed))
}

//! The monitor: the broker's actor. [`spawn_monitor`] starts one task that
//! runs the gate (`gate`) until the broker is up, sends `Up`, runs the health
//! check (`health`) until the link breaks, sends `Down` and goes back to the
//! gate; a second task for the heartbeat subscription (`heartbeat`); and,
//! when autoscaling asks for it, a third that reads the fleet's capacity
//! (`capacity`).
//! [`Monitor`] is the supervisor's handle on them all.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::backlog::Watched;
use super::capacity::capacity_task;
use super::error::ProbeError;
use super::gate::Gate;
use super::heartbeat::{LinkCounts, heartbeat_task};
use super::link::Tls;
use super::url::{Target, parse_target};
use super::{BrokerEvent, BrokerSettings, FleetReader, FleetSettings, beat, health};
use crate::config::redact_url;
use crate::model::fleet::DeviceRecord;

/// The running broker monitor. Dropping it stops its tasks and its health
/// thread.
pub struct Monitor {
    /// For the stop beat: the broker, its key prefix and the fleet settings.
    target: Option<Target>,
    key_prefix: String,
    fleet: Option<FleetSettings>,
    queues: watch::Sender<Watched>,
    latency: watch::Receiver<Option<Duration>>,
    health: Arc<health::Control>,
    tasks: Vec<JoinHandle<()>>,
}

impl Monitor {
    /// Replaces the queues whose backlog is reported (refreshes soon).
    pub fn set_queues(&self, watched: Watched) {
        self.queues.send_replace(watched);
        self.health.wake();
    }

    /// The PING round trip of the latest health check while the broker is
    /// up; `None` while it is not.
    pub fn latency(&self) -> Option<Duration> {
        *self.latency.borrow()
    }

    /// Asks for a backlog refresh now (still at most one per second).
    pub fn refresh_backlog(&self) {
        self.health.refresh();
    }

    /// The fleet record the next beat writes (docs/fleet.md). Does not
    /// wake the health thread: the beat goes out on its own schedule.
    pub fn set_fleet_record(&self, record: Vec<u8>) {
        self.health.set_record(record);
    }

    /// Writes `record` marked stopped (a clean stop, after the workers), on
    /// a connection of its own. Returns the Redis time of the stop.
    pub fn publish_stopped(
        &self,
        record: DeviceRecord,
    ) -> impl Future<Output = Result<f64, String>> + Send + 'static {
        let target = self.target.clone();
        let prefix = self.key_prefix.clone();
        let fleet = self.fleet.clone();
        async move {
            let (Some(target), Some(fleet)) = (target, fleet) else {
                return Err("publishing is off".to_string());
            };
            beat::publish_stopped(&target, &prefix, &fleet, record)
                .await
                .map_err(|e| e.message)
        }
    }

    /// Stops the monitor and waits until its tasks and its health thread
    /// have ended.
    pub async fn shutdown(mut self) {
        self.health.stop();
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Some(thread) = self.health.take_thread() {
            // At once when it waits or reads a plain socket; a TLS read
            // can take up to RESPONSE_TIMEOUT.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.health.stop();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the gate + health monitor and the heartbeat subscription.
/// Must be called inside a tokio runtime.
pub fn spawn_monitor(
    settings: BrokerSettings,
    watched: Watched,
    tx: mpsc::Sender<BrokerEvent>,
) -> Monitor {
    let (queues_tx, queues_rx) = watch::channel(watched);
    let (latency_tx, latency_rx) = watch::channel(None);
    // Counts transitions to up and down: the heartbeat task starts after the
    // first up and resubscribes after every outage.
    let (up_tx, up_rx) = watch::channel(LinkCounts::default());
    let target = parse_target(&settings.url);
    let stop_target = target.as_ref().ok().cloned();
    let key_prefix = settings.key_prefix.clone();
    let fleet = settings.fleet.clone();
    let health = health::Control::new().map(Arc::new);
    let heartbeats = match &target {
        Ok(t) => tokio::spawn(heartbeat_task(
            t.clone(),
            settings.key_prefix.clone(),
            up_rx,
            tx.clone(),
        )),
        Err(_) => tokio::spawn(async {}),
    };
    let (health, target) = match health {
        Ok(h) => (h, target),
        Err(e) => {
            // An eventfd could not be made (out of file descriptors): say so
            // as the monitor's fatal error rather than panic.
            let dummy = Arc::new(health::Control::dead());
            let err = ProbeError::fatal(format!("cannot start the broker monitor: {e}"));
            (dummy, Err(err))
        }
    };
    let mut tasks = Vec::with_capacity(3);
    if let Some(f) = fleet.as_ref().filter(|f| f.read_capacity)
        && target.is_ok()
    {
        let reader = FleetReader {
            settings: settings.clone(),
            device_id: f.device_id.clone(),
        };
        tasks.push(tokio::spawn(capacity_task(
            reader,
            f.interval,
            queues_rx.clone(),
            tx.clone(),
        )));
    }
    let main = tokio::spawn(main_task(
        settings,
        target,
        queues_rx,
        health.clone(),
        up_tx,
        Arc::new(latency_tx),
        tx,
    ));
    tasks.extend([main, heartbeats]);
    Monitor {
        target: stop_target,
        key_prefix,
        fleet,
        queues: queues_tx,
        latency: latency_rx,
        health,
        tasks,
    }
}

async fn main_task(
    settings: BrokerSettings,
    target: Result<Target, ProbeError>,
    queues: watch::Receiver<Watched>,
    health: Arc<health::Control>,
    up_tx: watch::Sender<LinkCounts>,
    latency_tx: Arc<watch::Sender<Option<Duration>>>,
    tx: mpsc::Sender<BrokerEvent>,
) {
    let url = redact_url(&settings.url);
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(broker = %url, "broker configuration error: {}", e.message);
            let _ = tx.send(BrokerEvent::Fatal { error: e.message }).await;
            return;
        }
    };
    let mut gate = Gate::new(url, settings.wait_timeout);
    loop {
        let Some((conn, latency)) = gate.until_up(&target, &tx).await else {
            return;
        };
        latency_tx.send_replace(Some(latency));
        if tx.send(BrokerEvent::Up { latency }).await.is_err() {
            return;
        }
        up_tx.send_modify(|c| c.ups += 1);
        // The gate's connection has proved the broker ready. The health
        // thread checks it from now on: a plain broker on a link of its
        // own, a TLS one on the gate's connection (`link`).
        let tls = if target.tls {
            Some(Tls::new(conn, tokio::runtime::Handle::current()))
        } else {
            drop(conn);
            None
        };
        let err = health::run(health::Job {
            target: target.clone(),
            check_interval: settings.check_interval,
            priority_steps: settings.priority_steps.clone(),
            key_prefix: settings.key_prefix.clone(),
            control: health.clone(),
            queues: queues.clone(),
            latency: latency_tx.clone(),
            tx: tx.clone(),
            tls,
            fleet: settings.fleet.clone(),
        })
        .await;
        latency_tx.send_replace(None);
        let Some(err) = err else { return };
        up_tx.send_modify(|c| c.downs += 1);
        if !gate.down(err, &tx).await {
            return;
        }
    }
}

//! The control requests, answered by the actor.

use super::*;
use crate::control::protocol::FleetQuery;
use crate::model::Target;
use machine::CommandError;

impl<E: Effects> Supervisor<E> {
    pub(super) fn control(&mut self, c: ControlMsg) {
        let now = Instant::now();
        let ControlMsg { request, reply, .. } = c;
        let resp = match request {
            Request::Status { targets } => match self.machine.targets(&targets) {
                Err(t) => Response::Error {
                    kind: ErrorKind::UnknownTarget,
                    message: CommandError::UnknownTarget(t).to_string(),
                },
                Ok(targets) => {
                    // Fresh backlog for the next look (this one shows the
                    // last known figures).
                    if let Some(m) = &self.monitor {
                        m.refresh_backlog();
                    }
                    Response::Status(self.status(&targets))
                }
            },
            Request::Start { targets } => done(self.machine.start(&targets, now)),
            Request::Stop { targets } => done(self.machine.stop(&targets, now)),
            Request::Restart { targets, rolling } => {
                done(self.machine.restart(&targets, rolling, now))
            }
            Request::Reload => {
                self.begin_reload(Some(reply));
                return;
            }
            Request::Logs {
                target,
                lines,
                since,
            } => match self.machine.targets(target.as_slice()) {
                Err(t) => Response::Error {
                    kind: ErrorKind::UnknownTarget,
                    message: format!("unknown target {t:?}"),
                },
                Ok(targets) => {
                    // The ring buffers are kept by instance and group name.
                    let name = targets.first().filter(|t| **t != Target::All);
                    Response::Logs {
                        lines: self.logs.tail(name.map(Target::name), lines, since),
                    }
                }
            },
            Request::Test => {
                self.test(reply);
                return;
            }
            Request::Fleet { query } => {
                self.fleet(FleetWork::Query(query), reply);
                return;
            }
            Request::FleetForget { device_id } => {
                self.fleet(FleetWork::Forget(device_id), reply);
                return;
            }
            Request::Scale { group, count } => match self.machine.scale(&group, count, now) {
                Ok(m) => Response::Done { messages: vec![m] },
                Err(e @ machine::ScaleError::UnknownGroup(_)) => Response::Error {
                    kind: ErrorKind::UnknownTarget,
                    message: e.to_string(),
                },
                Err(e) => Response::Error {
                    kind: ErrorKind::Refused,
                    message: e.to_string(),
                },
            },
            Request::Version => Response::Version {
                version: crate::VERSION.to_string(),
                protocol: crate::control::protocol::PROTOCOL_VERSION,
            },
        };
        let _ = reply.send(resp);
    }

    /// `clearifyctl test` runs off the actor: it may take seconds.
    pub(super) fn test(&mut self, reply: oneshot::Sender<Response>) {
        let Some(b) = &self.running.broker else {
            let _ = reply.send(Response::Error {
                kind: ErrorKind::Refused,
                message: "no [broker] configured in the config file".into(),
            });
            return;
        };
        let settings = broker_settings(b, None);
        let queues = self.queues();
        let heartbeats: Vec<HeartbeatSeen> = self
            .machine
            .snapshot(Instant::now())
            .into_iter()
            .filter_map(|v| {
                Some(HeartbeatSeen {
                    node: v.node,
                    age_secs: v.heartbeat_age?.as_secs_f64(),
                })
            })
            .collect();
        tokio::spawn(async move {
            let report = broker::test_report(&settings, &queues, heartbeats).await;
            let _ = reply.send(Response::Test(report));
        });
    }
}

/// A fleet request, read off the actor.
enum FleetWork {
    Query(FleetQuery),
    Forget(String),
}

/// Most fleet reads at once; one more is answered Busy.
pub(super) const MAX_FLEET_READS: usize = 2;

impl<E: Effects> Supervisor<E> {
    /// `clearifyctl fleet` reads the shared Redis off the actor, at most
    /// [`MAX_FLEET_READS`] at once, with the broker the daemon runs with
    /// and this device's id as the config has it now.
    fn fleet(&mut self, work: FleetWork, reply: oneshot::Sender<Response>) {
        let Some(b) = &self.running.broker else {
            let _ = reply.send(Response::Error {
                kind: ErrorKind::Refused,
                message: "no [broker] configured in the config file: the fleet is read from the broker's Redis".into(),
            });
            return;
        };
        let Ok(permit) = self.fleet_reads.clone().try_acquire_owned() else {
            let _ = reply.send(Response::Error {
                kind: ErrorKind::Busy,
                message: format!("{MAX_FLEET_READS} fleet reads are running; try again"),
            });
            return;
        };
        let reader = broker::FleetReader {
            settings: broker_settings(b, None),
            device_id: self.config.daemon.device_id.clone(),
        };
        tokio::spawn(async move {
            let result = match work {
                FleetWork::Query(q) => reader.query(&q).await,
                FleetWork::Forget(id) => reader
                    .forget(&id)
                    .await
                    .map(|messages| Response::Done { messages }),
            };
            drop(permit);
            let resp = result.unwrap_or_else(|e| match e {
                broker::FleetError::Unknown(message) => Response::Error {
                    kind: ErrorKind::UnknownTarget,
                    message,
                },
                broker::FleetError::Failed(message) => Response::Error {
                    kind: ErrorKind::Refused,
                    message: format!("reading the fleet failed: {message}"),
                },
            });
            let _ = reply.send(resp);
        });
    }
}

pub(super) fn done(r: Result<Vec<String>, machine::CommandError>) -> Response {
    match r {
        Ok(messages) => Response::Done { messages },
        Err(e @ machine::CommandError::ShuttingDown) => Response::Error {
            kind: ErrorKind::Refused,
            message: e.to_string(),
        },
        Err(e) => Response::Error {
            kind: ErrorKind::UnknownTarget,
            message: e.to_string(),
        },
    }
}

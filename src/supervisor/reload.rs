//! SIGHUP and `clearifyctl reload`: read the config again and apply the
//! difference.
//!
//! The file is read off the actor (on the blocking pool: a config on a slow
//! or stuck file system must not stall supervision); the actor applies the
//! loaded [`Config`] when [`Msg::Loaded`] comes back. The broker and the
//! socket the daemon runs with ([`Running`]) stay until it restarts.

use super::*;

impl<E: Effects> Supervisor<E> {
    /// Start a reload: tell systemd, and read the file off the actor.
    pub(super) fn begin_reload(&mut self, reply: Option<oneshot::Sender<Response>>) {
        self.effects.notify(Notice::Reloading);
        let path = self.config.path.clone();
        let tx = self.tx.clone();
        let turn = self.reload_turn.clone();
        tokio::spawn(async move {
            // One read at a time, sent in the order read: the last reload
            // applied is the one that read the file last.
            let _turn = turn.lock().await;
            let loaded = tokio::task::spawn_blocking(move || {
                config::load(&path)
                    .map(Box::new)
                    .map_err(|e| e.to_string().lines().map(str::to_string).collect())
            })
            .await
            .unwrap_or_else(|e| Err(vec![format!("reading the config failed: {e}")]));
            let _ = tx.send(Msg::Loaded { loaded, reply }).await;
        });
    }

    /// Apply a config read by [`Supervisor::begin_reload`], answer the
    /// client that asked and log the outcome.
    pub(super) fn finish_reload(
        &mut self,
        loaded: Result<Box<config::Loaded>, Vec<String>>,
        reply: Option<oneshot::Sender<Response>>,
    ) {
        let report = match loaded {
            Err(errors) => rejected(errors),
            Ok(_) if self.machine.is_shutting_down() => {
                rejected(vec!["the daemon is shutting down".into()])
            }
            Ok(loaded) => self.apply_config(loaded),
        };
        self.effects.notify(Notice::Ready);
        log_reload(&report);
        if let Some(reply) = reply {
            let _ = reply.send(Response::Reloaded(report));
        }
    }

    fn apply_config(&mut self, loaded: Box<config::Loaded>) -> ReloadReport {
        let new = loaded.config;
        let mut warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
        let restart_needed = [
            ("[daemon].socket", new.daemon.socket != self.running.socket),
            ("[broker]", new.broker != self.running.broker),
            ("[fleet]", new.fleet != self.running.fleet),
            (
                "[daemon].log_rate_limit",
                new.daemon.log_rate_limit != self.running.log_rate_limit,
            ),
        ];
        for (what, _) in restart_needed.iter().filter(|(_, changed)| *changed) {
            warnings.push(format!(
                "{what} changed: this takes effect when the daemon restarts (systemctl restart clearify-workerd)"
            ));
        }
        if new.daemon.device_id != self.config.daemon.device_id {
            warnings.push(
                "[daemon].device_id changed: node names change, so every instance restarts; the fleet record keeps the old id until the daemon restarts".into(),
            );
        }
        if new.fleet.publish
            && self.monitor.is_some()
            && !self.scaling.reads_capacity
            && new.groups.iter().any(|g| g.autoscale.is_some())
        {
            warnings.push(
                "autoscale added: the other devices' capacity is read from the fleet once the daemon restarts (systemctl restart clearify-workerd); until then each group's share is 1".into(),
            );
        }
        let d = self.machine.reload(plan::build(&new), Instant::now());
        self.config = new;
        if let Some(m) = &self.monitor {
            m.set_queues(self.watched());
        } else if !self.machine.plan().groups.is_empty() {
            self.start_broker_monitor();
        }
        report(Ok((d, warnings)))
    }
}

fn rejected(errors: Vec<String>) -> ReloadReport {
    report(Err(errors))
}

/// The report of a reload: applied with its diff and warnings, or
/// rejected with its errors.
fn report(outcome: Result<(plan::PlanDiff, Vec<String>), Vec<String>>) -> ReloadReport {
    let applied = outcome.is_ok();
    let (d, warnings, errors) = match outcome {
        Ok((d, warnings)) => (d, warnings, vec![]),
        Err(errors) => (plan::PlanDiff::default(), vec![], errors),
    };
    ReloadReport {
        applied,
        added: d.added,
        removed: d.removed,
        changed: d.changed,
        unchanged: d.unchanged,
        warnings,
        errors,
    }
}

fn log_reload(r: &ReloadReport) {
    if r.applied {
        info!(
            added = ?r.added,
            removed = ?r.removed,
            changed = ?r.changed,
            unchanged = ?r.unchanged,
            "config reloaded: added {:?}, removed {:?}, changed {:?}, unchanged {:?}",
            r.added,
            r.removed,
            r.changed,
            r.unchanged
        );
        for w in &r.warnings {
            warn!("{w}");
        }
    } else {
        error!("reload rejected; the old config keeps running");
        for e in &r.errors {
            error!("{e}");
        }
    }
}

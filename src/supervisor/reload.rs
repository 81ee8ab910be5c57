//! SIGHUP and `clearifyctl reload`: read the config again and apply the
//! difference.

use super::*;

impl Supervisor {
    pub(super) fn reload(&mut self) -> ReloadReport {
        let path = self.config.path.clone();
        self.notifier.reloading();
        let report = match config::load(&path) {
            Err(e) => ReloadReport {
                applied: false,
                added: vec![],
                removed: vec![],
                changed: vec![],
                unchanged: vec![],
                warnings: vec![],
                errors: e.to_string().lines().map(str::to_string).collect(),
            },
            Ok(loaded) if self.machine.is_shutting_down() => {
                let _ = loaded;
                ReloadReport {
                    applied: false,
                    added: vec![],
                    removed: vec![],
                    changed: vec![],
                    unchanged: vec![],
                    warnings: vec![],
                    errors: vec!["the daemon is shutting down".into()],
                }
            }
            Ok(loaded) => {
                let new = loaded.config;
                let mut warnings: Vec<String> =
                    loaded.warnings.iter().map(|w| w.to_string()).collect();
                for (what, old, newv) in [
                    (
                        "[daemon].socket",
                        self.config.daemon.socket.display().to_string(),
                        new.daemon.socket.display().to_string(),
                    ),
                    (
                        "[daemon].device_id",
                        self.config.daemon.device_id.clone(),
                        new.daemon.device_id.clone(),
                    ),
                    (
                        "[broker]",
                        format!("{:?}", self.config.broker),
                        format!("{:?}", new.broker),
                    ),
                ] {
                    if old != newv && what != "[daemon].device_id" {
                        warnings.push(format!(
                            "{what} changed: this takes effect when the daemon restarts (systemctl restart clearify-workerd)"
                        ));
                    }
                }
                let mut new_plan = plan::build(&new);
                if new.daemon.device_id != self.config.daemon.device_id {
                    warnings.push(
                        "[daemon].device_id changed: node names change, so every instance restarts"
                            .into(),
                    );
                }
                if new.broker != self.config.broker {
                    // Keep the running broker settings until restart.
                    new_plan.device_id = new.daemon.device_id.clone();
                }
                let d = self.machine.reload(new_plan, Instant::now());
                let mut keep = new;
                keep.broker = self.config.broker.clone();
                keep.daemon.socket = self.config.daemon.socket.clone();
                self.config = keep;
                if let Some(m) = &self.monitor {
                    m.set_queues(self.watched());
                } else if !self.machine.plan().groups.is_empty() {
                    self.start_broker_monitor();
                }
                ReloadReport {
                    applied: true,
                    added: d.added,
                    removed: d.removed,
                    changed: d.changed,
                    unchanged: d.unchanged,
                    warnings,
                    errors: vec![],
                }
            }
        };
        self.notifier.ready();
        report
    }
}

pub(super) fn log_reload(r: &ReloadReport) {
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

//! What `status` and systemd's STATUS= line show.

use super::*;

impl Supervisor {
    pub(super) fn status(&mut self, targets: &[String]) -> Status {
        let now = Instant::now();
        let views = self.machine.snapshot(now);
        self.refresh_usage(&views);
        let plan = self.machine.plan().clone();
        let mut groups: Vec<GroupStatus> = Vec::new();
        let mut group_names: Vec<String> = plan.groups.iter().map(|g| g.name.clone()).collect();
        for v in &views {
            if !group_names.contains(&v.group) {
                group_names.push(v.group.clone());
            }
        }
        for name in group_names {
            let queues = plan
                .group(&name)
                .map(|g| g.queues.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|q| QueueStatus {
                    backlog: self.machine.queue_backlog(&q),
                    name: q,
                })
                .collect();
            let instances: Vec<InstanceStatus> = views
                .iter()
                .filter(|v| v.group == name)
                .filter(|v| {
                    targets.is_empty()
                        || targets
                            .iter()
                            .any(|t| t == "all" || t == &v.id || t == &v.group)
                })
                .map(|v| {
                    let u = self.usage.get(&v.id);
                    InstanceStatus {
                        id: v.id.clone(),
                        node: v.node.clone(),
                        state: v.state.to_string(),
                        pid: v.pid,
                        uptime_secs: v.uptime.map(|d| d.as_secs()),
                        restarts: v.restarts,
                        last_exit: v.last_exit.clone(),
                        memory_bytes: u.and_then(|u| u.memory),
                        cpu_percent: u.and_then(|u| u.cpu_percent),
                        heartbeat_age_secs: v.heartbeat_age.map(|d| d.as_secs_f64()),
                        active: v.active,
                        processed: v.processed,
                        pinned: v.pinned,
                    }
                })
                .collect();
            if !targets.is_empty() && instances.is_empty() {
                continue;
            }
            groups.push(GroupStatus {
                name,
                queues,
                instances,
            });
        }
        Status {
            daemon: DaemonStatus {
                version: crate::VERSION.to_string(),
                pid: std::process::id(),
                uptime_secs: self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                device_id: self.config.daemon.device_id.clone(),
                config: self.config.path.display().to_string(),
                broker: BrokerStatus {
                    state: self.broker.state.to_string(),
                    url: self
                        .running
                        .broker
                        .as_ref()
                        .map(|b| config::redact_url(&b.url))
                        .unwrap_or_default(),
                    error: self.broker.error.clone(),
                    since: self.broker.since.map(epoch_secs),
                    latency_ms: self
                        .monitor
                        .as_ref()
                        .and_then(|m| m.latency())
                        .or(self.broker.latency)
                        .map(|d| d.as_secs_f64() * 1000.0),
                },
                limits: self.limits_line.clone(),
                summary: self.summary(&self.machine.summary_facts(now)),
                logs_to_journal: self.effects.logs_to_journal(),
            },
            groups,
        }
    }

    /// Memory and CPU per instance: from the cgroup leaf when limits are
    /// on, else from /proc (the main process and its descendants). Sampled
    /// at most once a second, so `status --watch` and scripts polling
    /// status stay cheap.
    pub(super) fn refresh_usage(&mut self, views: &[machine::InstanceView]) {
        let now = std::time::Instant::now();
        if self
            .usage_at
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.usage_at = Some(now);
        let mut fresh: HashMap<String, (u64, Option<u64>)> = HashMap::new();
        for v in views {
            if let Some(s) = v
                .pid
                .and_then(|pid| self.effects.usage(&v.id, &v.group, pid))
            {
                fresh.insert(v.id.clone(), (s.cpu_usec, s.memory));
            }
        }
        let mut next = HashMap::new();
        for (id, (cpu_usec, memory)) in fresh {
            let cpu_percent = self.usage.get(&id).and_then(|prev| {
                let dt = now.duration_since(prev.at).as_secs_f64();
                (dt > 0.0 && cpu_usec >= prev.cpu_usec)
                    .then(|| (cpu_usec - prev.cpu_usec) as f64 / 1e6 / dt * 100.0)
            });
            next.insert(
                id,
                Usage {
                    at: now,
                    cpu_usec,
                    memory,
                    cpu_percent: cpu_percent.or(Some(0.0)),
                },
            );
        }
        self.usage = next;
    }

    /// A plain-words summary, for STATUS= and status.
    pub(super) fn summary(&self, f: &machine::SummaryFacts) -> String {
        let total = f.total;
        if total == 0 {
            return format!(
                "idle: no worker groups configured; add [group.NAME] sections to {} and run: systemctl reload clearify-workerd",
                self.config.path.display()
            );
        }
        if f.waiting_for_broker {
            let url = self
                .running
                .broker
                .as_ref()
                .map(|b| config::redact_url(&b.url))
                .unwrap_or_default();
            let since = self
                .broker
                .since
                .map(|t| format!(" (since {})", clock_time(t)))
                .unwrap_or_default();
            return match &self.broker.error {
                Some(e) => format!("waiting for broker {url}: {e}{since}"),
                None => format!("waiting for broker {url}{since}"),
            };
        }
        let running = f.running;
        let broker = match self.broker.state {
            "ok" => "broker ok".to_string(),
            s => format!("broker {s}"),
        };
        if running == total {
            format!("{running}/{total} workers running, {broker}")
        } else if f.troubled.is_empty() {
            format!("{running}/{total} running, {broker}")
        } else {
            format!(
                "{running}/{total} running, {}, {broker}",
                f.troubled.join(", ")
            )
        }
    }

    pub(super) fn update_status_line(&mut self) {
        if !self.effects.notify_enabled() {
            return;
        }
        let key = (self.machine.revision(), self.broker_rev);
        if self.status_for == Some(key) {
            return;
        }
        self.status_for = Some(key);
        let line = self.summary(&self.machine.summary_facts(Instant::now()));
        if line != self.last_status_line {
            self.effects.notify(Notice::Status(line.clone()));
            self.last_status_line = line;
        }
    }
}

pub(super) fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// HH:MM:SS in local time (as systemd shows it), or UTC when the local zone
/// is unknown.
pub(super) fn clock_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as libc::time_t;
    // SAFETY: localtime_r writes into the tm we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if ok {
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    } else {
        let s = secs as u64 % 86400;
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

//! What `status` and systemd's STATUS= line show: the edge where the
//! machine's typed views become the status document and plain words.

use super::*;
use crate::control::protocol::AutoscaleStatus;
use crate::model::InstanceState;
use crate::model::target::{self, Member, Target};

/// CPU % between the previous sample and `cpu_usec` now.
fn cpu_percent(prev: Option<&Usage>, cpu_usec: u64, now: std::time::Instant) -> Option<f64> {
    let prev = prev?;
    let dt = now.duration_since(prev.at).as_secs_f64();
    (dt > 0.0 && cpu_usec >= prev.cpu_usec)
        .then(|| (cpu_usec - prev.cpu_usec) as f64 / 1e6 / dt * 100.0)
}

/// How much of the instances' usage a status document samples afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refresh {
    /// All of it, unless sampled within the last second (`status`).
    All,
    /// The `n` oldest samples (the fleet record).
    Oldest(usize),
}

impl<E: Effects> Supervisor<E> {
    /// The status document, limited to the instances `targets` take in
    /// (all of them when it is empty).
    pub(super) fn status(&mut self, targets: &[Target]) -> Status {
        self.status_with(targets, Refresh::All)
    }

    /// The status document, with the usage refreshed as `refresh` says.
    pub(super) fn status_with(&mut self, targets: &[Target], refresh: Refresh) -> Status {
        let now = Instant::now();
        let views = self.machine.snapshot(now);
        match refresh {
            Refresh::All => self.refresh_usage(&views),
            Refresh::Oldest(n) => self.refresh_oldest_usage(&views, n),
        }
        let plan = self.machine.plan().clone();
        let mut scales = self.machine.scale_views();
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
                    let m = Member {
                        id: &v.id,
                        group: &v.group,
                    };
                    target::covered(targets, m)
                })
                .map(|v| instance_status(v, self.usage.get(&v.id)))
                .collect();
            let named = targets
                .iter()
                .any(|t| *t == Target::All || *t == Target::Group(name.clone()));
            if !targets.is_empty() && instances.is_empty() && !named {
                continue;
            }
            let autoscale = scales
                .iter()
                .position(|s| s.group == name)
                .map(|i| autoscale_status(scales.swap_remove(i)));
            groups.push(GroupStatus {
                name,
                queues,
                instances,
                autoscale,
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
                    state: self.broker.state,
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
                rss_bytes: crate::sys::process::own_rss(),
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
            let cpu_percent = cpu_percent(self.usage.get(&id), cpu_usec, now);
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

    /// Samples the `n` instances whose usage is oldest (or missing), and
    /// keeps the others' last samples: the fleet record's usage, so that a
    /// beat at 200 workers reads a slice of them, not all (each is read
    /// again every ⌈N / n⌉ beats; docs/fleet.md). Instances gone or without
    /// a pid lose their sample.
    pub(super) fn refresh_oldest_usage(&mut self, views: &[machine::InstanceView], n: usize) {
        let now = std::time::Instant::now();
        let live: HashMap<&str, &machine::InstanceView> = views
            .iter()
            .filter(|v| v.pid.is_some())
            .map(|v| (v.id.as_str(), v))
            .collect();
        self.usage.retain(|id, _| live.contains_key(id.as_str()));
        let mut order: Vec<&machine::InstanceView> = live.values().copied().collect();
        order.sort_by_key(|v| (self.usage.get(&v.id).map(|u| u.at), v.id.as_str()));
        for v in order.into_iter().take(n) {
            let Some(s) = v
                .pid
                .and_then(|pid| self.effects.usage(&v.id, &v.group, pid))
            else {
                self.usage.remove(&v.id);
                continue;
            };
            let cpu_percent = cpu_percent(self.usage.get(&v.id), s.cpu_usec, now);
            self.usage.insert(
                v.id.clone(),
                Usage {
                    at: now,
                    cpu_usec: s.cpu_usec,
                    memory: s.memory,
                    cpu_percent: cpu_percent.or(Some(0.0)),
                },
            );
        }
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
        let broker = format!("broker {}", self.broker.state);
        if running == total {
            format!("{running}/{total} workers running, {broker}")
        } else if f.troubled.is_empty() {
            format!("{running}/{total} running, {broker}")
        } else {
            let troubled: Vec<String> = f.troubled.iter().map(trouble_text).collect();
            format!(
                "{running}/{total} running, {}, {broker}",
                troubled.join(", ")
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

/// One instance's entry in the status document.
pub(super) fn instance_status(v: &machine::InstanceView, u: Option<&Usage>) -> InstanceStatus {
    InstanceStatus {
        id: v.id.clone(),
        node: v.node.clone(),
        state: v.state,
        pid: v.pid,
        uptime_secs: v.uptime.map(|d| d.as_secs()),
        restarts: v.restarts,
        last_exit: v
            .last_exit
            .as_ref()
            .map(|r| exit_text(r, v.state, v.quick_failures)),
        memory_bytes: u.and_then(|u| u.memory),
        cpu_percent: u.and_then(|u| u.cpu_percent),
        cpu_seconds: u.map(|u| u.cpu_usec as f64 / 1e6),
        heartbeat_age_secs: v.heartbeat_age.map(|d| d.as_secs_f64()),
        active: v.active,
        processed: v.processed,
        pinned: v.pinned,
    }
}

/// One troubled instance in the summary: "text-1 crash-loop (exit 1 (4
/// quick failures in a row))".
/// An autoscaled group's part of the status document.
fn autoscale_status(v: machine::ScaleView) -> AutoscaleStatus {
    AutoscaleStatus {
        min: v.config.min,
        max: v.config.max,
        desired: v.desired,
        current: v.current,
        state: v.state,
        reason: v.reason,
        manual: v.manual,
        backlog: v.backlog,
        share: v.share,
    }
}

fn trouble_text(t: &machine::Trouble) -> String {
    match &t.last_exit {
        Some(r) => format!(
            "{} {} ({})",
            t.id,
            t.state,
            exit_text(r, t.state, t.quick_failures)
        ),
        None => format!("{} {}", t.id, t.state),
    }
}

/// How the last exit reads in status: in a crash loop, with the count of
/// quick failures ("exit 1 (4 quick failures in a row)").
pub(super) fn exit_text(reason: &ExitReason, state: InstanceState, quick_failures: u32) -> String {
    if state == InstanceState::CrashLoop {
        format!("{reason} ({quick_failures} quick failures in a row)")
    } else {
        reason.to_string()
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::{GroupPlan, InstanceSpec, Limits, Plan, Timing};

    fn machine() -> Machine {
        let spec = |i: u32| {
            Arc::new(InstanceSpec {
                id: format!("text-{i}"),
                group: "text".into(),
                index: i,
                node: format!("text-{i}@dev"),
                program: "/usr/bin/celery".into(),
                args: vec![],
                env: BTreeMap::new(),
                cwd: "/".into(),
                user: None,
                timing: Timing {
                    stop_timeout: Duration::from_secs(60),
                    restart_delay: Duration::from_millis(100),
                    restart_delay_max: Duration::from_secs(60),
                    stable_after: Duration::from_secs(30),
                    heartbeat_timeout: None,
                    stall_timeout: None,
                },
            })
        };
        let plan = Plan {
            device_id: "dev".into(),
            groups: vec![GroupPlan {
                name: "text".into(),
                queues: vec!["text".into()],
                limits: Limits::default(),
                instances: vec![spec(1), spec(2)],
                concurrency: 1,
                autoscale: None,
                start: 2,
            }],
        };
        Machine::new(plan, true, Box::new(|| 0.0))
    }

    /// The machine's typed views, rendered here, give the document's text:
    /// a crash loop with its count, a pinned stop with its exit, in the
    /// spelling of tests/fixtures/status.json.
    #[tokio::test(start_paused = true)]
    async fn views_render_to_the_documented_json_and_summary() {
        let mut m = machine();
        m.boot(Instant::now());
        let mut pid = 100;
        for a in m.take_actions() {
            if let Action::Spawn { spec, generation } = a {
                pid += 1;
                m.spawned(&spec.id, generation, pid, Instant::now());
            }
        }
        // text-1 fails quickly until it is in a crash loop.
        let mut pid1 = 101;
        for _ in 0..backoff::CRASH_LOOP_AFTER {
            m.exited(pid1, ExitReason::Code(1), Instant::now());
            tokio::time::advance(Duration::from_secs(120)).await;
            m.tick(Instant::now());
            for a in m.take_actions() {
                if let Action::Spawn { spec, generation } = a {
                    pid1 += 10;
                    m.spawned(&spec.id, generation, pid1, Instant::now());
                }
            }
        }
        m.exited(pid1, ExitReason::Code(1), Instant::now());
        // text-2 is stopped by the operator and exits on SIGTERM.
        m.stop(&["text-2".into()], Instant::now()).unwrap();
        m.exited(102, ExitReason::Signal(15), Instant::now());
        let seq = m
            .take_actions()
            .into_iter()
            .rev()
            .find_map(|a| match a {
                Action::KillTree { id, seq, .. } if id == "text-2" => Some(seq),
                _ => None,
            })
            .unwrap();
        m.tree_cleared("text-2", seq, Instant::now());

        let views = m.snapshot(Instant::now());
        let json: Vec<String> = views
            .iter()
            .map(|v| serde_json::to_string(&instance_status(v, None)).unwrap())
            .collect();
        assert_eq!(
            json,
            [
                r#"{"id":"text-1","node":"text-1@dev","state":"crash-loop","pid":null,"uptime_secs":null,"restarts":4,"last_exit":"exit 1 (4 quick failures in a row)","memory_bytes":null,"cpu_percent":null,"cpu_seconds":null,"heartbeat_age_secs":null,"active":null,"processed":null,"pinned":false}"#,
                r#"{"id":"text-2","node":"text-2@dev","state":"stopped","pid":null,"uptime_secs":null,"restarts":0,"last_exit":"killed by SIGTERM","memory_bytes":null,"cpu_percent":null,"cpu_seconds":null,"heartbeat_age_secs":null,"active":null,"processed":null,"pinned":true}"#,
            ]
        );
        let f = m.summary_facts(Instant::now());
        let troubled: Vec<String> = f.troubled.iter().map(trouble_text).collect();
        assert_eq!(
            troubled,
            ["text-1 crash-loop (exit 1 (4 quick failures in a row))"]
        );
        assert_eq!((f.total, f.running, f.waiting_for_broker), (2, 0, false));
    }
}

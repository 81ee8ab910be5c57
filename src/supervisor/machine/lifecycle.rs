//! How one instance moves between phases: start, back off, stop step by
//! step, finish, retire; the health checks and rolling restarts that drive
//! it. Only [`Machine`]'s events and commands call these.

use super::*;

impl Machine {
    pub(super) fn launch(&mut self, id: &str, now: Instant) {
        let _ = now;
        if self.shutting_down {
            return;
        }
        let gate_open = self.gate_open;
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if let Some(spec) = inst.next_spec.take() {
            inst.spec = spec;
        }
        if !gate_open {
            inst.phase = Phase::WaitingForBroker;
            return;
        }
        inst.generation += 1;
        inst.phase = Phase::Starting;
        inst.after = After::Stay;
        self.actions.push(Action::Spawn {
            spec: inst.spec.clone(),
            generation: inst.generation,
        });
    }

    pub(super) fn schedule_restart(
        &mut self,
        id: &str,
        reason: ExitReason,
        quick: bool,
        now: Instant,
    ) {
        let jitter = (self.jitter)();
        let inst = self.instances.get_mut(id).expect("present");
        inst.quick_failures = if quick {
            inst.quick_failures.saturating_add(1)
        } else {
            0
        };
        let t = &inst.spec.timing;
        let delay = backoff::delay(
            t.restart_delay,
            t.restart_delay_max,
            inst.quick_failures,
            jitter,
        );
        inst.restarts += 1;
        if inst.quick_failures >= backoff::CRASH_LOOP_AFTER {
            warn!(
                instance = id,
                %reason,
                failures = inst.quick_failures,
                delay = ?delay,
                "{id} exited ({reason}) and is crash-looping ({} quick failures in a row); restarting in {delay:?}",
                inst.quick_failures
            );
        } else {
            warn!(instance = id, %reason, delay = ?delay, "{id} exited ({reason}); restarting in {delay:?}");
        }
        let had_pid = !matches!(reason, ExitReason::SpawnFailed(_));
        inst.last_exit = Some(reason);
        inst.phase = Phase::Backoff {
            until: later(now, delay),
        };
        if had_pid {
            // Pool children and anything else of that run must not outlive
            // it. The new run does not wait for this.
            self.kill_tree_with(id, false);
            if let Some(inst) = self.instances.get_mut(id) {
                inst.kill_pending = None;
            }
        }
    }

    pub(super) fn kill_tree(&mut self, id: &str) {
        self.kill_tree_with(id, true);
    }

    pub(super) fn kill_tree_with(&mut self, id: &str, whole_cgroup: bool) {
        self.kill_seq += 1;
        let seq = self.kill_seq;
        let inst = self.instances.get_mut(id).expect("present");
        inst.kill_pending = Some(seq);
        self.actions.push(Action::KillTree {
            id: id.to_string(),
            group: inst.spec.group.clone(),
            pgid: inst.pgid,
            generation: inst.generation,
            seq,
            whole_cgroup,
        });
    }

    pub(super) fn begin_stop(&mut self, id: &str, after: After, why: &str, now: Instant) {
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if inst.after != After::Remove {
            inst.after = after;
        }
        match inst.phase {
            Phase::Running { .. } | Phase::Starting => {
                info!(
                    instance = id,
                    reason = why,
                    "stopping {id} ({why}): SIGTERM, warm shutdown"
                );
                inst.phase = Phase::Stopping {
                    stage: Stage::Term,
                    deadline: later(now, inst.spec.timing.stop_timeout),
                };
                if let Some(pid) = inst.pid {
                    self.actions.push(Action::Signal {
                        id: id.to_string(),
                        pid,
                        signal: StopSignal::Term,
                    });
                }
            }
            Phase::Backoff { .. } | Phase::WaitingForBroker | Phase::Stopped => {
                self.finish_stop(id, now);
            }
            Phase::Stopping { .. } => {}
        }
    }

    pub(super) fn stop_deadline(&mut self, id: &str, stage: Stage, now: Instant) {
        let inst = self.instances.get_mut(id).expect("present");
        match stage {
            Stage::Term => {
                warn!(
                    instance = id,
                    timeout = ?inst.spec.timing.stop_timeout,
                    "{id} did not stop within {:?}; SIGQUIT (cold shutdown)",
                    inst.spec.timing.stop_timeout
                );
                inst.phase = Phase::Stopping {
                    stage: Stage::Quit,
                    deadline: later(now, QUIT_GRACE),
                };
                if let Some(pid) = inst.pid {
                    self.actions.push(Action::Signal {
                        id: id.to_string(),
                        pid,
                        signal: StopSignal::Quit,
                    });
                }
            }
            Stage::Quit | Stage::Kill => {
                if stage == Stage::Kill {
                    warn!(
                        instance = id,
                        "{id}: processes still alive after SIGKILL; killing again"
                    );
                } else {
                    warn!(
                        instance = id,
                        "{id} ignored SIGQUIT; killing its process tree"
                    );
                }
                inst.phase = Phase::Stopping {
                    stage: Stage::Kill,
                    deadline: later(now, KILL_GRACE),
                };
                self.kill_tree(id);
            }
        }
    }

    pub(super) fn finish_stop(&mut self, id: &str, now: Instant) {
        self.set_pid(id, None);
        self.unstopped.remove(id);
        let inst = self.instances.get_mut(id).expect("present");
        inst.phase = Phase::Stopped;
        match inst.after {
            After::Stay => {}
            After::Start => {
                inst.after = After::Stay;
                if !inst.pinned {
                    self.launch(id, now);
                }
            }
            After::Remove => {
                let group = inst.spec.group.clone();
                self.instances.remove(id);
                info!(instance = id, "{id} removed");
                let group_gone = self.plan.group(&group).is_none()
                    && !self.instances.values().any(|i| i.spec.group == group);
                if group_gone {
                    self.actions.push(Action::RemoveGroup { group });
                }
            }
        }
    }

    pub(super) fn restart_one(&mut self, id: &str, why: &str, now: Instant) {
        let Some(inst) = self.instances.get(id) else {
            return;
        };
        match inst.phase {
            Phase::Running { .. } | Phase::Starting | Phase::Stopping { .. } => {
                self.begin_stop(id, After::Start, why, now)
            }
            _ => self.launch(id, now),
        }
    }

    /// Stop an instance that the config no longer has (or that is scaled
    /// down), then forget it.
    pub(super) fn retire(&mut self, id: &str, why: &str, now: Instant) {
        for r in self.rolling.values_mut() {
            r.queue.retain(|q| q != id);
        }
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        inst.after = After::Remove;
        inst.next_spec = None;
        self.begin_stop(id, After::Remove, why, now);
    }

    /// The heartbeat and stall checks of every running instance.
    pub(super) fn check_health_all(&mut self, now: Instant) {
        if !self.broker_up || self.shutting_down {
            return;
        }
        let (plan, backlog) = (&self.plan, &self.backlog);
        let backlogs: Vec<(&str, u64)> = plan
            .groups
            .iter()
            .map(|g| (g.name.as_str(), group_backlog(plan, backlog, &g.name)))
            .collect();
        let mut verdicts = Vec::new();
        for inst in self.instances.values_mut() {
            let b = backlogs
                .iter()
                .find(|(g, _)| *g == inst.spec.group)
                .map_or(0, |(_, b)| *b);
            match health_verdict(inst, b, now) {
                HealthVerdict::Fine => {}
                v => verdicts.push(v),
            }
        }
        self.act_on_health(verdicts, now);
    }

    pub(super) fn act_on_health(&mut self, verdicts: Vec<HealthVerdict>, now: Instant) {
        for v in verdicts {
            match v {
                HealthVerdict::Fine => {}
                HealthVerdict::Changed => self.bump(),
                HealthVerdict::Restart(id, why) => {
                    self.bump();
                    self.restart_one(&id, &why, now);
                }
            }
        }
    }

    pub(super) fn advance_rolling(&mut self, now: Instant) {
        let groups: Vec<String> = self.rolling.keys().cloned().collect();
        for g in groups {
            loop {
                let r = self.rolling.get_mut(&g).expect("present");
                if let Some(cur) = r.current.clone() {
                    let done = match self.instances.get(&cur) {
                        None => true,
                        Some(i) => i.is_up(now) || (i.pinned && i.phase == Phase::Stopped),
                    };
                    if !done {
                        break;
                    }
                    let r = self.rolling.get_mut(&g).expect("present");
                    r.current = None;
                }
                let r = self.rolling.get_mut(&g).expect("present");
                let Some(next) = r.queue.pop_front() else {
                    break;
                };
                r.current = Some(next.clone());
                self.restart_one(&next, "rolling restart", now);
            }
            if let Some(r) = self.rolling.get(&g)
                && r.current.is_none()
                && r.queue.is_empty()
            {
                self.rolling.remove(&g);
            }
        }
    }

    pub(super) fn after_event(&mut self, now: Instant) {
        self.advance_rolling(now);
        self.check_done();
    }

    /// After a shutdown: [`Action::Exit`] once every instance is stopped.
    /// The full scan runs only once none is left in `unstopped`, so a mass
    /// shutdown stays linear.
    pub(super) fn check_done(&mut self) {
        if self.shutting_down
            && !self.exit_sent
            && self.unstopped.is_empty()
            && self.instances.values().all(|i| i.phase == Phase::Stopped)
        {
            self.exit_sent = true;
            self.actions.push(Action::Exit);
        }
    }
}

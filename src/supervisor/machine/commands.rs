//! The operator's commands and the config reload.

use super::*;

impl Machine {
    /// Start the targets and clear their operator-stop pin.
    pub fn start(&mut self, targets: &[String], now: Instant) -> Result<Vec<String>, CommandError> {
        self.each_target(targets, now, |m, id| {
            let inst = m.instances.get_mut(id).expect("resolved");
            inst.pinned = false;
            match inst.phase {
                Phase::Stopped | Phase::Backoff { .. } => {
                    inst.quick_failures = 0;
                    m.launch(id, now);
                    format!("{id}: starting")
                }
                Phase::Stopping { .. } => {
                    if inst.after != After::Remove {
                        inst.after = After::Start;
                    }
                    format!("{id}: stopping, will start again")
                }
                Phase::WaitingForBroker => format!("{id}: waiting for the broker"),
                Phase::Starting | Phase::Running { .. } => format!("{id}: already running"),
            }
        })
    }

    /// Stop the targets and pin them down until started again.
    pub fn stop(&mut self, targets: &[String], now: Instant) -> Result<Vec<String>, CommandError> {
        self.each_target(targets, now, |m, id| {
            let inst = m.instances.get_mut(id).expect("resolved");
            inst.pinned = true;
            if inst.after == After::Start {
                inst.after = After::Stay;
            }
            let was_stopped = inst.phase == Phase::Stopped;
            for r in m.rolling.values_mut() {
                r.queue.retain(|q| q != id);
            }
            m.begin_stop(id, After::Stay, "stopped by operator", now);
            if was_stopped {
                format!("{id}: already stopped")
            } else {
                format!("{id}: stopping")
            }
        })
    }

    /// Restart the targets. With `rolling`, one instance at a time, each up
    /// again before the next is stopped.
    pub fn restart(
        &mut self,
        targets: &[String],
        rolling: bool,
        now: Instant,
    ) -> Result<Vec<String>, CommandError> {
        self.each_target(targets, now, |m, id| {
            let inst = m.instances.get_mut(id).expect("resolved");
            inst.pinned = false;
            inst.quick_failures = 0;
            if rolling {
                let group = inst.spec.group.clone();
                let r = m.rolling.entry(group).or_default();
                if !r.queue.iter().any(|q| q == id) && r.current.as_deref() != Some(id) {
                    r.queue.push_back(id.to_string());
                }
                format!("{id}: queued for a rolling restart")
            } else {
                m.restart_one(id, "restart requested by operator", now);
                format!("{id}: restarting")
            }
        })
    }

    /// Resolves `targets`, runs `one` on each instance they take in (it
    /// answers that instance's line), then lets the machine move on.
    fn each_target(
        &mut self,
        targets: &[String],
        now: Instant,
        mut one: impl FnMut(&mut Self, &str) -> String,
    ) -> Result<Vec<String>, CommandError> {
        let ids = self.resolve(targets)?;
        self.bump();
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            out.push(one(self, id));
        }
        // A group at zero instances (autoscale min = 0) has nothing to act on.
        for name in targets {
            let empty = self.plan.group(name).is_some()
                && !self.instances.values().any(|i| &i.spec.group == name);
            if empty && !self.instances.contains_key(name) {
                out.push(format!("{name}: no instance now"));
            }
        }
        self.after_event(now);
        Ok(out)
    }

    /// Apply a new plan: unchanged groups are not touched, changed ones are
    /// restarted instance by instance, removed ones stopped, new ones started.
    pub fn reload(&mut self, new: Plan, now: Instant) -> PlanDiff {
        self.bump();
        let d = plan::diff(&self.plan, &new);
        let old = std::mem::replace(&mut self.plan, new);
        for g in &d.removed {
            self.rolling.remove(g);
            let ids: Vec<String> = self
                .instances
                .values()
                .filter(|i| &i.spec.group == g)
                .map(|i| i.spec.id.clone())
                .collect();
            for id in ids {
                self.retire(&id, "removed from the config", now);
            }
        }
        for name in d.added.iter().chain(d.changed.iter()) {
            let g = self.plan.group(name).expect("in new plan").clone();
            if old.group(name).map(|o| &o.limits) != Some(&g.limits) {
                self.actions.push(Action::PrepareGroup {
                    group: g.name.clone(),
                    limits: g.limits.clone(),
                });
            }
            // Instances that disappear from the group.
            let gone: Vec<String> = self
                .instances
                .values()
                .filter(|i| &i.spec.group == name && !g.instances.iter().any(|s| s.id == i.spec.id))
                .map(|i| i.spec.id.clone())
                .collect();
            for id in gone {
                self.retire(&id, "removed from the config", now);
            }
            let wanted = self.wanted_count(&g);
            for spec in g.instances.iter().take(wanted) {
                match self.instances.get_mut(&spec.id) {
                    None => {
                        self.instances
                            .insert(spec.id.clone(), Instance::new(spec.clone()));
                        self.launch(&spec.id, now);
                    }
                    Some(inst) if inst.spec == *spec && inst.next_spec.is_none() => {
                        if inst.after == After::Remove {
                            // It was being retired by an earlier reload and
                            // is wanted again.
                            inst.after = After::Start;
                        }
                    }
                    Some(inst) => {
                        if inst.after == After::Remove {
                            inst.after = After::Start;
                        }
                        match inst.phase {
                            Phase::Running { .. } | Phase::Starting | Phase::Stopping { .. } => {
                                inst.next_spec = Some(spec.clone());
                                let r = self.rolling.entry(name.clone()).or_default();
                                if !r.queue.contains(&spec.id)
                                    && r.current.as_deref() != Some(spec.id.as_str())
                                {
                                    r.queue.push_back(spec.id.clone());
                                }
                            }
                            _ => {
                                inst.spec = spec.clone();
                                inst.next_spec = None;
                            }
                        }
                    }
                }
            }
        }
        let mut scales = std::mem::take(&mut self.scales);
        self.scales = Machine::scales_for(&self.plan, &mut scales);
        self.after_event(now);
        d
    }

    /// Stop everything, in parallel; [`Action::Exit`] follows once all is
    /// stopped.
    pub fn shutdown(&mut self, now: Instant) {
        self.bump();
        if self.shutting_down {
            return;
        }
        info!("shutting down: stopping all workers");
        self.shutting_down = true;
        self.rolling.clear();
        // From here on instances only move towards stopped (nothing
        // launches), so these are all that check_done waits for.
        self.unstopped = self
            .instances
            .iter()
            .filter(|(_, i)| i.phase != Phase::Stopped)
            .map(|(id, _)| id.clone())
            .collect();
        let ids: Vec<String> = self.instances.keys().cloned().collect();
        for id in ids {
            self.begin_stop(&id, After::Stay, "daemon shutting down", now);
        }
        self.check_done();
    }

    /// The instance ids the target names take in, in the order the
    /// messages list them ([`target::select`]).
    fn resolve(&self, targets: &[String]) -> Result<Vec<String>, CommandError> {
        if self.shutting_down {
            return Err(CommandError::ShuttingDown);
        }
        if targets.is_empty() {
            return Err(CommandError::NoTarget);
        }
        let members = self.members();
        let targets = target::resolve_all(targets, &members, &self.group_names())
            .map_err(CommandError::UnknownTarget)?;
        Ok(target::select(&targets, &members)
            .into_iter()
            .map(String::from)
            .collect())
    }
}

//! Autoscaling (issue 15) in the machine: at every check (the backlog
//! poll, once per `[broker] check_interval`) each group with `autoscale`
//! gets a [`Decision`] from its [`Scaler`] and the machine carries it out:
//! up starts the lowest-numbered missing instance, down warm-stops the
//! highest-numbered one and forgets it once stopped. The actor hands in
//! what the machine cannot know ([`ScaleSample`]: the fleet share and the
//! memory figures); the backlog is the machine's own.
//!
//! Operator precedence: `clearifyctl scale GROUP N` sets the count until
//! `scale GROUP auto` ([`Reason::Manual`]); an operator `stop` of one of
//! the group's instances holds scaling until it is started
//! ([`Reason::Held`]).

use super::*;
use crate::model::autoscale::{Autoscale, Decision, Inputs, Memory, Reason, Scaler};
use crate::plan::GroupPlan;

/// What the actor measured for one autoscaled group at a check.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScaleSample {
    /// This device's share of the capacity for the group's queues; `None`
    /// when the fleet is unknown (counts as 1).
    pub share: Option<f64>,
    pub memory: Memory,
}

/// One autoscaled group as status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleView {
    pub group: String,
    pub config: Autoscale,
    /// What the backlog asks for (clamped), or the manual count.
    pub desired: u32,
    /// Instances the group has, not counting those being scaled away.
    pub current: u32,
    pub state: Reason,
    /// The why, for humans: "backlog 57, share 0.40, mem ok".
    pub reason: String,
    pub manual: Option<u32>,
    pub backlog: Option<u64>,
    pub share: f64,
}

/// A group's scaling state between checks.
#[derive(Debug)]
pub(super) struct Scale {
    scaler: Scaler,
    manual: Option<u32>,
    desired: Option<u32>,
    state: Reason,
    reason: String,
    backlog: Option<u64>,
    share: f64,
}

impl Scale {
    pub(super) fn new(config: Autoscale) -> Scale {
        Scale {
            scaler: Scaler::new(config),
            manual: None,
            desired: None,
            state: Reason::BacklogUnknown,
            reason: "no check yet".to_string(),
            backlog: None,
            share: 1.0,
        }
    }
}

/// Why `clearifyctl scale` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleError {
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    #[error(
        "group {0} has no autoscale: its count is `instances` in workers.toml (change it and reload)"
    )]
    NotAutoscaled(String),
    #[error("group {group} scales to at most {max} instances (autoscale.max); {asked} is too many")]
    OverMax { group: String, max: u32, asked: u32 },
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

impl Machine {
    /// The scaling state of every autoscaled group of `plan`, keeping what
    /// `old` knew of the groups that stay.
    pub(super) fn scales_for(
        plan: &Plan,
        old: &mut BTreeMap<String, Scale>,
    ) -> BTreeMap<String, Scale> {
        plan.groups
            .iter()
            .filter_map(|g| {
                let config = g.autoscale?;
                let mut s = old.remove(&g.name).unwrap_or_else(|| Scale::new(config));
                s.scaler.config = config;
                if s.manual.is_some_and(|n| n > config.max) {
                    s.manual = Some(config.max);
                }
                Some((g.name.clone(), s))
            })
            .collect()
    }

    /// Whether any group autoscales.
    pub fn autoscales(&self) -> bool {
        !self.scales.is_empty()
    }

    /// The groups that autoscale, in config order.
    pub fn autoscaled_groups(&self) -> Vec<String> {
        self.plan
            .groups
            .iter()
            .filter(|g| self.scales.contains_key(&g.name))
            .map(|g| g.name.clone())
            .collect()
    }

    /// The instances of `group` that are not being scaled or reloaded away.
    fn kept(&self, group: &str) -> impl Iterator<Item = &Instance> + '_ {
        let group = group.to_string();
        self.instances
            .values()
            .filter(move |i| i.spec.group == group && i.after != After::Remove)
    }

    /// The backlog of the group's queues, when every one is known and the
    /// broker is up.
    fn known_backlog(&self, group: &GroupPlan) -> Option<u64> {
        if !self.broker_up {
            return None;
        }
        group.queues.iter().try_fold(0u64, |sum, q| {
            self.backlog.get(q).map(|b| sum.saturating_add(*b))
        })
    }

    /// One check: decide and act for every autoscaled group. `samples`
    /// holds the actor's measurements by group; a group without one has
    /// share 1 and unknown memory.
    pub fn scale_check(&mut self, samples: &BTreeMap<String, ScaleSample>, now: Instant) {
        if self.shutting_down || self.scales.is_empty() {
            return;
        }
        self.bump();
        let groups: Vec<GroupPlan> = self
            .plan
            .groups
            .iter()
            .filter(|g| self.scales.contains_key(&g.name))
            .cloned()
            .collect();
        for g in groups {
            let sample = samples.get(&g.name).copied().unwrap_or_default();
            self.check_group(&g, sample, now);
        }
        self.after_event(now);
    }

    fn check_group(&mut self, g: &GroupPlan, sample: ScaleSample, now: Instant) {
        let current = u32::try_from(self.kept(&g.name).count()).unwrap_or(u32::MAX);
        let crash_looping = self
            .kept(&g.name)
            .filter(|i| i.quick_failures >= backoff::CRASH_LOOP_AFTER)
            .count();
        let pinned = self
            .kept(&g.name)
            .find(|i| i.pinned)
            .map(|i| i.spec.id.clone());
        let backlog = self.known_backlog(g);
        let share = sample.share.filter(|s| s.is_finite()).unwrap_or(1.0);
        let Some(scale) = self.scales.get_mut(&g.name) else {
            return;
        };
        scale.backlog = backlog;
        scale.share = share;
        let before = (scale.state, current);
        let (desired, target, state, reason) = if let Some(n) = scale.manual {
            (n, n, Reason::Manual, "set by clearifyctl scale".to_string())
        } else if let Some(id) = pinned {
            (
                current,
                current,
                Reason::Held,
                format!("{id} was stopped by the operator; start it to resume autoscaling"),
            )
        } else {
            let inputs = Inputs {
                backlog,
                share,
                current,
                crash_looping: u32::try_from(crash_looping).unwrap_or(u32::MAX),
                memory: sample.memory,
            };
            let d: Decision = scale.scaler.decide(&inputs, now.into_std());
            (
                d.desired,
                d.target,
                d.reason,
                explain(&scale.scaler, &inputs, &d),
            )
        };
        scale.desired = Some(desired);
        scale.state = state;
        scale.reason = reason.clone();
        let name = g.name.as_str();
        if target > current {
            info!(
                group = name,
                "{name}: {current} → {target} instances ({reason})"
            );
        } else if target < current {
            info!(
                group = name,
                "{name}: {current} → {target} instances ({reason})"
            );
        } else if before.0 != state
            && matches!(
                state,
                Reason::UpRefusedMemory | Reason::UpRefusedCrashLoop | Reason::Held
            )
        {
            warn!(group = name, "{name}: not scaling up: {reason}");
        }
        self.move_to(g, current, target, now);
    }

    /// Start or stop instances of `g` until it has `target` (kept) ones.
    fn move_to(&mut self, g: &GroupPlan, current: u32, target: u32, now: Instant) {
        let target = target.min(u32::try_from(g.instances.len()).unwrap_or(u32::MAX));
        if target > current {
            for _ in current..target {
                self.add_instance(g, now);
            }
        } else {
            for _ in target..current {
                let Some(id) = self
                    .kept(&g.name)
                    .max_by_key(|i| i.spec.index)
                    .map(|i| i.spec.id.clone())
                else {
                    break;
                };
                self.retire(&id, "scaled down", now);
            }
        }
    }

    /// Start the lowest-numbered instance of `g` that is missing (or take
    /// back one being scaled away).
    fn add_instance(&mut self, g: &GroupPlan, now: Instant) {
        let Some(spec) = g.instances.iter().find(|s| {
            self.instances
                .get(&s.id)
                .is_none_or(|i| i.after == After::Remove)
        }) else {
            return;
        };
        match self.instances.get_mut(&spec.id) {
            Some(inst) => {
                // Still stopping from a scale-down: start it again once
                // stopped.
                inst.after = After::Start;
            }
            None => {
                self.instances
                    .insert(spec.id.clone(), Instance::new(spec.clone()));
                self.launch(&spec.id, now);
            }
        }
    }

    /// `clearifyctl scale GROUP N` (`Some(N)`) or `scale GROUP auto`
    /// (`None`). A count applies at once.
    pub fn scale(
        &mut self,
        group: &str,
        count: Option<u32>,
        now: Instant,
    ) -> Result<String, ScaleError> {
        if self.shutting_down {
            return Err(ScaleError::ShuttingDown);
        }
        let Some(g) = self.plan.group(group).cloned() else {
            return Err(ScaleError::UnknownGroup(group.to_string()));
        };
        self.bump();
        let Some(scale) = self.scales.get_mut(group) else {
            return Err(ScaleError::NotAutoscaled(group.to_string()));
        };
        let max = scale.scaler.config.max;
        let Some(n) = count else {
            scale.manual = None;
            scale.desired = None;
            scale.state = Reason::Steady;
            scale.reason = "back to the backlog: the next check decides".to_string();
            info!(
                group,
                "{group}: autoscaling by backlog again (clearifyctl scale auto)"
            );
            return Ok(format!("{group}: autoscaling by backlog"));
        };
        if n > max {
            return Err(ScaleError::OverMax {
                group: group.to_string(),
                max,
                asked: n,
            });
        }
        scale.manual = Some(n);
        scale.desired = Some(n);
        scale.state = Reason::Manual;
        scale.reason = "set by clearifyctl scale".to_string();
        let current = u32::try_from(self.kept(group).count()).unwrap_or(u32::MAX);
        info!(
            group,
            "{group}: {current} → {n} instances (clearifyctl scale)"
        );
        self.move_to(&g, current, n, now);
        self.after_event(now);
        Ok(format!(
            "{group}: {current} → {n} instances until `clearifyctl scale {group} auto`"
        ))
    }

    /// Every autoscaled group, in config order.
    pub fn scale_views(&self) -> Vec<ScaleView> {
        self.plan
            .groups
            .iter()
            .filter_map(|g| {
                let s = self.scales.get(&g.name)?;
                let current = u32::try_from(self.kept(&g.name).count()).unwrap_or(u32::MAX);
                Some(ScaleView {
                    group: g.name.clone(),
                    config: s.scaler.config,
                    desired: s.desired.unwrap_or(current),
                    current,
                    state: s.state,
                    reason: s.reason.clone(),
                    manual: s.manual,
                    backlog: s.backlog,
                    share: s.share,
                })
            })
            .collect()
    }

    /// How many instances of `g` exist at start or after a reload: all of
    /// them without autoscale; with it, the count it has (its start count
    /// when new), within min..=max.
    pub(super) fn wanted_count(&self, g: &GroupPlan) -> usize {
        let Some(a) = g.autoscale else {
            return g.instances.len();
        };
        let had = self.kept(&g.name).count();
        let n = if had == 0 && !self.scales.contains_key(&g.name) {
            g.start
        } else if let Some(m) = self.scales.get(&g.name).and_then(|s| s.manual) {
            m
        } else {
            u32::try_from(had).unwrap_or(u32::MAX).clamp(a.min, a.max)
        };
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(g.instances.len())
    }
}

/// The human why of a decision.
fn explain(scaler: &Scaler, inputs: &Inputs, d: &Decision) -> String {
    let backlog = inputs
        .backlog
        .map_or_else(|| "unknown".to_string(), |b| b.to_string());
    let mem = memory_text(scaler.config.memory_headroom, &inputs.memory);
    let base = format!("backlog {backlog}, share {:.2}, {mem}", inputs.share);
    match d.reason {
        Reason::BacklogUnknown => {
            "backlog unknown (broker down or not polled yet): no change".into()
        }
        Reason::UpRefusedMemory => format!("wants {}; refused: {mem}", d.desired),
        Reason::UpRefusedCrashLoop => format!(
            "wants {}; refused: {} instance(s) in crash-loop",
            d.desired, inputs.crash_looping
        ),
        Reason::DownWaiting => format!(
            "{base}; wants {}, down after {} below",
            d.desired,
            humantime::format_duration(scaler.config.scale_down_after)
        ),
        Reason::DownPressure => format!("{base}: one instance down at once"),
        _ => base,
    }
}

/// "mem ok", "memory pressure", or the arithmetic of a refusal.
fn memory_text(headroom: u64, m: &Memory) -> String {
    if m.pressure {
        return "memory pressure (memory.events high/oom or PSI)".into();
    }
    match (m.available, m.per_instance) {
        (Some(a), Some(p)) if a.saturating_sub(p) <= headroom => format!(
            "memory: MemAvailable {} MiB - {} MiB per instance <= headroom {} MiB",
            mib(a),
            mib(p),
            mib(headroom)
        ),
        (Some(a), None) if a <= headroom => format!(
            "memory: MemAvailable {} MiB <= headroom {} MiB",
            mib(a),
            mib(headroom)
        ),
        (Some(_), _) => "mem ok".into(),
        _ => "mem unknown".into(),
    }
}

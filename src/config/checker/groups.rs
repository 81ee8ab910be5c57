//! `[defaults]` and `[group.NAME]`: the per-group keys, merged over the
//! defaults, and the checks across groups (shared queues, instance ids).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::super::envfile::is_env_name;
use super::super::schema::*;
use super::{At, Checker, join};
use crate::model::spec::{Limits, Timing};

/// The per-group keys as written in one table ([defaults] or a group).
#[derive(Debug, Clone, Default)]
pub(super) struct RawGroup {
    /// `queues` was written (even if invalid).
    pub(super) queues_written: bool,
    pub(super) queues: Option<At<Vec<At<String>>>>,
    pub(super) concurrency: Option<At<u32>>,
    pub(super) instances: Option<At<u32>>,
    pub(super) stop_timeout: Option<At<Duration>>,
    pub(super) restart_delay: Option<At<Duration>>,
    pub(super) restart_delay_max: Option<At<Duration>>,
    pub(super) stable_after: Option<At<Duration>>,
    pub(super) heartbeat_timeout: Option<At<Option<Duration>>>,
    pub(super) stall_timeout: Option<At<Option<Duration>>>,
    pub(super) extra_args: Option<At<Vec<String>>>,
    pub(super) env: Option<At<BTreeMap<String, String>>>,
    pub(super) memory_max: Option<At<Option<u64>>>,
    pub(super) memory_high: Option<At<Option<u64>>>,
    pub(super) memory_swap_max: Option<At<Option<u64>>>,
    pub(super) cpu_max: Option<At<Option<f64>>>,
    pub(super) cpu_weight: Option<At<u32>>,
    pub(super) pids_max: Option<At<Option<u64>>>,
    pub(super) io_weight: Option<At<u32>>,
}

impl Checker<'_> {
    /// Read the per-group keys of one table ([defaults] or [group.NAME]).
    pub(super) fn raw_group(&mut self, t: &DeTable<'_>, prefix: &str) -> RawGroup {
        let mut g = RawGroup::default();
        for (k, v) in t.iter() {
            let name = k.get_ref().as_ref();
            let key = join(prefix, name);
            match name {
                "queues" => {
                    g.queues_written = true;
                    if let Some(list) = self.string_list(v, &key) {
                        if list.is_empty() {
                            self.error(&v.span(), &key, "must list at least one queue");
                            continue;
                        }
                        let mut good = true;
                        let mut seen: HashSet<&str> = HashSet::new();
                        for q in &list {
                            if q.v.trim().is_empty() {
                                self.error(&q.span, &q.key, "a queue name must not be empty");
                                good = false;
                            } else if q.v.contains(',') || q.v.chars().any(char::is_whitespace) {
                                self.error(
                                    &q.span,
                                    &q.key,
                                    format!(
                                        "queue name `{}` must not contain `,` or whitespace",
                                        q.v
                                    ),
                                );
                                good = false;
                            } else if !seen.insert(&q.v) {
                                self.warning(
                                    &q.span,
                                    &q.key,
                                    format!("queue `{}` is listed twice", q.v),
                                );
                            }
                        }
                        if good {
                            let mut kept: HashSet<String> = HashSet::new();
                            let uniq: Vec<At<String>> = list
                                .into_iter()
                                .filter(|q| kept.insert(q.v.clone()))
                                .collect();
                            g.queues = Some(self.at(uniq, v, &key));
                        }
                    }
                }
                "concurrency" => {
                    g.concurrency = self
                        .u32_in(v, &key, 1, MAX_CONCURRENCY)
                        .map(|n| self.at(n, v, &key))
                }
                "instances" => {
                    g.instances = self
                        .u32_in(v, &key, 1, MAX_INSTANCES)
                        .map(|n| self.at(n, v, &key))
                }
                "stop_timeout" => {
                    g.stop_timeout = self.plain_duration(v, &key).map(|d| self.at(d, v, &key))
                }
                "restart_delay" => {
                    g.restart_delay = self.plain_duration(v, &key).map(|d| self.at(d, v, &key))
                }
                "restart_delay_max" => {
                    g.restart_delay_max = self.plain_duration(v, &key).map(|d| self.at(d, v, &key))
                }
                "stable_after" => {
                    g.stable_after = self.plain_duration(v, &key).map(|d| self.at(d, v, &key))
                }
                "heartbeat_timeout" => {
                    g.heartbeat_timeout = self.duration(v, &key, true).map(|d| self.at(d, v, &key))
                }
                "stall_timeout" => {
                    g.stall_timeout = self.duration(v, &key, true).map(|d| self.at(d, v, &key))
                }
                "extra_args" => {
                    if let Some(args) = self.string_list(v, &key) {
                        self.check_worker_args(&args);
                        g.extra_args =
                            Some(self.at(args.into_iter().map(|a| a.v).collect(), v, &key));
                    }
                }
                "env" => {
                    let Some(et) = self.table(v, &key) else {
                        continue;
                    };
                    let mut env = BTreeMap::new();
                    if et.len() > MAX_LIST {
                        self.error(
                            &v.span(),
                            &key,
                            format!("has {} variables; at most {MAX_LIST} are allowed", et.len()),
                        );
                        continue;
                    }
                    for (ek, ev) in et.iter() {
                        let var = ek.get_ref().to_string();
                        let vkey = join(&key, &var.escape_debug().to_string());
                        if !is_env_name(&var) {
                            self.error(&ek.span(), &vkey, format!("invalid variable name `{}` (use letters, digits and `_`, not starting with a digit)", var.escape_debug()));
                            continue;
                        }
                        if RESERVED_ENV.contains(&var.as_str()) {
                            self.error(
                                &ek.span(),
                                &vkey,
                                format!("`{var}` is set by clearify-workerd for each worker"),
                            );
                            continue;
                        }
                        if let Some(s) = self.string_allowing(ev, &vkey, ENV_VALUE_CONTROLS) {
                            env.insert(var, s);
                        }
                    }
                    g.env = Some(self.at(env, v, &key));
                }
                "memory_max" => {
                    g.memory_max = self.size(v, &key, false).map(|s| self.at(s, v, &key))
                }
                "memory_high" => {
                    g.memory_high = self.size(v, &key, false).map(|s| self.at(s, v, &key))
                }
                "memory_swap_max" => {
                    g.memory_swap_max = self.size(v, &key, true).map(|s| self.at(s, v, &key))
                }
                "cpu_max" => {
                    let parsed = match v.get_ref() {
                        DeValue::String(s) if s.trim().eq_ignore_ascii_case("max") => Some(None),
                        DeValue::Float(f) => match f.as_str().parse::<f64>() {
                            Ok(x) if x.is_finite() => Some(Some(x)),
                            _ => {
                                self.error(&v.span(), &key, format!("invalid number {f}"));
                                None
                            }
                        },
                        DeValue::Integer(_) => self
                            .int_in(v, &key, i64::MIN, i64::MAX)
                            .map(|n| Some(n as f64)),
                        _ => {
                            self.wrong_type(v, &key, "a number of CPUs, e.g. 1.5 (or \"max\")");
                            None
                        }
                    };
                    match parsed {
                        Some(Some(x)) if x < 0.01 => {
                            self.error(
                                &v.span(),
                                &key,
                                format!("must be at least 0.01 CPUs, found {x}"),
                            );
                        }
                        Some(Some(x)) if x > MAX_CPUS => {
                            self.error(
                                &v.span(),
                                &key,
                                format!("must be at most {MAX_CPUS} CPUs, found {x}"),
                            );
                        }
                        Some(p) => g.cpu_max = Some(self.at(p, v, &key)),
                        None => {}
                    }
                }
                "cpu_weight" => {
                    g.cpu_weight = self.u32_in(v, &key, 1, 10_000).map(|n| self.at(n, v, &key))
                }
                "io_weight" => {
                    g.io_weight = self.u32_in(v, &key, 1, 10_000).map(|n| self.at(n, v, &key))
                }
                "pids_max" => {
                    g.pids_max = match v.get_ref() {
                        DeValue::String(s) if s.trim().eq_ignore_ascii_case("max") => {
                            Some(self.at(None, v, &key))
                        }
                        DeValue::Integer(_) => self
                            .int_in(v, &key, 1, MAX_PIDS as i64)
                            .map(|n| self.at(Some(n.unsigned_abs()), v, &key)),
                        _ => {
                            self.wrong_type(v, &key, "an integer (or \"max\")");
                            None
                        }
                    }
                }
                _ => self.unknown_key(&k.span(), prefix, name, GROUP_KEYS),
            }
        }
        g
    }

    /// Merge each group over [defaults] and the built-in defaults, and check
    /// what spans groups (missing queues, shared queues, id clashes).
    pub(super) fn groups(
        &mut self,
        defaults: &RawGroup,
        raws: &[(At<String>, Range<usize>, RawGroup)],
    ) -> Vec<GroupConfig> {
        fn pick<T: Clone>(g: &Option<At<T>>, d: &Option<At<T>>) -> Option<At<T>> {
            g.clone().or_else(|| d.clone())
        }
        let builtin = Timing::default();
        let mut out = Vec::new();
        let mut total_instances: u64 = 0;
        let mut queue_owner: HashMap<String, (String, usize)> = HashMap::new();
        for (name, table_span, g) in raws {
            let Some(queues) = pick(&g.queues, &defaults.queues) else {
                // Only report a missing key when it was absent, not invalid.
                if !g.queues_written && !defaults.queues_written {
                    self.error(
                        table_span,
                        &name.key,
                        "missing required key `queues` (a non-empty list of queue names)",
                    );
                }
                continue;
            };
            for q in &queues.v {
                if let Some((other, line)) = queue_owner.get(&q.v) {
                    if other != &name.v {
                        self.warning(
                            &q.span,
                            &q.key,
                            format!(
                                "queue `{}` is also consumed by group `{other}` (line {line})",
                                q.v
                            ),
                        );
                    }
                } else {
                    let (line, _) = self.src.position(q.span.start);
                    queue_owner.insert(q.v.clone(), (name.v.clone(), line));
                }
            }
            let val = |o: Option<At<Duration>>, dflt: Duration| o.map_or(dflt, |a| a.v);
            let restart_delay = pick(&g.restart_delay, &defaults.restart_delay);
            let restart_delay_max = pick(&g.restart_delay_max, &defaults.restart_delay_max);
            let rd = val(restart_delay.clone(), builtin.restart_delay);
            let rdm = val(restart_delay_max.clone(), builtin.restart_delay_max);
            if rdm < rd {
                let at = restart_delay_max.or(restart_delay).unwrap_or(At {
                    v: Duration::ZERO,
                    span: table_span.clone(),
                    key: name.key.clone(),
                });
                self.error(
                    &at.span,
                    &at.key,
                    format!(
                        "group `{}`: restart_delay_max ({}) is shorter than restart_delay ({})",
                        name.v,
                        humantime::format_duration(rdm),
                        humantime::format_duration(rd)
                    ),
                );
            }
            let memory_max = pick(&g.memory_max, &defaults.memory_max).and_then(|a| a.v);
            let memory_high = pick(&g.memory_high, &defaults.memory_high);
            if let (
                Some(max),
                Some(At {
                    v: Some(high),
                    span,
                    key,
                }),
            ) = (memory_max, &memory_high)
                && *high > max
            {
                self.warning(
                    span,
                    key,
                    format!(
                        "group `{}`: memory_high is above memory_max, so it has no effect",
                        name.v
                    ),
                );
            }
            let instances = pick(&g.instances, &defaults.instances).map_or(1, |a| a.v);
            let before = total_instances;
            total_instances = total_instances.saturating_add(u64::from(instances));
            if before <= MAX_TOTAL_INSTANCES && total_instances > MAX_TOTAL_INSTANCES {
                let (span, key) = match &g.instances {
                    Some(a) => (a.span.clone(), a.key.clone()),
                    None => (name.span.clone(), name.key.clone()),
                };
                self.error(
                    &span,
                    &key,
                    format!(
                        "group `{}` brings the number of worker processes to {total_instances}; at most {MAX_TOTAL_INSTANCES} instances in total are allowed",
                        name.v
                    ),
                );
            }
            let mut env = defaults
                .env
                .as_ref()
                .map(|a| a.v.clone())
                .unwrap_or_default();
            if let Some(ge) = &g.env {
                env.extend(ge.v.clone());
            }
            out.push(GroupConfig {
                name: name.v.clone(),
                queues: queues.v.into_iter().map(|q| q.v).collect(),
                concurrency: pick(&g.concurrency, &defaults.concurrency).map_or(1, |a| a.v),
                instances,
                timing: Timing {
                    stop_timeout: val(
                        pick(&g.stop_timeout, &defaults.stop_timeout),
                        builtin.stop_timeout,
                    ),
                    restart_delay: rd,
                    restart_delay_max: rdm,
                    stable_after: val(
                        pick(&g.stable_after, &defaults.stable_after),
                        builtin.stable_after,
                    ),
                    heartbeat_timeout: pick(&g.heartbeat_timeout, &defaults.heartbeat_timeout)
                        .map_or(builtin.heartbeat_timeout, |a| a.v),
                    stall_timeout: pick(&g.stall_timeout, &defaults.stall_timeout)
                        .map_or(builtin.stall_timeout, |a| a.v),
                },
                limits: Limits {
                    memory_max,
                    memory_high: memory_high.and_then(|a| a.v),
                    memory_swap_max: pick(&g.memory_swap_max, &defaults.memory_swap_max)
                        .and_then(|a| a.v),
                    cpu_max: pick(&g.cpu_max, &defaults.cpu_max).and_then(|a| a.v),
                    cpu_weight: pick(&g.cpu_weight, &defaults.cpu_weight).map(|a| a.v),
                    pids_max: pick(&g.pids_max, &defaults.pids_max).and_then(|a| a.v),
                    io_weight: pick(&g.io_weight, &defaults.io_weight).map(|a| a.v),
                },
                extra_args: pick(&g.extra_args, &defaults.extra_args)
                    .map(|a| a.v)
                    .unwrap_or_default(),
                env,
            });
        }
        // A group name that is also another group's instance id would make
        // control targets ambiguous ("text-1": group or instance?). An id is
        // `<group>-<i>` with a canonical decimal `i`, so only the split at
        // the last `-` can match: one lookup per group.
        let instances: HashMap<&str, u32> =
            out.iter().map(|g| (g.name.as_str(), g.instances)).collect();
        for (name, _, _) in raws {
            if let Some((group, n)) = instance_id_clash(&name.v, |g| instances.get(g).copied()) {
                self.error(
                    &name.span,
                    &name.key,
                    format!("group name `{}` is also the id of instance {n} of group `{group}`; rename one of them", name.v),
                );
            }
        }
        out
    }
}

/// When `name` is the id of an instance of another group (`<group>-<i>`,
/// `i` in `1..=instances`, written without leading zeros): that group and
/// `i`. An id has a single split point, the last `-`, so `instances_of` is
/// asked at most once: the check is linear in the number of groups.
pub(in crate::config) fn instance_id_clash(
    name: &str,
    mut instances_of: impl FnMut(&str) -> Option<u32>,
) -> Option<(&str, u32)> {
    let (group, i) = name.rsplit_once('-')?;
    let n = i.parse::<u32>().ok().filter(|n| n.to_string() == i)?;
    let count = instances_of(group)?;
    (n >= 1 && n <= count).then_some((group, n))
}

//! `[defaults]` and `[group.NAME]`: the per-group keys, merged over the
//! defaults, and the checks across groups (shared queues, instance ids).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::super::diagnostics::At;
use super::super::envfile::is_env_name;
use super::super::keys::{GROUP_KEYS, Kind, Value, group_key_names};
use super::super::schema::*;
use super::{Checker, Val, join};
use crate::model::spec::{Limits, Timing};

/// The per-group keys as written in one table ([defaults] or a group).
#[derive(Debug, Clone, Default)]
pub(super) struct RawGroup {
    /// The keys written, valid or not.
    written: Vec<&'static str>,
    /// The valid values, by key name (a table sets each key at most once,
    /// and few: a short list beats a map).
    values: Vec<(&'static str, At<Value>)>,
}

impl RawGroup {
    /// The value of key `name`, when written and valid.
    fn get(&self, name: &str) -> Option<&At<Value>> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
    }

    /// Whether key `name` was written, valid or not.
    fn wrote(&self, name: &str) -> bool {
        self.written.contains(&name)
    }
}

impl Checker<'_> {
    /// Read the per-group keys of one table ([defaults] or [group.NAME]).
    pub(super) fn raw_group(&mut self, t: &DeTable<'_>, prefix: &str) -> RawGroup {
        let mut g = RawGroup::default();
        for (k, v) in t.iter() {
            let name = k.get_ref().as_ref();
            let key = join(prefix, name);
            let Some(spec) = GROUP_KEYS.iter().find(|s| s.name == name) else {
                self.unknown_key(&k.span(), prefix, name, &group_key_names());
                continue;
            };
            g.written.push(spec.name);
            if let Some(value) = self.group_value(spec.kind, v, &key) {
                g.values.push((spec.name, self.at(value, v, &key)));
            }
        }
        g
    }

    /// Read one per-group value of kind `kind`, or report why not.
    fn group_value(&mut self, kind: Kind, v: &Val<'_>, key: &str) -> Option<Value> {
        match kind {
            Kind::Queues => self.queues(v, key).map(Value::Queues),
            Kind::Int { min, max } => self.u32_in(v, key, min, max).map(Value::Int),
            Kind::Duration { off: false } => self
                .plain_duration(v, key)
                .map(|d| Value::Duration(Some(d))),
            Kind::Duration { off: true } => self.duration(v, key, true).map(Value::Duration),
            Kind::Size { zero_ok } => self.size(v, key, zero_ok).map(Value::Size),
            Kind::Cpus => self.cpus(v, key).map(Value::Cpus),
            Kind::Pids => match v.get_ref() {
                DeValue::String(s) if s.trim().eq_ignore_ascii_case("max") => {
                    Some(Value::Pids(None))
                }
                DeValue::Integer(_) => self
                    .int_in(v, key, 1, MAX_PIDS as i64)
                    .map(|n| Value::Pids(Some(n.unsigned_abs()))),
                _ => {
                    self.wrong_type(v, key, "an integer (or \"max\")");
                    None
                }
            },
            Kind::Args => {
                let args = self.string_list(v, key)?;
                self.check_worker_args(&args);
                Some(Value::Args(args.into_iter().map(|a| a.v).collect()))
            }
            Kind::Env => self.env_table(v, key).map(Value::Env),
            Kind::Autoscale => self.autoscale(v, key).map(Value::Autoscale),
        }
    }

    /// A non-empty list of queue names without `,` or whitespace; a name
    /// listed twice is a warning and kept once.
    fn queues(&mut self, v: &Val<'_>, key: &str) -> Option<Vec<At<String>>> {
        let list = self.string_list(v, key)?;
        if list.is_empty() {
            self.error(&v.span(), key, "must list at least one queue");
            return None;
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
                    format!("queue name `{}` must not contain `,` or whitespace", q.v),
                );
                good = false;
            } else if !seen.insert(&q.v) {
                self.warning(&q.span, &q.key, format!("queue `{}` is listed twice", q.v));
            }
        }
        if !good {
            return None;
        }
        let mut kept: HashSet<String> = HashSet::new();
        Some(
            list.into_iter()
                .filter(|q| kept.insert(q.v.clone()))
                .collect(),
        )
    }

    /// A table of environment variables: valid names, not one the daemon
    /// sets, values with no control character but tab and newline.
    fn env_table(&mut self, v: &Val<'_>, key: &str) -> Option<BTreeMap<String, String>> {
        let et = self.table(v, key)?;
        if et.len() > MAX_LIST {
            self.error(
                &v.span(),
                key,
                format!("has {} variables; at most {MAX_LIST} are allowed", et.len()),
            );
            return None;
        }
        let mut env = BTreeMap::new();
        for (ek, ev) in et.iter() {
            let var = ek.get_ref().to_string();
            let vkey = join(key, &var.escape_debug().to_string());
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
        Some(env)
    }

    /// A number of CPUs, 0.01..=MAX_CPUS, or `"max"` (`None`).
    fn cpus(&mut self, v: &Val<'_>, key: &str) -> Option<Option<f64>> {
        let parsed = match v.get_ref() {
            DeValue::String(s) if s.trim().eq_ignore_ascii_case("max") => Some(None),
            DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(x) if x.is_finite() => Some(Some(x)),
                _ => {
                    self.error(&v.span(), key, format!("invalid number {f}"));
                    None
                }
            },
            DeValue::Integer(_) => self
                .int_in(v, key, i64::MIN, i64::MAX)
                .map(|n| Some(n as f64)),
            _ => {
                self.wrong_type(v, key, "a number of CPUs, e.g. 1.5 (or \"max\")");
                None
            }
        };
        match parsed {
            Some(Some(x)) if x < 0.01 => {
                self.error(
                    &v.span(),
                    key,
                    format!("must be at least 0.01 CPUs, found {x}"),
                );
                None
            }
            Some(Some(x)) if x > MAX_CPUS => {
                self.error(
                    &v.span(),
                    key,
                    format!("must be at most {MAX_CPUS} CPUs, found {x}"),
                );
                None
            }
            p => p,
        }
    }

    /// A group with every built-in default of [`GROUP_KEYS`], each read
    /// through the same checks as a written value.
    fn builtin_group(&mut self) -> GroupConfig {
        let mut g = GroupConfig {
            name: String::new(),
            queues: Vec::new(),
            concurrency: 0,
            instances: 0,
            autoscale: None,
            timing: Timing {
                stop_timeout: Duration::ZERO,
                restart_delay: Duration::ZERO,
                restart_delay_max: Duration::ZERO,
                stable_after: Duration::ZERO,
                heartbeat_timeout: None,
                stall_timeout: None,
            },
            limits: Limits::default(),
            extra_args: Vec::new(),
            env: BTreeMap::new(),
        };
        for k in GROUP_KEYS {
            let Some(text) = k.default else {
                continue;
            };
            let line = format!("{} = {text}", k.name);
            let value = match DeTable::parse(&line) {
                Ok(t) => t
                    .get_ref()
                    .iter()
                    .next()
                    .and_then(|(_, v)| self.group_value(k.kind, v, k.name)),
                Err(_) => None,
            };
            match value {
                Some(v) => (k.apply)(&mut g, v),
                None => self.error(
                    &(0..0),
                    k.name,
                    format!("the built-in default `{text}` is invalid (a bug)"),
                ),
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
        let builtin = self.builtin_group();
        let mut out = Vec::new();
        let mut total_instances: u64 = 0;
        let mut queue_owner: HashMap<String, (String, usize)> = HashMap::new();
        for (name, table_span, g) in raws {
            let pick = |key: &str| g.get(key).or_else(|| defaults.get(key));
            let Some(At {
                v: Value::Queues(queues),
                ..
            }) = pick("queues")
            else {
                // Only report a missing key when it was absent, not invalid.
                if !g.wrote("queues") && !defaults.wrote("queues") {
                    self.error(
                        table_span,
                        &name.key,
                        "missing required key `queues` (a non-empty list of queue names)",
                    );
                }
                continue;
            };
            for q in queues {
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
            let mut cfg = builtin.clone();
            cfg.name = name.v.clone();
            for k in GROUP_KEYS {
                if k.kind == Kind::Env {
                    // Merged key by key: [defaults], then the group.
                    for raw in [defaults, g] {
                        if let Some(a) = raw.get(k.name) {
                            (k.apply)(&mut cfg, a.v.clone());
                        }
                    }
                } else if let Some(a) = pick(k.name) {
                    (k.apply)(&mut cfg, a.v.clone());
                }
            }
            let (rd, rdm) = (cfg.timing.restart_delay, cfg.timing.restart_delay_max);
            if rdm < rd {
                let (span, key) = pick("restart_delay_max")
                    .or_else(|| pick("restart_delay"))
                    .map_or((table_span, &name.key), |a| (&a.span, &a.key));
                self.error(
                    span,
                    key,
                    format!(
                        "group `{}`: restart_delay_max ({}) is shorter than restart_delay ({})",
                        name.v,
                        humantime::format_duration(rdm),
                        humantime::format_duration(rd)
                    ),
                );
            }
            if let (Some(max), Some(high), Some(at)) = (
                cfg.limits.memory_max,
                cfg.limits.memory_high,
                pick("memory_high"),
            ) && high > max
            {
                self.warning(
                    &at.span,
                    &at.key,
                    format!(
                        "group `{}`: memory_high is above memory_max, so it has no effect",
                        name.v
                    ),
                );
            }
            self.start_count(&mut cfg, &pick("instances").cloned(), pick("autoscale"));
            let before = total_instances;
            total_instances = total_instances.saturating_add(u64::from(cfg.max_instances()));
            if before <= MAX_TOTAL_INSTANCES && total_instances > MAX_TOTAL_INSTANCES {
                let (span, key) = match g.get("instances").or_else(|| g.get("autoscale")) {
                    Some(a) => (&a.span, &a.key),
                    None => (&name.span, &name.key),
                };
                self.error(
                    span,
                    key,
                    format!(
                        "group `{}` brings the number of worker processes to {total_instances}; at most {MAX_TOTAL_INSTANCES} instances in total are allowed",
                        name.v
                    ),
                );
            }
            out.push(cfg);
        }
        // A group name that is also another group's instance id would make
        // control targets ambiguous ("text-1": group or instance?). An id is
        // `<group>-<i>` with a canonical decimal `i`, so only the split at
        // the last `-` can match: one lookup per group.
        let instances: HashMap<&str, u32> = out
            .iter()
            .map(|g| (g.name.as_str(), g.max_instances()))
            .collect();
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

impl Checker<'_> {
    /// With `autoscale`, `instances` is the count at start: within
    /// min..=max when written, `min` when not.
    fn start_count(
        &mut self,
        cfg: &mut GroupConfig,
        instances: &Option<At<Value>>,
        autoscale: Option<&At<Value>>,
    ) {
        let (Some(a), Some(at)) = (cfg.autoscale, autoscale) else {
            return;
        };
        match instances {
            None => cfg.instances = a.min,
            Some(i) if cfg.instances < a.min || cfg.instances > a.max => self.error(
                &i.span,
                &i.key,
                format!(
                    "group `{}`: instances ({}) is the count at start with autoscale and must be within min..=max ({}..={}, line {})",
                    cfg.name,
                    cfg.instances,
                    a.min,
                    a.max,
                    self.src.position(at.span.start).0
                ),
            ),
            Some(_) => {}
        }
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

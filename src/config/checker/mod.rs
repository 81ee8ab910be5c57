//! The checker: walks the TOML document, reports every problem as a
//! [`Diagnostic`] and builds the [`Config`]. This file holds the typed
//! getters (each reports its own error) and the walk over the sections;
//! the sections themselves are in the sibling files.

mod autoscale;
mod broker;
mod celery;
mod daemon;
mod fleet;
pub(super) mod groups;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostics::{At, Diagnostic, Severity, Source};
use super::resolve_against;
use super::schema::*;
use super::units::{parse_duration, parse_size};
use groups::RawGroup;

type Val<'i> = Spanned<DeValue<'i>>;

pub(super) struct Checker<'a> {
    path: &'a Path,
    src: Source<'a>,
    env: &'a Environment,
    pub(super) diags: Vec<Diagnostic>,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl<'a> Checker<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str, env: &'a Environment) -> Checker<'a> {
        Checker {
            path,
            src: Source::new(text),
            env,
            diags: Vec::new(),
        }
    }

    fn push(&mut self, severity: Severity, span: &Range<usize>, key: &str, message: String) {
        let (line, column) = self.src.position(span.start);
        self.diags.push(Diagnostic {
            severity,
            file: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        });
    }

    fn error(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        self.push(Severity::Error, span, key, message.into());
    }

    fn warning(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        self.push(Severity::Warning, span, key, message.into());
    }

    fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }

    fn resolve_path(&self, p: &str) -> PathBuf {
        resolve_against(self.path, Path::new(p))
    }

    fn unknown_key(&mut self, span: &Range<usize>, prefix: &str, name: &str, known: &[&str]) {
        let mut msg = format!("unknown key `{}`", name.escape_debug());
        if let Some(best) = known
            .iter()
            .filter(|k| strsim::levenshtein(k, name) <= 2.max(name.len() / 4))
            .min_by_key(|k| strsim::levenshtein(k, name))
        {
            msg.push_str(&format!("; did you mean `{best}`?"));
        } else {
            msg.push_str(&format!("; expected one of: {}", known.join(", ")));
        }
        self.error(span, &join(prefix, &name.escape_debug().to_string()), msg);
    }

    fn wrong_type(&mut self, v: &Val<'_>, key: &str, expected: &str) {
        let found = type_name(v.get_ref());
        self.error(
            &v.span(),
            key,
            format!("expected {expected}, found {found}"),
        );
    }

    // ----- typed getters: each reports its own error and returns None -----

    fn table<'t, 'i>(&mut self, v: &'t Val<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(v, key, "a table");
                None
            }
        }
    }

    /// A string without control characters, at most [`MAX_STRING`] bytes.
    fn string(&mut self, v: &Val<'_>, key: &str) -> Option<String> {
        self.string_allowing(v, key, &[])
    }

    /// A string whose control characters are only those in `allowed`. The
    /// error never quotes the value: it may be a secret.
    fn string_allowing(&mut self, v: &Val<'_>, key: &str, allowed: &[char]) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => {
                if s.len() > MAX_STRING {
                    self.error(
                        &v.span(),
                        key,
                        format!(
                            "is {} bytes long; at most {MAX_STRING} are allowed",
                            s.len()
                        ),
                    );
                    return None;
                }
                if let Some(why) = control_char(s, allowed) {
                    self.error(&v.span(), key, why);
                    return None;
                }
                Some(s.to_string())
            }
            _ => {
                self.wrong_type(v, key, "a string");
                None
            }
        }
    }

    fn nonempty_string(&mut self, v: &Val<'_>, key: &str) -> Option<String> {
        let s = self.string(v, key)?;
        if s.trim().is_empty() {
            self.error(&v.span(), key, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, v: &Val<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(v, key, "a boolean (true or false)");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    fn int_in(&mut self, v: &Val<'_>, key: &str, min: i64, max: i64) -> Option<i64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(v, key, "an integer");
            return None;
        };
        let Ok(n) = i64::from_str_radix(i.as_str(), i.radix()) else {
            self.error(&v.span(), key, format!("integer {i} is out of range"));
            return None;
        };
        if n < min || n > max {
            let msg = if max == i64::MAX || max == u32::MAX as i64 {
                format!("must be at least {min}, found {n}")
            } else {
                format!("must be from {min} to {max}, found {n}")
            };
            self.error(&v.span(), key, msg);
            return None;
        }
        Some(n)
    }

    fn u32_in(&mut self, v: &Val<'_>, key: &str, min: u32, max: u32) -> Option<u32> {
        self.int_in(v, key, min.into(), max.into())
            .and_then(|n| u32::try_from(n).ok())
    }

    /// A list of strings, each element with its own span.
    fn string_list(&mut self, v: &Val<'_>, key: &str) -> Option<Vec<At<String>>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(v, key, "an array of strings");
            return None;
        };
        if items.len() > MAX_LIST {
            self.error(
                &v.span(),
                key,
                format!(
                    "has {} elements; at most {MAX_LIST} are allowed",
                    items.len()
                ),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (idx, item) in items.iter().enumerate() {
            let ikey = format!("{key}[{idx}]");
            match self.string(item, &ikey) {
                Some(s) => out.push(At {
                    v: s,
                    span: item.span(),
                    key: ikey,
                }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A duration string. With `off_allowed`, zero (`"0s"` or the integer
    /// 0) gives `Some(None)`.
    fn duration(&mut self, v: &Val<'_>, key: &str, off_allowed: bool) -> Option<Option<Duration>> {
        match v.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) if d > MAX_DURATION => {
                    self.error(
                        &v.span(),
                        key,
                        format!(
                            "must be at most 1y (365.25 days), found {}",
                            humantime::format_duration(d)
                        ),
                    );
                    None
                }
                Ok(d) if off_allowed && d.is_zero() => Some(None),
                Ok(d) => Some(Some(d)),
                Err(e) => {
                    self.error(&v.span(), key, e);
                    None
                }
            },
            DeValue::Integer(i) if i.as_str() == "0" => {
                if off_allowed {
                    Some(None)
                } else {
                    Some(Some(Duration::ZERO))
                }
            }
            DeValue::Integer(i) => {
                self.error(
                    &v.span(),
                    key,
                    format!("write a duration as a string with a unit, e.g. \"{i}s\""),
                );
                None
            }
            _ => {
                self.wrong_type(v, key, "a duration string such as \"60s\"");
                None
            }
        }
    }

    fn plain_duration(&mut self, v: &Val<'_>, key: &str) -> Option<Duration> {
        self.duration(v, key, false).map(|d| d.unwrap_or_default())
    }

    /// A size: integer bytes or a string with a unit; `"max"` → `Some(None)`.
    fn size(&mut self, v: &Val<'_>, key: &str, zero_ok: bool) -> Option<Option<u64>> {
        let parsed = match v.get_ref() {
            DeValue::String(s) => match parse_size(s) {
                Ok(n) => n,
                Err(e) => {
                    self.error(&v.span(), key, e);
                    return None;
                }
            },
            DeValue::Integer(_) => Some(self.int_in(v, key, 0, i64::MAX)? as u64),
            _ => {
                self.wrong_type(v, key, "a size such as \"512M\" or \"1G\"");
                return None;
            }
        };
        if let Some(n) = parsed {
            if n > MAX_SIZE {
                self.error(
                    &v.span(),
                    key,
                    format!("must be at most 1024T (1 PiB), found {n} bytes"),
                );
                return None;
            }
            if n == 0 && !zero_ok {
                self.error(
                    &v.span(),
                    key,
                    "must be greater than 0 (use \"max\" for no limit)",
                );
                return None;
            }
            if n > 0 && n < 1 << 20 {
                self.warning(
                    &v.span(),
                    key,
                    format!(
                        "only {n} bytes; sizes without a unit are bytes (did you mean \"{n}M\"?)"
                    ),
                );
            }
        }
        Some(parsed)
    }

    fn at<T>(&self, v: T, val: &Val<'_>, key: &str) -> At<T> {
        At {
            v,
            span: val.span(),
            key: key.to_string(),
        }
    }

    // ----- sections -----

    pub(super) fn run(&mut self) -> Option<Config> {
        let (doc, errors) = DeTable::parse_recoverable(self.src.text);
        if !errors.is_empty() {
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                self.error(&span, "", format!("TOML syntax: {}", e.message()));
            }
            return None;
        }
        let doc = doc.into_inner();
        let mut sections: HashMap<&str, &Val<'_>> = HashMap::new();
        for (k, v) in doc.iter() {
            let name: &str = k.get_ref();
            if TOP_KEYS.contains(&name) {
                sections.insert(name, v);
            } else {
                self.unknown_key(&k.span(), "", name, TOP_KEYS);
            }
        }

        // Groups first: whether any exist decides what else is required.
        let defaults = match sections.get("defaults") {
            Some(v) => match self.table(v, "defaults") {
                Some(t) => self.raw_group(t, "defaults"),
                None => RawGroup::default(),
            },
            None => RawGroup::default(),
        };
        let mut raw_groups: Vec<(At<String>, Range<usize>, RawGroup)> = Vec::new();
        if let Some(gv) = sections.get("group")
            && let Some(gt) = self.table(gv, "group")
        {
            let mut entries: Vec<_> = gt.iter().collect();
            entries.sort_by_key(|(k, _)| k.span().start);
            let total = entries.len();
            for (n, (k, v)) in entries.into_iter().enumerate() {
                let name = k.get_ref().to_string();
                let prefix = format!("group.{}", name.escape_debug());
                if n == MAX_GROUPS {
                    // The file is refused anyway: checking the rest would
                    // only cost time and memory in proportion to its size.
                    self.error(
                        &k.span(),
                        &prefix,
                        format!("too many groups: {total} groups, at most {MAX_GROUPS} are allowed (this one and the ones after it are not checked)"),
                    );
                    break;
                }
                if let Some(why) = group_name_problem(&name) {
                    self.error(
                        &k.span(),
                        &prefix,
                        format!("invalid group name `{}`: {why}", name.escape_debug()),
                    );
                }
                if let Some(t) = self.table(v, &prefix) {
                    let raw = self.raw_group(t, &prefix);
                    raw_groups.push((
                        At {
                            v: name,
                            span: k.span(),
                            key: prefix,
                        },
                        v.span(),
                        raw,
                    ));
                }
            }
        }
        let has_groups = !raw_groups.is_empty();
        let first_group_span = raw_groups.first().map(|g| g.1.clone()).unwrap_or(0..0);
        if !has_groups && !sections.contains_key("group") {
            self.warning(
                &(0..0),
                "group",
                "no [group.NAME] sections: no workers will run",
            );
        }

        let daemon = self.daemon(sections.get("daemon").copied());
        let celery = self.celery(
            sections.get("celery").copied(),
            has_groups,
            &first_group_span,
        );
        let broker = match sections.get("broker") {
            Some(v) => self.broker(v, &celery),
            None => {
                if has_groups {
                    self.error(
                        &first_group_span,
                        "broker",
                        "a [broker] section with `url` or `url_env` is required when groups are defined",
                    );
                }
                None
            }
        };

        let fleet = self.fleet(sections.get("fleet").copied());
        let metrics = self.metrics(sections.get("metrics").copied());
        let groups = self.groups(&defaults, &raw_groups);

        if self.has_errors() {
            return None;
        }
        Some(Config {
            path: self.path.to_path_buf(),
            daemon: daemon?,
            broker,
            celery: celery.config?,
            fleet: fleet?,
            metrics: metrics?,
            groups,
        })
    }
}

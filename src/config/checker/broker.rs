//! `[broker]`: url or url_env (through [`crate::config::broker_url`]),
//! wait_timeout, on_timeout, check_interval, priority_steps, key_prefix.

use toml::de::DeValue;

use super::super::keys::{BROKER_KEYS, section_key_names};
use super::super::schema::*;
use super::super::{check_broker_url, redact_url};
use super::celery::CeleryParts;
use super::{At, Checker, Val, join};

impl Checker<'_> {
    pub(super) fn broker(&mut self, v: &Val<'_>, celery: &CeleryParts) -> Option<BrokerConfig> {
        let t = self.table(v, "broker")?;
        let mut url: Option<At<String>> = None;
        let mut url_env: Option<At<String>> = None;
        let mut url_written = false;
        let mut wait_timeout = None;
        let mut on_timeout = OnTimeout::Wait;
        let mut check_interval = DEFAULT_CHECK_INTERVAL;
        let mut priority_steps = DEFAULT_PRIORITY_STEPS.to_vec();
        let mut key_prefix = String::new();
        let mut ok = true;
        for (k, val) in t.iter() {
            let name = k.get_ref().as_ref();
            let key = join("broker", name);
            match name {
                "url" => {
                    url_written = true;
                    match self.nonempty_string(val, &key) {
                        Some(s) => url = Some(self.at(s, val, &key)),
                        None => ok = false,
                    }
                }
                "url_env" => {
                    url_written = true;
                    match self.nonempty_string(val, &key) {
                        Some(s) => url_env = Some(self.at(s, val, &key)),
                        None => ok = false,
                    }
                }
                "wait_timeout" => match val.get_ref() {
                    DeValue::String(s) if s.trim().eq_ignore_ascii_case("infinite") => {}
                    _ => match self.duration(val, &key, false) {
                        Some(d) => wait_timeout = d,
                        None => ok = false,
                    },
                },
                "on_timeout" => {
                    match self.string(val, &key).as_deref() {
                        Some("wait") => on_timeout = OnTimeout::Wait,
                        Some("start") => on_timeout = OnTimeout::Start,
                        Some("fail") => on_timeout = OnTimeout::Fail,
                        Some(other) => {
                            self.error(&val.span(), &key, format!("invalid value `{other}`; expected \"wait\", \"start\" or \"fail\""));
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                "check_interval" => match self.plain_duration(val, &key) {
                    Some(d) if d.is_zero() => {
                        self.error(&val.span(), &key, "must be greater than 0");
                        ok = false;
                    }
                    Some(d) => check_interval = d,
                    None => ok = false,
                },
                "priority_steps" => {
                    let DeValue::Array(items) = val.get_ref() else {
                        self.wrong_type(val, &key, "an array of integers from 0 to 9");
                        ok = false;
                        continue;
                    };
                    if items.is_empty() {
                        self.error(
                            &val.span(),
                            &key,
                            "must not be empty (use [0] for no priorities)",
                        );
                        ok = false;
                        continue;
                    }
                    let mut steps = Vec::new();
                    for (idx, item) in items.iter().enumerate() {
                        match self.int_in(item, &format!("{key}[{idx}]"), 0, 9) {
                            Some(n) => steps.push(n as u8),
                            None => ok = false,
                        }
                    }
                    steps.sort_unstable();
                    steps.dedup();
                    priority_steps = steps;
                }
                "key_prefix" => match self.string(val, &key) {
                    Some(s) => key_prefix = s,
                    None => ok = false,
                },
                _ => self.unknown_key(&k.span(), "broker", name, &section_key_names(BROKER_KEYS)),
            }
        }
        let resolved = match (&url, &url_env) {
            (Some(_), Some(e)) => {
                self.error(&e.span, &e.key, "set either `url` or `url_env`, not both");
                None
            }
            (None, None) => {
                if !url_written {
                    self.error(&v.span(), "broker.url", "missing `url` (or `url_env`)");
                }
                None
            }
            (Some(u), None) => match check_broker_url(&u.v) {
                Ok(()) => Some(u.v.clone()),
                Err(e) => {
                    self.error(
                        &u.span,
                        &u.key,
                        format!(
                            "invalid broker URL `{}`: {e}",
                            redact_url(&u.v).escape_debug()
                        ),
                    );
                    None
                }
            },
            (None, Some(e)) => {
                let from_file = celery.env_file_vars.get(&e.v).cloned();
                let (value, source) = match from_file {
                    Some(val) => (
                        Some(val),
                        format!(
                            "env_file {}",
                            celery
                                .env_file_path
                                .as_ref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ),
                    ),
                    None => (
                        self.env.var(&e.v).map(str::to_string),
                        "the daemon's environment".to_string(),
                    ),
                };
                match value {
                    None => {
                        let where_ = match &celery.env_file_path {
                            Some(p) => format!(
                                "in env_file {} nor in the daemon's environment",
                                p.display()
                            ),
                            None => {
                                "in the daemon's environment (and no celery.env_file is set)".into()
                            }
                        };
                        self.error(
                            &e.span,
                            &e.key,
                            format!("variable `{}` is not set {where_}", e.v),
                        );
                        None
                    }
                    Some(u) => {
                        match check_broker_url(&u) {
                            Ok(()) => Some(u),
                            Err(err) => {
                                self.error(
                                &e.span,
                                &e.key,
                                format!("`{}` from {source} is not a valid broker URL (`{}`): {err}", e.v, redact_url(&u).escape_debug()),
                            );
                                None
                            }
                        }
                    }
                }
            }
        };
        let url = resolved?;
        ok.then_some(BrokerConfig {
            url,
            url_env: url_env.map(|e| e.v),
            wait_timeout,
            on_timeout,
            check_interval,
            priority_steps,
            key_prefix,
        })
    }
}

//! `[celery]`: app, command, workdir, env_file, user, loglevel and
//! extra_args (also checked for the group's extra_args).

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml::de::DeValue;

use super::super::diagnostics::{Diagnostic, Severity};
use super::super::envfile::{env_line_numbers, parse_env_file};
use super::super::keys::{CELERY_KEYS, section_key_names};
use super::super::schema::*;
use super::{At, Checker, Val, join};

impl Checker<'_> {
    pub(super) fn celery(
        &mut self,
        v: Option<&Val<'_>>,
        has_groups: bool,
        group_span: &Range<usize>,
    ) -> CeleryParts {
        let mut app = None;
        let mut app_written = false;
        let mut command_args = Vec::new();
        let mut command: Option<At<String>> = None;
        let mut workdir: Option<At<String>> = None;
        let mut env_file: Option<At<String>> = None;
        let mut user = None;
        let mut loglevel = DEFAULT_LOGLEVEL.to_string();
        let mut extra_args = Vec::new();
        let mut ok = true;
        let mut header = group_span.clone();
        if let Some(v) = v
            && let Some(t) = self.table(v, "celery")
        {
            header = v.span();
            for (k, v) in t.iter() {
                let name = k.get_ref().as_ref();
                let key = join("celery", name);
                match name {
                    "app" => {
                        app_written = true;
                        match self.nonempty_string(v, &key) {
                            Some(s) => app = Some(s),
                            None => ok = false,
                        }
                    }
                    "command" => match v.get_ref() {
                        DeValue::Array(_) => match self.string_list(v, &key) {
                            Some(list) if list.is_empty() => {
                                self.error(&v.span(), &key, "must not be an empty list");
                                ok = false;
                            }
                            Some(list) => {
                                let mut list = list.into_iter();
                                command = list.next();
                                command_args = list.map(|a| a.v).collect();
                            }
                            None => ok = false,
                        },
                        _ => match self.nonempty_string(v, &key) {
                            Some(s) => command = Some(self.at(s, v, &key)),
                            None => ok = false,
                        },
                    },
                    "workdir" => match self.nonempty_string(v, &key) {
                        Some(s) => workdir = Some(self.at(s, v, &key)),
                        None => ok = false,
                    },
                    "env_file" => match self.nonempty_string(v, &key) {
                        Some(s) => env_file = Some(self.at(s, v, &key)),
                        None => ok = false,
                    },
                    "user" => match self.nonempty_string(v, &key) {
                        Some(s) => {
                            if self.check_user(&s, v, &key) {
                                user = Some(s);
                            } else {
                                ok = false;
                            }
                        }
                        None => ok = false,
                    },
                    "loglevel" => match self.string(v, &key) {
                        Some(s) if LOGLEVELS.contains(&s.to_ascii_lowercase().as_str()) => {
                            loglevel = s.to_ascii_lowercase();
                        }
                        Some(s) => {
                            self.error(
                                &v.span(),
                                &key,
                                format!(
                                    "invalid loglevel `{s}`; expected one of: {}",
                                    LOGLEVELS.join(", ")
                                ),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    },
                    "extra_args" => match self.string_list(v, &key) {
                        Some(args) => {
                            self.check_worker_args(&args);
                            extra_args = args.into_iter().map(|a| a.v).collect();
                        }
                        None => ok = false,
                    },
                    _ => {
                        self.unknown_key(&k.span(), "celery", name, &section_key_names(CELERY_KEYS))
                    }
                }
            }
        }
        if has_groups && !app_written {
            self.error(&header, "celery.app", "missing required key `app` (the Celery app for `celery -A`), required when groups are defined");
        }

        let worker_path = self
            .env
            .var("PATH")
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_PATH)
            .to_string();

        // command: checked when groups will run it, or when set explicitly.
        let command_path = match &command {
            Some(c) => self.resolve_command(&c.v, &worker_path, Some(c)),
            None if has_groups => self.resolve_command(DEFAULT_COMMAND, &worker_path, None),
            None => Some(PathBuf::from(DEFAULT_COMMAND)),
        };

        let workdir_path = match &workdir {
            Some(w) => {
                let p = self.resolve_path(&w.v);
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_dir() => Some(p),
                    Ok(_) => {
                        self.error(
                            &w.span,
                            &w.key,
                            format!("{} is not a directory", p.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.error(&w.span, &w.key, format!("{}: {e}", p.display()));
                        None
                    }
                }
            }
            None => Some(PathBuf::from(DEFAULT_WORKDIR)),
        };

        let mut env_file_vars = BTreeMap::new();
        let mut env_file_path = None;
        let mut env_file_ok = true;
        if let Some(f) = &env_file {
            let p = self.resolve_path(&f.v);
            match std::fs::read(&p) {
                Ok(bytes) if bytes.len() as u64 > MAX_ENV_FILE => {
                    env_file_ok = false;
                    self.error(
                        &f.span,
                        &f.key,
                        format!(
                            "env_file {} is {} bytes long; at most {MAX_ENV_FILE} are allowed",
                            p.display(),
                            bytes.len()
                        ),
                    );
                }
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    match parse_env_file(&text) {
                        Ok(vars) => {
                            let lines = env_line_numbers(&text);
                            for (k, v) in vars {
                                let line = lines.get(&k).copied().unwrap_or(1);
                                if RESERVED_ENV.contains(&k.as_str()) {
                                    self.env_file_warning(&p, line, format!("`{k}` is set by clearify-workerd for each worker; this value is ignored"));
                                }
                                if v.contains("${") {
                                    self.env_file_warning(&p, line, format!("`{k}` contains `${{`, but no variable expansion is performed"));
                                }
                                env_file_vars.insert(k, v);
                            }
                        }
                        Err(errors) => {
                            env_file_ok = false;
                            for e in errors {
                                self.diags.push(Diagnostic {
                                    severity: Severity::Error,
                                    file: p.clone(),
                                    line: e.line,
                                    column: e.column,
                                    key: "celery.env_file".into(),
                                    message: e.to_string(),
                                });
                            }
                        }
                    }
                    env_file_path = Some(p);
                }
                Err(e) => {
                    env_file_ok = false;
                    self.error(
                        &f.span,
                        &f.key,
                        format!("cannot read env_file {}: {e}", p.display()),
                    );
                }
            }
        }

        let config = (ok && env_file_ok).then_some(()).and_then(|()| {
            Some(CeleryConfig {
                app: app.clone(),
                command: command_path.clone()?,
                command_args: command_args.clone(),
                workdir: workdir_path.clone()?,
                env_file: env_file_path.clone(),
                env_file_vars: env_file_vars.clone(),
                user: user.clone(),
                loglevel: loglevel.clone(),
                extra_args: extra_args.clone(),
                worker_path: worker_path.clone(),
            })
        });
        CeleryParts {
            config,
            env_file_vars,
            env_file_path,
        }
    }

    /// A warning about one line of the env file `file`.
    fn env_file_warning(&mut self, file: &Path, line: usize, message: String) {
        self.diags.push(Diagnostic {
            severity: Severity::Warning,
            file: file.to_path_buf(),
            line,
            column: 1,
            key: "celery.env_file".into(),
            message,
        });
    }

    pub(super) fn check_user(&mut self, name: &str, v: &Val<'_>, key: &str) -> bool {
        match crate::sys::accounts::Accounts::system().user_by_name(name) {
            Ok(Some(u)) if u.uid.is_root() => {
                self.error(
                    &v.span(),
                    key,
                    format!("user `{name}` is root; workers never run as root"),
                );
                false
            }
            Ok(Some(_)) => true,
            Ok(None) => {
                self.error(&v.span(), key, format!("no such user `{name}`"));
                false
            }
            Err(e) => {
                self.error(&v.span(), key, format!("cannot look up user `{name}`: {e}"));
                false
            }
        }
    }

    /// Find the celery executable: a bare name in `path_var`, anything with
    /// a `/` as a path (relative to the config's directory).
    pub(super) fn resolve_command(
        &mut self,
        cmd: &str,
        path_var: &str,
        at: Option<&At<String>>,
    ) -> Option<PathBuf> {
        let (span, key) = match at {
            Some(a) => (a.span.clone(), a.key.clone()),
            None => (0..0, "celery.command".to_string()),
        };
        if cmd.contains('/') {
            let p = self.resolve_path(cmd);
            match std::fs::metadata(&p) {
                Ok(m) if !m.is_file() => {
                    self.error(
                        &span,
                        &key,
                        format!("{} is not a regular file", p.display()),
                    );
                    None
                }
                Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                    self.error(
                        &span,
                        &key,
                        format!("{} is not executable (chmod +x it)", p.display()),
                    );
                    None
                }
                Ok(_) => Some(p),
                Err(e) => {
                    self.error(&span, &key, format!("{}: {e}", p.display()));
                    None
                }
            }
        } else {
            for dir in path_var.split(':').filter(|d| !d.is_empty()) {
                let p = Path::new(dir).join(cmd);
                if let Ok(m) = std::fs::metadata(&p)
                    && m.is_file()
                    && m.permissions().mode() & 0o111 != 0
                {
                    return Some(p);
                }
            }
            let how = if at.is_some() {
                ""
            } else {
                " (the default celery.command)"
            };
            self.error(
                &span,
                &key,
                format!("`{cmd}`{how} is not an executable in PATH ({path_var}); set celery.command to its full path, e.g. /opt/clearify/venv/bin/celery"),
            );
            None
        }
    }

    /// Reject options that take the worker out of supervision or clash
    /// with the ones the daemon sets.
    pub(super) fn check_worker_args(&mut self, args: &[At<String>]) {
        for a in args {
            let s = a.v.as_str();
            let name = s.split_once('=').map_or(s, |(n, _)| n);
            let why: Option<&str> = if name == "--detach" || s == "-D" {
                Some(
                    "it would fork the worker into the background, out of clearify-workerd's supervision; workers must run in the foreground",
                )
            } else if name == "--pidfile" {
                Some(
                    "stale pidfiles make restarted workers refuse to start (a crash loop); clearify-workerd tracks the processes itself",
                )
            } else if name == "--logfile" || s.starts_with("-f") {
                Some(
                    "worker output must go to stdout/stderr so that clearify-workerd can send it to journald",
                )
            } else if matches!(name, "-A" | "--app") || (s.starts_with("-A") && s.len() > 2) {
                Some("clearify-workerd sets the app; use celery.app")
            } else if matches!(name, "-Q" | "--queues") || (s.starts_with("-Q") && s.len() > 2) {
                Some("clearify-workerd sets the queues; use the group's `queues`")
            } else if matches!(name, "-c" | "--concurrency") || (s.starts_with("-c") && s.len() > 2)
            {
                Some("clearify-workerd sets the concurrency; use the group's `concurrency`")
            } else if matches!(name, "-n" | "--hostname") || (s.starts_with("-n") && s.len() > 2) {
                Some(
                    "clearify-workerd sets the node name (`<group>-<i>@<device_id>`), which must stay unique; set daemon.device_id instead",
                )
            } else if matches!(name, "-l" | "--loglevel") || (s.starts_with("-l") && s.len() > 2) {
                Some("clearify-workerd sets the log level; use celery.loglevel")
            } else {
                None
            };
            if let Some(why) = why {
                self.error(&a.span, &a.key, format!("`{s}` is not allowed: {why}"));
            }
        }
    }
}

/// What [`Checker::celery`] hands to the broker check (url_env lookup).
pub(super) struct CeleryParts {
    pub(super) config: Option<CeleryConfig>,
    pub(super) env_file_vars: BTreeMap<String, String>,
    pub(super) env_file_path: Option<PathBuf>,
}

//! `[daemon]`: socket, device_id, admin_group, require_limits,
//! log_rate_limit.

use std::path::PathBuf;

use super::super::keys::{DAEMON_KEYS, section_key_names};
use super::super::schema::*;
use super::{Checker, Val, join};

impl Checker<'_> {
    pub(super) fn daemon(&mut self, v: Option<&Val<'_>>) -> Option<DaemonConfig> {
        let mut socket = PathBuf::from(DEFAULT_SOCKET);
        let mut device_id = None;
        let mut admin_group = DEFAULT_ADMIN_GROUP.to_string();
        let mut require_limits = false;
        let mut log_rate_limit = DEFAULT_LOG_RATE_LIMIT;
        let mut ok = true;
        if let Some(v) = v
            && let Some(t) = self.table(v, "daemon")
        {
            for (k, v) in t.iter() {
                let name = k.get_ref().as_ref();
                let key = join("daemon", name);
                match name {
                    "socket" => match self.nonempty_string(v, &key) {
                        Some(s) => {
                            let p = self.resolve_path(&s);
                            let len = p.as_os_str().len();
                            if len > MAX_SOCKET_PATH {
                                self.error(
                                    &v.span(),
                                    &key,
                                    format!("the path is {len} bytes long; Unix socket paths are limited to {MAX_SOCKET_PATH}"),
                                );
                                ok = false;
                            }
                            socket = p;
                        }
                        None => ok = false,
                    },
                    "device_id" => match self.nonempty_string(v, &key) {
                        Some(s) => {
                            if s.chars().all(|c| {
                                c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'
                            }) {
                                device_id = Some(s);
                            } else {
                                self.error(
                                    &v.span(),
                                    &key,
                                    format!("invalid device_id `{s}`: use only letters, digits, `.`, `_` and `-` (it becomes part of the Celery node name)"),
                                );
                                ok = false;
                            }
                        }
                        None => ok = false,
                    },
                    "admin_group" => match self.nonempty_string(v, &key) {
                        Some(s) => admin_group = s,
                        None => ok = false,
                    },
                    "require_limits" => match self.boolean(v, &key) {
                        Some(b) => require_limits = b,
                        None => ok = false,
                    },
                    "log_rate_limit" => {
                        match self.int_in(v, &key, 0, i64::from(MAX_LOG_RATE_LIMIT)) {
                            Some(n) => log_rate_limit = u32::try_from(n).unwrap_or(u32::MAX),
                            None => ok = false,
                        }
                    }
                    _ => {
                        self.unknown_key(&k.span(), "daemon", name, &section_key_names(DAEMON_KEYS))
                    }
                }
            }
        }
        let device_id = match device_id {
            Some(d) => d,
            None => self.default_device_id()?,
        };
        ok.then_some(DaemonConfig {
            socket,
            device_id,
            admin_group,
            require_limits,
            log_rate_limit,
        })
    }

    /// hostname + "-" + the first 6 hex digits of the machine id.
    pub(super) fn default_device_id(&mut self) -> Option<String> {
        let Some(host) = self.env.hostname.clone() else {
            self.error(
                &(0..0),
                "daemon.device_id",
                "cannot determine the hostname for the default device_id; set [daemon].device_id",
            );
            return None;
        };
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let path = &self.env.machine_id_path;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let id = text.trim();
                if id.len() >= 6 && id.chars().take(6).all(|c| c.is_ascii_hexdigit()) {
                    Some(format!("{host}-{}", id[..6].to_ascii_lowercase()))
                } else {
                    self.warning(
                        &(0..0),
                        "daemon.device_id",
                        format!("{} does not hold a machine id; device_id defaults to the hostname `{host}` alone, which may not be unique on a shared broker; set [daemon].device_id", path.display()),
                    );
                    Some(host)
                }
            }
            Err(e) => {
                self.warning(
                    &(0..0),
                    "daemon.device_id",
                    format!("cannot read {}: {e}; device_id defaults to the hostname `{host}` alone, which may not be unique on a shared broker; set [daemon].device_id", path.display()),
                );
                Some(host)
            }
        }
    }
}

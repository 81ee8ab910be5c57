//! The config family: `config::load` of the `--config` file, and its
//! warnings.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use super::{Finding, whoami};
use crate::config::{self, Config, ConfigError, Severity};

/// `config::load` of `path`: ok (with each warning as a warn), or fail with
/// every diagnostic, or warn when this user may not read it. Also returns
/// the config for the later checks, or why they cannot run.
pub fn config_check(path: &Path) -> (Vec<Finding>, Result<Config, String>) {
    let shown = path.display();
    match config::load(path) {
        Ok(loaded) => {
            let c = &loaded.config;
            let instances: u32 = c.groups.iter().map(|g| g.instances).sum();
            let mut checks = vec![Finding::ok(
                "config",
                format!(
                    "{shown}: valid, {} group(s), {instances} instance(s)",
                    c.groups.len()
                ),
            )];
            if !loaded.warnings.is_empty() {
                checks.push(Finding::warn(
                    "config warnings",
                    diagnostics_detail(
                        &format!("{} warning(s) in {shown}", loaded.warnings.len()),
                        &loaded.warnings,
                    ),
                    format!("see workers.toml(5); check again with: clearify-workerd --check --config {shown}"),
                ));
            }
            (checks, Ok(loaded.config))
        }
        Err(ConfigError::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
            let why = format!("cannot read {shown}: {source}");
            (
                vec![Finding::warn(
                    "config",
                    format!("{why} (as {})", whoami()),
                    unreadable_hint(),
                )],
                Err(format!("{shown} is not readable by this user")),
            )
        }
        Err(ConfigError::Io { source, .. }) => {
            let hint = if source.kind() == io::ErrorKind::NotFound {
                format!(
                    "create it (the package installs an example as {}), or pass --config PATH",
                    config::DEFAULT_CONFIG_PATH
                )
            } else {
                "make it a readable file, or pass --config PATH".to_string()
            };
            (
                vec![Finding::fail(
                    "config",
                    format!("cannot read {shown}: {source}"),
                    hint,
                )],
                Err(format!("{shown} cannot be read")),
            )
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            let diags = e.diagnostics();
            let errors: Vec<_> = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .collect();
            // Only an env_file this user may not read: not the config's fault.
            let unreadable = !errors.is_empty()
                && !nix::unistd::geteuid().is_root()
                && errors.iter().all(|d| {
                    d.message.starts_with("cannot read") && d.message.contains("ermission denied")
                });
            if unreadable {
                let detail = diagnostics_detail(
                    &format!("cannot read the files the config names (as {})", whoami()),
                    diags,
                );
                return (
                    vec![Finding::warn("config", detail, unreadable_hint())],
                    Err("the env_file is not readable by this user".into()),
                );
            }
            let detail =
                diagnostics_detail(&format!("{} error(s) in {shown}", e.error_count()), diags);
            (
                vec![Finding::fail(
                    "config",
                    detail,
                    format!(
                        "fix the errors above (see workers.toml(5)); check again with: \
                         clearify-workerd --check --config {shown}"
                    ),
                )],
                Err(format!("{shown} is invalid")),
            )
        }
    }
}

fn diagnostics_detail(head: &str, diags: &[config::Diagnostic]) -> String {
    let mut s = head.to_string();
    for d in diags {
        let _ = write!(s, "\n{d}");
    }
    s
}

fn unreadable_hint() -> String {
    format!(
        "run doctor as root (sudo clearifyctl doctor) or as a member of the {} group, \
         which may read the config and its env_file",
        config::DEFAULT_ADMIN_GROUP
    )
}

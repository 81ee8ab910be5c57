//! workers.toml fixtures read from disk through `config::load`, turned into
//! a plan, and rendered the way `clearify-workerd --check` prints it.
//! Golden files: tests/fixtures/config/*.expected (regenerate by running
//! with UPDATE_GOLDEN=1 and review the diff).

use std::path::{Path, PathBuf};

use clearify_workerd::config::{self, ConfigError, Severity};
use clearify_workerd::plan;

fn fixture(name: &str) -> PathBuf {
    // Relative, as an operator would type it; cargo runs tests in the
    // package root.
    Path::new("tests/fixtures/config").join(name)
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden file {}: {e}", path.display()));
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

#[test]
fn valid_fixture_loads_builds_and_renders() {
    let dir = std::path::absolute("tests/fixtures/config").unwrap();
    let loaded = config::load(&fixture("valid.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let cfg = &loaded.config;
    assert_eq!(cfg.celery.command, dir.join("bin/celery"));
    assert_eq!(cfg.celery.workdir, dir);
    assert_eq!(cfg.celery.env_file, Some(dir.join("worker.env")));
    let broker = cfg.broker.as_ref().unwrap();
    assert_eq!(
        broker.url, "redis://:s3cret@127.0.0.1:6379/0",
        "url_env found in env_file"
    );

    let plan = plan::build(cfg);
    let text1 = &plan.groups[0].instances[0];
    assert_eq!(text1.env["DJANGO_SECRET_KEY"], "do-not-print-me");
    assert_eq!(text1.env["APP_MODE"], "production");
    assert_eq!(plan.groups[0].limits.memory_max, Some(1 << 30));
    assert_eq!(
        plan.groups[1].limits.memory_max,
        Some(512 << 20),
        "from [defaults]"
    );
    assert_eq!(plan.groups[1].instances[0].timing.heartbeat_timeout, None);

    let out = plan::render_check(&plan, cfg);
    assert!(
        !out.contains("s3cret") && !out.contains("do-not-print-me"),
        "a secret leaked:\n{out}"
    );
    // Make the golden file independent of the checkout and of PATH.
    let out = out
        .replace(&dir.display().to_string(), "<FIXTURES>")
        .replace(&format!("PATH={}", cfg.celery.worker_path), "PATH=<PATH>")
        .replace(
            &format!("PATH={}", plan::shell_quote(&cfg.celery.worker_path)),
            "PATH=<PATH>",
        );
    golden("valid.check.expected", &out);
}

#[test]
fn invalid_fixture_reports_every_error_with_positions() {
    let err = config::load(&fixture("invalid.toml")).unwrap_err();
    let ConfigError::Invalid { diagnostics } = &err else {
        panic!("expected diagnostics, got {err}");
    };
    assert!(
        diagnostics
            .iter()
            .all(|d| d.file == fixture("invalid.toml"))
    );
    assert!(diagnostics.iter().any(|d| d.severity == Severity::Warning));
    assert!(
        !err.to_string().contains("secret@"),
        "password leaked:\n{err}"
    );
    let dir = std::path::absolute("tests/fixtures/config").unwrap();
    let shown = format!("{err}\n").replace(&dir.display().to_string(), "<FIXTURES>");
    golden("invalid.expected", &shown);
}

#[test]
fn missing_file_error_names_the_path() {
    let err = config::load(&fixture("does-not-exist.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot read tests/fixtures/config/does-not-exist.toml: No such file or directory (os error 2)"
    );
}

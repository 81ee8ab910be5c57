//! The celery family: `celery -A <app> report` runs in the worker's
//! workdir, with its environment, as its user.

use std::fmt::Write as _;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::{Finding, whoami};
use crate::config::Config;
use crate::plan::{self, shell_quote};

/// How long `celery … report` may take.
pub const CELERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many lines of a failed command's output are shown.
const TAIL_LINES: usize = 12;

/// Runs the configured celery command with `-A <app> report` in the
/// workdir, with the first instance's environment, as the worker user when
/// doctor runs as root, within `timeout`: ok on exit 0, fail with the last
/// lines of its output otherwise.
pub fn celery_check(config: &Config, timeout: Duration) -> Finding {
    const NAME: &str = "celery";
    let built = plan::build(config);
    let Some(spec) = built.instances().next() else {
        return Finding::warn(
            NAME,
            "not checked: the config has no groups",
            "add a [group.NAME] section with queues = [...]",
        );
    };
    let app = config.celery.app.clone().unwrap_or_default();
    let mut args = config.celery.command_args.clone();
    args.extend(["-A".to_string(), app.clone(), "report".to_string()]);
    let run_as = match crate::sys::privdrop::resolve_user(spec.user.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            return Finding::fail(NAME, e.to_string(), "set [celery].user to the worker user");
        }
    };
    let who = run_as
        .as_ref()
        .map_or_else(whoami, |u| format!("user {}", u.name));
    let cmdline = std::iter::once(spec.program.to_string_lossy().into_owned())
        .chain(args.iter().cloned())
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let by_hand = match &run_as {
        Some(u) => format!(
            "cd {} && sudo -u {} {cmdline}",
            shell_quote(&spec.cwd.to_string_lossy()),
            shell_quote(&u.name)
        ),
        None => format!(
            "cd {} && {cmdline}",
            shell_quote(&spec.cwd.to_string_lossy())
        ),
    };

    let mut cmd = Command::new(&spec.program);
    cmd.args(&args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .process_group(0);
    let (reader, writer) = match io::pipe() {
        Ok(p) => p,
        Err(e) => {
            return Finding::fail(
                NAME,
                format!("cannot create a pipe: {e}"),
                "check the process limits",
            );
        }
    };
    let (out, err) = match (writer.try_clone(), writer) {
        (Ok(a), b) => (a, b),
        (Err(e), _) => {
            return Finding::fail(
                NAME,
                format!("cannot create a pipe: {e}"),
                "check the process limits",
            );
        }
    };
    cmd.stdout(out).stderr(err);
    if let Some(u) = &run_as {
        cmd.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
        let ids = crate::sys::privdrop::Ids::of(u);
        // SAFETY: runs between fork and exec; only system calls on data
        // prepared above, no allocation, no lock.
        unsafe {
            cmd.pre_exec(move || crate::sys::privdrop::drop_to(Some(&ids)));
        }
    }
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            drop(cmd); // closes our copies of the pipe's write end
            return Finding::fail(
                NAME,
                format!("cannot run {} as {who}: {e}", spec.program.display()),
                "install Celery for the worker user, or fix [celery].command (e.g. a venv's bin/celery, \
                 or [\"python3\", \"-m\", \"celery\"])",
            );
        }
    };
    drop(cmd); // the child holds the write ends now; EOF comes when it exits

    // Read everything in a thread, so a chatty command cannot block on a
    // full pipe, and a grandchild keeping the pipe open cannot hang doctor.
    let output = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    {
        let output = Arc::clone(&output);
        let mut reader = reader;
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output
                    .lock()
                    .expect("output lock")
                    .extend_from_slice(&buf[..n]);
            }
            let _ = done_tx.send(());
        });
    }

    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break Err(format!(
                    "timed out after {}; killed it",
                    humantime::format_duration(timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("waiting for it failed: {e}")),
        }
    };
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    let text = String::from_utf8_lossy(&output.lock().expect("output lock")).into_owned();
    let took = started.elapsed();

    let ran = format!("`{cmdline}` in {} as {who}", spec.cwd.display());
    match status {
        Ok(st) if st.success() => Finding::ok(
            NAME,
            format!(
                "{ran}: exit 0 in {:.1} s (app {app} imports)",
                took.as_secs_f64()
            ),
        ),
        Ok(st) => {
            let how = match (
                st.code(),
                std::os::unix::process::ExitStatusExt::signal(&st),
            ) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => st.to_string(),
            };
            Finding::fail(
                NAME,
                format!("{ran}: {how}{}", tail(&text)),
                format!(
                    "check that [celery].app = {app:?} imports from [celery].workdir with the worker's \
                     environment (env_file), and that Celery is installed for that user; \
                     run it by hand: {by_hand}"
                ),
            )
        }
        Err(why) => Finding::fail(
            NAME,
            format!("{ran}: {why}{}", tail(&text)),
            format!("a broker or import that hangs? run it by hand: {by_hand}"),
        ),
    }
}

/// The last non-empty lines of `text`, each on its own line after a
/// heading, or nothing when there is no output.
pub(super) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "; no output".to_string();
    }
    let start = lines.len().saturating_sub(TAIL_LINES);
    let mut s = format!("; last {} line(s) of its output:", lines.len() - start);
    for l in &lines[start..] {
        let _ = write!(s, "\n  {}", l.trim_end());
    }
    s
}

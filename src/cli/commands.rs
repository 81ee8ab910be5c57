//! Driving clearifyctl's commands: each subcommand's requests, the waits
//! of `stop` and `restart`, and what is printed. [`run`] is the whole
//! program after argument parsing.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::args::{Args, Command, Format, ScaleCount, usage_error};
use super::exit::{self, Failure, Outcome, unexpected};
use super::render;
use super::socket::Ctx;
use super::watch::{parse_watch, redraw};
use crate::VERSION;
use crate::control::protocol::{InstanceStatus, PROTOCOL_VERSION, Request, Response, Status};
use crate::model::{InstanceState, target};

/// Runs the command `cli` names; prints its output and errors, and returns
/// the exit code (see [`exit`]).
pub fn run(cli: Args) -> i32 {
    let ctx = Ctx {
        socket: super::resolve_socket(cli.socket.as_deref(), &cli.config),
        timeout: Duration::from_secs_f64(cli.request_timeout),
    };
    let outcome = match cli.command {
        Command::Logs {
            target,
            lines,
            follow,
            raw,
        } => logs(&ctx, target, lines, follow, raw),
        Command::Status {
            json,
            format,
            watch,
            targets,
        } => status(
            &ctx,
            if json { Format::Json } else { format },
            watch,
            targets,
        ),
        Command::Start { targets } => start(&ctx, targets),
        Command::Stop {
            targets,
            no_wait,
            timeout,
        } => stop(&ctx, targets, no_wait, timeout),
        Command::Restart {
            targets,
            rolling,
            no_wait,
            timeout,
        } => restart(&ctx, targets, rolling, no_wait, timeout),
        Command::Reload => reload(&ctx),
        Command::Scale { group, count } => scale(&ctx, group, count),
        Command::Test => test(&ctx),
        Command::Fleet {
            json,
            format,
            watch,
            args,
        } => super::fleet::run(&ctx, if json { Format::Json } else { format }, watch, args),
        Command::Version => version(&ctx),
        Command::Doctor => doctor(&cli.config, cli.socket.as_deref(), ctx.timeout),
    };
    let code = match outcome {
        Ok(code) => code,
        Err(f) => {
            // The message may quote the daemon, and through it a worker.
            eprintln!(
                "clearifyctl: {}",
                render::escape(&f.message, render::Newlines::Keep)
            );
            f.code
        }
    };
    let _ = std::io::stdout().flush();
    code
}

fn status(ctx: &Ctx, format: Format, watch: Option<String>, mut targets: Vec<String>) -> Outcome {
    let Some(watch) = watch else {
        let s = ctx.status(&targets)?;
        print_status(&s, format);
        return Ok(exit::OK);
    };
    // `--watch text` means a target, not an interval.
    let every = parse_watch(&watch).unwrap_or_else(|| {
        targets.insert(0, watch);
        Duration::from_secs(2)
    });
    redraw(
        every,
        format == Format::Json,
        "clearifyctl status",
        || ctx.status(&targets),
        |s| match format {
            Format::Prometheus => crate::metrics::status(s),
            _ => render::status_table(s),
        },
    )
}

fn print_status(s: &Status, format: Format) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(s).expect("status serialises")
        ),
        Format::Prometheus => print!("{}", crate::metrics::status(s)),
        Format::Text => print!("{}", render::status_table(s)),
    }
}

fn print_done(resp: Response) -> Result<(), Failure> {
    match resp {
        Response::Done { messages } => {
            for m in messages {
                println!("{}", render::escape(&m, render::Newlines::Keep));
            }
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

fn start(ctx: &Ctx, targets: Vec<String>) -> Outcome {
    print_done(ctx.call(Request::Start { targets })?)?;
    Ok(exit::OK)
}

fn scale(ctx: &Ctx, group: String, count: ScaleCount) -> Outcome {
    let count = match count {
        ScaleCount::Auto => None,
        ScaleCount::Count(n) => Some(n),
    };
    print_done(ctx.call(Request::Scale { group, count })?)?;
    Ok(exit::OK)
}

fn instances(s: &Status) -> impl Iterator<Item = &InstanceStatus> {
    s.groups.iter().flat_map(|g| g.instances.iter())
}

/// Polls status until `done` holds for every instance of `targets`.
/// `done` may fail early (e.g. crash-loop).
fn wait_for(
    ctx: &Ctx,
    targets: &[String],
    timeout: f64,
    what: &str,
    done: impl Fn(&InstanceStatus) -> Result<bool, String>,
) -> Outcome {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(timeout);
    loop {
        let s = ctx.status(targets)?;
        let mut pending = Vec::new();
        for i in instances(&s) {
            match done(i) {
                Ok(true) => {}
                Ok(false) => pending.push(format!("{} ({})", i.id, i.state)),
                Err(msg) => return Err(Failure::new(exit::REFUSED, msg)),
            }
        }
        if pending.is_empty() {
            return Ok(exit::OK);
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(
                exit::REFUSED,
                format!(
                    "timed out after {timeout}s waiting for {what}: {}",
                    pending.join(", ")
                ),
            ));
        }
        // Look often at first (a warm shutdown is often quick), then less.
        let pause = if started.elapsed() < Duration::from_secs(2) {
            50
        } else {
            200
        };
        std::thread::sleep(Duration::from_millis(pause));
    }
}

fn stop(ctx: &Ctx, targets: Vec<String>, no_wait: bool, timeout: f64) -> Outcome {
    print_done(ctx.call(Request::Stop {
        targets: targets.clone(),
    })?)?;
    if no_wait {
        return Ok(exit::OK);
    }
    wait_for(ctx, &targets, timeout, "instances to stop", |i| {
        Ok(i.state == InstanceState::Stopped)
    })?;
    println!("stopped: {}", targets.join(" "));
    Ok(exit::OK)
}

fn restart(ctx: &Ctx, targets: Vec<String>, rolling: bool, no_wait: bool, timeout: f64) -> Outcome {
    if rolling && (targets.len() != 1 || target::names_all(&targets)) {
        usage_error("restart --rolling takes exactly one GROUP");
    }
    // Remember the pids, to tell a restarted instance from one not yet
    // restarted. Instances that were stopped are not waited for.
    let before: HashMap<String, (Option<u32>, Option<InstanceState>)> = if no_wait {
        HashMap::new()
    } else {
        instances(&ctx.status(&targets)?)
            .map(|i| (i.id.clone(), (i.pid, Some(i.state))))
            .collect()
    };
    print_done(ctx.call(Request::Restart {
        targets: targets.clone(),
        rolling,
    })?)?;
    if no_wait {
        return Ok(exit::OK);
    }
    wait_for(ctx, &targets, timeout, "instances to run again", |i| {
        let (old_pid, old_state) = before.get(&i.id).cloned().unwrap_or((None, None));
        match i.state {
            InstanceState::CrashLoop => Err(format!(
                "{} is in crash-loop (last exit: {})",
                i.id,
                i.last_exit.as_deref().unwrap_or("unknown")
            )),
            InstanceState::Running => Ok(old_pid.is_none() || i.pid != old_pid),
            InstanceState::WaitingForBroker => Ok(true),
            InstanceState::Stopped => Ok(old_state == Some(InstanceState::Stopped)),
            _ => Ok(false),
        }
    })?;
    println!("running: {}", targets.join(" "));
    Ok(exit::OK)
}

fn reload(ctx: &Ctx) -> Outcome {
    match ctx.call(Request::Reload)? {
        Response::Reloaded(r) => {
            let text = render::reload_report(&r);
            if r.applied {
                print!("{text}");
                Ok(exit::OK)
            } else {
                eprint!("{text}");
                Ok(exit::REFUSED)
            }
        }
        other => Err(unexpected(&other)),
    }
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn logs(ctx: &Ctx, target: Option<String>, lines: usize, follow: bool, raw: bool) -> Outcome {
    // "all" is no filter.
    let target = target.filter(|t| t != target::ALL);
    if follow {
        let s = ctx.status(&[])?;
        if s.daemon.logs_to_journal {
            return follow_journal(&s, target.as_deref(), lines);
        }
    }
    let fetched = match ctx.call(Request::Logs {
        target: target.clone(),
        lines,
        since: None,
    })? {
        Response::Logs { lines } => lines,
        other => return Err(unexpected(&other)),
    };
    let mut since = fetched.last().map_or_else(now_epoch, |l| l.ts);
    let mut out = std::io::stdout().lock();
    for l in &fetched {
        let _ = writeln!(out, "{}", render::log_line_with(l, raw));
    }
    drop(out);
    if !follow {
        return Ok(exit::OK);
    }
    const BATCH: usize = 200;
    loop {
        let _ = std::io::stdout().flush();
        let batch = match ctx.call(Request::Logs {
            target: target.clone(),
            lines: BATCH,
            since: Some(since),
        })? {
            Response::Logs { lines } => lines,
            other => return Err(unexpected(&other)),
        };
        let mut out = std::io::stdout().lock();
        for l in &batch {
            if writeln!(out, "{}", render::log_line_with(l, raw)).is_err() {
                return Ok(exit::OK); // stdout closed (e.g. `| head`)
            }
            since = since.max(l.ts);
        }
        drop(out);
        if batch.len() < BATCH {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `logs -f` under journald: exec journalctl with the matching field.
fn follow_journal(s: &Status, target: Option<&str>, lines: usize) -> Outcome {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args(["-f", "-u", "clearify-workerd", "-n", &lines.to_string()]);
    if let Some(t) = target {
        if s.groups.iter().any(|g| g.name == t) {
            cmd.arg(format!("CLEARIFY_GROUP={t}"));
        } else if instances(s).any(|i| i.id == t) {
            cmd.arg(format!("CLEARIFY_INSTANCE={t}"));
        } else {
            return Err(Failure::new(
                exit::REFUSED,
                format!("unknown target {t:?}: not a group or instance (see clearifyctl status)"),
            ));
        }
    }
    let err = cmd.exec();
    Err(Failure::new(
        exit::REFUSED,
        format!("cannot run journalctl: {err}"),
    ))
}

fn test(ctx: &Ctx) -> Outcome {
    match ctx.call(Request::Test)? {
        Response::Test(t) => {
            print!("{}", render::test_report(&t));
            Ok(if t.reachable { exit::OK } else { exit::REFUSED })
        }
        other => Err(unexpected(&other)),
    }
}

fn doctor(config: &Path, socket: Option<&Path>, timeout: Duration) -> Outcome {
    let mut host = super::doctor::Host::new(config, socket);
    host.request_timeout = timeout;
    let findings = super::doctor::run(&host);
    print!("{}", super::doctor::render(&findings));
    Ok(super::doctor::exit_code(&findings))
}

fn version(ctx: &Ctx) -> Outcome {
    println!("clearifyctl {VERSION} (protocol {PROTOCOL_VERSION})");
    match ctx.call(Request::Version) {
        Ok(Response::Version { version, protocol }) => {
            let shown = render::escape(&version, render::Newlines::Escape);
            println!("clearify-workerd {shown} (protocol {protocol})");
            if version != VERSION || protocol != PROTOCOL_VERSION {
                eprintln!(
                    "warning: clearifyctl {VERSION} and clearify-workerd {shown} differ; \
                     restart the daemon after an upgrade (systemctl restart clearify-workerd)"
                );
            }
            Ok(exit::OK)
        }
        Ok(other) => Err(unexpected(&other)),
        Err(f) => Err(f),
    }
}

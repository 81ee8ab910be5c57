//! clearify-workerd: supervise Celery workers per queue group.
//!
//! Thin: parse the arguments, set up logging, and call the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use clearify_workerd::{app, config, logs, plan};

/// Supervise Celery workers: one or more `celery worker` processes per queue
/// group, gated on the Redis broker, restarted with backoff, limited with
/// cgroup v2 and logged to journald.
#[derive(Debug, Parser)]
#[command(
    name = "clearify-workerd",
    version,
    after_help = "\
Examples:
  clearify-workerd --check                      validate /etc/clearify/workers.toml and print the plan
  clearify-workerd --config ./workers.toml      run in the foreground with another config

Under systemd: systemctl enable --now clearify-workerd; journalctl -u clearify-workerd.
Control it with clearifyctl (status, start, stop, restart, reload, logs, test).

Signals: SIGTERM/SIGINT stop all workers (warm shutdown: running tasks finish)
and exit 0; SIGHUP reloads the config (a broken config is rejected and the old
one keeps running).

Exit status: 0 stopped cleanly or config valid; 1 invalid config or start-up
failure (the message says which file, line and key, or what to fix).

See clearify-workerd(8) and workers.toml(5)."
)]
struct Args {
    /// The configuration file.
    #[arg(long, short = 'c', value_name = "PATH", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,

    /// Validate the config, print each worker's exact command line, cwd,
    /// user and limits, and exit: 0 when valid, 1 with every error otherwise.
    #[arg(long, short = 't')]
    check: bool,

    /// Where the daemon's own logs go: journald (native, with fields),
    /// stderr (human-readable), or auto (journald when stderr is the journal,
    /// i.e. under systemd).
    #[arg(long, value_enum, default_value_t = Target::Auto, value_name = "TARGET")]
    log_target: Target,

    /// Where the daemon records the workers it starts (pid, start time,
    /// node), so that after a crash the next daemon stops them before it
    /// starts its own. Default: `workers/` in the control socket's directory
    /// (/run/clearify-workerd/workers).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Target {
    Auto,
    Journal,
    Stderr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return check(&args.config);
    }
    let log_target = match args.log_target {
        Target::Auto => logs::LogTarget::Auto,
        Target::Journal => logs::LogTarget::Journal,
        Target::Stderr => logs::LogTarget::Stderr,
    };
    // Descriptors the daemon inherited (other than 0, 1, 2) must not reach
    // workers: mark them close-on-exec before anything else runs.
    cloexec_inherited_fds();
    if let Err(e) = logs::init_tracing(log_target) {
        eprintln!("clearify-workerd: cannot set up logging: {e:#}");
        return ExitCode::FAILURE;
    }
    // One thread, plus a blocking-pool thread started now and kept for the
    // daemon's life: tokio panics when spawn_blocking finds no thread and
    // cannot start one (a fork bomb of the workers' uid, a full pids
    // limit), but queues the job when one exists. The kill path itself
    // needs no thread at all.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_keep_alive(Duration::from_secs(100 * 365 * 24 * 3600))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clearify-workerd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = rt.block_on(rt.spawn_blocking(|| ())) {
        eprintln!("clearify-workerd: cannot start the runtime's blocking thread: {e}");
        return ExitCode::FAILURE;
    }
    let opts = app::Options {
        config: args.config,
        log_target,
        state_dir: args.state_dir,
    };
    // Signals (SIGTERM, SIGINT, SIGHUP) are the daemon's own: nothing else
    // stops it.
    let code = rt.block_on(app::run(
        opts,
        app::Host::system(),
        std::future::pending::<()>(),
    ));
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Set FD_CLOEXEC on every open descriptor above 2, as listed in
/// /proc/self/fd (before any other thread exists).
fn cloexec_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on an integer; a closed fd (the directory's own)
        // just fails.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            let p = plan::build(&loaded.config);
            print!("{}", plan::render_check(&p, &loaded.config));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

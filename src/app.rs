//! The daemon's start-up order and wiring.
//!
//! 1. Signal handlers first, so a SIGHUP or SIGTERM at an odd moment never
//!    kills the daemon with the default action.
//! 2. The config, validated as a whole; errors name file, line and key.
//! 3. The worker user (never root).
//! 4. The cgroup subtree: the daemon moves itself into `supervisor/` before
//!    anything is started and before READY=1.
//! 5. Child subreaper, then the reaper task.
//! 6. The control socket (binding it proves no other daemon serves it);
//!    then the workers a previous daemon left running (it was SIGKILLed,
//!    panicked or was OOM killed) are stopped warmly, found through the run
//!    records in the state directory and the cgroup leaves, before any new
//!    worker starts; then READY=1, so boot is never stalled by a broker
//!    that is not up yet (the broker wait shows in STATUS=).
//! 7. The supervisor actor, until shutdown.

use std::path::{Path, PathBuf};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::config;
use crate::control::server::{self, Authorizer};
use crate::logs::{self, Sink};
use crate::supervisor::{Msg, Setup, Supervisor};
use crate::sys::cgroup;
use crate::sys::notify::Notifier;
use crate::sys::process;

/// Where the delegated cgroup v2 tree is looked for.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What the daemon is started with.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub log_target: logs::LogTarget,
    /// Where runs are recorded for the next daemon; `None`: `workers/`
    /// next to the control socket.
    pub state_dir: Option<PathBuf>,
}

/// Run the daemon until it is told to stop. Returns the process exit code.
pub async fn run(opts: Options) -> i32 {
    // 1. Signals.
    let (tx, rx) = mpsc::channel::<Msg>(1024);
    if let Err(e) = spawn_signal_handlers(tx.clone()) {
        error!(error = %e, "cannot install signal handlers: {e}");
        return 1;
    }

    // 2. Config.
    let loaded = match config::load(&opts.config) {
        Ok(l) => l,
        Err(e) => {
            error!("invalid configuration; not starting:\n{e}");
            return 1;
        }
    };
    for w in &loaded.warnings {
        warn!("{w}");
    }
    let config = loaded.config;
    let has_groups = !config.groups.is_empty();

    // 3. User.
    let run_as = match process::resolve_user(config.celery.user.as_deref()) {
        Ok(u) => u,
        Err(e) if has_groups => {
            error!("{e}");
            return 1;
        }
        Err(e) => {
            warn!("{e} (no groups are configured, so nothing runs yet)");
            None
        }
    };

    // 4. cgroups.
    let availability = cgroup::setup(Path::new(CGROUP_ROOT));
    let limits_line = availability.status_line();
    if let Some(line) = availability.log_line() {
        warn!("{line}");
    }
    let cgroups = match availability.require(config.daemon.require_limits) {
        Ok(t) => t,
        Err(e) => {
            error!("{e} ([daemon].require_limits = true)");
            return 1;
        }
    };
    if let Some(t) = &cgroups {
        for w in t.setup_warnings() {
            warn!("{w}");
        }
        info!(cgroup = %t.dir().display(), "resource limits are on (cgroup {})", t.dir().display());
    }

    // 5. Reaping.
    // Before any worker exists: orphans must come back to the daemon, or
    // they would escape supervision.
    if let Err(e) = process::become_subreaper() {
        error!(error = %e, "cannot become a child subreaper ({e}): orphaned worker processes would escape supervision; not starting");
        return 1;
    }
    let (exit_tx, exit_rx) = mpsc::unbounded_channel();
    if let Err(e) = process::spawn_reaper(exit_tx) {
        error!(error = %e, "cannot watch for worker exits: {e}");
        return 1;
    }

    // 6. Control sockets: the reader socket (the daemon's group) and, when
    // the admin group exists, the admin socket next to it (that group).
    let socket = config.daemon.socket.clone();
    let admin_group = config.daemon.admin_group.clone();
    let auth = match Authorizer::for_current_process(Some(&admin_group)) {
        Ok(a) => a,
        Err(
            e @ (server::ControlError::UnknownGroup { .. }
            | server::ControlError::GroupLookup { .. }),
        ) if admin_group == config::DEFAULT_ADMIN_GROUP => {
            // The built-in default on a machine without that group (not
            // installed from the package): root and the daemon's own user
            // can still act. Fewer admins, never more.
            warn!(
                "{e}: {} has no group {admin_group:?}, so only root and the daemon's user may start, stop, restart or reload (create it with `groupadd --system {admin_group}` and restart the daemon to let its members)",
                config.path.display()
            );
            Authorizer::new(nix::unistd::geteuid(), None)
        }
        Err(e) => {
            error!(
                "{}: [daemon].admin_group = {admin_group:?}: {e}; not starting",
                config.path.display()
            );
            return 1;
        }
    };
    let mut listeners = Vec::new();
    match server::bind(&socket, None) {
        Ok(l) => listeners.push(l),
        Err(e) => {
            error!("{e}");
            return 1;
        }
    }
    let admin_socket = server::admin_socket_path(&socket);
    if auth.admin_gid.is_none()
        && let Err(e) = server::clear_stale(&admin_socket)
    {
        // A left-over admin.sock of a run that had the group.
        warn!("{e}");
    }
    if let Some(gid) = auth.admin_gid {
        match server::bind(&admin_socket, Some(gid)) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                error!("admin socket ([daemon].admin_group = {admin_group:?}): {e}");
                // The reader socket was just bound by us: leave no file.
                drop(listeners);
                let _ = std::fs::remove_file(&socket);
                return 1;
            }
        }
    }
    // 6b. Workers left by a previous daemon (SIGKILLed, panicked, OOM
    // killed): stopped warmly before any of ours starts, so no node name
    // runs twice. Only now: the bind above proved no other daemon serves
    // this socket, so they are not a live daemon's workers.
    let notifier = Notifier::from_env();
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| process::records::default_dir(&socket));
    let records = match process::records::Records::open(&state_dir) {
        Ok(r) => Some(r),
        Err(e) => {
            error!(
                "{e}; cannot record runs, so a daemon started after a crash of this one cannot find its workers"
            );
            None
        }
    };
    let longest_stop = crate::plan::build(&config)
        .instances()
        .map(|s| s.timing.stop_timeout)
        .max()
        .unwrap_or(std::time::Duration::from_secs(10));
    stop_previous_workers(records.as_ref(), cgroups.as_ref(), longest_stop, &notifier).await;

    let (ctl_tx, mut ctl_rx) = mpsc::channel(64);
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server_task = tokio::spawn(server::serve_sockets(
        listeners,
        auth,
        ctl_tx,
        async {
            let _ = server_stopped.await;
        },
        server::ServeOptions::default(),
    ));
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = ctl_rx.recv().await {
                if tx.send(Msg::Control(m)).await.is_err() {
                    return;
                }
            }
        });
    }

    let sink = match opts.log_target {
        logs::LogTarget::Journal => Sink::Journal(logs::JournalSender::new()),
        logs::LogTarget::Stderr => Sink::Stderr,
        logs::LogTarget::Auto => Sink::auto(),
    };
    info!(
        version = crate::VERSION,
        config = %config.path.display(),
        socket = %socket.display(),
        device_id = %config.daemon.device_id,
        groups = config.groups.len(),
        "clearify-workerd {} started: config {}, socket {}, device {}, {} group(s)",
        crate::VERSION,
        config.path.display(),
        socket.display(),
        config.daemon.device_id,
        config.groups.len()
    );
    notifier.ready();

    // 7. The actor.
    let sup = Supervisor::new(
        Setup {
            config,
            run_as,
            cgroups,
            limits_line,
            sink,
            notifier,
            records,
        },
        tx,
    );
    let code = sup.run(rx, exit_rx).await;
    let _ = stop_server.send(());
    let _ = server_task.await;
    code
}

/// Stop the workers a previous daemon left: those its run records name,
/// and (with limits on) whatever is still in an instance leaf of the
/// delegated tree. Warm first (SIGTERM, stop_timeout), then SIGKILL.
async fn stop_previous_workers(
    records: Option<&process::records::Records>,
    cgroups: Option<&cgroup::CgroupTree>,
    stop_timeout: std::time::Duration,
    notifier: &Notifier,
) {
    if let Some(r) = records {
        process::records::stop_previous(r, |d| {
            notifier.extend_timeout(d);
        })
        .await;
    }
    if let Some(t) = cgroups {
        cgroup::stop_leftover_leaves(t, stop_timeout).await;
    }
}

fn spawn_signal_handlers(tx: mpsc::Sender<Msg>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = term.recv() => { info!("SIGTERM: stopping"); Msg::Shutdown }
                _ = int.recv() => { info!("SIGINT: stopping"); Msg::Shutdown }
                _ = hup.recv() => { info!("SIGHUP: reloading the config"); Msg::Reload }
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

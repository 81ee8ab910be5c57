//! The daemon's start-up order and wiring, as tokio's mini-redis
//! `server::run`: [`run`] takes the options, the [`Host`] (where start-up
//! meets the machine) and a `shutdown` future, so a test can start the
//! daemon in-process and stop it. The start-up is one straight line; each
//! step fails with a [`StartError`] that says what it was doing (as
//! firecracker's jailer does), and nothing after a failed step runs.
//!
//! 1. Signal handlers first, so a SIGHUP or SIGTERM at an odd moment never
//!    kills the daemon with the default action. (SIGTERM and SIGINT stop
//!    the daemon as `shutdown` does; SIGHUP reloads.)
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
//! 7. The supervisor actor, until it stops (a signal, `shutdown`, or a
//!    fatal broker condition); then the control server.

use std::future::Future;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::control::server::{self, Authorizer, ControlError};
use crate::logs::{self, LogStore, Sink};
use crate::supervisor::effects::SysEffects;
use crate::supervisor::{Msg, Setup, Supervisor};
use crate::sys::cgroup::{self, CgroupError, CgroupTree};
use crate::sys::notify::Notifier;
use crate::sys::privdrop::{self, RunAs, UserError};
use crate::sys::process;

/// What the daemon is started with.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub log_target: logs::LogTarget,
    /// Where runs are recorded for the next daemon; `None`: `workers/`
    /// next to the control socket.
    pub state_dir: Option<PathBuf>,
}

/// Where start-up meets the machine.
pub struct Host {
    /// The cgroup v2 mount ([`cgroup::DEFAULT_ROOT`] on a real host).
    pub cgroup_root: PathBuf,
    /// systemd's notification socket (from `$NOTIFY_SOCKET`).
    pub notifier: Notifier,
}

impl Host {
    /// The machine the daemon runs on.
    pub fn system() -> Host {
        Host {
            cgroup_root: PathBuf::from(cgroup::DEFAULT_ROOT),
            notifier: Notifier::from_env(),
        }
    }
}

/// Why the daemon did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("invalid configuration; not starting:\n{0}")]
    Config(config::ConfigError),
    #[error("{0}")]
    User(UserError),
    #[error("{0} ([daemon].require_limits = true)")]
    LimitsRequired(CgroupError),
    #[error(
        "cannot become a child subreaper ({0}): orphaned worker processes would escape supervision; not starting"
    )]
    Subreaper(std::io::Error),
    #[error("cannot watch for worker exits: {0}")]
    Reaper(std::io::Error),
    #[error("{}: [daemon].admin_group = {group:?}: {source}; not starting", config.display())]
    AdminGroup {
        config: PathBuf,
        group: String,
        source: ControlError,
    },
    #[error("{0}")]
    Socket(ControlError),
    #[error("admin socket ([daemon].admin_group = {group:?}): {source}")]
    AdminSocket { group: String, source: ControlError },
}

/// Run the daemon until it stops: on SIGTERM or SIGINT, when `shutdown`
/// completes, or on a fatal broker condition. Returns the process exit
/// code (1 when start-up failed; the error is logged).
pub async fn run(opts: Options, host: Host, shutdown: impl Future) -> i32 {
    let (tx, rx) = mpsc::channel::<Msg>(1024);
    match start(&opts, host, tx.clone()).await {
        Ok(daemon) => daemon.serve(opts, rx, tx, shutdown).await,
        Err(e) => {
            error!("{e}");
            1
        }
    }
}

/// A daemon whose start-up succeeded (steps 1 to 6), before READY=1.
struct Started {
    config: Config,
    run_as: Option<RunAs>,
    cgroups: Option<CgroupTree>,
    limits_line: String,
    exits: mpsc::UnboundedReceiver<process::Exit>,
    listeners: Vec<UnixListener>,
    auth: Authorizer,
    notifier: Notifier,
    records: Option<process::records::Records>,
}

/// Steps 1 to 6, in order.
async fn start(opts: &Options, host: Host, tx: mpsc::Sender<Msg>) -> Result<Started, StartError> {
    // 1. Signals.
    spawn_signal_handlers(tx).map_err(StartError::Signals)?;
    // 2. Config.
    let config = load_config(&opts.config)?;
    // 3. User.
    let run_as = worker_user(&config)?;
    // 4. cgroups.
    let (cgroups, limits_line) = limits(&host.cgroup_root, &config)?;
    // 5. Reaping, before any worker exists: orphans must come back to the
    // daemon, or they would escape supervision.
    process::become_subreaper().map_err(StartError::Subreaper)?;
    let (exit_tx, exits) = mpsc::unbounded_channel();
    process::spawn_reaper(exit_tx).map_err(StartError::Reaper)?;
    // 6. Control sockets: the reader socket (the daemon's group) and, when
    // the admin group exists, the admin socket next to it (that group).
    let auth = authorizer(&config)?;
    let listeners = bind_sockets(&config, &auth)?;
    // 6b. Workers left by a previous daemon (SIGKILLed, panicked, OOM
    // killed): stopped warmly before any of ours starts, so no node name
    // runs twice. Only now: the bind above proved no other daemon serves
    // this socket, so they are not a live daemon's workers.
    let records = open_records(opts, &config);
    let notifier = host.notifier;
    stop_previous_workers(&config, records.as_ref(), cgroups.as_ref(), &notifier).await;
    Ok(Started {
        config,
        run_as,
        cgroups,
        limits_line,
        exits,
        listeners,
        auth,
        notifier,
        records,
    })
}

impl Started {
    /// Step 7: the control server and the actor, until the actor stops.
    async fn serve(
        self,
        opts: Options,
        rx: mpsc::Receiver<Msg>,
        tx: mpsc::Sender<Msg>,
        shutdown: impl Future,
    ) -> i32 {
        let (ctl_tx, mut ctl_rx) = mpsc::channel(64);
        let (stop_server, server_stopped) = oneshot::channel::<()>();
        let server_task = tokio::spawn(server::serve_sockets(
            self.listeners,
            self.auth,
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
        let config = self.config;
        let socket = &config.daemon.socket;
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
        self.notifier.ready();

        let logs = LogStore::new();
        let effects = SysEffects::new(
            self.run_as,
            self.cgroups,
            sink,
            logs.clone(),
            self.notifier,
            self.records,
        )
        .with_log_rate_limit(config.daemon.log_rate_limit);
        let setup = Setup {
            config,
            limits_line: self.limits_line,
            logs,
            effects,
        };
        let actor = Supervisor::new(setup, tx.clone()).run(rx, self.exits);
        tokio::pin!(actor);
        let code = tokio::select! {
            code = &mut actor => code,
            _ = shutdown => {
                info!("shutdown requested: stopping");
                let _ = tx.send(Msg::Shutdown).await;
                actor.await
            }
        };
        let _ = stop_server.send(());
        let _ = server_task.await;
        code
    }
}

/// Step 2: the config, its warnings logged.
fn load_config(path: &Path) -> Result<Config, StartError> {
    let loaded = config::load(path).map_err(StartError::Config)?;
    for w in &loaded.warnings {
        warn!("{w}");
    }
    Ok(loaded.config)
}

/// Step 3: the user workers run as. Without groups a bad user is only a
/// warning: nothing runs yet.
fn worker_user(config: &Config) -> Result<Option<RunAs>, StartError> {
    match privdrop::resolve_user(config.celery.user.as_deref()) {
        Ok(u) => Ok(u),
        Err(e) if !config.groups.is_empty() => Err(StartError::User(e)),
        Err(e) => {
            warn!("{e} (no groups are configured, so nothing runs yet)");
            Ok(None)
        }
    }
}

/// Step 4: the delegated cgroup tree, or `None` when limits are off (and
/// not required); with the status line ("on" or "off (reason)").
fn limits(root: &Path, config: &Config) -> Result<(Option<CgroupTree>, String), StartError> {
    let availability = cgroup::setup(root);
    let limits_line = availability.status_line();
    if let Some(line) = availability.log_line() {
        warn!("{line}");
    }
    let cgroups = availability
        .require(config.daemon.require_limits)
        .map_err(StartError::LimitsRequired)?;
    if let Some(t) = &cgroups {
        for w in t.setup_warnings() {
            warn!("{w}");
        }
        info!(cgroup = %t.dir().display(), "resource limits are on (cgroup {})", t.dir().display());
    }
    Ok((cgroups, limits_line))
}

/// Step 6: who may do what on the control sockets.
fn authorizer(config: &Config) -> Result<Authorizer, StartError> {
    let admin_group = &config.daemon.admin_group;
    match Authorizer::for_current_process(Some(admin_group)) {
        Ok(a) => Ok(a),
        Err(e @ (ControlError::UnknownGroup { .. } | ControlError::GroupLookup { .. }))
            if admin_group == config::DEFAULT_ADMIN_GROUP =>
        {
            // The built-in default on a machine without that group (not
            // installed from the package): root and the daemon's own user
            // can still act. Fewer admins, never more.
            warn!(
                "{e}: {} has no group {admin_group:?}, so only root and the daemon's user may start, stop, restart or reload (create it with `groupadd --system {admin_group}` and restart the daemon to let its members)",
                config.path.display()
            );
            Ok(Authorizer::new(nix::unistd::geteuid(), None))
        }
        Err(source) => Err(StartError::AdminGroup {
            config: config.path.clone(),
            group: admin_group.clone(),
            source,
        }),
    }
}

/// Step 6: bind the reader socket and, with an admin group, the admin
/// socket; a stale admin socket of a run that had the group is removed.
fn bind_sockets(config: &Config, auth: &Authorizer) -> Result<Vec<UnixListener>, StartError> {
    let socket = &config.daemon.socket;
    let reader = server::bind(socket, None).map_err(StartError::Socket)?;
    let admin_socket = server::admin_socket_path(socket);
    let Some(gid) = auth.admin_gid else {
        if let Err(e) = server::clear_stale(&admin_socket) {
            warn!("{e}");
        }
        return Ok(vec![reader]);
    };
    match server::bind(&admin_socket, Some(gid)) {
        Ok(admin) => Ok(vec![reader, admin]),
        Err(source) => {
            // The reader socket was just bound by us: leave no file.
            drop(reader);
            let _ = std::fs::remove_file(socket);
            Err(StartError::AdminSocket {
                group: config.daemon.admin_group.clone(),
                source,
            })
        }
    }
}

/// Step 6b: the run records; without them the daemon still runs, but one
/// started after a crash of this one cannot find its workers.
fn open_records(opts: &Options, config: &Config) -> Option<process::records::Records> {
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| process::records::default_dir(&config.daemon.socket));
    match process::records::Records::open(&state_dir) {
        Ok(r) => Some(r),
        Err(e) => {
            error!(
                "{e}; cannot record runs, so a daemon started after a crash of this one cannot find its workers"
            );
            None
        }
    }
}

/// Step 6b: stop the workers a previous daemon left: those its run records
/// name, and (with limits on) whatever is still in an instance leaf of the
/// delegated tree. Warm first (SIGTERM, the longest stop_timeout), then
/// SIGKILL.
async fn stop_previous_workers(
    config: &Config,
    records: Option<&process::records::Records>,
    cgroups: Option<&CgroupTree>,
    notifier: &Notifier,
) {
    if let Some(r) = records {
        process::records::stop_previous(r, |d| {
            notifier.extend_timeout(d);
        })
        .await;
    }
    if let Some(t) = cgroups {
        let stop_timeout = crate::plan::build(config)
            .instances()
            .map(|s| s.timing.stop_timeout)
            .max()
            .unwrap_or(std::time::Duration::from_secs(10));
        cgroup::stop_leftover_leaves(t, stop_timeout).await;
    }
}

/// Step 1: SIGTERM and SIGINT stop the daemon, SIGHUP reloads the config.
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

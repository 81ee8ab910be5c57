//! A fake supervisor behind the real control server, shared by
//! tests/control.rs and tests/clearifyctl.rs. It answers every request the
//! way the daemon's supervisor would, from a small in-memory model:
//! groups `text` (text-1, text-2) and `webhook` (webhook-1).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clearify_workerd::control::protocol::{
    BrokerState, BrokerStatus, DaemonStatus, ErrorKind, GroupStatus, HeartbeatSeen, InstanceState,
    InstanceStatus, LogLine, QueueStatus, ReloadReport, Request, Response, Status, TestReport,
    TestStep,
};
use clearify_workerd::control::server::{
    self, Authorizer, ControlMsg, Peer, ServeOptions, serve_with,
};
use clearify_workerd::model::target::{self, Member};
use tokio::sync::{mpsc, oneshot};

/// How long the fake takes, by default, to stop or restart an instance.
pub const TRANSITION: Duration = Duration::from_millis(300);

pub struct FakeState {
    pub status: Mutex<Status>,
    /// Every request that reached the "supervisor", with its peer.
    pub seen: Mutex<Vec<(Request, Peer)>>,
    pub reload_ok: AtomicBool,
    pub broker_ok: AtomicBool,
    pub logs_to_journal: AtomicBool,
    pub daemon_version: Mutex<String>,
    pub next_pid: AtomicU32,
    pub logs: Mutex<Vec<LogLine>>,
    /// How long start/stop/restart take, in milliseconds.
    pub transition_ms: AtomicU64,
    /// When set, the state start/restart end in (e.g. "crash-loop").
    pub end_override: Mutex<Option<InstanceState>>,
}

pub fn instance(id: &str, pid: u32) -> InstanceStatus {
    InstanceStatus {
        id: id.into(),
        node: format!("{id}@dev"),
        state: InstanceState::Running,
        pid: Some(pid),
        uptime_secs: Some(11_520),
        restarts: 1,
        last_exit: None,
        memory_bytes: Some(85 * 1024 * 1024),
        cpu_percent: Some(1.5),
        cpu_seconds: Some(42.25),
        heartbeat_age_secs: Some(2.0),
        active: Some(0),
        processed: Some(10),
        pinned: false,
    }
}

pub fn canned_status() -> Status {
    Status {
        daemon: DaemonStatus {
            version: clearify_workerd::VERSION.into(),
            pid: 4321,
            uptime_secs: 3723,
            device_id: "dev-test".into(),
            config: "/etc/clearify/workers.toml".into(),
            broker: BrokerStatus {
                state: BrokerState::Ok,
                url: "redis://:***@127.0.0.1:6379/0".into(),
                error: None,
                since: Some(1.7e9),
                latency_ms: Some(0.3),
            },
            limits: "on".into(),
            summary: "3/3 running".into(),
            logs_to_journal: false,
            rss_bytes: Some(6 * 1024 * 1024),
        },
        groups: vec![
            GroupStatus {
                name: "text".into(),
                queues: vec![
                    QueueStatus {
                        name: "text".into(),
                        backlog: Some(12),
                    },
                    QueueStatus {
                        name: "text.priority".into(),
                        backlog: None,
                    },
                ],
                instances: vec![instance("text-1", 101), instance("text-2", 102)],
                autoscale: None,
            },
            GroupStatus {
                name: "webhook".into(),
                queues: vec![QueueStatus {
                    name: "webhook".into(),
                    backlog: Some(0),
                }],
                instances: vec![instance("webhook-1", 201)],
                autoscale: None,
            },
        ],
    }
}

impl FakeState {
    fn new() -> Self {
        let logs = (0..30)
            .map(|n| LogLine {
                ts: 1_700_000_000.0 + n as f64,
                instance: if n % 2 == 0 { "text-1" } else { "webhook-1" }.into(),
                stream: if n % 5 == 0 { "stderr" } else { "stdout" }.into(),
                text: format!("line {n}"),
            })
            .collect();
        FakeState {
            status: Mutex::new(canned_status()),
            seen: Mutex::new(Vec::new()),
            reload_ok: AtomicBool::new(true),
            broker_ok: AtomicBool::new(true),
            logs_to_journal: AtomicBool::new(false),
            daemon_version: Mutex::new(clearify_workerd::VERSION.into()),
            next_pid: AtomicU32::new(1000),
            logs: Mutex::new(logs),
            transition_ms: AtomicU64::new(TRANSITION.as_millis() as u64),
            end_override: Mutex::new(None),
        }
    }

    /// Instance ids a target list names (resolved as the daemon does), or
    /// the first unknown name.
    fn resolve(&self, targets: &[String]) -> Result<Vec<String>, String> {
        let st = self.status.lock().unwrap();
        let members: Vec<Member> = st
            .groups
            .iter()
            .flat_map(|g| {
                g.instances.iter().map(|i| Member {
                    id: &i.id,
                    group: &g.name,
                })
            })
            .collect();
        let resolved = target::resolve_all(targets, &members, &[])?;
        Ok(target::select(&resolved, &members)
            .into_iter()
            .map(String::from)
            .collect())
    }

    pub fn set(&self, id: &str, f: impl FnOnce(&mut InstanceStatus)) {
        let mut st = self.status.lock().unwrap();
        for g in &mut st.groups {
            for i in &mut g.instances {
                if i.id == id {
                    f(i);
                    return;
                }
            }
        }
    }

    pub fn push_log(&self, instance: &str, text: &str) {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        self.logs.lock().unwrap().push(LogLine {
            ts,
            instance: instance.into(),
            stream: "stdout".into(),
            text: text.into(),
        });
    }

    fn answer(self: &Arc<Self>, request: &Request) -> Response {
        match request {
            Request::Status { targets } => {
                let mut st = self.status.lock().unwrap().clone();
                st.daemon.logs_to_journal = self.logs_to_journal.load(Ordering::SeqCst);
                if !targets.is_empty() {
                    for g in &mut st.groups {
                        let whole = targets.contains(&g.name);
                        g.instances.retain(|i| whole || targets.contains(&i.id));
                    }
                    st.groups.retain(|g| !g.instances.is_empty());
                    if st.groups.is_empty() {
                        return Response::error(
                            ErrorKind::UnknownTarget,
                            format!("unknown target: {}", targets.join(" ")),
                        );
                    }
                }
                Response::Status(st)
            }
            Request::Scale { group, count } => Response::Done {
                messages: vec![format!("{group}: scale {count:?}")],
            },
            Request::Start { targets }
            | Request::Stop { targets }
            | Request::Restart { targets, .. } => {
                let ids = match self.resolve(targets) {
                    Ok(ids) => ids,
                    Err(t) => {
                        return Response::error(
                            ErrorKind::UnknownTarget,
                            format!("unknown target {t:?}: not a group or instance"),
                        );
                    }
                };
                use InstanceState::{CrashLoop, Running, Starting, Stopped, Stopping};
                let (verb, mid, end) = match request {
                    Request::Start { .. } => ("starting", Starting, Running),
                    Request::Stop { .. } => ("stopping", Stopping, Stopped),
                    _ => ("restarting", Stopping, Running),
                };
                let delay = Duration::from_millis(self.transition_ms.load(Ordering::SeqCst));
                let end = match *self.end_override.lock().unwrap() {
                    Some(state) if end == Running => state,
                    _ => end,
                };
                for id in &ids {
                    self.set(id, |i| {
                        i.state = mid;
                        i.pinned = end == Stopped;
                    });
                    let me = Arc::clone(self);
                    let id = id.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let pid = me.next_pid.fetch_add(1, Ordering::SeqCst);
                        me.set(&id, |i| {
                            i.pid = (end == Running).then_some(pid);
                            if end == CrashLoop {
                                i.last_exit = Some("exit status 1".into());
                            }
                            i.state = end;
                        });
                    });
                }
                Response::Done {
                    messages: ids.iter().map(|id| format!("{id}: {verb}")).collect(),
                }
            }
            Request::Reload => {
                if self.reload_ok.load(Ordering::SeqCst) {
                    Response::Reloaded(ReloadReport {
                        applied: true,
                        added: vec!["images-1".into()],
                        removed: vec![],
                        changed: vec!["text-2".into()],
                        unchanged: vec!["text-1".into(), "webhook-1".into()],
                        warnings: vec![],
                        errors: vec![],
                    })
                } else {
                    Response::Reloaded(ReloadReport {
                        applied: false,
                        added: vec![],
                        removed: vec![],
                        changed: vec![],
                        unchanged: vec![],
                        warnings: vec![],
                        errors: vec![
                            "/etc/clearify/workers.toml:7:11: unknown key \"concurency\"".into(),
                        ],
                    })
                }
            }
            Request::Logs {
                target,
                lines,
                since,
            } => {
                let all = self.logs.lock().unwrap();
                let matching: Vec<LogLine> = all
                    .iter()
                    .filter(|l| {
                        target
                            .as_ref()
                            .is_none_or(|t| l.instance.starts_with(t.as_str()))
                    })
                    .filter(|l| since.is_none_or(|s| l.ts > s))
                    .cloned()
                    .collect();
                let lines = if since.is_some() {
                    matching.into_iter().take(*lines).collect()
                } else {
                    let skip = matching.len().saturating_sub(*lines);
                    matching.into_iter().skip(skip).collect()
                };
                Response::Logs { lines }
            }
            Request::Test => {
                let ok = self.broker_ok.load(Ordering::SeqCst);
                Response::Test(TestReport {
                    reachable: ok,
                    url: "redis://:***@127.0.0.1:6379/0".into(),
                    steps: vec![
                        TestStep {
                            name: "resolve".into(),
                            ok: true,
                            millis: 0.1,
                            detail: None,
                        },
                        TestStep {
                            name: "connect".into(),
                            ok,
                            millis: 0.4,
                            detail: (!ok).then(|| "connection refused".into()),
                        },
                    ],
                    error: (!ok).then(|| "connection refused".into()),
                    redis_version: ok.then(|| "7.0.15".into()),
                    used_memory_bytes: ok.then_some(2 * 1024 * 1024),
                    queues: vec![QueueStatus {
                        name: "text".into(),
                        backlog: Some(12),
                    }],
                    heartbeats: vec![HeartbeatSeen {
                        node: "text-1@dev".into(),
                        age_secs: 1.5,
                    }],
                })
            }
            Request::Version => Response::Version {
                version: self.daemon_version.lock().unwrap().clone(),
                protocol: clearify_workerd::control::protocol::PROTOCOL_VERSION,
            },
            Request::Fleet { .. } | Request::FleetForget { .. } => {
                Response::error(ErrorKind::Refused, "the fake has no fleet")
            }
        }
    }
}

/// A running server with the fake supervisor behind it.
pub struct Fake {
    pub socket: PathBuf,
    pub state: Arc<FakeState>,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<()>>,
}

impl Fake {
    /// Binds `socket` and serves it; call inside a tokio runtime.
    pub fn start(
        socket: &Path,
        auth: Authorizer,
        group: Option<nix::unistd::Gid>,
        opts: ServeOptions,
    ) -> Fake {
        let listener = server::bind(socket, group).expect("bind control socket");
        let state = Arc::new(FakeState::new());
        let (tx, mut rx) = mpsc::channel::<ControlMsg>(16);
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                st.seen
                    .lock()
                    .unwrap()
                    .push((msg.request.clone(), msg.peer));
                let _ = msg.reply.send(st.answer(&msg.request));
            }
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            auth,
            tx,
            async move {
                let _ = stop_rx.await;
            },
            opts,
        ));
        Fake {
            socket: socket.to_path_buf(),
            state,
            shutdown: Some(stop_tx),
            server: Some(server),
        }
    }

    /// Asks the server to stop; await `server` to see it finish.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn seen(&self) -> Vec<Request> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }
}

/// root-or-self authoriser, no admin group.
pub fn root_only() -> Authorizer {
    Authorizer::new(nix::unistd::Uid::effective(), None)
}

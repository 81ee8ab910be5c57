//! Process effects: spawn a worker, signal it, kill everything it left
//! behind, and reap every child.
//!
//! * **Spawn.** A worker starts in its own session (`setsid`), so terminal
//!   signals never reach it and its main pid is also its process group and
//!   session id. It joins its cgroup leaf *before* exec (a write of "0" to an
//!   fd of the leaf's `cgroup.procs`, opened beforehand), and drops to the
//!   worker user (as root, or with CAP_SETUID and CAP_SETGID) through
//!   [`privdrop::drop_to`](crate::sys::privdrop::drop_to). Everything `pre_exec` needs is
//!   prepared before the fork: it only makes system calls. The worker is the
//!   child subreaper of its own tree, so its descendants' orphans stay
//!   below it while it lives (a worker that never reaps them keeps them as
//!   zombies until it exits).
//! * **Reap.** One reaper owns all reaping: on SIGCHLD it calls
//!   `waitpid(-1, WNOHANG)` until nothing is left and reports every exit. The
//!   daemon is a child subreaper, so orphaned pool children come back to it
//!   and are reaped there too. Nothing else in the daemon may wait for
//!   children (no `tokio::process`).
//! * **Kill tree.** The last step of a stop, and the clean-up after a crash:
//!   SIGKILL to the run's process group, to its session, to every descendant
//!   of those, and to every orphan that came back to the daemon and belongs
//!   to no live run (a grandchild that called setsid and dropped its
//!   environment is one), until none is left. Nothing is read from the
//!   processes' environment. The kill is async and starts no thread or
//!   process, so it works when none can be started. At exit the daemon
//!   kills every descendant it still has.
//! * **Capabilities and fds.** A worker starts with empty capability sets
//!   (ambient cleared, then capset to zero: [`crate::sys::privdrop`]) and
//!   with only fds 0, 1 and 2 (everything else close-on-exec).
//! * **Records.** Each run is recorded (pid, start time, uid, node) in the
//!   state directory, so a daemon started after one that died can stop the
//!   workers it left before starting its own ([`records`]).

mod kill;
mod procfs;
mod reaper;
pub mod records;
mod spawn;

pub use kill::{
    KillReport, LiveMains, kill_all_descendants, kill_run, main_identity, run_members, signal,
};
pub use procfs::{TreeUsage, own_rss, parse_stat_usage, start_time, tree_usage};
pub use reaper::{Exit, become_subreaper, reap_all, spawn_reaper};
pub use spawn::{RUN_MARKER, Spawned, run_marker, spawn};

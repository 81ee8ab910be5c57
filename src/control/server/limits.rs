//! The server's limits: [`ServeOptions`] and the connection slots (a cap
//! per uid, and a reserve that only admins may take).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Peer;

/// Limits of [`serve_with`](super::serve_with). [`serve`](super::serve)
/// uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Clients served at once; the next one gets
    /// [`ErrorKind::Busy`](crate::control::protocol::ErrorKind::Busy)
    /// (unless it is an admin and the admin reserve has room).
    pub max_clients: usize,
    /// Connections at once from one uid (root excepted).
    pub max_per_uid: usize,
    /// Slots beyond `max_clients` that only admins may take.
    pub admin_reserve: usize,
    /// `logs` answers in the making at once (each may hold a copy of every
    /// ring buffer until the client has read it); others wait for a turn.
    pub max_log_replies: usize,
    /// How long a client may take to send a whole request (also the idle
    /// time allowed between requests, and the time to take a reply).
    pub idle_timeout: Duration,
    /// How long [`serve_with`](super::serve_with) waits, after `shutdown`,
    /// for connections that are in the middle of a request.
    pub drain_timeout: Duration,
}

/// At most this many clients are served at once.
pub const MAX_CLIENTS: usize = 64;
/// At most this many connections from one uid other than root.
pub const MAX_PER_UID: usize = 8;
/// Slots held back for admins beyond [`MAX_CLIENTS`].
pub const ADMIN_RESERVE: usize = 8;
/// `logs` answers in the making at once.
pub const MAX_LOG_REPLIES: usize = 2;
/// A client must send a whole request within this time.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_clients: MAX_CLIENTS,
            max_per_uid: MAX_PER_UID,
            admin_reserve: ADMIN_RESERVE,
            max_log_replies: MAX_LOG_REPLIES,
            idle_timeout: IDLE_TIMEOUT,
            drain_timeout: Duration::from_secs(2),
        }
    }
}

/// Connection slots in use: per pool and per uid.
#[derive(Debug, Default)]
pub(super) struct Slots {
    pub(super) general: usize,
    pub(super) reserve: usize,
    pub(super) per_uid: HashMap<u32, usize>,
}

/// Which pool a slot came from.
#[derive(Debug, Clone, Copy)]
enum Pool {
    General,
    Reserve,
}

/// A slot held by one connection; given back on drop.
pub(super) struct Slot {
    slots: Arc<Mutex<Slots>>,
    uid: u32,
    pool: Pool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match self.pool {
            Pool::General => s.general = s.general.saturating_sub(1),
            Pool::Reserve => s.reserve = s.reserve.saturating_sub(1),
        }
        if let Some(n) = s.per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_uid.remove(&self.uid);
            }
        }
    }
}

/// Takes a slot for `peer` (an admin when `admin`), or says why not.
pub(super) fn take_slot(
    slots: &Arc<Mutex<Slots>>,
    peer: &Peer,
    admin: bool,
    opts: &ServeOptions,
) -> Result<Slot, String> {
    let mut s = slots.lock().unwrap_or_else(|p| p.into_inner());
    let mine = s.per_uid.get(&peer.uid).copied().unwrap_or(0);
    if peer.uid != 0 && mine >= opts.max_per_uid {
        return Err(format!(
            "too many connections from uid {}: at most {} at once per user (another clearifyctl status --watch or logs -f?); close some and try again",
            peer.uid, opts.max_per_uid
        ));
    }
    let pool = if s.general < opts.max_clients {
        s.general += 1;
        Pool::General
    } else if admin && s.reserve < opts.admin_reserve {
        s.reserve += 1;
        Pool::Reserve
    } else {
        return Err(format!(
            "clearify-workerd is serving {} clients already; try again (root and admins have {} more slots held back)",
            opts.max_clients, opts.admin_reserve
        ));
    };
    *s.per_uid.entry(peer.uid).or_insert(0) += 1;
    Ok(Slot {
        slots: Arc::clone(slots),
        uid: peer.uid,
        pool,
    })
}

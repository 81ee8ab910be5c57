//! Unit tests of the control server: slots, authorisation, peer groups.

use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use nix::unistd::{Gid, Uid};

use super::auth::peer_groups_with;
use super::limits::{Slots, take_slot};
use super::*;

fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
    Peer {
        uid,
        gid,
        pid: 1,
        groups: groups.to_vec(),
    }
}

#[test]
fn slots_cap_each_uid_and_hold_some_back_for_admins() {
    let opts = ServeOptions {
        max_clients: 4,
        max_per_uid: 2,
        admin_reserve: 2,
        ..ServeOptions::default()
    };
    let slots = Arc::new(Mutex::new(Slots::default()));
    let reader = |uid| peer(uid, 100, &[]);
    let take = |p: Peer, admin: bool| take_slot(&slots, &p, admin, &opts);
    // One uid gets 2, whatever is free.
    let a1 = take(reader(1000), false).unwrap();
    let _a2 = take(reader(1000), false).unwrap();
    let why = take(reader(1000), false).err().unwrap();
    assert!(why.contains("too many connections from uid 1000"), "{why}");
    // Others fill the rest; then readers are refused ...
    let _b = take(reader(1001), false).unwrap();
    let _c = take(reader(1002), false).unwrap();
    let why = take(reader(1003), false).err().unwrap();
    assert!(why.contains("serving 4 clients"), "{why}");
    // ... but admins get the reserve, root beyond its per-uid cap.
    let _r1 = take(peer(0, 0, &[]), true).unwrap();
    let _r2 = take(peer(0, 0, &[]), true).unwrap();
    assert!(take(peer(0, 0, &[]), true).is_err());
    // A slot given back is free again.
    drop(a1);
    let _d = take(reader(1003), false).unwrap();
    let s = slots.lock().unwrap();
    assert_eq!((s.general, s.reserve), (4, 2));
    assert_eq!(s.per_uid.get(&1000), Some(&1));
}

#[test]
fn root_and_daemon_uid_are_always_allowed() {
    let auth = Authorizer::new(Uid::from_raw(4242), None);
    assert!(auth.allows(&peer(0, 65534, &[])));
    assert!(auth.allows(&peer(4242, 65534, &[])));
    assert!(!auth.allows(&peer(4243, 65534, &[])));
    // Without an admin group, no group helps.
    assert!(!auth.allows(&peer(4243, 0, &[0, 777])));
}

#[test]
fn the_peers_gid_or_supplementary_groups_make_it_an_admin() {
    let auth = Authorizer::new(Uid::from_raw(4242), Some(Gid::from_raw(777)));
    assert!(auth.allows(&peer(3_999_999, 777, &[])));
    assert!(auth.allows(&peer(3_999_999, 778, &[100, 777])));
    assert!(!auth.allows(&peer(3_999_999, 778, &[])));
    assert!(!auth.allows(&peer(3_999_999, 778, &[100, 776, 7777])));
}

#[test]
fn the_user_database_is_not_consulted() {
    // root (uid 0) is in group 0 in any group database, but a peer that
    // is not uid 0 and lacks the group in its process is refused.
    let auth = Authorizer::new(Uid::from_raw(4242), Some(Gid::from_raw(0)));
    assert!(!auth.allows(&peer(65534, 65534, &[65534])));
    assert!(auth.allows(&peer(65534, 65534, &[65534, 0])));
}

/// A socket pair made by a thread whose own credentials (not the
/// process's: a raw `setgroups` system call changes only the calling
/// thread) carry `groups`, when this process may set groups (root);
/// otherwise one made with this process's groups. Returns the pair and
/// the groups its peers have.
fn pair_with_groups(
    groups: &[u32],
) -> (
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
    Vec<u32>,
) {
    if !nix::unistd::geteuid().is_root() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mine = nix::unistd::getgroups().unwrap();
        return (a, b, mine.into_iter().map(Gid::as_raw).collect());
    }
    let groups = groups.to_vec();
    std::thread::spawn(move || {
        // SAFETY: plain system call on a valid buffer; it changes this
        // thread's credentials only, and the thread ends right after.
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        assert_eq!(rc, 0, "setgroups: {}", io::Error::last_os_error());
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (a, b, groups)
    })
    .join()
    .unwrap()
}

#[test]
fn peer_groups_are_the_peers_groups() {
    // Beyond the first buffer (32), and unsorted.
    let wanted: Vec<u32> = (0..100).map(|n| 50_000 - 7 * n).collect();
    let (a, b, mut expected) = pair_with_groups(&wanted);
    expected.sort_unstable();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(expected.len(), 100);
        assert!(
            nix::unistd::getgroups().unwrap().len() < 100,
            "the groups were set on the helper thread only"
        );
    }
    for end in [&a, &b] {
        // 0: the kernel first says how much room it needs (ERANGE).
        for room in [0, 1, 32, 100, 70_000] {
            let mut got = peer_groups_with(end.as_fd(), room).unwrap();
            got.sort_unstable();
            assert_eq!(got, expected, "room for {room}");
        }
        let mut got = peer_groups(end.as_fd()).unwrap();
        got.sort_unstable();
        assert_eq!(got, expected);
    }
}

#[test]
fn a_socket_without_a_peer_has_no_peer_groups() {
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    assert!(peer_groups(fd.as_fd()).is_err());
}

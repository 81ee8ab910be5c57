//! Unit tests of `sys::accounts` over temporary passwd/group files.

use super::*;
use std::fs;
use std::path::Path;

/// Accounts over temporary files; `None` leaves a file missing.
struct Fixture {
    _dir: tempfile::TempDir,
    accounts: Accounts,
}

fn fixture(passwd: Option<&str>, group: Option<&str>, nsswitch: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let put = |name: &str, text: Option<&str>| {
        let path = dir.path().join(name);
        if let Some(text) = text {
            fs::write(&path, text).unwrap();
        }
        path
    };
    let accounts = Accounts {
        passwd: put("passwd", passwd),
        group: put("group", group),
        nsswitch: put("nsswitch.conf", nsswitch),
    };
    Fixture {
        _dir: dir,
        accounts,
    }
}

const PASSWD: &str = "\
# a comment
root:x:0:0:root:/root:/bin/bash

   # an indented comment
+nisuser::::::
-baduser::::::
+
alice:x:4001:4001:Alice,,,:/home/alice:/bin/sh
  indented:x:4002:4002::/home/indented:/bin/sh
bob:x:4003:4100::/srv/bob dir:/usr/sbin/nologin
short:x:4004:4004
nonnum:x:4x:4005::/:/bin/sh
toolong:x:4006:4006::/:/bin/sh:extra
minus1:x:4294967295:4007::/:/bin/sh
:x:4008:4008::/:/bin/sh
alice:x:9999:9999::/elsewhere:/bin/sh
broken:x:4009
broken:x:4010:4010::/home/broken:/bin/sh
emptyhome:x:4011:4011:::
";

const GROUP: &str = "\
# groups
root:x:0:
alice:x:4001:
ops:x:4100:alice, bob,carol
+nisgroup::
-nisgroup::
devs:x:4200:carol,alice
again:x:4200:alice
nomembers:x:4300
empty:x:4400:
bobs:x:4500:bob
";

fn user(a: &Accounts, name: &str) -> Option<UserEntry> {
    a.user_by_name(name).unwrap()
}

#[test]
fn passwd_lines_are_parsed_as_passwd5_says() {
    let f = fixture(Some(PASSWD), Some(GROUP), Some("passwd: files\n"));
    let a = &f.accounts;
    let alice = user(a, "alice").unwrap();
    assert_eq!(
        alice,
        UserEntry {
            name: "alice".into(),
            uid: Uid::from_raw(4001),
            gid: Gid::from_raw(4001),
            home: "/home/alice".into(),
            source: Source::Files,
        },
        "the first of two entries wins"
    );
    let bob = a.user_from_files("bob").unwrap();
    assert_eq!((bob.uid.as_raw(), bob.gid.as_raw()), (4003, 4100));
    assert_eq!(bob.home, Path::new("/srv/bob dir"));
    let ind = a.user_from_files("indented").unwrap();
    assert_eq!(ind.uid.as_raw(), 4002, "leading blanks are skipped");
    let e = a.user_from_files("emptyhome").unwrap();
    assert_eq!((e.uid.as_raw(), e.home.as_os_str()), (4011, OsStr::new("")));
}

#[test]
fn comments_nis_and_malformed_lines_are_not_users_of_the_files() {
    let f = fixture(Some(PASSWD), Some(GROUP), Some("passwd: files\n"));
    let a = &f.accounts;
    for name in [
        "# a comment",
        "+nisuser",
        "nisuser",
        "-baduser",
        "baduser",
        "+",
        "short",
        "nonnum",
        "toolong",
        "minus1",
        "",
        // Its first line is malformed: glibc decides, not the second.
        "broken",
        "nosuchuser",
    ] {
        assert_eq!(a.user_from_files(name), None, "{name:?}");
    }
}

#[test]
fn line_parsers_classify_each_line() {
    assert_eq!(parse_passwd_line(b""), Line::Skip);
    assert_eq!(parse_passwd_line(b"  \t"), Line::Skip);
    assert_eq!(parse_passwd_line(b"#root:x:0:0::/:/bin/sh"), Line::Skip);
    assert_eq!(parse_passwd_line(b"+@netgroup"), Line::Skip);
    assert_eq!(
        parse_passwd_line(b"a:x:1:2:g:/h:/s"),
        Line::Entry(PasswdLine {
            name: b"a",
            uid: 1,
            gid: 2,
            home: b"/h"
        })
    );
    for bad_id in [
        &b"a:x:-1:2:g:/h:/s"[..],
        b"a:x: 1:2:g:/h:/s",
        b"a:x:99999999999:2:g:/h:/s",
    ] {
        assert_eq!(
            parse_passwd_line(bad_id),
            Line::Malformed { name: b"a" },
            "{}",
            String::from_utf8_lossy(bad_id)
        );
    }
    assert_eq!(
        parse_passwd_line(b"garbage"),
        Line::Malformed { name: b"garbage" }
    );
    assert_eq!(parse_group_line(b"# g:x:1:"), Line::Skip);
    assert_eq!(parse_group_line(b"-g::"), Line::Skip);
    assert_eq!(
        parse_group_line(b"g:x:7:a,b"),
        Line::Entry(GroupLine {
            name: b"g",
            gid: 7,
            members: b"a,b"
        })
    );
    assert_eq!(parse_group_line(b"g:x:7"), Line::Malformed { name: b"g" });
    assert_eq!(parse_group_line(b"g:x::a"), Line::Malformed { name: b"g" });
    assert_eq!(
        parse_group_line(b"g:x:7:a:b"),
        Line::Malformed { name: b"g" }
    );
    let g = GroupLine {
        name: b"g",
        gid: 1,
        members: b" a,,b , \tc,",
    };
    assert_eq!(
        g.members().collect::<Vec<_>>(),
        [&b"a"[..], b"b ", b"c"],
        "leading blanks go, trailing ones stay (as in glibc)"
    );
}

#[test]
fn groups_are_found_by_name() {
    let f = fixture(Some(PASSWD), Some(GROUP), Some("group: files\n"));
    let a = &f.accounts;
    assert_eq!(a.group_by_name("ops").unwrap(), Some(Gid::from_raw(4100)));
    assert_eq!(a.group_by_name("empty").unwrap(), Some(Gid::from_raw(4400)));
    assert_eq!(a.group_from_files("devs"), Some(Gid::from_raw(4200)));
    for name in ["nisgroup", "+nisgroup", "nomembers", "nosuchgroup", ""] {
        assert_eq!(a.group_from_files(name), None, "{name:?}");
    }
}

#[test]
fn supplementary_groups_follow_getgrouplist() {
    // No malformed line in this /etc/group.
    let group = GROUP.replace("nomembers:x:4300\n", "");
    let f = fixture(
        Some(PASSWD),
        Some(&group),
        Some("passwd: files\ngroup: files\n"),
    );
    let a = &f.accounts;
    let gids = |raw: &[u32]| raw.iter().map(|&g| Gid::from_raw(g)).collect::<Vec<_>>();
    let alice = user(a, "alice").unwrap();
    assert_eq!(
        a.groups_of(&alice).unwrap(),
        gids(&[4001, 4100, 4200]),
        "primary first, each gid once"
    );
    let bob = user(a, "bob").unwrap();
    assert_eq!(
        a.groups_of(&bob).unwrap(),
        gids(&[4100, 4500]),
        "\" bob\" is bob; the primary group is not repeated"
    );
    let indented = user(a, "indented").unwrap();
    assert_eq!(a.groups_of(&indented).unwrap(), gids(&[4002]));
}

#[test]
fn a_malformed_group_line_leaves_supplementary_groups_to_nss() {
    let f = fixture(Some(PASSWD), Some(GROUP), Some("group: files\n"));
    assert_eq!(
        f.accounts.groups_from_files("alice", Gid::from_raw(4001)),
        None
    );
    // The lookup by name is unaffected by other names' lines.
    assert_eq!(
        f.accounts.group_from_files("ops"),
        Some(Gid::from_raw(4100))
    );
}

#[test]
fn nsswitch_decides_whether_the_files_answer() {
    let t = |text: &str, db| files_first_in(Some(text.as_bytes()), db);
    assert!(
        files_first_in(None, "passwd"),
        "no nsswitch.conf: glibc's default"
    );
    assert!(t("", "passwd"));
    assert!(t("hosts: dns files\n", "passwd"), "no passwd line");
    assert!(t("passwd:         files systemd\n", "passwd"));
    assert!(t("passwd:files\n", "passwd"));
    assert!(t("PASSWD: files ldap # comment\n", "passwd"));
    assert!(t("group: files [SUCCESS=merge] systemd\n", "group"));
    assert!(t("#passwd: ldap\npasswd: files\n", "passwd"));
    assert!(!t("passwd: systemd files\n", "passwd"));
    assert!(!t("passwd: compat\n", "passwd"));
    assert!(!t("passwd: ldap files\n", "passwd"));
    assert!(!t("passwd: filesx\n", "passwd"));
    assert!(!t("passwd: [NOTFOUND=return] files\n", "passwd"));
    assert!(!t("passwd:\n", "passwd"), "an empty line is not files");
    assert!(!t("passwd: # files\n", "passwd"));
    assert!(
        !t("passwd: files\npasswd: ldap\n", "passwd"),
        "lines disagree"
    );
    assert!(t("passwd: ldap\ngroup: files\n", "group"));
    assert!(!t("passwd: files\ngroup: sss files\n", "group"));
    assert!(!t("passwd_compat: files\npasswd: ldap\n", "passwd"));
}

#[test]
fn without_files_first_nss_answers() {
    // "zz-clearify-alice" exists only in the fixture, "root" also on this system.
    let passwd =
        "root:x:4242:4242::/fake-root:/bin/sh\nzz-clearify-alice:x:4001:4001::/h:/bin/sh\n";
    let group = "root:x:4242:\nzz-clearify-alice:x:4001:\n";
    for nss in [
        "passwd: ldap files\ngroup: ldap files\n",
        "passwd: compat\ngroup: compat\n",
    ] {
        let f = fixture(Some(passwd), Some(group), Some(nss));
        let a = &f.accounts;
        let root = user(a, "root").unwrap();
        assert_eq!((root.uid.as_raw(), root.source), (0, Source::Nss), "{nss}");
        assert_eq!(user(a, "zz-clearify-alice"), None, "{nss}");
        assert_eq!(a.group_by_name("root").unwrap(), Some(Gid::from_raw(0)));
        assert_eq!(a.group_by_name("zz-clearify-alice").unwrap(), None);
    }
    // And with files first, the fixture answers for both.
    for nss in [Some("passwd: files systemd\ngroup: files\n"), None] {
        let f = fixture(Some(passwd), Some(group), nss);
        let a = &f.accounts;
        let root = user(a, "root").unwrap();
        assert_eq!(root.uid.as_raw(), 4242, "{nss:?}");
        assert_eq!(root.source, Source::Files);
        assert_eq!(root.home, Path::new("/fake-root"));
        assert_eq!(user(a, "zz-clearify-alice").unwrap().uid.as_raw(), 4001);
        assert_eq!(a.group_by_name("root").unwrap(), Some(Gid::from_raw(4242)));
    }
}

#[test]
fn names_missing_from_the_files_go_to_nss() {
    let f = fixture(
        Some("alice:x:4001:4001::/h:/bin/sh\n"),
        Some("alice:x:4001:\n"),
        Some("passwd: files\ngroup: files\n"),
    );
    let a = &f.accounts;
    let root = user(a, "root").unwrap();
    assert_eq!((root.uid.as_raw(), root.source), (0, Source::Nss));
    assert_eq!(a.group_by_name("root").unwrap(), Some(Gid::from_raw(0)));
    assert_eq!(user(a, "no-such-user-anywhere"), None);
    assert_eq!(a.group_by_name("no-such-group-anywhere").unwrap(), None);
    // A user NSS found gets its groups from NSS too.
    let groups = a.groups_of(&root).unwrap();
    assert_eq!(groups.first(), Some(&Gid::from_raw(0)));
}

#[test]
fn missing_files_go_to_nss() {
    let f = fixture(None, None, None);
    let a = &f.accounts;
    assert_eq!(user(a, "root").unwrap().source, Source::Nss);
    assert_eq!(a.group_by_name("root").unwrap(), Some(Gid::from_raw(0)));
}

#[test]
fn an_initgroups_line_decides_for_supplementary_groups() {
    let passwd = "zz-clearify-alice:x:4001:4001::/h:/bin/sh\n";
    let group = "zz-clearify-alice:x:4001:\nops:x:4100:zz-clearify-alice\n";
    let with = |nss: &str| {
        let f = fixture(Some(passwd), Some(group), Some(nss));
        f.accounts
            .groups_from_files("zz-clearify-alice", Gid::from_raw(4001))
    };
    let files = Some(vec![Gid::from_raw(4001), Gid::from_raw(4100)]);
    assert_eq!(with("group: files\n"), files);
    assert_eq!(with("group: ldap files\n"), None);
    assert_eq!(with("group: ldap files\ninitgroups: files\n"), files);
    assert_eq!(with("group: files\ninitgroups: ldap files\n"), None);
    // An NSS user (not from /etc/passwd) never gets the files' answer.
    let f = fixture(Some(passwd), Some(group), Some("group: files\n"));
    let ghost = UserEntry {
        name: "zz-clearify-alice".into(),
        uid: Uid::from_raw(4001),
        gid: Gid::from_raw(4001),
        home: "/h".into(),
        source: Source::Nss,
    };
    // getgrouplist on this system does not know zz-clearify-alice: only its gid.
    assert_eq!(f.accounts.groups_of(&ghost).unwrap(), [Gid::from_raw(4001)]);
}

#[test]
fn the_system_databases_agree_with_nss_for_root() {
    let a = Accounts::system();
    let root = user(&a, "root").unwrap();
    let nss = nix::unistd::User::from_name("root").unwrap().unwrap();
    assert_eq!(
        (root.uid, root.gid, &root.home),
        (nss.uid, nss.gid, &nss.dir)
    );
    assert_eq!(
        a.group_by_name("root").unwrap(),
        Some(nix::unistd::Group::from_name("root").unwrap().unwrap().gid)
    );
}

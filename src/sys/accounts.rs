//! Users and groups by name, from /etc/passwd and /etc/group when they
//! answer, through NSS only when they do not.
//!
//! glibc's `getpwnam`, `getgrnam` and `getgrouplist` go through NSS, which
//! loads the modules /etc/nsswitch.conf names (on Debian `files systemd`:
//! `libnss_systemd.so.2`, with libcap and libm) and keeps them mapped for the
//! life of the process: about 660 KiB resident in the daemon, for a lookup
//! or two at start-up. The names the daemon looks up (the workers' user, the
//! admin group) are nearly always local accounts, which glibc itself finds
//! in the files first. So [`Accounts`] reads the files itself, following
//! passwd(5) and group(5), and asks NSS (nix's `User::from_name`,
//! `Group::from_name`, `getgrouplist`) only when:
//!
//! - nsswitch.conf's line for the database (`passwd:`, `group:`; for
//!   supplementary groups `initgroups:` when present, else `group:`) does
//!   not start with `files`, or cannot be read. A missing file, or a file
//!   without that line, counts as `files` first: glibc's built-in default
//!   reads the local files first too;
//! - the name is not in the file, or a line for that name is malformed (NSS
//!   then gives glibc's own answer), or the file cannot be read;
//! - for supplementary groups: the user did not come from /etc/passwd, or
//!   /etc/group has a malformed line.
//!
//! So LDAP, systemd-userdb and other users keep working. What the files
//! path does not see: memberships that a later NSS service adds to a user
//! of /etc/passwd (e.g. an LDAP group listing a local user, or a userdb
//! `.membership` drop-in); glibc merges those for `getgrouplist`. Put such
//! memberships in /etc/group, or order nsswitch.conf so `files` is not
//! first, to have them counted.
//!
//! Comment (`#`), blank and NIS compat (`+`/`-`) lines are skipped, as are
//! malformed lines for other names. Names are compared byte for byte.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};

/// Where the account databases live. [`Accounts::system`] is the real one;
/// tests point the paths at temporary files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: PathBuf,
    pub group: PathBuf,
    pub nsswitch: PathBuf,
}

/// Which source answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// /etc/passwd or /etc/group, read directly.
    Files,
    /// glibc's NSS.
    Nss,
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
    pub source: Source,
}

impl Accounts {
    /// The system's files: /etc/passwd, /etc/group, /etc/nsswitch.conf.
    pub fn system() -> Self {
        Accounts {
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            nsswitch: "/etc/nsswitch.conf".into(),
        }
    }

    /// The user called `name`, or `None` if there is none.
    pub fn user_by_name(&self, name: &str) -> nix::Result<Option<UserEntry>> {
        if let Some(u) = self.user_from_files(name) {
            return Ok(Some(u));
        }
        Ok(nix::unistd::User::from_name(name)?.map(|u| UserEntry {
            name: u.name,
            uid: u.uid,
            gid: u.gid,
            home: u.dir,
            source: Source::Nss,
        }))
    }

    /// The gid of the group called `name`, or `None` if there is none.
    pub fn group_by_name(&self, name: &str) -> nix::Result<Option<Gid>> {
        if let Some(gid) = self.group_from_files(name) {
            return Ok(Some(gid));
        }
        Ok(nix::unistd::Group::from_name(name)?.map(|g| g.gid))
    }

    /// The groups `user` gets at log-in, as `getgrouplist(3)` gives them:
    /// the primary gid first, then every group that lists the user as a
    /// member, each once.
    pub fn groups_of(&self, user: &UserEntry) -> nix::Result<Vec<Gid>> {
        if user.source == Source::Files
            && let Some(groups) = self.groups_from_files(&user.name, user.gid)
        {
            return Ok(groups);
        }
        let name = CString::new(user.name.as_str()).map_err(|_| Errno::EINVAL)?;
        nix::unistd::getgrouplist(&name, user.gid)
    }

    /// Whether nsswitch.conf lets the files answer for `database`.
    fn files_first(&self, database: &str) -> bool {
        match std::fs::read(&self.nsswitch) {
            Ok(text) => files_first_in(Some(&text), database),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => files_first_in(None, database),
            Err(_) => false,
        }
    }

    /// Reads `path` when nsswitch.conf lets the files answer for
    /// `database`, and gives `decide` each line until it returns a verdict
    /// (`Some`): the verdict's answer, or `None` (the files do not decide).
    fn scan_files<R>(
        &self,
        database: &str,
        path: &Path,
        decide: impl FnMut(&[u8]) -> Option<Option<R>>,
    ) -> Option<R> {
        if !self.files_first(database) {
            return None;
        }
        let text = std::fs::read(path).ok()?;
        text.split(|&b| b == b'\n').find_map(decide).flatten()
    }

    fn user_from_files(&self, name: &str) -> Option<UserEntry> {
        self.scan_files("passwd", &self.passwd, |line| {
            match parse_passwd_line(line) {
                Line::Entry(e) if e.name == name.as_bytes() => Some(Some(UserEntry {
                    name: name.to_string(),
                    uid: Uid::from_raw(e.uid),
                    gid: Gid::from_raw(e.gid),
                    home: PathBuf::from(OsStr::from_bytes(e.home)),
                    source: Source::Files,
                })),
                // glibc might read this line differently: let it decide.
                Line::Malformed { name: n } if n == name.as_bytes() => Some(None),
                _ => None,
            }
        })
    }

    fn group_from_files(&self, name: &str) -> Option<Gid> {
        self.scan_files("group", &self.group, |line| match parse_group_line(line) {
            Line::Entry(e) if e.name == name.as_bytes() => Some(Some(Gid::from_raw(e.gid))),
            Line::Malformed { name: n } if n == name.as_bytes() => Some(None),
            _ => None,
        })
    }

    fn groups_from_files(&self, user: &str, primary: Gid) -> Option<Vec<Gid>> {
        let db = if self.has_initgroups_line() {
            "initgroups"
        } else {
            "group"
        };
        if !self.files_first(db) {
            return None;
        }
        let text = std::fs::read(&self.group).ok()?;
        let mut groups = vec![primary];
        for line in text.split(|&b| b == b'\n') {
            match parse_group_line(line) {
                Line::Entry(e) => {
                    let gid = Gid::from_raw(e.gid);
                    if !groups.contains(&gid) && e.members().any(|m| m == user.as_bytes()) {
                        groups.push(gid);
                    }
                }
                // It may list the user: only glibc knows how it reads it.
                Line::Malformed { .. } => return None,
                Line::Skip => {}
            }
        }
        Some(groups)
    }

    fn has_initgroups_line(&self) -> bool {
        std::fs::read(&self.nsswitch)
            .map(|text| !services_of(&text, "initgroups").is_empty())
            .unwrap_or(false)
    }
}

/// One line of /etc/passwd or /etc/group.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a, T> {
    Entry(T),
    /// Comment, blank or NIS compat line.
    Skip,
    /// Not in the file's format; `name` is its first field.
    Malformed {
        name: &'a [u8],
    },
}

#[derive(Debug, PartialEq, Eq)]
struct PasswdLine<'a> {
    name: &'a [u8],
    uid: u32,
    gid: u32,
    home: &'a [u8],
}

#[derive(Debug, PartialEq, Eq)]
struct GroupLine<'a> {
    name: &'a [u8],
    gid: u32,
    members: &'a [u8],
}

impl<'a> GroupLine<'a> {
    /// The member list, split at commas; leading blanks are dropped (as
    /// glibc does), empty names skipped.
    fn members(&self) -> impl Iterator<Item = &'a [u8]> {
        self.members
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii_start)
            .filter(|m| !m.is_empty())
    }
}

/// The part of a line that holds fields: leading blanks (which glibc skips)
/// removed; `None` for blank, comment and NIS compat lines.
fn content(line: &[u8]) -> Option<&[u8]> {
    let line = line.trim_ascii_start();
    match line.first() {
        None | Some(b'#' | b'+' | b'-') => None,
        Some(_) => Some(line),
    }
}

/// A uid or gid field: decimal digits only, not the invalid id `-1`.
fn id_field(field: &[u8]) -> Option<u32> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field)
        .ok()?
        .parse::<u32>()
        .ok()
        .filter(|&id| id != u32::MAX)
}

/// The `:`-separated fields of a database line that has exactly `n`
/// fields and a non-empty name (the first); else what the line is (a line
/// to skip, or a malformed one).
fn fields_of<T>(line: &[u8], n: usize) -> Result<Vec<&[u8]>, Line<'_, T>> {
    let Some(line) = content(line) else {
        return Err(Line::Skip);
    };
    let fields: Vec<&[u8]> = line.split(|&b| b == b':').collect();
    let name = fields.first().copied().unwrap_or_default();
    if fields.len() != n || name.is_empty() {
        return Err(Line::Malformed { name });
    }
    Ok(fields)
}

/// `name:password:uid:gid:gecos:home:shell` (passwd(5)).
fn parse_passwd_line(line: &[u8]) -> Line<'_, PasswdLine<'_>> {
    let fields = match fields_of(line, 7) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    let name = fields[0];
    match (id_field(fields[2]), id_field(fields[3])) {
        (Some(uid), Some(gid)) => Line::Entry(PasswdLine {
            name,
            uid,
            gid,
            home: fields[5],
        }),
        _ => Line::Malformed { name },
    }
}

/// `name:password:gid:member,member,...` (group(5)).
fn parse_group_line(line: &[u8]) -> Line<'_, GroupLine<'_>> {
    let fields = match fields_of(line, 4) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    let name = fields[0];
    match id_field(fields[2]) {
        Some(gid) => Line::Entry(GroupLine {
            name,
            gid,
            members: fields[3],
        }),
        None => Line::Malformed { name },
    }
}

/// The services of every `database:` line of nsswitch.conf, in order, one
/// list per line (comments removed).
fn services_of<'a>(text: &'a [u8], database: &str) -> Vec<Vec<&'a [u8]>> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = match line.iter().position(|&b| b == b'#') {
                Some(at) => &line[..at],
                None => line,
            };
            let colon = line.iter().position(|&b| b == b':')?;
            let (db, rest) = (line[..colon].trim_ascii(), &line[colon + 1..]);
            db.eq_ignore_ascii_case(database.as_bytes()).then(|| {
                rest.split(u8::is_ascii_whitespace)
                    .filter(|w| !w.is_empty())
                    .collect()
            })
        })
        .collect()
}

/// Whether `database`'s line starts with the `files` service. `None` (no
/// nsswitch.conf) and a missing line mean glibc's default, which reads the
/// files first. Several lines must all agree.
fn files_first_in(text: Option<&[u8]>, database: &str) -> bool {
    let Some(text) = text else {
        return true;
    };
    services_of(text, database)
        .iter()
        .all(|services| services.first() == Some(&&b"files"[..]))
}

#[cfg(test)]
mod tests {
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
}

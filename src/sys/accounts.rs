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
#[path = "accounts_tests.rs"]
mod tests;

//! journald's native protocol: field encoding (and decoding, for checks),
//! and [`JournalSender`], which sends entries over the datagram socket,
//! with a sealed memfd for entries too large for one datagram.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::net::UnixDatagram;

/// journald's native-protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Appends one field in journald's native format: `KEY=value\n` when the
/// value has no `\n`, else `KEY\n<u64 LE length><value>\n`. Values are bytes
/// and kept as they are (invalid UTF-8 included).
pub fn encode_field(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// Parses an entry in journald's native format back into its fields, in
/// order; `None` when it is malformed. (journald's side of [`encode_field`];
/// used by the tests and by anyone who wants to check an entry.)
pub fn decode_entry(mut data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let nl = data.iter().position(|&b| b == b'\n')?;
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = std::str::from_utf8(&line[..eq]).ok()?;
            fields.push((key.to_owned(), line[eq + 1..].to_vec()));
            data = &data[nl + 1..];
        } else {
            let key = std::str::from_utf8(line).ok()?;
            let rest = &data[nl + 1..];
            let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let value = rest.get(8..8usize.checked_add(len)?)?;
            if rest.get(8 + len) != Some(&b'\n') {
                return None;
            }
            fields.push((key.to_owned(), value.to_vec()));
            data = &rest[8 + len + 1..];
        }
    }
    Some(fields)
}

/// Sends entries to journald over its native datagram socket.
///
/// The socket is connected lazily on the first send and reconnected once
/// when journald went away (restart). Sends wait (asynchronously) while the
/// socket is full: that is the backpressure. An entry too large for one
/// datagram goes in a sealed memfd passed with SCM_RIGHTS, as
/// `sd_journal_send` does.
#[derive(Debug)]
pub struct JournalSender {
    pub(super) path: PathBuf,
    sock: Mutex<Option<Arc<UnixDatagram>>>,
    pub(super) failing: AtomicBool,
}

impl Default for JournalSender {
    fn default() -> Self {
        JournalSender::new()
    }
}

impl JournalSender {
    /// A sender to [`JOURNAL_SOCKET`].
    pub fn new() -> Self {
        JournalSender::with_path(JOURNAL_SOCKET)
    }

    /// A sender to another socket (tests).
    pub fn with_path(path: impl Into<PathBuf>) -> Self {
        JournalSender {
            path: path.into(),
            sock: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn socket(&self) -> io::Result<Arc<UnixDatagram>> {
        let mut guard = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let s = UnixDatagram::unbound()?;
        s.connect(&self.path)?;
        let s = Arc::new(s);
        *guard = Some(s.clone());
        Ok(s)
    }

    fn reset(&self) {
        *self.sock.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Sends one encoded entry (see [`encode_field`]).
    pub async fn send_entry(&self, entry: &[u8]) -> io::Result<()> {
        let mut retried = false;
        loop {
            let sock = self.socket()?;
            match sock.send(entry).await {
                Ok(n) if n == entry.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short datagram write: {n} of {} bytes", entry.len()),
                    ));
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                    return send_memfd(&sock, entry).await;
                }
                Err(e)
                    if !retried
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::ECONNREFUSED | libc::ENOTCONN | libc::ECONNRESET)
                        ) =>
                {
                    retried = true;
                    self.reset();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Encodes and sends the fields as one entry.
    pub async fn send_fields(&self, fields: &[(&str, &[u8])]) -> io::Result<()> {
        let mut entry =
            Vec::with_capacity(fields.iter().map(|(k, v)| k.len() + v.len() + 10).sum());
        for (k, v) in fields {
            encode_field(&mut entry, k, v);
        }
        self.send_entry(&entry).await
    }
}

/// Writes the entry to a sealed memfd and passes the fd to journald.
async fn send_memfd(sock: &UnixDatagram, entry: &[u8]) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

    let fd = memfd_create(
        c"clearify-journal",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(entry)?;
    // journald maps the file; rewinding also lets a plain reader read it.
    io::Seek::rewind(&mut file)?;
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    let raw = [file.as_raw_fd()];
    sock.async_io(tokio::io::Interest::WRITABLE, || {
        sendmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &[],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_encoded_in_the_native_protocol() {
        let mut e = Vec::new();
        encode_field(&mut e, "PRIORITY", b"3");
        encode_field(&mut e, "MESSAGE", b"a\nb\xff");
        let mut want = b"PRIORITY=3\nMESSAGE\n".to_vec();
        want.extend_from_slice(&4u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\xff\n");
        assert_eq!(e, want);
        let back = decode_entry(&e).unwrap();
        assert_eq!(
            back,
            vec![
                ("PRIORITY".into(), b"3".to_vec()),
                ("MESSAGE".into(), b"a\nb\xff".to_vec())
            ]
        );
        assert_eq!(
            decode_entry(b"MESSAGE\n\x05\x00\x00\x00\x00\x00\x00\x00ab"),
            None
        );
        assert_eq!(decode_entry(b"NOEQUALS"), None);
    }
}

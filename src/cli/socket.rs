//! Getting an answer from the daemon: which of its two sockets to open
//! (admin first for changing requests, [`socket_candidates`]), retrying a
//! busy daemon, and turning error answers into [`Failure`]s.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::exit::{self, Failure, unexpected};
use super::{exit_code_for, socket_candidates, status_targets};
use crate::control::client::{ClientError, request_blocking, socket_audience};
use crate::control::protocol::{ErrorKind, Request, Response, Status};
use crate::control::server::request_name;

pub struct Ctx {
    /// The reader socket; the admin socket is next to it.
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Ctx {
    /// One request, on the admin or the reader socket
    /// ([`socket_candidates`]): the next is tried when one cannot be
    /// opened. When none can, the first one's error, or, when every one
    /// refused permission, a message naming both groups.
    pub fn send(&self, req: &Request) -> Result<Response, Failure> {
        let mut first: Option<ClientError> = None;
        let mut denied = Vec::new();
        for sock in socket_candidates(&self.socket, req.is_mutating()) {
            match request_blocking(&sock, req.clone(), self.timeout) {
                Ok(r) => return Ok(r),
                Err(
                    e @ (ClientError::PermissionDenied { .. } | ClientError::NotRunning { .. }),
                ) => {
                    // A missing admin socket (no admin group) is no news;
                    // report the reader socket's error then.
                    let is_reader = sock == self.socket;
                    if matches!(e, ClientError::PermissionDenied { .. }) {
                        denied.push(sock);
                    }
                    if first.is_none()
                        || (is_reader && matches!(first, Some(ClientError::NotRunning { .. })))
                    {
                        first = Some(e);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if denied.len() > 1 {
            let each: Vec<String> = denied
                .iter()
                .map(|p| format!("{}: {}", p.display(), socket_audience(p)))
                .collect();
            return Err(Failure::new(
                exit::PERMISSION,
                format!(
                    "permission denied: this process may open neither control socket. {} needs {}.\n  {}",
                    request_name(req),
                    if req.is_mutating() {
                        "the admin group (admin.sock), root or the daemon's user"
                    } else {
                        "the reader group (control.sock) or the admin group (admin.sock)"
                    },
                    each.join("\n  ")
                ),
            ));
        }
        Err(first.map_or_else(
            || Failure::new(exit::NOT_RUNNING, "no control socket to try"),
            Failure::from,
        ))
    }

    /// One request; a Busy daemon is retried briefly. Error answers become
    /// failures with their exit code.
    pub fn call(&self, req: Request) -> Result<Response, Failure> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.send(&req)? {
                Response::Error {
                    kind: ErrorKind::Busy,
                    ..
                } if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Response::Error { kind, message } => {
                    return Err(Failure::new(exit_code_for(kind), message));
                }
                other => return Ok(other),
            }
        }
    }

    pub fn status(&self, targets: &[String]) -> Result<Status, Failure> {
        match self.call(Request::Status {
            targets: status_targets(targets),
        })? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }
}

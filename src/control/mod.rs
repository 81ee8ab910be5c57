//! The control socket: shared protocol types ([`protocol`]), the daemon's
//! server ([`server`]) and the client used by `clearifyctl` ([`client`]).
//!
//! Wiring it into the daemon: the server answers nothing itself; each
//! request reaches the supervisor as a [`server::ControlMsg`] with a oneshot
//! sender for the reply.
//!
//! ```no_run
//! use clearify_workerd::control::protocol::{ErrorKind, Request, Response};
//! use clearify_workerd::control::server::{self, Authorizer, ControlMsg};
//! # async fn daemon() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = server::bind("/run/clearify-workerd/control.sock".as_ref(), None)?;
//! let auth = Authorizer::for_current_process(Some("clearify"))?;
//! let (tx, mut rx) = tokio::sync::mpsc::channel::<ControlMsg>(64);
//! let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(server::serve(listener, auth, tx, async move {
//!     let _ = stop_rx.await;
//! }));
//! // In the supervisor's select! loop:
//! while let Some(ControlMsg { request, peer, reply }) = rx.recv().await {
//!     let _ = (peer.uid, peer.pid); // already authorised for changing requests
//!     let answer = match request {
//!         Request::Version => Response::Version {
//!             version: clearify_workerd::VERSION.into(),
//!             protocol: clearify_workerd::control::protocol::PROTOCOL_VERSION,
//!         },
//!         _ => Response::error(ErrorKind::Refused, "not yet"),
//!     };
//!     let _ = reply.send(answer); // the client may have gone; ignore
//! }
//! let _ = stop_tx.send(()); // on shutdown: stop accepting, drain, unlink
//! server.await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod protocol;
pub mod server;

/// Where the control socket lives unless `[daemon].socket`,
/// `clearifyctl --socket` or `CLEARIFY_SOCKET` say otherwise (defined once,
/// in the config schema).
pub use crate::config::DEFAULT_SOCKET;

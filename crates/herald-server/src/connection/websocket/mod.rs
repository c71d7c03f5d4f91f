//! A connection's WebSocket transport, over herald's own codec (`herald-ws`): the upgrade
//! (`handshake`), the socket itself (`socket`: reads parsed in place, shared frames written as
//! they are, the closing handshakes, lingering), the socket task that runs Pusher on it
//! (`task`), and the direct writes of deliveries to an idle socket (`writer`).
//!
//! Invariant: a socket is written by its task or, while nothing is queued for it and the task
//! does not hold the writer, by a delivery's direct write; the task writes everything queued at
//! once (write coalescing).

mod handshake;
mod socket;
mod task;
mod writer;

pub use handshake::{fallback, upgrade, ConnectParams};
pub use socket::{switch_protocols, Incoming, ProtocolError, WebSocket};

/// A socket is the TCP stream and a decoder that holds no memory while idle (`socket.rs`).
/// Boxed so the socket task's future holds a pointer, not the socket itself, at every level it
/// is passed through (an async fn keeps its arguments apart from its locals).
type Socket = Box<WebSocket>;

//! A connection: one client's `Session` (herald-core) from its admission to its close, and the
//! transport that carries its messages. Two layers:
//!
//! - What every transport shares, none of it reading or writing a socket: `admission` (the app
//!   by its key, the protocol, the origin, the node's and the app's connection limits, then the
//!   `Session` opened), `driver` (each message from the client: the message budget, parsing,
//!   `Session::handle`, its outcome's metrics, webhook facts and monitor records; on a drain and
//!   at the close, the channels left and the departure recorded), `liveness` (the node's ping
//!   sweep, over outboxes) and `resume_cookie` (a browser's identity for replay). Replies go
//!   into the session's `Outbox`, and the transport drains it.
//! - The WebSocket (`websocket/`): the RFC 6455 handshake, the socket task and its framing over
//!   `herald-ws` (decoding, inflating, pongs, batched writes, close frames, lingering), and the
//!   direct writes of deliveries to idle sockets.
//!
//! A second transport (pusher-js's HTTP streaming and polling fallback) is another folder beside
//! `websocket/`: it admits with `admission`, and for each message it reads touches the outbox's
//! liveness clock, spends the budget and hands the text to `driver`; it writes what the outbox
//! holds in its own framing and ends with `driver::close`, and `liveness` covers it already.
//!
//! Invariant: only `websocket/` knows a WebSocket; the other modules take the `Session`, its
//! outbox and the request's headers, never a socket.

mod admission;
mod driver;
mod liveness;
pub mod resume_cookie;
pub mod websocket;

pub use liveness::sweep_liveness;
pub use websocket::{fallback, upgrade, ConnectParams};

//! What a connection does with its `Session`, whatever carries the client's messages: the
//! transport-neutral half of a connection. A transport reads the client's messages and, for
//! each, touches the outbox's liveness clock, spends the connection's message budget
//! ([`spend_budget`]) and hands the text over ([`on_text`]: parsed, `Session::handle`, the
//! outcome's metrics, webhook facts and monitor records); it writes what the session's outbox
//! holds in its own framing, calls [`depart`] before a drain's close, and [`close`] once the
//! connection ended (the channels left, the departure recorded, the connection counted out).
//! The monitor helpers for connections are here too.
//!
//! Invariant: nothing here reads or writes a socket: replies go into the session's outbox, and
//! only [`depart`] awaits (a drain's wait for the cluster's log).

use std::time::{Duration, Instant};

use herald_core::rate_limit::TokenBucket;
use herald_core::session::Outcome;
use herald_core::{AppState, DisconnectReason, MessageError, MonitorEvent, Session};
use herald_protocol::ClientMessage;

use crate::metrics::{self, Limit};
use crate::state::Shared;

/// How long a drained socket's 4200 waits for its departures to be on the cluster's log.
const DEPARTURE_WAIT: Duration = Duration::from_secs(1);

/// Spends one message from the connection's budget (`limits.max_messages_per_second`); over
/// it, the message is refused with a 4301 and goes no further.
pub(super) fn spend_budget(session: &mut Session, message_budget: &mut TokenBucket) -> bool {
    if message_budget.try_take(Instant::now()) {
        return true;
    }
    metrics::limit_rejected(Limit::MessageRate);
    limit_hit(
        session.app(),
        Some(session.socket_id()),
        "max_messages_per_second",
    );
    session.refuse_message(&MessageError::TooManyMessages);
    false
}

/// Handles the text of a client message that the budget admitted: parsed, handed to the
/// session, and its outcome counted, told to the webhooks and (while watched) to the monitor; a
/// message that does not parse is refused with a `pusher:error`, the connection left open.
pub(super) fn on_text(shared: &Shared, session: &mut Session, text: &str) {
    match ClientMessage::parse(text) {
        Ok(message) => {
            let outcome = session.handle(message);
            let app_id = session.app().id();
            match &outcome {
                Outcome::LimitReached(limit) => {
                    metrics::limit_rejected_for(app_id, (*limit).into());
                }
                Outcome::ClientEvent { .. } => metrics::broadcast(app_id, "client_event"),
                _ => {}
            }
            shared
                .webhooks()
                .record_outcome(app_id, session.socket_id(), &outcome);
            let monitor = session.app().monitor();
            if monitor.active() {
                if let Some(event) = MonitorEvent::from_outcome(session.socket_id(), &outcome) {
                    monitor.emit(shared.node().id(), event);
                }
            }
        }
        Err(err) => session.refuse_message(&MessageError::Invalid(err)),
    }
}

/// A drain: leaves every channel and announces where the socket stopped, and waits until that
/// is on the cluster's log, before the 4200 goes out (not after the close handshake), so that
/// the node the client reconnects to at once already knows the departure and replays. Nothing
/// is queued after a close request; what was queued is written before the close frame.
pub(super) async fn depart(shared: &Shared, session: &mut Session) {
    let socket_id = session.socket_id();
    for left in &session.close() {
        shared
            .webhooks()
            .record_left(session.app().id(), socket_id, left);
    }
    let _ = tokio::time::timeout(DEPARTURE_WAIT, shared.broker().announced()).await;
}

/// Ends a connection's session once its transport is done with it: leaves every channel (the
/// webhooks told, the departure recorded for a replay), tells the app's watchers, and counts the
/// connection out of the app and the node.
pub(super) fn close(
    shared: &Shared,
    app: &AppState,
    session: &mut Session,
    reason: DisconnectReason,
) {
    let socket_id = session.socket_id();
    let left = session.close();
    let app_id = app.id();
    for left in &left {
        shared.webhooks().record_left(app_id, socket_id, left);
    }
    if app.monitor().active() {
        let code = close_code(session, reason);
        monitor_closed(app, socket_id, reason, code, &left);
    }
    app.remove_connection(socket_id);
    shared.node().remove_connection();
    metrics::connection_closed(app_id, reason.as_str());
    tracing::debug!(reason = reason.as_str(), "socket closed");
}

/// Tells the app's watchers that a limit refused something (only while watched).
pub(super) fn limit_hit(
    app: &AppState,
    socket: Option<herald_protocol::SocketId>,
    limit: &'static str,
) {
    app.monitor().emit_with(|| MonitorEvent::LimitHit {
        socket_id: socket.map(|s| s.to_string()),
        limit: limit.to_owned(),
        channel: None,
    });
}

/// The close code a connection ended with: the client's close frame's, the one the server
/// sent, or what the reason implies (1006 when the connection was lost without a close frame).
fn close_code(session: &Session, reason: DisconnectReason) -> u16 {
    if let Some(code) = session.client_close_code() {
        return code;
    }
    if let Some(request) = session.outbox().close_request() {
        return request.code.code();
    }
    match reason {
        DisconnectReason::ClientClose => 1005,
        DisconnectReason::Limit => 1009,
        DisconnectReason::SlowConsumer => 4100,
        DisconnectReason::PingTimeout => 4201,
        DisconnectReason::Drain => 4200,
        DisconnectReason::Terminated => 4009,
        DisconnectReason::Error => 1006,
    }
}

/// A closed connection, for the app's watchers: the channels it left, the slow consumer limit
/// if that was why, then the close.
#[cold]
fn monitor_closed(
    app: &AppState,
    socket: herald_protocol::SocketId,
    reason: DisconnectReason,
    code: u16,
    left: &[herald_core::session::Left],
) {
    let monitor = app.monitor();
    for left in left {
        monitor.emit_with(|| MonitorEvent::Unsubscribed {
            socket_id: socket.to_string(),
            channel: left.channel.to_string(),
        });
    }
    if reason == DisconnectReason::SlowConsumer {
        limit_hit(app, Some(socket), "outbox_max_bytes");
    }
    monitor.emit_with(|| MonitorEvent::ConnectionClosed {
        socket_id: socket.to_string(),
        code,
        reason: reason.as_str().to_owned(),
    });
}

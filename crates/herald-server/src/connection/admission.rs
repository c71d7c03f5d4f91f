//! Admission, whatever the transport: whether a client may join an app, decided before the
//! transport answers (the app by its key, enabled, the protocol version, the origin), then the
//! connection counted in against the node's and the app's limits, which opens its `Session`.
//!
//! Invariant: a connection is either counted in (node and app) with a session, or refused with a
//! `ConnectionError` and counted nowhere; the transport sends the refusal (a WebSocket's
//! `reject`) and counts it under [`refusal_reason`].

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use herald_core::{
    AppState, ConnectionError, ConnectionRefused, Frame, MonitorEvent, Outbox, Session,
};
use herald_protocol::server_message;

use super::driver::limit_hit;
use crate::metrics::{self, Limit};
use crate::state::Shared;

/// Protocol versions whose wire format this server speaks (pusher-js sends 7).
const SUPPORTED_PROTOCOLS: std::ops::RangeInclusive<u32> = 4..=7;

/// Decides, before the transport answers (a WebSocket's 101), whether this client may join
/// the app.
pub(super) fn admit(
    shared: &Shared,
    key: &str,
    protocol: Option<&str>,
    headers: &HeaderMap,
) -> Result<Arc<AppState>, ConnectionError> {
    let app = shared
        .node()
        .app_by_key(key)
        .ok_or(ConnectionError::AppNotFound)?;
    if !app.app().enabled {
        return Err(ConnectionError::AppDisabled);
    }
    let protocol = protocol.ok_or(ConnectionError::NoProtocol)?;
    match protocol.parse::<u32>() {
        Ok(v) if SUPPORTED_PROTOCOLS.contains(&v) => {}
        _ => return Err(ConnectionError::UnsupportedProtocol),
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !app.app().origin_allowed(origin) {
        metrics::limit_rejected_for(app.id(), Limit::Origin);
        limit_hit(&app, None, "allowed_origins");
        return Err(ConnectionError::OriginNotAllowed);
    }
    Ok(app.clone())
}

/// Counts an admitted connection in, or refuses it (4100, 4004, 4003); returns its session
/// and span.
///
/// # Errors
/// The refusal, for the transport to send: nothing is counted in then.
pub(super) fn open(
    shared: &Shared,
    app: &Arc<AppState>,
    resume_token: Option<Box<str>>,
) -> Result<(Session, tracing::Span), ConnectionError> {
    if !shared
        .node()
        .try_add_connection(shared.config().max_connections)
    {
        metrics::limit_rejected_for(app.id(), Limit::NodeConnections);
        limit_hit(app, None, "node_max_connections");
        return Err(ConnectionError::NodeOverCapacity);
    }
    let socket_id = shared.node().next_socket_id();
    let outbox = Outbox::new(shared.limits().outbox_max_bytes);
    if let Err(refused) = app.add_connection(socket_id, &outbox) {
        shared.node().remove_connection();
        return Err(match refused {
            ConnectionRefused::OverQuota => {
                metrics::limit_rejected_for(app.id(), Limit::AppConnections);
                limit_hit(app, None, "max_connections");
                ConnectionError::AppOverQuota
            }
            ConnectionRefused::Disabled => ConnectionError::AppDisabled,
        });
    }
    metrics::connection_opened(app.id());
    app.monitor().emit_with(|| MonitorEvent::ConnectionOpened {
        socket_id: socket_id.to_string(),
    });
    // The echo mode sends nothing but echoes.
    if !shared.config().websocket_echo {
        let _ = outbox.push(Frame::new(server_message::connection_established(
            socket_id,
            shared.config().activity_timeout.as_secs(),
        )));
    }
    let mut session = Session::new(
        app.clone(),
        shared.broker().clone(),
        shared.limits().clone(),
        socket_id,
        outbox,
    );
    if let Some(token) = resume_token {
        session.set_resume_token(&token);
    }
    let span = tracing::debug_span!("socket", app_id = %app.id(), socket_id = %socket_id);
    Ok((session, span))
}

/// The `reason` label of a refused connection: a capacity limit, or any other refusal.
pub(super) fn refusal_reason(err: ConnectionError) -> &'static str {
    match err {
        ConnectionError::NodeOverCapacity | ConnectionError::AppOverQuota => "limit",
        ConnectionError::PathNotFound
        | ConnectionError::AppNotFound
        | ConnectionError::AppDisabled
        | ConnectionError::NoProtocol
        | ConnectionError::UnsupportedProtocol
        | ConnectionError::OriginNotAllowed => "error",
    }
}

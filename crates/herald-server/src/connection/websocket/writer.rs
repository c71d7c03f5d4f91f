//! Direct writes: the outbox's `DirectWrite` for a WebSocket, with which a delivery writes its
//! frame to an idle socket from the publisher's thread instead of waking the socket task
//! (issue 14; ARCHITECTURE.md, "The fan-out path").
//!
//! Invariant: a direct write never waits (a non-blocking `send`); what the kernel does not take
//! is left to the socket task, which the outbox wakes.

use std::sync::Arc;

use herald_core::Frame;

use crate::metrics::AppMetrics;

/// An outbox's direct writer: a delivery writes to an idle socket from its own thread.
#[derive(Debug)]
pub(super) struct SocketWriter {
    pub(super) stream: Arc<tokio::net::TcpStream>,
    pub(super) metrics: Arc<AppMetrics>,
}

impl herald_core::outbox::DirectWrite for SocketWriter {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        // Straight to the socket, not through the reactor's readiness: a send that would block
        // hands the frame to the task, whose own write finds out and waits for the socket. (A
        // broken pipe is an error, not a signal: Rust programs start with SIGPIPE ignored.)
        socket2::SockRef::from(&*self.stream).send(buf)
    }

    fn written(&self, frame: &Frame) {
        tracing::debug!(target: "herald::frame", direction = "out", frame = %String::from_utf8_lossy(frame.text()));
        self.metrics.messages_sent(1, frame.text().len());
        if let Some(at) = frame.published_at() {
            self.metrics.delivery_latency(at.elapsed());
        }
    }
}

//! The bounded per-connection send queue: the only way anything reaches a socket.
//!
//! Producers (broadcasts, presence, replies) push without blocking; the socket task takes every
//! queued frame at once and writes them with one flush. A queue over its byte cap marks the
//! connection as a slow consumer, to be closed with 4100, instead of growing without bound or
//! slowing the producer down.
//!
//! The outbox also carries the connection's liveness clock (when the client was last heard from,
//! whether a `pusher:ping` is outstanding). One node-wide sweep checks every connection's clock
//! instead of each socket holding its own timer (memory per idle connection).
//!
//! Invariant: no producer ever awaits; `push` is a short critical section with no IO.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_protocol::{server_message, CloseCode};
use herald_ws::{Deflate, OpCode, WireForms};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// One message, shared by every recipient of a broadcast: cloning it is one reference count,
/// and a queued frame is one pointer.
#[derive(Debug, Clone)]
pub struct Frame(Arc<FrameInner>);

#[derive(Debug)]
struct FrameInner {
    /// Invariant: valid UTF-8 JSON text (built from a `String`), except in a [`Frame::prebuilt`]
    /// (an echoed message: any payload).
    text: Bytes,
    /// When the publish was accepted, for the delivery latency histogram.
    published_at: Option<Instant>,
    /// The WebSocket frames of `text`, plain and compressed, each built at its first need and
    /// shared by every clone: a broadcast is framed (and compressed) once, not per subscriber.
    wire: WireForms,
}

impl Frame {
    pub fn new(text: String) -> Frame {
        Frame::from_bytes(Bytes::from(text), None)
    }

    /// A frame whose text never changes; the text is not copied.
    pub fn from_static(text: &'static str) -> Frame {
        Frame::from_bytes(Bytes::from_static(text.as_bytes()), None)
    }

    pub fn published(text: String, at: Instant) -> Frame {
        Frame::from_bytes(Bytes::from(text), Some(at))
    }

    fn from_bytes(text: Bytes, published_at: Option<Instant>) -> Frame {
        Frame(Arc::new(FrameInner {
            text,
            published_at,
            wire: WireForms::default(),
        }))
    }

    /// A frame for one socket, framed (and compressed, or not) by the caller: `payload` is the
    /// message (counted against the outbox's bound), `wire` the whole WebSocket frame written
    /// for it. The echo mode (`websocket_echo`) replies with these.
    pub fn prebuilt(payload: Bytes, wire: Bytes) -> Frame {
        Frame(Arc::new(FrameInner {
            text: payload,
            published_at: None,
            wire: WireForms::prebuilt(wire),
        }))
    }

    /// The message's JSON text (a [`Frame::prebuilt`]'s payload).
    pub fn text(&self) -> &Bytes {
        &self.0.text
    }

    /// When the publish was accepted (`None` for server messages and replays).
    pub fn published_at(&self) -> Option<Instant> {
        self.0.published_at
    }

    /// The same message, without its publish time (a cache replay is not a delivery of the
    /// publish); the text is shared, not copied.
    pub fn unpublished(&self) -> Frame {
        if self.0.published_at.is_none() {
            return self.clone();
        }
        Frame::from_bytes(self.0.text.clone(), None)
    }

    /// The whole WebSocket frame (header and payload) for a socket that negotiated `deflate`
    /// (or not): the same bytes for every socket alike.
    pub fn wire(&self, deflate: Option<Deflate>) -> &Bytes {
        self.0.wire.frame(OpCode::Text, &self.0.text, deflate)
    }
}

/// Why a connection ended, as counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    ClientClose,
    PingTimeout,
    SlowConsumer,
    Drain,
    Limit,
    Error,
    Terminated,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientClose => "client_close",
            DisconnectReason::PingTimeout => "ping_timeout",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::Drain => "drain",
            DisconnectReason::Limit => "limit",
            DisconnectReason::Error => "error",
            DisconnectReason::Terminated => "terminated",
        }
    }
}

/// A request, from outside the socket task, to close the connection.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    pub code: CloseCode,
    pub message: &'static str,
    pub reason: DisconnectReason,
}

#[derive(Debug, Default)]
struct State {
    frames: Batch,
    bytes: usize,
    close: Option<CloseRequest>,
    /// Frames ever queued (wrapping), to know whether anything was sent since the last ping.
    pushed: u64,
    /// The socket's non-blocking writer, while the connection may be written from the
    /// delivering thread.
    direct: Option<Direct>,
    /// The socket task is writing (or has frames to write): nobody else may write now.
    task_writing: bool,
    /// The unwritten end of a frame written in part from the delivering thread: it goes to the
    /// socket before anything else. Boxed: rare, and an idle socket should not carry its room
    /// (memory per connection).
    remainder: Option<Box<Bytes>>,
}

#[derive(Debug, Clone)]
struct Direct {
    writer: Arc<dyn DirectWrite>,
    deflate: Option<Deflate>,
}

/// A socket's write that never blocks, so a frame can be written by whoever delivers it when
/// nothing else is queued for the socket: no task is woken for it (issue 14). Implemented by
/// the server over the `TcpStream` (herald-core does no IO itself).
pub trait DirectWrite: Send + Sync + std::fmt::Debug {
    /// Writes what the socket takes now of `buf`: `Ok(n)` bytes taken (maybe fewer than
    /// asked), `WouldBlock` when it takes nothing now, another error when the socket is broken.
    ///
    /// # Errors
    /// As described: `WouldBlock` or the socket's error.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;

    /// `frame` was written whole from the delivering thread (for metrics and frame logs).
    fn written(&self, frame: &Frame);
}

/// While frames flow, a connection is pinged this often, so that the pong confirms what the
/// client received: after an abrupt loss, replay starts after the last confirmed event, and
/// about this long of events is sent twice (issue 12). A node bounds how many of these pings it
/// sends a second (`herald-server`'s liveness sweep), so on a busy node it is longer.
const CONFIRM_INTERVAL_MS: u64 = 5_000;

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
    /// [`clock_ms`] when the client last sent anything.
    last_seen_ms: AtomicU64,
    /// [`clock_ms`] when a `pusher:ping` went out unanswered; 0 when none is outstanding.
    ping_sent_ms: AtomicU64,
    /// [`clock_ms`] when the last `pusher:ping` went out, answered or not (the connection's start
    /// before the first).
    last_ping_ms: AtomicU64,
    /// [`clock_ms`] of the last `pusher:ping` answered with a `pusher:pong`: the client had
    /// received everything queued before it. 0 if none was.
    confirmed_ms: AtomicU64,
    /// `State::pushed` right after the last `pusher:ping` was queued.
    pushed_at_ping: AtomicU64,
}

/// Milliseconds on a process-wide monotonic clock, starting at 1 (0 means "never").
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// What a liveness check did to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from recently, or a ping is out and its deadline has not passed.
    Alive,
    /// Silent for the activity timeout: a `pusher:ping` was queued.
    PingSent,
    /// Not silent, but sent frames since its last ping at least [`CONFIRM_INTERVAL_MS`] ago: a
    /// `pusher:ping` was queued, whose pong confirms what it received.
    ConfirmSent,
    /// The ping went unanswered: the connection is closing with 4201.
    TimedOut,
    /// Already closing; nothing was done.
    Closing,
}

/// Queued frames, oldest first. The first is stored inline.
#[derive(Debug, Default)]
pub struct Batch {
    /// Invariant: `None` only when `rest` is empty too.
    first: Option<Frame>,
    rest: Vec<Frame>,
}

impl Batch {
    fn push(&mut self, frame: Frame) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.push(frame);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Frame> {
        self.first.iter().chain(self.rest.iter())
    }
}

impl IntoIterator for Batch {
    type Item = Frame;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Frame>, std::vec::IntoIter<Frame>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// A handle to one connection's queue; cloning shares it.
#[derive(Debug, Clone)]
pub struct Outbox(Arc<Inner>);

/// The frame was not queued because the connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// This push went over the cap: the connection is now closing as a slow consumer.
    Overflow,
    /// The connection was already closing.
    Closed,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Outbox {
        Outbox(Arc::new(Inner {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            max_bytes,
            last_seen_ms: AtomicU64::new(clock_ms()),
            ping_sent_ms: AtomicU64::new(0),
            // Counted from the connection's start: its first confirmation comes after the
            // interval, not at once.
            last_ping_ms: AtomicU64::new(clock_ms()),
            confirmed_ms: AtomicU64::new(0),
            pushed_at_ping: AtomicU64::new(0),
        }))
    }

    /// Records that the client sent something: it is alive, and any ping is answered.
    pub fn touch(&self) {
        self.0.last_seen_ms.store(clock_ms(), Relaxed);
        self.0.ping_sent_ms.store(0, Relaxed);
    }

    /// Pings a connection that has been silent for `activity`, and closes one that left a ping
    /// unanswered for `pong` (4201), as the Pusher protocol asks of servers. When `may_confirm`,
    /// a connection that was sent frames is also pinged every [`CONFIRM_INTERVAL_MS`], to
    /// confirm what it received (the caller bounds how many such pings a node sends).
    pub fn check_liveness(
        &self,
        now_ms: u64,
        activity: Duration,
        pong: Duration,
        may_confirm: bool,
    ) -> Liveness {
        let (closing, pushed) = {
            let state = self.0.state.lock();
            (state.close.is_some(), state.pushed)
        };
        if closing {
            return Liveness::Closing;
        }
        let ping_sent = self.0.ping_sent_ms.load(Relaxed);
        let last_seen = self.0.last_seen_ms.load(Relaxed);
        if ping_sent != 0 {
            // A message that raced with this check (`touch` stores `last_seen` first) counts.
            if now_ms.saturating_sub(ping_sent) < millis(pong) || last_seen >= ping_sent {
                return Liveness::Alive;
            }
            let code = CloseCode::PongNotReceived;
            let message = "Pong reply not received";
            let _ = self.push(Frame::new(server_message::error(
                Some(code.code()),
                message,
            )));
            self.close(CloseRequest {
                code,
                message,
                reason: DisconnectReason::PingTimeout,
            });
            return Liveness::TimedOut;
        }
        let silent = now_ms.saturating_sub(last_seen) >= millis(activity);
        let confirm = may_confirm
            && pushed != self.0.pushed_at_ping.load(Relaxed)
            && now_ms.saturating_sub(self.0.last_ping_ms.load(Relaxed)) >= CONFIRM_INTERVAL_MS;
        if !silent && !confirm {
            return Liveness::Alive;
        }
        // Only one ping per silence, even if two sweeps ever overlapped.
        if self
            .0
            .ping_sent_ms
            .compare_exchange(0, now_ms.max(1), Relaxed, Relaxed)
            .is_err()
        {
            return Liveness::Alive;
        }
        self.0.last_ping_ms.store(now_ms.max(1), Relaxed);
        let _ = self.push(Frame::from_static(server_message::PING));
        let pushed = self.0.state.lock().pushed;
        self.0.pushed_at_ping.store(pushed, Relaxed);
        if silent {
            Liveness::PingSent
        } else {
            Liveness::ConfirmSent
        }
    }

    /// The client answered our `pusher:ping` (pusher-js sends `pusher:pong` only in reply).
    pub fn confirm_ping(&self) {
        self.0
            .confirmed_ms
            .store(self.0.last_ping_ms.load(Relaxed), Relaxed);
    }

    /// When the last answered `pusher:ping` went out ([`clock_ms`]); 0 if none was answered.
    pub fn confirmed_ms(&self) -> u64 {
        self.0.confirmed_ms.load(Relaxed)
    }

    /// The pending close request, if a close was asked for.
    pub fn close_request(&self) -> Option<CloseRequest> {
        self.0.state.lock().close.clone()
    }

    /// Queues a frame without blocking.
    ///
    /// # Errors
    /// `Overflow` when the queue is over its byte cap (the connection will be closed with 4100),
    /// `Closed` when a close was already requested.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.push_with(frame, true)
    }

    /// [`Outbox::push`], writing the frame to an idle socket from this thread only when `direct`
    /// (a broadcast to many sockets queues instead: their tasks write in parallel, on every
    /// core, rather than one thread writing to each socket in turn).
    ///
    /// # Errors
    /// As [`Outbox::push`].
    pub fn push_with(&self, frame: Frame, direct: bool) -> Result<(), PushError> {
        let mut state = self.0.state.lock();
        if state.close.is_some() {
            return Err(PushError::Closed);
        }
        if state.bytes + frame.text().len() > self.0.max_bytes {
            state.frames = Batch::default();
            state.bytes = 0;
            state.close = Some(CloseRequest {
                code: CloseCode::OverCapacity,
                message: "Slow consumer: too many queued messages",
                reason: DisconnectReason::SlowConsumer,
            });
            drop(state);
            self.0.notify.notify_one();
            return Err(PushError::Overflow);
        }
        state.pushed = state.pushed.wrapping_add(1);
        if direct && state.frames.is_empty() && !state.task_writing {
            if let Some(direct) = &state.direct {
                // Nothing is queued and the task is not writing: write it from here. The lock
                // is held through the write, so frames keep their order.
                let wire = frame.wire(direct.deflate);
                match direct.writer.try_write(wire) {
                    Ok(n) if n == wire.len() => {
                        let writer = direct.writer.clone();
                        drop(state);
                        writer.written(&frame);
                        return Ok(());
                    }
                    Ok(n) => {
                        // The kernel took part: the task writes the rest before anything else.
                        state.remainder = Some(Box::new(wire.slice(n..)));
                        state.task_writing = true;
                        state.bytes += wire.len() - n;
                        drop(state);
                        self.0.notify.notify_one();
                        return Ok(());
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        // The socket is broken: the task finds out, and ends the connection.
                        state.direct = None;
                    }
                }
            }
        }
        state.bytes += frame.text().len();
        state.frames.push(frame);
        drop(state);
        self.0.notify.notify_one();
        Ok(())
    }

    /// Lets deliveries write to the socket themselves while nothing is queued for it; the
    /// socket task calls it once it is ready to serve (after the handshake).
    pub fn set_direct(&self, writer: Arc<dyn DirectWrite>, deflate: Option<Deflate>) {
        self.0.state.lock().direct = Some(Direct { writer, deflate });
    }

    /// Ends writes from delivering threads: the socket task is done with the socket.
    pub fn clear_direct(&self) {
        let mut state = self.0.state.lock();
        state.direct = None;
        state.task_writing = true;
    }

    /// The socket task is about to write something of its own (a pong, a close frame): until
    /// [`Outbox::release`], deliveries queue instead of writing.
    pub fn claim(&self) {
        self.0.state.lock().task_writing = true;
    }

    /// The socket task wrote what it took: deliveries may write directly again, unless
    /// something was queued meanwhile (then the task has been notified and writes it).
    pub fn release(&self) {
        let mut state = self.0.state.lock();
        if state.frames.is_empty() && state.remainder.is_none() && state.close.is_none() {
            state.task_writing = false;
        }
    }

    /// Asks the socket task to close the connection after what is already queued. The first
    /// request wins.
    pub fn close(&self, request: CloseRequest) {
        let mut state = self.0.state.lock();
        if state.close.is_none() {
            state.close = Some(request);
        }
        drop(state);
        self.0.notify.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.0.state.lock().close.is_some()
    }

    /// Bytes that can still be queued before the socket counts as a slow consumer, and its cap
    /// (`outbox_max_bytes`): a replay is sized to fit.
    pub fn room(&self) -> (usize, usize) {
        let state = self.0.state.lock();
        let room = if state.close.is_some() {
            0
        } else {
            self.0.max_bytes.saturating_sub(state.bytes)
        };
        (room, self.0.max_bytes)
    }

    /// Takes every queued frame, and returns a pending close request, if any. A slow-consumer
    /// close discards the queue; other closes keep it so it is written first.
    ///
    /// The queue moves out with the frames, so an idle connection holds no queue memory; the
    /// first frame is stored inline, so a wake-up for a single frame allocates nothing.
    ///
    /// The task writes what it took, then calls [`Outbox::release`]; until then deliveries
    /// queue rather than write themselves.
    pub fn take(&self) -> (Batch, Option<CloseRequest>) {
        let (remainder, batch, close) = self.take_all();
        debug_assert!(remainder.is_none(), "use take_all with direct writes");
        (batch, close)
    }

    /// [`Outbox::take`], with the unwritten end of a frame that a delivery wrote in part: it
    /// goes first.
    pub fn take_all(&self) -> (Option<Bytes>, Batch, Option<CloseRequest>) {
        let mut state = self.0.state.lock();
        state.bytes = 0;
        state.task_writing = true;
        (
            state.remainder.take().map(|rest| *rest),
            std::mem::take(&mut state.frames),
            state.close.clone(),
        )
    }

    /// Waits until something was pushed or a close was requested since the last `take`.
    pub async fn changed(&self) {
        self.0.notify.notified().await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::events;

    #[test]
    fn silent_connection_is_pinged_then_closed_with_4201() {
        let outbox = Outbox::new(1024);
        let (activity, pong) = (Duration::from_secs(30), Duration::from_secs(10));
        let start = outbox.0.last_seen_ms.load(Relaxed);
        assert_eq!(
            outbox.check_liveness(start + 29_999, activity, pong, true),
            Liveness::Alive
        );
        assert_eq!(
            outbox.check_liveness(start + 30_000, activity, pong, true),
            Liveness::PingSent
        );
        assert_eq!(events(&outbox), ["pusher:ping"]);
        assert_eq!(
            outbox.check_liveness(start + 39_999, activity, pong, true),
            Liveness::Alive
        );
        assert_eq!(
            outbox.check_liveness(start + 40_000, activity, pong, true),
            Liveness::TimedOut
        );
        let (frames, close) = outbox.take();
        assert_eq!(frames.len(), 1, "the 4201 error goes out before the close");
        let close = close.expect("closing");
        assert_eq!(close.code, CloseCode::PongNotReceived);
        assert_eq!(close.reason, DisconnectReason::PingTimeout);
        assert_eq!(
            outbox.check_liveness(start + 90_000, activity, pong, true),
            Liveness::Closing
        );
    }

    #[test]
    fn message_racing_with_the_deadline_keeps_the_connection() {
        let outbox = Outbox::new(1024);
        let (activity, pong) = (Duration::from_secs(30), Duration::from_secs(10));
        let start = outbox.0.last_seen_ms.load(Relaxed);
        assert_eq!(
            outbox.check_liveness(start + 30_000, activity, pong, true),
            Liveness::PingSent
        );
        // `touch` stored the new `last_seen` but not yet the cleared ping.
        outbox.0.last_seen_ms.store(start + 35_000, Relaxed);
        assert_eq!(
            outbox.check_liveness(start + 40_000, activity, pong, true),
            Liveness::Alive
        );
        assert!(!outbox.is_closing());
    }

    #[test]
    fn any_client_message_answers_the_ping() {
        let outbox = Outbox::new(1024);
        let (activity, pong) = (Duration::from_millis(1), Duration::from_secs(60));
        let later = clock_ms() + 10;
        assert_eq!(
            outbox.check_liveness(later, activity, pong, true),
            Liveness::PingSent
        );
        outbox.touch();
        let now = outbox.0.last_seen_ms.load(Relaxed);
        assert_eq!(
            outbox.check_liveness(now, activity, pong, true),
            Liveness::Alive
        );
        assert_eq!(events(&outbox), ["pusher:ping"]);
    }

    #[test]
    fn a_connection_sent_frames_is_pinged_to_confirm_what_it_received() {
        let outbox = Outbox::new(1 << 20);
        let (activity, pong) = (Duration::from_secs(30), Duration::from_secs(10));
        let start = outbox.0.last_seen_ms.load(Relaxed);
        let later = start + CONFIRM_INTERVAL_MS;
        assert_eq!(
            outbox.check_liveness(later, activity, pong, true),
            Liveness::Alive,
            "nothing sent"
        );
        outbox.push(Frame::from_static(r#"{"event":"e"}"#)).unwrap();
        assert_eq!(
            outbox.check_liveness(later, activity, pong, false),
            Liveness::Alive,
            "the node's budget of confirmations is spent"
        );
        assert_eq!(
            outbox.check_liveness(later, activity, pong, true),
            Liveness::ConfirmSent
        );
        assert_eq!(
            events(&outbox).last().map(String::as_str),
            Some("pusher:ping")
        );
        assert_eq!(outbox.confirmed_ms(), 0);
        outbox.touch();
        outbox.confirm_ping();
        assert_eq!(outbox.confirmed_ms(), later);
        // Nothing sent since the ping: no other ping until the activity timeout.
        let again = later + CONFIRM_INTERVAL_MS;
        assert_eq!(
            outbox.check_liveness(again, activity, pong, true),
            Liveness::Alive
        );
    }

    #[test]
    fn overflow_closes_as_slow_consumer_and_drops_queue() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.push(Frame::new("12345".into())), Ok(()));
        assert_eq!(
            outbox.push(Frame::new("123456".into())),
            Err(PushError::Overflow)
        );
        assert_eq!(outbox.push(Frame::new("1".into())), Err(PushError::Closed));
        let (batch, close) = outbox.take();
        let close = close.expect("close requested");
        assert!(batch.is_empty());
        assert_eq!(close.reason, DisconnectReason::SlowConsumer);
        assert_eq!(close.code, CloseCode::OverCapacity);
    }

    #[test]
    fn take_drains_in_order_and_resets_budget() {
        let outbox = Outbox::new(10);
        outbox.push(Frame::new("aaaa".into())).unwrap();
        outbox.push(Frame::new("bbbb".into())).unwrap();
        let (batch, close) = outbox.take();
        assert!(close.is_none());
        assert_eq!(
            batch.iter().map(|f| &f.text()[..]).collect::<Vec<_>>(),
            [b"aaaa", b"bbbb"]
        );
        outbox.push(Frame::new("cccccccc".into())).unwrap();
    }

    /// A socket's send buffer in memory: takes up to `room` bytes, then would block.
    #[derive(Debug, Default)]
    struct Buffer {
        state: Mutex<(Vec<u8>, usize, bool)>,
        written: AtomicU64,
    }

    impl Buffer {
        fn with_room(room: usize) -> Arc<Buffer> {
            let buffer = Arc::new(Buffer::default());
            buffer.state.lock().1 = room;
            buffer
        }
        fn bytes(&self) -> Vec<u8> {
            self.state.lock().0.clone()
        }
    }

    impl DirectWrite for Buffer {
        fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
            let mut state = self.state.lock();
            if state.2 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(state.1);
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            state.1 -= n;
            state.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn written(&self, _frame: &Frame) {
            self.written.fetch_add(1, Relaxed);
        }
    }

    fn wire(text: &str) -> Vec<u8> {
        Frame::new(text.into()).wire(None).to_vec()
    }

    #[test]
    fn an_idle_socket_is_written_by_the_delivery_itself() {
        let outbox = Outbox::new(1024);
        let socket = Buffer::with_room(1 << 20);
        outbox.set_direct(socket.clone(), None);
        outbox.push(Frame::new("one".into())).unwrap();
        outbox.push(Frame::new("two".into())).unwrap();
        assert_eq!(socket.bytes(), [wire("one"), wire("two")].concat());
        assert_eq!(socket.written.load(Relaxed), 2);
        let (rest, batch, close) = outbox.take_all();
        assert!(rest.is_none() && batch.is_empty() && close.is_none());
    }

    #[test]
    fn a_partial_write_leaves_the_rest_first_for_the_task_and_later_frames_queue() {
        let outbox = Outbox::new(1024);
        let socket = Buffer::with_room(3);
        outbox.set_direct(socket.clone(), None);
        outbox.push(Frame::new("first".into())).unwrap();
        outbox.push(Frame::new("second".into())).unwrap();
        assert_eq!(socket.bytes(), wire("first")[..3]);
        let (rest, batch, _) = outbox.take_all();
        assert_eq!(rest.as_deref(), Some(&wire("first")[3..]));
        assert_eq!(
            batch.iter().map(|f| &f.text()[..]).collect::<Vec<_>>(),
            [b"second"]
        );
        // The task wrote them; deliveries write directly again.
        socket.state.lock().1 = 1 << 20;
        outbox.release();
        outbox.push(Frame::new("third".into())).unwrap();
        assert!(socket.bytes().ends_with(&wire("third")));
    }

    #[test]
    fn a_full_socket_or_a_busy_task_queues_the_frame() {
        let outbox = Outbox::new(1024);
        let socket = Buffer::with_room(0);
        outbox.set_direct(socket.clone(), None);
        outbox.push(Frame::new("blocked".into())).unwrap();
        assert!(socket.bytes().is_empty());
        socket.state.lock().1 = 1 << 20;
        // Queued frames go first: the next delivery queues behind them.
        outbox.push(Frame::new("behind".into())).unwrap();
        assert!(socket.bytes().is_empty());
        let (_, batch, _) = outbox.take_all();
        assert_eq!(batch.len(), 2);
        // While the task writes (a pong, input being handled), deliveries queue.
        outbox.claim();
        outbox.push(Frame::new("while claimed".into())).unwrap();
        outbox.release();
        assert!(socket.bytes().is_empty(), "a queued frame keeps the claim");
        let (_, batch, _) = outbox.take_all();
        assert_eq!(batch.len(), 1);
        outbox.release();
        outbox.push(Frame::new("idle again".into())).unwrap();
        assert_eq!(socket.bytes(), wire("idle again"));
    }

    #[test]
    fn a_broken_socket_stops_direct_writes_and_cleared_direct_never_writes() {
        let outbox = Outbox::new(1024);
        let socket = Buffer::with_room(1 << 20);
        socket.state.lock().2 = true;
        outbox.set_direct(socket.clone(), None);
        outbox.push(Frame::new("lost".into())).unwrap();
        socket.state.lock().2 = false;
        outbox.push(Frame::new("queued".into())).unwrap();
        assert!(socket.bytes().is_empty());
        assert_eq!(outbox.take_all().1.len(), 2);

        let outbox = Outbox::new(1024);
        outbox.set_direct(socket.clone(), None);
        outbox.clear_direct();
        outbox.release();
        outbox.push(Frame::new("after the end".into())).unwrap();
        assert!(socket.bytes().is_empty());
    }
}

//! Channel logs: every published event's position in its channel, a bounded history of recent
//! events, and the resume marks that let a returning client get what it missed.
//!
//! A [`Log`] lives in its channel's entry (`channels.rs`) behind the channel's own mutex, which the
//! fan-out holds while it assigns a position, appends and pushes to every subscriber: one order per
//! channel for every subscriber, concurrent publishes included. The history is bounded by count,
//! age and bytes (per app: [`App::history_events`], [`App::history_seconds`],
//! [`App::history_max_bytes`]); the frames it holds are the `Bytes` the outboxes already share, so
//! keeping an event costs one reference and a small entry, not a copy.
//!
//! [`Resumes`] remembers, per (identity, channel), where each departed socket stopped. A socket
//! of the same identity that subscribes again gets the events after that position right after
//! `subscription_succeeded`; when some of them are gone, [`RESUME_FAILED_EVENT`] with the reason
//! first, then those still kept ([`replay`]).
//!
//! Invariants: positions of one log strictly increase; a log holds at most `history_events`
//! entries and `history_max_bytes` of frames, none older than `history_seconds` once expired
//! (lazily on every append, and by the sweep); resume marks are bounded in number and age.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_protocol::{ChannelName, SocketId, UserId};
use parking_lot::Mutex;

use crate::app::App;
use crate::outbox::{clock_ms, Frame};

/// The event a client gets on a channel when some of the events it missed cannot be replayed:
/// the events it then gets on that channel may not follow the last one it had. pusher-js hands
/// it to `channel.bind('herald:resume_failed', ...)` and `bind_global`; Laravel Echo to
/// `.listen('.herald:resume_failed', ...)`. Its data is `{"reason": "..."}` ([`ResumeFailure`]).
pub const RESUME_FAILED_EVENT: &str = "herald:resume_failed";

/// How long a departed socket's resume mark is kept. Longer than any sensible history window,
/// so a client that comes back after the window hears `window_passed` instead of nothing.
pub const RESUME_MARK_TTL: Duration = Duration::from_secs(10 * 60);

/// How far before a silent node was last heard its clients resume when they come back on
/// another node (`AppState::resume_after_silence`): what its sockets may not have
/// received before it went silent (queued, or in flight in the kernel when it was killed).
pub const SILENCE_SLACK: Duration = Duration::from_secs(2);

/// Most resume marks one app keeps; past it, departures are not remembered (and counted).
pub const MAX_RESUME_MARKS: usize = 100_000;

/// A position in a channel's log: `ms-seq`, the shape of a Redis Stream id, so that a position
/// assigned by a Redis log and one assigned here compare the same way. `ms` is wall-clock
/// milliseconds when the event was accepted (kept monotonic per log); `START` is before every
/// event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub ms: u64,
    pub seq: u64,
}

impl Position {
    /// Before the first entry of every log.
    pub const START: Position = Position { ms: 0, seq: 0 };

    /// The next position after `self` at wall-clock `now_ms`.
    fn next(self, now_ms: u64) -> Position {
        if now_ms > self.ms {
            Position { ms: now_ms, seq: 0 }
        } else {
            Position {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Not a position: `ms-seq` with two decimal `u64`s is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPosition;

impl fmt::Display for InvalidPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid log position")
    }
}

impl std::error::Error for InvalidPosition {}

impl FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(s: &str) -> Result<Position, InvalidPosition> {
        let (ms, seq) = s.split_once('-').ok_or(InvalidPosition)?;
        Ok(Position {
            ms: ms.parse().map_err(|_| InvalidPosition)?,
            seq: seq.parse().map_err(|_| InvalidPosition)?,
        })
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An app's history bounds; `None` from [`HistoryLimits::of`] when history is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_events: usize,
    pub max_age: Duration,
    pub max_bytes: usize,
}

impl HistoryLimits {
    pub fn of(app: &App) -> Option<HistoryLimits> {
        (app.history_events > 0 && app.history_seconds > 0 && app.history_max_bytes > 0).then(
            || HistoryLimits {
                max_events: app.history_events,
                max_age: Duration::from_secs(app.history_seconds),
                max_bytes: app.history_max_bytes,
            },
        )
    }

    fn max_age_ms(&self) -> u64 {
        u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Why some of a returning client's missed events cannot be replayed; the `reason` of
/// [`RESUME_FAILED_EVENT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResumeFailure {
    /// Some missed events are older than the app's `history_seconds`.
    WindowPassed,
    /// Some missed events were pushed out by `history_events` or `history_max_bytes`, or would
    /// not fit in the socket's outbox.
    HistoryTrimmed,
    /// Some events never reached this node: a gap in the cluster's log (trimmed past a node that
    /// was away too long, or Redis lost its data).
    LogLost,
}

impl ResumeFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeFailure::WindowPassed => "window_passed",
            ResumeFailure::HistoryTrimmed => "history_trimmed",
            ResumeFailure::LogLost => "log_lost",
        }
    }
}

/// What a subscription did about the events its identity missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// The missed events (maybe none) were queued right after `subscription_succeeded`.
    Replayed { events: usize },
    /// Some could not be: the client got [`RESUME_FAILED_EVENT`], then the `events` still kept
    /// after its resume point (maybe none), in order.
    Failed {
        failure: ResumeFailure,
        events: usize,
    },
}

impl Resumed {
    /// Events replayed.
    pub fn events(self) -> usize {
        match self {
            Resumed::Replayed { events } | Resumed::Failed { events, .. } => events,
        }
    }
}

/// One event kept for replay.
#[derive(Debug)]
struct Entry {
    position: Position,
    frame: Frame,
    /// The publisher's own socket, which must not get it on replay either.
    except: Option<SocketId>,
    /// [`clock_ms`] when it was appended.
    at_ms: u64,
}

/// Why the newest dropped entry was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trim {
    Age,
    Size,
    /// Events up to `trimmed` may never have arrived.
    Lost,
}

/// One channel's log on this node: its last position and its bounded history.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// Invariant: at least every position in `entries` and `trimmed`.
    last: Position,
    /// Oldest first. Invariant: positions strictly increase.
    entries: VecDeque<Entry>,
    /// Sum of the entries' frame lengths.
    bytes: usize,
    /// The newest position dropped from the history, `START` if none was.
    trimmed: Position,
    /// When the entry at `trimmed` was appended ([`clock_ms`]), and why it went.
    trimmed_at_ms: u64,
    trimmed_by: Option<Trim>,
}

impl Log {
    pub(crate) fn last(&self) -> Position {
        self.last
    }

    /// Events kept, and the bytes of their frames.
    #[cfg(test)]
    pub(crate) fn size(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }

    /// Whether the log holds nothing worth keeping its channel entry for.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Assigns the next position to an event and, with history on, keeps it.
    pub(crate) fn append(
        &mut self,
        frame: &Frame,
        except: Option<SocketId>,
        limits: Option<HistoryLimits>,
    ) -> Position {
        let position = self.last.next(wall_ms());
        self.last = position;
        match limits {
            Some(limits) => self.keep(position, frame, except, limits),
            // History is off (or was just turned off): keep nothing.
            None => self.clear(),
        }
        position
    }

    fn keep(
        &mut self,
        position: Position,
        frame: &Frame,
        except: Option<SocketId>,
        limits: HistoryLimits,
    ) {
        let now = clock_ms();
        self.expire(limits, now);
        self.bytes += frame.text().len();
        self.entries.push_back(Entry {
            position,
            frame: frame.clone(),
            except,
            at_ms: now,
        });
        let over_count = self.entries.len().saturating_sub(limits.max_events);
        self.drop_front(over_count, Trim::Size);
        while self.bytes > limits.max_bytes && !self.entries.is_empty() {
            self.drop_front(1, Trim::Size);
        }
    }

    /// Keeps an event read from the cluster's log at `position`; false (and nothing kept) if the
    /// log is already past it: a duplicate.
    pub(crate) fn append_at(
        &mut self,
        position: Position,
        frame: &Frame,
        except: Option<SocketId>,
        limits: Option<HistoryLimits>,
    ) -> bool {
        if position <= self.last {
            return false;
        }
        self.last = position;
        match limits {
            Some(limits) => self.keep(position, frame, except, limits),
            None => self.clear(),
        }
        true
    }

    /// Events up to the last position may have been lost: no replay may span them.
    pub(crate) fn lose(&mut self) {
        self.clear();
        self.trimmed = self.last;
        self.trimmed_at_ms = clock_ms();
        self.trimmed_by = Some(Trim::Lost);
    }

    /// Drops the whole history (it was turned off).
    pub(crate) fn clear(&mut self) {
        self.drop_front(usize::MAX, Trim::Size);
    }

    /// Drops entries older than the window.
    pub(crate) fn expire(&mut self, limits: HistoryLimits, now_ms: u64) {
        let max_age = limits.max_age_ms();
        let old = self
            .entries
            .iter()
            .take_while(|e| now_ms.saturating_sub(e.at_ms) > max_age)
            .count();
        self.drop_front(old, Trim::Age);
    }

    fn drop_front(&mut self, n: usize, why: Trim) {
        for _ in 0..n {
            let Some(entry) = self.entries.pop_front() else {
                return;
            };
            self.bytes -= entry.frame.text().len();
            self.trimmed = entry.position;
            self.trimmed_at_ms = entry.at_ms;
            self.trimmed_by = Some(why);
        }
    }

    /// The frames kept after `after`, oldest first, except those published by `old_socket`,
    /// and, when some event after `after` is no longer kept, why: then the frames are what is
    /// left after the gap (none when the log lost events: no replay spans a hole whose extent is
    /// unknown).
    pub(crate) fn since(
        &self,
        after: Position,
        old_socket: Option<SocketId>,
    ) -> (Option<ResumeFailure>, impl Iterator<Item = &Frame>) {
        let failure = (self.trimmed > after).then_some(match self.trimmed_by {
            Some(Trim::Age) => ResumeFailure::WindowPassed,
            Some(Trim::Lost) => ResumeFailure::LogLost,
            Some(Trim::Size) | None => ResumeFailure::HistoryTrimmed,
        });
        let replay = failure != Some(ResumeFailure::LogLost);
        let frames = self
            .entries
            .iter()
            .filter(move |e| {
                replay && e.position > after && (e.except.is_none() || e.except != old_socket)
            })
            .map(|e| &e.frame);
        (failure, frames)
    }

    /// The newest position that a client had certainly received if it answered a ping sent at
    /// `confirmed_ms` ([`clock_ms`]): the last event appended at or before it.
    pub(crate) fn confirmed_before(&self, confirmed_ms: u64) -> Position {
        match self.entries.iter().rev().find(|e| e.at_ms <= confirmed_ms) {
            Some(entry) => entry.position,
            None if self.trimmed_by.is_some() && self.trimmed_at_ms <= confirmed_ms => self.trimmed,
            None => Position::START,
        }
    }
}

/// Who a returning client is. A socket can have several identities at once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The signed resume cookie's token: one browser profile, all its tabs.
    Cookie(String),
    /// A presence `user_id` or the `pusher:signin` user id.
    User(UserId),
}

/// Where a departed socket stopped on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    /// Every event up to here reached the client (exactly, after a drain; conservatively, after
    /// an abrupt loss).
    pub after: Position,
    /// The departed socket, whose own publishes are not replayed to it.
    pub socket: SocketId,
    /// [`wall_ms`] at the departure.
    pub left_ms: u64,
}

/// What a resubscribing socket should be sent: everything after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub after: Position,
    pub old_socket: SocketId,
    pub left_ms: u64,
}

#[derive(Debug)]
struct Mark {
    departure: Departure,
    /// [`clock_ms`] after which the mark is forgotten.
    expires_ms: u64,
}

/// Departed sockets' positions per (identity, channel), for one app.
#[derive(Debug, Default)]
pub(crate) struct Resumes {
    marks: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    by_key: HashMap<(Identity, ChannelName), Vec<Mark>>,
    count: usize,
    next_sweep_ms: u64,
}

impl Resumes {
    /// Remembers where a socket with these identities stopped on `channel`. Returns false when
    /// the app's bound on marks was reached and the departure was not remembered.
    pub(crate) fn record(
        &self,
        identities: &[Identity],
        channel: &ChannelName,
        departure: Departure,
    ) -> bool {
        let now = clock_ms();
        let mut marks = self.marks.lock();
        marks.sweep(now);
        if marks.count + identities.len() > MAX_RESUME_MARKS {
            return false;
        }
        let expires_ms = now + millis(RESUME_MARK_TTL);
        for identity in identities {
            marks
                .by_key
                .entry((identity.clone(), channel.clone()))
                .or_default()
                .push(Mark {
                    departure,
                    expires_ms,
                });
            marks.count += 1;
        }
        true
    }

    /// Takes the resume point for a socket with these identities subscribing to `channel`.
    ///
    /// Several sockets may share an identity (a browser's tabs): the point is the earliest of
    /// the departures still remembered under the first identity that has any, and one departure
    /// (the latest) is consumed, under every identity of the socket. So each departed socket
    /// resumes once, and none resumes after a point another of them had not reached (at-least-
    /// once: a tab may get events it had, never miss one).
    pub(crate) fn take(&self, identities: &[Identity], channel: &ChannelName) -> Option<Resume> {
        if identities.is_empty() {
            return None;
        }
        let now = clock_ms();
        let mut guard = self.marks.lock();
        let marks = &mut *guard;
        marks.sweep(now);
        let mut found: Option<Resume> = None;
        for identity in identities {
            let key = (identity.clone(), channel.clone());
            let Some(list) = marks.by_key.get_mut(&key) else {
                continue;
            };
            if found.is_none() {
                let earliest = list.iter().map(|m| m.departure).min_by_key(|d| d.after);
                found = earliest.map(|d| Resume {
                    after: d.after,
                    old_socket: d.socket,
                    left_ms: d.left_ms,
                });
            }
            if let Some(latest) = list
                .iter()
                .enumerate()
                .max_by_key(|(_, m)| m.departure.after)
                .map(|(i, _)| i)
            {
                list.swap_remove(latest);
                marks.count -= 1;
            }
            if list.is_empty() {
                marks.by_key.remove(&key);
            }
        }
        found
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.marks.lock().count
    }
}

impl Marks {
    /// Forgets expired marks, at most once a second.
    fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.next_sweep_ms {
            return;
        }
        self.next_sweep_ms = now_ms + 1000;
        let mut removed = 0;
        self.by_key.retain(|_, list| {
            let before = list.len();
            list.retain(|m| m.expires_ms > now_ms);
            removed += before - list.len();
            !list.is_empty()
        });
        self.count -= removed;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a resuming subscription gets from a log: why some of what it missed is gone, if it is,
/// and the frames to replay, oldest first.
#[derive(Debug)]
pub(crate) struct Replay<'a> {
    pub failure: Option<ResumeFailure>,
    pub frames: Vec<&'a Frame>,
}

/// Decides what a resuming subscription gets from `log`: every event still kept after
/// `resume.after` (except the old socket's own), and, when some event after it is gone, why.
/// The replay is at most `max_bytes` of frames (what the socket's outbox can take): when the
/// events kept are more, only the newest that fit are replayed, and the rest counts as trimmed.
///
/// A log with no trace of anything after `resume.after` is either one where nothing was
/// published since (replay nothing) or a fresh log whose predecessor expired while idle: then
/// events may have been lost if the departure is older than the window.
pub(crate) fn replay<'a>(
    log: &'a Log,
    resume: &Resume,
    limits: HistoryLimits,
    max_bytes: usize,
) -> Replay<'a> {
    let fresh = log.last == Position::START;
    if fresh {
        let since = if resume.after == Position::START {
            resume.left_ms
        } else {
            resume.after.ms
        };
        let passed = wall_ms().saturating_sub(since) > limits.max_age_ms();
        return Replay {
            failure: passed.then_some(ResumeFailure::WindowPassed),
            frames: Vec::new(),
        };
    }
    let (mut failure, frames) = log.since(resume.after, Some(resume.old_socket));
    let mut frames: Vec<&Frame> = frames.collect();
    // The newest frames that fit, counted from the end.
    let mut bytes = 0;
    let fit = frames
        .iter()
        .rev()
        .take_while(|f| {
            bytes += f.text().len();
            bytes <= max_bytes
        })
        .count();
    if fit < frames.len() {
        frames.drain(..frames.len() - fit);
        failure.get_or_insert(ResumeFailure::HistoryTrimmed);
    }
    Replay { failure, frames }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(events: usize, bytes: usize) -> Option<HistoryLimits> {
        Some(HistoryLimits {
            max_events: events,
            max_age: Duration::from_secs(120),
            max_bytes: bytes,
        })
    }

    fn frame(n: usize) -> Frame {
        Frame::new(format!("{n:04}"))
    }

    fn texts<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Vec<String> {
        frames
            .into_iter()
            .map(|f| String::from_utf8_lossy(f.text()).into_owned())
            .collect()
    }

    #[test]
    fn positions_strictly_increase_and_round_trip() {
        let mut log = Log::default();
        let mut previous = Position::START;
        for n in 0..1000 {
            let p = log.append(&frame(n), None, limits(10, 1 << 20));
            assert!(p > previous, "{p} after {previous}");
            previous = p;
        }
        assert_eq!(previous.to_string().parse::<Position>(), Ok(previous));
        let later = Position { ms: 5, seq: 9 }.next(4);
        assert_eq!(later, Position { ms: 5, seq: 10 }, "the clock went back");
        for bad in ["", "5", "a-1", "1-b", "1-2-3"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }

    #[test]
    fn history_is_bounded_by_count_and_bytes_and_says_so() {
        let mut log = Log::default();
        let positions: Vec<Position> = (0..10)
            .map(|n| log.append(&frame(n), None, limits(4, 1 << 20)))
            .collect();
        let (failure, frames) = log.since(positions[5], None);
        assert_eq!(failure, None);
        assert_eq!(texts(frames), ["0006", "0007", "0008", "0009"]);
        let (failure, frames) = log.since(positions[4], None);
        assert_eq!(
            failure,
            Some(ResumeFailure::HistoryTrimmed),
            "event 5 was trimmed"
        );
        assert_eq!(
            texts(frames),
            ["0006", "0007", "0008", "0009"],
            "what is left after the gap"
        );
        // 4 bytes per frame, 12 bytes allowed: three frames kept.
        let mut small = Log::default();
        for n in 0..5 {
            small.append(&frame(n), None, limits(100, 12));
        }
        assert_eq!(small.entries.len(), 3);
        assert_eq!(small.bytes, 12);
    }

    #[test]
    fn replay_skips_the_old_sockets_own_events() {
        let mut log = Log::default();
        let me = SocketId { node: 1, seq: 7 };
        let start = log.last();
        log.append(&frame(1), Some(me), limits(10, 1 << 20));
        log.append(&frame(2), None, limits(10, 1 << 20));
        assert_eq!(texts(log.since(start, Some(me)).1), ["0002"]);
        assert_eq!(texts(log.since(start, None).1).len(), 2);
    }

    #[test]
    fn expiry_by_age_reports_window_passed() {
        let mut log = Log::default();
        let l = limits(10, 1 << 20).unwrap();
        let first = log.append(&frame(1), None, Some(l));
        log.append(&frame(2), None, Some(l));
        log.expire(l, clock_ms() + millis(l.max_age) + 1);
        assert!(log.is_empty());
        assert_eq!(log.since(first, None).0, Some(ResumeFailure::WindowPassed));
        assert_eq!(log.since(log.last(), None).0, None);
        assert_eq!(log.since(log.last(), None).1.count(), 0);
    }

    fn resume(after: Position) -> Resume {
        Resume {
            after,
            old_socket: SocketId { node: 1, seq: 99 },
            left_ms: wall_ms(),
        }
    }

    #[test]
    fn a_resume_past_the_window_replays_what_is_left_after_the_notice() {
        let mut log = Log::default();
        let l = limits(10, 1 << 20).unwrap();
        let start = log.last();
        for n in 1..=3 {
            log.append(&frame(n), None, Some(l));
        }
        // The first event is older than the window, the others are not.
        for entry in log.entries.iter_mut().skip(1) {
            entry.at_ms += millis(l.max_age);
        }
        log.expire(l, clock_ms() + millis(l.max_age) + 1);
        let replay = replay(&log, &resume(start), l, usize::MAX);
        assert_eq!(replay.failure, Some(ResumeFailure::WindowPassed));
        assert_eq!(texts(replay.frames), ["0002", "0003"]);
    }

    #[test]
    fn a_replay_is_every_event_kept_after_the_point_within_its_bytes() {
        let mut log = Log::default();
        let l = limits(4, 1 << 20).unwrap();
        let positions: Vec<Position> = (0..6)
            .map(|n| log.append(&frame(n), None, Some(l)))
            .collect();
        // Kept: 0002..0005. A resume after 0002 misses nothing.
        let full = replay(&log, &resume(positions[2]), l, usize::MAX);
        assert_eq!(full.failure, None);
        assert_eq!(texts(full.frames), ["0003", "0004", "0005"]);
        // A resume after 0000 missed 0001, which is gone: the rest, in order, each once.
        let partial = replay(&log, &resume(positions[0]), l, usize::MAX);
        assert_eq!(partial.failure, Some(ResumeFailure::HistoryTrimmed));
        assert_eq!(texts(partial.frames), ["0002", "0003", "0004", "0005"]);
        // 4 bytes a frame, 10 bytes allowed: the newest two, and the rest counts as trimmed.
        let fit = replay(&log, &resume(positions[2]), l, 10);
        assert_eq!(fit.failure, Some(ResumeFailure::HistoryTrimmed));
        assert_eq!(texts(fit.frames), ["0004", "0005"]);
        let exact = replay(&log, &resume(positions[2]), l, 12);
        assert_eq!((exact.failure, exact.frames.len()), (None, 3));
    }

    #[test]
    fn a_lost_log_replays_nothing_after_its_hole() {
        let mut log = Log::default();
        let l = limits(10, 1 << 20).unwrap();
        let start = log.last();
        log.append(&frame(1), None, Some(l));
        log.lose();
        log.append(&frame(2), None, Some(l));
        let replay = replay(&log, &resume(start), l, usize::MAX);
        assert_eq!(replay.failure, Some(ResumeFailure::LogLost));
        assert!(replay.frames.is_empty());
    }

    #[test]
    fn shared_identity_resumes_each_socket_once_never_past_its_point() {
        let resumes = Resumes::default();
        let cookie = Identity::Cookie("c".into());
        let channel = ChannelName::parse("news", 200).unwrap();
        let at = |seq| Position { ms: 1, seq };
        let departure = |seq, socket| Departure {
            after: at(seq),
            socket: SocketId {
                node: 1,
                seq: socket,
            },
            left_ms: wall_ms(),
        };
        assert!(resumes.record(std::slice::from_ref(&cookie), &channel, departure(5, 1)));
        assert!(resumes.record(std::slice::from_ref(&cookie), &channel, departure(9, 2)));
        // Whichever tab comes first resumes from the earlier point; the other one too.
        let first = resumes
            .take(std::slice::from_ref(&cookie), &channel)
            .unwrap();
        let second = resumes
            .take(std::slice::from_ref(&cookie), &channel)
            .unwrap();
        assert_eq!((first.after, second.after), (at(5), at(5)));
        assert_eq!(resumes.take(std::slice::from_ref(&cookie), &channel), None);
        assert_eq!(resumes.len(), 0);

        // A departure under two identities is consumed under both.
        let user = Identity::User(UserId("alice".into()));
        resumes.record(&[cookie.clone(), user.clone()], &channel, departure(3, 3));
        assert!(resumes
            .take(std::slice::from_ref(&user), &channel)
            .is_some());
        assert!(
            resumes.take(&[cookie], &channel).is_some(),
            "kept under the other"
        );
        assert_eq!(resumes.len(), 0);
    }
}

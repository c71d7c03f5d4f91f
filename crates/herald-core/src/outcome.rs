//! What handling one client message did ([`Outcome`]), for metrics, webhooks and the admin
//! console's stream: the session's answer to its caller, below both the session and the monitor.
//! Re-exported from [`crate::session`].

use herald_protocol::{ChannelName, UserId};

use crate::channels::{Delivery, Subscribed, Unsubscribed};

/// What handling one message did, for metrics, webhooks and the admin console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Nothing,
    Subscribed {
        channel: ChannelName,
        res: Subscribed,
        /// The presence identity, for presence channels.
        user: Option<UserId>,
        /// A re-subscription with another identity replaced this one.
        replaced: Option<UserId>,
    },
    SubscribeRejected,
    Unsubscribed(Left),
    ClientEvent {
        channel: ChannelName,
        delivery: Delivery,
        event: String,
        /// The raw JSON the client sent as `data`.
        data: String,
        user: Option<UserId>,
    },
    ClientEventRejected,
    /// The message was refused because it would exceed a limit (counted as such).
    LimitReached(SessionLimit),
    SignedIn,
    SigninRejected,
}

/// The per-connection limits a session enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionLimit {
    ChannelsPerConnection,
    PresenceMembers,
    ClientEventRate,
    ClientEventSize,
}

/// A socket left a channel (by unsubscribing or by disconnecting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    pub channel: ChannelName,
    pub res: Unsubscribed,
    pub user: Option<UserId>,
}

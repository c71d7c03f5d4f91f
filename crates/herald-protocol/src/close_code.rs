//! Pusher close codes, `pusher:error` codes (protocol doc "Error Codes") and the `type` of a
//! `pusher:subscription_error` (protocol doc 1.6, "Failures").
//!
//! Invariant: the server never closes with 4000 (pusher-js switches to TLS) nor with anything
//! >= 4300 (pusher-js gives up for good); those codes exist only as `pusher:error` events.

/// A code the server closes a WebSocket with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 4001: the app key is unknown.
    AppNotFound,
    /// 4003: the app is disabled.
    AppDisabled,
    /// 4004: the app is over its connection quota.
    AppOverQuota,
    /// 4005: the URL path is not a Pusher endpoint.
    PathNotFound,
    /// 4006: the `version` parameter is malformed.
    InvalidVersion,
    /// 4007: the protocol version is not supported.
    UnsupportedProtocol,
    /// 4008: no protocol version was given.
    NoProtocol,
    /// 4009: the connection is not authorized (origin, sign-in, terminated by the app).
    Unauthorized,
    /// 4100: over capacity or a slow consumer; pusher-js retries after 1 s.
    OverCapacity,
    /// 4200: generic "reconnect now", used when draining.
    ReconnectImmediately,
    /// 4201: the client did not answer a ping.
    PongNotReceived,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::AppNotFound => 4001,
            CloseCode::AppDisabled => 4003,
            CloseCode::AppOverQuota => 4004,
            CloseCode::PathNotFound => 4005,
            CloseCode::InvalidVersion => 4006,
            CloseCode::UnsupportedProtocol => 4007,
            CloseCode::NoProtocol => 4008,
            CloseCode::Unauthorized => 4009,
            CloseCode::OverCapacity => 4100,
            CloseCode::ReconnectImmediately => 4200,
            CloseCode::PongNotReceived => 4201,
        }
    }
}

/// A code carried by a `pusher:error` event that does not close the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Closing errors are also announced with an event of the same code first.
    Close(CloseCode),
    /// 4301: client event rejected (rate limit, disabled, too large, not allowed here).
    ClientEventRejected,
    /// 4302: watchlist over 100 ids; only the first 100 are kept.
    WatchlistLimit,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::Close(close) => close.code(),
            ErrorCode::ClientEventRejected => 4301,
            ErrorCode::WatchlistLimit => 4302,
        }
    }
}

/// The `type` of a channel-scoped `pusher:subscription_error`: what was wrong with the subscribe.
///
/// pusher-js itself emits `AuthError` (with the auth endpoint's HTTP status) when authorization
/// fails, and Laravel Echo's `.error()` receives the event's data as is, so `AuthError` keeps
/// statuses 401/403. The other types are herald's (Soketi uses `LimitReached` too): a client that
/// switches on `type` learns whether to fix its auth, its input, or to back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionErrorType {
    /// The signature is missing or wrong, or the connection may not have this channel.
    AuthError,
    /// The channel name is malformed.
    InvalidChannel,
    /// Presence `channel_data` is malformed (not a JSON object, no `user_id`).
    InvalidChannelData,
    /// A size or count limit was reached.
    LimitReached,
}

impl SubscriptionErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionErrorType::AuthError => "AuthError",
            SubscriptionErrorType::InvalidChannel => "InvalidChannel",
            SubscriptionErrorType::InvalidChannelData => "InvalidChannelData",
            SubscriptionErrorType::LimitReached => "LimitReached",
        }
    }
}

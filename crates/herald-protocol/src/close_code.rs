//! Pusher close codes and `pusher:error` codes (protocol doc "Error Codes").
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

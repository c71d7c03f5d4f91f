//! Client faults as typed errors, each with one mapping to what the client is told.
//!
//! Invariant: every error maps to the wire in one `match` with no `_` arm, so a new variant
//! forces a protocol decision. The `Display` text is the message the client reads; it names the
//! problem and never echoes a secret.
//!
//! | error | wire answer | socket |
//! |---|---|---|
//! | [`SubscribeError`] | `pusher:subscription_error` `{type, error, status}` | stays open |
//! | [`ClientEventError`] | `pusher:error` 4301 (4009 when not subscribed) | stays open |
//! | [`MessageError`] | `pusher:error` (`code: null`, 4301 or 4302) | stays open |
//! | [`SigninError`] | `pusher:error` 4009, then close 4009 | closed |
//! | [`ConnectionError`] | `pusher:error` and close with the same code | closed |

use std::fmt;

use herald_protocol::{ChannelNameError, CloseCode, ErrorCode, ParseError, SubscriptionErrorType};

/// The `type` and `status` of a `pusher:subscription_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRefusal {
    pub kind: SubscriptionErrorType,
    /// HTTP-style for the request's own faults (400 malformed, 401 signature, 403 forbidden), as
    /// pusher-js reports auth endpoint failures; a Pusher code for limits (4009 a size limit,
    /// 4100 a capacity limit), as Soketi does.
    pub status: u16,
}

/// Why a `pusher:subscribe` was refused. The socket stays open; only this channel is refused.
///
/// | variant | `type` | `status` |
/// |---|---|---|
/// | `InvalidChannelName` | `InvalidChannel` | 400 |
/// | `ChannelNameTooLong` | `LimitReached` | 4009 |
/// | `TooManyChannels` | `LimitReached` | 4100 |
/// | `MissingAuth` | `AuthError` | 401 |
/// | `InvalidSignature` | `AuthError` | 401 |
/// | `MissingChannelData` | `AuthError` | 401 (the signature covers `channel_data`) |
/// | `MalformedChannelData` | `InvalidChannelData` | 400 |
/// | `UserIdTooLong` | `LimitReached` | 4009 |
/// | `UserInfoTooLarge` | `LimitReached` | 4009 |
/// | `NotSignedInAsUser` | `AuthError` | 403 |
/// | `PresenceFull` | `LimitReached` | 4100 |
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    /// Empty, or a character outside the allowed set.
    InvalidChannelName(ChannelNameError),
    ChannelNameTooLong {
        max: usize,
    },
    TooManyChannels {
        max: usize,
    },
    /// A private or presence channel without `auth`.
    MissingAuth,
    InvalidSignature,
    MissingChannelData,
    MalformedChannelData(ChannelDataError),
    UserIdTooLong {
        max: usize,
    },
    UserInfoTooLarge {
        max: usize,
    },
    /// `#server-to-user-{id}` from a connection not signed in as `id`.
    NotSignedInAsUser,
    PresenceFull {
        max: usize,
    },
}

/// The channel table's one refusal of a subscribe: a new member would exceed the app's
/// `max_presence_members`. Told to the client as [`SubscribeError::PresenceFull`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceFull {
    pub max: usize,
}

/// What is wrong with presence `channel_data` that was correctly signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelDataError {
    NotJsonObject,
    MissingUserId,
}

impl SubscribeError {
    pub fn refusal(&self) -> SubscriptionRefusal {
        use SubscriptionErrorType::{AuthError, InvalidChannel, InvalidChannelData, LimitReached};
        let size_limit = CloseCode::Unauthorized.code();
        let capacity_limit = CloseCode::OverCapacity.code();
        let (kind, status) = match self {
            SubscribeError::InvalidChannelName(_) => (InvalidChannel, 400),
            SubscribeError::ChannelNameTooLong { .. } => (LimitReached, size_limit),
            SubscribeError::TooManyChannels { .. } => (LimitReached, capacity_limit),
            SubscribeError::MissingAuth
            | SubscribeError::InvalidSignature
            | SubscribeError::MissingChannelData => (AuthError, 401),
            SubscribeError::MalformedChannelData(_) => (InvalidChannelData, 400),
            SubscribeError::UserIdTooLong { .. } | SubscribeError::UserInfoTooLarge { .. } => {
                (LimitReached, size_limit)
            }
            SubscribeError::NotSignedInAsUser => (AuthError, 403),
            SubscribeError::PresenceFull { .. } => (LimitReached, capacity_limit),
        };
        SubscriptionRefusal { kind, status }
    }
}

impl From<ChannelNameError> for SubscribeError {
    fn from(err: ChannelNameError) -> SubscribeError {
        match err {
            ChannelNameError::TooLong { max } => SubscribeError::ChannelNameTooLong { max },
            ChannelNameError::Empty | ChannelNameError::InvalidCharacter => {
                SubscribeError::InvalidChannelName(err)
            }
        }
    }
}

impl From<PresenceFull> for SubscribeError {
    fn from(PresenceFull { max }: PresenceFull) -> SubscribeError {
        SubscribeError::PresenceFull { max }
    }
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscribeError::InvalidChannelName(err) => write!(f, "Invalid channel name: {err}"),
            SubscribeError::ChannelNameTooLong { max } => {
                write!(f, "Channel name is longer than {max} characters")
            }
            SubscribeError::TooManyChannels { max } => {
                write!(f, "Too many channels on one connection (at most {max})")
            }
            SubscribeError::MissingAuth => {
                f.write_str("Missing auth: this channel needs a signature")
            }
            SubscribeError::InvalidSignature => f.write_str("Invalid signature"),
            SubscribeError::MissingChannelData => f.write_str("Missing channel_data"),
            SubscribeError::MalformedChannelData(ChannelDataError::NotJsonObject) => {
                f.write_str("channel_data is not a JSON object")
            }
            SubscribeError::MalformedChannelData(ChannelDataError::MissingUserId) => {
                f.write_str("channel_data needs a user_id (a non-empty string or a number)")
            }
            SubscribeError::UserIdTooLong { max } => {
                write!(f, "user_id is longer than {max} characters")
            }
            SubscribeError::UserInfoTooLarge { max } => {
                write!(f, "user_info is larger than {max} bytes")
            }
            SubscribeError::NotSignedInAsUser => {
                f.write_str("Only the connection signed in as this user may subscribe")
            }
            SubscribeError::PresenceFull { max } => {
                write!(
                    f,
                    "The maximum members per presence channel ({max}) was reached"
                )
            }
        }
    }
}

impl std::error::Error for SubscribeError {}

/// Why a client event was not relayed. Answered with `pusher:error`; the socket stays open.
///
/// | variant | code |
/// |---|---|
/// | `NotSubscribed` | 4009 |
/// | every other | 4301 |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEventError {
    Disabled,
    EventNameTooLong {
        max: usize,
    },
    NotSubscribed,
    /// Only private and presence channels carry client events.
    WrongChannelKind,
    DataTooLarge {
        max: usize,
    },
    RateLimited,
}

impl ClientEventError {
    pub fn code(self) -> ErrorCode {
        match self {
            ClientEventError::NotSubscribed => ErrorCode::Close(CloseCode::Unauthorized),
            ClientEventError::Disabled
            | ClientEventError::EventNameTooLong { .. }
            | ClientEventError::WrongChannelKind
            | ClientEventError::DataTooLarge { .. }
            | ClientEventError::RateLimited => ErrorCode::ClientEventRejected,
        }
    }
}

impl fmt::Display for ClientEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientEventError::Disabled => f.write_str("Client events are disabled for this app"),
            ClientEventError::EventNameTooLong { max } => {
                write!(f, "Event name is longer than {max} characters")
            }
            ClientEventError::NotSubscribed => {
                f.write_str("Client events need a subscription to the channel")
            }
            ClientEventError::WrongChannelKind => {
                f.write_str("Client events are only allowed on private and presence channels")
            }
            ClientEventError::DataTooLarge { max } => {
                write!(f, "Client event data is larger than {max} bytes")
            }
            ClientEventError::RateLimited => {
                f.write_str("Client event rejected: rate limit exceeded")
            }
        }
    }
}

impl std::error::Error for ClientEventError {}

/// A message the session could not act on. Answered with `pusher:error`; the socket stays open.
/// (A frame over the size limit is a WebSocket-level fault: the socket task closes with 1009.)
///
/// | variant | code |
/// |---|---|
/// | `Invalid`, `UnsupportedEvent`, `Binary` | `null` (as Pusher sends) |
/// | `TooManyMessages` | 4301 |
/// | `WatchlistTooLong` | 4302 (sign-in still succeeds) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    Invalid(ParseError),
    UnsupportedEvent(String),
    Binary,
    TooManyMessages,
    WatchlistTooLong { max: usize },
}

impl MessageError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            MessageError::Invalid(_) | MessageError::UnsupportedEvent(_) | MessageError::Binary => {
                None
            }
            MessageError::TooManyMessages => Some(ErrorCode::ClientEventRejected),
            MessageError::WatchlistTooLong { .. } => Some(ErrorCode::WatchlistLimit),
        }
    }
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Invalid(err) => write!(f, "Invalid message: {err}"),
            MessageError::UnsupportedEvent(event) => {
                write!(f, "Unsupported event received: {event}")
            }
            MessageError::Binary => {
                f.write_str("Binary frames are not supported; send JSON text frames")
            }
            MessageError::TooManyMessages => f.write_str("Too many messages: this one was dropped"),
            MessageError::WatchlistTooLong { max } => write!(
                f,
                "Watchlist limit exceeded: only the first {max} user ids are watched"
            ),
        }
    }
}

impl std::error::Error for MessageError {}

/// Why a `pusher:signin` failed: `pusher:error` 4009, then the socket is closed with 4009, as
/// Soketi does (pusher-js then reconnects after a back-off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigninError {
    InvalidSignature,
    UserDataNotJson,
    MissingUserId,
    SignedInAsAnother,
}

impl SigninError {
    pub fn close_code(self) -> CloseCode {
        match self {
            SigninError::InvalidSignature
            | SigninError::UserDataNotJson
            | SigninError::MissingUserId
            | SigninError::SignedInAsAnother => CloseCode::Unauthorized,
        }
    }
}

impl fmt::Display for SigninError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SigninError::InvalidSignature => "Invalid signature",
            SigninError::UserDataNotJson => "user_data is not valid JSON",
            SigninError::MissingUserId => "user_data needs a non-empty string id",
            SigninError::SignedInAsAnother => "The connection is already signed in as another user",
        })
    }
}

impl std::error::Error for SigninError {}

/// Why a connection is refused at the start or closed by the server for a client fault:
/// `pusher:error` with the close code, then the close. Never 4000 (pusher-js would switch to TLS)
/// and never 43xx (pusher-js would give up for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionError {
    PathNotFound,
    AppNotFound,
    AppDisabled,
    NoProtocol,
    UnsupportedProtocol,
    OriginNotAllowed,
    NodeOverCapacity,
    AppOverQuota,
}

impl ConnectionError {
    pub fn close_code(self) -> CloseCode {
        match self {
            ConnectionError::PathNotFound => CloseCode::PathNotFound,
            ConnectionError::AppNotFound => CloseCode::AppNotFound,
            ConnectionError::AppDisabled => CloseCode::AppDisabled,
            ConnectionError::NoProtocol => CloseCode::NoProtocol,
            ConnectionError::UnsupportedProtocol => CloseCode::UnsupportedProtocol,
            ConnectionError::OriginNotAllowed => CloseCode::Unauthorized,
            ConnectionError::NodeOverCapacity => CloseCode::OverCapacity,
            ConnectionError::AppOverQuota => CloseCode::AppOverQuota,
        }
    }

    /// The message of the `pusher:error` and the close frame's reason.
    pub fn message(self) -> &'static str {
        match self {
            ConnectionError::PathNotFound => "Path not found",
            ConnectionError::AppNotFound => "Application does not exist",
            ConnectionError::AppDisabled => "Application disabled",
            ConnectionError::NoProtocol => "No protocol version supplied",
            ConnectionError::UnsupportedProtocol => "Unsupported protocol version",
            ConnectionError::OriginNotAllowed => "Origin not allowed",
            ConnectionError::NodeOverCapacity => "Over capacity",
            ConnectionError::AppOverQuota => "Application is over connection quota",
        }
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ConnectionError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders an error's wire answer in one line: what the client receives.
    fn check(actual: &[(String, String)]) {
        for (got, want) in actual {
            assert_eq!(got, want);
        }
    }

    fn subscribe(err: SubscribeError) -> String {
        let r = err.refusal();
        format!("{} {} {err}", r.kind.as_str(), r.status)
    }

    #[test]
    fn subscribe_errors_map_to_type_and_status() {
        let cases = [
            (
                SubscribeError::InvalidChannelName(ChannelNameError::InvalidCharacter),
                "InvalidChannel 400 Invalid channel name: channel name contains a character outside [A-Za-z0-9_-=@,.;]",
            ),
            (
                SubscribeError::InvalidChannelName(ChannelNameError::Empty),
                "InvalidChannel 400 Invalid channel name: channel name is empty",
            ),
            (
                SubscribeError::ChannelNameTooLong { max: 200 },
                "LimitReached 4009 Channel name is longer than 200 characters",
            ),
            (
                SubscribeError::TooManyChannels { max: 100 },
                "LimitReached 4100 Too many channels on one connection (at most 100)",
            ),
            (
                SubscribeError::MissingAuth,
                "AuthError 401 Missing auth: this channel needs a signature",
            ),
            (SubscribeError::InvalidSignature, "AuthError 401 Invalid signature"),
            (SubscribeError::MissingChannelData, "AuthError 401 Missing channel_data"),
            (
                SubscribeError::MalformedChannelData(ChannelDataError::NotJsonObject),
                "InvalidChannelData 400 channel_data is not a JSON object",
            ),
            (
                SubscribeError::MalformedChannelData(ChannelDataError::MissingUserId),
                "InvalidChannelData 400 channel_data needs a user_id (a non-empty string or a number)",
            ),
            (
                SubscribeError::UserIdTooLong { max: 128 },
                "LimitReached 4009 user_id is longer than 128 characters",
            ),
            (
                SubscribeError::UserInfoTooLarge { max: 1024 },
                "LimitReached 4009 user_info is larger than 1024 bytes",
            ),
            (
                SubscribeError::NotSignedInAsUser,
                "AuthError 403 Only the connection signed in as this user may subscribe",
            ),
            (
                SubscribeError::PresenceFull { max: 100 },
                "LimitReached 4100 The maximum members per presence channel (100) was reached",
            ),
        ];
        check(&cases.map(|(err, want)| (subscribe(err), want.to_owned())));
    }

    #[test]
    fn channel_name_errors_split_limit_from_malformed() {
        assert_eq!(
            SubscribeError::from(ChannelNameError::TooLong { max: 5 }),
            SubscribeError::ChannelNameTooLong { max: 5 }
        );
        assert_eq!(
            SubscribeError::from(ChannelNameError::Empty),
            SubscribeError::InvalidChannelName(ChannelNameError::Empty)
        );
    }

    #[test]
    fn client_event_errors_map_to_codes() {
        let cases = [
            (
                ClientEventError::Disabled,
                "4301 Client events are disabled for this app",
            ),
            (
                ClientEventError::EventNameTooLong { max: 200 },
                "4301 Event name is longer than 200 characters",
            ),
            (
                ClientEventError::NotSubscribed,
                "4009 Client events need a subscription to the channel",
            ),
            (
                ClientEventError::WrongChannelKind,
                "4301 Client events are only allowed on private and presence channels",
            ),
            (
                ClientEventError::DataTooLarge { max: 10 },
                "4301 Client event data is larger than 10 bytes",
            ),
            (
                ClientEventError::RateLimited,
                "4301 Client event rejected: rate limit exceeded",
            ),
        ];
        check(&cases.map(|(err, want)| (format!("{} {err}", err.code().code()), want.to_owned())));
    }

    #[test]
    fn message_errors_map_to_codes() {
        let cases = [
            (
                MessageError::Invalid(ParseError::InvalidJson),
                "null Invalid message: message is not valid JSON",
            ),
            (
                MessageError::UnsupportedEvent("pusher:nope".into()),
                "null Unsupported event received: pusher:nope",
            ),
            (
                MessageError::Binary,
                "null Binary frames are not supported; send JSON text frames",
            ),
            (
                MessageError::TooManyMessages,
                "4301 Too many messages: this one was dropped",
            ),
            (
                MessageError::WatchlistTooLong { max: 100 },
                "4302 Watchlist limit exceeded: only the first 100 user ids are watched",
            ),
        ];
        check(&cases.map(|(err, want)| {
            let code = err
                .code()
                .map_or_else(|| "null".to_owned(), |c| c.code().to_string());
            (format!("{code} {err}"), want.to_owned())
        }));
    }

    #[test]
    fn signin_errors_close_with_4009() {
        let cases = [
            (SigninError::InvalidSignature, "4009 Invalid signature"),
            (
                SigninError::UserDataNotJson,
                "4009 user_data is not valid JSON",
            ),
            (
                SigninError::MissingUserId,
                "4009 user_data needs a non-empty string id",
            ),
            (
                SigninError::SignedInAsAnother,
                "4009 The connection is already signed in as another user",
            ),
        ];
        check(&cases.map(|(err, want)| {
            (
                format!("{} {err}", err.close_code().code()),
                want.to_owned(),
            )
        }));
    }

    #[test]
    fn connection_errors_close_with_their_code() {
        let cases = [
            (ConnectionError::PathNotFound, "4005 Path not found"),
            (
                ConnectionError::AppNotFound,
                "4001 Application does not exist",
            ),
            (ConnectionError::AppDisabled, "4003 Application disabled"),
            (
                ConnectionError::NoProtocol,
                "4008 No protocol version supplied",
            ),
            (
                ConnectionError::UnsupportedProtocol,
                "4007 Unsupported protocol version",
            ),
            (ConnectionError::OriginNotAllowed, "4009 Origin not allowed"),
            (ConnectionError::NodeOverCapacity, "4100 Over capacity"),
            (
                ConnectionError::AppOverQuota,
                "4004 Application is over connection quota",
            ),
        ];
        check(&cases.map(|(err, want)| {
            (
                format!("{} {err}", err.close_code().code()),
                want.to_owned(),
            )
        }));
        // Never a code pusher-js treats as "switch to TLS" (4000) or "give up" (43xx).
        for (err, _) in cases {
            let code = err.close_code().code();
            assert!(code != 4000 && !(4300..4400).contains(&code), "{err:?}");
        }
    }
}

//! Channel names and their kinds (protocol doc 1.7). Prefixes match exactly, hyphen included:
//! `privatefoo` is a public channel, not a private one.

use std::fmt;
use std::sync::Arc;

use crate::ids::UserId;

/// The prefix of the per-user channel pusher-js subscribes to after sign-in.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// A validated channel name. Cloning is cheap (shared).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    PrivateEncrypted,
    Presence,
    /// `#server-to-user-{id}`: only the connection signed in as that user may subscribe.
    ServerToUser,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {max} characters")]
    TooLong { max: usize },
    #[error("channel name contains a character outside [A-Za-z0-9_-=@,.;]")]
    InvalidCharacter,
}

impl ChannelName {
    /// Validates a name: allowed characters `A-Z a-z 0-9 _ - = @ , . ;`, a leading `#` only for
    /// `#server-to-user-{id}`, and at most `max_len` bytes.
    ///
    /// # Errors
    /// Returns which rule the name breaks.
    pub fn parse(name: &str, max_len: usize) -> Result<ChannelName, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > max_len {
            return Err(ChannelNameError::TooLong { max: max_len });
        }
        let body = match name.strip_prefix(SERVER_TO_USER_PREFIX) {
            Some(user) if !user.is_empty() => user,
            Some(_) => return Err(ChannelNameError::InvalidCharacter),
            None => name,
        };
        let allowed = |c: u8| c.is_ascii_alphanumeric() || b"_-=@,.;".contains(&c);
        if !body.bytes().all(allowed) {
            return Err(ChannelNameError::InvalidCharacter);
        }
        Ok(ChannelName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> ChannelKind {
        let name = self.as_str();
        if name.starts_with(SERVER_TO_USER_PREFIX) {
            ChannelKind::ServerToUser
        } else if name.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// Cache channels remember the last event published through the HTTP API.
    pub fn is_cache(&self) -> bool {
        let name = self.as_str();
        [
            "cache-",
            "private-cache-",
            "private-encrypted-cache-",
            "presence-cache-",
        ]
        .iter()
        .any(|p| name.starts_with(p))
    }

    /// Private, encrypted and presence channels need a signature to subscribe.
    pub fn needs_auth(&self) -> bool {
        matches!(
            self.kind(),
            ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
        )
    }

    /// The user a `#server-to-user-` channel belongs to.
    pub fn server_to_user(&self) -> Option<UserId> {
        self.as_str()
            .strip_prefix(SERVER_TO_USER_PREFIX)
            .map(|u| UserId(u.to_owned()))
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> Option<(ChannelKind, bool)> {
        ChannelName::parse(name, 200)
            .ok()
            .map(|c| (c.kind(), c.is_cache()))
    }

    #[test]
    fn prefixes_match_exactly() {
        use ChannelKind::*;
        assert_eq!(kind("chat"), Some((Public, false)));
        assert_eq!(kind("privatefoo"), Some((Public, false)));
        assert_eq!(kind("presencefoo"), Some((Public, false)));
        assert_eq!(kind("private-a"), Some((Private, false)));
        assert_eq!(kind("private-encrypted-a"), Some((PrivateEncrypted, false)));
        assert_eq!(kind("presence-a"), Some((Presence, false)));
        assert_eq!(kind("cache-a"), Some((Public, true)));
        assert_eq!(kind("private-cache-a"), Some((Private, true)));
        assert_eq!(
            kind("private-encrypted-cache-a"),
            Some((PrivateEncrypted, true))
        );
        assert_eq!(kind("presence-cache-a"), Some((Presence, true)));
        assert_eq!(kind("cachefoo"), Some((Public, false)));
        assert_eq!(kind("#server-to-user-42"), Some((ServerToUser, false)));
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(ChannelName::parse("", 200), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse("a b", 200),
            Err(ChannelNameError::InvalidCharacter)
        );
        assert_eq!(
            ChannelName::parse("#other", 200),
            Err(ChannelNameError::InvalidCharacter)
        );
        assert_eq!(
            ChannelName::parse("#server-to-user-", 200),
            Err(ChannelNameError::InvalidCharacter)
        );
        assert_eq!(
            ChannelName::parse("é", 200),
            Err(ChannelNameError::InvalidCharacter)
        );
        assert!(ChannelName::parse("A-z_0=@,.;", 200).is_ok());
        assert!(ChannelName::parse(&"a".repeat(200), 200).is_ok());
        assert_eq!(
            ChannelName::parse(&"a".repeat(201), 200),
            Err(ChannelNameError::TooLong { max: 200 })
        );
    }
}

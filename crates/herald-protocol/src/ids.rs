//! Identifier newtypes. `SocketId` is `<node>.<sequence>`, matching the SDKs' `^\d+\.\d+$`.

use std::fmt;

/// A connection's id, unique across the cluster because `node` is the node's random id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub node: u64,
    pub seq: u64,
}

impl SocketId {
    /// Parses `"<digits>.<digits>"`; anything else is `None`.
    pub fn parse(s: &str) -> Option<SocketId> {
        let (a, b) = s.split_once('.')?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 19 && p.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return None;
        }
        Some(SocketId {
            node: a.parse().ok()?,
            seq: b.parse().ok()?,
        })
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.seq)
    }
}

/// A user id as the app's auth endpoint gave it; numbers are normalised to their decimal text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub String);

impl UserId {
    /// Takes a JSON `user_id`/`id` value: a non-empty string or a number.
    pub fn from_json(value: &serde_json::Value) -> Option<UserId> {
        match value {
            serde_json::Value::String(s) if !s.is_empty() => Some(UserId(s.clone())),
            serde_json::Value::Number(n) => Some(UserId(n.to_string())),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_id_round_trips_and_rejects_garbage() {
        let id = SocketId { node: 12, seq: 345 };
        assert_eq!(SocketId::parse(&id.to_string()), Some(id));
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "a.1",
            "1.2.3",
            "1 .2",
            "-1.2",
            "99999999999999999999.1",
        ] {
            assert_eq!(SocketId::parse(bad), None, "{bad}");
        }
    }
}

//! Frames the server sends (protocol doc 1.2–1.14), built as JSON text once per message.
//!
//! Pusher's "double encoding" is kept where real servers use it: `data` of connection, presence and
//! channel events is a JSON *string*. Event data published through the HTTP API is a string and is
//! escaped exactly once, never parsed.

use serde_json::value::RawValue;

use crate::close_code::SubscriptionErrorType;
use crate::ids::{SocketId, UserId};

/// Escapes `s` as a JSON string literal, quotes included.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("serializing a str cannot fail")
}

pub fn connection_established(socket_id: SocketId, activity_timeout_secs: u64) -> String {
    let data =
        format!(r#"{{"socket_id":"{socket_id}","activity_timeout":{activity_timeout_secs}}}"#);
    format!(
        r#"{{"event":"pusher:connection_established","data":{}}}"#,
        json_string(&data)
    )
}

/// `pusher:error`; `code` is `None` only for errors Pusher itself sends without a code.
pub fn error(code: Option<u16>, message: &str) -> String {
    let code = code.map_or_else(|| "null".to_owned(), |c| c.to_string());
    format!(
        r#"{{"event":"pusher:error","data":{{"code":{code},"message":{}}}}}"#,
        json_string(message)
    )
}

/// `pusher:ping`, the same bytes for every connection.
pub const PING: &str = r#"{"event":"pusher:ping","data":{}}"#;

pub fn pong() -> String {
    r#"{"event":"pusher:pong","data":{}}"#.to_owned()
}

pub fn subscription_succeeded(channel: &str) -> String {
    format!(
        r#"{{"event":"pusher_internal:subscription_succeeded","channel":{},"data":"{{}}"}}"#,
        json_string(channel)
    )
}

/// A presence member as sent in the snapshot and in `member_added`.
pub struct Member<'a> {
    pub user_id: &'a UserId,
    /// Raw JSON of `user_info`, relayed untouched; `None` when the app sent none.
    pub user_info: Option<&'a RawValue>,
}

pub fn presence_subscription_succeeded<'a>(
    channel: &str,
    members: impl Iterator<Item = Member<'a>> + Clone,
) -> String {
    let mut ids = String::from("[");
    let mut hash = String::from("{");
    let mut count = 0usize;
    for (i, member) in members.enumerate() {
        if i > 0 {
            ids.push(',');
            hash.push(',');
        }
        let id = json_string(member.user_id.as_str());
        ids.push_str(&id);
        hash.push_str(&id);
        hash.push(':');
        hash.push_str(member.user_info.map_or("null", |r| r.get()));
        count += 1;
    }
    ids.push(']');
    hash.push('}');
    let data = format!(r#"{{"presence":{{"ids":{ids},"hash":{hash},"count":{count}}}}}"#);
    format!(
        r#"{{"event":"pusher_internal:subscription_succeeded","channel":{},"data":{}}}"#,
        json_string(channel),
        json_string(&data)
    )
}

/// The channel-scoped error shape Laravel Echo's `.error()` listens for.
pub fn subscription_error(
    channel: &str,
    kind: SubscriptionErrorType,
    error: &str,
    status: u16,
) -> String {
    format!(
        r#"{{"event":"pusher:subscription_error","channel":{},"data":{{"type":"{}","error":{},"status":{status}}}}}"#,
        json_string(channel),
        kind.as_str(),
        json_string(error)
    )
}

pub fn member_added(channel: &str, member: Member<'_>) -> String {
    let data = format!(
        r#"{{"user_id":{},"user_info":{}}}"#,
        json_string(member.user_id.as_str()),
        member.user_info.map_or("null", |r| r.get())
    );
    format!(
        r#"{{"event":"pusher_internal:member_added","channel":{},"data":{}}}"#,
        json_string(channel),
        json_string(&data)
    )
}

pub fn member_removed(channel: &str, user_id: &UserId) -> String {
    let data = format!(r#"{{"user_id":{}}}"#, json_string(user_id.as_str()));
    format!(
        r#"{{"event":"pusher_internal:member_removed","channel":{},"data":{}}}"#,
        json_string(channel),
        json_string(&data)
    )
}

/// An event published through the HTTP API: `data` is the publisher's string, escaped once.
pub fn channel_event(event: &str, channel: &str, data: &str) -> String {
    format!(
        r#"{{"event":{},"channel":{},"data":{}}}"#,
        json_string(event),
        json_string(channel),
        json_string(data)
    )
}

/// A client event relayed to the channel: `data` stays the raw JSON the sender wrote.
pub fn client_event(
    event: &str,
    channel: &str,
    data: &RawValue,
    user_id: Option<&UserId>,
) -> String {
    match user_id {
        Some(user) => format!(
            r#"{{"event":{},"channel":{},"data":{},"user_id":{}}}"#,
            json_string(event),
            json_string(channel),
            data.get(),
            json_string(user.as_str())
        ),
        None => format!(
            r#"{{"event":{},"channel":{},"data":{}}}"#,
            json_string(event),
            json_string(channel),
            data.get()
        ),
    }
}

pub fn cache_miss(channel: &str) -> String {
    format!(
        r#"{{"event":"pusher:cache_miss","channel":{},"data":"{{}}"}}"#,
        json_string(channel)
    )
}

pub fn signin_success(user_data: &str) -> String {
    format!(
        r#"{{"event":"pusher:signin_success","data":{{"user_data":{}}}}}"#,
        json_string(user_data)
    )
}

/// A watchlist transition or the initial status: `[("online", ids), ("offline", ids)]`.
pub fn watchlist_events(events: &[(&str, Vec<&UserId>)]) -> String {
    let list: Vec<serde_json::Value> = events
        .iter()
        .map(|(name, ids)| {
            serde_json::json!({"name": name, "user_ids": ids.iter().map(|u| u.as_str()).collect::<Vec<_>>()})
        })
        .collect();
    serde_json::json!({"event": "pusher_internal:watchlist_events", "data": {"events": list}})
        .to_string()
}

pub fn subscription_count(channel: &str, count: usize) -> String {
    let data = format!(r#"{{"subscription_count":{count}}}"#);
    format!(
        r#"{{"event":"pusher_internal:subscription_count","channel":{},"data":{}}}"#,
        json_string(channel),
        json_string(&data)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_established_is_double_encoded() {
        let frame = connection_established(SocketId { node: 1, seq: 2 }, 30);
        assert_eq!(
            frame,
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":30}"}"#
        );
    }

    #[test]
    fn presence_snapshot_lists_distinct_users() {
        let a = UserId("a".into());
        let info = RawValue::from_string(r#"{"name":"A"}"#.into()).unwrap();
        let members = [(&a, Some(&*info))];
        let frame = presence_subscription_succeeded(
            "presence-x",
            members.iter().map(|(u, i)| Member {
                user_id: u,
                user_info: *i,
            }),
        );
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"presence":{"ids":["a"],"hash":{"a":{"name":"A"}},"count":1}})
        );
    }

    #[test]
    fn published_data_is_escaped_not_parsed() {
        let frame = channel_event("e", "c", r#"{"a":"é\n"}"#);
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["data"], serde_json::json!(r#"{"a":"é\n"}"#));
    }
}

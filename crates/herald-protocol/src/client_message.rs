//! Frames a client sends (protocol doc 1.2–1.11), parsed once at the edge into an enum.
//!
//! Invariant: nothing past this module sees an event name as a string, except client event names,
//! which are the application's own.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A parsed client frame.
#[derive(Debug, Clone)]
pub enum ClientMessage {
    Subscribe {
        channel: String,
        /// Absent or empty means "no signature" (public channels may send `"auth":""`).
        auth: Option<String>,
        /// The exact JSON string the app's auth endpoint signed, for presence channels.
        channel_data: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Ping,
    Pong,
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-*` event; `data` is kept as the raw JSON the client sent and relayed untouched.
    ClientEvent {
        event: String,
        channel: String,
        data: Box<RawValue>,
    },
    /// Any other event name: ignored, as Pusher does, but visible in debug logs.
    Unknown {
        event: String,
    },
}

/// Equality compares client event data by its raw text.
impl PartialEq for ClientMessage {
    fn eq(&self, other: &Self) -> bool {
        use ClientMessage::*;
        match (self, other) {
            (
                Subscribe {
                    channel: a,
                    auth: b,
                    channel_data: c,
                },
                Subscribe {
                    channel: x,
                    auth: y,
                    channel_data: z,
                },
            ) => a == x && b == y && c == z,
            (Unsubscribe { channel: a }, Unsubscribe { channel: b }) => a == b,
            (Ping, Ping) | (Pong, Pong) => true,
            (
                Signin {
                    auth: a,
                    user_data: b,
                },
                Signin {
                    auth: x,
                    user_data: y,
                },
            ) => a == x && b == y,
            (
                ClientEvent {
                    event: a,
                    channel: b,
                    data: c,
                },
                ClientEvent {
                    event: x,
                    channel: y,
                    data: z,
                },
            ) => a == x && b == y && c.get() == z.get(),
            (Unknown { event: a }, Unknown { event: b }) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message is not valid JSON")]
    InvalidJson,
    #[error("message is missing the '{0}' field")]
    MissingField(&'static str),
    #[error("the '{0}' field has the wrong type")]
    InvalidField(&'static str),
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    event: Option<String>,
    channel: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: Option<serde_json::Value>,
    auth: Option<serde_json::Value>,
    channel_data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct SigninData {
    auth: Option<serde_json::Value>,
    user_data: Option<serde_json::Value>,
}

impl ClientMessage {
    /// Parses one text frame.
    ///
    /// # Errors
    /// Invalid JSON, a missing `event`, or a known event whose `data` lacks a required field.
    pub fn parse(text: &str) -> Result<ClientMessage, ParseError> {
        let frame: RawFrame<'_> =
            serde_json::from_str(text).map_err(|_| ParseError::InvalidJson)?;
        let event = frame.event.ok_or(ParseError::MissingField("event"))?;
        match event.as_str() {
            "pusher:ping" => Ok(ClientMessage::Ping),
            "pusher:pong" => Ok(ClientMessage::Pong),
            "pusher:subscribe" => {
                let data: SubscribeData = decode_data(frame.data)?;
                Ok(ClientMessage::Subscribe {
                    channel: required_string(data.channel, "channel")?,
                    auth: optional_string(data.auth, "auth")?.filter(|a| !a.is_empty()),
                    channel_data: optional_string(data.channel_data, "channel_data")?,
                })
            }
            "pusher:unsubscribe" => {
                let data: SubscribeData = decode_data(frame.data)?;
                Ok(ClientMessage::Unsubscribe {
                    channel: required_string(data.channel, "channel")?,
                })
            }
            "pusher:signin" => {
                let data: SigninData = decode_data(frame.data)?;
                Ok(ClientMessage::Signin {
                    auth: required_string(data.auth, "auth")?,
                    user_data: required_string(data.user_data, "user_data")?,
                })
            }
            name if name.starts_with("client-") => Ok(ClientMessage::ClientEvent {
                channel: frame.channel.ok_or(ParseError::MissingField("channel"))?,
                data: frame
                    .data
                    .map(|d| d.to_owned())
                    .ok_or(ParseError::MissingField("data"))?,
                event,
            }),
            _ => Ok(ClientMessage::Unknown { event }),
        }
    }
}

/// `data` is an object, or (from some clients) a string holding the object's JSON.
fn decode_data<T: for<'de> Deserialize<'de>>(data: Option<&RawValue>) -> Result<T, ParseError> {
    let raw = data.ok_or(ParseError::MissingField("data"))?;
    if let Ok(inner) = serde_json::from_str::<String>(raw.get()) {
        return serde_json::from_str(&inner).map_err(|_| ParseError::InvalidField("data"));
    }
    serde_json::from_str(raw.get()).map_err(|_| ParseError::InvalidField("data"))
}

fn optional_string(
    value: Option<serde_json::Value>,
    field: &'static str,
) -> Result<Option<String>, ParseError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ParseError::InvalidField(field)),
    }
}

fn required_string(
    value: Option<serde_json::Value>,
    field: &'static str,
) -> Result<String, ParseError> {
    optional_string(value, field)?.ok_or(ParseError::MissingField(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_pusher_js_sends() {
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"c"}}"#
            ),
            Ok(ClientMessage::Subscribe {
                channel: "c".into(),
                auth: None,
                channel_data: None
            })
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"event":"pusher:subscribe","data":"{\"channel\":\"presence-a\",\"auth\":\"k:s\",\"channel_data\":\"{}\"}"}"#
            ),
            Ok(ClientMessage::Subscribe {
                channel: "presence-a".into(),
                auth: Some("k:s".into()),
                channel_data: Some("{}".into())
            })
        );
        let msg = ClientMessage::parse(
            r#"{"event":"client-typing","channel":"private-a","data":{"x":1}}"#,
        )
        .unwrap();
        match msg {
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => {
                assert_eq!(
                    (event.as_str(), channel.as_str(), data.get()),
                    ("client-typing", "private-a", r#"{"x":1}"#)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_malformed_frames() {
        assert_eq!(ClientMessage::parse("nope"), Err(ParseError::InvalidJson));
        assert_eq!(ClientMessage::parse("[]"), Err(ParseError::InvalidJson));
        assert_eq!(
            ClientMessage::parse(r#"{"data":{}}"#),
            Err(ParseError::MissingField("event"))
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:subscribe"}"#),
            Err(ParseError::MissingField("data"))
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:subscribe","data":{"channel":5}}"#),
            Err(ParseError::InvalidField("channel"))
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:signin","data":{"auth":"a"}}"#),
            Err(ParseError::MissingField("user_data"))
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"something"}"#),
            Ok(ClientMessage::Unknown {
                event: "something".into()
            })
        );
    }
}

//! Property tests for every parser of untrusted client input in herald-protocol: client frames,
//! channel names, socket ids, user ids and auth strings. Each never panics on arbitrary input,
//! valid input round-trips, and what is accepted stays within its bounds.
//!
//! Cases per property: `PROPTEST_CASES` (proptest's default, 256, when unset); scripts/test sets it.

use herald_protocol::signature;
use herald_protocol::{ChannelKind, ChannelName, ClientMessage, SocketId, UserId};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Arbitrary JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names a hostile client would try: the real ones, and anything.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "event",
            "channel",
            "data",
            "auth",
            "channel_data",
            "user_data",
            "socket_id",
        ])
        .prop_map(str::to_owned),
        ".{0,10}",
    ]
}

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "pusher:subscribe",
            "pusher:unsubscribe",
            "pusher:ping",
            "pusher:pong",
            "pusher:signin",
            "client-x",
        ])
        .prop_map(str::to_owned),
        "(client-|pusher:)?.{0,16}",
    ]
}

/// Frames shaped like a client's, with every field possibly of the wrong type.
fn frame_like() -> impl Strategy<Value = String> {
    (
        prop::option::of(
            event_name()
                .prop_map(Value::String)
                .boxed()
                .prop_union(json_value().boxed()),
        ),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        any::<bool>(),
    )
        .prop_map(|(event, channel, data, data_as_string)| {
            let mut frame = serde_json::Map::new();
            if let Some(event) = event {
                frame.insert("event".into(), event);
            }
            if let Some(channel) = channel {
                frame.insert("channel".into(), channel);
            }
            if let Some(data) = data {
                let data = if data_as_string {
                    Value::String(data.to_string())
                } else {
                    data
                };
                frame.insert("data".into(), data);
            }
            Value::Object(frame).to_string()
        })
}

const CHANNEL_CHARS: &str = "[A-Za-z0-9_=@,.;-]";

fn valid_channel() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "",
            "private-",
            "private-encrypted-",
            "presence-",
            "cache-",
            "private-cache-",
            "presence-cache-",
            "#server-to-user-",
        ]),
        proptest::string::string_regex(&format!("{CHANNEL_CHARS}{{1,150}}")).unwrap(),
    )
        .prop_map(|(prefix, body)| format!("{prefix}{body}"))
}

proptest! {
    // Cases from `PROPTEST_CASES`; no regression files (integration tests have no lib.rs to
    // anchor them): a failure prints its minimal input.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn client_frames_never_panic_on_arbitrary_text(text in ".{0,512}") {
        let _ = ClientMessage::parse(&text);
    }

    #[test]
    fn client_frames_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        // WebSocket text frames are UTF-8; what is not gets rejected before parsing.
        let text = String::from_utf8_lossy(&bytes);
        let _ = ClientMessage::parse(&text);
    }

    #[test]
    fn client_frames_never_panic_on_hostile_shapes(text in frame_like()) {
        let _ = ClientMessage::parse(&text);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash(depth in 1usize..20_000, open in prop::sample::select(vec!["[", "{\"a\":"])) {
        let text = format!(r#"{{"event":"client-x","channel":"c","data":{}"#, open.repeat(depth));
        prop_assert!(ClientMessage::parse(&text).is_err());
        let text = format!(r#"{{"event":"pusher:subscribe","data":{}"#, open.repeat(depth));
        prop_assert!(ClientMessage::parse(&text).is_err());
    }

    #[test]
    fn subscribe_round_trips(
        channel in ".{0,64}",
        auth in prop::option::of(".{1,64}"),
        channel_data in prop::option::of(".{0,64}"),
        as_string in any::<bool>(),
    ) {
        let mut data = json!({"channel": channel});
        if let Some(auth) = &auth {
            data["auth"] = json!(auth);
        }
        if let Some(channel_data) = &channel_data {
            data["channel_data"] = json!(channel_data);
        }
        let data = if as_string { json!(data.to_string()) } else { data };
        let text = json!({"event": "pusher:subscribe", "data": data}).to_string();
        prop_assert_eq!(
            ClientMessage::parse(&text),
            Ok(ClientMessage::Subscribe { channel, auth, channel_data })
        );
    }

    #[test]
    fn signin_and_unsubscribe_round_trip(a in ".{0,64}", b in ".{0,64}") {
        let text = json!({"event": "pusher:signin", "data": {"auth": a, "user_data": b}}).to_string();
        prop_assert_eq!(
            ClientMessage::parse(&text),
            Ok(ClientMessage::Signin { auth: a.clone(), user_data: b })
        );
        let text = json!({"event": "pusher:unsubscribe", "data": {"channel": a}}).to_string();
        prop_assert_eq!(ClientMessage::parse(&text), Ok(ClientMessage::Unsubscribe { channel: a }));
    }

    #[test]
    fn client_event_data_is_relayed_byte_for_byte(suffix in ".{0,32}", channel in ".{0,64}", data in json_value()) {
        // `"data":null` reads as absent data (MissingField), as before these tests.
        prop_assume!(!data.is_null());
        let event = format!("client-{suffix}");
        let data_text = data.to_string();
        let text = format!(
            r#"{{"event":{},"channel":{},"data":{data_text}}}"#,
            json!(event),
            json!(channel)
        );
        match ClientMessage::parse(&text) {
            Ok(ClientMessage::ClientEvent { event: e, channel: c, data: d }) => {
                prop_assert_eq!(e, event);
                prop_assert_eq!(c, channel);
                prop_assert_eq!(d.get(), data_text.as_str());
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn channel_names_never_panic_and_stay_within_bounds(
        name in ".{0,300}|#?(server-to-user-)?[A-Za-z0-9_=@,.;#-]{0,300}",
        max in 0usize..300,
    ) {
        if let Ok(parsed) = ChannelName::parse(&name, max) {
            prop_assert_eq!(parsed.as_str(), name.as_str());
            prop_assert!(!name.is_empty() && name.len() <= max);
            let body = name.strip_prefix("#server-to-user-").unwrap_or(&name);
            prop_assert!(body.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-=@,.;".contains(&c)));
            // Derived facts never panic either.
            let _ = (parsed.kind(), parsed.is_cache(), parsed.needs_auth(), parsed.server_to_user());
        }
    }

    #[test]
    fn valid_channel_names_are_accepted_with_their_kind(name in valid_channel()) {
        let parsed = ChannelName::parse(&name, 200).expect("valid name");
        prop_assert_eq!(parsed.as_str(), name.as_str());
        let kind = parsed.kind();
        if name.starts_with("#server-to-user-") {
            prop_assert_eq!(kind, ChannelKind::ServerToUser);
        } else if name.starts_with("presence-") {
            prop_assert_eq!(kind, ChannelKind::Presence);
        } else if name.starts_with("private-encrypted-") {
            prop_assert_eq!(kind, ChannelKind::PrivateEncrypted);
        } else if name.starts_with("private-") {
            prop_assert_eq!(kind, ChannelKind::Private);
        }
        prop_assert!(ChannelName::parse(&name, name.len() - 1).is_err(), "one byte over the limit");
    }

    #[test]
    fn socket_ids_never_panic_and_round_trip(
        text in "[0-9.]{0,42}|.{0,48}",
        // `parse` takes at most 19 digits a part: every id herald makes (random u32 node ids,
        // sequences from 0) fits; a configured `node_id` of 20 digits would not.
        node in 0..10u64.pow(19),
        seq in 0..10u64.pow(19),
    ) {
        if let Some(id) = SocketId::parse(&text) {
            // Only digits: what the SDKs' `^\d+\.\d+$` accepts (leading zeros aside).
            prop_assert!(text.bytes().all(|c| c.is_ascii_digit() || c == b'.'));
            prop_assert_eq!(SocketId::parse(&id.to_string()), Some(id));
        }
        let id = SocketId { node, seq };
        prop_assert_eq!(SocketId::parse(&id.to_string()), Some(id));
    }

    #[test]
    fn user_ids_come_only_from_non_empty_strings_and_numbers(value in json_value()) {
        match (UserId::from_json(&value), &value) {
            (Some(id), Value::String(s)) => prop_assert_eq!(id.as_str(), s.as_str()),
            (Some(id), Value::Number(n)) => prop_assert_eq!(id.as_str(), n.to_string()),
            (Some(id), other) => prop_assert!(false, "{id:?} from {other}"),
            (None, Value::String(s)) => prop_assert!(s.is_empty()),
            (None, Value::Number(_)) => prop_assert!(false, "a number is a user id"),
            (None, _) => {}
        }
    }

    #[test]
    fn auth_strings_never_panic_and_only_the_right_one_passes(
        auth in ".{0,200}",
        socket in "[0-9]{1,5}\\.[0-9]{1,5}",
        channel in valid_channel(),
        flip in any::<prop::sample::Index>(),
    ) {
        let (key, secret) = ("app-key", "app-secret");
        let message = signature::channel_auth_message(&socket, &channel, None);
        let right = format!("{key}:{}", signature::sign(secret, message.as_bytes()));
        prop_assert!(signature::verify_auth(key, secret, &message, &right));
        if auth != right {
            prop_assert!(!signature::verify_auth(key, secret, &message, &auth));
        }
        // Any one character changed in the signature: refused.
        let mut wrong = right.clone().into_bytes();
        let i = key.len() + 1 + flip.index(wrong.len() - key.len() - 1);
        wrong[i] = if wrong[i] == b'0' { b'1' } else { b'0' };
        let wrong = String::from_utf8(wrong).unwrap();
        prop_assert!(!signature::verify_auth(key, secret, &message, &wrong));
        // Another key with the right signature: refused.
        prop_assert!(!signature::verify_auth("other", secret, &message, &right));
    }

    #[test]
    fn api_signature_inputs_never_panic(
        method in ".{0,8}",
        path in ".{0,64}",
        params in prop::collection::vec((".{0,16}", ".{0,32}"), 0..12),
        signature_hex in ".{0,80}",
    ) {
        let string = signature::api_string_to_sign(
            &method,
            &path,
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let _ = signature::verify("secret", string.as_bytes(), &signature_hex);
        prop_assert!(signature::verify(
            "secret",
            string.as_bytes(),
            &signature::sign("secret", string.as_bytes())
        ));
    }
}

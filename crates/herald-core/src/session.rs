//! One connection's protocol state machine: subscriptions, sign-in, watchlist and client events.
//!
//! `Session::handle` takes a parsed `ClientMessage` and acts on the node; replies go into the
//! connection's own `Outbox`, so they are ordered with broadcasts. The socket task (server crate)
//! only moves frames between the socket and this state machine.

use std::sync::Arc;
use std::time::Instant;

use herald_protocol::server_message;
use herald_protocol::signature;
use herald_protocol::{
    ChannelKind, ChannelName, ChannelNameError, ClientMessage, CloseCode, ErrorCode, SocketId,
    UserId,
};
use serde_json::value::RawValue;

use crate::app::NodeLimits;
use crate::broker::{Announcement, Broker, Envelope};
use crate::node::{
    AppState, Delivery, PresenceMember, SubscribeError, Subscribed, SubscriptionEntry, Unsubscribed,
};
use crate::outbox::{CloseRequest, DisconnectReason, Frame, Outbox};
use crate::rate_limit::TokenBucket;

/// Longest presence user id Pusher accepts.
const MAX_USER_ID_LENGTH: usize = 128;

/// What handling one message did, for metrics and webhooks.
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

#[derive(Debug)]
struct SignedIn {
    user: UserId,
    watchlist: Vec<UserId>,
}

#[derive(Debug)]
pub struct Session {
    app: Arc<AppState>,
    broker: Arc<dyn Broker>,
    limits: Arc<NodeLimits>,
    socket_id: SocketId,
    outbox: Outbox,
    /// Subscribed channels, with the presence identity used for presence channels.
    channels: Subscriptions,
    signed_in: Option<SignedIn>,
    client_events: TokenBucket,
}

impl Session {
    pub fn new(
        app: Arc<AppState>,
        broker: Arc<dyn Broker>,
        limits: Arc<NodeLimits>,
        socket_id: SocketId,
        outbox: Outbox,
    ) -> Session {
        let client_events = TokenBucket::new(app.app().max_client_events_per_second);
        Session {
            app,
            broker,
            limits,
            socket_id,
            outbox,
            channels: Subscriptions::default(),
            signed_in: None,
            client_events,
        }
    }

    pub fn socket_id(&self) -> SocketId {
        self.socket_id
    }

    /// The connection's send queue (and liveness clock).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn app(&self) -> &Arc<AppState> {
        &self.app
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    pub fn handle(&mut self, message: ClientMessage) -> Outcome {
        match message {
            ClientMessage::Ping => {
                self.reply(server_message::pong());
                Outcome::Nothing
            }
            ClientMessage::Pong => Outcome::Nothing,
            ClientMessage::Unknown { event } => {
                // As Pusher does: say so, keep the socket.
                self.send_error(None, &format!("Unsupported event received: {event}"));
                Outcome::Nothing
            }
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            } => self.subscribe(&channel, auth.as_deref(), channel_data.as_deref()),
            ClientMessage::Unsubscribe { channel } => self.unsubscribe(&channel),
            ClientMessage::Signin { auth, user_data } => self.sign_in(&auth, &user_data),
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => self.client_event(&event, &channel, &data),
        }
    }

    /// Sends `pusher:error` without closing.
    pub fn send_error(&self, code: Option<ErrorCode>, message: &str) {
        self.reply(server_message::error(code.map(ErrorCode::code), message));
    }

    fn reply(&self, text: String) {
        let _ = self.outbox.push(Frame::new(text));
    }

    fn subscription_error(&self, channel: &str, kind: &str, error: &str, status: u16) -> Outcome {
        self.reply(server_message::subscription_error(
            channel, kind, error, status,
        ));
        Outcome::SubscribeRejected
    }

    fn subscribe(&mut self, name: &str, auth: Option<&str>, channel_data: Option<&str>) -> Outcome {
        let channel = match ChannelName::parse(name, self.limits.max_channel_name_length) {
            Ok(channel) => channel,
            Err(err @ ChannelNameError::TooLong { .. }) => {
                return self.subscription_error(name, "LimitReached", &err.to_string(), 4009)
            }
            Err(err) => {
                return self.subscription_error(name, "InvalidChannel", &err.to_string(), 4009)
            }
        };
        if !self.channels.contains_key(&channel)
            && self.channels.len() >= self.limits.max_channels_per_connection
        {
            let error = format!(
                "Too many channels on one connection (at most {})",
                self.limits.max_channels_per_connection
            );
            self.subscription_error(name, "LimitReached", &error, 4100);
            return Outcome::LimitReached(SessionLimit::ChannelsPerConnection);
        }
        let socket = self.socket_id.to_string();
        let app = self.app.app();
        let member = match channel.kind() {
            ChannelKind::Public => None,
            ChannelKind::Private | ChannelKind::PrivateEncrypted => {
                let message = signature::channel_auth_message(&socket, name, None);
                if !auth.is_some_and(|a| {
                    signature::verify_auth(&app.key, app.secret.expose(), &message, a)
                }) {
                    return self.subscription_error(name, "AuthError", "Invalid signature", 401);
                }
                None
            }
            ChannelKind::Presence => {
                let Some(data) = channel_data else {
                    return self.subscription_error(name, "AuthError", "Missing channel_data", 401);
                };
                let message = signature::channel_auth_message(&socket, name, Some(data));
                if !auth.is_some_and(|a| {
                    signature::verify_auth(&app.key, app.secret.expose(), &message, a)
                }) {
                    return self.subscription_error(name, "AuthError", "Invalid signature", 401);
                }
                match parse_channel_data(data, app.max_presence_user_info_bytes) {
                    Ok(member) => Some(member),
                    Err(error) => {
                        return self.subscription_error(name, "LimitReached", &error, 4009)
                    }
                }
            }
            ChannelKind::ServerToUser => {
                let owner = channel.server_to_user();
                if self.signed_in.as_ref().map(|s| &s.user) != owner.as_ref() {
                    return self.subscription_error(
                        name,
                        "AuthError",
                        "Only the connection signed in as this user may subscribe",
                        403,
                    );
                }
                None
            }
        };
        let user = member.as_ref().map(|m| m.user_id.clone());
        let user_info = member
            .as_ref()
            .and_then(|m| m.user_info.as_ref().map(|i| i.get().to_owned()));
        match self
            .app
            .subscribe(self.socket_id, &self.outbox, &channel, member)
        {
            Ok(res) => {
                self.broker.announce(Announcement::Subscribed {
                    app_id: self.app.id().to_owned(),
                    entry: SubscriptionEntry {
                        channel: channel.clone(),
                        socket: self.socket_id,
                        user: user.clone(),
                        user_info,
                    },
                });
                let previous = self
                    .channels
                    .get_key_value(&channel)
                    .and_then(|(_, u)| u.clone());
                let replaced = previous.filter(|p| Some(p) != user.as_ref());
                self.channels.insert(channel.clone(), user.clone());
                Outcome::Subscribed {
                    channel,
                    res,
                    user,
                    replaced,
                }
            }
            Err(SubscribeError::PresenceFull { max }) => {
                let error = format!("The maximum members per presence channel ({max}) was reached");
                self.subscription_error(name, "LimitReached", &error, 4100);
                Outcome::LimitReached(SessionLimit::PresenceMembers)
            }
        }
    }

    fn unsubscribe(&mut self, name: &str) -> Outcome {
        let Ok(channel) = ChannelName::parse(name, usize::MAX) else {
            return Outcome::Nothing;
        };
        let Some(user) = self.channels.remove(&channel) else {
            return Outcome::Nothing;
        };
        let res = self.app.unsubscribe(self.socket_id, &channel);
        self.announce_unsubscribed(&channel);
        Outcome::Unsubscribed(Left { channel, res, user })
    }

    fn reject_client_event(&self, code: ErrorCode, message: &str) -> Outcome {
        self.send_error(Some(code), message);
        Outcome::ClientEventRejected
    }

    fn client_event(&mut self, event: &str, name: &str, data: &RawValue) -> Outcome {
        let app = self.app.app();
        if !app.client_events {
            return self.reject_client_event(
                ErrorCode::ClientEventRejected,
                "Client events are disabled for this app",
            );
        }
        if event.len() > self.limits.max_event_name_length {
            return self
                .reject_client_event(ErrorCode::ClientEventRejected, "Event name is too long");
        }
        let subscribed = ChannelName::parse(name, usize::MAX).ok().and_then(|c| {
            self.channels
                .get_key_value(&c)
                .map(|(c, u)| (c.clone(), u.clone()))
        });
        let Some((channel, user)) = subscribed else {
            return self.reject_client_event(
                ErrorCode::Close(CloseCode::Unauthorized),
                "Client events need a subscription to the channel",
            );
        };
        if !matches!(channel.kind(), ChannelKind::Private | ChannelKind::Presence) {
            return self.reject_client_event(
                ErrorCode::ClientEventRejected,
                "Client events are only allowed on private and presence channels",
            );
        }
        if data.get().len() > app.max_message_size {
            self.send_error(
                Some(ErrorCode::ClientEventRejected),
                "Client event data is too large",
            );
            return Outcome::LimitReached(SessionLimit::ClientEventSize);
        }
        if !self.client_events.try_take(Instant::now()) {
            self.send_error(
                Some(ErrorCode::ClientEventRejected),
                "Client event rejected: rate limit exceeded",
            );
            return Outcome::LimitReached(SessionLimit::ClientEventRate);
        }
        let frame = Frame::new(server_message::client_event(
            event,
            channel.as_str(),
            data,
            user.as_ref(),
        ));
        let delivery = self.broker.publish(Envelope {
            app_id: app.id.clone(),
            channel: channel.clone(),
            frame,
            except: Some(self.socket_id),
            cache: None,
        });
        Outcome::ClientEvent {
            channel,
            delivery,
            event: event.to_owned(),
            data: data.get().to_owned(),
            user,
        }
    }

    fn sign_in(&mut self, auth: &str, user_data: &str) -> Outcome {
        let app = self.app.app();
        let message = signature::signin_message(&self.socket_id.to_string(), user_data);
        if !signature::verify_auth(&app.key, app.secret.expose(), &message, auth) {
            return self.reject_signin("Invalid signature");
        }
        let Ok(parsed) = serde_json::from_str::<serde_json::Value>(user_data) else {
            return self.reject_signin("user_data is not valid JSON");
        };
        let Some(user) = parsed.get("id").and_then(UserId::from_json) else {
            return self.reject_signin("user_data needs a non-empty string id");
        };
        if self.signed_in.as_ref().is_some_and(|s| s.user != user) {
            return self.reject_signin("The connection is already signed in as another user");
        }
        let mut watchlist: Vec<UserId> = parsed
            .get("watchlist")
            .and_then(|w| w.as_array())
            .map(|ids| ids.iter().filter_map(UserId::from_json).collect())
            .unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        watchlist.retain(|u| seen.insert(u.clone()));
        let over_limit = watchlist.len() > self.limits.max_watchlist;
        watchlist.truncate(self.limits.max_watchlist);

        self.reply(server_message::signin_success(user_data));
        if let Some(previous) = self.signed_in.take() {
            self.app.unwatch(self.socket_id, &previous.watchlist);
        }
        self.app.sign_in(&user, self.socket_id, &self.outbox);
        self.broker.announce(Announcement::SignedIn {
            app_id: self.app.id().to_owned(),
            socket: self.socket_id,
            user: user.clone(),
        });
        if over_limit {
            self.send_error(
                Some(ErrorCode::WatchlistLimit),
                "Watchlist limit exceeded: only the first 100 user ids are watched",
            );
        }
        if !watchlist.is_empty() {
            let (online, offline) = self.app.watch(self.socket_id, &self.outbox, &watchlist);
            let mut events = Vec::new();
            if !online.is_empty() {
                events.push(("online", online.iter().collect()));
            }
            if !offline.is_empty() {
                events.push(("offline", offline.iter().collect()));
            }
            self.reply(server_message::watchlist_events(&events));
        }
        self.signed_in = Some(SignedIn { user, watchlist });
        Outcome::SignedIn
    }

    fn reject_signin(&self, message: &str) -> Outcome {
        self.send_error(Some(ErrorCode::Close(CloseCode::Unauthorized)), message);
        self.outbox.close(CloseRequest {
            code: CloseCode::Unauthorized,
            message: "Sign-in failed",
            reason: DisconnectReason::Error,
        });
        Outcome::SigninRejected
    }

    /// Leaves every channel and signs out; called once when the socket is gone.
    pub fn close(&mut self) -> Vec<Left> {
        let channels: Vec<(ChannelName, Option<UserId>)> = self.channels.drain().collect();
        let res = channels
            .into_iter()
            .map(|(channel, user)| {
                let res = self.app.unsubscribe(self.socket_id, &channel);
                self.announce_unsubscribed(&channel);
                Left { channel, res, user }
            })
            .collect();
        if let Some(signed_in) = self.signed_in.take() {
            self.app.unwatch(self.socket_id, &signed_in.watchlist);
            self.app.sign_out(&signed_in.user, self.socket_id);
            self.broker.announce(Announcement::SignedOut {
                app_id: self.app.id().to_owned(),
                socket: self.socket_id,
                user: signed_in.user,
            });
        }
        res
    }

    fn announce_unsubscribed(&self, channel: &ChannelName) {
        self.broker.announce(Announcement::Unsubscribed {
            app_id: self.app.id().to_owned(),
            channel: channel.clone(),
            socket: self.socket_id,
        });
    }
}

/// A connection's channels. A small vector, not a map: a connection has few channels (at most
/// `max_channels_per_connection`), and an idle connection should cost as little as possible.
#[derive(Debug, Default)]
struct Subscriptions(Vec<(ChannelName, Option<UserId>)>);

impl Subscriptions {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn contains_key(&self, channel: &ChannelName) -> bool {
        self.0.iter().any(|(c, _)| c == channel)
    }

    fn get_key_value(&self, channel: &ChannelName) -> Option<(&ChannelName, &Option<UserId>)> {
        self.0
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(c, u)| (c, u))
    }

    fn insert(&mut self, channel: ChannelName, user: Option<UserId>) {
        match self.0.iter_mut().find(|(c, _)| *c == channel) {
            Some(entry) => entry.1 = user,
            None => self.0.push((channel, user)),
        }
    }

    fn remove(&mut self, channel: &ChannelName) -> Option<Option<UserId>> {
        let idx = self.0.iter().position(|(c, _)| c == channel)?;
        Some(self.0.swap_remove(idx).1)
    }

    fn drain(&mut self) -> std::vec::Drain<'_, (ChannelName, Option<UserId>)> {
        self.0.drain(..)
    }
}

/// Validates presence `channel_data`: `{"user_id": string|number, "user_info": any}`.
fn parse_channel_data(data: &str, max_info_bytes: usize) -> Result<PresenceMember, String> {
    #[derive(serde::Deserialize)]
    struct ChannelData {
        user_id: Option<serde_json::Value>,
        user_info: Option<Box<RawValue>>,
    }
    let parsed: ChannelData =
        serde_json::from_str(data).map_err(|_| "channel_data is not a JSON object".to_owned())?;
    let user_id = parsed
        .user_id
        .as_ref()
        .and_then(UserId::from_json)
        .ok_or_else(|| "channel_data needs a user_id".to_owned())?;
    if user_id.as_str().len() > MAX_USER_ID_LENGTH {
        return Err(format!(
            "user_id is longer than {MAX_USER_ID_LENGTH} characters"
        ));
    }
    if let Some(info) = &parsed.user_info {
        if info.get().len() > max_info_bytes {
            return Err(format!("user_info is larger than {max_info_bytes} bytes"));
        }
    }
    Ok(PresenceMember {
        user_id,
        user_info: parsed.user_info,
    })
}

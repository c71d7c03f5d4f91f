//! One connection's protocol state machine: subscriptions, sign-in, watchlist and client events.
//!
//! `Session::handle` takes a parsed `ClientMessage` and acts on the node; replies go into the
//! connection's own `Outbox`, so they are ordered with broadcasts. The socket task (server crate)
//! only moves frames between the socket and this state machine.

use std::sync::Arc;
use std::time::Instant;

use herald_protocol::server_message;
use herald_protocol::signature;
use herald_protocol::{ChannelKind, ChannelName, ClientMessage, ErrorCode, SocketId, UserId};
use serde_json::value::RawValue;

use crate::app::NodeLimits;
use crate::app_state::{AppState, Durability, Leaving, PresenceMember, SubscriptionEntry};
use crate::broker::{Announcement, Broker, Envelope};
use crate::error::{ChannelDataError, ClientEventError, MessageError, SigninError, SubscribeError};
use crate::history::{wall_ms, Departure, Identity};
use crate::outbox::{CloseRequest, DisconnectReason, Frame, Outbox};
use crate::rate_limit::TokenBucket;

pub use crate::outcome::{Left, Outcome, SessionLimit};

/// Longest presence user id Pusher accepts.
const MAX_USER_ID_LENGTH: usize = 128;

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
    /// The signed resume cookie's token, when the handshake carried or set one.
    resume_token: Option<Arc<str>>,
    /// The client closed the connection itself (a close frame, with this code or 1005): it
    /// expects no replay.
    client_close_code: Option<u16>,
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
            resume_token: None,
            client_close_code: None,
        }
    }

    /// Identifies this connection's browser for replay: the token of its resume cookie.
    pub fn set_resume_token(&mut self, token: &str) {
        self.resume_token = Some(token.into());
    }

    /// The client closed the connection with a close frame (with this code, or 1005, "no
    /// status", when it had none): it left on purpose (a closed tab, `pusher.disconnect()`), so
    /// no replay is kept for it.
    pub fn closed_by_client_with(&mut self, code: Option<u16>) {
        self.client_close_code = Some(code.unwrap_or(1005));
    }

    /// The code of the client's close frame, if the client closed the connection.
    pub fn client_close_code(&self) -> Option<u16> {
        self.client_close_code
    }

    /// Who this connection is, for replay on `channel` (whose presence identity is `member`).
    fn identities(&self, member: Option<&UserId>) -> Vec<Identity> {
        let mut res = Vec::new();
        if let Some(token) = &self.resume_token {
            res.push(Identity::Cookie(token.to_string()));
        }
        for user in [member, self.signed_in.as_ref().map(|s| &s.user)]
            .into_iter()
            .flatten()
        {
            let identity = Identity::User(user.clone());
            if !res.contains(&identity) {
                res.push(identity);
            }
        }
        res
    }

    /// How this connection is ending, from who closed it and why.
    fn leaving(&self) -> Leaving {
        if self.client_close_code.is_some() {
            return Leaving::OnPurpose;
        }
        match self.outbox.close_request().map(|r| r.reason) {
            Some(DisconnectReason::Drain) => Leaving::Drained,
            None
            | Some(
                DisconnectReason::PingTimeout
                | DisconnectReason::SlowConsumer
                | DisconnectReason::Error,
            ) => Leaving::Lost {
                confirmed_ms: self.outbox.confirmed_ms(),
            },
            // Told to go away (terminated, app disabled, a limit): no replay.
            Some(
                DisconnectReason::ClientClose
                | DisconnectReason::Limit
                | DisconnectReason::Terminated,
            ) => Leaving::OnPurpose,
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

    pub fn handle(&mut self, message: ClientMessage) -> Outcome {
        match message {
            ClientMessage::Ping => {
                self.reply(server_message::pong());
                Outcome::Nothing
            }
            ClientMessage::Pong => {
                self.outbox.confirm_ping();
                Outcome::Nothing
            }
            ClientMessage::Unknown { event } => {
                // As Pusher does: say so, keep the socket.
                self.refuse_message(&MessageError::UnsupportedEvent(event));
                Outcome::Nothing
            }
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            } => match self.subscribe(&channel, auth.as_deref(), channel_data.as_deref()) {
                Ok(outcome) => outcome,
                Err(err) => self.refuse_subscription(&channel, &err),
            },
            ClientMessage::Unsubscribe { channel } => self.unsubscribe(&channel),
            ClientMessage::Signin { auth, user_data } => match self.sign_in(&auth, &user_data) {
                Ok(outcome) => outcome,
                Err(err) => self.refuse_signin(err),
            },
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => match self.client_event(&event, &channel, &data) {
                Ok(outcome) => outcome,
                Err(err) => self.refuse_client_event(err),
            },
        }
    }

    /// Sends `pusher:error` without closing.
    pub(crate) fn send_error(&self, code: Option<ErrorCode>, message: &str) {
        self.reply(server_message::error(code.map(ErrorCode::code), message));
    }

    /// Answers a message the session could not act on; the socket stays open.
    pub fn refuse_message(&self, err: &MessageError) {
        self.send_error(err.code(), &err.to_string());
    }

    fn reply(&self, text: String) {
        let _ = self.outbox.push(Frame::new(text));
    }

    fn refuse_subscription(&self, channel: &str, err: &SubscribeError) -> Outcome {
        let refusal = err.refusal();
        self.reply(server_message::subscription_error(
            channel,
            refusal.kind,
            &err.to_string(),
            refusal.status,
        ));
        match err {
            SubscribeError::TooManyChannels { .. } => {
                Outcome::LimitReached(SessionLimit::ChannelsPerConnection)
            }
            SubscribeError::PresenceFull { .. } => {
                Outcome::LimitReached(SessionLimit::PresenceMembers)
            }
            SubscribeError::InvalidChannelName(_)
            | SubscribeError::ChannelNameTooLong { .. }
            | SubscribeError::MissingAuth
            | SubscribeError::InvalidSignature
            | SubscribeError::MissingChannelData
            | SubscribeError::MalformedChannelData(_)
            | SubscribeError::UserIdTooLong { .. }
            | SubscribeError::UserInfoTooLarge { .. }
            | SubscribeError::NotSignedInAsUser => Outcome::SubscribeRejected,
        }
    }

    fn subscribe(
        &mut self,
        name: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) -> Result<Outcome, SubscribeError> {
        let channel = ChannelName::parse(name, self.limits.max_channel_name_length)?;
        if !self.channels.contains_key(&channel)
            && self.channels.len() >= self.limits.max_channels_per_connection
        {
            return Err(SubscribeError::TooManyChannels {
                max: self.limits.max_channels_per_connection,
            });
        }
        let socket = self.socket_id.to_string();
        let app = self.app.app();
        // Empty `auth` is "none": clients may send `"auth":""` on public channels.
        let auth = auth.filter(|a| !a.is_empty());
        let verify = |message: &str| {
            let auth = auth.ok_or(SubscribeError::MissingAuth)?;
            if signature::verify_auth(&app.key, app.secret.expose(), message, auth) {
                Ok(())
            } else {
                Err(SubscribeError::InvalidSignature)
            }
        };
        let member = match channel.kind() {
            ChannelKind::Public => None,
            ChannelKind::Private | ChannelKind::PrivateEncrypted => {
                verify(&signature::channel_auth_message(&socket, name, None))?;
                None
            }
            ChannelKind::Presence => {
                let data = channel_data.ok_or(SubscribeError::MissingChannelData)?;
                verify(&signature::channel_auth_message(&socket, name, Some(data)))?;
                Some(parse_channel_data(data, app.max_presence_user_info_bytes)?)
            }
            ChannelKind::ServerToUser => {
                let owner = channel.server_to_user();
                if self.signed_in.as_ref().map(|s| &s.user) != owner.as_ref() {
                    return Err(SubscribeError::NotSignedInAsUser);
                }
                None
            }
        };
        let user = member.as_ref().map(|m| m.user_id.clone());
        let user_info = member
            .as_ref()
            .and_then(|m| m.user_info.as_ref().map(|i| i.get().to_owned()));
        let resume = if self.channels.contains_key(&channel) {
            None
        } else {
            let identities = self.identities(user.as_ref());
            let resume = self.app.take_resume(&identities, &channel);
            if resume.is_some() {
                self.broker.announce(Announcement::Resumed {
                    app_id: self.app.id().to_owned(),
                    channel: channel.clone(),
                    identities,
                });
                resume
            } else if identities.is_empty() {
                None
            } else {
                // No departure: maybe this client's old socket was on a node that died.
                self.app
                    .resume_after_silence(&identities, &channel, &self.broker.silent_nodes())
            }
        };
        let res = self.app.subscribe_resuming(
            self.socket_id,
            &self.outbox,
            &channel,
            member,
            self.resume_token.clone(),
            resume,
        )?;
        self.broker.announce(Announcement::Subscribed {
            app_id: self.app.id().to_owned(),
            entry: SubscriptionEntry {
                channel: channel.clone(),
                socket: self.socket_id,
                user: user.clone(),
                user_info,
                cookie: self.resume_token.clone(),
            },
        });
        let previous = self
            .channels
            .get_key_value(&channel)
            .and_then(|(_, u)| u.clone());
        let replaced = previous.filter(|p| Some(p) != user.as_ref());
        self.channels.insert(channel.clone(), user.clone());
        Ok(Outcome::Subscribed {
            channel,
            res,
            user,
            replaced,
        })
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

    fn refuse_client_event(&self, err: ClientEventError) -> Outcome {
        self.send_error(Some(err.code()), &err.to_string());
        match err {
            ClientEventError::DataTooLarge { .. } => {
                Outcome::LimitReached(SessionLimit::ClientEventSize)
            }
            ClientEventError::RateLimited => Outcome::LimitReached(SessionLimit::ClientEventRate),
            ClientEventError::Disabled
            | ClientEventError::EventNameTooLong { .. }
            | ClientEventError::NotSubscribed
            | ClientEventError::WrongChannelKind => Outcome::ClientEventRejected,
        }
    }

    fn client_event(
        &mut self,
        event: &str,
        name: &str,
        data: &RawValue,
    ) -> Result<Outcome, ClientEventError> {
        let app = self.app.app();
        if !app.client_events {
            return Err(ClientEventError::Disabled);
        }
        if event.len() > self.limits.max_event_name_length {
            return Err(ClientEventError::EventNameTooLong {
                max: self.limits.max_event_name_length,
            });
        }
        let subscribed = ChannelName::parse(name, usize::MAX).ok().and_then(|c| {
            self.channels
                .get_key_value(&c)
                .map(|(c, u)| (c.clone(), u.clone()))
        });
        let (channel, user) = subscribed.ok_or(ClientEventError::NotSubscribed)?;
        if !matches!(channel.kind(), ChannelKind::Private | ChannelKind::Presence) {
            return Err(ClientEventError::WrongChannelKind);
        }
        if data.get().len() > app.max_message_size {
            return Err(ClientEventError::DataTooLarge {
                max: app.max_message_size,
            });
        }
        if !self.client_events.try_take(Instant::now()) {
            return Err(ClientEventError::RateLimited);
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
            durability: Durability::Ephemeral,
        });
        self.app.traffic().count_in(1);
        Ok(Outcome::ClientEvent {
            channel,
            delivery,
            event: event.to_owned(),
            data: data.get().to_owned(),
            user,
        })
    }

    fn sign_in(&mut self, auth: &str, user_data: &str) -> Result<Outcome, SigninError> {
        let app = self.app.app();
        let message = signature::signin_message(&self.socket_id.to_string(), user_data);
        if !signature::verify_auth(&app.key, app.secret.expose(), &message, auth) {
            return Err(SigninError::InvalidSignature);
        }
        let parsed = serde_json::from_str::<serde_json::Value>(user_data)
            .map_err(|_| SigninError::UserDataNotJson)?;
        let user = parsed
            .get("id")
            .and_then(UserId::from_json)
            .ok_or(SigninError::MissingUserId)?;
        if self.signed_in.as_ref().is_some_and(|s| s.user != user) {
            return Err(SigninError::SignedInAsAnother);
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
            self.refuse_message(&MessageError::WatchlistTooLong {
                max: self.limits.max_watchlist,
            });
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
        Ok(Outcome::SignedIn)
    }

    fn refuse_signin(&self, err: SigninError) -> Outcome {
        let code = err.close_code();
        self.send_error(Some(ErrorCode::Close(code)), &err.to_string());
        self.outbox.close(CloseRequest {
            code,
            message: "Sign-in failed",
            reason: DisconnectReason::Error,
        });
        Outcome::SigninRejected
    }

    /// Leaves every channel and signs out; called once when the socket is gone. Unless the
    /// client left on purpose, where it stopped on each channel is remembered for its identities
    /// (resume cookie, presence user, signed-in user), so that it can resume.
    pub fn close(&mut self) -> Vec<Left> {
        let leaving = self.leaving();
        let channels: Vec<(ChannelName, Option<UserId>)> = self.channels.drain().collect();
        let left_ms = wall_ms();
        let res = channels
            .into_iter()
            .map(|(channel, user)| {
                let res = self.app.leave(self.socket_id, &channel, leaving);
                self.announce_unsubscribed(&channel);
                if let Some(after) = res.resume_after {
                    let departure = Departure {
                        after,
                        socket: self.socket_id,
                        left_ms,
                    };
                    let identities = self.identities(user.as_ref());
                    self.app.record_departure(&identities, &channel, departure);
                    if !identities.is_empty() {
                        self.broker.announce(Announcement::Departed {
                            app_id: self.app.id().to_owned(),
                            channel: channel.clone(),
                            identities,
                            departure,
                        });
                    }
                }
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
            None => {
                // Grown one entry at a time while small: `push` would make room for four at
                // once, 150 bytes more on every socket of one channel (memory per connection).
                if self.0.len() == self.0.capacity() && self.0.len() < 4 {
                    self.0.reserve_exact(1);
                }
                self.0.push((channel, user));
            }
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
fn parse_channel_data(data: &str, max_info_bytes: usize) -> Result<PresenceMember, SubscribeError> {
    #[derive(serde::Deserialize)]
    struct ChannelData {
        user_id: Option<serde_json::Value>,
        user_info: Option<Box<RawValue>>,
    }
    let malformed = SubscribeError::MalformedChannelData;
    let parsed: ChannelData =
        serde_json::from_str(data).map_err(|_| malformed(ChannelDataError::NotJsonObject))?;
    let user_id = parsed
        .user_id
        .as_ref()
        .and_then(UserId::from_json)
        .ok_or(malformed(ChannelDataError::MissingUserId))?;
    if user_id.as_str().len() > MAX_USER_ID_LENGTH {
        return Err(SubscribeError::UserIdTooLong {
            max: MAX_USER_ID_LENGTH,
        });
    }
    if let Some(info) = &parsed.user_info {
        if info.get().len() > max_info_bytes {
            return Err(SubscribeError::UserInfoTooLarge {
                max: max_info_bytes,
            });
        }
    }
    Ok(PresenceMember {
        user_id,
        user_info: parsed.user_info,
    })
}

//! Watchlists of one app: which local sockets want to hear when a user comes online or goes
//! offline (Pusher's user watchlist events).

use std::collections::HashMap;

use herald_protocol::{server_message, SocketId, UserId};

use crate::lock_order::{Level, OrderedMutex};
use crate::outbox::{Frame, Outbox};

/// Whether a watched user came online or went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Online,
    Offline,
}

impl Transition {
    fn as_str(self) -> &'static str {
        match self {
            Transition::Online => "online",
            Transition::Offline => "offline",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Watchlists {
    /// Watched user → sockets whose watchlist names them.
    watchers: OrderedMutex<HashMap<UserId, Vec<(SocketId, Outbox)>>>,
}

impl Default for Watchlists {
    fn default() -> Self {
        Watchlists {
            watchers: OrderedMutex::new(Level::Watchlists, HashMap::new()),
        }
    }
}

impl Watchlists {
    pub(crate) fn watch(&self, socket: SocketId, outbox: &Outbox, users: &[UserId]) {
        let mut watchers = self.watchers.lock();
        for user in users {
            watchers
                .entry(user.clone())
                .or_default()
                .push((socket, outbox.clone()));
        }
    }

    pub(crate) fn unwatch(&self, socket: SocketId, users: &[UserId]) {
        let mut watchers = self.watchers.lock();
        for user in users {
            if let Some(list) = watchers.get_mut(user) {
                list.retain(|(s, _)| *s != socket);
                if list.is_empty() {
                    watchers.remove(user);
                }
            }
        }
    }

    /// Tells every socket watching `user`.
    pub(crate) fn notify(&self, user: &UserId, transition: Transition) {
        let watchers = self.watchers.lock();
        if let Some(list) = watchers.get(user) {
            let frame = Frame::new(server_message::watchlist_events(&[(
                transition.as_str(),
                vec![user],
            )]));
            for (_, outbox) in list {
                let _ = outbox.push(frame.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_hear_transitions_until_they_unwatch() {
        let watchlists = Watchlists::default();
        let (alice, bob) = (UserId("alice".into()), UserId("bob".into()));
        let outbox = Outbox::new(1 << 20);
        let socket = SocketId { node: 1, seq: 1 };
        watchlists.watch(socket, &outbox, std::slice::from_ref(&alice));
        watchlists.notify(&alice, Transition::Online);
        watchlists.notify(&bob, Transition::Online);
        let (batch, _) = outbox.take();
        assert_eq!(batch.len(), 1);
        let text = std::str::from_utf8(batch.iter().next().unwrap().text()).unwrap();
        assert!(text.contains("online") && text.contains("alice"), "{text}");
        watchlists.unwatch(socket, std::slice::from_ref(&alice));
        watchlists.notify(&alice, Transition::Offline);
        assert!(outbox.take().0.is_empty());
    }
}

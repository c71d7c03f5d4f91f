//! The member list of one presence channel: user id → that user's info and sockets.
//!
//! Invariant: a user is a member while at least one of their sockets is subscribed, so
//! `member_added` fires only for a user's first socket and `member_removed` only for the last.

use std::collections::HashMap;

use herald_protocol::server_message::Member;
use herald_protocol::{SocketId, UserId};
use serde_json::value::RawValue;

#[derive(Debug, Default)]
pub struct PresenceRoster {
    members: HashMap<UserId, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// The info from the user's most recent subscription.
    info: Option<Box<RawValue>>,
    /// Invariant: never empty while the entry exists.
    sockets: Vec<SocketId>,
}

impl PresenceRoster {
    /// Adds a socket for `user`; true when this is the user's first socket (a new member).
    pub fn add(&mut self, socket: SocketId, user: &UserId, info: Option<Box<RawValue>>) -> bool {
        match self.members.get_mut(user) {
            Some(entry) => {
                if !entry.sockets.contains(&socket) {
                    entry.sockets.push(socket);
                }
                entry.info = info;
                false
            }
            None => {
                self.members.insert(
                    user.clone(),
                    Entry {
                        info,
                        sockets: vec![socket],
                    },
                );
                true
            }
        }
    }

    /// Removes a socket of `user`; true when it was the user's last socket (member gone).
    pub fn remove(&mut self, socket: SocketId, user: &UserId) -> bool {
        let Some(entry) = self.members.get_mut(user) else {
            return false;
        };
        entry.sockets.retain(|s| *s != socket);
        if entry.sockets.is_empty() {
            self.members.remove(user);
            true
        } else {
            false
        }
    }

    /// The sockets (on every node) through which `user` is a member.
    pub fn sockets(&self, user: &UserId) -> &[SocketId] {
        self.members.get(user).map_or(&[], |e| &e.sockets)
    }

    pub fn contains(&self, user: &UserId) -> bool {
        self.members.contains_key(user)
    }

    /// Number of distinct users.
    pub fn user_count(&self) -> usize {
        self.members.len()
    }

    pub fn member(&self, user: &UserId) -> Option<Member<'_>> {
        self.members.get_key_value(user).map(|(user_id, e)| Member {
            user_id,
            user_info: e.info.as_deref(),
        })
    }

    pub fn members(&self) -> impl Iterator<Item = Member<'_>> + Clone {
        self.members.iter().map(|(user_id, e)| Member {
            user_id,
            user_info: e.info.as_deref(),
        })
    }

    pub fn user_ids(&self) -> impl Iterator<Item = &UserId> {
        self.members.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sid;

    #[test]
    fn presence_member_removed_after_last_socket_leaves() {
        let mut roster = PresenceRoster::default();
        let alice = UserId("alice".into());
        assert!(roster.add(sid(1, 1), &alice, None));
        assert!(!roster.add(sid(1, 2), &alice, None));
        assert!(
            !roster.add(sid(1, 2), &alice, None),
            "re-subscribing is idempotent"
        );
        assert_eq!(roster.user_count(), 1);
        assert!(!roster.remove(sid(1, 1), &alice));
        assert!(roster.remove(sid(1, 2), &alice));
        assert_eq!(roster.user_count(), 0);
        assert!(
            !roster.remove(sid(1, 2), &alice),
            "removing twice is a no-op"
        );
    }
}

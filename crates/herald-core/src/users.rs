//! Signed-in users of one app: this node's sockets and, replicated, other nodes'.
//!
//! Invariant: local and remote sign-ins live under one lock, so "came online" (the user's first
//! socket anywhere) and "went offline" (the last one) are decided atomically.

use std::collections::HashMap;

use herald_protocol::{server_message, CloseCode, SocketId, UserId};

use crate::lock_order::{Level, OrderedMutex};
use crate::outbox::{CloseRequest, DisconnectReason, Frame, Outbox};

#[derive(Debug, Default)]
struct Table {
    /// Signed-in sockets on this node, per user.
    local: HashMap<UserId, Vec<(SocketId, Outbox)>>,
    /// Signed-in sockets on other nodes, per user.
    remote: HashMap<UserId, Vec<SocketId>>,
}

impl Table {
    fn is_online(&self, user: &UserId) -> bool {
        self.local.contains_key(user) || self.remote.contains_key(user)
    }
}

#[derive(Debug)]
pub(crate) struct Users {
    table: OrderedMutex<Table>,
}

impl Default for Users {
    fn default() -> Self {
        Users {
            table: OrderedMutex::new(Level::Users, Table::default()),
        }
    }
}

impl Users {
    /// Registers a local signed-in socket; true when the user just came online (cluster-wide).
    pub(crate) fn sign_in(&self, user: &UserId, socket: SocketId, outbox: &Outbox) -> bool {
        let mut table = self.table.lock();
        let came_online = !table.is_online(user);
        let sockets = table.local.entry(user.clone()).or_default();
        if !sockets.iter().any(|(s, _)| *s == socket) {
            sockets.push((socket, outbox.clone()));
        }
        came_online
    }

    /// Forgets a local signed-in socket; true when the user just went offline (cluster-wide).
    pub(crate) fn sign_out(&self, user: &UserId, socket: SocketId) -> bool {
        let mut table = self.table.lock();
        let Some(sockets) = table.local.get_mut(user) else {
            return false;
        };
        sockets.retain(|(s, _)| *s != socket);
        if !sockets.is_empty() {
            return false;
        }
        table.local.remove(user);
        !table.is_online(user)
    }

    /// Other nodes' sockets signed in as `user`.
    pub(crate) fn remote_sockets(&self, user: &UserId) -> Vec<SocketId> {
        self.table
            .lock()
            .remote
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// Another node's socket signed in; true when the user just came online.
    pub(crate) fn remote_sign_in(&self, user: &UserId, socket: SocketId) -> bool {
        let mut table = self.table.lock();
        let came_online = !table.is_online(user);
        let sockets = table.remote.entry(user.clone()).or_default();
        if !sockets.contains(&socket) {
            sockets.push(socket);
        }
        came_online
    }

    /// Another node's socket signed out; true when the user just went offline.
    pub(crate) fn remote_sign_out(&self, user: &UserId, socket: SocketId) -> bool {
        let mut table = self.table.lock();
        let Some(sockets) = table.remote.get_mut(user) else {
            return false;
        };
        sockets.retain(|s| *s != socket);
        if !sockets.is_empty() {
            return false;
        }
        table.remote.remove(user);
        !table.is_online(user)
    }

    pub(crate) fn is_online(&self, user: &UserId) -> bool {
        self.table.lock().is_online(user)
    }

    /// Closes this node's sockets signed in as `user`; returns how many.
    pub(crate) fn terminate(&self, user: &UserId) -> usize {
        let table = self.table.lock();
        let Some(sockets) = table.local.get(user) else {
            return 0;
        };
        for (_, outbox) in sockets {
            let _ = outbox.push(Frame::new(server_message::error(
                Some(CloseCode::Unauthorized.code()),
                "Connection terminated by the app",
            )));
            outbox.close(CloseRequest {
                code: CloseCode::Unauthorized,
                message: "Connection terminated by the app",
                reason: DisconnectReason::Terminated,
            });
        }
        sockets.len()
    }

    /// This node's signed-in sockets.
    pub(crate) fn local(&self) -> Vec<(SocketId, UserId)> {
        let table = self.table.lock();
        table
            .local
            .iter()
            .flat_map(|(user, sockets)| sockets.iter().map(move |(s, _)| (*s, user.clone())))
            .collect()
    }

    /// Another node's signed-in sockets.
    pub(crate) fn remote_of(&self, node: u64) -> Vec<(SocketId, UserId)> {
        let table = self.table.lock();
        table
            .remote
            .iter()
            .flat_map(|(user, sockets)| sockets.iter().map(move |s| (*s, user.clone())))
            .filter(|(s, _)| s.node == node)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sid;

    #[test]
    fn online_from_the_first_socket_anywhere_to_the_last() {
        let users = Users::default();
        let alice = UserId("alice".into());
        let outbox = Outbox::new(1 << 20);
        assert!(users.sign_in(&alice, sid(1, 1), &outbox));
        assert!(!users.remote_sign_in(&alice, sid(2, 1)));
        assert!(!users.sign_in(&alice, sid(1, 1), &outbox), "idempotent");
        assert!(!users.sign_out(&alice, sid(1, 1)), "still online on node 2");
        assert!(users.is_online(&alice));
        assert_eq!(users.remote_of(2), [(sid(2, 1), alice.clone())]);
        assert!(users.remote_of(3).is_empty());
        assert!(users.remote_sign_out(&alice, sid(2, 1)));
        assert!(!users.is_online(&alice));
        assert!(
            !users.remote_sign_out(&alice, sid(2, 1)),
            "twice is a no-op"
        );
    }

    #[test]
    fn terminate_closes_local_sockets_with_4009() {
        let users = Users::default();
        let alice = UserId("alice".into());
        let outbox = Outbox::new(1 << 20);
        users.sign_in(&alice, sid(1, 1), &outbox);
        users.remote_sign_in(&alice, sid(2, 1));
        assert_eq!(users.terminate(&alice), 1);
        assert_eq!(
            outbox.take().1.map(|c| c.code),
            Some(CloseCode::Unauthorized)
        );
        assert_eq!(users.local(), [(sid(1, 1), alice)]);
    }
}

//! Open connections of one app: this node's sockets (so a disabled app can close them and the
//! drain can reach them) and, from heartbeats, how many other nodes have.
//!
//! Invariant: once retired (the app left the registry), no connection joins; a disable is seen
//! under the same lock a joining connection checks it under.

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocol::{server_message, CloseCode, SocketId};

use crate::app::App;
use crate::lock_order::{Level, OrderedMutex};
use crate::outbox::{CloseRequest, DisconnectReason, Frame, Outbox};

/// Why a connection may not join an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefused {
    /// The app is at its connection limit (4004).
    OverQuota,
    /// The app is disabled or was removed (4003).
    Disabled,
}

#[derive(Debug, Default)]
struct Table {
    open: HashMap<SocketId, Outbox>,
    /// Open connections on other nodes, per node.
    remote: HashMap<u64, usize>,
    /// Set when the app leaves the registry.
    retired: bool,
}

#[derive(Debug)]
pub(crate) struct Connections {
    table: OrderedMutex<Table>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            table: OrderedMutex::new(Level::Connections, Table::default()),
        }
    }
}

impl Connections {
    /// Registers a connection if the app is enabled and under its limit (cluster-wide).
    /// `settings` is read under the lock (see the invariant).
    pub(crate) fn add(
        &self,
        socket: SocketId,
        outbox: &Outbox,
        settings: impl FnOnce() -> Arc<App>,
    ) -> Result<(), ConnectionRefused> {
        let mut table = self.table.lock();
        let app = settings();
        if table.retired || !app.enabled {
            return Err(ConnectionRefused::Disabled);
        }
        let remote = table
            .remote
            .values()
            .fold(0usize, |a, n| a.saturating_add(*n));
        let max = app
            .connection_limit()
            .unwrap_or(usize::MAX)
            .saturating_sub(remote);
        if table.open.len() >= max {
            return Err(ConnectionRefused::OverQuota);
        }
        table.open.insert(socket, outbox.clone());
        Ok(())
    }

    pub(crate) fn remove(&self, socket: SocketId) {
        self.table.lock().open.remove(&socket);
    }

    pub(crate) fn count(&self) -> usize {
        self.table.lock().open.len()
    }

    /// Open connections on every node (this one's, and the others' from their heartbeats).
    pub(crate) fn total(&self) -> usize {
        let table = self.table.lock();
        table
            .remote
            .values()
            .fold(table.open.len(), |a, n| a.saturating_add(*n))
    }

    pub(crate) fn outboxes(&self) -> Vec<Outbox> {
        self.table.lock().open.values().cloned().collect()
    }

    /// Closes every open connection with 4003; returns how many.
    pub(crate) fn close_all(&self) -> usize {
        close_all(&self.table.lock())
    }

    /// Refuses new connections from now on and closes the open ones with 4003.
    pub(crate) fn retire(&self) -> usize {
        let mut table = self.table.lock();
        table.retired = true;
        close_all(&table)
    }

    pub(crate) fn set_remote(&self, node: u64, count: usize) {
        self.table.lock().remote.insert(node, count);
    }

    pub(crate) fn forget_remote(&self, node: u64) {
        self.table.lock().remote.remove(&node);
    }
}

fn close_all(table: &Table) -> usize {
    for outbox in table.open.values() {
        let _ = outbox.push(Frame::new(server_message::error(
            Some(CloseCode::AppDisabled.code()),
            "Application disabled",
        )));
        outbox.close(CloseRequest {
            code: CloseCode::AppDisabled,
            message: "Application disabled",
            reason: DisconnectReason::Terminated,
        });
    }
    table.open.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sid;

    #[test]
    fn quota_counts_other_nodes_and_retire_refuses_and_closes() {
        let connections = Connections::default();
        let mut app = App::demo();
        app.max_connections = 3;
        let app = Arc::new(app);
        let settings = || app.clone();
        connections.set_remote(2, 1);
        let (a, b) = (Outbox::new(1 << 20), Outbox::new(1 << 20));
        assert_eq!(connections.add(sid(1, 1), &a, settings), Ok(()));
        assert_eq!(connections.add(sid(1, 2), &b, settings), Ok(()));
        assert_eq!(
            connections.add(sid(1, 3), &b, settings),
            Err(ConnectionRefused::OverQuota)
        );
        connections.forget_remote(2);
        connections.remove(sid(1, 2));
        assert_eq!(connections.count(), 1);
        assert_eq!(connections.retire(), 1);
        assert_eq!(a.take().1.map(|c| c.code), Some(CloseCode::AppDisabled));
        assert_eq!(
            connections.add(sid(1, 4), &b, settings),
            Err(ConnectionRefused::Disabled)
        );
    }

    #[test]
    fn a_disabled_app_refuses_connections() {
        let connections = Connections::default();
        let mut app = App::demo();
        app.enabled = false;
        let app = Arc::new(app);
        assert_eq!(
            connections.add(sid(1, 1), &Outbox::new(1 << 20), || app.clone()),
            Err(ConnectionRefused::Disabled)
        );
    }
}

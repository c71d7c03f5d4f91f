//! Shard routing: which of the bus's logs carries a message. Every node maps a message to the
//! same shard, so each shard has one order that every node reads.

use crate::transport::Transport;
use crate::wire::BusMessage;

use super::{Inner, ShardBy};

/// A stable hash (FNV-1a), so that every node maps a key to the same shard.
fn shard_of(key: &str, shards: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % shards.max(1) as u64) as usize
}

impl<T: Transport> Inner<T> {
    pub(super) fn shards(&self) -> usize {
        self.settings.shards.max(1)
    }

    /// The shard of a message about `app` (and, for events, `channel`).
    pub(super) fn shard(&self, app: &str, channel: Option<&str>) -> usize {
        match (self.settings.shard_by, channel) {
            (ShardBy::Channel, Some(channel)) => {
                shard_of(&format!("{app}\u{0}{channel}"), self.shards())
            }
            _ => shard_of(app, self.shards()),
        }
    }

    /// The shard a message goes to: its app's (or its event's channel's); node-wide messages
    /// (heartbeats, sync requests) go to shard 0.
    pub(super) fn shard_for(&self, message: &BusMessage) -> usize {
        match message {
            BusMessage::Event { app, channel, .. } => self.shard(app, Some(channel)),
            BusMessage::Subscribed { app, .. }
            | BusMessage::Unsubscribed { app, .. }
            | BusMessage::SignedIn { app, .. }
            | BusMessage::SignedOut { app, .. }
            | BusMessage::Terminate { app, .. }
            | BusMessage::State { app, .. }
            | BusMessage::Departed { app, .. }
            | BusMessage::Resumed { app, .. }
            | BusMessage::Watching { app, .. }
            | BusMessage::Monitor { app, .. } => self.shard(app, None),
            BusMessage::Heartbeat { .. } | BusMessage::SyncRequest { .. } => 0,
            BusMessage::CaughtUp { shard, .. } => *shard % self.shards(),
        }
    }
}

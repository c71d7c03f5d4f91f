//! The broker's own settings: its timings, its queue, and how the bus is sharded (the transport
//! has its own settings).

use std::time::Duration;

/// Which shard of the bus carries an app's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardBy {
    /// Every event of an app in the app's shard (with its announcements): one order per app.
    App,
    /// Each channel's events in the channel's shard: one app's traffic spreads over every shard;
    /// order is kept per channel, which is all a subscriber can see.
    Channel,
}

/// The protocol's timing and queue settings (the transport has its own).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub heartbeat_interval: Duration,
    /// A node silent this long is considered dead and its members are removed.
    pub node_timeout: Duration,
    /// Messages waiting for the transport before new ones are dropped (and counted).
    pub queue_capacity: usize,
    /// Logs the bus is spread over (each on its own Redis hash slot); at least 1.
    pub shards: usize,
    pub shard_by: ShardBy,
}

//! Cache channels' last events (Pusher's cache channels), for subscribers that join later.
//!
//! Invariant: an event older than [`CACHE_TTL`] is never served; it is dropped when next read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_protocol::ChannelName;

use crate::lock_order::{Level, OrderedMutex};
use crate::outbox::Frame;

/// How long a cache channel remembers its last event (Pusher: "up to 30 minutes").
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// The last event of a cache channel, as the HTTP API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub event: String,
    pub data: String,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct CachedEvent {
    event: String,
    data: String,
    pub(crate) frame: Frame,
    stored_at: Instant,
}

/// The last event of every cache channel of one app.
#[derive(Debug)]
pub(crate) struct CacheStore {
    events: OrderedMutex<HashMap<ChannelName, CachedEvent>>,
}

impl Default for CacheStore {
    fn default() -> Self {
        CacheStore {
            events: OrderedMutex::new(Level::Cache, HashMap::new()),
        }
    }
}

impl CacheStore {
    pub(crate) fn store(&self, channel: &ChannelName, event: &str, data: &str, frame: &Frame) {
        let cached = CachedEvent {
            event: event.to_owned(),
            data: data.to_owned(),
            frame: frame.unpublished(),
            stored_at: Instant::now(),
        };
        self.events.lock().insert(channel.clone(), cached);
    }

    /// The channel's last event, if it is fresh.
    pub(crate) fn get(&self, channel: &ChannelName) -> Option<CachedEvent> {
        self.get_at(channel, Instant::now())
    }

    fn get_at(&self, channel: &ChannelName, now: Instant) -> Option<CachedEvent> {
        let mut events = self.events.lock();
        match events.get(channel) {
            Some(c) if now.saturating_duration_since(c.stored_at) < CACHE_TTL => Some(c.clone()),
            Some(_) => {
                events.remove(channel);
                None
            }
            None => None,
        }
    }

    pub(crate) fn info(&self, channel: &ChannelName) -> Option<CacheInfo> {
        self.get(channel).map(|c| CacheInfo {
            event: c.event,
            data: c.data,
            ttl: CACHE_TTL.saturating_sub(c.stored_at.elapsed()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_last_event_until_it_expires() {
        let cache = CacheStore::default();
        let channel = ChannelName::parse("cache-prices", 200).unwrap();
        assert!(cache.get(&channel).is_none());
        cache.store(&channel, "tick", "1", &Frame::from_static("{\"n\":1}"));
        cache.store(&channel, "tick", "2", &Frame::from_static("{\"n\":2}"));
        let info = cache.info(&channel).unwrap();
        assert_eq!((info.event.as_str(), info.data.as_str()), ("tick", "2"));
        assert!(info.ttl <= CACHE_TTL);
        let later = Instant::now() + CACHE_TTL;
        assert!(cache.get_at(&channel, later).is_none(), "expired");
        assert!(cache.get(&channel).is_none(), "and forgotten");
    }
}

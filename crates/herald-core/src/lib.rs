//! Node state and session logic: channels, presence, sign-in, client events and the fan-out path.
//!
//! Invariant: this crate never awaits the network and knows nothing of sockets, HTTP or Redis.
//! Everything here is plain data plus non-blocking queues ([`Outbox`]); the server crate owns IO.

pub mod app;
pub mod app_state;
pub mod app_store;
pub mod broker;
mod cache;
mod channels;
mod connections;
pub mod error;
pub mod history;
mod lock_order;
pub mod monitor;
pub mod node;
pub mod outbox;
mod outcome;
pub mod presence;
pub mod rate_limit;
pub mod registry;
pub mod session;
#[cfg(test)]
mod testing;
mod users;
mod watchlist;
pub mod webhook_store;

pub use app::{App, AppSecret, NodeLimits, WebhookTarget};
pub use app_state::{
    AppState, ConnectionRefused, ContinuityStats, Delivery, Durability, Leaving, LocalState,
    PresenceMember, SubscriptionEntry,
};
pub use app_store::{AppChange, AppStore, AppStoreError, AppStoreFuture, AppStoreResult};
pub use broker::{
    Acceptance, Announcement, Broker, DeliveryHook, Envelope, MemoryBroker, Unavailable,
};
pub use error::{
    ChannelDataError, ClientEventError, ConnectionError, MessageError, SigninError, SubscribeError,
    SubscriptionRefusal,
};
pub use history::{Identity, Position, Resumed, RESUME_FAILED_EVENT};
pub use monitor::{
    AppCounts, Monitor, MonitorEvent, MonitorItem, MonitorRecord, MonitorWatch, NodeView,
};
pub use node::Node;
pub use outbox::{CloseRequest, DisconnectReason, Frame, Outbox};
pub use registry::{AppRegistry, AppsChanged, RegistryError};
pub use session::{Session, SessionLimit};

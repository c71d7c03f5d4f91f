//! The Pusher Channels protocol v7 as plain data: what clients send, what the server sends back,
//! channel names, close codes and every signature the protocol uses.
//!
//! Invariant: this crate does no IO and has no async. Every byte that crosses the wire is defined
//! here, so a change in this crate is a compatibility change.

pub mod channel_name;
pub mod client_message;
pub mod close_code;
pub mod ids;
pub mod server_message;
pub mod signature;

pub use channel_name::{ChannelKind, ChannelName, ChannelNameError};
pub use client_message::{ClientMessage, ParseError};
pub use close_code::{CloseCode, ErrorCode, SubscriptionErrorType};
pub use ids::{SocketId, UserId};

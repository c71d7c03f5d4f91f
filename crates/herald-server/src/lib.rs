//! The IO shell around `herald-core`: the TCP listener, HTTP (health, metrics, the Pusher REST
//! API), the WebSocket endpoint and the shutdown drain.
//!
//! This file only declares the modules and re-exports the entry points. The modules import
//! downward only, never from the crate root: at the bottom `config`, `app_store`, `metrics` and
//! `webhooks` (each importing only those before it); over them [`state`] ([`Shared`]); over
//! `state` the HTTP API, the admin API, [`connection`] (WebSockets), `reload` and `shutdown`; on top
//! [`router`](mod@router) and [`server`] ([`run`], [`serve`]).
//!
//! Invariant: every long-lived task of a server runs on one of the two `TaskTracker`s in
//! [`Shared`] (`connection_tasks`: the accept loop, HTTP connections and sockets;
//! `background_tasks`: the broker, webhooks, the app store's sync loop, SIGHUP and signal
//! handlers, metrics upkeep, the liveness sweep), each stopped by a token that [`serve`] cancels,
//! so [`serve`] returns once they ended (or their deadline passed).

pub mod admin;
pub mod app_store;
pub mod config;
pub mod connection;
pub mod http_api;
pub mod metrics;
pub mod reload;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod webhooks;

pub use config::Config;
pub use router::router;
pub use server::{run, serve};
pub use state::Shared;

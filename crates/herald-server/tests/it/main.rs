//! Integration tests over real sockets: each test starts its own server on 127.0.0.1:0.
//! Every wait has a timeout; nothing sleeps to synchronise.

mod admin;
mod client_events;
mod cluster;
mod connect;
mod continuity;
mod deflate;
mod drain;
mod hostile;
mod http_api;
mod limits;
mod metrics;
mod monitor;
mod presence;
mod prop_api;
mod prop_bus;
mod reload;
mod runtime;
mod signin;
mod subscribe;
mod support;
mod webhooks;

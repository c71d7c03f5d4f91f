//! The admin API and the console, off unless `admin.token` is set.
//!
//! (Minimal on the console branch: the admin helper's module replaces this file; keep its
//! `pub mod console;` and mount `console::routes()` next to `/admin/api`.)

pub mod console;

use std::sync::Arc;

use axum::Router;

use crate::Shared;

/// The admin routes (`/console` here), or none while `admin.token` is unset.
pub fn router(shared: &Shared) -> Router<Arc<Shared>> {
    if shared.config.admin.token.is_none() {
        return Router::new();
    }
    Router::new().merge(console::routes())
}

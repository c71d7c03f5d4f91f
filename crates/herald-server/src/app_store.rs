//! Where the node's apps come from, and how changes reach the registry.
//!
//! [`Apps`] wraps the configured [`AppStore`]: the configuration file (read-only; SIGHUP reloads
//! it, `reload.rs`) or a database (`app_store.url`, herald-appstore). A change made through the
//! admin API is written to the store and then applied on this node at once
//! ([`Shared::apply_apps`]); other nodes see it through the store's change notification.
//!
//! Invariant: the connection and publish paths never call the store; they read the registry.
//! A store that cannot be reached changes nothing: the last apps applied stay.

use std::sync::Arc;

use herald_core::{App, AppStore, AppStoreError, AppStoreFuture, AppStoreResult, AppsChanged};
use parking_lot::Mutex;
use serde::Serialize;

use crate::Shared;

/// The app store in use, and how its last sync went.
#[derive(Debug)]
pub struct Apps {
    store: Arc<dyn AppStore>,
    status: Mutex<AppStoreStatus>,
}

/// How the app store is doing: `/ready`'s JSON body and the admin API show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AppStoreStatus {
    /// `"file"`, `"postgres"` or `"mysql"`.
    pub kind: &'static str,
    /// False while the store is unreachable (the known apps keep working).
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix time in milliseconds of the last successful load.
    pub last_sync_ms: u64,
}

impl Apps {
    pub fn new(store: Arc<dyn AppStore>) -> Apps {
        let status = AppStoreStatus {
            kind: store.kind(),
            ok: true,
            error: None,
            last_sync_ms: herald_core::monitor::now_ms(),
        };
        Apps {
            store,
            status: Mutex::new(status),
        }
    }

    pub fn store(&self) -> &Arc<dyn AppStore> {
        &self.store
    }

    pub fn read_only(&self) -> bool {
        self.store.read_only()
    }

    pub fn status(&self) -> AppStoreStatus {
        self.status.lock().clone()
    }

    /// Adds an app to the store and applies it on this node.
    ///
    /// # Errors
    /// `ReadOnly`, `Conflict`, `Unavailable`; nothing changed.
    pub async fn create(&self, shared: &Shared, app: App) -> AppStoreResult<AppsChanged> {
        self.store.create(app).await?;
        self.sync(shared).await
    }

    /// Replaces an app in the store and applies it on this node.
    ///
    /// # Errors
    /// `ReadOnly`, `NotFound`, `Conflict`, `Unavailable`; nothing changed.
    pub async fn update(&self, shared: &Shared, app: App) -> AppStoreResult<AppsChanged> {
        self.store.update(app).await?;
        self.sync(shared).await
    }

    /// Removes an app from the store and from this node (its sockets close with 4003).
    ///
    /// # Errors
    /// `ReadOnly`, `NotFound`, `Unavailable`; nothing changed.
    pub async fn delete(&self, shared: &Shared, id: &str) -> AppStoreResult<AppsChanged> {
        self.store.delete(id).await?;
        self.sync(shared).await
    }

    /// Loads every app from the store and applies the list on this node.
    ///
    /// # Errors
    /// The store is unreachable; the running apps stay, and the status says so.
    pub async fn sync(&self, shared: &Shared) -> AppStoreResult<AppsChanged> {
        match self.store.load().await {
            Ok(apps) => {
                *self.status.lock() = AppStoreStatus {
                    kind: self.store.kind(),
                    ok: true,
                    error: None,
                    last_sync_ms: herald_core::monitor::now_ms(),
                };
                Ok(shared.apply_apps(apps))
            }
            Err(err) => {
                let mut status = self.status.lock();
                status.ok = false;
                status.error = Some(err.to_string());
                Err(err)
            }
        }
    }
}

/// The configuration file's apps: read-only for the admin API; SIGHUP replaces them.
#[derive(Debug)]
pub struct FileStore {
    apps: Mutex<Vec<App>>,
}

impl FileStore {
    pub fn new(apps: Vec<App>) -> FileStore {
        FileStore {
            apps: Mutex::new(apps),
        }
    }

    /// The file's apps after a reload.
    pub fn set(&self, apps: Vec<App>) {
        *self.apps.lock() = apps;
    }
}

impl AppStore for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn read_only(&self) -> bool {
        true
    }

    fn load(&self) -> AppStoreFuture<'_, Vec<App>> {
        let mut apps = self.apps.lock().clone();
        apps.sort_by(|a, b| a.id.cmp(&b.id));
        Box::pin(async move { Ok(apps) })
    }

    fn create(&self, _app: App) -> AppStoreFuture<'_, ()> {
        Box::pin(async { Err(AppStoreError::ReadOnly) })
    }

    fn update(&self, _app: App) -> AppStoreFuture<'_, ()> {
        Box::pin(async { Err(AppStoreError::ReadOnly) })
    }

    fn delete<'a>(&'a self, _id: &'a str) -> AppStoreFuture<'a, ()> {
        Box::pin(async { Err(AppStoreError::ReadOnly) })
    }

    fn changed(&self) -> AppStoreFuture<'_, ()> {
        // The file changes only on SIGHUP, which `reload.rs` applies itself.
        Box::pin(std::future::pending())
    }
}

//! Where the node's apps come from, and how changes reach the registry.
//!
//! [`Apps`] wraps the configured [`AppStore`]: the configuration file (read-only; SIGHUP reloads
//! it, `reload.rs`) or a database (`app_store.url`, herald-appstore). A change made through the
//! admin API is written to the store and then applied on this node at once (`Shared::create_app`
//! and its siblings, through `Shared::apply_apps`); other nodes see it through the store's change
//! notification. What applies a list of apps is passed in (`apply`): this module knows nothing of
//! the server's state.
//!
//! Invariant: the connection and publish paths never call the store; they read the registry.
//! A store that cannot be reached changes nothing: the last apps applied stay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    App, AppChange, AppStore, AppStoreError, AppStoreFuture, AppStoreResult, AppsChanged,
};
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::Config;

/// The app store in use, and how its last sync went.
#[derive(Debug)]
pub struct Apps {
    store: Arc<dyn AppStore>,
    status: Mutex<AppStoreStatus>,
    /// The configuration file's store, which SIGHUP updates; `None` for a database.
    file: Option<Arc<FileStore>>,
    /// True once the node has the store's apps (at once for the file, whose apps the node is
    /// built with; after the first successful load for a database).
    loaded: tokio::sync::watch::Sender<bool>,
    syncs_ok: AtomicU64,
    syncs_failed: AtomicU64,
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
    /// Rows of the last load that are not valid apps (skipped; the log says why).
    pub invalid_rows: u64,
}

/// How long `serve` waits for a database's apps before it starts serving without them
/// (the sync loop keeps trying).
pub const FIRST_LOAD_WAIT: Duration = Duration::from_secs(3);

/// The sync loop's longest pause between failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Apps {
    /// A store whose apps the node already has (it was built with them).
    pub fn new(store: Arc<dyn AppStore>) -> Apps {
        let status = AppStoreStatus {
            kind: store.kind(),
            ok: true,
            error: None,
            last_sync_ms: herald_core::monitor::now_ms(),
            invalid_rows: 0,
        };
        Apps {
            store,
            status: Mutex::new(status),
            file: None,
            loaded: tokio::sync::watch::Sender::new(true),
            syncs_ok: AtomicU64::new(0),
            syncs_failed: AtomicU64::new(0),
        }
    }

    /// The configuration file's apps (which the node is built with).
    pub fn from_file(store: Arc<FileStore>) -> Apps {
        Apps {
            file: Some(store.clone()),
            ..Apps::new(store)
        }
    }

    /// A store whose apps the node does not have yet: the sync loop's first load brings them.
    pub fn to_load(store: Arc<dyn AppStore>) -> Apps {
        let kind = store.kind();
        let apps = Apps::new(store);
        *apps.status.lock() = AppStoreStatus {
            kind,
            ok: false,
            error: Some("not loaded yet".into()),
            last_sync_ms: 0,
            invalid_rows: 0,
        };
        apps.loaded.send_replace(false);
        apps
    }

    /// The store `config` names: a database for `app_store.url` (the file's `apps` are then
    /// ignored), else the configuration file's apps. Call it within a tokio runtime.
    ///
    /// # Errors
    /// `app_store.url` names no supported database.
    pub fn from_config(config: &Config) -> anyhow::Result<Apps> {
        match &config.app_store.url {
            Some(url) => {
                let store = herald_appstore::SqlAppStore::connect(url)
                    .map_err(|err| anyhow::anyhow!("{err}"))?;
                tracing::info!(
                    kind = store.dialect().kind(),
                    "apps come from the database (app_store.url); the configuration's apps (file or HERALD_APPS) are ignored"
                );
                Ok(Apps::to_load(Arc::new(store)))
            }
            None => Ok(Apps::from_file(Arc::new(FileStore::new(config.apps())))),
        }
    }

    /// The configuration file's store, when apps come from it.
    pub fn file(&self) -> Option<&Arc<FileStore>> {
        self.file.as_ref()
    }

    /// Whether the node has had the store's apps since start-up.
    pub fn loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits until the node has the store's apps, at most `timeout`; false when it does not.
    pub async fn wait_loaded(&self, timeout: Duration) -> bool {
        let mut loaded = self.loaded.subscribe();
        tokio::time::timeout(timeout, loaded.wait_for(|loaded| *loaded))
            .await
            .is_ok_and(|res| res.is_ok())
    }

    /// Loads that succeeded and failed (the sync loop's, and those after each admin change).
    pub fn syncs(&self) -> (u64, u64) {
        (
            self.syncs_ok.load(Ordering::Relaxed),
            self.syncs_failed.load(Ordering::Relaxed),
        )
    }

    /// The store failed outside a load (waiting for a change): the status says so.
    pub fn record_error(&self, err: &AppStoreError) {
        self.syncs_failed.fetch_add(1, Ordering::Relaxed);
        let mut status = self.status.lock();
        status.ok = false;
        status.error = Some(err.to_string());
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

    /// Loads every app from the store and applies the list on this node with `apply`
    /// (`Shared::apply_apps`).
    ///
    /// # Errors
    /// The store is unreachable; the running apps stay, and the status says so.
    pub async fn sync(
        &self,
        apply: impl FnOnce(Vec<App>) -> AppsChanged,
    ) -> AppStoreResult<AppsChanged> {
        let apps = self.load().await?;
        let changed = apply(apps);
        self.record_loaded();
        Ok(changed)
    }

    /// Every app in the store; a failure is recorded in the status.
    async fn load(&self) -> AppStoreResult<Vec<App>> {
        self.store
            .load()
            .await
            .inspect_err(|err| self.record_error(err))
    }

    /// The apps just loaded are applied: the status says the store answers.
    fn record_loaded(&self) {
        *self.status.lock() = AppStoreStatus {
            kind: self.store.kind(),
            ok: true,
            error: None,
            last_sync_ms: herald_core::monitor::now_ms(),
            invalid_rows: self.store.invalid_rows(),
        };
        self.syncs_ok.fetch_add(1, Ordering::Relaxed);
        self.loaded.send_replace(true);
    }
}

/// The sync loop (`Shared::spawn_app_sync` runs it on the background tasks): it loads the store's
/// apps whenever [`AppStore::changed`] says they may have changed and applies them with `apply`
/// (`Shared::apply_apps`), and retries with backoff (at most 1 s) while the store is
/// unreachable, keeping the apps it has. `apply` holds the node weakly: the loop ends when it
/// answers `None` (the node is gone).
pub async fn sync_loop(apps: Arc<Apps>, apply: impl Fn(Vec<App>) -> Option<AppsChanged>) {
    let store = apps.store().clone();
    let mut backoff = Duration::from_millis(100);
    // A database's apps are not on the node yet: load them first.
    let mut must_load = !apps.loaded();
    let mut failing = false;
    loop {
        let failed = if must_load {
            match apps.load().await {
                Ok(list) => {
                    let Some(changed) = apply(list) else {
                        return;
                    };
                    apps.record_loaded();
                    must_load = false;
                    if failing || !changed.is_empty() {
                        tracing::info!(
                            kind = store.kind(),
                            added = ?changed.added,
                            changed = ?changed.changed,
                            removed = ?changed.removed,
                            closed_sockets = changed.closed_sockets,
                            "apps loaded from the app store and applied"
                        );
                    }
                    None
                }
                Err(err) => Some(err),
            }
        } else {
            match store.changed().await {
                Ok(()) => {
                    must_load = true;
                    None
                }
                Err(err) => {
                    apps.record_error(&err);
                    // Load again once it answers: the apps may have changed meanwhile.
                    must_load = true;
                    Some(err)
                }
            }
        };
        match failed {
            None => {
                failing = false;
                backoff = Duration::from_millis(100);
            }
            Some(err) => {
                if !failing {
                    tracing::warn!(
                        kind = store.kind(),
                        error = %err,
                        "app store unreachable; the known apps keep working, retrying"
                    );
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
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

    fn update<'a>(&'a self, _id: &'a str, _change: AppChange) -> AppStoreFuture<'a, App> {
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

//! The seam behind where apps come from: the configuration file (read-only, reloaded on SIGHUP)
//! or a database (herald-appstore: Postgres or MySQL), which the admin API can change.
//!
//! herald-server owns the sync loop: it loads every app at start-up, applies the list through the
//! [`crate::AppRegistry`] whenever [`AppStore::changed`] resolves (or on its poll interval), and
//! keeps the last good list when the store is unreachable. The connection and publish paths never
//! call a store: they read the registry.
//!
//! Invariant: a store never holds a lock of herald-core; a failed call changes nothing.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::app::App;

/// Why a store operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppStoreError {
    /// The store cannot be written (the configuration file): the admin API answers 409.
    ReadOnly,
    /// No app with this id.
    NotFound(String),
    /// The id or key is taken by another app (the text names which).
    Conflict(String),
    /// The backend is unreachable or answered something unexpected; the text says how.
    Unavailable(String),
    /// A change that would make the app invalid (the text says why): the admin API answers 400.
    Invalid(String),
}

impl fmt::Display for AppStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppStoreError::ReadOnly => write!(
                f,
                "apps come from the configuration file, which the admin API cannot change \
                 (set app_store.url to keep apps in a database)"
            ),
            AppStoreError::NotFound(id) => write!(f, "no app with id {id:?}"),
            AppStoreError::Conflict(what) | AppStoreError::Invalid(what) => write!(f, "{what}"),
            AppStoreError::Unavailable(why) => write!(f, "app store unavailable: {why}"),
        }
    }
}

impl std::error::Error for AppStoreError {}

pub type AppStoreResult<T> = Result<T, AppStoreError>;

/// What every store method returns: a boxed future, so the trait can be used as `dyn`.
pub type AppStoreFuture<'a, T> = Pin<Box<dyn Future<Output = AppStoreResult<T>> + Send + 'a>>;

/// A change to one app, for [`AppStore::update`]: the app as stored now in, the app to store out.
pub type AppChange = Box<dyn FnOnce(App) -> AppStoreResult<App> + Send>;

/// Where apps are kept. Every method is one atomic change in the store.
pub trait AppStore: Send + Sync + fmt::Debug {
    /// `"file"`, `"postgres"` or `"mysql"`: shown in `/ready` and the admin API.
    fn kind(&self) -> &'static str;

    /// True when the admin API cannot change apps here (the configuration file).
    fn read_only(&self) -> bool;

    /// Every app, sorted by id.
    fn load(&self) -> AppStoreFuture<'_, Vec<App>>;

    /// Adds an app. `Conflict` when its id or key exists.
    fn create(&self, app: App) -> AppStoreFuture<'_, ()>;

    /// Changes the app with this id in one atomic step: `change` gets the app as the store holds
    /// it now, with other changes to it held off until this one is written (two concurrent
    /// changes of different settings both stay), and returns the app to write, which this
    /// returns. `NotFound` when there is none, `Conflict` when the new key is another app's,
    /// `change`'s own error (`Invalid`) when it refuses.
    fn update<'a>(&'a self, id: &'a str, change: AppChange) -> AppStoreFuture<'a, App>;

    /// Removes an app. `NotFound` when there is none.
    fn delete<'a>(&'a self, id: &'a str) -> AppStoreFuture<'a, ()>;

    /// Resolves when the apps may have changed since the previous call (a Postgres NOTIFY, a
    /// changed version row), or with an error when the store became unreachable. The sync loop
    /// calls it in a loop and reloads on every return; a store without change notification may
    /// resolve on a timer.
    fn changed(&self) -> AppStoreFuture<'_, ()>;

    /// Rows the last [`AppStore::load`] skipped because they are not valid apps (a database
    /// row written by hand, say); 0 for a store that cannot hold such rows.
    fn invalid_rows(&self) -> u64 {
        0
    }
}

//! Apps kept in Postgres or MySQL/MariaDB: herald-core's [`AppStore`] over sqlx.
//!
//! One code path serves both databases through sqlx's `Any` driver; the few statements that
//! differ (the schema, the migration lock, `NOTIFY`) are in [`dialect`]. The tables:
//!
//! - `herald_apps (id, app_key UNIQUE, secret, settings, updated_at)`: one row per app;
//!   `settings` is a JSON object with every other `App` field, so a new setting needs no
//!   migration. Secrets are stored as given (HMAC signing needs them).
//! - `herald_apps_version (id = 1, version)`: bumped in the same transaction as every change;
//!   what [`AppStore::changed`] polls (and, on Postgres, a `NOTIFY herald_apps` in that
//!   transaction wakes every node at once).
//! - `herald_schema (id = 1, version)`: the schema version; a node migrates a database that is
//!   older than it knows, under a lock (`pg_advisory_xact_lock`, MySQL `GET_LOCK`), with
//!   statements that are idempotent, on its first use of the database (and again after a
//!   failure).
//!
//! Invariants: everything read from the database is untrusted: a row that does not decode to a
//! valid app is skipped (logged and counted), never a panic, and the other apps load. Every
//! operation is bounded in time ([`OP_TIMEOUT`]) and a failure changes nothing.

mod codec;
pub mod dialect;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use herald_core::{App, AppChange, AppStore, AppStoreError, AppStoreFuture, AppStoreResult};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Row};

pub use codec::{settings_json, validate};
pub use dialect::Dialect;

/// The longest any database operation may take before it counts as a failure.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`AppStore::changed`] reads the version row (MySQL's only way to learn of a
/// change, Postgres's fallback for a notification lost with its connection).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long getting a connection may take (the database is down: fail fast, retry later).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Apps in a SQL database.
pub struct SqlAppStore {
    dialect: Dialect,
    pool: AnyPool,
    /// Postgres: the pool of the `LISTEN` connection (one).
    listen_pool: Option<sqlx::PgPool>,
    listener: tokio::sync::Mutex<Option<PgListener>>,
    migrated: AtomicBool,
    migrating: tokio::sync::Mutex<()>,
    /// The version row as [`AppStore::changed`] last saw it; `None` after an error, so the
    /// next successful poll reports a change (and the sync loop reloads).
    seen_version: parking_lot::Mutex<Option<i64>>,
    invalid_rows: AtomicU64,
    poll_interval: Duration,
}

impl fmt::Debug for SqlAppStore {
    // Never the URL: it may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlAppStore")
            .field("kind", &self.dialect.kind())
            .finish_non_exhaustive()
    }
}

impl SqlAppStore {
    /// A store for `url` (`postgres://`, `postgresql://`, `mysql://` or `mariadb://`; TLS as the
    /// URL asks, e.g. `?sslmode=require` or `?ssl-mode=required`). Connects lazily: a database
    /// that is down now is not an error here; the tables are created on first use. Call it
    /// within a tokio runtime.
    ///
    /// # Errors
    /// `Unavailable` for a URL that names no supported database or does not parse.
    pub fn connect(url: &str) -> AppStoreResult<SqlAppStore> {
        let dialect = Dialect::of_url(url).ok_or_else(|| {
            AppStoreError::Unavailable(
                "app_store.url must start with postgres://, postgresql://, mysql:// or mariadb://"
                    .into(),
            )
        })?;
        sqlx::any::install_default_drivers();
        // No idle timeout nor lifetime: sqlx would keep a maintenance task per pool. A broken
        // connection is found by the ping before each use.
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy(url)
            .map_err(|err| AppStoreError::Unavailable(format!("app_store.url: {err}")))?;
        let listen_pool = match dialect {
            Dialect::Postgres => Some(
                PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_lazy(url)
                    .map_err(|err| AppStoreError::Unavailable(format!("app_store.url: {err}")))?,
            ),
            Dialect::MySql => None,
        };
        Ok(SqlAppStore {
            dialect,
            pool,
            listen_pool,
            listener: tokio::sync::Mutex::new(None),
            migrated: AtomicBool::new(false),
            migrating: tokio::sync::Mutex::new(()),
            seen_version: parking_lot::Mutex::new(None),
            invalid_rows: AtomicU64::new(0),
            poll_interval: POLL_INTERVAL,
        })
    }

    /// Polls the version row this often instead of every [`POLL_INTERVAL`].
    pub fn with_poll_interval(mut self, interval: Duration) -> SqlAppStore {
        self.poll_interval = interval;
        self
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Rows the last load skipped because they do not decode to a valid app.
    pub fn invalid_rows(&self) -> u64 {
        self.invalid_rows.load(Ordering::Relaxed)
    }

    /// Creates or upgrades the tables unless done already (idempotent, under a lock).
    ///
    /// # Errors
    /// The database is unreachable or refused a statement.
    pub async fn migrate(&self) -> AppStoreResult<()> {
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one_at_a_time = self.migrating.lock().await;
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        bounded(self.run_migration()).await?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    async fn run_migration(&self) -> Result<(), sqlx::Error> {
        let d = self.dialect;
        let mut conn = self.pool.acquire().await?;
        match d {
            Dialect::Postgres => {
                // Postgres's DDL is transactional: the lock, the tables and the version commit
                // together.
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                sqlx::query(d.lock()).execute(&mut *tx).await?;
                sqlx::query(d.create_schema_table())
                    .execute(&mut *tx)
                    .await?;
                self.migration_steps(&mut tx).await?;
                tx.commit().await?;
            }
            Dialect::MySql => {
                // MySQL commits each DDL statement by itself: a session lock serializes nodes
                // starting together, and every statement is idempotent.
                sqlx::query(d.create_schema_table())
                    .execute(&mut *conn)
                    .await?;
                let locked: Option<i64> =
                    sqlx::query_scalar(d.lock()).fetch_one(&mut *conn).await?;
                if locked != Some(1) {
                    return Err(sqlx::Error::Protocol(
                        "timed out waiting for another node's migration (GET_LOCK)".into(),
                    ));
                }
                let res = self.migration_steps(&mut conn).await;
                if let Some(unlock) = d.unlock() {
                    sqlx::query(unlock).execute(&mut *conn).await?;
                }
                res?;
            }
        }
        Ok(())
    }

    async fn migration_steps(&self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        let d = self.dialect;
        sqlx::query(&d.insert_ignore("herald_schema (id, version) VALUES (1, 0)"))
            .execute(&mut *conn)
            .await?;
        let current: i64 = sqlx::query_scalar("SELECT version FROM herald_schema WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?;
        if current > dialect::SCHEMA_VERSION {
            tracing::warn!(
                database = current,
                known = dialect::SCHEMA_VERSION,
                "the app store's schema is newer than this herald knows; using it as it is"
            );
        }
        for version in current + 1..=dialect::SCHEMA_VERSION {
            for statement in d.migration(version) {
                sqlx::query(&statement).execute(&mut *conn).await?;
            }
            sqlx::query(&d.sql("UPDATE herald_schema SET version = ? WHERE id = 1"))
                .bind(version)
                .execute(&mut *conn)
                .await?;
            tracing::info!(
                kind = d.kind(),
                version,
                "app store schema migrated (herald_apps, herald_apps_version)"
            );
        }
        Ok(())
    }

    async fn load_apps(&self) -> AppStoreResult<Vec<App>> {
        self.migrate().await?;
        let rows = bounded(async {
            sqlx::query("SELECT id, app_key, secret, settings FROM herald_apps")
                .fetch_all(&self.pool)
                .await
        })
        .await?;
        let mut apps = Vec::with_capacity(rows.len());
        let mut invalid = 0;
        for row in &rows {
            match decode_row(row) {
                Ok(decoded) => {
                    if !decoded.unknown.is_empty() {
                        tracing::warn!(
                            app_id = %decoded.app.id,
                            settings = ?decoded.unknown,
                            "app store: settings this herald does not know are ignored"
                        );
                    }
                    apps.push(decoded.app);
                }
                Err(err) => {
                    invalid += 1;
                    // The id is untrusted text too: logged as a debug string, bounded.
                    let id = row
                        .try_get_unchecked::<String, _>(0)
                        .map(|id| id.chars().take(64).collect::<String>())
                        .unwrap_or_default();
                    tracing::error!(
                        app_id = ?id,
                        error = %err,
                        "app store: a row of herald_apps is not a valid app; skipped"
                    );
                }
            }
        }
        self.invalid_rows.store(invalid, Ordering::Relaxed);
        apps.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(apps)
    }

    /// One change (the insert, update or delete), the version bump and, on Postgres, the
    /// `NOTIFY`, in one transaction. `NotFound` when the app to change does not exist.
    async fn write(&self, op: Write<'_>) -> AppStoreResult<()> {
        if let Write::Create(app) = op {
            // The admin API validates first; this keeps rows that no node could load out.
            validate(app).map_err(AppStoreError::Conflict)?;
        }
        self.migrate().await?;
        let d = self.dialect;
        let res = bounded(async {
            let mut tx = self.pool.begin().await?;
            let touched = match op {
                Write::Create(app) => sqlx::query(&d.sql(&format!(
                    "INSERT INTO herald_apps (id, app_key, secret, settings, updated_at) \
                         VALUES (?, ?, ?, ?, {})",
                    d.now()
                )))
                .bind(app.id.as_str())
                .bind(app.key.as_str())
                .bind(app.secret.expose())
                .bind(settings_json(app))
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Write::Delete(id) => sqlx::query(&d.sql("DELETE FROM herald_apps WHERE id = ?"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
            };
            if touched == 0 {
                return Ok(false);
            }
            announce(&mut tx, d).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await;
        match res {
            Ok(true) => Ok(()),
            Ok(false) => Err(AppStoreError::NotFound(op.id().to_owned())),
            Err(AppStoreError::Conflict(_)) => Err(self.conflict(op).await),
            Err(err) => Err(err),
        }
    }

    /// [`AppStore::update`]: the row is read `FOR UPDATE`, so a concurrent change of the same
    /// app waits for this transaction and then sees what it wrote.
    async fn update_app(&self, id: &str, change: AppChange) -> AppStoreResult<App> {
        self.migrate().await?;
        let d = self.dialect;
        let res = bounded(async {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(&d.sql(
                "SELECT id, app_key, secret, settings FROM herald_apps WHERE id = ? FOR UPDATE",
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(Err(AppStoreError::NotFound(id.to_owned())));
            };
            let current = match decode_row(&row) {
                Ok(decoded) => decoded.app,
                Err(why) => {
                    return Ok(Err(AppStoreError::Invalid(format!(
                        "the stored app is not valid ({why}); fix or delete its row"
                    ))))
                }
            };
            let app = match change(current).and_then(|app| {
                validate(&app).map_err(AppStoreError::Invalid)?;
                Ok(app)
            }) {
                Ok(app) if app.id == id => app,
                Ok(_) => return Ok(Err(AppStoreError::Invalid("the id cannot change".into()))),
                Err(err) => return Ok(Err(err)),
            };
            sqlx::query(&d.sql(&format!(
                "UPDATE herald_apps SET app_key = ?, secret = ?, settings = ?, updated_at = {} \
                 WHERE id = ?",
                d.now()
            )))
            .bind(app.key.as_str())
            .bind(app.secret.expose())
            .bind(settings_json(&app))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            announce(&mut tx, d).await?;
            tx.commit().await?;
            Ok(Ok(app))
        })
        .await;
        match res {
            Ok(done) => done,
            Err(AppStoreError::Conflict(_)) => Err(AppStoreError::Conflict(
                "the key is another app's".to_owned(),
            )),
            Err(err) => Err(err),
        }
    }

    /// Names what a unique violation was about: the id or the key.
    async fn conflict(&self, op: Write<'_>) -> AppStoreError {
        let (id, key) = match op {
            Write::Create(app) => (app.id.as_str(), app.key.as_str()),
            Write::Delete(id) => (id, ""),
        };
        let id_taken = matches!(op, Write::Create(_))
            && bounded(async {
                sqlx::query(&self.dialect.sql("SELECT id FROM herald_apps WHERE id = ?"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
            })
            .await
            .is_ok_and(|row| row.is_some());
        if id_taken {
            AppStoreError::Conflict(format!("an app with id {id:?} exists"))
        } else {
            AppStoreError::Conflict(format!("the key {key:?} is another app's"))
        }
    }

    async fn version(&self) -> AppStoreResult<i64> {
        self.migrate().await?;
        bounded(async {
            sqlx::query_scalar::<Any, i64>("SELECT version FROM herald_apps_version WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
        })
        .await
        .map(|v| v.unwrap_or(0))
    }

    async fn wait_changed(&self) -> AppStoreResult<()> {
        loop {
            let version = match self.version().await {
                Ok(version) => version,
                Err(err) => {
                    *self.seen_version.lock() = None;
                    return Err(err);
                }
            };
            {
                let mut seen = self.seen_version.lock();
                if *seen != Some(version) {
                    *seen = Some(version);
                    return Ok(());
                }
            }
            self.notified_or_tick().await;
        }
    }

    /// Returns on a Postgres notification (or a lost `LISTEN` connection, which may have lost
    /// one) or after the poll interval, whichever comes first.
    async fn notified_or_tick(&self) {
        let Some(listen_pool) = &self.listen_pool else {
            tokio::time::sleep(self.poll_interval).await;
            return;
        };
        let mut listener = self.listener.lock().await;
        if listener.is_none() {
            let connected = tokio::time::timeout(OP_TIMEOUT, async {
                let mut l = PgListener::connect_with(listen_pool).await?;
                l.listen(dialect::NOTIFY_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            })
            .await;
            match connected {
                Ok(Ok(l)) => *listener = Some(l),
                Ok(Err(err)) => {
                    tracing::debug!(%err, "app store: LISTEN failed; polling the version");
                }
                Err(_) => tracing::debug!("app store: LISTEN timed out; polling the version"),
            }
        }
        let Some(l) = listener.as_mut() else {
            tokio::time::sleep(self.poll_interval).await;
            return;
        };
        tokio::select! {
            received = l.try_recv() => match received {
                Ok(Some(_)) => {}
                // The connection was lost: reconnect on the next call.
                Ok(None) | Err(_) => *listener = None,
            },
            () = tokio::time::sleep(self.poll_interval) => {}
        }
    }
}

#[derive(Clone, Copy)]
enum Write<'a> {
    Create(&'a App),
    Delete(&'a str),
}

/// Bumps the version row and, on Postgres, sends the `NOTIFY`: inside the change's transaction,
/// so other nodes hear of a change only once it is committed.
async fn announce(
    tx: &mut sqlx::Transaction<'_, Any>,
    d: dialect::Dialect,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE herald_apps_version SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    if let Some(notify) = d.notify() {
        sqlx::query(&notify).execute(&mut **tx).await?;
    }
    Ok(())
}

impl Write<'_> {
    fn id(&self) -> &str {
        match self {
            Write::Create(app) => &app.id,
            Write::Delete(id) => id,
        }
    }
}

/// A text column: a MySQL `TEXT` column reaches the `Any` driver as a blob.
fn text(row: &AnyRow, index: usize) -> Result<String, String> {
    if let Ok(text) = row.try_get_unchecked::<String, _>(index) {
        return Ok(text);
    }
    let bytes = row
        .try_get_unchecked::<Vec<u8>, _>(index)
        .map_err(|err| format!("column {index}: {err}"))?;
    String::from_utf8(bytes).map_err(|_| format!("column {index} is not UTF-8"))
}

fn decode_row(row: &AnyRow) -> Result<codec::Decoded, String> {
    codec::decode(text(row, 0)?, text(row, 1)?, text(row, 2)?, &text(row, 3)?)
}

/// Runs a database operation within [`OP_TIMEOUT`], mapping its error.
async fn bounded<T>(
    op: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> AppStoreResult<T> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(res) => res.map_err(map_error),
        Err(_) => Err(AppStoreError::Unavailable(format!(
            "no answer within {} s",
            OP_TIMEOUT.as_secs()
        ))),
    }
}

/// A unique violation is a conflict (the caller names it); anything else means the database
/// cannot serve us now.
fn map_error(err: sqlx::Error) -> AppStoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            AppStoreError::Conflict(db.message().to_owned())
        }
        _ => AppStoreError::Unavailable(err.to_string()),
    }
}

impl AppStore for SqlAppStore {
    fn kind(&self) -> &'static str {
        self.dialect.kind()
    }

    fn read_only(&self) -> bool {
        false
    }

    fn load(&self) -> AppStoreFuture<'_, Vec<App>> {
        Box::pin(self.load_apps())
    }

    fn create(&self, app: App) -> AppStoreFuture<'_, ()> {
        Box::pin(async move { self.write(Write::Create(&app)).await })
    }

    fn update<'a>(&'a self, id: &'a str, change: AppChange) -> AppStoreFuture<'a, App> {
        Box::pin(self.update_app(id, change))
    }

    fn delete<'a>(&'a self, id: &'a str) -> AppStoreFuture<'a, ()> {
        Box::pin(async move { self.write(Write::Delete(id)).await })
    }

    fn changed(&self) -> AppStoreFuture<'_, ()> {
        Box::pin(self.wait_changed())
    }

    fn invalid_rows(&self) -> u64 {
        SqlAppStore::invalid_rows(self)
    }
}

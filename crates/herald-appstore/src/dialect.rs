//! The few statements that differ between Postgres and MySQL/MariaDB. Everything else (the
//! queries, the transactions, decoding) is one code path over sqlx's `Any` driver.
//!
//! Statements are written once with `?` placeholders; Postgres's are renumbered to `$1, $2...`.

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

/// The schema versions herald knows, each a list of idempotent statements (so a migration
/// that was cut short can run again). Never edit a released version: append a new one.
pub const SCHEMA_VERSION: i64 = 1;

/// The Postgres channel a write notifies.
pub const NOTIFY_CHANNEL: &str = "herald_apps";

impl Dialect {
    /// From a database URL's scheme; `None` for anything else.
    pub fn of_url(url: &str) -> Option<Dialect> {
        let scheme = url.split_once("://")?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            _ => None,
        }
    }

    /// `"postgres"` or `"mysql"` (MariaDB included), as [`herald_core::AppStore::kind`].
    pub fn kind(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }

    /// A statement written with `?` placeholders, in this dialect.
    pub fn sql(self, statement: &str) -> String {
        match self {
            Dialect::MySql => statement.to_owned(),
            Dialect::Postgres => {
                let mut out = String::with_capacity(statement.len() + 8);
                let mut n = 0;
                for c in statement.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// Creates the schema-version table (before the migration lock is taken on MySQL, inside
    /// the migration's transaction on Postgres).
    pub fn create_schema_table(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "CREATE TABLE IF NOT EXISTS herald_schema (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)"
            }
            Dialect::MySql => {
                "CREATE TABLE IF NOT EXISTS herald_schema (id INTEGER NOT NULL PRIMARY KEY, version BIGINT NOT NULL) ENGINE=InnoDB"
            }
        }
    }

    /// Adds a row unless its primary key exists (the statement's tail is the column list and
    /// values).
    pub fn insert_ignore(self, rest: &str) -> String {
        match self {
            Dialect::Postgres => self.sql(&format!("INSERT INTO {rest} ON CONFLICT DO NOTHING")),
            Dialect::MySql => format!("INSERT IGNORE INTO {rest}"),
        }
    }

    /// The current time, as `updated_at` keeps it.
    pub fn now(self) -> &'static str {
        match self {
            Dialect::Postgres => "CURRENT_TIMESTAMP",
            Dialect::MySql => "CURRENT_TIMESTAMP(3)",
        }
    }

    /// The statements of schema version `version` (1-based).
    pub fn migration(self, version: i64) -> Vec<String> {
        match (version, self) {
            (1, Dialect::Postgres) => vec![
                "CREATE TABLE IF NOT EXISTS herald_apps (\
                    id VARCHAR(255) PRIMARY KEY, \
                    app_key VARCHAR(255) NOT NULL UNIQUE, \
                    secret TEXT NOT NULL, \
                    settings TEXT NOT NULL, \
                    updated_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP)"
                    .into(),
                "CREATE TABLE IF NOT EXISTS herald_apps_version (\
                    id INTEGER PRIMARY KEY, version BIGINT NOT NULL)"
                    .into(),
                self.insert_ignore("herald_apps_version (id, version) VALUES (1, 0)"),
            ],
            (1, Dialect::MySql) => vec![
                // A binary collation: ids and keys compare exactly, as everywhere else in herald.
                "CREATE TABLE IF NOT EXISTS herald_apps (\
                    id VARCHAR(255) NOT NULL PRIMARY KEY, \
                    app_key VARCHAR(255) NOT NULL UNIQUE, \
                    secret TEXT NOT NULL, \
                    settings MEDIUMTEXT NOT NULL, \
                    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)) \
                    ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
                    .into(),
                "CREATE TABLE IF NOT EXISTS herald_apps_version (\
                    id INTEGER NOT NULL PRIMARY KEY, version BIGINT NOT NULL) ENGINE=InnoDB"
                    .into(),
                self.insert_ignore("herald_apps_version (id, version) VALUES (1, 0)"),
            ],
            _ => Vec::new(),
        }
    }

    /// Statements that take the migration lock: held until [`Dialect::unlock`] (MySQL, a
    /// session lock) or the transaction's end (Postgres).
    pub fn lock(self) -> &'static str {
        match self {
            // `pg_advisory_xact_lock` returns void, which the Any driver cannot decode: wrap it.
            Dialect::Postgres => "SELECT 1 FROM (SELECT pg_advisory_xact_lock(7307480118)) AS l",
            Dialect::MySql => "SELECT GET_LOCK('herald_schema', 30)",
        }
    }

    pub fn unlock(self) -> Option<&'static str> {
        match self {
            Dialect::Postgres => None,
            Dialect::MySql => Some("SELECT RELEASE_LOCK('herald_schema')"),
        }
    }

    /// What a write runs before its commit so that other nodes hear of it at once.
    pub fn notify(self) -> Option<String> {
        match self {
            Dialect::Postgres => Some(format!("NOTIFY {NOTIFY_CHANNEL}")),
            Dialect::MySql => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_dialect() {
        assert_eq!(
            Dialect::of_url("postgres://u@h/db"),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            Dialect::of_url("PostgreSQL://h/db"),
            Some(Dialect::Postgres)
        );
        assert_eq!(Dialect::of_url("mysql://h/db"), Some(Dialect::MySql));
        assert_eq!(Dialect::of_url("mariadb://h/db"), Some(Dialect::MySql));
        assert_eq!(Dialect::of_url("sqlite://x.db"), None);
        assert_eq!(Dialect::of_url("nonsense"), None);
    }

    #[test]
    fn postgres_placeholders_are_numbered() {
        assert_eq!(
            Dialect::Postgres.sql("UPDATE t SET a = ?, b = ? WHERE id = ?"),
            "UPDATE t SET a = $1, b = $2 WHERE id = $3"
        );
        assert_eq!(Dialect::MySql.sql("a = ?"), "a = ?");
    }
}

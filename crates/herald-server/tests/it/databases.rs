//! Real Postgres and MariaDB servers for the app store tests, one private server per test: a
//! data directory in a temp dir, a free port on 127.0.0.1, started as `nobody` when the tests
//! run as root (Postgres refuses root), ready once a connection answers `SELECT 1`, stopped
//! (and its directory removed) on drop. The binaries come from Debian's `postgresql` and
//! `mariadb-server` packages (`scripts/test` installs them).
//!
//! Each kind's freshly initialised data directory is made once (kept in the temp dir across
//! runs, one per server binary) and copied for each server (initdb and mariadb-install-db take
//! seconds).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::Connection;

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    MariaDb,
}

/// One running (or stopped) database server.
pub struct Database {
    pub kind: Kind,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Database {
    pub async fn start(kind: Kind) -> Database {
        let template = tokio::task::spawn_blocking(move || template(kind))
            .await
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "herald-db-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(dir.join("data"))
            .status()
            .unwrap();
        assert!(status.success(), "copying the template data directory");
        chown_for_db(&dir);
        let mut db = Database {
            kind,
            dir,
            port: free_port(),
            child: None,
        };
        db.resume().await;
        if kind == Kind::MariaDb {
            let mut conn = sqlx::MySqlConnection::connect(&db.server_url())
                .await
                .unwrap();
            sqlx::query("CREATE DATABASE herald")
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
        db
    }

    /// The URL herald is given.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Postgres => format!("postgres://herald@127.0.0.1:{}/postgres", self.port),
            Kind::MariaDb => format!("mysql://root@127.0.0.1:{}/herald", self.port),
        }
    }

    /// The URL of the server itself (MariaDB: without a database).
    fn server_url(&self) -> String {
        match self.kind {
            Kind::Postgres => self.url(),
            Kind::MariaDb => format!("mysql://root@127.0.0.1:{}", self.port),
        }
    }

    /// Stops the server (a clean, fast shutdown) and waits for it to exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Postgres: SIGINT is its fast shutdown; MariaDB shuts down on SIGTERM.
        let signal = match self.kind {
            Kind::Postgres => "-INT",
            Kind::MariaDb => "-TERM",
        };
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        tokio::task::spawn_blocking(move || {
            let _ = child.wait();
        })
        .await
        .unwrap();
    }

    /// Starts the server again on the same port and data, and waits until it answers.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let data = self.dir.join("data");
        let port = self.port.to_string();
        let mut command = match self.kind {
            Kind::Postgres => {
                let mut c = as_db_user(&binary(Kind::Postgres, "postgres"));
                c.arg("-D")
                    .arg(&data)
                    .args(["-p", &port, "-k"])
                    .arg(&self.dir)
                    .args([
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=50",
                    ]);
                c
            }
            Kind::MariaDb => {
                let mut c = as_db_user(&binary(Kind::MariaDb, "mariadbd"));
                c.arg("--no-defaults")
                    .arg(format!("--datadir={}", data.display()))
                    .arg(format!("--port={port}"))
                    .arg("--bind-address=127.0.0.1")
                    .arg(format!(
                        "--socket={}",
                        self.dir.join("mysqld.sock").display()
                    ))
                    .arg(format!(
                        "--pid-file={}",
                        self.dir.join("mysqld.pid").display()
                    ))
                    .arg(format!(
                        "--log-error={}",
                        self.dir.join("error.log").display()
                    ))
                    .args([
                        "--skip-grant-tables",
                        "--skip-name-resolve",
                        "--innodb-buffer-pool-size=16M",
                        "--innodb-log-file-size=8M",
                        "--innodb-flush-log-at-trx-commit=0",
                        "--skip-log-bin",
                    ]);
                c
            }
        };
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let url = self.server_url();
        loop {
            let answered = tokio::time::timeout(Duration::from_secs(2), async {
                let mut conn = sqlx::AnyConnection::connect(&url).await?;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                conn.close().await
            })
            .await;
            if matches!(answered, Ok(Ok(()))) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "{:?} exited with {status} while starting: {}",
                    self.kind,
                    self.logs()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?} did not answer within {START_TIMEOUT:?}: {}",
                self.kind,
                self.logs()
            );
            // Polling a server that is starting: the next attempt, not a synchronisation.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["server.log", "error.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.join(name)) {
                out.push_str(&text);
            }
        }
        out
    }

    /// Runs SQL as an operator would (a connection of its own).
    pub async fn execute(&self, sql: &str) {
        let mut conn = sqlx::AnyConnection::connect(&self.url()).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    /// One integer an SQL query returns.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let mut conn = sqlx::AnyConnection::connect(&self.url()).await.unwrap();
        let value: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        value
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of a freshly initialised server of `kind`, made once per test process.
fn template(kind: Kind) -> PathBuf {
    static TEMPLATES: Mutex<Vec<(Kind, PathBuf)>> = Mutex::new(Vec::new());
    let mut templates = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir)) = templates.iter().find(|(k, _)| *k == kind) {
        return dir.clone();
    }
    sqlx::any::install_default_drivers();
    // Kept across test runs (one per server binary): made in a directory of this process's
    // and renamed into place, so concurrent runs never see half of one.
    let init = match kind {
        Kind::Postgres => binary(kind, "initdb"),
        Kind::MariaDb => binary(kind, "mariadb-install-db"),
    };
    let tag: u32 = init.to_string_lossy().bytes().fold(2_166_136_261, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    let kept = std::env::temp_dir().join(format!("herald-db-template-{kind:?}-{tag:08x}"));
    if kept.join("data").is_dir() {
        let data = kept.join("data");
        templates.push((kind, data.clone()));
        return data;
    }
    let root = std::env::temp_dir().join(format!(
        "herald-db-template-{kind:?}-{tag:08x}.{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    chown_for_db(&root);
    let data = root.join("data");
    let output = match kind {
        Kind::Postgres => as_db_user(&init)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "herald",
                "--auth=trust",
                "--no-sync",
                "--locale=C",
                "-E",
                "UTF8",
            ])
            .output()
            .unwrap(),
        Kind::MariaDb => as_db_user(&init)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
                "--innodb-log-file-size=8M",
            ])
            .output()
            .unwrap(),
    };
    assert!(
        output.status.success(),
        "initialising {kind:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if std::fs::rename(&root, &kept).is_err() {
        // Another run put its template in place first: use that one.
        let _ = std::fs::remove_dir_all(&root);
    }
    let data = kept.join("data");
    templates.push((kind, data.clone()));
    data
}

/// A server's binary: on the PATH, or where Debian puts it (`/usr/lib/postgresql/*/bin`,
/// `/usr/sbin`).
fn binary(kind: Kind, name: &str) -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if kind == Kind::Postgres {
        if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut dirs: Vec<PathBuf> = versions.flatten().map(|e| e.path()).collect();
            dirs.sort();
            candidates.extend(dirs.into_iter().rev().map(|d| d.join("bin").join(name)));
        }
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        candidates.push(Path::new(dir).join(name));
    }
    candidates.extend([
        Path::new("/usr/sbin").join(name),
        Path::new("/usr/bin").join(name),
    ]);
    if kind == Kind::MariaDb && name == "mariadbd" {
        candidates.push("/usr/sbin/mysqld".into());
    }
    if kind == Kind::MariaDb && name == "mariadb-install-db" {
        candidates.push("/usr/bin/mysql_install_db".into());
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: install Debian's postgresql and mariadb-server (scripts/test does)")
        })
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A command run as `nobody` when the tests run as root (`setpriv` execs the server itself, so
/// its pid is the server's).
fn as_db_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(program);
        c.env("HOME", "/tmp").env("LC_ALL", "C");
        c
    } else {
        let mut c = Command::new(program);
        c.env("LC_ALL", "C");
        c
    }
}

/// Gives `dir` to `nobody` when the tests run as root.
fn chown_for_db(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

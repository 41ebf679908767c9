//! A real MariaDB server for ratings v2's tests: Debian's `mariadbd` in a fresh data directory
//! under the temporary one, on a free loopback port, seeded from `ratings/mysql/ratings-init.sql`
//! with root's password set to upstream's `password`. The server is killed when the value is
//! dropped (or [`MariaDb::stop`]ped, and can then be [`MariaDb::start`]ed again on the same
//! port and data).
//!
//! `mariadbd` is looked for in `$MARIADBD` when set (a path that does not exist skips the
//! tests, to check that path), else on `PATH`, else at `/usr/sbin/mariadbd`; without it the
//! tests skip on a developer's machine and fail in CI (`test_support::required`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use ratings::db::MysqlConfig;
use test_support::Killed;
use tokio::time::Instant;

/// Upstream's root password (`MYSQL_ROOT_PASSWORD` in its manifests).
pub(crate) const ROOT_PASSWORD: &str = "password";
/// The schema and seed rows, as kept in the repo.
pub(crate) const INIT_SQL: &str = include_str!("../../mysql/ratings-init.sql");
/// How long the server may take to accept connections (crash recovery included).
const READY_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct MariaDb {
    mariadbd: PathBuf,
    dir: PathBuf,
    port: u16,
    password: &'static str,
    server: Option<Killed>,
}

impl MariaDb {
    /// A seeded server, ready for connections; `None` when MariaDB is not installed (outside
    /// CI: CI fails instead).
    pub(crate) async fn seeded() -> Option<Self> {
        let (mariadbd, install_db) = test_support::required(
            find(),
            "MariaDB (mariadbd, mariadb-install-db, my_print_defaults)",
            "apt-get install mariadb-server-core mariadb-client-core",
        )?;
        let dir = test_support::tempdir("mariadb");
        let out = Command::new(&install_db)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--user={}", user()))
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut db = Self {
            mariadbd,
            dir,
            port: test_support::free_port(),
            // mariadb-install-db leaves root without a password.
            password: "",
            server: None,
        };
        db.start().await;
        db.execute(&format!(
            "ALTER USER root@localhost IDENTIFIED BY '{ROOT_PASSWORD}';\
             ALTER USER root@'127.0.0.1' IDENTIFIED BY '{ROOT_PASSWORD}';\
             ALTER USER root@'::1' IDENTIFIED BY '{ROOT_PASSWORD}'"
        ))
        .await;
        db.password = ROOT_PASSWORD;
        db.execute(INIT_SQL).await;
        Some(db)
    }

    /// Starts the server (again) and waits until it takes connections.
    pub(crate) async fn start(&mut self) {
        assert!(self.server.is_none(), "already running");
        let child = Command::new(&self.mariadbd)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!(
                "--socket={}",
                self.dir.join("mariadbd.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", self.log().display()))
            .arg(format!("--port={}", self.port))
            .args(["--bind-address=127.0.0.1", "--skip-networking=0"])
            .arg(format!("--user={}", user()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let mut server = Killed(child);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = server.0.try_wait().unwrap() {
                panic!("mariadbd exited ({status}):\n{}", self.log_tail());
            }
            match Conn::new(self.opts()).await {
                Ok(conn) => {
                    conn.disconnect().await.unwrap();
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "mariadbd not ready within {READY_WITHIN:?}: {e}\n{}",
                    self.log_tail()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.server = Some(server);
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    pub(crate) fn stop(&mut self) {
        self.server.take().expect("running");
    }

    /// How ratings reaches this server: root over TCP to 127.0.0.1.
    pub(crate) fn config(&self) -> MysqlConfig {
        MysqlConfig {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            user: "root".to_owned(),
            password: self.password.to_owned(),
        }
    }

    /// A connection as root, in no database.
    pub(crate) async fn connect(&self) -> Conn {
        Conn::new(self.opts()).await.expect("connect to mariadbd")
    }

    /// Runs `sql` (one or more statements) as root.
    pub(crate) async fn execute(&self, sql: &str) {
        let mut conn = self.connect().await;
        conn.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.disconnect().await.unwrap();
    }

    fn opts(&self) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some("root"))
            .pass(Some(self.password))
            .prefer_socket(false)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.server.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `mariadbd` and `mariadb-install-db`, when installed.
fn find() -> Option<(PathBuf, PathBuf)> {
    let mariadbd = match std::env::var_os("MARIADBD") {
        Some(path) => Some(PathBuf::from(path)),
        None => on_path("mariadbd").or_else(|| Some(PathBuf::from("/usr/sbin/mariadbd"))),
    }
    .filter(|p| p.is_file())?;
    let install_db = on_path("mariadb-install-db")
        .or_else(|| Some(PathBuf::from("/usr/bin/mariadb-install-db")))
        .filter(|p| p.is_file())?;
    // mariadb-install-db reads the server's defaults with it (mariadb-client-core).
    on_path("my_print_defaults")
        .or_else(|| Some(PathBuf::from("/usr/bin/my_print_defaults")))
        .filter(|p| p.is_file())?;
    Some((mariadbd, install_db))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| Path::is_file(p))
}

/// The user mariadbd runs as: this process's (it refuses root unless told so).
fn user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

//! A throwaway MariaDB server for the MySQL tests (cargo feature `mysql`):
//! `mariadb-install-db` into a temporary data directory, then `mariadbd` on
//! 127.0.0.1 and a free port (never the machine's own server on 3306), with
//! a small InnoDB, stopped by pid when dropped.
//!
//! [`MariaDb::shared`] is the test binary's one server: started by the
//! first test that asks, stopped when the last one holding it is done.
//! Each test works in a database of its own ([`TestDb`], dropped with the
//! test), as the user [`USER`] with the password [`PASSWORD`], so tests run
//! in parallel. A test that stops the server starts a private one
//! ([`MariaDb::start`]). A watchdog process kills the server should the test
//! process die without dropping it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};

use super::{Run, TestEnv, euid, free_port, run_cmd};

/// The MySQL user frameflush logs in as, and its password.
pub const USER: &str = "frameflush";
pub const PASSWORD: &str = "db-pw-Xq4v9";
/// Meshlium firmware 3.1.3's table, exactly as its dumps show it.
pub const MESHLIUM_313: &str = "CREATE TABLE `sensorParser` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `id_wasp` varchar(10) DEFAULT NULL,
  `id_secret` text,
  `frame_type` int(11) DEFAULT NULL,
  `frame_number` int(11) DEFAULT NULL,
  `sensor` varchar(10) DEFAULT NULL,
  `value` text,
  `timestamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
  `sync` int(1) NOT NULL DEFAULT '0',
  `raw` varchar(100) DEFAULT 'noraw',
  PRIMARY KEY (`id`)
) ENGINE=MyISAM DEFAULT CHARSET=latin1";
/// The newer firmware's table: utf8 text columns, `parser_type`, an index
/// on the time; `{engine}` to fill in.
pub const MESHLIUM_NEWER: &str = "CREATE TABLE `sensorParser` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `id_wasp` text,
  `id_secret` text,
  `frame_type` int(11) DEFAULT NULL,
  `frame_number` int(11) DEFAULT NULL,
  `sensor` text,
  `value` text,
  `timestamp` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
  `sync` int(1) NOT NULL DEFAULT '0',
  `raw` text,
  `parser_type` tinyint(3) DEFAULT '0',
  PRIMARY KEY (`id`),
  KEY `time` (`timestamp`)
) ENGINE={engine} DEFAULT CHARSET=utf8";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn bin(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run scripts/test, which installs mariadb-server")
        })
}

/// One mariadbd of the tests' own.
pub struct MariaDb {
    pub port: u16,
    pub socket: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    watchdog: Option<Child>,
}

impl MariaDb {
    /// The test binary's shared server.
    pub fn shared() -> Arc<MariaDb> {
        static SHARED: Mutex<Weak<MariaDb>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(MariaDb::start("shared"));
        *shared = Arc::downgrade(&server);
        server
    }

    /// A server of the caller's own, in a fresh data directory.
    pub fn start(name: &str) -> MariaDb {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir()
            .join("frameflush-tests")
            .join(format!("mariadb-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(bin("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .args(if euid() == 0 {
                &["--user=root"][..]
            } else {
                &[]
            })
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = MariaDb {
            port: 0,
            socket: dir.join("mysqld.sock"),
            dir,
            child: None,
            watchdog: None,
        };
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                server.setup();
                return server;
            }
        }
        panic!(
            "could not start mariadbd; see {}",
            server.dir.join("error.log").display()
        );
    }

    fn spawn(&mut self) -> bool {
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = Command::new(bin("mariadbd"));
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--port={}", self.port))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mysqld.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .arg(format!("--tmpdir={}", self.dir.display()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-log-file-size=8M",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=2",
                "--max-connections=300",
                "--key-buffer-size=16M",
            ]);
        if euid() == 0 {
            cmd.arg("--user=root");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if self.socket.exists() && self.try_admin().is_some() {
                // Kills the server if this test process dies without
                // dropping it; stopped itself on drop.
                let script = "while kill -0 \"$0\" 2>/dev/null && kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill -9 \"$1\" 2>/dev/null";
                self.watchdog = Command::new("sh")
                    .args(["-c", script])
                    .arg(std::process::id().to_string())
                    .arg(child.id().to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok();
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn setup(&self) {
        let mut c = self.admin();
        for host in ["127.0.0.1", "localhost"] {
            c.query_drop(format!(
                "CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED BY '{PASSWORD}'"
            ))
            .unwrap();
            c.query_drop(format!("GRANT ALL ON *.* TO '{USER}'@'{host}'"))
                .unwrap();
        }
    }

    fn try_admin(&self) -> Option<Conn> {
        let opts = OptsBuilder::new()
            .user(Some("root"))
            .socket(Some(self.socket.display().to_string()))
            .prefer_socket(true);
        Conn::new(opts).ok()
    }

    /// A root connection through the socket.
    pub fn admin(&self) -> Conn {
        self.try_admin()
            .expect("root connection to the test's MariaDB")
    }

    /// Shuts the server down (SIGTERM, a clean shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("FRAMEFLUSH_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A database of one test on a server, dropped with it.
pub struct TestDb {
    pub name: String,
    pub server: Arc<MariaDb>,
}

impl TestDb {
    /// A new empty database on the shared server.
    pub fn new(test: &str) -> TestDb {
        TestDb::on(MariaDb::shared(), test)
    }

    pub fn on(server: Arc<MariaDb>, test: &str) -> TestDb {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}_{}", std::process::id(), test.replace('-', "_"));
        let name: String = name.chars().take(64).collect();
        server
            .admin()
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .unwrap();
        TestDb { name, server }
    }

    /// A user of the test's own on 127.0.0.1 (`name` and this process's
    /// id), with the harness's password and `limits` after it (`WITH …`,
    /// or empty), granted `grant` on this database's `on` (`sensorParser`,
    /// `*`). Returns its `--db` URL and its account, for more GRANTs.
    pub fn user(&self, name: &str, limits: &str, grant: &str, on: &str) -> (String, String) {
        let user = format!("{name}{}", std::process::id());
        let account = format!("'{user}'@'127.0.0.1'");
        let mut admin = self.server.admin();
        admin
            .query_drop(format!(
                "CREATE USER {account} IDENTIFIED BY '{PASSWORD}' {limits}"
            ))
            .unwrap();
        admin
            .query_drop(format!(
                "GRANT {grant} ON `{}`.{on} TO {account}",
                self.name
            ))
            .unwrap();
        let url = format!(
            "mysql://{user}@127.0.0.1:{}/{}",
            self.server.port, self.name
        );
        (url, account)
    }

    /// What frameflush's `--db` takes (over TCP).
    pub fn url(&self) -> String {
        format!(
            "mysql://{USER}@127.0.0.1:{}/{}",
            self.server.port, self.name
        )
    }

    /// A connection to the database as root, in UTC.
    pub fn conn(&self) -> Conn {
        let opts = OptsBuilder::new()
            .user(Some("root"))
            .socket(Some(self.server.socket.display().to_string()))
            .db_name(Some(self.name.clone()));
        let mut c = Conn::new(opts).unwrap();
        c.query_drop("SET time_zone = '+00:00'").unwrap();
        c
    }

    /// Creates `sensorParser` with this statement.
    pub fn create(&self, create_table: &str) -> Conn {
        let mut c = self.conn();
        c.query_drop(create_table).unwrap();
        c
    }

    /// Ids and sync values, by id.
    pub fn sync_bits(&self) -> Vec<(i64, i64)> {
        self.conn()
            .query("SELECT id, sync FROM sensorParser ORDER BY id")
            .unwrap()
    }

    /// Ids of the rows whose `mask` bit is set.
    pub fn marked_ids(&self, mask: i64) -> std::collections::BTreeSet<i64> {
        self.sync_bits()
            .into_iter()
            .filter(|(_, s)| s & mask != 0)
            .map(|(id, _)| id)
            .collect()
    }

    /// Sets frameflush's state times of this mask `seconds` into the past,
    /// as if that much time had gone by since they were written: the
    /// high-water mark's candidate and the last full scan.
    pub fn age_state(&self, seconds: i64) {
        let mut c = self.conn();
        c.query_drop(format!(
            "UPDATE frameflush_state SET value = CONCAT(SUBSTRING_INDEX(value, ' ', 1), ' ', \
             CAST(SUBSTRING_INDEX(value, ' ', -1) AS SIGNED) - {seconds}) WHERE `key` LIKE 'hwm-candidate:%'"
        ))
        .unwrap();
        c.query_drop(format!(
            "UPDATE frameflush_state SET value = CAST(value AS SIGNED) - {seconds} WHERE `key` LIKE 'full-scan:%'"
        ))
        .unwrap();
    }

    /// A value of frameflush's state.
    pub fn state(&self, key: &str) -> Option<String> {
        let v: Option<Vec<u8>> = self
            .conn()
            .exec_first("SELECT value FROM frameflush_state WHERE `key` = ?", (key,))
            .unwrap();
        v.map(|b| String::from_utf8(b).unwrap())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.try_admin() {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

/// Inserts `n` realistic rows with the given sync value, in multi-row
/// statements (like the SQLite harness's rows: node_00..node_04, sensors
/// TC/HUM/PRES/BAT).
pub fn insert_rows<Q: Queryable>(c: &mut Q, n: usize, sync: i64) {
    let sensors = ["TC", "HUM", "PRES", "BAT"];
    let mut values = Vec::new();
    for i in 0..n {
        values.push(format!(
            "('node_{:02}', '400577471', 134, {}, '{}', '{}.{:02}', '2026-11-24 10:00:00', {sync}, 'noraw')",
            i % 5,
            (i / 4) % 256,
            sensors[i % 4],
            20 + i % 10,
            i % 100
        ));
        if values.len() == 1000 || i + 1 == n {
            c.query_drop(format!(
                "INSERT INTO sensorParser (id_wasp, id_secret, frame_type, frame_number, sensor, value, `timestamp`, sync, raw) VALUES {}",
                values.join(",")
            ))
            .unwrap();
            values.clear();
        }
    }
}

/// Runs the binary with the database password in its environment.
pub fn run(env: &TestEnv, args: &[&str]) -> Run {
    let mut cmd = env.cmd(args);
    cmd.env("FRAMEFLUSH_DB_PASSWORD", PASSWORD);
    run_cmd(cmd, Duration::from_secs(180))
}

/// The command, with the database password in its environment.
pub fn cmd(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = env.cmd(args);
    cmd.env("FRAMEFLUSH_DB_PASSWORD", PASSWORD);
    cmd
}

/// The server's global handler counters of reads (rows read through an
/// index or by a table scan), to tell a range scan from a table scan.
pub fn rows_read(server: &MariaDb) -> u64 {
    let rows: Vec<(String, String)> = server
        .admin()
        .query("SHOW GLOBAL STATUS LIKE 'Handler_read%'")
        .unwrap();
    rows.iter()
        .filter(|(k, _)| k != "Handler_read_key")
        .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
        .sum()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

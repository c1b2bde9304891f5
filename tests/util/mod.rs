//! The shared harness of the integration tests: a temporary directory with
//! a seeded SQLite database, a mosquitto of the test's own on a free port of
//! 127.0.0.1, a subscriber connected straight to it, and the built binary
//! run with a cleared environment and a time limit; with the cargo feature
//! `mysql`, a MariaDB server of the tests' own ([`mariadb`]).
//!
//! Everything is bounded: every wait has a deadline, every process is killed
//! when its owner is dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "mysql")]
pub mod mariadb;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

pub mod accounting;
pub mod ejabberd;
pub mod fake_mqtt;
pub mod slow_fsync;

/// The binary under test: `FRAMEFLUSH_BIN` when set (scripts/test-package
/// runs the suite against the packaged binary), else the one cargo built.
pub const BIN: &Bin = &Bin;

pub struct Bin;

impl std::ops::Deref for Bin {
    type Target = str;
    fn deref(&self) -> &str {
        static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PATH.get_or_init(|| {
            std::env::var("FRAMEFLUSH_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_frameflush").to_string())
        })
    }
}

impl AsRef<std::ffi::OsStr> for Bin {
    fn as_ref(&self) -> &std::ffi::OsStr {
        std::ffi::OsStr::new(&**self)
    }
}

impl AsRef<Path> for Bin {
    fn as_ref(&self) -> &Path {
        Path::new(&**self)
    }
}

impl std::fmt::Display for Bin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// Meshlium's table, as the producer (not frameflush) creates it.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sensorParser (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  id_wasp      TEXT NOT NULL,
  id_secret    TEXT,
  frame_type   INTEGER,
  frame_number INTEGER,
  sensor       TEXT NOT NULL,
  value        TEXT,
  timestamp    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
  sync         INTEGER NOT NULL DEFAULT 0,
  raw          TEXT,
  parser_type  INTEGER NOT NULL DEFAULT 0)";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory for one test, removed on drop (kept when the
/// environment variable FRAMEFLUSH_KEEP_TEST_DIRS is set).
pub struct TestEnv {
    pub dir: PathBuf,
}

impl TestEnv {
    pub fn new(name: &str) -> TestEnv {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir()
            .join("frameflush-tests")
            .join(format!("{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestEnv { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The default database path of the test.
    pub fn db(&self) -> PathBuf {
        self.path("sensors.db")
    }

    pub fn db_arg(&self) -> String {
        self.db().display().to_string()
    }

    /// Creates the producer's table (no frameflush index: like a Meshlium
    /// export) and returns a connection to it.
    pub fn create_db(&self) -> Connection {
        let c = Connection::open(self.db()).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    /// Creates the table and inserts `n` rows: node_00..node_04, sensors
    /// TC/HUM/PRES/BAT, frame numbers 0..255, sync 0.
    pub fn seed(&self, n: usize) -> Connection {
        let mut c = self.create_db();
        insert_rows(&mut c, n, 0);
        c
    }

    /// The binary with a cleared environment, run in the test directory.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(with_protocol(args))
            .env_clear()
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the binary to its end (at most 120 s).
    pub fn run(&self, args: &[&str]) -> Run {
        run_cmd(self.cmd(args), Duration::from_secs(120))
    }

    /// The binary run as an unprivileged user: as itself when the tests do
    /// not run as root; as root, as nobody (uid 65534, through `setpriv`),
    /// because root writes any file whatever its mode. The test directory
    /// and its parents up to the temp dir are made traversable.
    pub fn cmd_unprivileged<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        use std::os::unix::fs::PermissionsExt as _;
        if euid() != 0 {
            let mut cmd = Command::new(BIN);
            cmd.args(with_protocol(args))
                .env_clear()
                .current_dir(&self.dir)
                .stdin(Stdio::null());
            return cmd;
        }
        let mut dir = Some(self.dir.as_path());
        while let Some(d) = dir.filter(|d| *d != std::env::temp_dir()) {
            let mode = std::fs::metadata(d).unwrap().permissions().mode();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
            dir = d.parent();
        }
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(BIN)
            .args(with_protocol(args))
            .env_clear()
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        cmd
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::env::var_os("FRAMEFLUSH_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The arguments, with `-V VERSION` added to a `flush` that chose no MQTT
/// version when the tests run with `FRAMEFLUSH_TEST_PROTOCOL=VERSION`:
/// `scripts/test` runs the suite once more so, to show that everything
/// holds under MQTT 3.1.1 as under the default (`auto`, which is MQTT 5
/// against mosquitto).
pub fn with_protocol<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let Some(version) = std::env::var_os("FRAMEFLUSH_TEST_PROTOCOL") else {
        return out;
    };
    let chose = out
        .iter()
        .any(|a| a == "-V" || a == "--protocol-version" || a == "--config");
    if out.first().is_some_and(|a| a == "flush") && !chose {
        out.insert(1, "-V".into());
        out.insert(2, version);
    }
    out
}

/// Inserts `n` realistic rows with the given sync value.
pub fn insert_rows(c: &mut Connection, n: usize, sync: i64) {
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO sensorParser (id_wasp, id_secret, frame_type, frame_number, sensor, value, timestamp, sync, raw)
                 VALUES (?1, '400577471', 134, ?2, ?3, ?4, '2026-11-24 10:00:00', ?5, 'noraw')",
            )
            .unwrap();
        let sensors = ["TC", "HUM", "PRES", "BAT"];
        for i in 0..n {
            st.execute(rusqlite::params![
                format!("node_{:02}", i % 5),
                ((i / 4) % 256) as i64,
                sensors[i % 4],
                format!("{}.{:02}", 20 + i % 10, i % 100),
                sync
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// What a finished run left.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// Asserts the exit status, showing everything on failure.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit status; run: {self:#?}"
        );
        self
    }

    /// Asserts that stderr is exactly one `frameflush: error: ` line
    /// containing `needle`.
    #[track_caller]
    pub fn expect_one_error_line(&self, needle: &str) -> &Run {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:#?}");
        assert!(lines[0].starts_with("frameflush: error: "), "{self:#?}");
        assert!(
            lines[0].contains(needle),
            "stderr lacks {needle:?}: {self:#?}"
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        let last = self
            .stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no JSON on stdout: {self:#?}"));
        serde_json::from_str(last).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Runs a command to its end, killing it after `limit`.
pub fn run_cmd(mut cmd: Command, limit: Duration) -> Run {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, limit);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Waits for a child with piped output, killing it after `limit`.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process ran longer than {limit:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Rows (id, sync) of the table, by id.
pub fn sync_bits(db: &Path) -> Vec<(i64, i64)> {
    let c = Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT id, sync FROM sensorParser ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Ids of the rows whose `mask` bit is set.
pub fn marked_ids(db: &Path, mask: i64) -> BTreeSet<i64> {
    sync_bits(db)
        .into_iter()
        .filter(|(_, s)| s & mask != 0)
        .map(|(id, _)| id)
        .collect()
}

/// A port on 127.0.0.1 that refuses connections, and keeps refusing them
/// while the tests run: one below the kernel's ephemeral range, where no
/// `free_port` (and so no server a test starts) ever lands. A port that
/// was free a moment ago may be taken by another test's server before it is
/// used; this one cannot.
pub fn refused_port() -> u16 {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    (1024..low.min(30000))
        .rev()
        .step_by(97)
        .find(|&p| {
            matches!(
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], p)),
                    Duration::from_secs(1)
                ),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        })
        .expect("a port below the ephemeral range that refuses connections")
}

/// A port nothing listens on right now (for a server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The mosquitto binary: $MOSQUITTO, then PATH, then the sbin directories.
pub fn mosquitto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOSQUITTO") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .expect("mosquitto is not installed: run scripts/test, which installs it")
}

/// A mosquitto of the test's own, on 127.0.0.1 and a free port.
pub struct Broker {
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// An anonymous broker.
    pub fn start(env: &TestEnv) -> Broker {
        Broker::start_with(env, "allow_anonymous true\n")
    }

    /// A broker with extra configuration lines (auth, limits).
    pub fn start_with(env: &TestEnv, extra: &str) -> Broker {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let conf = env.path(&format!("mosquitto-{n}.conf"));
        let log = env.path(&format!("mosquitto-{n}.log"));
        for _ in 0..10 {
            let port = free_port();
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\npersistence false\nmax_queued_messages 0\nuser root\n\
                     log_dest stderr\nlog_type all\nconnection_messages true\n{extra}"
                ),
            )
            .unwrap();
            let mut b = Broker {
                port,
                conf: conf.clone(),
                log: log.clone(),
                child: None,
            };
            if b.spawn() {
                return b;
            }
        }
        panic!(
            "could not start mosquitto on a free port; see {}",
            log.display()
        );
    }

    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // What this start adds to the log: the proof that this mosquitto,
        // not another process that took the port meanwhile, listens on it.
        let logged_before = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false; // e.g. the port was taken meanwhile
            }
            let running = std::fs::read(&self.log).is_ok_and(|l| {
                String::from_utf8_lossy(l.get(logged_before..).unwrap_or_default())
                    .contains(" running")
            });
            if running && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the broker dies without a word to its clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message as a subscriber received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Received {
    /// The `id` of a default JSON payload.
    pub fn id(&self) -> i64 {
        let v: serde_json::Value = serde_json::from_slice(&self.payload).unwrap();
        v["id"].as_i64().unwrap()
    }
}

/// A QoS 1 subscriber connected straight to the broker, collecting every
/// message in a thread.
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Received>>>,
    worker: Worker,
}

impl Subscriber {
    /// Subscribes to `filter` and returns once the broker acknowledged the
    /// subscription.
    pub fn connect(port: u16, filter: &str) -> Subscriber {
        Subscriber::connect_opts(port, filter, None)
    }

    fn connect_opts(port: u16, filter: &str, login: Option<(&str, &str)>) -> Subscriber {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut opts = rumqttc::MqttOptions::new(
            format!("test-sub-{}-{n}", std::process::id()),
            "127.0.0.1",
            port,
        );
        opts.set_max_packet_size(1 << 20, 1 << 20)
            .set_keep_alive(Duration::from_secs(30));
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        let (client, mut connection) = rumqttc::Client::new(opts, 10);
        client.subscribe(filter, rumqttc::QoS::AtLeastOnce).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (m, s) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _client = client;
            while !s.load(Ordering::SeqCst) {
                match connection.recv_timeout(Duration::from_millis(50)) {
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                        m.lock().unwrap().push(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
                    Ok(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                    Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the subscriber got no SUBACK within 10 s");
        Subscriber {
            messages,
            worker: Worker {
                stop,
                thread: Some(thread),
            },
        }
    }

    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages are in (at most `limit`), then a
    /// little longer for strays, and returns them all.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        while self.count() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        self.messages()
    }

    /// Ids of every JSON message received.
    pub fn ids(&self) -> Vec<i64> {
        self.messages().iter().map(Received::id).collect()
    }
}

/// A thread of the harness (a subscriber, a fake broker, a proxy) that
/// polls `stop` and is stopped and joined when its owner is dropped.
struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP server that accepts connections and never says a word: a broker
/// that hangs before CONNACK.
pub struct SilentServer {
    pub port: u16,
    worker: Worker,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok((sock, _)) = listener.accept() {
                    held.push(sock);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        SilentServer {
            port,
            worker: Worker {
                stop,
                thread: Some(thread),
            },
        }
    }
}

/// A fake broker that answers CONNECT with CONNACK and then reads and
/// discards everything: PUBLISHes that are never acknowledged.
pub struct AcklessBroker {
    pub port: u16,
    pub publishes_seen: Arc<AtomicUsize>,
    worker: Worker,
}

impl AcklessBroker {
    pub fn start() -> AcklessBroker {
        use std::io::Write as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (s, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((mut sock, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                sock.set_nonblocking(false).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                let mut acked_connect = false;
                let mut buf = [0u8; 65536];
                while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match sock.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if !acked_connect && buf[0] == 0x10 {
                                sock.write_all(&[0x20, 0x02, 0x00, 0x00]).unwrap();
                                acked_connect = true;
                            }
                            // Count PUBLISH fixed headers roughly: enough to
                            // know that publishes arrived.
                            seen2.fetch_add(
                                buf[..n].iter().filter(|&&b| b == 0x32).count(),
                                Ordering::SeqCst,
                            );
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
            }
        });
        AcklessBroker {
            port,
            publishes_seen: seen,
            worker: Worker {
                stop,
                thread: Some(thread),
            },
        }
    }
}

/// The effective user id, from /proc (no libc needed).
pub fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A small seeded random generator (splitmix64) for fault and fuzz tests.
/// The seed comes from FRAMEFLUSH_TEST_SEED when set, else from the clock;
/// it is printed, so a failing run (whose output cargo shows) can be
/// replayed with `FRAMEFLUSH_TEST_SEED=<seed> cargo test <name>`.
pub struct Rng {
    state: u64,
    pub seed: u64,
}

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("FRAMEFLUSH_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                t.as_nanos() as u64 ^ u64::from(std::process::id())
            });
        println!("{test}: seed {seed} (replay: FRAMEFLUSH_TEST_SEED={seed} cargo test {test})");
        Rng { state: seed, seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi);
        lo + self.next_u64() % (hi - lo)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }
}

/// What a [`Proxy`] does to the connection it relays.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Relay faithfully.
    None,
    /// Cut the link (both directions) once this many bytes went from the
    /// client to the broker; the last write may carry half a packet.
    CutAfter(usize),
    /// Relay this many PUBACKs to the client, then swallow every further
    /// one (the connection stays up).
    SwallowPubAcksAfter(usize),
    /// The first connection is closed as soon as the client's CONNECT came
    /// (not relayed); later ones are relayed faithfully.
    CloseFirstAfterConnect,
    /// The first connection is relayed for this long, then cut; every
    /// later one is accepted and never answered (what the client sends is
    /// read and dropped).
    CutThenMute(Duration),
    /// Hold what the client sends this long before relaying it (a slow
    /// link: with a small `--inflight`, PUBACKs trickle in).
    DelayUp(Duration),
}

/// A TCP proxy on 127.0.0.1 between frameflush and a broker, injecting a
/// [`Fault`]. Each accepted connection gets the fault anew.
pub struct Proxy {
    pub port: u16,
    /// PUBACKs relayed to the client.
    pub acks_relayed: Arc<AtomicUsize>,
    /// Bytes relayed from the client to the broker.
    pub bytes_up: Arc<AtomicUsize>,
    worker: Worker,
}

impl Proxy {
    pub fn start(upstream: u16, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicUsize::new(0));
        let (s, a, u) = (stop.clone(), acks.clone(), up.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut pumps = Vec::new();
            let mut accepted = 0usize;
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                accepted += 1;
                match fault {
                    Fault::CloseFirstAfterConnect if accepted == 1 => {
                        let mut c = client;
                        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let _ = c.read(&mut [0u8; 1024]);
                        let _ = c.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    Fault::CutThenMute(_) if accepted > 1 => {
                        let s3 = s.clone();
                        pumps.push(std::thread::spawn(move || mute(client, &s3)));
                        continue;
                    }
                    Fault::CutThenMute(after) => {
                        let (c3, s3) = (client.try_clone().unwrap(), s.clone());
                        pumps.push(std::thread::spawn(move || {
                            let until = Instant::now() + after;
                            while Instant::now() < until && !s3.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            let _ = c3.shutdown(std::net::Shutdown::Both);
                        }));
                    }
                    _ => {}
                }
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for sock in [&client, &broker] {
                    sock.set_nodelay(true).unwrap();
                    sock.set_read_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                }
                let (c2, b2) = (client.try_clone().unwrap(), broker.try_clone().unwrap());
                let (s1, s2, a2, u2) = (s.clone(), s.clone(), a.clone(), u.clone());
                let limit = match fault {
                    Fault::CutAfter(n) => Some(n),
                    _ => None,
                };
                let delay = match fault {
                    Fault::DelayUp(d) => Some(d),
                    _ => None,
                };
                pumps.push(std::thread::spawn(move || {
                    pump_up(client, broker, limit, delay, &u2, &s1)
                }));
                let swallow_after = match fault {
                    Fault::SwallowPubAcksAfter(k) => Some(k),
                    _ => None,
                };
                pumps.push(std::thread::spawn(move || {
                    pump_down(b2, c2, swallow_after, &a2, &s2)
                }));
            }
            for p in pumps {
                let _ = p.join();
            }
        });
        Proxy {
            port,
            acks_relayed: acks,
            bytes_up: up,
            worker: Worker {
                stop,
                thread: Some(thread),
            },
        }
    }
}

/// Reads and drops what the client sends, answering nothing, until it
/// closes (or the proxy stops).
fn mute(mut client: TcpStream, stop: &AtomicBool) {
    client
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

fn cut(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(std::net::Shutdown::Both);
    let _ = b.shutdown(std::net::Shutdown::Both);
}

/// Client → broker, cutting both directions after `limit` bytes, each read
/// held `delay` first.
fn pump_up(
    mut from: TcpStream,
    mut to: TcpStream,
    limit: Option<usize>,
    delay: Option<Duration>,
    total: &AtomicUsize,
    stop: &AtomicBool,
) {
    use std::io::Write as _;
    let mut buf = [0u8; 16384];
    let mut sent = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let n_fwd = limit.map_or(n, |l| n.min(l.saturating_sub(sent)));
        if to.write_all(&buf[..n_fwd]).is_err() {
            break;
        }
        sent += n_fwd;
        total.fetch_add(n_fwd, Ordering::SeqCst);
        if limit.is_some_and(|l| sent >= l) {
            break;
        }
    }
    cut(&from, &to);
}

/// Broker → client, swallowing PUBACKs after `swallow_after` of them.
fn pump_down(
    mut from: TcpStream,
    mut to: TcpStream,
    swallow_after: Option<usize>,
    acks: &AtomicUsize,
    stop: &AtomicBool,
) {
    use std::io::Write as _;
    let mut buf = [0u8; 16384];
    let mut pending: Vec<u8> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        // Relay whole MQTT packets, one by one.
        let mut out = Vec::new();
        while let Some((len, header)) = packet_len(&pending) {
            let packet: Vec<u8> = pending.drain(..len).collect();
            if header >> 4 == 4 {
                if swallow_after.is_some_and(|k| acks.load(Ordering::SeqCst) >= k) {
                    continue;
                }
                acks.fetch_add(1, Ordering::SeqCst);
            }
            out.extend_from_slice(&packet);
        }
        if !out.is_empty() && to.write_all(&out).is_err() {
            break;
        }
    }
    cut(&from, &to);
}

/// The length of the first complete MQTT packet in `b`, and its first byte.
fn packet_len(b: &[u8]) -> Option<(usize, u8)> {
    let mut remaining = 0usize;
    let mut shift = 0;
    for i in 1..5 {
        let byte = *b.get(i)?;
        remaining |= usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            let total = 1 + i + remaining;
            return (b.len() >= total).then_some((total, b[0]));
        }
    }
    None
}

/// Seeds a database at `path` (not the default one) with `n` rows.
pub fn seed_at(path: &Path, n: usize) -> Connection {
    let mut c = Connection::open(path).unwrap();
    c.execute_batch(SCHEMA).unwrap();
    insert_rows(&mut c, n, 0);
    c
}

/// A throwaway PKI made with the `openssl` command, once per test process:
/// a CA, server certificates for 127.0.0.1/localhost and for another name,
/// a second CA, and client certificates whose keys come in PKCS#8, PKCS#1
/// and SEC1 PEM. Keys are mode 0600.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn get() -> &'static Pki {
        static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
        PKI.get_or_init(Pki::make)
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn make() -> Pki {
        let dir = std::env::temp_dir()
            .join("frameflush-tests")
            .join(format!("pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("the openssl command is installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=frameflush test {ca}"),
            );
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            a.extend([
                "-keyout", &key, "-out", &pem, "-days", "3650", "-subj", &subj,
            ]);
            openssl(&a);
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("wrongname.ext"),
            "subjectAltName=DNS:broker.elsewhere.example\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        let sign = |name: &str, ext: &str, key_args: &[&str]| {
            let mut a = vec!["req"];
            a.extend(key_args);
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            a.extend([
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=frameflush test",
            ]);
            openssl(&a);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "365",
                "-extfile",
                ext,
            ]);
        };
        sign("server", "server.ext", &ec);
        sign("wrongname", "wrongname.ext", &ec);
        // PKCS#8 (openssl's default), then the same key as PKCS#1.
        sign(
            "client-pkcs8",
            "client.ext",
            &["-newkey", "rsa:2048", "-nodes"],
        );
        openssl(&[
            "rsa",
            "-in",
            "client-pkcs8.key",
            "-traditional",
            "-out",
            "client-pkcs1.key",
        ]);
        std::fs::copy(dir.join("client-pkcs8.pem"), dir.join("client-pkcs1.pem")).unwrap();
        // SEC1: an EC key in "BEGIN EC PRIVATE KEY" form.
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "client-sec1.key",
        ]);
        openssl(&[
            "req",
            "-new",
            "-key",
            "client-sec1.key",
            "-out",
            "client-sec1.csr",
            "-subj",
            "/CN=frameflush test",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "client-sec1.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client-sec1.pem",
            "-days",
            "365",
            "-extfile",
            "client.ext",
        ]);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "key") {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        let pkcs1 = std::fs::read_to_string(dir.join("client-pkcs1.key")).unwrap();
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
        let sec1 = std::fs::read_to_string(dir.join("client-sec1.key")).unwrap();
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
        Pki { dir }
    }

    /// Every line of key material in the PKI (the private keys' base64
    /// lines): none may ever appear in anything frameflush prints.
    pub fn secret_lines(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        for key in [
            "client-pkcs8.key",
            "client-pkcs1.key",
            "client-sec1.key",
            "ca.key",
            "server.key",
        ] {
            let text = std::fs::read_to_string(self.dir.join(key)).unwrap();
            secrets.extend(
                text.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::to_string),
            );
        }
        secrets
    }

    /// mosquitto lines for a TLS listener using the server certificate
    /// `server` (`server` or `wrongname`), then a plain listener on
    /// `plain_port` for the test's subscriber.
    pub fn listener_conf(
        &self,
        server: &str,
        require_certificate: bool,
        plain_port: u16,
    ) -> String {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_certificate}\nlistener {plain_port} 127.0.0.1\n",
            self.path("ca.pem"),
            self.path(&format!("{server}.pem")),
            self.path(&format!("{server}.key")),
        )
    }
}

impl Subscriber {
    /// A subscriber that logs in with a user name and password.
    pub fn connect_as(port: u16, filter: &str, user: &str, password: &str) -> Subscriber {
        Subscriber::connect_opts(port, filter, Some((user, password)))
    }
}

/// Messages per id received under the topic prefix `prefix/` (topics are
/// `prefix/{id}`).
pub fn received_under(sub: &Subscriber, prefix: &str) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for m in sub.messages() {
        if let Some(id) = m
            .topic
            .strip_prefix(prefix)
            .and_then(|t| t.strip_prefix('/'))
        {
            *counts.entry(id.parse::<i64>().unwrap()).or_insert(0) += 1;
        }
    }
    counts
}

/// Waits (bounded) until every id in `want` was received under `prefix`.
pub fn wait_received(sub: &Subscriber, prefix: &str, want: &BTreeSet<i64>) -> BTreeMap<i64, usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = received_under(sub, prefix);
        if want.iter().all(|id| got.contains_key(id)) || Instant::now() > deadline {
            std::thread::sleep(Duration::from_millis(50));
            return received_under(sub, prefix);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A value of frameflush's own state table (`suspects:64`, `protocol:…`),
/// or None.
pub fn state(db: &Path, key: &str) -> Option<String> {
    let c = Connection::open(db).ok()?;
    c.query_row(
        "SELECT value FROM frameflush_state WHERE key = ?1",
        [key],
        |r| r.get(0),
    )
    .ok()
}

/// Appends `frames` Waspmote frames of six readings each (TC, HUM, PRES,
/// BAT, CO2, NO2), the table's frame `f` (counted from its first row)
/// from node_{f % 5}: a node's readings are adjacent rows, as a gateway's
/// parser writes them.
pub fn insert_frames(c: &mut Connection, frames: usize, sync: i64) {
    // Frames go on from the last one: node numbers follow the ids.
    let first: i64 = c
        .query_row("SELECT COALESCE(MAX(id), 0) FROM sensorParser", [], |r| {
            r.get(0)
        })
        .unwrap();
    let first = (first / 6) as usize;
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO sensorParser (id_wasp, id_secret, frame_type, frame_number, sensor, value, timestamp, sync, raw)
                 VALUES (?1, '400577471', 134, ?2, ?3, ?4, '2026-11-24 10:00:00', ?5, 'noraw')",
            )
            .unwrap();
        let sensors = ["TC", "HUM", "PRES", "BAT", "CO2", "NO2"];
        for f in first..first + frames {
            for (i, sensor) in sensors.iter().enumerate() {
                st.execute(rusqlite::params![
                    format!("node_{:02}", f % 5),
                    (f % 256) as i64,
                    sensor,
                    format!("{}.{:02}", 20 + f % 10, i),
                    sync
                ])
                .unwrap();
            }
        }
    }
    tx.commit().unwrap();
}

/// The node of row `id` in a table filled only by [`insert_frames`].
pub fn frame_node(id: i64) -> i64 {
    ((id - 1) / 6) % 5
}

//! A throwaway ejabberd (Debian's `ejabberd`, its `mod_mqtt`) as a second
//! real MQTT 5 broker: a private Erlang node in a temporary directory, its
//! MQTT listener on 127.0.0.1 and a free port, its Erlang distribution on
//! another free port with `ERL_EPMD_PORT` pointed at a third, so that
//! nothing outside the directory is touched (no system epmd, no other
//! node). `ejabberdctl` runs only as root or as the `ejabberd` user and
//! switches to `ejabberd`: the directory belongs to that user. Stopped by
//! SIGTERM to the pid in its pid file (then SIGKILL), and killed by a
//! watchdog should the test process die first.
//!
//! [`Ejabberd::shared`] is the test binary's one node (start takes about
//! 5 s): each test uses topics under a prefix of its own and a client id of
//! its own. Its configuration: [`USER`] and [`SUB_USER`] (password
//! [`PASSWORD`]), `max_payload_size` [`MAX_PAYLOAD`] (not announced in
//! CONNACK), `max_queue: unlimited` for subscribers, and an
//! `access_publish` that lets [`USER`] publish under each prefix of
//! [`ALLOWED`] and nowhere else (ejabberd answers anything else with PUBACK
//! 0x90 under MQTT 5).
//!
//! A machine without ejabberd fails the test, naming the package:
//! `scripts/test` installs it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{free_port, run_cmd};

/// The MQTT user frameflush logs in as (the host part `@localhost` is
/// implied), the subscriber's, and their password.
pub const USER: &str = "gw";
pub const SUB_USER: &str = "sub";
pub const PASSWORD: &str = "ej-pw-7Qk2";
/// The listener's `max_payload_size`: it applies to the whole packet.
pub const MAX_PAYLOAD: usize = 8192;
/// The topic filters [`USER`] may publish to; everything else is refused.
pub const ALLOWED: &[&str] = &[
    "deliver/#",
    "acl/node_00/#",
    "acl/node_01/#",
    "acl/node_02/#",
    "acl/node_04/#",
    "big/#",
    "check/node_00/#",
    "check/node_01/#",
    "check/node_02/#",
    "check/node_04/#",
];

pub struct Ejabberd {
    pub port: u16,
    dir: PathBuf,
    pid: Option<u32>,
    watchdog: Option<Child>,
}

/// ejabberdctl, or a failure that names the package.
fn ejabberdctl() -> PathBuf {
    ["/usr/sbin/ejabberdctl", "/usr/bin/ejabberdctl", "/usr/local/sbin/ejabberdctl"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("ejabberd is not installed (no ejabberdctl): run scripts/test, which installs the Debian package ejabberd")
}

impl Ejabberd {
    /// The test binary's shared node: started by the first test that asks,
    /// stopped when the last one holding it is done.
    pub fn shared() -> Arc<Ejabberd> {
        static SHARED: Mutex<Weak<Ejabberd>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = shared.upgrade() {
            return node;
        }
        let node = Arc::new(Ejabberd::start());
        *shared = Arc::downgrade(&node);
        node
    }

    /// A node of the caller's own.
    pub fn start() -> Ejabberd {
        let ctl = ejabberdctl();
        assert!(
            super::euid() == 0,
            "ejabberd's test node needs root: ejabberdctl runs only as root or as the ejabberd user (run the suite as root, as scripts/test does in CI)"
        );
        let mut last = String::new();
        for attempt in 0..3 {
            let dir = std::env::temp_dir().join(format!(
                "frameflush-ejabberd-{}-{attempt}-{}",
                std::process::id(),
                free_port()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let mut node = Ejabberd {
                port: free_port(),
                dir,
                pid: None,
                watchdog: None,
            };
            match node.spawn(&ctl) {
                Ok(()) => return node,
                Err(why) => last = why,
            }
        }
        panic!("could not start ejabberd: {last}");
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// ejabberdctl with this node's directories.
    fn ctl(&self, ctl: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(ctl);
        cmd.arg("--config-dir")
            .arg(&self.dir)
            .arg("--spool")
            .arg(self.dir.join("spool"))
            .arg("--logs")
            .arg(self.dir.join("log"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn write_config(&self) {
        let d = &self.dir;
        std::fs::create_dir_all(d.join("spool")).unwrap();
        std::fs::create_dir_all(d.join("log")).unwrap();
        let (dist, epmd) = (free_port(), free_port());
        let name = d.file_name().unwrap().to_string_lossy().replace('-', "_");
        std::fs::write(
            d.join("ejabberdctl.cfg"),
            format!(
                "ERLANG_NODE={name}@localhost\nERL_OPTIONS=\"-setcookie {name}cookie\"\nEJABBERD_PID_PATH={}/pid\nINET_DIST_INTERFACE=127.0.0.1\nERL_DIST_PORT={dist}\nexport ERL_EPMD_PORT={epmd}\n",
                d.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("inetrc"),
            "{lookup,[\"file\"]}.\n{host,{127,0,0,1},[\"localhost\"]}.\n",
        )
        .unwrap();
        let publish: String = ALLOWED
            .iter()
            .map(|f| format!("      \"{f}\": gateway\n"))
            .collect();
        std::fs::write(
            d.join("ejabberd.yml"),
            format!(
                "hosts:\n  - localhost\nloglevel: info\ncertfiles: []\nauth_method: internal\n\
                 listen:\n  -\n    port: {port}\n    ip: \"127.0.0.1\"\n    module: mod_mqtt\n    max_payload_size: {MAX_PAYLOAD}\n\
                 acl:\n  gateway:\n    user:\n      - {USER}@localhost\n\
                 access_rules:\n  gateway:\n    allow: gateway\n\
                 modules:\n  mod_mqtt:\n    db_type: mnesia\n    ram_db_type: mnesia\n    max_queue: unlimited\n    access_publish:\n{publish}",
                port = self.port
            ),
        )
        .unwrap();
        // ejabberdctl switches to the ejabberd user: the directory is
        // its, and the temp dir above it is traversable.
        let chown = Command::new("chown")
            .args(["-R", "ejabberd:ejabberd"])
            .arg(d)
            .status()
            .unwrap();
        assert!(
            chown.success(),
            "chown of {} to ejabberd failed",
            d.display()
        );
    }

    fn spawn(&mut self, ctl: &Path) -> Result<(), String> {
        self.write_config();
        let log = self.dir.join("log/ejabberd.log");
        let run = run_cmd(self.ctl(ctl, &["start"]), Duration::from_secs(30));
        if run.code != Some(0) {
            return Err(format!("ejabberdctl start: {run:?}"));
        }
        // The pid file, then `started`.
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(self.dir.join("pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                break pid;
            }
            if Instant::now() > deadline {
                return Err(format!("no pid file within 30 s; see {}", log.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.pid = Some(pid);
        self.watch(pid);
        loop {
            let run = run_cmd(self.ctl(ctl, &["started"]), Duration::from_secs(20));
            if run.code == Some(0) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "ejabberd did not start within 30 s: {run:?}; see {}",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // The users, at once (each ejabberdctl costs an Erlang start).
        let users: Vec<Child> = [USER, SUB_USER]
            .iter()
            .map(|u| {
                self.ctl(ctl, &["register", u, "localhost", PASSWORD])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for u in users {
            let out = super::wait_output(u, Duration::from_secs(30));
            if !out.status.success() {
                return Err(format!("ejabberdctl register failed: {out:?}"));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "nothing listens on 127.0.0.1:{}; see {}",
                    self.port,
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills the node should this test process die without dropping it.
    fn watch(&mut self, pid: u32) {
        let script = "while kill -0 \"$0\" 2>/dev/null && kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill -9 \"$1\" 2>/dev/null";
        self.watchdog = Command::new("sh")
            .args(["-c", script])
            .arg(std::process::id().to_string())
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
    }

    /// The node's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/ejabberd.log")).unwrap_or_default()
    }

    /// Whether the process runs (a zombie does not).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Ejabberd::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Ejabberd::alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        if std::env::var_os("FRAMEFLUSH_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

//! Support for end-to-end tests: start a real `tern serve` process on a free loopback port
//! with its own data directory, restart it, kill it, and talk to it with real clients.
//!
//! The broker binary is found through `TERN_BIN`, or beside the test executable's target
//! directory (`target/<profile>/tern`), which `cargo test --workspace` / `cargo nextest run
//! --workspace` build before running tests. Every wait here is bounded.
//!
//! Client helpers live beside it, one module per way of talking to the broker: `kafka`
//! (rdkafka, i.e. librdkafka), `rs` (rskafka, an independent pure-Rust client) and `wire`
//! (hand-built frames over a plain `TcpStream`, for malformed input); `disk` reads what the
//! broker stored.

pub mod cluster;
pub mod disk;
pub mod kafka;
pub mod rs;
pub mod traffic;
pub mod wire;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker may take to start accepting connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub fn tern_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TERN_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/tern
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let candidate = profile_dir.join("tern");
    assert!(
        candidate.exists(),
        "broker binary not found at {}; build it with `cargo build -p tern` or set TERN_BIN",
        candidate.display()
    );
    candidate
}

/// A port for a broker, from 20000-28999: below the kernel's ephemeral range (32768-60999 by
/// default), so that a port a broker gives up while it restarts is not handed meanwhile to
/// one of the many outgoing connections clients and brokers open.
///
/// Test processes run side by side (nextest runs one per test), so a port that merely binds
/// now may be picked by another process a moment later, or taken back by another test's
/// broker while ours restarts: clean-clone CI runs lost tests to both. A port is therefore
/// *reserved*: this process holds an exclusive lock on `<tmp>/tern-test-ports/<port>` until it
/// exits (the kernel drops the lock when it does, even after a crash), and other test
/// processes skip locked ports. Each process starts its walk at a random point of the range.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Mutex, OnceLock};
    const BASE: u32 = 20_000;
    const SPAN: u32 = 9_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: OnceLock<u32> = OnceLock::new();
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let start = *START.get_or_init(|| {
        // RandomState is seeded randomly per process: a random start without a new crate.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        (hasher.finish() % u64::from(SPAN)) as u32
    });
    let locks = std::env::temp_dir().join("tern-test-ports");
    std::fs::create_dir_all(&locks).expect("port lock directory");
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (BASE + (start + offset) % SPAN) as u16;
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(locks.join(port.to_string()))
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // reserved by another test process
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
            return port;
        }
    }
    panic!("no free port in {BASE}..{}", BASE + SPAN)
}

/// A broker process owned by a test. Dropping it stops the process (SIGTERM, then SIGKILL).
pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The admin HTTP endpoint (`/metrics`, `/healthz`).
    pub admin_addr: SocketAddr,
    /// The native protocol's listener.
    pub native_addr: SocketAddr,
    pub cores: usize,
    data_dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl Broker {
    pub fn start(cores: usize) -> Broker {
        Broker::start_with(cores, &[])
    }

    pub fn start_with(cores: usize, extra_args: &[&str]) -> Broker {
        let addr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let mut broker = Broker::new(
            cores,
            addr,
            extra_args.iter().map(|s| s.to_string()).collect(),
        );
        broker.spawn();
        broker
    }

    /// Starts the process without waiting for it to serve (a cluster's brokers wait for each
    /// other's quorum); `wait_until_serving` finishes the start.
    pub fn launch_with(cores: usize, addr: SocketAddr, extra_args: Vec<String>) -> Broker {
        let mut broker = Broker::new(cores, addr, extra_args);
        broker.launch();
        broker
    }

    /// A broker this harness did not start (a packaged binary, say), for the client helpers
    /// that take a `Broker`; dropping it stops nothing.
    pub fn external(addr: SocketAddr) -> Broker {
        Broker::new(1, addr, Vec::new())
    }

    /// A broker on `addr` with a fresh data directory and admin port, not started.
    fn new(cores: usize, addr: SocketAddr, extra_args: Vec<String>) -> Broker {
        let data_dir = tempfile::Builder::new()
            .prefix("tern-test-")
            .tempdir()
            .expect("temp data dir");
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let native_addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        Broker {
            child: None,
            addr,
            admin_addr,
            native_addr,
            cores,
            data_dir,
            extra_args,
        }
    }

    /// Replaces the extra arguments used by the next (re)start.
    pub fn set_extra_args(&mut self, extra_args: Vec<String>) {
        self.extra_args = extra_args;
    }

    /// Starts the process again without waiting for it to serve.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        self.launch();
    }

    /// Waits (bounded) for the process to exit; its exit status if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_until_serving();
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.data_dir.path().join("broker.log"))
            .expect("broker log file");
        let child = Command::new(tern_binary())
            .arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(self.data_dir.path().join("data"))
            .arg("--cores")
            .arg(self.cores.to_string())
            .arg("--admin-listen")
            .arg(self.admin_addr.to_string())
            .arg("--native-listen")
            .arg(self.native_addr.to_string())
            .args(&self.extra_args)
            .env(
                "TERN_LOG",
                std::env::var("TERN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tern serve");
        self.child = Some(child);
    }

    /// Waits until the broker answers ApiVersions (panics with its log if it exits or times
    /// out).
    pub fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.answers_api_versions() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "broker exited during start ({status}); log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "broker did not accept connections within {START_TIMEOUT:?}; log:\n{}",
            self.log()
        );
    }

    /// Whether the broker answers an ApiVersions request. A TCP connect alone is not proof:
    /// after a kill -9 the dead process's listening socket lingers for a moment (its io_uring
    /// is torn down asynchronously) and accepts connections that are then reset.
    fn answers_api_versions(&self) -> bool {
        let Some(mut connection) = wire::RawConnection::try_connect(self.addr) else {
            return false;
        };
        if connection.send(&wire::request(18, 0, 0, &[])).is_err() {
            return false;
        }
        matches!(
            connection.fate(Duration::from_secs(1)),
            wire::Fate::Answered(frame) if wire::parse_api_versions_v0(&frame).is_some()
        )
    }

    /// Fetches `/metrics` and returns the sum over shards of the named metric.
    pub fn metric(&self, name: &str) -> u64 {
        self.metric_by_shard(name)
            .iter()
            .map(|(_, value)| value)
            .sum()
    }

    /// Fetches `/metrics` and returns the named metric per shard, by shard id.
    pub fn metric_by_shard(&self, name: &str) -> Vec<(u64, u64)> {
        let text = self.metrics_text();
        let prefix = format!("{name}{{shard=\"");
        let mut values: Vec<(u64, u64)> = text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (shard, rest) = rest.split_once('"')?;
                Some((shard.parse().ok()?, rest.rsplit(' ').next()?.parse().ok()?))
            })
            .collect();
        values.sort_unstable();
        values
    }

    /// The named metric with one label (`reason="idle"`), summed over shards.
    pub fn metric_labeled(&self, name: &str, label: &str) -> u64 {
        self.metrics_text()
            .lines()
            .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn metrics_text(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect_timeout(&self.admin_addr, Duration::from_secs(5))
            .expect("admin endpoint");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: tern\r\n\r\n")
            .expect("request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("response");
        text
    }

    /// The broker process's resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("broker /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .expect("VmRSS line")
            * 1024
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Whether the broker process is still running (it has not exited or been reaped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Graceful stop: SIGTERM and wait (bounded); returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: signalling our own child process by pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Crash: SIGKILL, no chance to flush or close anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same address and data directory.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop or kill the broker before restarting it"
        );
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        // A failing test's broker log is the first thing to read, and the data directory
        // holding it is about to be deleted.
        if std::thread::panicking() {
            let log = self.log();
            let tail_start = log.len().saturating_sub(LOG_TAIL_BYTES);
            let tail_start = (tail_start..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(log.len());
            eprintln!("---- broker log (last {LOG_TAIL_BYTES} bytes) ----\n{}\n---- end of broker log ----", &log[tail_start..]);
        }
    }
}

/// How much of a failed test's broker log to print.
const LOG_TAIL_BYTES: usize = 16 * 1024;

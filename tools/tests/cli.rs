//! The `tern` command line, run as a user runs it: `serve` with bad settings fails with a
//! clear message, a second broker on the same data directory is refused, and `topic`,
//! `produce` and `consume` round-trip records through a real broker.
//!
//! These tests also make Cargo build `target/<profile>/tern` before any test runs, which the
//! end-to-end suites in `tests/` and `bench/` start as a separate process.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TERN: &str = env!("CARGO_BIN_EXE_tern");

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

struct Serve {
    child: Child,
    addr: SocketAddr,
    /// The native protocol's listener.
    native: SocketAddr,
}

impl Serve {
    fn start(data_dir: &std::path::Path) -> Serve {
        Serve::start_with(data_dir, &[])
    }

    fn start_with(data_dir: &std::path::Path, extra: &[&str]) -> Serve {
        Serve::start_in(None, data_dir, extra)
    }

    /// Starts in `cwd` (when given), so `data_dir` may be relative as a newcomer's default is.
    fn start_in(
        cwd: Option<&std::path::Path>,
        data_dir: &std::path::Path,
        extra: &[&str],
    ) -> Serve {
        let addr = free_addr();
        let native = free_addr();
        let mut command = Command::new(TERN);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let child = command
            .args([
                "serve",
                "--cores",
                "1",
                "--admin-listen",
                "off",
                "--native-listen",
                &native.to_string(),
                "--listen",
                &addr.to_string(),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tern serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tern serve did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Serve {
            child,
            addr,
            native,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn tern(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(TERN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tern");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("tern output")
}

#[test]
fn serve_rejects_a_bad_listen_address_with_a_clear_message() {
    let output = tern(&["serve", "--listen", "not-an-address"], None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--listen"), "names the bad flag: {stderr}");
}

#[test]
fn a_second_broker_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _first = Serve::start(dir.path());
    let output = tern(
        &[
            "serve",
            "--cores",
            "1",
            "--admin-listen",
            "off",
            "--native-listen",
            "off",
            "--listen",
            &free_addr().to_string(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    assert!(!output.status.success(), "the second broker must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("lock") || stderr.contains("in use") || stderr.contains("held"),
        "explains the lock: {stderr}"
    );
}

#[test]
fn topic_produce_and_consume_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = Serve::start(dir.path());
    let bootstrap = serve.addr.to_string();
    let created = tern(
        &[
            "topic",
            "create",
            "cli-demo",
            "--partitions",
            "2",
            "--config",
            "retention.ms=3600000",
            "-b",
            &bootstrap,
        ],
        None,
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    // Natively by default.
    let native = serve.native.to_string();
    let produced = tern(
        &["produce", "cli-demo", "--partition", "1", "-b", &native],
        Some("alpha\nbeta\n"),
    );
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    // And over the Kafka protocol, into the same partition.
    let produced = tern(
        &[
            "produce",
            "cli-demo",
            "--partition",
            "1",
            "--kafka",
            "-b",
            &bootstrap,
        ],
        Some("gamma\n"),
    );
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let consumed = tern(
        &[
            "consume",
            "cli-demo",
            "--partition",
            "1",
            "--from-beginning",
            "--idle-ms",
            "300",
            "-b",
            &native,
        ],
        None,
    );
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&consumed.stdout),
        "alpha\nbeta\ngamma\n"
    );
    let over_kafka = tern(
        &[
            "consume",
            "cli-demo",
            "--partition",
            "1",
            "--from-beginning",
            "--idle-ms",
            "300",
            "--kafka",
            "-b",
            &bootstrap,
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&over_kafka.stdout),
        "alpha\nbeta\ngamma\n"
    );
    // The Kafka port is not the native one: the error says so.
    let wrong_port = tern(&["produce", "cli-demo", "-b", &bootstrap], Some("x\n"));
    assert!(!wrong_port.status.success());
    assert!(
        String::from_utf8_lossy(&wrong_port.stderr).contains("--kafka"),
        "{}",
        String::from_utf8_lossy(&wrong_port.stderr)
    );
    let described = tern(&["topic", "describe", "cli-demo", "-b", &bootstrap], None);
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(text.contains("partition 1\tearliest 0\tlatest 3"), "{text}");
    assert!(text.contains("retention.ms = 3600000 (set)"), "{text}");
    let duplicate = tern(&["topic", "create", "cli-demo", "-b", &bootstrap], None);
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("TopicAlreadyExists"));
}

#[test]
fn configured_request_size_limit_closes_connections_that_exceed_it() {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = Serve::start_with(dir.path(), &["--max-request-bytes", "4096"]);
    let mut stream = TcpStream::connect(serve.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(&8192i32.to_be_bytes())
        .expect("declare an 8 KiB frame");
    let mut buf = [0u8; 16];
    let read = stream.read(&mut buf).unwrap_or(0);
    assert_eq!(
        read, 0,
        "the broker closes the connection without reading the frame"
    );

    let refused = tern(
        &[
            "serve",
            "--max-request-bytes",
            "10",
            "--data-dir",
            dir.path().join("other").to_str().unwrap(),
        ],
        None,
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("max request bytes"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// The default data directory (`tern-data`) is relative; topic creation persists metadata
/// under it through io_uring, which must work from any working directory.
#[test]
fn a_relative_data_directory_works_like_the_default_one() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let serve = Serve::start_in(Some(cwd.path()), std::path::Path::new("tern-data"), &[]);
    let bootstrap = serve.addr.to_string();
    let created = tern(&["topic", "create", "relative", "-b", &bootstrap], None);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(
        cwd.path().join("tern-data").join("relative-0").is_dir(),
        "the partition lives under ./tern-data"
    );
}

//! Helpers for the consumer-group end-to-end tests: a `tern serve` child process on a
//! reserved loopback port (`tern_tests::free_port`) with its stderr captured (so tests can read the
//! coordinator's log lines), rdkafka consumers/producers, and a tiny raw-wire client for
//! requests real clients would never send.
//!
//! It must never leave a broker running: `Broker` kills its child on drop.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// The `tern` binary: `TERN_BIN`, else `$CARGO_TARGET_DIR/debug/tern`, else the workspace's
/// `target/debug/tern`.
pub fn tern_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TERN_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    target.join("debug").join("tern")
}

fn free_port() -> u16 {
    tern_tests::free_port()
}

pub struct Broker {
    pub addr: SocketAddr,
    pub data: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
    starts: usize,
}

impl Broker {
    /// Starts a broker with `--cores cores`, no initial rebalance delay, and `extra` flags.
    pub fn start(cores: usize, extra: &[&str]) -> Broker {
        // Not /tmp: it is often tmpfs, where the log's direct-IO reads of index files fail
        // with EOPNOTSUPP on reopen. The target directory is on a real filesystem.
        let scratch = tern_bin()
            .parent()
            .expect("bin dir")
            .join("groups-test-data");
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let data = tempfile::tempdir_in(&scratch).expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut args = vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            addr.to_string(),
            "--cores".to_owned(),
            cores.to_string(),
            "--group-initial-rebalance-delay-ms".to_owned(),
            "0".to_owned(),
            "--admin-listen".to_owned(),
            "off".to_owned(),
            "--native-listen".to_owned(),
            "off".to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut broker = Broker {
            addr,
            data,
            args,
            child: None,
            starts: 0,
        };
        broker.spawn();
        broker
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.data.path().join(format!("broker-{start}.log"))
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        self.starts += 1;
        let child = Command::new(tern_bin())
            .args(&self.args)
            .arg("--data-dir")
            .arg(self.data.path().join("data"))
            .env("TERN_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it with `cargo build -p tern`)",
                    tern_bin().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "broker did not start listening; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// Stops the broker with SIGTERM (clean shutdown) and starts it again on the same data.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
        self.spawn();
    }

    /// Kills the broker with SIGKILL (no shutdown at all) and starts it again on the same
    /// data.
    pub fn kill9_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// Everything the broker logged, over all its starts.
    pub fn log(&self) -> String {
        (0..self.starts)
            .map(|i| std::fs::read_to_string(self.log_path(i)).unwrap_or_default())
            .collect()
    }

    /// `rebalance_ms` of every "group rebalance completed" line for `group`.
    pub fn rebalance_times_ms(&self, group: &str) -> Vec<i64> {
        self.log()
            .lines()
            .filter(|line| {
                line.contains("group rebalance completed")
                    && line.contains(&format!("group={group} "))
            })
            .filter_map(|line| {
                line.split("rebalance_ms=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn consumer_config(broker: &Broker, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "200")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("fetch.wait.max.ms", "100");
    if let Ok(debug) = std::env::var("RDKAFKA_DEBUG") {
        config.set("debug", debug);
    }
    config
}

pub fn consumer(broker: &Broker, group: &str) -> BaseConsumer {
    consumer_config(broker, group).create().expect("consumer")
}

/// Produces `count` records `"<topic>-<i>"` round-robin over `partitions` partitions.
pub fn produce(broker: &Broker, topic: &str, partitions: i32, count: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for i in 0..count {
        let payload = format!("{topic}-{i}");
        let mut record = BaseRecord::<(), String>::to(topic)
            .payload(&payload)
            .partition(i as i32 % partitions);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// A raw Kafka request/response over one socket, for requests no real client sends.
pub struct Raw {
    stream: TcpStream,
    correlation_id: i32,
}

impl Raw {
    pub fn connect(broker: &Broker) -> Raw {
        let stream = TcpStream::connect(broker.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        Raw {
            stream,
            correlation_id: 0,
        }
    }

    /// Sends `body` under a v1 request header (classic, non-flexible) and returns the
    /// response body after the correlation id.
    pub fn call(&mut self, api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
        self.correlation_id += 1;
        let mut frame = Vec::new();
        frame.extend_from_slice(&api_key.to_be_bytes());
        frame.extend_from_slice(&version.to_be_bytes());
        frame.extend_from_slice(&self.correlation_id.to_be_bytes());
        put_str(&mut frame, "raw-test");
        frame.extend_from_slice(body);
        let mut out = (frame.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&frame);
        self.stream.write_all(&out).expect("write");
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).expect("response size");
        let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut response).expect("response");
        assert_eq!(
            i32::from_be_bytes([response[0], response[1], response[2], response[3]]),
            self.correlation_id
        );
        response.split_off(4)
    }
}

pub fn put_str(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as i16).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

pub fn put_bytes(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(&(value.len() as i32).to_be_bytes());
    out.extend_from_slice(value);
}

/// A cursor over a response body.
pub struct Cursor<'a>(pub &'a [u8]);

impl Cursor<'_> {
    pub fn i16(&mut self) -> i16 {
        let v = i16::from_be_bytes([self.0[0], self.0[1]]);
        self.0 = &self.0[2..];
        v
    }
    pub fn i32(&mut self) -> i32 {
        let v = i32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]);
        self.0 = &self.0[4..];
        v
    }
    pub fn string(&mut self) -> String {
        let len = self.i16();
        if len < 0 {
            return String::new();
        }
        let s = String::from_utf8_lossy(&self.0[..len as usize]).into_owned();
        self.0 = &self.0[len as usize..];
        s
    }
    pub fn bytes(&mut self) -> Vec<u8> {
        let len = self.i32();
        if len < 0 {
            return Vec::new();
        }
        let b = self.0[..len as usize].to_vec();
        self.0 = &self.0[len as usize..];
        b
    }
}

//! The log cleaner's figures, measured side by side in one sitting against a release `tern`
//! (one shard, pinned to CPU 0 when there are two or more; this harness runs on the others):
//!
//! 1. **Cleaner throughput**: a compacted topic filled with `--fill-mb` MB of 1 KiB values
//!    over `--keys` keys while the cleaner is off, then the broker restarted with it on; the
//!    first passes' read bytes over their busy time (the broker's own counters).
//! 2. **Produce latency with and without a cleaner at work**: 10k msg/s of 1 KiB at acks=all
//!    (linger 1 ms) to a plain topic for `--seconds`, while another producer rewrites the
//!    compacted topic's keys at 10 MB/s; once with the cleaner on (backoff 100 ms, any dirty
//!    ratio), once with it off.
//! 3. **Start-up with a large `__consumer_offsets`**: `--commits` offset commits over
//!    `--groups` groups (raw OffsetCommit v2, pipelined), then the time from `tern serve` to
//!    every group's OffsetFetch answered, before and after the cleaner has compacted the topic.
//!
//! ```text
//! cargo build --release -p tern -p tern-bench
//! target/release/compaction-bench [--fill-mb 256] [--keys 10000] [--seconds 20]
//!                                 [--commits 1000000] [--groups 1000]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_bench::flags::Flags;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

struct Options {
    fill_mb: usize,
    keys: usize,
    seconds: u64,
    commits: usize,
    groups: usize,
    tern: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        fill_mb: 256,
        keys: 10_000,
        seconds: 20,
        commits: 1_000_000,
        groups: 1_000,
        tern: tern_bench::spawn::find_tern_bin(None).unwrap_or_else(|e| fail(&e.to_string())),
    };
    for (flag, value) in FLAGS.pairs() {
        let number = || FLAGS.number(&flag, &value);
        match flag.as_str() {
            "--fill-mb" => o.fill_mb = number(),
            "--keys" => o.keys = number(),
            "--seconds" => o.seconds = number() as u64,
            "--commits" => o.commits = number(),
            "--groups" => o.groups = number(),
            "--tern-bin" => o.tern = PathBuf::from(value),
            other => FLAGS.unknown(other),
        }
    }
    o
}

const FLAGS: Flags = Flags::new("compaction-bench");

fn fail(message: &str) -> ! {
    FLAGS.fail(message)
}

/// A broker process on a data directory that outlives restarts.
struct Broker {
    tern: PathBuf,
    dir: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
}

impl Broker {
    fn new(tern: &Path, dir: &Path) -> Broker {
        let port =
            |_| tern_bench::spawn::free_loopback_port().unwrap_or_else(|e| fail(&e.to_string()));
        Broker {
            tern: tern.to_owned(),
            dir: dir.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], port(0))),
            admin: SocketAddr::from(([127, 0, 0, 1], port(1))),
            child: None,
        }
    }

    /// Starts `tern serve` with `extra` flags; returns how long until it accepted a connection.
    fn start(&mut self, extra: &[&str]) -> Duration {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .unwrap_or_else(|e| fail(&e.to_string()));
        let mut command = Command::new(&self.tern);
        if tern_bench::spawn::cpu_count() >= 2 {
            command.arg0_taskset();
        }
        let started = Instant::now();
        let child = command
            .args(["serve", "--cores", "1", "--listen"])
            .arg(self.addr.to_string())
            .args(["--native-listen", "off"])
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("starting {}: {e}", self.tern.display())));
        self.child = Some(child);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_err() {
            if started.elapsed() > Duration::from_secs(120) {
                fail("the broker did not start within 120 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        started.elapsed()
    }

    /// The same broker's addresses for another thread's clients (it stops nothing).
    fn handle(&self) -> Broker {
        Broker {
            tern: self.tern.clone(),
            dir: self.dir.clone(),
            addr: self.addr,
            admin: self.admin,
            child: None,
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the child this harness started, by its pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// The sum over shards of a metric, from the admin port.
    fn metric(&self, name: &str) -> f64 {
        let Ok(mut stream) = TcpStream::connect(self.admin) else {
            return 0.0;
        };
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body.lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.addr.to_string())
            .set("broker.address.family", "v4")
            .set("log_level", "3");
        config
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

trait PinBroker {
    fn arg0_taskset(&mut self);
}

impl PinBroker for Command {
    /// Pins the child to the broker's CPU (inherited by all its threads).
    fn arg0_taskset(&mut self) {
        use std::os::unix::process::CommandExt;
        // SAFETY: sched_setaffinity on the child between fork and exec touches no shared state.
        unsafe {
            self.pre_exec(|| {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(tern_bench::spawn::BROKER_CPU, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                Ok(())
            });
        }
    }
}

fn create_topic(broker: &Broker, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = broker
        .client()
        .create()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .unwrap_or_else(|e| fail(&e.to_string()));
    for result in results {
        if let Err((name, code)) = result {
            fail(&format!("creating {name}: {code:?}"));
        }
    }
}

/// Records each delivery's latency (µs) into a histogram; counts failures.
struct Latency {
    histogram: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    failed: std::sync::atomic::AtomicU64,
}

/// The producers' context: where delivery latencies go.
#[derive(Clone)]
struct Recorder(Arc<Latency>);

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        if result.is_err() {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let us = sent.elapsed().as_micros() as u64;
        let _ = self
            .0
            .histogram
            .lock()
            .expect("histogram")
            .record(us.max(1));
    }
}

/// Sends `rate` keyed messages/s of `bytes` to `topic` until `stop`, at acks `acks`; the
/// latency of each delivery lands in the returned histogram.
fn produce_at(
    broker: &Broker,
    topic: &str,
    rate: u64,
    bytes: usize,
    keys: usize,
    acks: &str,
    stop: Arc<AtomicBool>,
) -> Arc<Latency> {
    let latency = Arc::new(Latency {
        histogram: std::sync::Mutex::new(hdrhistogram::Histogram::new(3).expect("histogram")),
        failed: std::sync::atomic::AtomicU64::new(0),
    });
    let producer: ThreadedProducer<Recorder> = broker
        .client()
        .set("acks", acks)
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Recorder(latency.clone()))
        .unwrap_or_else(|e| fail(&e.to_string()));
    let value = vec![b'v'; bytes];
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let key = format!("key-{}", sent as usize % keys.max(1));
            let record = BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
                .key(&key)
                .payload(&value);
            if producer.send(record).is_err() {
                break;
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let _ = producer.flush(Duration::from_secs(30));
    latency
}

fn quantiles(latency: &Latency) -> String {
    let h = latency.histogram.lock().expect("histogram");
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} acks, {} failed)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len(),
        latency.failed.load(Ordering::Relaxed)
    )
}

fn cleaner_throughput_and_latency(o: &Options, dir: &Path) {
    let mut broker = Broker::new(&o.tern, dir);
    broker.start(&["--log-cleaner-enable", "false"]);
    create_topic(
        &broker,
        "churn",
        1,
        &[("cleanup.policy", "compact"), ("segment.bytes", "8388608")],
    );
    create_topic(&broker, "lat", 16, &[]);
    // Fill: keyed 1 KiB values as fast as the broker takes them.
    let stop = Arc::new(AtomicBool::new(false));
    let fill = {
        let target = (o.fill_mb * 1024) as u64;
        let started = Instant::now();
        let producer: ThreadedProducer<Recorder> = broker
            .client()
            .set("acks", "1")
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(Recorder(Arc::new(Latency {
                histogram: std::sync::Mutex::new(hdrhistogram::Histogram::new(3).unwrap()),
                failed: Default::default(),
            })))
            .unwrap_or_else(|e| fail(&e.to_string()));
        let value = vec![b'c'; 1024];
        for i in 0..target {
            let key = format!("key-{}", i as usize % o.keys);
            let mut record = BaseRecord::with_opaque_to("churn", Box::new(Instant::now()))
                .key(&key)
                .payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(5));
                    }
                }
            }
        }
        let _ = producer.flush(Duration::from_secs(120));
        started.elapsed()
    };
    println!(
        "fill: {} MB of 1 KiB keyed records over {} keys in {:.1} s",
        o.fill_mb,
        o.keys,
        fill.as_secs_f64()
    );
    broker.stop();
    broker.start(&["--log-cleaner-backoff-ms", "100"]);
    let started = Instant::now();
    while broker.metric("tern_cleaner_passes_total") < 1.0
        && started.elapsed() < Duration::from_secs(600)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the first burst finish (the log is clean when the busy time stops growing).
    let mut busy = broker.metric("tern_cleaner_busy_microseconds_total");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = broker.metric("tern_cleaner_busy_microseconds_total");
        if now == busy {
            break;
        }
        busy = now;
    }
    let read = broker.metric("tern_cleaner_read_bytes_total");
    let written = broker.metric("tern_cleaner_written_bytes_total");
    println!(
        "cleaner: read {:.1} MB, wrote {:.1} MB, busy {:.2} s: {:.1} MB/s read ({} passes)",
        read / 1e6,
        written / 1e6,
        busy / 1e6,
        read / busy,
        broker.metric("tern_cleaner_passes_total")
    );

    for (label, flags) in [
        (
            "cleaner on ",
            [
                "--log-cleaner-backoff-ms",
                "100",
                "--log-cleaner-enable",
                "true",
            ],
        ),
        (
            "cleaner off",
            [
                "--log-cleaner-backoff-ms",
                "100",
                "--log-cleaner-enable",
                "false",
            ],
        ),
    ] {
        broker.stop();
        broker.start(&flags);
        if label.starts_with("cleaner on") {
            // Every segment dirty enough counts: the cleaner works for the whole phase.
            let admin: AdminClient<DefaultClientContext> = broker.client().create().unwrap();
            let mut resource =
                rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic("churn"));
            resource = resource
                .set("cleanup.policy", "compact")
                .set("segment.bytes", "1048576")
                .set("min.cleanable.dirty.ratio", "0.01");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = runtime.block_on(admin.alter_configs([&resource], &AdminOptions::new()));
        }
        stop.store(false, Ordering::Relaxed);
        let churn = {
            let stop = stop.clone();
            let broker_client = broker.handle();
            let keys = o.keys;
            std::thread::spawn(move || {
                produce_at(&broker_client, "churn", 10_000, 1024, keys, "1", stop)
            })
        };
        let passes_before = broker.metric("tern_cleaner_passes_total");
        let measure = {
            let stop = stop.clone();
            let broker_client = broker.handle();
            std::thread::spawn(move || {
                produce_at(&broker_client, "lat", 10_000, 1024, 1_000_000, "all", stop)
            })
        };
        std::thread::sleep(Duration::from_secs(o.seconds));
        stop.store(true, Ordering::Relaxed);
        let latency = measure.join().expect("latency thread");
        let _ = churn.join();
        println!(
            "{label}: produce->ack at 10k msg/s of 1 KiB, acks=all, beside 10 MB/s of keyed rewrites: {} ({} cleaner passes)",
            quantiles(&latency),
            broker.metric("tern_cleaner_passes_total") - passes_before
        );
    }
}

/// A Kafka request frame: size, header v1 (api key, version, correlation id, client id), body.
fn frame(api_key: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(body.len() + 16);
    payload.extend_from_slice(&api_key.to_be_bytes());
    payload.extend_from_slice(&version.to_be_bytes());
    payload.extend_from_slice(&correlation.to_be_bytes());
    put_string(&mut payload, "compaction-bench");
    payload.extend_from_slice(body);
    let mut out = (payload.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// OffsetCommit v2 of one partition by a group without members (generation -1).
fn offset_commit(group: &str, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut b = Vec::new();
    put_string(&mut b, group);
    b.extend_from_slice(&(-1i32).to_be_bytes());
    put_string(&mut b, "");
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    put_string(&mut b, topic);
    b.extend_from_slice(&1i32.to_be_bytes());
    b.extend_from_slice(&partition.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    put_string(&mut b, "");
    b
}

/// OffsetFetch v1 of one partition.
fn offset_fetch(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut b = Vec::new();
    put_string(&mut b, group);
    b.extend_from_slice(&1i32.to_be_bytes());
    put_string(&mut b, topic);
    b.extend_from_slice(&1i32.to_be_bytes());
    b.extend_from_slice(&partition.to_be_bytes());
    b
}

fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut size = [0u8; 4];
    stream
        .read_exact(&mut size)
        .unwrap_or_else(|e| fail(&format!("reading a response: {e}")));
    let mut frame = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    stream
        .read_exact(&mut frame)
        .unwrap_or_else(|e| fail(&format!("reading a response: {e}")));
    frame
}

/// The committed offset an OffsetFetch v1 response frame holds, or its error code (-1 for a
/// frame of another shape).
fn fetched_offset(frame: &[u8]) -> Result<i64, i16> {
    // correlation(4) topics(4) name(2+n) partitions(4) index(4) offset(8) metadata(2+m) error(2)
    let name_len = i16::from_be_bytes([frame[8], frame[9]]) as usize;
    let at = 10 + name_len + 8;
    let offset = i64::from_be_bytes(frame[at..at + 8].try_into().map_err(|_| -1i16)?);
    let meta_len = i16::from_be_bytes([frame[at + 8], frame[at + 9]]).max(0) as usize;
    let code_at = at + 10 + meta_len;
    let code = i16::from_be_bytes([frame[code_at], frame[code_at + 1]]);
    if code == 0 {
        Ok(offset)
    } else {
        Err(code)
    }
}

/// Time from `tern serve` to every group's committed offset read back.
fn startup(
    broker: &mut Broker,
    o: &Options,
    flags: &[&str],
    expected: &dyn Fn(usize) -> i64,
) -> Duration {
    let started = Instant::now();
    broker.start(flags);
    let mut stream = TcpStream::connect(broker.addr).unwrap_or_else(|e| fail(&e.to_string()));
    let mut pending: Vec<usize> = (0..o.groups).collect();
    while !pending.is_empty() {
        let mut out = Vec::new();
        for (i, &g) in pending.iter().enumerate() {
            out.extend_from_slice(&frame(
                9,
                1,
                i as i32,
                &offset_fetch(&format!("group-{g}"), "events", 0),
            ));
        }
        stream
            .write_all(&out)
            .unwrap_or_else(|e| fail(&e.to_string()));
        let mut still = Vec::new();
        for &g in &pending {
            match fetched_offset(&read_frame(&mut stream)) {
                Ok(offset) if offset == expected(g) => {}
                Ok(offset) => fail(&format!(
                    "group-{g}: offset {offset}, expected {}",
                    expected(g)
                )),
                Err(_) => still.push(g),
            }
        }
        if !still.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        pending = still;
        if started.elapsed() > Duration::from_secs(600) {
            fail("offsets not back within 600 s");
        }
    }
    started.elapsed()
}

fn consumer_offsets_startup(o: &Options, dir: &Path) {
    let mut broker = Broker::new(&o.tern, dir);
    let off = [
        "--log-cleaner-enable",
        "false",
        "--offsets-topic-segment-bytes",
        "4194304",
    ];
    broker.start(&off);
    create_topic(&broker, "events", 1, &[]);
    let per_group = o.commits / o.groups.max(1);
    let started = Instant::now();
    let mut stream = TcpStream::connect(broker.addr).unwrap_or_else(|e| fail(&e.to_string()));
    let window = 1_000;
    let mut sent = 0usize;
    while sent < o.commits {
        let n = window.min(o.commits - sent);
        let mut out = Vec::new();
        for i in sent..sent + n {
            let group = format!("group-{}", i % o.groups);
            out.extend_from_slice(&frame(
                8,
                2,
                i as i32,
                &offset_commit(&group, "events", 0, (i / o.groups) as i64),
            ));
        }
        stream
            .write_all(&out)
            .unwrap_or_else(|e| fail(&e.to_string()));
        for _ in 0..n {
            read_frame(&mut stream);
        }
        sent += n;
    }
    println!(
        "__consumer_offsets: {} commits over {} groups in {:.1} s",
        o.commits,
        o.groups,
        started.elapsed().as_secs_f64()
    );
    let expected = move |_g: usize| (per_group - 1) as i64;
    broker.stop();
    let before = startup(&mut broker, o, &off, &expected);
    let bytes_before = dir_bytes(&broker.dir.join("data"), "__consumer_offsets");
    broker.stop();
    // Clean, then start again.
    broker.start(&[
        "--log-cleaner-backoff-ms",
        "100",
        "--offsets-topic-segment-bytes",
        "4194304",
    ]);
    let clean_started = Instant::now();
    let mut busy = -1.0;
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        let now = broker.metric("tern_cleaner_busy_microseconds_total");
        if now == busy && now > 0.0 || clean_started.elapsed() > Duration::from_secs(600) {
            break;
        }
        busy = now;
    }
    broker.stop();
    let bytes_after = dir_bytes(&broker.dir.join("data"), "__consumer_offsets");
    let after = startup(&mut broker, o, &off, &expected);
    println!(
        "start-up to every group's offsets served: {:.0} ms with {:.1} MB of __consumer_offsets before cleaning, {:.0} ms with {:.1} MB after",
        before.as_secs_f64() * 1000.0,
        bytes_before as f64 / 1e6,
        after.as_secs_f64() * 1000.0,
        bytes_after as f64 / 1e6
    );
}

/// Bytes of `.log` files in the partition directories of `topic`.
fn dir_bytes(data: &Path, topic: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(data) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(topic))
        .flat_map(|e| {
            std::fs::read_dir(e.path())
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
        })
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn main() {
    let o = options();
    if tern_bench::spawn::cpu_count() >= 2 {
        let others: Vec<usize> = (1..tern_bench::spawn::cpu_count()).collect();
        tern_bench::spawn::pin_current_thread(&others);
    }
    let work = tempfile::tempdir().unwrap_or_else(|e| fail(&e.to_string()));
    let a = work.path().join("cleaner");
    let b = work.path().join("offsets");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    println!("tern: {}", o.tern.display());
    cleaner_throughput_and_latency(&o, &a);
    consumer_offsets_startup(&o, &b);
}

//! Transactional producing against plain idempotent producing, side by side in one sitting
//! against a release `tern` (one shard, pinned to CPU 0 when there are two or more CPUs;
//! this harness runs on the others).
//!
//! Each mode sends `--records` records of `--size` bytes to a 6-partition topic in rounds of
//! N records (N = 10, then 1,000), linger 5 ms, acks=all, and reports the records per second
//! over the whole run and the produce → acknowledgement latency of the records (p50, p99,
//! p99.9), plus the latency of each round's end:
//! - idempotent: N sends, then `flush` (the round ends when all N are acknowledged);
//! - transactional: `begin_transaction`, N sends, `commit_transaction` (the round ends when
//!   the commit returns).
//!
//! ```text
//! cargo build --release -p tern -p tern-bench
//! target/release/txn-bench [--records 20000] [--size 1024]
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tern_bench::flags::Flags;
use tern_bench::spawn::{cpu_count, find_tern_bin, pin_current_thread, SpawnedBroker};

const TIMEOUT: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 6;

struct Options {
    records: usize,
    size: usize,
}

fn options() -> Options {
    let mut o = Options {
        records: 20_000,
        size: 1024,
    };
    for (flag, value) in FLAGS.pairs() {
        let number = || FLAGS.number(&flag, &value);
        match flag.as_str() {
            "--records" => o.records = number().max(1_000),
            "--size" => o.size = number().max(1),
            other => FLAGS.unknown(other),
        }
    }
    o
}

const FLAGS: Flags = Flags::new("txn-bench");

fn fail(message: &str) -> ! {
    FLAGS.fail(message)
}

/// Delivery latencies (microseconds) and failures.
#[derive(Clone)]
struct Recorder(Arc<Mutex<(Histogram<u64>, u64)>>);

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        let mut recorded = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if result.is_err() {
            recorded.1 += 1;
            return;
        }
        let us = sent.elapsed().as_micros() as u64;
        let _ = recorded.0.record(us.max(1));
    }
}

struct Row {
    mode: &'static str,
    per_second: f64,
    latency: Histogram<u64>,
    /// How long each round's end (commit or flush) took.
    commits: Histogram<u64>,
    failed: u64,
}

fn run(
    addr: &str,
    mode: &'static str,
    round: usize,
    transactional: bool,
    options: &Options,
    topic: &str,
) -> Row {
    let recorder = Recorder(Arc::new(Mutex::new((
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        0,
    ))));
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", addr)
        .set("broker.address.family", "v4")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    if transactional {
        config.set("transactional.id", format!("txn-bench-{mode}"));
    }
    // A BaseProducer polled here: rust-rdkafka's ThreadedProducer serves delivery reports
    // from a thread that polls every 100 ms, which would put a 100 ms floor under every
    // flush and commit.
    let producer: BaseProducer<Recorder> = config
        .create_with_context(recorder.clone())
        .unwrap_or_else(|e| fail(&format!("producer: {e}")));
    if transactional {
        producer
            .init_transactions(TIMEOUT)
            .unwrap_or_else(|e| fail(&format!("init_transactions: {e}")));
    }
    let payload = vec![b'x'; options.size];
    let mut commits = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < options.records {
        let batch = round.min(options.records - sent);
        if transactional {
            producer
                .begin_transaction()
                .unwrap_or_else(|e| fail(&format!("begin_transaction: {e}")));
        }
        for i in 0..batch {
            let mut record: BaseRecord<'_, [u8], [u8], Box<Instant>> =
                BaseRecord::with_opaque_to(topic, Box::new(Instant::now()))
                    .payload(&payload[..])
                    .partition(((sent + i) % PARTITIONS as usize) as i32);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
        }
        producer.poll(Duration::ZERO);
        sent += batch;
        let end_started = Instant::now();
        if transactional {
            producer
                .commit_transaction(TIMEOUT)
                .unwrap_or_else(|e| fail(&format!("commit_transaction: {e}")));
        } else {
            producer
                .flush(TIMEOUT)
                .unwrap_or_else(|e| fail(&format!("flush: {e}")));
        }
        let _ = commits.record((end_started.elapsed().as_micros() as u64).max(1));
    }
    producer
        .flush(TIMEOUT)
        .unwrap_or_else(|e| fail(&format!("flush: {e}")));
    let elapsed = started.elapsed();
    let recorded = recorder.0.lock().unwrap_or_else(|p| p.into_inner());
    Row {
        mode,
        per_second: options.records as f64 / elapsed.as_secs_f64(),
        latency: recorded.0.clone(),
        commits,
        failed: recorded.1,
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() {
    let options = options();
    let bin = find_tern_bin(None).unwrap_or_else(|e| fail(&e.to_string()));
    let pin = cpu_count() >= 2;
    if pin {
        pin_current_thread(&(1..cpu_count()).collect::<Vec<_>>());
    }
    let broker = SpawnedBroker::start(&bin, pin).unwrap_or_else(|e| fail(&e.to_string()));
    let addr = broker.addr.to_string();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .unwrap_or_else(|e| fail(&format!("admin: {e}")));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let modes: [(&'static str, usize, bool); 4] = [
        ("idem-10", 10, false),
        ("txn-10", 10, true),
        ("idem-1000", 1000, false),
        ("txn-1000", 1000, true),
    ];
    let mut rows = Vec::new();
    for (mode, round, transactional) in modes {
        let topic = format!("bench-{mode}");
        let created = runtime.block_on(admin.create_topics(
            [&NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        ));
        if let Err(error) = created {
            fail(&format!("create topic: {error}"));
        }
        rows.push(run(&addr, mode, round, transactional, &options, &topic));
    }
    println!(
        "{} records of {} B over {PARTITIONS} partitions, acks=all, linger 5 ms, broker {} (pinned: {pin})",
        options.records, options.size, bin.display()
    );
    println!(
        "{:<10} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7}",
        "mode", "msg/s", "p50 ms", "p99 ms", "p99.9 ms", "end p50", "end p99", "failed"
    );
    for (index, row) in rows.iter().enumerate() {
        // Transactional rows against the idempotent row of the same round size just before.
        let ratio = if index % 2 == 1 {
            format!(
                "   (x{:.2} of {}'s msg/s)",
                row.per_second / rows[index - 1].per_second,
                rows[index - 1].mode
            )
        } else {
            String::new()
        };
        println!(
            "{:<10} {:>9.0} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>9.2} {:>7}{ratio}",
            row.mode,
            row.per_second,
            ms(&row.latency, 0.5),
            ms(&row.latency, 0.99),
            ms(&row.latency, 0.999),
            ms(&row.commits, 0.5),
            ms(&row.commits, 0.99),
            row.failed,
        );
    }
    drop(broker);
}

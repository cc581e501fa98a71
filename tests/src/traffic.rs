//! A well-behaved client that keeps a stream going while a test attacks the broker: an
//! idempotent rdkafka producer (acks=all) and an assigned consumer, one record per round,
//! every round checked exactly (its offset, its value, read back once), each produce's
//! latency kept for the test to report.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::Message;
use rdkafka::Offset;

use crate::kafka::{self, Rec};
use crate::Broker;

/// Longest a good client may run.
const RUN_MAX: Duration = Duration::from_secs(240);

/// Longest the good client waits for one round (produce acknowledged and read back).
const ROUND_MAX: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct GoodClient {
    rounds: AtomicUsize,
    stop: AtomicBool,
    finished: AtomicBool,
    latencies: Mutex<Vec<Duration>>,
}

impl GoodClient {
    /// Produces and reads back one record per round on partition 0 of `topic` (which must
    /// be empty) until `stop`. Panics on any error, lost, duplicated or reordered record.
    pub fn run(&self, broker: &Broker, topic: &str) {
        let _finished = Finished(&self.finished);
        let producer = kafka::producer_with(
            broker,
            &[("linger.ms", "0"), ("enable.idempotence", "true")],
        );
        let consumer = kafka::consumer_with(broker, &[("fetch.wait.max.ms", "50")]);
        kafka::assign(&consumer, topic, &[0], Offset::Beginning);
        let deadline = Instant::now() + RUN_MAX;
        while !self.stop.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "good client ran past {RUN_MAX:?}"
            );
            let round = self.rounds.load(Ordering::SeqCst);
            let value = format!("good-{round}");
            let started = Instant::now();
            let acks = kafka::produce(&producer, topic, Some(0), &[Rec::value(value.clone())]);
            let latency = started.elapsed();
            assert_eq!(
                acks,
                vec![(0, round as i64)],
                "good client: ack of round {round}"
            );
            read_one(&consumer, round as i64, value.as_bytes());
            self.latencies.lock().expect("latencies").push(latency);
            self.rounds.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn rounds(&self) -> usize {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `more` rounds past now have completed.
    pub fn wait_rounds(&self, more: usize) {
        let target = self.rounds() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.rounds() < target {
            assert!(
                !self.finished.load(Ordering::SeqCst),
                "the good client stopped early (it panicked; see above)"
            );
            assert!(
                Instant::now() < deadline,
                "the good client made only {} rounds",
                self.rounds()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The produce latencies recorded so far, and forgets them.
    pub fn take_latencies(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.latencies.lock().expect("latencies"))
    }
}

struct Finished<'a>(&'a AtomicBool);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn read_one(consumer: &BaseConsumer, offset: i64, value: &[u8]) {
    let deadline = Instant::now() + ROUND_MAX;
    loop {
        assert!(
            Instant::now() < deadline,
            "good client: offset {offset} not read back"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                assert_eq!(
                    (message.offset(), message.payload()),
                    (offset, Some(value)),
                    "good client: read back"
                );
                return;
            }
            Some(Err(error)) => panic!("good client: consumer error: {error}"),
            None => {}
        }
    }
}

/// The `q` quantile (0..=1) of `samples`, in milliseconds.
pub fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    let mut sorted: Vec<Duration> = samples.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

//! The runner end to end against an in-memory stand-in for a broker, so threads, pacing,
//! warm-up, consumer assignment, drain and the JSON result are exercised without a network.
//!
//! Owns: `MemDriver`, a test-only `Driver` that acknowledges every message at once and hands
//! a copy to every consumer of the topic.
//! Must never: be reachable from the `tern-bench` binary; it measures nothing real.
//! Fits: complements the broker-free unit tests of the core and `spawn.rs`'s real-broker test.

// A poisoned lock in this test double means a test thread already panicked; unwrapping it is
// the right reaction even inside the trait's Result-returning methods.
#![allow(clippy::unwrap_in_result)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_bench::driver::{
    AckSink, Consumer, ConsumerSpec, Driver, DriverError, Outgoing, Producer, ProducerSpec,
    TopicSpec,
};
use tern_bench::open_loop::SendOutcome;
use tern_bench::report::{RunContext, RunResult};
use tern_bench::runner::{self, RunOptions};
use tern_bench::workload::Workload;

type Queue = Arc<Mutex<VecDeque<Vec<u8>>>>;

#[derive(Default)]
struct MemDriver {
    /// Topic name to the queues of its consumers.
    queues: Mutex<HashMap<String, Vec<Queue>>>,
    partitions: Mutex<HashMap<String, u32>>,
    /// The CPUs each producer's ("p", index) and consumer's ("c", index) thread was allowed,
    /// as first seen.
    affinities: Mutex<Vec<(&'static str, u32, Vec<usize>)>>,
}

impl MemDriver {
    fn note_affinity(&self, who: (&'static str, u32), seen: &mut bool) {
        if !std::mem::replace(seen, true) {
            let allowed = tern_bench::spawn::current_affinity();
            self.affinities
                .lock()
                .unwrap()
                .push((who.0, who.1, allowed));
        }
    }
}

struct MemProducer {
    driver: Arc<MemDriver>,
    acks: AckSink,
    index: u32,
    seen: bool,
}

impl Producer for MemProducer {
    fn try_send(&mut self, msg: &Outgoing<'_>) -> SendOutcome {
        self.driver.note_affinity(("p", self.index), &mut self.seen);
        let queues = self.driver.queues.lock().unwrap();
        for q in queues.get(msg.topic).into_iter().flatten() {
            q.lock().unwrap().push_back(msg.payload.to_vec());
        }
        self.acks.acked(msg.scheduled_ns, msg.payload.len() as u64);
        SendOutcome::Sent {
            len_bytes: msg.payload.len() as u64,
        }
    }
    fn flush(&mut self, _timeout: Duration) -> Result<(), DriverError> {
        Ok(())
    }
}

struct MemConsumer {
    driver: Arc<MemDriver>,
    queue: Queue,
    partitions: u64,
    index: u32,
    seen: bool,
}

impl Consumer for MemConsumer {
    fn poll(
        &mut self,
        timeout: Duration,
        on_payload: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, DriverError> {
        self.driver.note_affinity(("c", self.index), &mut self.seen);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(payload) = self.queue.lock().unwrap().pop_front() {
                on_payload(&payload);
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    fn assigned_partitions(&self) -> u64 {
        self.partitions
    }
}

/// `Driver` is implemented on a handle so producers can share the driver's queues.
struct MemHandle(Arc<MemDriver>);

impl Driver for MemHandle {
    fn name(&self) -> &'static str {
        "in-memory"
    }
    fn ensure_topics(&self, topics: &[TopicSpec], _timeout: Duration) -> Result<(), DriverError> {
        let mut p = self.0.partitions.lock().unwrap();
        for t in topics {
            p.insert(t.name.clone(), t.partitions);
        }
        Ok(())
    }
    fn producer(
        &self,
        spec: &ProducerSpec,
        acks: AckSink,
    ) -> Result<Box<dyn Producer>, DriverError> {
        Ok(Box::new(MemProducer {
            driver: self.0.clone(),
            acks,
            index: spec.index,
            seen: false,
        }))
    }
    fn consumer(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, DriverError> {
        let queue: Queue = Default::default();
        self.0
            .queues
            .lock()
            .unwrap()
            .entry(spec.topic.clone())
            .or_default()
            .push(queue.clone());
        let partitions = *self
            .0
            .partitions
            .lock()
            .unwrap()
            .get(&spec.topic)
            .expect("topic created first") as u64;
        Ok(Box::new(MemConsumer {
            driver: self.0.clone(),
            queue,
            partitions,
            index: spec.index,
            seen: false,
        }))
    }
}

#[test]
fn a_run_through_an_in_memory_driver_measures_every_scheduled_message() {
    let w = Workload::parse(
        r#"
        name = "mem"
        topics = 1
        partitions_per_topic = 2
        producers_per_topic = 2
        consumer_groups_per_topic = 2
        consumers_per_group = 1
        message_size = 100
        target_rate = "2000 msg/s"
        duration_s = 1
        warmup_s = 1
        "#,
        "inline",
    )
    .unwrap();
    let driver = MemHandle(Arc::new(MemDriver::default()));
    let out = runner::run(
        &driver,
        &RunOptions {
            workload: w.clone(),
            broker_pid: Some(std::process::id()),
            progress: false,
            thread_cpus: Vec::new(),
        },
    )
    .unwrap();
    assert!(out.notes.is_empty(), "notes: {:?}", out.notes);

    let ctx = RunContext {
        label: None,
        driver: "in-memory".into(),
        bootstrap: "-".into(),
        spawned: false,
        broker_pid: Some(std::process::id()),
    };
    let r = RunResult::from_output(&w, &out, &ctx);
    // 2000 msg/s for 1 s after 1 s of warm-up: exactly 2000 slots in the window, 2000 in warm-up.
    assert_eq!(r.counts.sent_msgs, 2_000);
    assert_eq!(r.counts.acked_msgs, 2_000);
    assert_eq!(r.warmup_counts.acked_msgs, 2_000);
    // Two groups each receive every message.
    assert_eq!(r.counts.consumed_msgs, 4_000);
    assert_eq!(r.counts.error_msgs(), 0);
    assert_eq!(r.counts.foreign_msgs, 0);
    assert_eq!(r.rates.offered_msgs_per_s, Some(2_000.0));
    assert!((r.rates.acked_msgs_per_s - 2_000.0).abs() < 1e-9);
    let ack = r.produce_ack_latency.as_ref().expect("ack latency");
    let e2e = r.end_to_end_latency.as_ref().expect("e2e latency");
    assert_eq!(ack.count, 2_000);
    assert_eq!(e2e.count, 4_000);
    assert!(r.time_series.len() >= 2);
    assert!(r.time_series[0].warmup && !r.time_series[1].warmup);
    assert!(
        r.broker.cpu_cores_used.is_some(),
        "CPU of the given pid was not sampled"
    );
}

#[test]
fn producer_and_consumer_threads_are_pinned_each_to_one_of_the_cpus_given() {
    let w = Workload::parse(
        r#"
        name = "pinned"
        topics = 1
        partitions_per_topic = 2
        producers_per_topic = 2
        consumer_groups_per_topic = 1
        consumers_per_group = 2
        message_size = 100
        target_rate = "1000 msg/s"
        duration_s = 1
        warmup_s = 0
        "#,
        "inline",
    )
    .unwrap();
    let allowed = tern_bench::spawn::current_affinity();
    let cpus = vec![allowed[0], *allowed.last().unwrap()];
    let run = |thread_cpus: Vec<usize>| {
        let driver = MemHandle(Arc::new(MemDriver::default()));
        let out = runner::run(
            &driver,
            &RunOptions {
                workload: w.clone(),
                broker_pid: None,
                progress: false,
                thread_cpus,
            },
        )
        .unwrap();
        let affinities = driver.0.affinities.lock().unwrap().clone();
        (out.notes, affinities)
    };

    let (notes, mut affinities) = run(cpus.clone());
    assert!(notes.is_empty(), "notes: {notes:?}");
    affinities.sort();
    // Producers take the CPUs in turn from the front, consumers from the back.
    let want = vec![
        ("c", 0, vec![cpus[1]]),
        ("c", 1, vec![cpus[0]]),
        ("p", 0, vec![cpus[0]]),
        ("p", 1, vec![cpus[1]]),
    ];
    assert_eq!(affinities, want);

    // A CPU this machine lacks: the run goes on unpinned and says so.
    let (notes, affinities) = run(vec![1023]);
    assert_eq!(notes.len(), 4, "notes: {notes:?}");
    assert!(notes[0].contains("could not pin"), "{notes:?}");
    assert!(
        affinities.iter().all(|(_, _, a)| *a == allowed),
        "{affinities:?}"
    );
}

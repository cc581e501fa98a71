//! KIP-848 consumer groups end to end: a real `tern serve` process and librdkafka consumers
//! with `group.protocol=consumer` (the broker computes the assignment; ConsumerGroupHeartbeat),
//! plus a raw-wire client for the error answers. Build the broker first
//! (`cargo build -p tern`).

mod groups_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use groups_support::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;

/// Broker flags for these tests: members heartbeat every 300 ms (Kafka's default is 5 s,
/// which would make each reconciliation step take seconds), sessions last 6 s.
const BROKER_FLAGS: &[&str] = &[
    "--default-partitions",
    "6",
    "--group-consumer-heartbeat-interval-ms",
    "300",
    "--group-consumer-session-timeout-ms",
    "6000",
];

fn kip848_config(broker: &Broker, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", group)
        .set("group.protocol", "consumer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("fetch.wait.max.ms", "100");
    if let Ok(debug) = std::env::var("RDKAFKA_DEBUG") {
        config.set("debug", debug);
    }
    config
}

fn kip848_consumer(broker: &Broker, group: &str) -> BaseConsumer {
    kip848_config(broker, group).create().expect("consumer")
}

/// (topic, partition) pairs a consumer is assigned now.
fn assigned(consumer: &BaseConsumer) -> BTreeSet<(String, i32)> {
    consumer
        .assignment()
        .map(|list| {
            list.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect()
        })
        .unwrap_or_default()
}

/// What each consumer received: payloads in order, per consumer.
struct Seen {
    payloads: Vec<Vec<String>>,
    /// When each payload arrived (per consumer, aligned with `payloads`).
    at: Vec<Vec<Instant>>,
}

impl Seen {
    fn new(consumers: usize) -> Seen {
        Seen {
            payloads: vec![Vec::new(); consumers],
            at: vec![Vec::new(); consumers],
        }
    }

    fn total(&self) -> usize {
        self.payloads.iter().map(Vec::len).sum()
    }
}

/// Polls every consumer until `done` holds (panics after `timeout`), committing each message
/// synchronously when `commit` is set.
fn poll_until(
    consumers: &[&BaseConsumer],
    seen: &mut Seen,
    commit: bool,
    timeout: Duration,
    done: impl Fn(&[&BaseConsumer], &Seen) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(consumers, seen) {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {timeout:?}; assignments: {:?}; seen {:?}",
            consumers.iter().map(|c| assigned(c)).collect::<Vec<_>>(),
            seen.payloads.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for (index, consumer) in consumers.iter().enumerate() {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(10)) {
                let payload =
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
                seen.payloads[index].push(payload);
                seen.at[index].push(Instant::now());
                if commit {
                    consumer
                        .commit_message(&message, CommitMode::Sync)
                        .expect("commit");
                }
            }
        }
    }
}

/// Assignments of all consumers are disjoint and cover `expected` exactly.
fn split_exactly(consumers: &[&BaseConsumer], expected: &BTreeSet<(String, i32)>) -> bool {
    let sets: Vec<BTreeSet<(String, i32)>> = consumers.iter().map(|c| assigned(c)).collect();
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<(String, i32)> = sets.iter().flatten().cloned().collect();
    sets.iter().all(|s| !s.is_empty()) && total == union.len() && union == *expected
}

fn partitions_of(topic: &str, count: i32) -> BTreeSet<(String, i32)> {
    (0..count).map(|p| (topic.to_owned(), p)).collect()
}

#[test]
fn two_then_three_members_split_partitions_with_no_gap_or_overlap() {
    let broker = Broker::start(1, BROKER_FLAGS);
    produce(&broker, "kip848-split", 6, 600);
    let all = partitions_of("kip848-split", 6);
    let a = kip848_consumer(&broker, "g848-split");
    let b = kip848_consumer(&broker, "g848-split");
    a.subscribe(&["kip848-split"]).unwrap();
    b.subscribe(&["kip848-split"]).unwrap();
    let mut seen = Seen::new(3);
    poll_until(
        &[&a, &b],
        &mut seen,
        true,
        Duration::from_secs(60),
        |c, seen| split_exactly(c, &all) && seen.total() >= 100,
    );
    let c = kip848_consumer(&broker, "g848-split");
    c.subscribe(&["kip848-split"]).unwrap();
    poll_until(
        &[&a, &b, &c],
        &mut seen,
        true,
        Duration::from_secs(60),
        |c, _| split_exactly(c, &all) && c.iter().all(|c| assigned(c).len() == 2),
    );
    poll_until(
        &[&a, &b, &c],
        &mut seen,
        true,
        Duration::from_secs(60),
        |_, seen| seen.total() >= 600,
    );
    // Each record exactly once: every message was committed before its partition moved.
    let mut all_seen: Vec<&String> = seen.payloads.iter().flatten().collect();
    all_seen.sort();
    let before = all_seen.len();
    all_seen.dedup();
    assert_eq!(before, all_seen.len(), "duplicates delivered");
    assert_eq!(all_seen.len(), 600);
    assert!(
        seen.payloads.iter().all(|p| !p.is_empty()),
        "every member consumed"
    );
}

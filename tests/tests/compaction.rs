//! Log compaction (`cleanup.policy=compact`) as clients see it: a keyed topic keeps the latest
//! value of each key at the offset it was written, tombstones stay `delete.retention.ms` and
//! then go, a keyless record is refused (KIP-467), readers during cleaning and a kill -9 in the
//! middle of a pass see a correct log, and `__consumer_offsets` is compacted with the
//! committed offsets intact.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tern_protocol::batch::{BatchBuilder, BuilderRecord};
use tern_protocol::types::TimestampMs;
use tern_tests::kafka::{self, Rec};
use tern_tests::{rs, wire, Broker};

/// The cleaner looks every 200 ms (Kafka's default is 15 s).
const CLEANER_ARGS: [&str; 2] = ["--log-cleaner-backoff-ms", "200"];

/// A compacted topic whose every sealed segment is due at once: small segments, no dirty
/// ratio threshold, tombstones kept `delete_retention_ms`.
fn compacted_topic(broker: &Broker, name: &str, delete_retention_ms: &str) {
    kafka::create_topic(
        broker,
        name,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "16384"),
            ("segment.ms", "1000"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", delete_retention_ms),
        ],
    );
}

/// (offset, key, value) of what was produced or read; a `None` value is a tombstone.
type Kv = (i64, String, Option<String>);

/// Produces `rounds` records over `keys` keys (every eleventh a tombstone), then, after
/// `segment.ms`, one record of key `filler`: the roll before it seals everything else, so
/// all but the filler is cleanable.
fn produce_versions(broker: &Broker, topic: &str, rounds: usize, keys: usize) -> Vec<Kv> {
    let producer = kafka::producer(broker);
    let records: Vec<Rec> = (0..rounds)
        .map(|i| Rec {
            key: Some(format!("key-{:03}", i % keys).into_bytes()),
            value: (i % 11 != 5).then(|| format!("value {i} {}", "x".repeat(100)).into_bytes()),
            ..Rec::default()
        })
        .collect();
    let offsets = kafka::produce(&producer, topic, Some(0), &records);
    std::thread::sleep(Duration::from_millis(1_100));
    let filler = Rec {
        key: Some(b"filler".to_vec()),
        value: Some(b"last".to_vec()),
        ..Rec::default()
    };
    let filler_offset =
        kafka::produce(&producer, topic, Some(0), std::slice::from_ref(&filler))[0].1;
    records
        .iter()
        .chain(std::iter::once(&filler))
        .zip(
            offsets
                .iter()
                .map(|o| o.1)
                .chain(std::iter::once(filler_offset)),
        )
        .map(|(rec, offset)| (offset, text(&rec.key).unwrap(), text(&rec.value)))
        .collect()
}

fn text(bytes: &Option<Vec<u8>>) -> Option<String> {
    bytes
        .as_ref()
        .map(|b| String::from_utf8(b.clone()).expect("utf-8"))
}

/// The latest record of each key, in offset order, without tombstones when `drop_tombstones`.
fn latest(written: &[Kv], drop_tombstones: bool) -> Vec<Kv> {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (offset, key, _) in written {
        last.insert(key, *offset);
    }
    written
        .iter()
        .filter(|(offset, key, value)| {
            last[key.as_str()] == *offset && (value.is_some() || !drop_tombstones)
        })
        .cloned()
        .collect()
}

/// Every record rdkafka reads from offset 0 to the high watermark.
fn read_all(broker: &Broker, topic: &str) -> Vec<Kv> {
    let (_, high) = kafka::watermarks(broker, topic, 0);
    let consumer = kafka::consumer(broker);
    kafka::assign(&consumer, topic, &[0], Offset::Beginning);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.last().is_none_or(|r: &Kv| r.0 < high - 1) {
        assert!(
            Instant::now() < deadline,
            "read {} records, not to {high}",
            out.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                use rdkafka::Message;
                out.push((
                    message.offset(),
                    String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap(),
                    message
                        .payload()
                        .map(|p| String::from_utf8(p.to_vec()).unwrap()),
                ));
            }
            Some(Err(error)) => panic!("consumer error after {} records: {error}", out.len()),
            None => {}
        }
    }
    out
}

/// The same through rskafka, in fetches of at most 50 MB from offset 0.
fn read_all_rskafka(broker: &Broker, topic: &str) -> Vec<Kv> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let client = rs::client(broker).await;
        let partition = rs::partition(&client, topic, 0).await;
        let mut out = Vec::new();
        let mut next = 0i64;
        loop {
            let (records, high) = partition
                .fetch_records(next, 1..50_000_000, 1_000)
                .await
                .expect("rskafka fetch");
            for r in records.into_iter().filter(|r| r.offset >= next) {
                out.push((
                    r.offset,
                    String::from_utf8(r.record.key.clone().unwrap_or_default()).unwrap(),
                    r.record
                        .value
                        .clone()
                        .map(|v| String::from_utf8(v).unwrap()),
                ));
            }
            match out.last() {
                Some(last) if last.0 + 1 < high => next = last.0 + 1,
                _ => break out,
            }
        }
    })
}

/// Waits until `done` holds, polling every 100 ms; panics with `what` after `within`.
fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A correct view of a log being compacted: every latest record, each record read one that
/// was written at that offset, offsets increasing.
fn assert_valid_view(read: &[Kv], written: &[Kv], when: &str) {
    let written_set: BTreeSet<&Kv> = written.iter().collect();
    for pair in read.windows(2) {
        assert!(pair[0].0 < pair[1].0, "{when}: offsets increase: {pair:?}");
    }
    for record in read {
        assert!(
            written_set.contains(record),
            "{when}: {record:?} was not written so"
        );
    }
    let read_set: BTreeSet<&Kv> = read.iter().collect();
    for record in latest(written, false) {
        assert!(
            read_set.contains(&record),
            "{when}: latest {record:?} missing"
        );
    }
}

#[test]
fn a_compacted_topic_keeps_the_latest_value_of_each_key_and_tombstones_for_their_retention() {
    let broker = Broker::start_with(1, &CLEANER_ARGS);
    compacted_topic(&broker, "changelog", "3000");
    let written = produce_versions(&broker, "changelog", 3_000, 40);
    assert_valid_view(&read_all(&broker, "changelog"), &written, "before cleaning");

    // Cleaned: exactly the latest record of each key (tombstones too, for now), at the offset
    // it was written, through both clients.
    let expected = latest(&written, false);
    eventually(
        Duration::from_secs(30),
        "the cleaner compacts the topic",
        || read_all(&broker, "changelog") == expected,
    );
    assert_eq!(read_all_rskafka(&broker, "changelog"), expected);
    assert!(
        expected.iter().any(|r| r.2.is_none()),
        "the fixture ends some keys with a tombstone"
    );
    assert!(broker.metric("tern_cleaner_passes_total") >= 1);
    assert!(
        broker.metric("tern_cleaner_removed_records_total")
            >= (written.len() - expected.len()) as u64
    );
    let (low, high) = kafka::watermarks(&broker, "changelog", 0);
    assert_eq!((low, high), (0, written.len() as i64), "offsets never move");

    // After delete.retention.ms the tombstones go too, and nothing else.
    let without_tombstones = latest(&written, true);
    eventually(
        Duration::from_secs(30),
        "tombstones go after delete.retention.ms",
        || read_all(&broker, "changelog") == without_tombstones,
    );

    // The cleaned log survives a restart exactly.
    let mut broker = broker;
    assert!(broker.stop(), "stopped cleanly");
    broker.restart();
    assert_eq!(read_all(&broker, "changelog"), without_tombstones);
    assert_eq!(read_all_rskafka(&broker, "changelog"), without_tombstones);
}

#[test]
fn a_keyless_record_to_a_compacted_topic_is_refused_and_keyed_ones_are_not() {
    let broker = Broker::start_with(1, &CLEANER_ARGS);
    compacted_topic(&broker, "keyed-only", "86400000");
    let producer = kafka::producer(&broker);
    let outcome = kafka::try_produce(&producer, "keyed-only", Some(0), &[Rec::value("no key")]);
    match &outcome[0] {
        Err(KafkaError::MessageProduction(code)) => {
            assert_eq!(*code, RDKafkaErrorCode::InvalidRecord, "{outcome:?}")
        }
        other => panic!("a keyless record was not refused: {other:?}"),
    }
    let keyed = Rec {
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        ..Rec::default()
    };
    assert_eq!(
        kafka::produce(&producer, "keyed-only", Some(0), &[keyed]),
        vec![(0, 0)]
    );

    // On the wire (Produce v8): INVALID_RECORD (87) naming the keyless record's index in its
    // batch, and nothing of the batch is written.
    let mut builder = BatchBuilder::new(TimestampMs(1_700_000_000_000));
    for (i, key) in [Some("a"), None, Some("c"), None].into_iter().enumerate() {
        builder = builder.record(BuilderRecord {
            timestamp_delta_ms: i as i64,
            key: key.map(|k| bytes::Bytes::from(k.as_bytes().to_vec())),
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Vec::new(),
        });
    }
    let body = wire::produce_v3_body("keyed-only", 0, &builder.build());
    let frame = wire::round_trip(
        broker.addr,
        &wire::request(0, 8, 7, &body),
        Duration::from_secs(10),
    )
    .expect("produce v8 round trip");
    let (code, record_errors, message) = parse_produce_v8(&frame).expect("a produce v8 response");
    assert_eq!(code, 87, "INVALID_RECORD");
    assert_eq!(record_errors, vec![1, 3], "the keyless records' indexes");
    assert!(message.contains("without key"), "{message}");
    assert_eq!(
        kafka::watermarks(&broker, "keyed-only", 0),
        (0, 1),
        "nothing more written"
    );
}

/// `(error_code, record_errors' batch indexes, error_message)` of a one-partition Produce v8
/// response:
///
/// ```text
/// correlation_id:i32 [topic:string [partition:i32 error_code:i16 base_offset:i64
///   log_append_time:i64 log_start_offset:i64 [batch_index:i32 message:nullable_string]
///   error_message:nullable_string]] throttle_time_ms:i32
/// ```
fn parse_produce_v8(frame: &[u8]) -> Option<(i16, Vec<i32>, String)> {
    let mut at = 4usize; // correlation id
    let mut take = |len: usize| -> Option<&[u8]> {
        let bytes = frame.get(at..at + len)?;
        at += len;
        Some(bytes)
    };
    let i16_at = |b: &[u8]| i16::from_be_bytes([b[0], b[1]]);
    let i32_at = |b: &[u8]| i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    take(4)?; // one topic
    let name_len = i16_at(take(2)?) as usize;
    take(name_len)?;
    take(4)?; // one partition
    take(4)?; // index
    let code = i16_at(take(2)?);
    take(24)?; // base offset, log append time, log start offset
    let count = i32_at(take(4)?);
    let mut indexes = Vec::new();
    for _ in 0..count {
        indexes.push(i32_at(take(4)?));
        let len = i16_at(take(2)?);
        if len > 0 {
            take(len as usize)?;
        }
    }
    let len = i16_at(take(2)?);
    let message = if len > 0 {
        String::from_utf8(take(len as usize)?.to_vec()).ok()?
    } else {
        String::new()
    };
    Some((code, indexes, message))
}

#[test]
fn readers_during_cleaning_see_a_correct_log() {
    // Many versions of few keys make a pass long enough to be caught in the middle.
    let mut broker = Broker::start_with(1, &["--log-cleaner-backoff-ms", "60000"]);
    compacted_topic(&broker, "big", "86400000");
    let written = produce_versions(&broker, "big", 60_000, 500);
    broker.stop();
    broker.set_extra_args(vec!["--log-cleaner-backoff-ms".into(), "200".into()]);
    broker.restart();

    // Readers while the cleaner works see a correct view every time: full reads from offset 0
    // until the first pass has finished and one more read after it.
    let (mut during, mut after) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while after == 0 {
        assert!(Instant::now() < deadline, "no pass finished");
        let passes_before = broker.metric("tern_cleaner_passes_total");
        assert_valid_view(&read_all(&broker, "big"), &written, "while cleaning");
        if passes_before == 0 {
            during += 1;
        } else {
            after += 1;
        }
    }
    eprintln!("{during} full reads began before the first pass ended, {after} after");
    let expected = latest(&written, false);
    eventually(Duration::from_secs(60), "the first clean", || {
        read_all(&broker, "big") == expected
    });
}

/// The broker dies (abort, as a kill -9) at `step` of a cleaned group's swap: after a restart
/// the log reads correctly, and the next pass finishes the job.
fn killed_mid_clean(step: u32) {
    let mut broker = Broker::start_with(1, &["--log-cleaner-backoff-ms", "60000"]);
    compacted_topic(&broker, "big", "86400000");
    let written = produce_versions(&broker, "big", 20_000, 300);
    broker.stop();
    broker.set_extra_args(
        [
            "--log-cleaner-backoff-ms",
            "100",
            "--fault-clean-abort-after-step",
            &step.to_string(),
        ]
        .map(String::from)
        .to_vec(),
    );
    broker.relaunch();
    assert!(
        broker
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|status| !status.success()),
        "the broker aborted mid-clean"
    );
    assert!(broker.log().contains("aborting mid-clean"));
    broker.kill9(); // reaps the process
    broker.set_extra_args(
        ["--log-cleaner-backoff-ms", "60000"]
            .map(String::from)
            .to_vec(),
    );
    broker.restart();
    let after = read_all(&broker, "big");
    assert_valid_view(
        &after,
        &written,
        &format!("restarted after a crash at step {step}"),
    );
    if step >= 2 {
        assert_ne!(
            after, written,
            "the swap's intent was durable: open completed it"
        );
    }
    broker.stop();
    broker.set_extra_args(
        ["--log-cleaner-backoff-ms", "100"]
            .map(String::from)
            .to_vec(),
    );
    broker.restart();
    let expected = latest(&written, false);
    eventually(
        Duration::from_secs(60),
        "the clean after the restart",
        || read_all(&broker, "big") == expected,
    );
}

#[test]
fn a_crash_before_the_swap_intent_leaves_the_old_log() {
    killed_mid_clean(1);
}

#[test]
fn a_crash_after_the_swap_intent_is_completed_at_restart() {
    killed_mid_clean(2);
}

#[test]
fn consumer_offsets_is_compacted_and_committed_offsets_survive() {
    let mut broker = Broker::start_with(
        1,
        &[
            "--log-cleaner-backoff-ms",
            "200",
            "--offsets-topic-partitions",
            "1",
            "--offsets-topic-segment-bytes",
            "16384",
        ],
    );
    kafka::create_topic(&broker, "events", 4, &[]);
    let consumer = kafka::consumer_with(&broker, &[("group.id", "compacted-group")]);
    // 2,000 commits of four partitions: a few hundred segments' worth of superseded records.
    for i in 0..2_000i64 {
        let mut list = TopicPartitionList::new();
        for partition in 0..4 {
            list.add_partition_offset(
                "events",
                partition,
                Offset::Offset(i * 10 + i64::from(partition)),
            )
            .unwrap();
        }
        consumer.commit(&list, CommitMode::Sync).expect("commit");
    }
    eventually(
        Duration::from_secs(30),
        "__consumer_offsets is cleaned",
        || broker.metric("tern_cleaner_removed_records_total") > 1_000,
    );
    let dir = broker.data_dir().join("data").join("__consumer_offsets-0");
    let bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        bytes < 200 * 1024,
        "__consumer_offsets holds {bytes} bytes after cleaning"
    );
    drop(consumer);
    assert!(broker.stop(), "stopped cleanly");
    broker.restart();
    let consumer = kafka::consumer_with(&broker, &[("group.id", "compacted-group")]);
    let mut wanted = TopicPartitionList::new();
    for partition in 0..4 {
        wanted.add_partition("events", partition);
    }
    let committed = consumer
        .committed_offsets(wanted, Duration::from_secs(30))
        .expect("offset fetch");
    for partition in 0..4 {
        let element = committed.find_partition("events", partition).unwrap();
        assert_eq!(
            element.offset(),
            Offset::Offset(19_990 + i64::from(partition))
        );
    }
}

/// Replicas clean their own logs and followers copy a compacted leader's gaps: the preferred
/// leader is down while another replica takes the writes and cleans them, comes back, catches
/// up from the cleaned log (whole batches missing), and, led by it again, the partition reads
/// exactly the compacted view.
#[test]
fn a_follower_catches_up_from_a_compacted_leader_and_then_serves_the_same_log() {
    let mut cluster = tern_tests::cluster::Cluster::start_with(3, &CLEANER_ARGS);
    let all = [0usize, 1, 2];
    kafka::try_create_topic(
        &cluster.brokers[0],
        "replicated",
        1,
        3,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "16384"),
            ("segment.ms", "1000"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    )
    .expect("create the replicated compacted topic");
    let layout = tern_tests::cluster::wait_for_layout(
        &cluster,
        &all,
        "replicated",
        Duration::from_secs(30),
        |l| l[&0].2.len() == 3,
    );
    let preferred = layout[&0].1[0] as usize;
    assert!(cluster.brokers[preferred].stop(), "stopped cleanly");
    let live: Vec<usize> = all.iter().copied().filter(|b| *b != preferred).collect();
    let layout = tern_tests::cluster::wait_for_layout(
        &cluster,
        &live,
        "replicated",
        Duration::from_secs(60),
        |l| l[&0].0 >= 0 && l[&0].0 != preferred as i32,
    );
    let leader = layout[&0].0 as usize;
    let written = produce_versions(&cluster.brokers[leader], "replicated", 3_000, 40);
    let expected = latest(&written, false);
    eventually(Duration::from_secs(30), "the leader cleans", || {
        read_all(&cluster.brokers[leader], "replicated") == expected
    });

    cluster.brokers[preferred].restart();
    tern_tests::cluster::wait_for_layout(
        &cluster,
        &all,
        "replicated",
        Duration::from_secs(60),
        |l| l[&0].2.len() == 3,
    );
    let output = std::process::Command::new(tern_tests::tern_binary())
        .args(["topic", "elect-leaders", "replicated", "--bootstrap"])
        .arg(cluster.brokers[leader].bootstrap())
        .output()
        .expect("run tern topic elect-leaders");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    tern_tests::cluster::wait_for_layout(
        &cluster,
        &all,
        "replicated",
        Duration::from_secs(30),
        |l| l[&0].0 == preferred as i32,
    );
    assert_eq!(
        read_all(&cluster.brokers[preferred], "replicated"),
        expected
    );
    assert_eq!(
        read_all_rskafka(&cluster.brokers[preferred], "replicated"),
        expected
    );
}

//! Durability across broker restarts: everything survives a graceful stop, and every record
//! acknowledged with acks=all survives kill -9 at the same partition and offset (DESIGN.md
//! §3: acked data is never lost to a crash).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rskafka::client::partition::Compression;
use tern_tests::kafka::{self, Rec};
use tern_tests::{rs, Broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_topic_configs_survive_a_graceful_restart() {
    let mut broker = Broker::start(2);
    let topic = "survives-restart";
    let partitions = 3;
    kafka::create_topic(&broker, topic, partitions, &[("retention.ms", "86400000")]);
    let sent: Vec<(i32, Rec)> = (0..900)
        .map(|i| (i % partitions, Rec::value(format!("before-{i:04}"))))
        .collect();
    let items: Vec<(Option<i32>, &Rec)> = sent.iter().map(|(p, rec)| (Some(*p), rec)).collect();
    let acks = kafka::try_produce_each(&kafka::producer(&broker), topic, &items);
    assert!(
        acks.iter().all(Result::is_ok),
        "every record acknowledged before the restart"
    );

    assert!(
        broker.stop(),
        "graceful stop exits with success; log:\n{}",
        broker.log()
    );
    broker.restart();

    assert_eq!(
        kafka::partition_count(&broker, topic),
        Some(partitions as usize),
        "topic after restart"
    );
    let consumed = kafka::consume(
        &broker,
        topic,
        &(0..partitions).collect::<Vec<_>>(),
        sent.len(),
    );
    let mut by_partition: BTreeMap<i32, Vec<(i64, Vec<u8>)>> = BTreeMap::new();
    for c in consumed {
        by_partition
            .entry(c.partition)
            .or_default()
            .push((c.offset, c.record.value.expect("value")));
    }
    for partition in 0..partitions {
        let expected: Vec<(i64, Vec<u8>)> = sent
            .iter()
            .filter(|(p, _)| *p == partition)
            .enumerate()
            .map(|(offset, (_, rec))| (offset as i64, rec.value.clone().expect("value")))
            .collect();
        assert_eq!(
            by_partition.get(&partition),
            Some(&expected),
            "partition {partition} after restart"
        );
    }

    // Offsets continue where they were, and configs were kept.
    let client = rs::client(&broker).await;
    let pc = rs::partition(&client, topic, 0).await;
    let offsets = rs::produce(
        &pc,
        vec![rs::record(None, Some(b"after"), &[], 1_700_000_000_000)],
        Compression::NoCompression,
    )
    .await;
    assert_eq!(
        offsets,
        vec![300],
        "next offset in partition 0 after restart"
    );
    let configs = kafka::wait(kafka::admin(&broker).describe_configs(
        [&rdkafka::admin::ResourceSpecifier::Topic(topic)],
        &kafka::admin_options(),
    ))
    .expect("DescribeConfigs");
    let retention = configs[0]
        .as_ref()
        .ok()
        .and_then(|c| c.get("retention.ms"))
        .and_then(|e| e.value.clone());
    assert_eq!(
        retention.as_deref(),
        Some("86400000"),
        "topic config after restart"
    );
}

/// Records every acknowledged delivery (partition, offset, value) and counts failures.
#[derive(Default)]
struct AckLedger {
    acked: Mutex<Vec<(i32, i64, Vec<u8>)>>,
    acked_count: AtomicUsize,
    failed_count: AtomicUsize,
}

impl ClientContext for AckLedger {}

impl ProducerContext for AckLedger {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(message) => {
                let value = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
                self.acked.lock().expect("ledger lock").push((
                    message.partition(),
                    message.offset(),
                    value,
                ));
                self.acked_count.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                self.failed_count.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[test]
fn acks_all_records_survive_kill_9() {
    const PARTITIONS: i32 = 4;
    /// Acknowledgements to wait for before the crash.
    const ACKS_BEFORE_KILL: usize = 5_000;
    /// Records the producer keeps in flight, so the crash lands mid-stream.
    const IN_FLIGHT_MAX: i32 = 2_000;

    let mut broker = Broker::start(2);
    let topic = "survives-kill-9";
    kafka::create_topic(&broker, topic, PARTITIONS, &[]);
    let mut config = kafka::client_config(&broker);
    config
        // Counting acked records exactly needs no retries behind the test's back.
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("linger.ms", "2")
        // After the crash, undelivered records fail quickly instead of waiting for a broker
        // that is not coming back during this loop.
        .set("message.timeout.ms", "4000")
        .set("reconnect.backoff.max.ms", "200");
    let producer: ThreadedProducer<AckLedger> = config
        .create_with_context(AckLedger::default())
        .expect("producer");

    let killed = AtomicBool::new(false);
    let sent_count = std::thread::scope(|scope| {
        let ledger = producer.context();
        let broker = &mut broker;
        let killed = &killed;
        scope.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            while ledger.acked_count.load(Ordering::SeqCst) < ACKS_BEFORE_KILL {
                assert!(
                    Instant::now() < deadline,
                    "only {} acks within 90 s",
                    ledger.acked_count.load(Ordering::SeqCst)
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            broker.kill9();
            killed.store(true, Ordering::SeqCst);
        });

        // Produce until shortly after the crash, keeping records in flight throughout.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut killed_at: Option<Instant> = None;
        let mut sent = 0usize;
        while killed_at.is_none_or(|at| at.elapsed() < Duration::from_millis(300)) {
            assert!(Instant::now() < deadline, "produce loop did not finish");
            if killed_at.is_none() && killed.load(Ordering::SeqCst) {
                killed_at = Some(Instant::now());
            }
            if producer.in_flight_count() >= IN_FLIGHT_MAX {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let value = format!("kill9-{sent:07}");
            let record = BaseRecord::to(topic)
                .partition((sent % PARTITIONS as usize) as i32)
                .payload(value.as_str())
                .key("");
            match producer.send::<str, str>(record) {
                Ok(()) => sent += 1,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err((error, _)) => panic!("enqueue: {error}"),
            }
        }
        sent
    });
    // Every outstanding record resolves (fails) within message.timeout.ms.
    let _ = producer.flush(Duration::from_secs(15));
    let ledger = producer.context();
    let acked_count = ledger.acked_count.load(Ordering::SeqCst);
    let failed_count = ledger.failed_count.load(Ordering::SeqCst);
    assert_eq!(
        acked_count + failed_count,
        sent_count,
        "every sent record got a delivery report"
    );
    assert!(
        acked_count >= ACKS_BEFORE_KILL,
        "acks before the crash: {acked_count}"
    );
    assert!(
        failed_count > 0,
        "the crash must land while records are in flight (none failed)"
    );
    let acked: Vec<(i32, i64, Vec<u8>)> =
        std::mem::take(&mut *ledger.acked.lock().expect("ledger lock"));
    drop(producer);

    broker.restart();

    // Read everything now in the log; it holds every acked record and possibly some that
    // were written but not acknowledged before the crash.
    let mut in_log: BTreeMap<(i32, i64), Vec<u8>> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let (low, high) = kafka::watermarks(&broker, topic, partition);
        assert_eq!(low, 0, "partition {partition} log start after the crash");
        let consumed = kafka::consume(&broker, topic, &[partition], high as usize);
        for (index, c) in consumed.into_iter().enumerate() {
            assert_eq!(
                c.offset, index as i64,
                "partition {partition}: offsets contiguous after recovery"
            );
            in_log.insert((partition, c.offset), c.record.value.expect("value"));
        }
    }
    let mut missing = Vec::new();
    for (partition, offset, value) in &acked {
        match in_log.get(&(*partition, *offset)) {
            Some(found) if found == value => {}
            found => missing.push(format!(
                "{partition}/{offset}: acked {:?}, found {:?}",
                String::from_utf8_lossy(value),
                found.map(|v| String::from_utf8_lossy(v).into_owned())
            )),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {acked_count} acked records lost or changed, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        in_log.len() >= acked.len(),
        "the log holds at least the acked records"
    );
}

/// One raw Produce v3 of `records` to partition 0 of `topic` on a new connection: the error
/// code and base offset answered. Raw frames keep producer ids and sequences exact.
fn produce_v3(broker: &Broker, topic: &str, records: &[u8]) -> (i16, i64) {
    use tern_tests::wire::{self, Fate, RawConnection};
    let addr = broker.bootstrap().parse().expect("address");
    let mut connection = RawConnection::connect(addr);
    connection
        .send(&wire::request(
            0,
            3,
            1,
            &wire::produce_v3_body(topic, 0, records),
        ))
        .expect("send");
    match connection.fate(Duration::from_secs(10)) {
        Fate::Answered(frame) => wire::parse_produce_v3(&frame).expect("Produce v3 response"),
        other => panic!("no Produce answer: {other:?}"),
    }
}

/// An idempotent producer's state is rebuilt from the log after a restart, graceful or
/// kill -9: the producer's next sequence is accepted where it left off, and a batch it
/// retries across the restart is answered with its original offset instead of being written
/// twice. Raw Produce v3 frames, so producer id, epoch and sequences are exact.
#[test]
fn idempotent_producer_sequences_survive_restarts_without_duplicates() {
    use tern_protocol::batch::BatchBuilder;
    use tern_protocol::types::{ProducerId, TimestampMs};

    const UNKNOWN_PRODUCER_ID: i16 = 59;
    const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    let mut broker = Broker::start(1);
    let topic = "idempotent-restarts";
    kafka::create_topic(&broker, topic, 1, &[]);
    let batch = |producer: i64, sequence: i32, records: usize| {
        let mut builder = BatchBuilder::new(TimestampMs(1_700_000_000_000));
        builder.producer_id = ProducerId(producer);
        builder.producer_epoch = 0;
        builder.base_sequence = sequence;
        for i in 0..records {
            builder = builder.value(i as i64, format!("p{producer}-s{}", sequence + i as i32));
        }
        builder.build().to_vec()
    };
    let produce = |broker: &Broker, records: &[u8]| produce_v3(broker, topic, records);

    assert_eq!(produce(&broker, &batch(1000, 0, 3)), (0, 0));
    assert_eq!(produce(&broker, &batch(1000, 3, 2)), (0, 3));
    assert_eq!(produce(&broker, &batch(2000, 0, 1)), (0, 5));
    assert_eq!(
        produce(&broker, &batch(1000, 3, 2)),
        (0, 3),
        "retry before restart"
    );
    assert_eq!(
        produce(&broker, &batch(1000, 9, 1)).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER
    );

    assert!(broker.stop(), "graceful stop");
    broker.restart();
    assert_eq!(
        produce(&broker, &batch(1000, 3, 2)),
        (0, 3),
        "retry after restart"
    );
    assert_eq!(
        produce(&broker, &batch(2000, 0, 1)),
        (0, 5),
        "first batch retried"
    );
    assert_eq!(produce(&broker, &batch(1000, 5, 1)), (0, 6));
    assert_eq!(produce(&broker, &batch(3000, 4, 1)).0, UNKNOWN_PRODUCER_ID);

    broker.kill9();
    broker.restart();
    assert_eq!(
        produce(&broker, &batch(1000, 5, 1)),
        (0, 6),
        "retry after kill -9"
    );
    assert_eq!(produce(&broker, &batch(2000, 1, 1)), (0, 7));
    assert_eq!(
        produce(&broker, &batch(1000, 7, 1)).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER
    );
    assert_eq!(
        kafka::watermarks(&broker, topic, 0),
        (0, 8),
        "nothing written twice"
    );
}

/// A producer whose last batch lies far behind the end of the log (more than the 2 MiB a
/// restart without a replay point would scan) is still known after kill -9, because the
/// partition's replay point holds its state: its retry is answered with the original offset
/// instead of being written twice. Raw Produce v3 frames, so producer id and sequences are
/// exact.
#[test]
fn a_producer_far_behind_the_log_end_is_known_after_kill_9_through_the_replay_point() {
    use tern_protocol::batch::BatchBuilder;
    use tern_protocol::types::{ProducerId, TimestampMs};

    let mut broker = Broker::start(1);
    let topic = "replay-point";
    kafka::create_topic(&broker, topic, 1, &[]);
    let batch = |producer: i64, sequence: i32, value: &str| {
        let mut builder = BatchBuilder::new(TimestampMs(1_700_000_000_000));
        builder.producer_id = ProducerId(producer);
        builder.producer_epoch = if producer < 0 { -1 } else { 0 };
        builder.base_sequence = sequence;
        builder.value(0, value.to_string()).build().to_vec()
    };
    let produce = |broker: &Broker, records: &[u8]| produce_v3(broker, topic, records);

    assert_eq!(produce(&broker, &batch(1000, 0, "first")), (0, 0));
    // 4 MiB of batches from a producer without idempotence bury it.
    let filler = "x".repeat(512 * 1024);
    for i in 0..8 {
        assert_eq!(produce(&broker, &batch(-1, -1, &filler)), (0, 1 + i));
    }
    let end = 9;
    // The replay point is taken at the next index checkpoint (every 2 s); its bytes 8..16
    // hold the offset it was taken at (layout in broker/src/partition/replay_point.rs).
    let file = broker
        .data_dir()
        .join("data")
        .join(format!("{topic}-0"))
        .join("replay-point");
    let taken_at = || -> Option<i64> {
        let bytes = std::fs::read(&file).ok()?;
        (bytes.get(..4)? == b"TRP1").then_some(())?;
        Some(i64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken_at() != Some(end) {
        assert!(
            Instant::now() < deadline,
            "no replay point at {end}: {:?}",
            taken_at()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    broker.kill9();
    broker.restart();
    assert_eq!(
        produce(&broker, &batch(1000, 0, "first")),
        (0, 0),
        "the retry is the duplicate it is"
    );
    assert_eq!(produce(&broker, &batch(1000, 1, "second")), (0, end));
    assert_eq!(
        kafka::watermarks(&broker, topic, 0),
        (0, end + 1),
        "nothing written twice"
    );
    // Every partition (the topic's and the internal ones) opened from its replay point.
    let log = broker.log();
    let opened = log
        .lines()
        .rev()
        .find_map(|line| {
            let (_, rest) = line.split_once("opened ")?;
            let (all, rest) = rest.split_once(" partition(s), ")?;
            let (from_points, _) = rest.split_once(" from their replay point")?;
            Some((all.to_string(), from_points.to_string()))
        })
        .expect("the broker says how its partitions opened");
    assert_eq!(
        opened.0, opened.1,
        "partitions opened, and from a replay point"
    );
}

/// Kafka's `flush.messages` set alone (its `flush.ms` left at Kafka's default, never) is a
/// valid broker default: the broker starts, every partition opens, records are acknowledged
/// after the write and read back, and a graceful restart keeps them.
#[test]
fn a_flush_messages_default_alone_serves_and_survives_a_restart() {
    let mut broker = Broker::start_with(1, &["--topic-default", "flush.messages=100000000"]);
    let topic = "flush-by-count";
    kafka::create_topic(&broker, topic, 1, &[]);
    let producer = kafka::producer(&broker);
    let sent: Vec<Rec> = (0..20).map(|i| Rec::value(format!("v{i}"))).collect();
    let acks = kafka::produce(&producer, topic, Some(0), &sent);
    assert_eq!(acks.last(), Some(&(0, 19)));
    drop(producer);
    assert!(broker.stop(), "graceful stop");
    broker.restart();
    let read = kafka::consume(&broker, topic, &[0], 20);
    let values: Vec<_> = read.iter().map(|c| c.record.value.clone()).collect();
    let expected: Vec<_> = sent.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, expected);
}

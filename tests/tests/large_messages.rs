//! Message size limits: a 1 MiB record round-trips once the topic's `max.message.bytes` and
//! the producer's `message.max.bytes` allow it, and a batch over the topic's limit is
//! refused with MESSAGE_TOO_LARGE (10), by the broker, without writing anything.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rskafka::client::error::{Error as RsError, ProtocolError};
use rskafka::client::partition::Compression;
use tern_tests::kafka::{self, Rec};
use tern_tests::{rs, Broker};

const MIB: usize = 1024 * 1024;

/// A value whose bytes depend on their position, so a shifted or truncated copy differs.
fn patterned(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Producer limits far above the broker's, so only the broker can refuse a record.
const PRODUCER_LIMITS: &[(&str, &str)] = &[("message.max.bytes", "8000000"), ("linger.ms", "0")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_message_round_trips_when_limits_are_raised() {
    let broker = Broker::start(1);
    let topic = "one-mebibyte";
    kafka::create_topic(
        &broker,
        topic,
        1,
        &[("max.message.bytes", &(2 * MIB).to_string())],
    );
    let value = patterned(MIB, 7);
    let sent = vec![
        Rec {
            key: Some(b"big".to_vec()),
            value: Some(value.clone()),
            headers: vec![],
            timestamp_ms: Some(1_600_000_000_000),
        },
        Rec {
            key: Some(b"small".to_vec()),
            value: Some(b"after".to_vec()),
            headers: vec![],
            timestamp_ms: Some(1_600_000_000_001),
        },
    ];
    let acks = kafka::produce(
        &kafka::producer_with(&broker, PRODUCER_LIMITS),
        topic,
        Some(0),
        &sent,
    );
    assert_eq!(acks, vec![(0, 0), (0, 1)], "both records acknowledged");

    // The consumer's default fetch size (1 MiB) is smaller than the batch: the broker must
    // still return the whole first batch so the consumer can make progress.
    let consumed = kafka::consume(&broker, topic, &[0], 2);
    assert_eq!(
        consumed[0].record.value.as_ref().map(Vec::len),
        Some(MIB),
        "length of the 1 MiB value"
    );
    assert!(
        consumed[0].record == sent[0],
        "1 MiB value read back byte for byte"
    );
    assert_eq!(consumed[1].record, sent[1], "the record after it");

    let client = rs::client(&broker).await;
    let partition = rs::partition(&client, topic, 0).await;
    let read = rs::read_exactly(&partition, 0, 2).await;
    assert!(
        read[0].record.value.as_deref() == Some(value.as_slice()),
        "rskafka reads the 1 MiB value byte for byte"
    );
}

#[test]
fn rdkafka_record_over_max_message_bytes_gets_message_too_large() {
    let broker = Broker::start(1);
    // (topic, its max.message.bytes or None for the default 1048588, size of the value sent)
    let cases: [(&str, Option<usize>, usize); 2] = [
        ("too-large-default-limit", None, MIB + MIB / 2),
        ("too-large-raised-limit", Some(2 * MIB), 2 * MIB + 1024),
    ];
    for (topic, limit, size) in cases {
        let limit_config = limit.map(|l| l.to_string());
        let configs: Vec<(&str, &str)> = limit_config
            .iter()
            .map(|l| ("max.message.bytes", l.as_str()))
            .collect();
        kafka::create_topic(&broker, topic, 1, &configs);
        let producer = kafka::producer_with(&broker, PRODUCER_LIMITS);

        let outcome =
            kafka::try_produce(&producer, topic, Some(0), &[Rec::value(patterned(size, 1))]);
        match &outcome[..] {
            [Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))] => {}
            other => {
                panic!("{topic}: a {size}-byte record should get MESSAGE_TOO_LARGE, got {other:?}")
            }
        }
        assert_eq!(
            kafka::watermarks(&broker, topic, 0),
            (0, 0),
            "{topic}: nothing was written"
        );

        // The partition still takes records that fit.
        let acks = kafka::produce(&producer, topic, Some(0), &[Rec::value(b"fits".to_vec())]);
        assert_eq!(
            acks,
            vec![(0, 0)],
            "{topic}: a small record after the refused one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rskafka_batch_over_max_message_bytes_gets_message_too_large() {
    let broker = Broker::start(1);
    let client = rs::client(&broker).await;
    rs::create_topic(&client, "too-large-rskafka", 1).await;
    let partition = rs::partition(&client, "too-large-rskafka", 0).await;
    let record = rs::record(
        None,
        Some(&patterned(MIB + MIB / 2, 3)),
        &[],
        1_600_000_000_000,
    );
    match partition
        .produce(vec![record], Compression::NoCompression)
        .await
    {
        Err(RsError::ServerError {
            protocol_error: ProtocolError::MessageTooLarge,
            ..
        }) => {}
        other => panic!("a 1.5 MiB batch should get MESSAGE_TOO_LARGE, got {other:?}"),
    }
    let offsets = rs::produce(
        &partition,
        vec![rs::record(None, Some(b"fits"), &[], 1_600_000_000_000)],
        Compression::NoCompression,
    )
    .await;
    assert_eq!(offsets, vec![0], "the refused batch took no offsets");
}

/// A Fetch v4 body for several partitions of one topic from offset 0, with `max_bytes` for
/// the whole response and `partition_max_bytes` for each partition.
fn fetch_v4_partitions(
    topic: &str,
    partitions: i32,
    max_bytes: i32,
    partition_max: i32,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
    out.extend_from_slice(&0i32.to_be_bytes()); // max wait
    out.extend_from_slice(&1i32.to_be_bytes()); // min bytes
    out.extend_from_slice(&max_bytes.to_be_bytes());
    out.push(0); // read_uncommitted
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&partitions.to_be_bytes());
    for partition in 0..partitions {
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&partition_max.to_be_bytes());
    }
    out
}

/// Kafka holds a Fetch's `max_bytes` across partitions: only the response's first batch may
/// exceed it. Three partitions of 900 KiB records, `max_bytes` 1,000,000 and 20 MB per
/// partition: the raw response carries exactly one batch, and librdkafka with those settings
/// (and a receive limit that a 19 MB response would break) reads every record exactly.
#[test]
fn fetch_max_bytes_holds_across_partitions() {
    const RECORD: usize = 900 * 1024;
    const PER_PARTITION: usize = 6;
    let broker = Broker::start(1);
    let topic = "fetch-max-bytes";
    kafka::create_topic(&broker, topic, 3, &[]);
    let producer = kafka::producer_with(&broker, PRODUCER_LIMITS);
    let mut sent = Vec::new();
    for partition in 0..3 {
        let records: Vec<Rec> = (0..PER_PARTITION)
            .map(|i| Rec::value(patterned(RECORD, (partition * 16 + i as i32) as u8)))
            .collect();
        kafka::produce(&producer, topic, Some(partition), &records);
        sent.push(records);
    }

    let request =
        tern_tests::wire::request(1, 4, 3, &fetch_v4_partitions(topic, 3, 1_000_000, 20 << 20));
    let response =
        tern_tests::wire::round_trip(broker.addr, &request, std::time::Duration::from_secs(10))
            .expect("fetch answered");
    assert!(
        (RECORD..RECORD + 4096).contains(&response.len()),
        "a response of {} bytes: exactly one batch of a 900 KiB record was expected",
        response.len()
    );

    let consumer = kafka::consumer_with(
        &broker,
        &[
            ("fetch.max.bytes", "1000000"),
            ("max.partition.fetch.bytes", "20971520"),
            ("receive.message.max.bytes", "2000000"),
        ],
    );
    kafka::assign(&consumer, topic, &[0, 1, 2], rdkafka::Offset::Beginning);
    let read = kafka::read_exactly(
        &consumer,
        3 * PER_PARTITION,
        std::time::Duration::from_secs(60),
    );
    for partition in 0..3 {
        let values: Vec<Option<Vec<u8>>> = read
            .iter()
            .filter(|c| c.partition == partition)
            .map(|c| c.record.value.clone())
            .collect();
        let expected: Vec<Option<Vec<u8>>> = sent[partition as usize]
            .iter()
            .map(|r| r.value.clone())
            .collect();
        assert!(values == expected, "partition {partition}: records differ");
    }
}

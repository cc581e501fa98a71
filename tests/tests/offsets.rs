//! ListOffsets (earliest, latest, by timestamp) and DeleteRecords, through both clients.
//!
//! By-timestamp lookups follow Kafka: the answer is the first offset whose record timestamp
//! is at or after the one asked for, or "none" (-1) when every record is older.

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use rskafka::client::error::{Error as RsError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt};
use tern_tests::kafka::{self, Rec};
use tern_tests::{rs, Broker};

const T0_MS: i64 = 1_690_000_000_000;
const RECORDS: i64 = 10;

/// (timestamp asked for, offset expected; None = no record that late)
const BY_TIMESTAMP: [(i64, Option<i64>); 7] = [
    (0, Some(0)),
    (T0_MS, Some(0)),
    (T0_MS + 1, Some(1)),
    (T0_MS + 5_000, Some(5)),
    (T0_MS + 4_999, Some(5)),
    (T0_MS + 9_000, Some(9)),
    (T0_MS + 9_001, None),
];

/// Record `i` has timestamp T0 + i seconds.
fn timed_records() -> Vec<Rec> {
    (0..RECORDS)
        .map(|i| Rec {
            value: Some(format!("t{i}").into_bytes()),
            timestamp_ms: Some(T0_MS + i * 1_000),
            ..Rec::default()
        })
        .collect()
}

fn offsets_for_time(broker: &Broker, topic: &str, timestamp_ms: i64) -> Option<i64> {
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset(topic, 0, Offset::Offset(timestamp_ms))
        .expect("query");
    let answer = kafka::consumer(broker)
        .offsets_for_times(query, kafka::WAIT_MAX)
        .expect("offsets_for_times");
    let element = answer
        .find_partition(topic, 0)
        .unwrap_or_else(|| panic!("offsets_for_times({timestamp_ms}): no answer for partition 0"));
    element
        .error()
        .unwrap_or_else(|error| panic!("offsets_for_times({timestamp_ms}): {error}"));
    match element.offset() {
        Offset::Offset(offset) => Some(offset),
        Offset::End => None,
        other => panic!("offsets_for_times({timestamp_ms}) answered {other:?}"),
    }
}

fn check_by_timestamp(broker: &Broker, topic: &str) {
    for (timestamp_ms, expected) in BY_TIMESTAMP {
        assert_eq!(
            offsets_for_time(broker, topic, timestamp_ms),
            expected,
            "{topic}: offset for timestamp {timestamp_ms}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_finds_earliest_latest_and_first_offset_at_a_timestamp() {
    let broker = Broker::start(1);
    let topic = "timestamps-one-per-batch";
    kafka::create_topic(&broker, topic, 1, &[]);
    assert_eq!(
        kafka::watermarks(&broker, topic, 0),
        (0, 0),
        "empty partition"
    );
    assert_eq!(
        offsets_for_time(&broker, topic, 0),
        None,
        "no offset for any time in an empty partition"
    );

    // One record per batch: produce and wait for each.
    let producer = kafka::producer_with(&broker, &[("linger.ms", "0")]);
    for record in timed_records() {
        kafka::produce(&producer, topic, Some(0), &[record]);
    }
    assert_eq!(
        kafka::watermarks(&broker, topic, 0),
        (0, RECORDS),
        "earliest and latest"
    );
    check_by_timestamp(&broker, topic);

    let client = rs::client(&broker).await;
    let partition = rs::partition(&client, topic, 0).await;
    assert_eq!(
        partition
            .get_offset(OffsetAt::Earliest)
            .await
            .expect("earliest"),
        0,
        "rskafka earliest"
    );
    assert_eq!(
        partition
            .get_offset(OffsetAt::Latest)
            .await
            .expect("latest"),
        RECORDS,
        "rskafka latest"
    );
    let at = partition
        .get_offset(OffsetAt::Timestamp(rs::timestamp(T0_MS + 2_500)))
        .await
        .expect("by timestamp");
    assert_eq!(at, 3, "rskafka offset for T0 + 2.5 s");
}

#[test]
fn list_offsets_by_timestamp_looks_inside_multi_record_batches() {
    let broker = Broker::start(1);
    let topic = "timestamps-one-batch";
    kafka::create_topic(&broker, topic, 1, &[]);
    // All ten records in one batch (linger long enough to gather them).
    let producer = kafka::producer_with(&broker, &[("linger.ms", "200")]);
    kafka::produce(&producer, topic, Some(0), &timed_records());
    assert_eq!(
        kafka::watermarks(&broker, topic, 0),
        (0, RECORDS),
        "earliest and latest"
    );
    check_by_timestamp(&broker, topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_earliest_offset() {
    let broker = Broker::start(1);
    let topic = "delete-records";
    kafka::create_topic(&broker, topic, 1, &[]);
    let producer = kafka::producer_with(&broker, &[("linger.ms", "0")]);
    // Ten batches of ten, so deletions can fall on a batch boundary (40) and inside one (55).
    for batch in 0..10 {
        let records: Vec<Rec> = (0..10)
            .map(|i| Rec::value(format!("{:03}", batch * 10 + i)))
            .collect();
        kafka::produce(&producer, topic, Some(0), &records);
    }

    // rdkafka admin DeleteRecords up to (not including) offset 40.
    let admin = kafka::admin(&broker);
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset(topic, 0, Offset::Offset(40))
        .expect("offset");
    let result =
        kafka::wait(admin.delete_records(&before, &kafka::admin_options())).expect("DeleteRecords");
    let element = result
        .find_partition(topic, 0)
        .expect("result for partition 0");
    assert!(
        element.error().is_ok(),
        "DeleteRecords error: {:?}",
        element.error()
    );
    assert_eq!(
        element.offset(),
        Offset::Offset(40),
        "new low watermark in the DeleteRecords answer"
    );
    assert_eq!(
        kafka::watermarks(&broker, topic, 0),
        (40, 100),
        "watermarks after deleting before 40"
    );
    let consumed = kafka::consume(&broker, topic, &[0], 60);
    assert_eq!(
        consumed.first().map(|c| (c.offset, c.record.value.clone())),
        Some((40, Some(b"040".to_vec()))),
        "first record read from the beginning"
    );

    // Past the high watermark is out of range and changes nothing.
    let mut beyond = TopicPartitionList::new();
    beyond
        .add_partition_offset(topic, 0, Offset::Offset(101))
        .expect("offset");
    let result = kafka::wait(admin.delete_records(&beyond, &kafka::admin_options()));
    let refused = match &result {
        Err(_) => true,
        Ok(list) => list
            .find_partition(topic, 0)
            .is_some_and(|e| e.error().is_err()),
    };
    assert!(
        refused,
        "DeleteRecords past the high watermark must fail, got {result:?}"
    );
    assert_eq!(
        kafka::watermarks(&broker, topic, 0),
        (40, 100),
        "watermarks unchanged by the refused deletion"
    );

    // rskafka DeleteRecords inside a batch (50..59): earliest becomes 55 exactly.
    let client = rs::client(&broker).await;
    let partition = rs::partition(&client, topic, 0).await;
    partition
        .delete_records(55, 30_000)
        .await
        .expect("rskafka delete_records");
    assert_eq!(
        partition
            .get_offset(OffsetAt::Earliest)
            .await
            .expect("earliest"),
        55,
        "earliest after deleting before 55"
    );
    match partition.fetch_records(50, 1..1_000_000, 100).await {
        Err(RsError::ServerError {
            protocol_error: ProtocolError::OffsetOutOfRange,
            ..
        }) => {}
        other => {
            panic!("fetch below the log start offset should be OFFSET_OUT_OF_RANGE, got {other:?}")
        }
    }
    let read = rs::read_exactly(&partition, 55, 45).await;
    assert_eq!(
        read.first().map(|r| (r.offset, r.record.value.clone())),
        Some((55, Some(b"055".to_vec()))),
        "first record from 55"
    );
    let consumed = kafka::consume(&broker, topic, &[0], 45);
    assert_eq!(
        consumed.first().map(|c| c.offset),
        Some(55),
        "rdkafka reads from the new earliest offset"
    );

    // The partition still takes records, after the deleted range.
    let producer_offsets = rs::produce(
        &partition,
        vec![rs::record(None, Some(b"after"), &[], T0_MS)],
        Compression::NoCompression,
    )
    .await;
    assert_eq!(
        producer_offsets,
        vec![100],
        "offsets continue after DeleteRecords"
    );
}

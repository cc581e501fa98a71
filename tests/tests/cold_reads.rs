//! Reads that the shard's tail cache cannot serve: a partition holding more than the cache
//! budget (8 MiB per partition, `TAIL_CACHE_BYTES_PER_PARTITION`) is read from offset 0, so
//! the first part comes from the segment file through direct IO on a broker that has never
//! restarted, then the rest from the cache.

use rdkafka::Offset;
use tern_tests::kafka::{self, Rec};
use tern_tests::Broker;

const VALUE_BYTES: usize = 16 * 1024;
/// 12 MiB of values: comfortably over the 8 MiB cache budget.
const RECORDS: usize = 768;

fn value(i: usize) -> Vec<u8> {
    let mut value = format!("{i:06}:").into_bytes();
    value.resize(VALUE_BYTES, (i % 251) as u8);
    value
}

#[test]
fn partition_larger_than_the_tail_cache_reads_back_exactly_from_offset_zero() {
    let broker = Broker::start(1);
    let topic = "beyond-tail-cache";
    kafka::create_topic(&broker, topic, 1, &[]);
    let producer = kafka::producer_with(&broker, &[("linger.ms", "10")]);
    let sent: Vec<Rec> = (0..RECORDS)
        .map(|i| Rec {
            timestamp_ms: Some(1_700_000_000_000 + i as i64),
            ..Rec::value(value(i))
        })
        .collect();
    for chunk in sent.chunks(64) {
        kafka::produce(&producer, topic, Some(0), chunk);
    }
    assert_eq!(
        kafka::watermarks(&broker, topic, 0),
        (0, RECORDS as i64),
        "watermarks"
    );

    let consumed = kafka::consume(&broker, topic, &[0], RECORDS);
    for (index, (sent, got)) in sent.iter().zip(&consumed).enumerate() {
        assert_eq!(got.offset, index as i64, "offset of record {index}");
        assert!(
            got.record == *sent,
            "record {index} differs from what was produced"
        );
    }

    // A read starting in the middle of the cold part, too.
    let consumer = kafka::consumer(&broker);
    kafka::assign(&consumer, topic, &[0], Offset::Offset(100));
    let middle = kafka::read_exactly(&consumer, RECORDS - 100, kafka::WAIT_MAX);
    assert_eq!(
        middle.first().map(|c| c.offset),
        Some(100),
        "first offset of a read from 100"
    );
    assert!(
        middle
            .iter()
            .zip(&sent[100..])
            .all(|(got, sent)| got.record == *sent),
        "records from offset 100"
    );
}

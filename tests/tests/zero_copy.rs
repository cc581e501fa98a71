//! The fetch path does not copy record bytes: records fetched from the hot tail are counted
//! by the log as served by reference (`tern_log_read_bytes_zero_copy_total`), and so are
//! older records read from disk when the connection lives on the partition's owner shard;
//! every one of those bytes reaches the client intact.

use tern_tests::kafka::{self, Rec};
use tern_tests::Broker;

/// Produces `count` records of `value_bytes` to partition 0 of `topic` and reads them back,
/// checking every payload and offset.
fn produce_and_read_back(broker: &Broker, topic: &str, count: usize, value_bytes: usize) {
    let value = vec![0xabu8; value_bytes];
    let records: Vec<Rec> = (0..count).map(|_| Rec::value(value.clone())).collect();
    let producer = kafka::producer_with(broker, &[("linger.ms", "5")]);
    kafka::produce(&producer, topic, Some(0), &records);
    let consumed = kafka::consume(broker, topic, &[0], count);
    for (index, record) in consumed.iter().enumerate() {
        assert_eq!(record.offset, index as i64, "records arrive in order");
        assert_eq!(
            record.record.value.as_deref(),
            Some(&value[..]),
            "payload of offset {index}"
        );
    }
}

#[test]
fn hot_tail_fetches_are_served_by_reference() {
    let broker = Broker::start(1);
    produce_and_read_back(&broker, "zc", 500, 1000);
    let zero_copy = broker.metric("tern_log_read_bytes_zero_copy_total");
    assert!(
        zero_copy >= 500 * 1000,
        "at least the payload bytes were served by reference, got {zero_copy}"
    );
    assert_eq!(
        broker.metric("tern_log_read_bytes_copied_total"),
        0,
        "nothing on the hot path was copied"
    );
}

/// With one shard every connection lives on the owner shard, so even data older than the tail
/// cache goes out in the direct-IO read buffer itself: nothing is counted as copied.
#[test]
fn cold_reads_on_the_owner_shard_are_not_copied() {
    let broker = Broker::start(1);
    // 12 MiB in one partition: more than the 8 MiB tail cache, so the start is read from disk.
    let records = 3 * 1024;
    produce_and_read_back(&broker, "cold", records, 4096);
    assert_eq!(
        broker.metric("tern_log_read_bytes_copied_total"),
        0,
        "cold reads on the owner shard are not copied"
    );
    assert!(broker.metric("tern_log_read_bytes_zero_copy_total") >= (records * 4096) as u64);
}

//! The fetch path does not copy record bytes: records fetched from the hot tail are counted
//! by the log as served by reference (`tern_log_read_bytes_zero_copy_total`), none as copied,
//! and every one of those bytes reaches the client intact.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tern_tests::Broker;

#[test]
fn hot_tail_fetches_are_served_by_reference() {
    let broker = Broker::start(1);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let value = vec![0xabu8; 1000];
    for i in 0..500 {
        let key = format!("k{i}");
        producer.send(BaseRecord::to("zc").key(&key).payload(&value)).expect("enqueue");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "unused-assign-only")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset("zc", 0, Offset::Beginning).expect("assign");
    consumer.assign(&assignment).expect("assign");
    let mut received = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while received < 500 && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            assert_eq!(message.payload(), Some(&value[..]));
            received += 1;
        }
    }
    assert_eq!(received, 500, "every record comes back");
    let zero_copy = broker.metric("tern_log_read_bytes_zero_copy_total");
    let copied = broker.metric("tern_log_read_bytes_copied_total");
    assert!(zero_copy >= 500 * 1000, "at least the payload bytes were served by reference, got {zero_copy}");
    assert_eq!(copied, 0, "nothing on the hot path was copied");
}

/// With one shard every connection lives on the owner shard, so even data older than the tail
/// cache goes out in the direct-IO read buffer itself: nothing is counted as copied.
#[test]
fn cold_reads_on_the_owner_shard_are_not_copied() {
    let broker = Broker::start(1);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    // 12 MiB in one partition: more than the 8 MiB tail cache, so the start is read from disk.
    let value = vec![0x5au8; 4096];
    let records = 3 * 1024;
    for i in 0..records {
        let key = format!("k{i}");
        loop {
            match producer.send(BaseRecord::to("cold").key(&key).payload(&value)) {
                Ok(()) => break,
                Err((_, _)) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "unused-assign-only")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset("cold", 0, Offset::Beginning).expect("assign");
    consumer.assign(&assignment).expect("assign");
    let mut received = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while received < records && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            assert_eq!(message.offset(), received as i64, "records arrive in order");
            assert_eq!(message.payload(), Some(&value[..]));
            received += 1;
        }
    }
    assert_eq!(received, records, "every record comes back");
    assert_eq!(broker.metric("tern_log_read_bytes_copied_total"), 0, "cold reads on the owner shard are not copied");
    assert!(broker.metric("tern_log_read_bytes_zero_copy_total") >= (records * 4096) as u64);
}

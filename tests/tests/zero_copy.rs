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

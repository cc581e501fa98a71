//! rdkafka (librdkafka) helpers: clients configured for a test broker, produce calls that
//! wait for every delivery report, consumers that read by assignment up to an exact count,
//! and admin calls that wait for their answer.
//!
//! Consumers here use `assign`; group tests (`groups.rs`) subscribe on their own. Producers
//! keep librdkafka's default `enable.idempotence=false`, said explicitly; the idempotent
//! producer is tested in `produce_consume.rs` and, byte by byte, in `durability.rs`.
//!
//! Nothing here needs an async runtime: rdkafka resolves its futures from its own threads,
//! and `wait` polls them on the calling thread, so these helpers work inside and outside
//! tokio tests alike. Every wait is bounded by `WAIT_MAX` or an explicit deadline.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::Broker;

/// Longest any single client call (a delivery, an admin request, a metadata query) may take.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// How long a consumer keeps polling after the expected count, to catch extra records.
const EXTRA_RECORDS_GRACE: Duration = Duration::from_millis(300);

/// Polls a future to completion on this thread, at most `WAIT_MAX`.
pub fn wait<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        assert!(
            Instant::now() < deadline,
            "an rdkafka future did not complete within {WAIT_MAX:?}"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Settings every rdkafka client shares.
pub fn client_config(broker: &Broker) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.bootstrap())
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "20000")
        .set("log_level", "3");
    config
}

/// A producer with acks=all and the given settings on top.
pub fn producer_with(broker: &Broker, settings: &[(&str, &str)]) -> FutureProducer {
    let mut config = client_config(broker);
    config
        // librdkafka's default, said explicitly; see the module comment.
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config.create().expect("create rdkafka producer")
}

pub fn producer(broker: &Broker) -> FutureProducer {
    producer_with(broker, &[])
}

/// Everything a client can observe about one record (besides where it landed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// CreateTime in ms; `None` lets the client stamp it.
    pub timestamp_ms: Option<i64>,
}

impl Rec {
    pub fn value(value: impl Into<Vec<u8>>) -> Rec {
        Rec {
            value: Some(value.into()),
            ..Rec::default()
        }
    }
}

/// A record read back, with its partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub record: Rec,
}

fn future_record<'a>(
    topic: &'a str,
    partition: Option<i32>,
    rec: &'a Rec,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    if let Some(key) = &rec.key {
        record = record.key(key.as_slice());
    }
    if let Some(value) = &rec.value {
        record = record.payload(value.as_slice());
    }
    if let Some(timestamp_ms) = rec.timestamp_ms {
        record = record.timestamp(timestamp_ms);
    }
    if !rec.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (key, value) in &rec.headers {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: value.as_deref(),
            });
        }
        record = record.headers(headers);
    }
    record
}

/// Sends every record to `partition` (or where the partitioner puts it) and returns each
/// one's outcome, in send order: its (partition, offset) or the error.
pub fn try_produce(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    records: &[Rec],
) -> Vec<Result<(i32, i64), KafkaError>> {
    let items: Vec<(Option<i32>, &Rec)> = records.iter().map(|rec| (partition, rec)).collect();
    try_produce_each(producer, topic, &items)
}

/// Sends each record to its own partition. All are queued before the first delivery report
/// is awaited, so they pipeline and share requests.
pub fn try_produce_each(
    producer: &FutureProducer,
    topic: &str,
    items: &[(Option<i32>, &Rec)],
) -> Vec<Result<(i32, i64), KafkaError>> {
    let mut pending = Vec::with_capacity(items.len());
    for &(partition, rec) in items {
        let deadline = Instant::now() + WAIT_MAX;
        let mut record = future_record(topic, partition, rec);
        // A full local queue is back-pressure, not failure: wait for reports to drain it.
        let future = loop {
            match producer.send_result(record) {
                Ok(future) => break future,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    assert!(
                        Instant::now() < deadline,
                        "producer queue stayed full for {WAIT_MAX:?}"
                    );
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => panic!("enqueue to {topic}: {error}"),
            }
        };
        pending.push(future);
    }
    pending
        .into_iter()
        .map(
            |future| match wait(future).expect("delivery report channel closed") {
                Ok(delivery) => Ok((delivery.partition, delivery.offset)),
                Err((error, _message)) => Err(error),
            },
        )
        .collect()
}

/// Like `try_produce`, but every record must be acknowledged.
pub fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    records: &[Rec],
) -> Vec<(i32, i64)> {
    try_produce(producer, topic, partition, records)
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| {
            outcome.unwrap_or_else(|error| {
                panic!("record {index} to {topic} was not acknowledged: {error}")
            })
        })
        .collect()
}

/// A consumer that reads by assignment, commits nothing, and waits at most 100 ms per fetch.
pub fn consumer_with(broker: &Broker, settings: &[(&str, &str)]) -> BaseConsumer {
    let mut config = client_config(broker);
    config
        // librdkafka's `assign` needs a group id, although nothing here joins the group or
        // commits: offsets are always given explicitly.
        .set("group.id", "tern-e2e-assign-only")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config.create().expect("create rdkafka consumer")
}

pub fn consumer(broker: &Broker) -> BaseConsumer {
    consumer_with(broker, &[])
}

pub fn assign(consumer: &BaseConsumer, topic: &str, partitions: &[i32], from: Offset) {
    let mut list = TopicPartitionList::new();
    for &partition in partitions {
        list.add_partition_offset(topic, partition, from)
            .expect("partition offset");
    }
    consumer.assign(&list).expect("assign partitions");
}

fn to_consumed(message: &impl Message) -> Consumed {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Consumed {
        partition: message.partition(),
        offset: message.offset(),
        record: Rec {
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
        },
    }
}

/// Polls an assigned consumer until it has read exactly `count` records, then a short
/// grace period more to make sure no extra record arrives. Panics past `deadline`.
pub fn read_exactly(consumer: &BaseConsumer, count: usize, within: Duration) -> Vec<Consumed> {
    let deadline = Instant::now() + within;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        assert!(
            Instant::now() < deadline,
            "read {} of {count} records within {within:?}",
            out.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => out.push(to_consumed(&message)),
            Some(Err(error)) => panic!("consumer error after {} records: {error}", out.len()),
            None => {}
        }
    }
    let grace_end = Instant::now() + EXTRA_RECORDS_GRACE;
    while Instant::now() < grace_end {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
            panic!(
                "read more than the {count} records expected: {:?}",
                to_consumed(&message)
            );
        }
    }
    out
}

/// Reads `partitions` of `topic` from the beginning, exactly `count` records in all.
pub fn consume(broker: &Broker, topic: &str, partitions: &[i32], count: usize) -> Vec<Consumed> {
    let consumer = consumer(broker);
    assign(&consumer, topic, partitions, Offset::Beginning);
    read_exactly(&consumer, count, WAIT_MAX)
}

/// The (low, high) watermarks of one partition, from ListOffsets earliest and latest.
pub fn watermarks(broker: &Broker, topic: &str, partition: i32) -> (i64, i64) {
    consumer(broker)
        .fetch_watermarks(topic, partition, WAIT_MAX)
        .expect("fetch watermarks")
}

pub fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    client_config(broker)
        .create()
        .expect("create rdkafka admin client")
}

pub fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)))
}

/// Creates a topic (replication factor 1) and returns the broker's verdict.
pub fn try_create_topic(
    broker: &Broker,
    name: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
) -> Result<(), RDKafkaErrorCode> {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let results = wait(admin(broker).create_topics([&topic], &admin_options()))
        .unwrap_or_else(|error| panic!("CreateTopics request: {error}"));
    match <[_; 1]>::try_from(results) {
        Ok([result]) => result.map(drop).map_err(|(_, code)| code),
        Err(results) => panic!(
            "CreateTopics for one topic answered {} results",
            results.len()
        ),
    }
}

/// Creates a topic with replication factor 1 and the given configs; it must succeed.
pub fn create_topic(broker: &Broker, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    try_create_topic(broker, name, partitions, 1, configs)
        .unwrap_or_else(|code| panic!("create topic {name}: {code:?}"));
}

/// How many partitions Metadata reports for `topic`, or `None` if it does not exist.
pub fn partition_count(broker: &Broker, topic: &str) -> Option<usize> {
    let consumer = consumer(broker);
    let metadata = consumer.fetch_metadata(None, WAIT_MAX).expect("metadata");
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
}

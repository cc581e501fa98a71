//! rskafka helpers: an independent pure-Rust Kafka client, so that what the broker does is
//! checked against two implementations and not tuned to one.
//!
//! rskafka retries retriable errors with backoff forever by default; every client here has a
//! deadline so a broker bug shows up as a failed test, not a hung one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{Record, RecordAndOffset};
use rskafka::BackoffConfig;

use crate::Broker;

/// How long rskafka may keep retrying one operation.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(30);

/// Longest a read loop waits for the records it expects.
pub const READ_MAX: Duration = Duration::from_secs(60);

/// Bytes one fetch may return (the broker returns at least one whole batch regardless).
const FETCH_BYTES_MAX: i32 = 4 * 1024 * 1024;

pub async fn client(broker: &Broker) -> Client {
    ClientBuilder::new(vec![broker.bootstrap()])
        .backoff_config(BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(RETRY_DEADLINE),
        })
        .build()
        .await
        .expect("rskafka client")
}

pub async fn create_topic(client: &Client, name: &str, partitions: i32) {
    client
        .controller_client()
        .expect("controller client")
        .create_topic(name, partitions, 1, 30_000)
        .await
        .unwrap_or_else(|error| panic!("rskafka create topic {name}: {error}"));
}

pub async fn partition(client: &Client, topic: &str, partition: i32) -> PartitionClient {
    client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .unwrap_or_else(|error| panic!("rskafka partition client {topic}/{partition}: {error}"))
}

pub fn timestamp(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .expect("valid timestamp")
}

pub fn record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    timestamp_ms: i64,
) -> Record {
    Record {
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect::<BTreeMap<_, _>>(),
        timestamp: timestamp(timestamp_ms),
    }
}

/// Produces `records` as one batch and returns their offsets.
pub async fn produce(
    client: &PartitionClient,
    records: Vec<Record>,
    compression: Compression,
) -> Vec<i64> {
    let count = records.len();
    let offsets = client
        .produce(records, compression)
        .await
        .unwrap_or_else(|error| panic!("rskafka produce to {client:?}: {error}"));
    assert_eq!(offsets.len(), count, "one offset per produced record");
    offsets
}

/// Fetches from `from` until exactly `count` records are read (a fetch may start inside a
/// batch; records before the requested offset are dropped by rskafka). Panics past `READ_MAX`.
pub async fn read_exactly(
    client: &PartitionClient,
    from: i64,
    count: usize,
) -> Vec<RecordAndOffset> {
    let deadline = Instant::now() + READ_MAX;
    let mut out: Vec<RecordAndOffset> = Vec::with_capacity(count);
    let mut next = from;
    while out.len() < count {
        assert!(
            Instant::now() < deadline,
            "{client:?}: read {} of {count} records within {READ_MAX:?}",
            out.len()
        );
        let (records, _high_watermark) = client
            .fetch_records(next, 1..FETCH_BYTES_MAX, 200)
            .await
            .unwrap_or_else(|error| panic!("rskafka fetch {client:?} at {next}: {error}"));
        for record in records {
            assert!(
                record.offset >= next,
                "{client:?}: fetch at {next} returned offset {}",
                record.offset
            );
            next = record.offset + 1;
            out.push(record);
        }
    }
    assert_eq!(
        out.len(),
        count,
        "{client:?}: read more records than expected"
    );
    out
}

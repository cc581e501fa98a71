//! A broker with two shards: a topic's partitions are spread round-robin over every shard
//! (DESIGN.md §2), so one Produce or Fetch request from a client spans shards and the broker
//! must split it, forward each part to its owner, and reassemble answers in request order.

use std::collections::BTreeMap;

use rskafka::client::partition::Compression;
use tern_tests::kafka::{self, Rec};
use tern_tests::{rs, Broker};

const SHARDS: usize = 2;
/// More partitions than shards, so round-robin puts several on each shard.
const PARTITIONS: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_on_every_shard_all_take_produce_and_serve_fetch() {
    let broker = Broker::start(SHARDS);
    let topic = "spread-over-shards";
    let before = broker.metric_by_shard("tern_partitions");
    kafka::create_topic(&broker, topic, PARTITIONS, &[]);
    assert_eq!(
        kafka::partition_count(&broker, topic),
        Some(PARTITIONS as usize),
        "metadata partition count"
    );
    // Which shard owns a partition is the broker's own business; its per-shard partition
    // gauge shows that the new topic's partitions landed on every shard.
    let after = broker.metric_by_shard("tern_partitions");
    assert_eq!(after.len(), SHARDS, "one sample per shard: {after:?}");
    let added: Vec<u64> = after
        .iter()
        .zip(&before)
        .map(|((_, now), (_, was))| now - was)
        .collect();
    assert_eq!(added.iter().sum::<u64>(), PARTITIONS as u64, "{added:?}");
    assert!(
        added.iter().all(|count| *count > 0),
        "partitions are owned by every shard: {added:?}"
    );

    // rdkafka: records to partitions in turn, all in flight at once, so each Produce request
    // carries batches for partitions owned by both shards.
    let per_partition = 300usize;
    let producer = kafka::producer_with(&broker, &[("linger.ms", "20")]);
    let records: Vec<(i32, Rec)> = (0..per_partition)
        .flat_map(|round| {
            (0..PARTITIONS)
                .map(move |partition| (partition, Rec::value(format!("rd-{partition}-{round:04}"))))
        })
        .collect();
    let items: Vec<(Option<i32>, &Rec)> = records
        .iter()
        .map(|(partition, rec)| (Some(*partition), rec))
        .collect();
    let acks = kafka::try_produce_each(&producer, topic, &items);
    for (index, outcome) in acks.into_iter().enumerate() {
        let (partition, round) = (
            (index % PARTITIONS as usize) as i32,
            (index / PARTITIONS as usize) as i64,
        );
        assert_eq!(
            outcome.expect("acknowledged"),
            (partition, round),
            "ack of record {index}"
        );
    }

    // rskafka: one more batch per partition, each on its own connection path.
    let client = rs::client(&broker).await;
    for partition in 0..PARTITIONS {
        let pc = rs::partition(&client, topic, partition).await;
        let records = (0..50)
            .map(|i| {
                rs::record(
                    None,
                    Some(format!("rs-{partition}-{i:04}").as_bytes()),
                    &[],
                    1_700_000_000_000,
                )
            })
            .collect();
        let offsets = rs::produce(&pc, records, Compression::NoCompression).await;
        let first = per_partition as i64;
        assert_eq!(
            offsets,
            (first..first + 50).collect::<Vec<_>>(),
            "rskafka offsets in partition {partition}"
        );
    }

    // One consumer fetching every partition: its Fetch requests span both shards.
    let total = PARTITIONS as usize * (per_partition + 50);
    let consumed = kafka::consume(&broker, topic, &(0..PARTITIONS).collect::<Vec<_>>(), total);
    let mut by_partition: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for c in consumed {
        let value = String::from_utf8(c.record.value.expect("value")).expect("utf8");
        by_partition
            .entry(c.partition)
            .or_default()
            .push((c.offset, value));
    }
    for partition in 0..PARTITIONS {
        let expected: Vec<(i64, String)> = (0..per_partition)
            .map(|i| format!("rd-{partition}-{i:04}"))
            .chain((0..50).map(|i| format!("rs-{partition}-{i:04}")))
            .enumerate()
            .map(|(offset, value)| (offset as i64, value))
            .collect();
        assert_eq!(
            by_partition.get(&partition),
            Some(&expected),
            "partition {partition}: every record, in order"
        );
        assert_eq!(
            kafka::watermarks(&broker, topic, partition),
            (0, expected.len() as i64),
            "watermarks of partition {partition}"
        );
    }
}

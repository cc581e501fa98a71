//! Produce and consume through real clients: records come back byte for byte (keys, values,
//! headers, timestamps), in order per partition, at every acks level, and in exact number.
//!
//! Each test starts its own broker and uses its own topics, so nextest runs them in parallel.

use std::collections::BTreeMap;

use rskafka::client::partition::Compression;
use tern_tests::kafka::{self, Rec};
use tern_tests::{rs, Broker};

/// A fixed CreateTime base (2023-11-14T22:13:20Z), far from "now" so a broker that stamped
/// its own time instead of keeping the producer's would be caught.
const BASE_TS_MS: i64 = 1_700_000_000_000;

/// Records that exercise every corner of the record format rdkafka can express: null and
/// empty keys and values, binary bytes, no headers, repeated header keys, null header
/// values, non-ASCII header keys, and timestamps that go backwards.
fn varied_records(count: usize) -> Vec<Rec> {
    (0..count)
        .map(|i| {
            let key = match i % 5 {
                0 => None,
                1 => Some(Vec::new()),
                _ => Some(format!("key-{i}").into_bytes()),
            };
            let value = match i % 7 {
                3 => None,
                4 => Some(Vec::new()),
                _ => Some(
                    [
                        format!("value-{i}-").as_bytes(),
                        &[0x00, 0xff, i as u8, 0x80],
                    ]
                    .concat(),
                ),
            };
            let headers = match i % 3 {
                0 => Vec::new(),
                1 => vec![
                    ("trace".to_owned(), Some(vec![i as u8, 0, 1, 2])),
                    ("dup".to_owned(), Some(b"first".to_vec())),
                    ("dup".to_owned(), Some(b"second".to_vec())),
                ],
                _ => vec![
                    ("null-value".to_owned(), None),
                    ("clé-ünïcode".to_owned(), Some("välue".as_bytes().to_vec())),
                ],
            };
            // Backwards every fourth record: CreateTime is the producer's to choose.
            let timestamp_ms = BASE_TS_MS + (i as i64) * 1000 - if i % 4 == 3 { 2500 } else { 0 };
            Rec {
                key,
                value,
                headers,
                timestamp_ms: Some(timestamp_ms),
            }
        })
        .collect()
}

/// Records rskafka can express too (its headers are a map of non-null values).
fn map_header_records(count: usize) -> Vec<Rec> {
    (0..count)
        .map(|i| Rec {
            key: (i % 4 != 0).then(|| format!("k{i}").into_bytes()),
            value: (i % 9 != 8)
                .then(|| [b"v".as_slice(), &(i as u32).to_be_bytes(), &[0x00, 0xfe]].concat()),
            headers: if i % 2 == 0 {
                vec![
                    ("a".to_owned(), Some(vec![i as u8])),
                    ("b".to_owned(), Some(b"bee".to_vec())),
                ]
            } else {
                Vec::new()
            },
            timestamp_ms: Some(BASE_TS_MS + 17 * i as i64),
        })
        .collect()
}

fn to_rskafka(rec: &Rec) -> rskafka::record::Record {
    rskafka::record::Record {
        key: rec.key.clone(),
        value: rec.value.clone(),
        headers: rec
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().expect("rskafka headers are non-null")))
            .collect(),
        timestamp: rs::timestamp(rec.timestamp_ms.expect("explicit timestamp")),
    }
}

fn from_rskafka(record: &rskafka::record::Record) -> Rec {
    Rec {
        key: record.key.clone(),
        value: record.value.clone(),
        headers: record
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
        timestamp_ms: Some(record.timestamp.timestamp_millis()),
    }
}

/// Asserts that `consumed` is exactly `sent`, at offsets 0.. of one partition.
fn assert_read_back_exactly(sent: &[Rec], consumed: &[kafka::Consumed], partition: i32) {
    assert_eq!(consumed.len(), sent.len(), "record count");
    for (index, (sent, got)) in sent.iter().zip(consumed).enumerate() {
        assert_eq!(
            (got.partition, got.offset),
            (partition, index as i64),
            "position of record {index}"
        );
        assert_eq!(
            &got.record, sent,
            "record {index} differs from what was produced"
        );
    }
}

#[test]
fn rdkafka_round_trip_preserves_keys_values_headers_and_timestamps() {
    let broker = Broker::start(1);
    let topic = "round-trip-rdkafka";
    kafka::create_topic(&broker, topic, 1, &[]);
    let sent = varied_records(60);

    let acks = kafka::produce(&kafka::producer(&broker), topic, Some(0), &sent);
    let expected_acks: Vec<(i32, i64)> = (0..sent.len() as i64).map(|offset| (0, offset)).collect();
    assert_eq!(
        acks, expected_acks,
        "each record acknowledged at the next offset"
    );

    let consumed = kafka::consume(&broker, topic, &[0], sent.len());
    assert_read_back_exactly(&sent, &consumed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rskafka_round_trip_preserves_keys_values_headers_and_timestamps() {
    let broker = Broker::start(1);
    let topic = "round-trip-rskafka";
    let client = rs::client(&broker).await;
    rs::create_topic(&client, topic, 1).await;
    let partition = rs::partition(&client, topic, 0).await;
    let sent = map_header_records(40);

    // Two batches, so offsets must continue across them.
    let first = rs::produce(
        &partition,
        sent[..25].iter().map(to_rskafka).collect(),
        Compression::NoCompression,
    )
    .await;
    let second = rs::produce(
        &partition,
        sent[25..].iter().map(to_rskafka).collect(),
        Compression::NoCompression,
    )
    .await;
    assert_eq!(
        [first, second].concat(),
        (0..40).collect::<Vec<i64>>(),
        "offsets of both batches"
    );

    let read = rs::read_exactly(&partition, 0, sent.len()).await;
    for (index, (sent, got)) in sent.iter().zip(&read).enumerate() {
        assert_eq!(got.offset, index as i64, "offset of record {index}");
        assert_eq!(
            &from_rskafka(&got.record),
            sent,
            "record {index} differs from what was produced"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_by_either_client_read_back_identically_by_the_other() {
    let broker = Broker::start(1);
    let client = rs::client(&broker).await;
    let sent = map_header_records(30);

    // rdkafka writes, rskafka reads.
    kafka::create_topic(&broker, "cross-rdkafka-to-rskafka", 1, &[]);
    kafka::produce(
        &kafka::producer(&broker),
        "cross-rdkafka-to-rskafka",
        Some(0),
        &sent,
    );
    let partition = rs::partition(&client, "cross-rdkafka-to-rskafka", 0).await;
    let read: Vec<Rec> = rs::read_exactly(&partition, 0, sent.len())
        .await
        .iter()
        .map(|r| from_rskafka(&r.record))
        .collect();
    assert_eq!(read, sent, "rskafka reads what rdkafka wrote");

    // rskafka writes, rdkafka reads.
    rs::create_topic(&client, "cross-rskafka-to-rdkafka", 1).await;
    let partition = rs::partition(&client, "cross-rskafka-to-rdkafka", 0).await;
    rs::produce(
        &partition,
        sent.iter().map(to_rskafka).collect(),
        Compression::NoCompression,
    )
    .await;
    let consumed = kafka::consume(&broker, "cross-rskafka-to-rdkafka", &[0], sent.len());
    assert_read_back_exactly(&sent, &consumed, 0);
}

#[test]
fn each_partition_keeps_the_order_records_were_produced_in() {
    let broker = Broker::start(1);
    let topic = "order-per-partition";
    let partitions = 4;
    let per_partition = 1_500;
    kafka::create_topic(&broker, topic, partitions, &[]);
    let producer = kafka::producer(&broker);

    // Interleave the partitions in small runs, so batches to different partitions share
    // requests and any reordering across or within them would show.
    for run in 0..(per_partition / 50) {
        for partition in 0..partitions {
            let records: Vec<Rec> = (0..50)
                .map(|i| Rec::value(format!("p{partition}-{:05}", run * 50 + i)))
                .collect();
            let acks = kafka::produce(&producer, topic, Some(partition), &records);
            let first = (run * 50) as i64;
            assert_eq!(
                acks,
                (first..first + 50)
                    .map(|o| (partition, o))
                    .collect::<Vec<_>>(),
                "acks of run {run} to partition {partition}"
            );
        }
    }

    let consumed = kafka::consume(
        &broker,
        topic,
        &(0..partitions).collect::<Vec<_>>(),
        partitions as usize * per_partition,
    );
    let mut by_partition: BTreeMap<i32, Vec<(i64, Vec<u8>)>> = BTreeMap::new();
    for c in consumed {
        by_partition
            .entry(c.partition)
            .or_default()
            .push((c.offset, c.record.value.expect("value")));
    }
    for partition in 0..partitions {
        let expected: Vec<(i64, Vec<u8>)> = (0..per_partition)
            .map(|i| (i as i64, format!("p{partition}-{i:05}").into_bytes()))
            .collect();
        assert_eq!(
            by_partition.get(&partition),
            Some(&expected),
            "partition {partition} in produce order at offsets 0.."
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rskafka_batches_keep_their_order_in_a_partition() {
    let broker = Broker::start(1);
    let client = rs::client(&broker).await;
    rs::create_topic(&client, "order-rskafka", 1).await;
    let partition = rs::partition(&client, "order-rskafka", 0).await;
    let mut expected = Vec::new();
    for batch in 0..20 {
        let records: Vec<_> = (0..25)
            .map(|i| {
                rs::record(
                    None,
                    Some(format!("{batch:02}-{i:02}").as_bytes()),
                    &[],
                    BASE_TS_MS,
                )
            })
            .collect();
        let offsets = rs::produce(&partition, records, Compression::NoCompression).await;
        assert_eq!(
            offsets,
            (batch * 25..batch * 25 + 25).collect::<Vec<i64>>(),
            "offsets of batch {batch}"
        );
        expected.extend((0..25).map(|i| format!("{batch:02}-{i:02}").into_bytes()));
    }
    let read: Vec<Vec<u8>> = rs::read_exactly(&partition, 0, expected.len())
        .await
        .into_iter()
        .map(|r| r.record.value.expect("value"))
        .collect();
    assert_eq!(read, expected, "values in produce order");
}

#[test]
fn every_acks_level_delivers_every_record() {
    let broker = Broker::start(1);
    // (acks setting, whether the broker answers with offsets)
    let cases = [("0", false), ("1", true), ("all", true), ("-1", true)];
    for (acks, answered) in cases {
        let topic = format!("acks-{acks}");
        kafka::create_topic(&broker, &topic, 1, &[]);
        let producer = kafka::producer_with(&broker, &[("acks", acks)]);
        let sent: Vec<Rec> = (0..500)
            .map(|i| Rec {
                timestamp_ms: Some(BASE_TS_MS + i),
                ..Rec::value(format!("acks={acks} #{i}"))
            })
            .collect();

        let acked = kafka::produce(&producer, &topic, Some(0), &sent);
        let offsets: Vec<i64> = acked.iter().map(|&(_, offset)| offset).collect();
        if answered {
            assert_eq!(
                offsets,
                (0..500).collect::<Vec<i64>>(),
                "acks={acks}: offsets in the produce responses"
            );
        } else {
            // No response means no offset: librdkafka reports negative placeholders
            // (RD_KAFKA_OFFSET_INVALID, -1001, counting up within a batch).
            assert!(
                offsets.iter().all(|&o| o < 0),
                "acks={acks}: no offsets are reported without responses: {offsets:?}"
            );
        }

        // acks=0 gets no answer; the records must still all be there, in order.
        let consumed = kafka::consume(&broker, &topic, &[0], sent.len());
        assert_read_back_exactly(&sent, &consumed, 0);
    }
}

#[test]
fn hundred_thousand_small_messages_are_counted_exactly_with_contiguous_offsets() {
    let broker = Broker::start(1);
    let topic = "hundred-thousand";
    let partitions = 4;
    let total = 100_000usize;
    kafka::create_topic(&broker, topic, partitions, &[]);
    let producer = kafka::producer_with(
        &broker,
        &[("linger.ms", "20"), ("batch.num.messages", "5000")],
    );

    // Sent in chunks, one partition per chunk in turn, so the count per partition is known.
    let mut acked_per_partition = BTreeMap::<i32, Vec<i64>>::new();
    for chunk in 0..(total / 5_000) {
        let partition = (chunk % partitions as usize) as i32;
        let records: Vec<Rec> = (chunk * 5_000..(chunk + 1) * 5_000)
            .map(|i| Rec::value(format!("{i:06}")))
            .collect();
        for (p, offset) in kafka::produce(&producer, topic, Some(partition), &records) {
            acked_per_partition.entry(p).or_default().push(offset);
        }
    }
    let per_partition = total / partitions as usize;
    for partition in 0..partitions {
        let acked = acked_per_partition
            .get(&partition)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert_eq!(
            acked,
            (0..per_partition as i64).collect::<Vec<_>>().as_slice(),
            "acked offsets of partition {partition} are contiguous from 0"
        );
        assert_eq!(
            kafka::watermarks(&broker, topic, partition),
            (0, per_partition as i64),
            "watermarks of partition {partition}"
        );
    }

    let consumed = kafka::consume(&broker, topic, &(0..partitions).collect::<Vec<_>>(), total);
    let mut next_offset = BTreeMap::<i32, i64>::new();
    let mut seen = vec![false; total];
    for c in &consumed {
        let next = next_offset.entry(c.partition).or_insert(0);
        assert_eq!(
            c.offset, *next,
            "partition {} offsets contiguous",
            c.partition
        );
        *next += 1;
        let value: usize = std::str::from_utf8(c.record.value.as_deref().expect("value"))
            .expect("utf8")
            .parse()
            .expect("number");
        assert!(!seen[value], "record {value} read twice");
        seen[value] = true;
    }
    assert!(seen.iter().all(|&s| s), "every record read once");
}

/// librdkafka's idempotent producer (InitProducerId, then sequenced batches with up to five
/// in flight) gets every record acknowledged once, at contiguous offsets, read back in order.
#[test]
fn idempotent_rdkafka_producer_writes_each_record_exactly_once() {
    let broker = Broker::start(1);
    let topic = "idempotent-rdkafka";
    kafka::create_topic(&broker, topic, 2, &[]);
    let producer = kafka::producer_with(
        &broker,
        &[
            ("enable.idempotence", "true"),
            ("max.in.flight.requests.per.connection", "5"),
            ("linger.ms", "2"),
            ("batch.num.messages", "100"),
        ],
    );
    let sent: Vec<Rec> = (0..4_000)
        .map(|i| Rec {
            timestamp_ms: Some(1_700_000_000_000 + i),
            ..Rec::value(format!("idem-{i:05}"))
        })
        .collect();
    let acked = kafka::produce(&producer, topic, Some(1), &sent);
    assert_eq!(
        acked.iter().map(|(_, offset)| *offset).collect::<Vec<_>>(),
        (0..4_000i64).collect::<Vec<_>>(),
        "acknowledged offsets"
    );
    assert_eq!(kafka::watermarks(&broker, topic, 1), (0, 4_000));
    let consumed = kafka::consume(&broker, topic, &[1], sent.len());
    assert_read_back_exactly(&sent, &consumed, 1);
}

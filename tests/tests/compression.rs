//! Compressed record batches (gzip, snappy, lz4, zstd) written by either client are stored
//! as sent and read back exactly by both clients.
//!
//! With `compression.type=producer` (the default) the broker never decompresses (it reads only
//! batch headers), so those tests check that it passes every codec's batches through intact,
//! attributes included. A topic with its own `compression.type` stores every batch with that
//! codec, recompressing what producers sent otherwise; both clients still read back exactly.
//! Also here: `message.timestamp.before/after.max.ms`.

use rskafka::client::partition::Compression;
use tern_tests::kafka::{self, Rec};
use tern_tests::{disk, rs, Broker};

/// (rdkafka `compression.codec`, rskafka codec, codec id in the batch attributes)
const CODECS: [(&str, Compression, u8); 4] = [
    ("gzip", Compression::Gzip, 1),
    ("snappy", Compression::Snappy, 2),
    ("lz4", Compression::Lz4, 3),
    ("zstd", Compression::Zstd, 4),
];

/// The broker stored compressed batches as they came: every batch carries the codec, and
/// together they hold exactly the records sent, at contiguous offsets.
fn assert_stored_compressed(broker: &Broker, topic: &str, codec: &str, codec_id: u8) {
    let batches = disk::stored_batches(broker, topic, 0);
    assert!(!batches.is_empty(), "{codec}: no batch on disk");
    let mut next = 0i64;
    for batch in &batches {
        assert_eq!(
            (batch.base_offset, batch.codec),
            (next, codec_id),
            "{codec}: stored batch {batch:?}"
        );
        next += i64::from(batch.record_count);
    }
    assert_eq!(next, RECORDS as i64, "{codec}: records in stored batches");
}

const RECORDS: usize = 300;
const TS_MS: i64 = 1_650_000_000_000;

/// Compressible but distinct records, with keys and headers so the compressed payload covers
/// every record field.
fn records(codec: &str) -> Vec<Rec> {
    (0..RECORDS)
        .map(|i| Rec {
            key: Some(format!("{codec}-key-{}", i % 10).into_bytes()),
            value: Some(format!("{codec} value {i:05} {}", "lorem ipsum ".repeat(20)).into_bytes()),
            headers: vec![("codec".to_owned(), Some(codec.as_bytes().to_vec()))],
            timestamp_ms: Some(TS_MS + i as i64),
        })
        .collect()
}

fn rec_from_rskafka(record: &rskafka::record::Record) -> Rec {
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

fn rskafka_record(rec: &Rec) -> rskafka::record::Record {
    rskafka::record::Record {
        key: rec.key.clone(),
        value: rec.value.clone(),
        headers: rec
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().expect("non-null header")))
            .collect(),
        timestamp: rs::timestamp(rec.timestamp_ms.expect("timestamp")),
    }
}

fn assert_consumed(codec: &str, reader: &str, sent: &[Rec], consumed: &[kafka::Consumed]) {
    assert_eq!(
        consumed.len(),
        sent.len(),
        "{codec}, read by {reader}: record count"
    );
    for (index, (sent, got)) in sent.iter().zip(consumed).enumerate() {
        assert_eq!(
            got.offset, index as i64,
            "{codec}, read by {reader}: offset of record {index}"
        );
        assert_eq!(
            &got.record, sent,
            "{codec}, read by {reader}: record {index}"
        );
    }
}

/// rdkafka compresses a batch with `codec`; the broker stores it compressed, and both
/// clients read every record back exactly.
async fn check_rdkafka_codec(codec: &str) {
    let (_, _, codec_id) = CODECS
        .into_iter()
        .find(|(name, _, _)| *name == codec)
        .expect("known codec");
    let broker = Broker::start(1);
    let topic = format!("compressed-by-rdkafka-{codec}");
    kafka::create_topic(&broker, &topic, 1, &[]);
    let producer = kafka::producer_with(
        &broker,
        &[("compression.codec", codec), ("linger.ms", "50")],
    );
    let sent = records(codec);
    let acks = kafka::produce(&producer, &topic, Some(0), &sent);
    assert_eq!(
        acks,
        (0..RECORDS as i64).map(|o| (0, o)).collect::<Vec<_>>(),
        "{codec}: acked offsets"
    );
    assert_stored_compressed(&broker, &topic, codec, codec_id);
    assert_read_back_by_both(&broker, &topic, codec, &sent).await;
}

/// Both clients read exactly `sent` back from partition 0 of `topic`.
async fn assert_read_back_by_both(broker: &Broker, topic: &str, codec: &str, sent: &[Rec]) {
    assert_consumed(
        codec,
        "rdkafka",
        sent,
        &kafka::consume(broker, topic, &[0], RECORDS),
    );
    let client = rs::client(broker).await;
    let partition = rs::partition(&client, topic, 0).await;
    let read = rs::read_exactly(&partition, 0, RECORDS).await;
    let read: Vec<Rec> = read.iter().map(|r| rec_from_rskafka(&r.record)).collect();
    assert_eq!(read, sent, "{codec}, read by rskafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_gzip_batches_are_stored_compressed_and_read_back_exactly() {
    check_rdkafka_codec("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_snappy_batches_are_stored_compressed_and_read_back_exactly() {
    check_rdkafka_codec("snappy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_lz4_batches_are_stored_compressed_and_read_back_exactly() {
    check_rdkafka_codec("lz4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_zstd_batches_are_stored_compressed_and_read_back_exactly() {
    check_rdkafka_codec("zstd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rskafka_batches_of_every_codec_are_stored_compressed_and_read_back_exactly() {
    let broker = Broker::start(1);
    let client = rs::client(&broker).await;
    for (codec, compression, codec_id) in CODECS {
        let topic = format!("compressed-by-rskafka-{codec}");
        rs::create_topic(&client, &topic, 1).await;
        let partition = rs::partition(&client, &topic, 0).await;
        let sent = records(codec);
        // Three batches, so offsets must continue across compressed batches.
        let mut offsets = Vec::new();
        for chunk in sent.chunks(100) {
            offsets.extend(
                rs::produce(
                    &partition,
                    chunk.iter().map(rskafka_record).collect(),
                    compression,
                )
                .await,
            );
        }
        assert_eq!(
            offsets,
            (0..RECORDS as i64).collect::<Vec<_>>(),
            "{codec}: offsets"
        );
        assert_stored_compressed(&broker, &topic, codec, codec_id);
        assert_eq!(
            disk::stored_batches(&broker, &topic, 0).len(),
            3,
            "{codec}: one stored batch per produce call"
        );

        let read = rs::read_exactly(&partition, 0, RECORDS).await;
        let read: Vec<Rec> = read.iter().map(|r| rec_from_rskafka(&r.record)).collect();
        assert_eq!(read, sent, "{codec}, read by rskafka");

        assert_consumed(
            codec,
            "rdkafka",
            &sent,
            &kafka::consume(&broker, &topic, &[0], RECORDS),
        );

        // A fetch starting inside a compressed batch returns the whole batch; clients skip
        // the records before the offset they asked for.
        let middle = rs::read_exactly(&partition, 150, RECORDS - 150).await;
        assert_eq!(
            middle.first().map(|r| r.offset),
            Some(150),
            "{codec}: read from the middle of a batch"
        );
    }
}

/// A topic's `compression.type` is what is stored: uncompressed batches from rdkafka become
/// each codec's, a gzip batch becomes uncompressed, and both clients read back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_compression_type_recompresses_what_producers_send() {
    let broker = Broker::start(1);
    let cases = [
        ("lz4", "none", 3u8),
        ("zstd", "none", 4),
        ("gzip", "snappy", 1),
        ("snappy", "none", 2),
        ("uncompressed", "gzip", 0),
    ];
    for (topic_codec, producer_codec, stored) in cases {
        let topic = format!("stored-as-{topic_codec}");
        kafka::create_topic(&broker, &topic, 1, &[("compression.type", topic_codec)]);
        let producer = kafka::producer_with(
            &broker,
            &[("compression.codec", producer_codec), ("linger.ms", "50")],
        );
        let sent = records(topic_codec);
        let acks = kafka::produce(&producer, &topic, Some(0), &sent);
        assert_eq!(acks.len(), RECORDS);
        assert_stored_compressed(&broker, &topic, topic_codec, stored);
        assert_read_back_by_both(&broker, &topic, topic_codec, &sent).await;
    }
}

/// CreateTime topics with timestamp bounds refuse records too far in the past or future with
/// INVALID_TIMESTAMP, and take the rest.
#[test]
fn timestamps_outside_the_topics_bounds_are_refused() {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let broker = Broker::start(1);
    kafka::create_topic(
        &broker,
        "bounded",
        1,
        &[
            ("message.timestamp.before.max.ms", "3600000"),
            ("message.timestamp.after.max.ms", "60000"),
        ],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = |ts: i64| Rec {
        timestamp_ms: Some(ts),
        ..Rec::value(format!("at {ts}"))
    };
    let producer = kafka::producer_with(&broker, &[("retries", "0"), ("linger.ms", "0")]);
    // One at a time: a batch is refused whole, as Kafka does.
    let outcomes: Vec<_> = [now - 7_200_000, now - 60_000, now + 3_600_000]
        .into_iter()
        .map(|ts| kafka::try_produce(&producer, "bounded", Some(0), &[at(ts)]).remove(0))
        .collect();
    let refused = |outcome: &Result<(i32, i64), KafkaError>| {
        matches!(
            outcome,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::InvalidTimestamp
            ))
        )
    };
    assert!(refused(&outcomes[0]), "two hours old: {:?}", outcomes[0]);
    assert!(outcomes[1].is_ok(), "a minute old: {:?}", outcomes[1]);
    assert!(refused(&outcomes[2]), "an hour ahead: {:?}", outcomes[2]);
}

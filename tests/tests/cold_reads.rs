//! Reads that the tail cache cannot serve: a partition holding more than its cache cap (8 MiB
//! per partition, `TAIL_CACHE_BYTES_PER_PARTITION`) is read from offset 0, so the first part
//! comes from the segment file through direct IO on a broker that has never restarted, then
//! the rest from the cache; many partitions over the shard's one tail budget; many segments
//! under a small index cache and a small budget of open files.

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

/// Sealed segments' indexes live in a per-shard cache with a byte budget
/// (`--index-cache-bytes`), and their files are open within a per-shard budget
/// (`--open-files-per-shard`); a partition of ~190 small segments, whose indexes together are
/// far over a 2 KiB budget, still reads back exactly from offset 0 and answers time lookups in
/// its oldest segments, while the cache and the broker's open segment files stay within their
/// budgets.
#[test]
fn many_segments_read_back_exactly_under_small_index_cache_and_open_file_budgets() {
    let budget = 2048;
    let open_files = 8;
    let broker = Broker::start_with(
        1,
        &[
            "--index-cache-bytes",
            &budget.to_string(),
            "--open-files-per-shard",
            &open_files.to_string(),
        ],
    );
    let topic = "index-budget";
    kafka::create_topic(
        &broker,
        topic,
        1,
        &[("segment.bytes", "65536"), ("index.interval.bytes", "64")],
    );
    let producer = kafka::producer_with(&broker, &[("linger.ms", "0")]);
    let sent: Vec<Rec> = (0..RECORDS)
        .map(|i| Rec {
            timestamp_ms: Some(1_700_000_000_000 + i as i64),
            ..Rec::value(value(i))
        })
        .collect();
    for chunk in sent.chunks(4) {
        kafka::produce(&producer, topic, Some(0), chunk);
    }
    let partition_dir = broker.data_dir().join("data").join(format!("{topic}-0"));
    // The broker's descriptors on this partition's segment files.
    let open_segment_files = || {
        std::fs::read_dir(format!("/proc/{}/fd", broker.pid()))
            .expect("the broker's descriptors")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| {
                target.starts_with(&partition_dir)
                    && target.extension().is_some_and(|ext| ext == "log")
            })
            .count() as u64
    };
    assert!(
        open_segment_files() <= open_files + 1,
        "{} segment files open after the writes",
        open_segment_files()
    );
    let segments = std::fs::read_dir(&partition_dir)
        .expect("partition directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count();
    assert!(segments > 100, "{segments} segments");

    let consumed = kafka::consume(&broker, topic, &[0], RECORDS);
    assert_eq!(consumed.len(), RECORDS);
    for (index, (sent, got)) in sent.iter().zip(&consumed).enumerate() {
        assert_eq!(got.offset, index as i64, "offset of record {index}");
        assert!(got.record == *sent, "record {index} differs");
    }
    // Time lookups that land in old segments whose indexes were evicted.
    let consumer = kafka::consumer(&broker);
    for index in [3usize, 150, 400] {
        let mut query = rdkafka::TopicPartitionList::new();
        query
            .add_partition_offset(topic, 0, Offset::Offset(1_700_000_000_000 + index as i64))
            .expect("query");
        let answer =
            rdkafka::consumer::Consumer::offsets_for_times(&consumer, query, kafka::WAIT_MAX)
                .expect("offsets_for_times");
        let found = answer.elements()[0].offset();
        assert_eq!(
            found,
            Offset::Offset(index as i64),
            "time of record {index}"
        );
    }
    let cached = broker.metric("tern_index_cache_bytes");
    let misses = broker.metric("tern_index_cache_misses_total");
    assert!(cached <= budget, "index cache holds {cached} bytes");
    assert!(misses > 0, "no index was read back from disk");
    // What lies beyond the tail cache was read from disk, each segment's file opened again
    // (the budget had closed it; 103 in one run); the active one's stays open.
    assert!(broker.metric("tern_open_segment_files") <= open_files);
    let reopens = broker.metric("tern_segment_file_reopens_total");
    assert!(reopens > 20, "{reopens} segment files opened again");
    assert!(
        open_segment_files() <= open_files + 1,
        "{} segment files open after the reads",
        open_segment_files()
    );
}

/// Every partition's tail cache on a shard shares one budget (`--tail-cache-bytes`): eight
/// partitions of 1.5 MiB each on a 2 MiB budget keep the shard within it, the batches
/// appended longest ago leave, and every record reads back exactly (most from disk).
#[test]
fn tail_caches_of_many_partitions_share_one_shard_budget() {
    let budget: u64 = 2 << 20;
    let broker = Broker::start_with(1, &["--tail-cache-bytes", &budget.to_string()]);
    let topic = "tail-budget";
    let partitions = 8;
    let per_partition: usize = 96; // 1.5 MiB of 16 KiB values
    kafka::create_topic(&broker, topic, partitions, &[]);
    let producer = kafka::producer_with(&broker, &[("linger.ms", "5")]);
    let mut sent = Vec::new();
    for p in 0..partitions {
        let records: Vec<Rec> = (0..per_partition)
            .map(|i| Rec {
                timestamp_ms: Some(1_700_000_000_000 + i as i64),
                ..Rec::value(value(p as usize * 1000 + i))
            })
            .collect();
        for chunk in records.chunks(16) {
            kafka::produce(&producer, topic, Some(p), chunk);
        }
        sent.push(records);
    }
    let held = broker.metric("tern_log_tail_cache_bytes");
    let evictions = broker.metric("tern_tail_cache_evictions_total");
    assert!(
        held <= budget,
        "tail caches hold {held} bytes, over {budget}"
    );
    assert!(evictions > 0, "no batch left a tail cache");
    assert_eq!(broker.metric("tern_tail_cache_budget_bytes"), budget);
    for (p, records) in sent.iter().enumerate() {
        let consumed = kafka::consume(&broker, topic, &[p as i32], per_partition);
        assert_eq!(consumed.len(), per_partition, "partition {p}");
        for (index, (sent, got)) in records.iter().zip(&consumed).enumerate() {
            assert_eq!(got.offset, index as i64, "partition {p} offset {index}");
            assert!(got.record == *sent, "partition {p} record {index} differs");
        }
    }
}

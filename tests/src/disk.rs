//! Reads a partition's segment files straight from the broker's data directory, to check
//! what the broker stored (not just what a client reads back): batches kept byte for byte
//! as sent, compression included.
//!
//! Only the fields needed are decoded, from the RecordBatch v2 header (big-endian):
//!
//! | offset | size | field                |
//! |-------:|-----:|----------------------|
//! | 0      | 8    | baseOffset           |
//! | 8      | 4    | batchLength (from 12)|
//! | 12     | 4    | partitionLeaderEpoch |
//! | 16     | 1    | magic (2)            |
//! | 17     | 4    | crc                  |
//! | 21     | 2    | attributes (bits 0-2: codec) |
//! | 23     | 4    | lastOffsetDelta      |
//! | …      |      |                      |
//! | 57     | 4    | recordCount          |
//!
//! Segment files may be preallocated: a zero `batchLength` ends the log.

use std::path::PathBuf;

use crate::Broker;

const HEADER_BYTES: usize = 61;

/// One stored batch, as its header describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub base_offset: i64,
    /// 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub codec: u8,
    pub record_count: i32,
}

fn partition_dir(broker: &Broker, topic: &str, partition: i32) -> PathBuf {
    broker
        .data_dir()
        .join("data")
        .join(format!("{topic}-{partition}"))
}

/// Every batch in the partition's `.log` segments, in file-name (offset) order.
pub fn stored_batches(broker: &Broker, topic: &str, partition: i32) -> Vec<StoredBatch> {
    let dir = partition_dir(broker, topic, partition);
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    segments.sort();
    let mut out = Vec::new();
    for segment in segments {
        let bytes = std::fs::read(&segment)
            .unwrap_or_else(|error| panic!("reading {}: {error}", segment.display()));
        let mut at = 0usize;
        while at + HEADER_BYTES <= bytes.len() {
            let field = |offset: usize, len: usize| &bytes[at + offset..at + offset + len];
            let batch_length = i32::from_be_bytes(field(8, 4).try_into().expect("4 bytes"));
            if batch_length == 0 {
                break;
            }
            assert_eq!(
                field(16, 1),
                [2],
                "{}: magic of the batch at byte {at}",
                segment.display()
            );
            out.push(StoredBatch {
                base_offset: i64::from_be_bytes(field(0, 8).try_into().expect("8 bytes")),
                codec: (i16::from_be_bytes(field(21, 2).try_into().expect("2 bytes")) & 0x7) as u8,
                record_count: i32::from_be_bytes(field(57, 4).try_into().expect("4 bytes")),
            });
            at += 12 + usize::try_from(batch_length).expect("positive batch length");
        }
    }
    out
}

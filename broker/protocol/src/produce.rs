//! Produce request parsing without copying or decoding records.
//!
//! ```text
//! ProduceRequest v3..=11 (compact strings/arrays and tagged fields from v9)
//!   transactional_id : nullable string
//!   acks             : i16
//!   timeout_ms       : i32
//!   topics           : [ name: string,
//!                        partitions: [ index: i32, records: nullable bytes, <tags v9+> ],
//!                        <tags v9+> ]
//!   <tags v9+>
//! ```
//! The parser returns, per partition, the byte range of its record set inside the frame, so
//! the broker can split the received buffer into per-partition pieces and hand each, still
//! in the same allocation, to the owner shard. Record batches themselves are validated by
//! the log (`batch::validate`) before anything is written.

use std::ops::Range;

use crate::limits;
use crate::wire::{Reader, WireError};

pub const VERSION_MIN_PARSED: i16 = 3;
pub const FLEXIBLE_FROM: i16 = 9;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequest {
    pub transactional_id: Option<String>,
    pub acks: i16,
    pub timeout_ms: i32,
    pub topics: Vec<ProduceTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceTopic {
    pub name: String,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducePartition {
    pub index: i32,
    /// Byte range of the record set inside the body passed to `parse`; `None` for null.
    pub records: Option<Range<usize>>,
}

impl ProduceRequest {
    pub fn partition_count(&self) -> usize {
        self.topics.iter().map(|topic| topic.partitions.len()).sum()
    }
}

/// Parses a Produce body (the bytes after the request header).
pub fn parse(body: &[u8], version: i16) -> Result<ProduceRequest, WireError> {
    if !(VERSION_MIN_PARSED..=11).contains(&version) {
        return Err(WireError::UnsupportedVersion {
            api_key: 0,
            version,
        });
    }
    let compact = version >= FLEXIBLE_FROM;
    let mut reader = Reader::new(body);
    let transactional_id = reader.nullable_string(compact)?.map(str::to_owned);
    let acks = reader.i16()?;
    let timeout_ms = reader.i32()?;
    // A topic takes at least a name length and a partition array length.
    let topic_count = reader.array_len(compact, 2)?.unwrap_or(0);
    let mut topics = Vec::with_capacity(topic_count);
    let mut partitions_total = 0usize;
    for _ in 0..topic_count {
        let name = reader.string(compact)?.to_owned();
        // A partition takes at least an index and a records length.
        let partition_count = reader.array_len(compact, 5)?.unwrap_or(0);
        partitions_total += partition_count;
        if partitions_total > limits::PARTITIONS_PER_REQUEST_MAX {
            return Err(WireError::ArrayTooLong {
                position: reader.position(),
                count: partitions_total as u64,
                remaining: reader.remaining(),
            });
        }
        let mut partitions = Vec::with_capacity(partition_count);
        for _ in 0..partition_count {
            let index = reader.i32()?;
            let records = reader.nullable_bytes_range(compact)?;
            if compact {
                reader.skip_tagged_fields()?;
            }
            partitions.push(ProducePartition { index, records });
        }
        if compact {
            reader.skip_tagged_fields()?;
        }
        topics.push(ProduceTopic { name, partitions });
    }
    if compact {
        reader.skip_tagged_fields()?;
    }
    reader.expect_end()?;
    Ok(ProduceRequest {
        transactional_id,
        acks,
        timeout_ms,
        topics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest as Crate, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn encoded(version: i16, records: &'static [u8]) -> BytesMut {
        let request = Crate::default()
            .with_acks(-1)
            .with_timeout_ms(1500)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(2)
                        .with_records(Some(Bytes::from_static(records))),
                    PartitionProduceData::default()
                        .with_index(5)
                        .with_records(None),
                ])]);
        let mut out = BytesMut::new();
        request.encode(&mut out, version).unwrap();
        out
    }

    #[test]
    fn parses_every_supported_version_and_locates_records() {
        for version in 3..=11 {
            let body = encoded(version, b"batch-bytes");
            let parsed = parse(&body, version).unwrap();
            assert_eq!(parsed.acks, -1);
            assert_eq!(parsed.timeout_ms, 1500);
            assert_eq!(parsed.topics[0].name, "orders");
            let range = parsed.topics[0].partitions[0].records.clone().unwrap();
            assert_eq!(&body[range], b"batch-bytes", "v{version}");
            assert_eq!(parsed.topics[0].partitions[1].records, None);
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let body = encoded(9, b"0123456789");
        for cut in 0..body.len() {
            assert!(parse(&body[..cut], 9).is_err(), "cut at {cut}");
        }
    }
}

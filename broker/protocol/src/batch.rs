//! The RecordBatch v2 header view: parsing, validation, in-place patching, and a builder.
//!
//! This file owns the byte layout of Kafka's RecordBatch (magic 2) header and the rules that
//! decide whether a buffer received from a producer (or read back from disk) is a well-formed
//! batch. It never looks inside the records themselves (they may be compressed) except in the
//! [`BatchBuilder`], which encodes real records for tests and tools. It performs no I/O.
//!
//! The storage engine calls [`validate_batch`] / [`BatchIter`] on every batch before it is
//! written and again when it is read back during recovery (pair assertions), and patches the
//! two fields the broker owns (`baseOffset`, `partitionLeaderEpoch`) in place with
//! [`set_base_offset`] and [`set_partition_leader_epoch`]. Both lie outside the CRC, so the
//! producer's checksum stays valid. [`set_log_append_time`] is the one rewrite that touches
//! CRC-covered bytes, and it recomputes the CRC.
//!
//! # Layout (all integers big-endian)
//!
//! | offset | size | field                  | notes                                           |
//! |-------:|-----:|------------------------|-------------------------------------------------|
//! |      0 |    8 | `baseOffset` i64       | assigned by the broker                           |
//! |      8 |    4 | `batchLength` i32      | bytes after this field: total = 12 + batchLength |
//! |     12 |    4 | `partitionLeaderEpoch` | i32, assigned by the broker                      |
//! |     16 |    1 | `magic` i8             | must be 2                                        |
//! |     17 |    4 | `crc` u32              | CRC32C of bytes 21..end                          |
//! |     21 |    2 | `attributes` i16       | bits 0-2 codec, 3 timestampType, 4 txn, 5 ctrl   |
//! |     23 |    4 | `lastOffsetDelta` i32  |                                                  |
//! |     27 |    8 | `baseTimestamp` i64    |                                                  |
//! |     35 |    8 | `maxTimestamp` i64     |                                                  |
//! |     43 |    8 | `producerId` i64       |                                                  |
//! |     51 |    2 | `producerEpoch` i16    |                                                  |
//! |     53 |    4 | `baseSequence` i32     |                                                  |
//! |     57 |    4 | `recordCount` i32      |                                                  |
//! |     61 |    … | records                | varint-encoded, possibly compressed              |

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::byteorder::big_endian::{I16, I32, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::types::{LeaderEpoch, Offset, ProducerId, TimestampMs};

/// Size of the fixed header; the records start here.
pub const BATCH_HEADER_BYTES: usize = 61;
/// `baseOffset` (8) and `batchLength` (4) precede the part that `batchLength` counts.
pub const BATCH_LOG_OVERHEAD_BYTES: usize = 12;
/// The smallest legal `batchLength`: the header without the first 12 bytes.
pub const BATCH_LENGTH_MIN: i32 = (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES) as i32;
/// The CRC covers everything from `attributes` to the end of the batch.
pub const CRC_START_OFFSET: usize = 21;
/// The only magic this broker stores.
pub const MAGIC_V2: i8 = 2;

const OFFSET_BASE_OFFSET: usize = 0;
const OFFSET_LEADER_EPOCH: usize = 12;
const OFFSET_CRC: usize = 17;
const OFFSET_ATTRIBUTES: usize = 21;
const OFFSET_MAX_TIMESTAMP: usize = 35;

/// Attribute bit 3: 0 = CreateTime, 1 = LogAppendTime.
pub const ATTR_TIMESTAMP_TYPE_LOG_APPEND: i16 = 1 << 3;
/// Attribute bit 4: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit 5: the batch is a control batch (transaction markers).
pub const ATTR_CONTROL: i16 = 1 << 5;
/// Attribute bits 0-2: the compression codec.
pub const ATTR_COMPRESSION_MASK: i16 = 0x7;

/// The header exactly as it lies in memory, each field at the offset of the table above.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawBatchHeader {
    base_offset: I64,
    batch_length: I32,
    partition_leader_epoch: I32,
    magic: i8,
    crc: U32,
    attributes: I16,
    last_offset_delta: I32,
    base_timestamp: I64,
    max_timestamp: I64,
    producer_id: I64,
    producer_epoch: I16,
    base_sequence: I32,
    record_count: I32,
}

const _: () = assert!(std::mem::size_of::<RawBatchHeader>() == BATCH_HEADER_BYTES);

/// Why a buffer is not an acceptable RecordBatch v2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than a header, or than `batchLength` announces. Maps to CORRUPT_MESSAGE (2).
    #[error("batch truncated: need {needed_bytes} bytes, have {available_bytes}")]
    Truncated {
        needed_bytes: usize,
        available_bytes: usize,
    },
    /// `batchLength` below the header size or not matching the buffer. Maps to INVALID_RECORD (87).
    #[error("invalid batchLength {batch_length} for a buffer of {buffer_bytes} bytes")]
    InvalidLength {
        batch_length: i32,
        buffer_bytes: usize,
    },
    /// `magic` is not 2. Maps to INVALID_RECORD (87).
    #[error("unsupported magic {0}, only RecordBatch v2 is accepted")]
    InvalidMagic(i8),
    /// `recordCount` / `lastOffsetDelta` are negative or inconsistent. Maps to INVALID_RECORD (87).
    #[error(
        "inconsistent counts: recordCount {record_count}, lastOffsetDelta {last_offset_delta}"
    )]
    InvalidCounts {
        record_count: i32,
        last_offset_delta: i32,
    },
    /// The stored CRC32C does not match the bytes. Maps to CORRUPT_MESSAGE (2).
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
}

impl BatchError {
    /// The Kafka error code a produce response carries for this failure.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            BatchError::Truncated { .. } | BatchError::CrcMismatch { .. } => 2,
            BatchError::InvalidLength { .. }
            | BatchError::InvalidMagic(_)
            | BatchError::InvalidCounts { .. } => 87,
        }
    }
}

/// A copy of one batch's 61-byte header with typed accessors. Cheap to copy; holds no borrow.
#[derive(Clone, Copy)]
pub struct BatchHeader {
    raw: RawBatchHeader,
}

impl std::fmt::Debug for BatchHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHeader")
            .field("base_offset", &self.base_offset())
            .field("batch_length", &self.batch_length())
            .field("leader_epoch", &self.partition_leader_epoch())
            .field("magic", &self.magic())
            .field("attributes", &self.attributes())
            .field("last_offset_delta", &self.last_offset_delta())
            .field("max_timestamp", &self.max_timestamp())
            .field("record_count", &self.record_count())
            .finish()
    }
}

impl BatchHeader {
    /// Reads the header fields from the first 61 bytes without validating anything.
    pub fn parse_unchecked(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        match RawBatchHeader::read_from_prefix(bytes) {
            Ok((raw, _)) => Ok(BatchHeader { raw }),
            Err(_) => Err(BatchError::Truncated {
                needed_bytes: BATCH_HEADER_BYTES,
                available_bytes: bytes.len(),
            }),
        }
    }

    pub fn base_offset(&self) -> Offset {
        Offset(self.raw.base_offset.get())
    }
    pub fn batch_length(&self) -> i32 {
        self.raw.batch_length.get()
    }
    /// The whole batch on the wire: `batchLength` plus the 12 bytes before it. Only meaningful
    /// once validated (a negative `batchLength` yields a value below the header size).
    pub fn total_bytes(&self) -> usize {
        BATCH_LOG_OVERHEAD_BYTES + self.batch_length().max(0) as usize
    }
    pub fn partition_leader_epoch(&self) -> LeaderEpoch {
        LeaderEpoch(self.raw.partition_leader_epoch.get())
    }
    pub fn magic(&self) -> i8 {
        self.raw.magic
    }
    pub fn crc(&self) -> u32 {
        self.raw.crc.get()
    }
    pub fn attributes(&self) -> i16 {
        self.raw.attributes.get()
    }
    pub fn compression_codec(&self) -> u8 {
        (self.attributes() & ATTR_COMPRESSION_MASK) as u8
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & ATTR_TIMESTAMP_TYPE_LOG_APPEND != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }
    pub fn last_offset_delta(&self) -> i32 {
        self.raw.last_offset_delta.get()
    }
    /// The offset of the batch's last record: `baseOffset + lastOffsetDelta`.
    pub fn last_offset(&self) -> Offset {
        self.base_offset().plus(i64::from(self.last_offset_delta()))
    }
    /// The offset following this batch.
    pub fn next_offset(&self) -> Offset {
        self.last_offset().next()
    }
    pub fn base_timestamp(&self) -> TimestampMs {
        TimestampMs(self.raw.base_timestamp.get())
    }
    pub fn max_timestamp(&self) -> TimestampMs {
        TimestampMs(self.raw.max_timestamp.get())
    }
    pub fn producer_id(&self) -> ProducerId {
        ProducerId(self.raw.producer_id.get())
    }
    pub fn producer_epoch(&self) -> i16 {
        self.raw.producer_epoch.get()
    }
    pub fn base_sequence(&self) -> i32 {
        self.raw.base_sequence.get()
    }
    pub fn record_count(&self) -> i32 {
        self.raw.record_count.get()
    }
}

/// Reads `batchLength` from a prefix and returns the batch's total size in bytes, checking only
/// that the length is plausible (at least a header). Used to split a stream of batches.
pub fn peek_batch_total_bytes(bytes: &[u8]) -> Result<usize, BatchError> {
    if bytes.len() < BATCH_LOG_OVERHEAD_BYTES {
        return Err(BatchError::Truncated {
            needed_bytes: BATCH_LOG_OVERHEAD_BYTES,
            available_bytes: bytes.len(),
        });
    }
    let batch_length = i32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if batch_length < BATCH_LENGTH_MIN {
        return Err(BatchError::InvalidLength {
            batch_length,
            buffer_bytes: bytes.len(),
        });
    }
    Ok(BATCH_LOG_OVERHEAD_BYTES + batch_length as usize)
}

/// Validates exactly one batch: `bytes` must be the whole batch and nothing else.
///
/// Checks, in order: a header is present, `batchLength` ≥ 49 and equal to `bytes.len() - 12`,
/// magic is 2, counts are consistent (`recordCount ≥ 1`, `lastOffsetDelta ≥ recordCount - 1`,
/// which allows compacted batches), and the CRC32C over bytes 21.. matches.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse_unchecked(bytes)?;
    let batch_length = header.batch_length();
    if batch_length < BATCH_LENGTH_MIN {
        return Err(BatchError::InvalidLength {
            batch_length,
            buffer_bytes: bytes.len(),
        });
    }
    let total_bytes = BATCH_LOG_OVERHEAD_BYTES + batch_length as usize;
    if total_bytes > bytes.len() {
        return Err(BatchError::Truncated {
            needed_bytes: total_bytes,
            available_bytes: bytes.len(),
        });
    }
    if total_bytes != bytes.len() {
        return Err(BatchError::InvalidLength {
            batch_length,
            buffer_bytes: bytes.len(),
        });
    }
    if header.magic() != MAGIC_V2 {
        return Err(BatchError::InvalidMagic(header.magic()));
    }
    let record_count = header.record_count();
    let last_offset_delta = header.last_offset_delta();
    if record_count < 1 || last_offset_delta < 0 || last_offset_delta < record_count - 1 {
        return Err(BatchError::InvalidCounts {
            record_count,
            last_offset_delta,
        });
    }
    let computed = crc32c::crc32c(&bytes[CRC_START_OFFSET..]);
    if computed != header.crc() {
        return Err(BatchError::CrcMismatch {
            stored: header.crc(),
            computed,
        });
    }
    Ok(header)
}

/// Splits a buffer of concatenated batches into validated batches, yielding each batch's
/// position in the buffer and its header. Stops after the first error (yielded once).
#[derive(Debug)]
pub struct BatchIter<'a> {
    bytes: &'a [u8],
    position: usize,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    pub fn new(bytes: &'a [u8]) -> BatchIter<'a> {
        BatchIter {
            bytes,
            position: 0,
            failed: false,
        }
    }

    /// Where the next batch would start; after an error, where the bad batch starts.
    pub fn position(&self) -> usize {
        self.position
    }
}

/// One validated batch inside a larger buffer.
#[derive(Debug, Clone, Copy)]
pub struct BatchSpan {
    /// Byte position of the batch's first byte in the buffer.
    pub position: usize,
    /// Whole size of the batch, `12 + batchLength`.
    pub total_bytes: usize,
    pub header: BatchHeader,
}

impl Iterator for BatchIter<'_> {
    type Item = Result<BatchSpan, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.position..];
        let result = peek_batch_total_bytes(rest).and_then(|total_bytes| {
            if total_bytes > rest.len() {
                return Err(BatchError::Truncated {
                    needed_bytes: total_bytes,
                    available_bytes: rest.len(),
                });
            }
            validate_batch(&rest[..total_bytes]).map(|header| BatchSpan {
                position: self.position,
                total_bytes,
                header,
            })
        });
        match &result {
            Ok(span) => self.position += span.total_bytes,
            Err(_) => self.failed = true,
        }
        Some(result)
    }
}

fn check_header_len(batch: &[u8]) {
    // Callers patch batches they have already validated; a shorter buffer is a bug, not input.
    assert!(
        batch.len() >= BATCH_HEADER_BYTES,
        "patching a buffer shorter than a batch header"
    );
}

/// Writes `baseOffset` in place. The field lies outside the CRC, so the batch stays valid.
pub fn set_base_offset(batch: &mut [u8], offset: Offset) {
    check_header_len(batch);
    batch[OFFSET_BASE_OFFSET..OFFSET_BASE_OFFSET + 8].copy_from_slice(&offset.0.to_be_bytes());
}

/// Writes `partitionLeaderEpoch` in place. Outside the CRC too.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: LeaderEpoch) {
    check_header_len(batch);
    batch[OFFSET_LEADER_EPOCH..OFFSET_LEADER_EPOCH + 4].copy_from_slice(&epoch.0.to_be_bytes());
}

/// Stamps the batch as LogAppendTime: sets the timestampType attribute bit and `maxTimestamp`
/// to `now`, then recomputes the CRC (both fields are covered by it). `batch` must be exactly
/// one whole batch.
pub fn set_log_append_time(batch: &mut [u8], now: TimestampMs) {
    check_header_len(batch);
    let attributes = i16::from_be_bytes([batch[OFFSET_ATTRIBUTES], batch[OFFSET_ATTRIBUTES + 1]])
        | ATTR_TIMESTAMP_TYPE_LOG_APPEND;
    batch[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8].copy_from_slice(&now.0.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START_OFFSET..]);
    batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// One record for [`BatchBuilder`].
#[derive(Debug, Clone, Default)]
pub struct BuilderRecord {
    pub timestamp_delta_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Encodes real, uncompressed RecordBatch v2 bytes (varint records, CRC32C). Meant for tests,
/// benchmarks and tools; the broker never needs to build batches on its request path.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    pub base_offset: Offset,
    pub partition_leader_epoch: LeaderEpoch,
    pub attributes: i16,
    pub base_timestamp: TimestampMs,
    pub producer_id: ProducerId,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    records: Vec<BuilderRecord>,
}

impl BatchBuilder {
    pub fn new(base_timestamp: TimestampMs) -> BatchBuilder {
        BatchBuilder {
            base_offset: Offset(0),
            partition_leader_epoch: LeaderEpoch::NONE,
            attributes: 0,
            base_timestamp,
            producer_id: ProducerId(-1),
            producer_epoch: -1,
            base_sequence: -1,
            records: Vec::new(),
        }
    }

    /// Adds a record with a value and no key or headers.
    pub fn value(mut self, timestamp_delta_ms: i64, value: impl Into<Bytes>) -> BatchBuilder {
        self.records.push(BuilderRecord {
            timestamp_delta_ms,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
        });
        self
    }

    pub fn record(mut self, record: BuilderRecord) -> BatchBuilder {
        self.records.push(record);
        self
    }

    /// Encodes the batch. Panics on an empty builder: a batch has at least one record.
    pub fn build(&self) -> BytesMut {
        assert!(
            !self.records.is_empty(),
            "a batch needs at least one record"
        );
        let mut body = BytesMut::new();
        let mut max_timestamp = self.base_timestamp.0;
        for (delta, record) in self.records.iter().enumerate() {
            max_timestamp = max_timestamp.max(self.base_timestamp.0 + record.timestamp_delta_ms);
            let mut rec = BytesMut::new();
            rec.put_i8(0);
            put_varlong(&mut rec, record.timestamp_delta_ms);
            put_varlong(&mut rec, delta as i64);
            put_nullable(&mut rec, record.key.as_deref());
            put_nullable(&mut rec, record.value.as_deref());
            put_varlong(&mut rec, record.headers.len() as i64);
            for (key, value) in &record.headers {
                put_varlong(&mut rec, key.len() as i64);
                rec.put_slice(key.as_bytes());
                put_nullable(&mut rec, value.as_deref());
            }
            put_varlong(&mut body, rec.len() as i64);
            body.put_slice(&rec);
        }
        let record_count = self.records.len() as i32;
        let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + body.len());
        out.put_i64(self.base_offset.0);
        out.put_i32((BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES + body.len()) as i32);
        out.put_i32(self.partition_leader_epoch.0);
        out.put_i8(MAGIC_V2);
        out.put_u32(0);
        out.put_i16(self.attributes);
        out.put_i32(record_count - 1);
        out.put_i64(self.base_timestamp.0);
        out.put_i64(max_timestamp);
        out.put_i64(self.producer_id.0);
        out.put_i16(self.producer_epoch);
        out.put_i32(self.base_sequence);
        out.put_i32(record_count);
        out.put_slice(&body);
        let crc = crc32c::crc32c(&out[CRC_START_OFFSET..]);
        out[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

/// Builds a batch of `record_count` records each carrying a `value_bytes`-long value. A
/// shorthand for tests and benchmarks.
pub fn build_simple_batch(
    base_timestamp: TimestampMs,
    record_count: usize,
    value_bytes: usize,
) -> BytesMut {
    let value = Bytes::from(vec![b'v'; value_bytes]);
    let mut builder = BatchBuilder::new(base_timestamp);
    for i in 0..record_count {
        builder = builder.value(i as i64, value.clone());
    }
    builder.build()
}

fn put_varlong(buf: &mut BytesMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        buf.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    buf.put_u8(zigzag as u8);
}

fn put_nullable(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varlong(buf, -1),
        Some(b) => {
            put_varlong(buf, b.len() as i64);
            buf.put_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> BytesMut {
        BatchBuilder::new(TimestampMs(1_000))
            .value(0, &b"hello"[..])
            .value(5, &b"world"[..])
            .build()
    }

    #[test]
    fn built_batch_validates_with_expected_fields() {
        let batch = sample();
        let header = validate_batch(&batch).unwrap();
        assert_eq!(header.magic(), 2);
        assert_eq!(header.record_count(), 2);
        assert_eq!(header.last_offset_delta(), 1);
        assert_eq!(header.max_timestamp(), TimestampMs(1_005));
        assert_eq!(header.total_bytes(), batch.len());
    }

    #[test]
    fn patching_offset_and_epoch_keeps_crc_valid() {
        let mut batch = sample();
        set_base_offset(&mut batch, Offset(12345));
        set_partition_leader_epoch(&mut batch, LeaderEpoch(7));
        let header = validate_batch(&batch).unwrap();
        assert_eq!(header.base_offset(), Offset(12345));
        assert_eq!(header.last_offset(), Offset(12346));
        assert_eq!(header.partition_leader_epoch(), LeaderEpoch(7));
    }

    #[test]
    fn log_append_time_sets_bit_timestamp_and_crc() {
        let mut batch = sample();
        set_log_append_time(&mut batch, TimestampMs(99_999));
        let header = validate_batch(&batch).unwrap();
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp(), TimestampMs(99_999));
    }

    #[test]
    fn rejections_name_the_right_error() {
        let good = sample();
        type Damage = Box<dyn Fn(&mut BytesMut)>;
        let cases: Vec<(&str, Damage, i16)> = vec![
            (
                "flipped record byte",
                Box::new(|b: &mut BytesMut| b[70] ^= 1),
                2,
            ),
            ("bad magic", Box::new(|b: &mut BytesMut| b[16] = 1), 87),
            (
                "length too small",
                Box::new(|b: &mut BytesMut| b[8..12].copy_from_slice(&10i32.to_be_bytes())),
                87,
            ),
            (
                "length too big",
                Box::new(|b: &mut BytesMut| b[8..12].copy_from_slice(&10_000i32.to_be_bytes())),
                2,
            ),
            (
                "zero records",
                Box::new(|b: &mut BytesMut| b[57..61].copy_from_slice(&0i32.to_be_bytes())),
                87,
            ),
            (
                "negative delta",
                Box::new(|b: &mut BytesMut| b[23..27].copy_from_slice(&(-1i32).to_be_bytes())),
                87,
            ),
            ("truncated", Box::new(|b: &mut BytesMut| b.truncate(40)), 2),
        ];
        for (name, damage, code) in cases {
            let mut batch = good.clone();
            damage(&mut batch);
            let err = validate_batch(&batch).expect_err(name);
            assert_eq!(err.kafka_error_code(), code, "{name}: {err}");
        }
    }

    #[test]
    fn compacted_counts_are_accepted() {
        // A compacted batch keeps lastOffsetDelta while dropping records; fix the CRC after.
        let mut batch = sample();
        batch[23..27].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&batch[CRC_START_OFFSET..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(validate_batch(&batch).unwrap().last_offset_delta(), 5);
    }

    #[test]
    fn iterator_splits_and_stops_at_garbage() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&sample());
        buf.extend_from_slice(&sample());
        buf.extend_from_slice(&[0u8; 20]);
        let items: Vec<_> = BatchIter::new(&buf).collect();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[1].is_ok());
        assert!(items[2].is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_built_batch_validates_and_any_byte_flip_is_caught(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut builder = BatchBuilder::new(TimestampMs(1));
            for (i, v) in values.iter().enumerate() {
                builder = builder.value(i as i64, Bytes::from(v.clone()));
            }
            let batch = builder.build();
            let header = validate_batch(&batch).unwrap();
            prop_assert_eq!(header.record_count() as usize, values.len());
            // Any flip in the CRC-covered part (or in magic/length) must be rejected.
            let at = CRC_START_OFFSET + flip.index(batch.len() - CRC_START_OFFSET);
            let mut damaged = batch.clone();
            damaged[at] ^= 0x40;
            prop_assert!(validate_batch(&damaged).is_err());
            // Arbitrary bytes never panic.
            let _ = BatchIter::new(&damaged[..at]).count();
        }
    }
}

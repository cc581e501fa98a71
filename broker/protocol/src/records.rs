//! Looking inside a RecordBatch v2 at its records: only where the broker must (ListOffsets
//! by timestamp needs the first record at or after a time, which may sit in the middle of a
//! batch; a topic whose `compression.type` differs from the producer's has its batches
//! recompressed). The hot paths never call this.
//!
//! ```text
//! record := length:varint attributes:i8 timestampDelta:varlong offsetDelta:varint
//!           keyLength:varint key valueLength:varint value
//!           headerCount:varint [headerKeyLength:varint key headerValueLength:varint value]*
//! ```
//! Compressed batches (gzip, snappy with Kafka's xerial framing, lz4 frame, zstd) are
//! decompressed with the output bounded by `DECOMPRESSED_BYTES_MAX`, so a hostile batch cannot
//! inflate without limit.

use std::io::Read;

use crate::batch::{BatchHeader, BATCH_HEADER_BYTES, BATCH_LOG_OVERHEAD_BYTES, CRC_START_OFFSET};
use crate::types::{Offset, TimestampMs};
use crate::wire::{Reader, WireError};

/// Largest decompressed record area Tern will look at (matches the largest batch it accepts
/// times a generous compression ratio).
pub const DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("malformed record: {0}")]
    Malformed(#[from] WireError),
    #[error("cannot decompress batch (codec {codec}): {reason}")]
    Decompress { codec: u8, reason: String },
    #[error("decompressed batch exceeds {DECOMPRESSED_BYTES_MAX} bytes")]
    TooLarge,
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("cannot compress batch: {0}")]
    Compress(String),
    #[error("not a record batch: {0}")]
    NotABatch(String),
}

/// A codec the broker compresses with (a topic's `compression.type`), with its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    /// -1: the codec's default level.
    Gzip {
        level: i64,
    },
    Snappy,
    Lz4,
    Zstd {
        level: i32,
    },
}

impl Codec {
    /// The codec a batch's attributes name, at its default level.
    pub fn from_id(id: u8) -> Result<Codec, RecordsError> {
        Ok(match id {
            0 => Codec::None,
            1 => Codec::Gzip { level: -1 },
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd { level: 3 },
            other => return Err(RecordsError::UnknownCodec(other)),
        })
    }

    /// The codec's id in a batch's attributes.
    pub fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Gzip { .. } => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd { .. } => 4,
        }
    }

    fn compress(self, area: &[u8]) -> Result<Vec<u8>, RecordsError> {
        use std::io::Write;
        let failed = |e: std::io::Error| RecordsError::Compress(e.to_string());
        match self {
            Codec::None => Ok(area.to_vec()),
            Codec::Gzip { level } => {
                let level = if level < 0 {
                    flate2::Compression::default()
                } else {
                    flate2::Compression::new(level.clamp(1, 9) as u32)
                };
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
                encoder.write_all(area).map_err(failed)?;
                encoder.finish().map_err(failed)
            }
            Codec::Snappy => {
                // Kafka's xerial framing, one block per 32 KiB, as the Java broker writes it.
                let mut out = XERIAL_MAGIC.to_vec();
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                let mut encoder = snap::raw::Encoder::new();
                for chunk in area.chunks(32 * 1024) {
                    let block = encoder
                        .compress_vec(chunk)
                        .map_err(|e| RecordsError::Compress(e.to_string()))?;
                    out.extend_from_slice(&(block.len() as i32).to_be_bytes());
                    out.extend_from_slice(&block);
                }
                Ok(out)
            }
            Codec::Lz4 => {
                let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
                encoder.write_all(area).map_err(failed)?;
                encoder
                    .finish()
                    .map_err(|e| RecordsError::Compress(e.to_string()))
            }
            Codec::Zstd { level } => zstd::encode_all(area, level).map_err(failed),
        }
    }
}

/// `batch` (one whole RecordBatch v2) stored with `codec` instead: its records decompressed
/// and compressed again, the attributes, length and CRC rewritten, everything else (offsets,
/// epochs, producer id and sequence, timestamps) kept. `None` when it already uses `codec` or
/// is a control batch.
pub fn recompress(batch: &[u8], codec: Codec) -> Result<Option<Vec<u8>>, RecordsError> {
    let header =
        BatchHeader::parse_unchecked(batch).map_err(|e| RecordsError::NotABatch(e.to_string()))?;
    if header.is_control() || header.compression_codec() == codec.id() {
        return Ok(None);
    }
    let area = record_area(batch, &header)?;
    with_records_compressed(&batch[..BATCH_HEADER_BYTES], &area, codec).map(Some)
}

/// The batch whose header is `header` (a RecordBatch v2 header, `BATCH_HEADER_BYTES` long)
/// and whose uncompressed records are `area`, with the records compressed with `codec` and
/// the length, attributes and CRC rewritten. A producer's batch is sealed plain, then this.
pub fn with_records_compressed(
    header: &[u8],
    area: &[u8],
    codec: Codec,
) -> Result<Vec<u8>, RecordsError> {
    if header.len() != BATCH_HEADER_BYTES {
        return Err(RecordsError::NotABatch(format!(
            "a batch header is {BATCH_HEADER_BYTES} bytes, not {}",
            header.len()
        )));
    }
    let compressed = codec.compress(area)?;
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + compressed.len());
    out.extend_from_slice(header);
    out.extend_from_slice(&compressed);
    let batch_length = (out.len() - BATCH_LOG_OVERHEAD_BYTES) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = i16::from_be_bytes([out[CRC_START_OFFSET], out[CRC_START_OFFSET + 1]]);
    let attributes = (attributes & !0x07) | i16::from(codec.id());
    out[CRC_START_OFFSET..CRC_START_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START_OFFSET..]);
    out[CRC_START_OFFSET - 4..CRC_START_OFFSET].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

fn bounded_read(mut reader: impl Read, codec: u8) -> Result<Vec<u8>, RecordsError> {
    let mut out = Vec::new();
    let read = reader
        .by_ref()
        .take(DECOMPRESSED_BYTES_MAX as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RecordsError::Decompress {
            codec,
            reason: e.to_string(),
        })?;
    if read > DECOMPRESSED_BYTES_MAX {
        return Err(RecordsError::TooLarge);
    }
    Ok(out)
}

fn snappy_block(block: &[u8], out: &mut Vec<u8>) -> Result<(), RecordsError> {
    let len = snap::raw::decompress_len(block).map_err(|e| RecordsError::Decompress {
        codec: 2,
        reason: e.to_string(),
    })?;
    if out.len() + len > DECOMPRESSED_BYTES_MAX {
        return Err(RecordsError::TooLarge);
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| RecordsError::Decompress {
            codec: 2,
            reason: e.to_string(),
        })?;
    Ok(())
}

/// The record area of a batch, decompressed if needed.
pub fn record_area(batch: &[u8], header: &BatchHeader) -> Result<Vec<u8>, RecordsError> {
    let body = batch
        .get(BATCH_HEADER_BYTES..header.total_bytes().min(batch.len()))
        .unwrap_or(&[]);
    let codec = header.compression_codec();
    match codec {
        0 => Ok(body.to_vec()),
        1 => bounded_read(flate2::read::GzDecoder::new(body), codec),
        2 => {
            let mut out = Vec::new();
            if body.starts_with(XERIAL_MAGIC) {
                // Xerial framing: magic, version, compatible version, then [length:i32][block]*.
                let mut reader = Reader::new(body.get(16..).unwrap_or(&[]));
                while !reader.is_empty() {
                    let length = reader.i32()?;
                    let block = reader.take(usize::try_from(length).map_err(|_| {
                        WireError::NegativeLength {
                            position: reader.position(),
                            length: i64::from(length),
                        }
                    })?)?;
                    snappy_block(block, &mut out)?;
                }
            } else {
                snappy_block(body, &mut out)?;
            }
            Ok(out)
        }
        3 => bounded_read(lz4_flex::frame::FrameDecoder::new(body), codec),
        4 => bounded_read(
            zstd::stream::read::Decoder::new(body).map_err(|e| RecordsError::Decompress {
                codec,
                reason: e.to_string(),
            })?,
            codec,
        ),
        other => Err(RecordsError::UnknownCodec(other)),
    }
}

/// The first record in `batch` whose timestamp is at least `target`: its offset and timestamp.
pub fn first_at_or_after(
    batch: &[u8],
    header: &BatchHeader,
    target: TimestampMs,
) -> Result<Option<(Offset, TimestampMs)>, RecordsError> {
    if header.is_log_append_time() {
        // Every record carries the batch's append time.
        return Ok((header.max_timestamp() >= target)
            .then(|| (header.base_offset(), header.max_timestamp())));
    }
    let mut found = None;
    for_each_record(batch, header, |record| {
        if found.is_none() && record.timestamp >= target {
            found = Some((record.offset, record.timestamp));
        }
    })?;
    Ok(found)
}

/// Attribute bit 6 (KIP-534): the batch's `baseTimestamp` holds the time after which the
/// cleaner may drop its tombstones (its records' timestamp deltas are relative to it).
pub const ATTR_DELETE_HORIZON: i16 = 1 << 6;

/// One record of a batch, as [`for_each_record`] shows it.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// Position in the batch, from 0.
    pub index: usize,
    pub offset: Offset,
    pub timestamp: TimestampMs,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// A null value: a tombstone in a compacted topic.
    pub is_tombstone: bool,
}

/// The record area's records, parsed one by one: `(view, attributes, timestamp delta, bytes
/// after the timestamp delta)`, the last being what a rewrite copies verbatim (offset delta,
/// key, value, headers).
fn parse_records<'a>(
    area: &'a [u8],
    header: &BatchHeader,
    mut f: impl FnMut(RecordView<'a>, i8, i64, &'a [u8]),
) -> Result<(), RecordsError> {
    let mut reader = Reader::new(area);
    for index in 0..header.record_count().max(0) as usize {
        let length = reader.varint()?;
        let record =
            reader.take(
                usize::try_from(length).map_err(|_| WireError::NegativeLength {
                    position: reader.position(),
                    length: i64::from(length),
                })?,
            )?;
        let mut fields = Reader::new(record);
        let attributes = fields.i8()?;
        let timestamp_delta = fields.varlong()?;
        let rest = &record[fields.position()..];
        let offset_delta = fields.varint()?;
        let key = nullable_varint_bytes(&mut fields)?;
        let value = nullable_varint_bytes(&mut fields)?;
        let timestamp = if header.is_log_append_time() {
            header.max_timestamp()
        } else {
            TimestampMs(header.base_timestamp().0.saturating_add(timestamp_delta))
        };
        f(
            RecordView {
                index,
                offset: header.base_offset().plus(i64::from(offset_delta)),
                timestamp,
                key,
                value,
                is_tombstone: value.is_none(),
            },
            attributes,
            timestamp_delta,
            rest,
        );
    }
    Ok(())
}

fn nullable_varint_bytes<'a>(reader: &mut Reader<'a>) -> Result<Option<&'a [u8]>, RecordsError> {
    let length = reader.varint()?;
    if length < 0 {
        return Ok(None);
    }
    Ok(Some(reader.take(length as usize)?))
}

/// Calls `f` with every record of `batch` (decompressing if needed). Control batches have
/// records too (their key is the control type); callers decide whether to look.
pub fn for_each_record(
    batch: &[u8],
    header: &BatchHeader,
    mut f: impl FnMut(RecordView<'_>),
) -> Result<(), RecordsError> {
    let area = record_area(batch, header)?;
    parse_records(&area, header, |view, _, _, _| f(view))
}

/// A transaction marker's type, from its control batch's only record: the key is a version
/// (i16, 0) and a type (i16: 0 abort, 1 commit). `Some(true)` for commit, `Some(false)` for
/// abort, `None` for a batch that is not a transaction marker (or does not parse).
pub fn control_marker(batch: &[u8], header: &BatchHeader) -> Option<bool> {
    if !header.is_control() {
        return None;
    }
    let mut marker = None;
    let walked = for_each_record(batch, header, |record| {
        if record.index == 0 {
            marker = match record.key {
                Some([0, 0, 0, 0]) => Some(false),
                Some([0, 0, 0, 1]) => Some(true),
                _ => None,
            };
        }
    });
    walked.ok().and(marker)
}

/// A commit or abort marker batch for `producer_id` at `producer_epoch`, as a coordinator
/// asks each partition of a transaction to append: attributes transactional and control,
/// one record with key (version 0, type) and value (version 0, coordinator epoch).
pub fn build_control_marker(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    now: crate::types::TimestampMs,
) -> bytes::BytesMut {
    let mut builder = crate::batch::BatchBuilder::new(now);
    builder.attributes = crate::batch::ATTR_TRANSACTIONAL | crate::batch::ATTR_CONTROL;
    builder.producer_id = crate::types::ProducerId(producer_id);
    builder.producer_epoch = producer_epoch;
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&i16::from(commit).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    builder
        .record(crate::batch::BuilderRecord {
            timestamp_delta_ms: 0,
            key: Some(bytes::Bytes::from(key)),
            value: Some(bytes::Bytes::from(value)),
            headers: Vec::new(),
        })
        .build()
}

/// The delete horizon a cleaner stamped on `header`'s batch (KIP-534), if any.
pub fn delete_horizon(header: &BatchHeader) -> Option<TimestampMs> {
    (header.attributes() & ATTR_DELETE_HORIZON != 0).then(|| header.base_timestamp())
}

/// What [`filter_batch`] made of a batch.
#[derive(Debug)]
pub enum Filtered {
    /// Every record kept and no horizon to stamp: the original bytes stand.
    Unchanged,
    /// No record kept: the batch goes.
    Empty,
    /// The batch rewritten with the kept records.
    Rewritten(Vec<u8>),
}

/// `batch` with only the records `keep` accepts, as Kafka's cleaner writes it: the base
/// offset and last offset delta stay (so the batch covers the same offsets and kept records
/// keep theirs), as do the producer id, epoch and base sequence, leader epoch, codec (at its
/// default level) and max timestamp; record count, length and CRC are rewritten. With
/// `horizon`, a batch that keeps a tombstone and carries no delete horizon yet gets that one
/// (KIP-534: attribute bit 6 and `baseTimestamp`, the records' timestamp deltas rebased so
/// their timestamps are unchanged).
pub fn filter_batch(
    batch: &[u8],
    header: &BatchHeader,
    mut keep: impl FnMut(&RecordView<'_>) -> bool,
    horizon: Option<TimestampMs>,
) -> Result<Filtered, RecordsError> {
    let area = record_area(batch, header)?;
    // (attributes, the record's own timestamp, the bytes after its timestamp delta)
    let mut kept: Vec<(i8, i64, &[u8])> = Vec::new();
    let mut dropped = 0usize;
    let mut tombstone_kept = false;
    parse_records(&area, header, |view, attributes, timestamp_delta, rest| {
        if keep(&view) {
            tombstone_kept |= view.is_tombstone;
            let own = header.base_timestamp().0.wrapping_add(timestamp_delta);
            kept.push((attributes, own, rest));
        } else {
            dropped += 1;
        }
    })?;
    if kept.is_empty() {
        return Ok(Filtered::Empty);
    }
    let stamp = horizon.filter(|_| tombstone_kept && delete_horizon(header).is_none());
    if dropped == 0 && stamp.is_none() {
        return Ok(Filtered::Unchanged);
    }
    let base_timestamp = stamp.unwrap_or(header.base_timestamp()).0;
    let mut records: Vec<u8> = Vec::with_capacity(area.len());
    let mut scratch: Vec<u8> = Vec::with_capacity(64);
    for &(attributes, own, rest) in &kept {
        scratch.clear();
        scratch.push(attributes as u8);
        put_varlong(&mut scratch, own.wrapping_sub(base_timestamp));
        scratch.extend_from_slice(rest);
        put_varlong(&mut records, scratch.len() as i64);
        records.extend_from_slice(&scratch);
    }
    let codec = Codec::from_id(header.compression_codec())?;
    let body = codec.compress(&records)?;
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + body.len());
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(&body);
    let batch_length = (out.len() - BATCH_LOG_OVERHEAD_BYTES) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    if let Some(horizon) = stamp {
        let attributes = i16::from_be_bytes([out[CRC_START_OFFSET], out[CRC_START_OFFSET + 1]])
            | ATTR_DELETE_HORIZON;
        out[CRC_START_OFFSET..CRC_START_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
        out[27..35].copy_from_slice(&horizon.0.to_be_bytes());
    }
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START_OFFSET..]);
    out[CRC_START_OFFSET - 4..CRC_START_OFFSET].copy_from_slice(&crc.to_be_bytes());
    Ok(Filtered::Rewritten(out))
}

fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::batch::{BatchBuilder, BATCH_HEADER_BYTES};

    #[test]
    fn recompressed_batches_keep_their_records_and_validate() {
        let codecs = [
            Codec::None,
            Codec::Gzip { level: -1 },
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd { level: 3 },
        ];
        for from in 0..5u8 {
            let original = batch(from);
            let header = BatchHeader::parse_unchecked(&original).unwrap();
            let records = record_area(&original, &header).unwrap();
            for to in codecs {
                let Some(out) = recompress(&original, to).unwrap() else {
                    assert_eq!(from, to.id(), "only the same codec is left alone");
                    continue;
                };
                let checked = crate::batch::validate_batch(&out).expect("a valid batch");
                assert_eq!(checked.compression_codec(), to.id());
                assert_eq!(checked.base_offset(), header.base_offset());
                assert_eq!(checked.max_timestamp(), header.max_timestamp());
                assert_eq!(checked.record_count(), header.record_count());
                assert_eq!(
                    record_area(&out, &checked).unwrap(),
                    records,
                    "{from} -> {to:?}"
                );
            }
        }
    }

    /// A batch whose records are 100 ms apart, rewritten with `codec`'s compression.
    fn batch(codec: u8) -> Vec<u8> {
        let mut builder = BatchBuilder::new(TimestampMs(1_000));
        builder.base_offset = Offset(50);
        for i in 0..5 {
            builder = builder.value(i * 100, format!("value-{i}").into_bytes());
        }
        let plain = builder.build().to_vec();
        let area = &plain[BATCH_HEADER_BYTES..];
        let compressed = match codec {
            0 => area.to_vec(),
            1 => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(area).unwrap();
                encoder.finish().unwrap()
            }
            2 => {
                // Xerial framing with one block, as the Java client writes it.
                let block = snap::raw::Encoder::new().compress_vec(area).unwrap();
                let mut out = XERIAL_MAGIC.to_vec();
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&(block.len() as i32).to_be_bytes());
                out.extend_from_slice(&block);
                out
            }
            3 => {
                let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
                encoder.write_all(area).unwrap();
                encoder.finish().unwrap()
            }
            4 => zstd::encode_all(area, 1).unwrap(),
            _ => unreachable!(),
        };
        let mut out = plain[..BATCH_HEADER_BYTES].to_vec();
        out.extend_from_slice(&compressed);
        let batch_length = (out.len() - 12) as i32;
        out[8..12].copy_from_slice(&batch_length.to_be_bytes());
        out[22] |= codec; // attributes low byte: compression codec
        out
    }

    #[test]
    fn finds_the_first_record_at_or_after_a_time_in_every_codec() {
        for codec in 0..=4u8 {
            let bytes = batch(codec);
            let header = BatchHeader::parse_unchecked(&bytes).unwrap();
            let found = |ts| first_at_or_after(&bytes, &header, TimestampMs(ts)).unwrap();
            assert_eq!(
                found(1_000),
                Some((Offset(50), TimestampMs(1_000))),
                "codec {codec}"
            );
            assert_eq!(
                found(1_150),
                Some((Offset(52), TimestampMs(1_200))),
                "codec {codec}"
            );
            assert_eq!(
                found(1_400),
                Some((Offset(54), TimestampMs(1_400))),
                "codec {codec}"
            );
            assert_eq!(found(1_401), None, "codec {codec}");
        }
    }

    /// A keyed batch at offset 100: key `k{i % 3}`, value `v{i}` (none for i = 4), 10 ms apart,
    /// with one header, compressed with `codec`.
    fn keyed_batch(codec: u8) -> Vec<u8> {
        let mut builder = BatchBuilder::new(TimestampMs(5_000));
        builder.base_offset = Offset(100);
        builder.producer_id = crate::types::ProducerId(7);
        builder.producer_epoch = 1;
        builder.base_sequence = 40;
        for i in 0..6i64 {
            builder = builder.record(crate::batch::BuilderRecord {
                timestamp_delta_ms: i * 10,
                key: Some(format!("k{}", i % 3).into_bytes().into()),
                value: (i != 4).then(|| format!("v{i}").into_bytes().into()),
                headers: vec![("h".to_string(), Some(bytes::Bytes::from_static(b"x")))],
            });
        }
        let plain = builder.build().to_vec();
        if codec == 0 {
            return plain;
        }
        let header = BatchHeader::parse_unchecked(&plain).unwrap();
        let mut out = recompress(&plain, Codec::from_id(codec).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            BatchHeader::parse_unchecked(&out).unwrap().record_count(),
            header.record_count()
        );
        out.shrink_to_fit();
        out
    }

    fn views(batch: &[u8]) -> Vec<(i64, i64, Option<Vec<u8>>, bool)> {
        let header = crate::batch::validate_batch(batch).expect("a valid batch");
        let mut out = Vec::new();
        for_each_record(batch, &header, |r| {
            out.push((
                r.offset.0,
                r.timestamp.0,
                r.key.map(<[u8]>::to_vec),
                r.is_tombstone,
            ))
        })
        .unwrap();
        out
    }

    #[test]
    fn filtered_batches_keep_offsets_timestamps_and_the_rest_of_each_record() {
        for codec in 0..=4u8 {
            let original = keyed_batch(codec);
            let header = BatchHeader::parse_unchecked(&original).unwrap();
            let all = views(&original);
            assert_eq!(all.len(), 6);
            assert!(all[4].3, "record 4 is a tombstone");

            let keep_odd = |r: &RecordView<'_>| r.offset.0 % 2 == 1;
            let Filtered::Rewritten(out) =
                filter_batch(&original, &header, keep_odd, None).unwrap()
            else {
                panic!("records were dropped");
            };
            let checked = crate::batch::validate_batch(&out).expect("valid after filtering");
            assert_eq!(checked.base_offset(), Offset(100), "codec {codec}");
            assert_eq!(
                checked.last_offset_delta(),
                5,
                "the batch covers the same offsets"
            );
            assert_eq!(checked.record_count(), 3);
            assert_eq!(checked.compression_codec(), codec);
            assert_eq!(checked.producer_id(), header.producer_id());
            assert_eq!(checked.base_sequence(), 40);
            assert_eq!(checked.max_timestamp(), header.max_timestamp());
            let odd: Vec<_> = all.iter().filter(|v| v.0 % 2 == 1).cloned().collect();
            assert_eq!(views(&out), odd);

            // Stamping a delete horizon rebases the deltas: every timestamp stays.
            let horizon = TimestampMs(1_000_000);
            let Filtered::Rewritten(stamped) =
                filter_batch(&original, &header, |_| true, Some(horizon)).unwrap()
            else {
                panic!("a stamped batch is rewritten");
            };
            let stamped_header = crate::batch::validate_batch(&stamped).unwrap();
            assert_eq!(delete_horizon(&stamped_header), Some(horizon));
            assert_eq!(delete_horizon(&header), None);
            assert_eq!(views(&stamped), all, "codec {codec}");

            assert!(matches!(
                filter_batch(&original, &header, |_| true, None).unwrap(),
                Filtered::Unchanged
            ));
            assert!(matches!(
                filter_batch(&original, &header, |_| false, None).unwrap(),
                Filtered::Empty
            ));
        }
    }

    #[test]
    fn garbage_record_areas_are_errors_not_panics() {
        for codec in 0..=4u8 {
            let mut bytes = batch(codec);
            let len = bytes.len();
            for byte in &mut bytes[BATCH_HEADER_BYTES..len] {
                *byte ^= 0x5a;
            }
            let header = BatchHeader::parse_unchecked(&bytes).unwrap();
            let _ = first_at_or_after(&bytes, &header, TimestampMs(1_200));
        }
    }

    #[test]
    fn control_markers_round_trip() {
        for commit in [true, false] {
            let batch = build_control_marker(77, 3, commit, 5, TimestampMs(1_000));
            let header = BatchHeader::parse_unchecked(&batch).unwrap();
            assert!(header.is_control() && header.is_transactional());
            assert_eq!((header.producer_id().0, header.producer_epoch()), (77, 3));
            assert_eq!(control_marker(&batch, &header), Some(commit));
        }
        let data = crate::batch::BatchBuilder::new(TimestampMs(0))
            .value(0, "x")
            .build();
        let header = BatchHeader::parse_unchecked(&data).unwrap();
        assert_eq!(control_marker(&data, &header), None);
    }
}

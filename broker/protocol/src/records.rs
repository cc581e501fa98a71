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
    let compressed = codec.compress(&area)?;
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + compressed.len());
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(&compressed);
    let batch_length = (out.len() - BATCH_LOG_OVERHEAD_BYTES) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = i16::from_be_bytes([out[CRC_START_OFFSET], out[CRC_START_OFFSET + 1]]);
    let attributes = (attributes & !0x07) | i16::from(codec.id());
    out[CRC_START_OFFSET..CRC_START_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START_OFFSET..]);
    out[CRC_START_OFFSET - 4..CRC_START_OFFSET].copy_from_slice(&crc.to_be_bytes());
    Ok(Some(out))
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
    let area = record_area(batch, header)?;
    let mut reader = Reader::new(&area);
    for _ in 0..header.record_count().max(0) {
        let length = reader.varint()?;
        let record =
            reader.take(
                usize::try_from(length).map_err(|_| WireError::NegativeLength {
                    position: reader.position(),
                    length: i64::from(length),
                })?,
            )?;
        let mut fields = Reader::new(record);
        let _attributes = fields.i8()?;
        let timestamp_delta = fields.varlong()?;
        let offset_delta = fields.varint()?;
        let timestamp = TimestampMs(header.base_timestamp().0.saturating_add(timestamp_delta));
        if timestamp >= target {
            return Ok(Some((
                header.base_offset().plus(i64::from(offset_delta)),
                timestamp,
            )));
        }
    }
    Ok(None)
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
}

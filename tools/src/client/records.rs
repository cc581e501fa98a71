//! Records as applications see them, and the RecordBatch v2 bytes they travel in: a batch
//! is written record by record into one buffer (no per-record allocation) and read back with
//! keys, values and headers, decompressing with any codec Kafka clients use.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tern_protocol::batch::{BatchHeader, BatchIter, BATCH_HEADER_BYTES};
use tern_protocol::records::{record_area, with_records_compressed, Codec};

/// A record to produce, or one consumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch; `None` when producing: the time of `send`.
    pub timestamp: Option<i64>,
}

impl Record {
    pub fn value(value: impl Into<Bytes>) -> Record {
        Record {
            value: Some(value.into()),
            ..Record::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> Record {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Record {
        self.headers.push((key.into(), Some(value.into())));
        self
    }

    /// The record, borrowed.
    pub fn borrowed(&self) -> RecordRef<'_> {
        RecordRef {
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &self.headers,
            timestamp: self.timestamp,
        }
    }
}

/// A record to produce, borrowed: `Producer::send_with` writes it into its batch before it
/// returns, so the caller's bytes are copied once, into the batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordRef<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(String, Option<Bytes>)],
    /// Milliseconds since the epoch; `None`: the time of `send`.
    pub timestamp: Option<i64>,
}

impl<'a> RecordRef<'a> {
    pub fn value(value: &'a [u8]) -> RecordRef<'a> {
        RecordRef {
            value: Some(value),
            ..RecordRef::default()
        }
    }

    pub fn with_key(mut self, key: &'a [u8]) -> RecordRef<'a> {
        self.key = Some(key);
        self
    }

    /// An owned copy, for a record that must wait (its topic's partitions not known yet).
    pub fn to_record(&self) -> Record {
        Record {
            key: self.key.map(Bytes::copy_from_slice),
            value: self.value.map(Bytes::copy_from_slice),
            headers: self.headers.to_vec(),
            timestamp: self.timestamp,
        }
    }

    /// Bytes the record takes in a batch, at most (for batch sizing): its fields plus the
    /// largest varints their lengths, deltas and length prefix can take.
    pub fn size_estimate(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + 10)
            .sum();
        41 + self.key.map_or(0, <[u8]>::len) + self.value.map_or(0, <[u8]>::len) + headers
    }
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

// Byte positions in a RecordBatch v2 header (Kafka's layout).
const LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

/// An uncompressed RecordBatch v2 being filled.
#[derive(Debug)]
pub struct BatchWriter {
    buffer: BytesMut,
    base_timestamp: i64,
    max_timestamp: i64,
    count: i32,
}

impl BatchWriter {
    /// A batch whose producer and base sequence are set when it is sealed.
    pub fn new(capacity: usize, base_timestamp: i64) -> BatchWriter {
        let mut buffer = BytesMut::with_capacity(BATCH_HEADER_BYTES + capacity);
        buffer.put_i64(0); // base offset: the broker assigns it
        buffer.put_i32(0); // batch length, patched in `seal`
        buffer.put_i32(-1); // partition leader epoch
        buffer.put_i8(2); // magic
        buffer.put_u32(0); // CRC, patched in `seal`
        buffer.put_i16(0); // attributes: no compression, create time
        buffer.put_i32(0); // last offset delta, patched
        buffer.put_i64(base_timestamp);
        buffer.put_i64(base_timestamp); // max timestamp, patched
        buffer.put_i64(-1); // producer id, set in `seal`
        buffer.put_i16(-1); // producer epoch, set in `seal`
        buffer.put_i32(-1); // base sequence, set in `seal`
        buffer.put_i32(0); // record count, patched
        BatchWriter {
            buffer,
            base_timestamp,
            max_timestamp: base_timestamp,
            count: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn count(&self) -> i32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a record stamped `timestamp`.
    pub fn push(&mut self, record: RecordRef<'_>, timestamp: i64) {
        // Saturating: an application's timestamp is any i64.
        let delta = timestamp.saturating_sub(self.base_timestamp);
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let headers_len: usize = record
            .headers
            .iter()
            .map(|(k, v)| {
                varint_len(k.len() as i64)
                    + k.len()
                    + v.as_ref()
                        .map_or(1, |v| varint_len(v.len() as i64) + v.len())
            })
            .sum();
        let body_len = 1
            + varint_len(delta)
            + varint_len(i64::from(self.count))
            + nullable_len(record.key)
            + nullable_len(record.value)
            + varint_len(record.headers.len() as i64)
            + headers_len;
        let buffer = &mut self.buffer;
        put_varint(buffer, body_len as i64);
        buffer.put_i8(0);
        put_varint(buffer, delta);
        put_varint(buffer, i64::from(self.count));
        put_nullable(buffer, record.key);
        put_nullable(buffer, record.value);
        put_varint(buffer, record.headers.len() as i64);
        for (key, value) in record.headers {
            put_varint(buffer, key.len() as i64);
            buffer.put_slice(key.as_bytes());
            put_nullable(buffer, value.as_deref());
        }
        self.count += 1;
    }

    /// Finishes the batch for `producer` (id and epoch; -1 and -1 without idempotence) with
    /// its first record's sequence number (-1 without idempotence).
    pub fn seal(mut self, producer: (i64, i16), base_sequence: i32) -> Bytes {
        let length = (self.buffer.len() - 12) as i32;
        let buffer = &mut self.buffer;
        buffer[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
        buffer[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
            .copy_from_slice(&(self.count - 1).to_be_bytes());
        buffer[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8]
            .copy_from_slice(&self.max_timestamp.to_be_bytes());
        buffer[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&self.count.to_be_bytes());
        stamp(buffer, producer, base_sequence);
        self.buffer.freeze()
    }

    /// `seal`, then the records compressed with `codec` straight from the sealed buffer (the
    /// header and its producer fields kept, the length, attributes and CRC rewritten). A codec
    /// that fails, or does not make the batch smaller, leaves it uncompressed, which is as
    /// valid.
    pub fn seal_with(self, producer: (i64, i16), base_sequence: i32, codec: Codec) -> Bytes {
        let sealed = self.seal(producer, base_sequence);
        if codec == Codec::None {
            return sealed;
        }
        let (header, area) = sealed.split_at(BATCH_HEADER_BYTES);
        match with_records_compressed(header, area, codec) {
            // Records that do not compress stay plain, so a batch never grows past what
            // `batch_bytes` bounded (as librdkafka does).
            Ok(compressed) if compressed.len() < sealed.len() => Bytes::from(compressed),
            Ok(_) | Err(_) => sealed,
        }
    }
}

/// A copy of sealed `batch` for another producer and base sequence (a partition whose
/// sequences broke starts over with the next producer epoch).
pub fn restamp(batch: &[u8], producer: (i64, i16), base_sequence: i32) -> Bytes {
    let mut copy = BytesMut::from(batch);
    stamp(&mut copy, producer, base_sequence);
    copy.freeze()
}

/// Writes the producer and base sequence into a batch's header, then its CRC.
fn stamp(batch: &mut [u8], (producer_id, epoch): (i64, i16), base_sequence: i32) {
    batch[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&epoch.to_be_bytes());
    batch[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_FROM..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

fn varint_len(value: i64) -> usize {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    (64 - zigzag.leading_zeros() as usize).max(1).div_ceil(7)
}

fn nullable_len(bytes: Option<&[u8]>) -> usize {
    bytes.map_or(1, |b| varint_len(b.len() as i64) + b.len())
}

fn put_varint(buffer: &mut BytesMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        buffer.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    buffer.put_u8(zigzag as u8);
}

fn put_nullable(buffer: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(buffer, -1),
        Some(b) => {
            put_varint(buffer, b.len() as i64);
            buffer.put_slice(b);
        }
    }
}

/// What reading a partition's records found.
#[derive(Debug, Default)]
pub struct Decoded {
    pub records: Vec<Consumed>,
    /// The offset to fetch next (past control batches and skipped records too).
    pub next_offset: Option<i64>,
}

/// Reads the records of `bytes` (whole batches as a fetch returns them) at or after `from`;
/// control batches (transaction markers) are skipped, and with `aborted` (producer id, first
/// offset) so are records of aborted transactions, as read_committed requires.
pub fn decode(
    topic: &str,
    partition: i32,
    bytes: &Bytes,
    from: i64,
    aborted: &[(i64, i64)],
) -> Result<Decoded, String> {
    let mut out = Decoded::default();
    // Aborted transactions not reached yet (by first offset), and those reached whose
    // abort marker has not come yet (by producer id).
    let mut pending: Vec<(i64, i64)> = aborted.to_vec();
    pending.sort_by_key(|(_, first)| std::cmp::Reverse(*first));
    let mut aborting: Vec<i64> = Vec::new();
    // One name shared by every record read.
    let topic: Arc<str> = topic.into();
    for span in BatchIter::new(bytes) {
        let span = span.map_err(|e| e.to_string())?;
        let batch = &bytes[span.position..span.position + span.total_bytes];
        let header = span.header;
        out.next_offset = Some(header.next_offset().0);
        while let Some(&(producer, first)) = pending.last() {
            if first > header.last_offset().0 {
                break;
            }
            pending.pop();
            aborting.push(producer);
        }
        if header.is_control() {
            // A marker ends its producer's transaction.
            aborting.retain(|p| *p != header.producer_id().0);
            continue;
        }
        if header.is_transactional() && aborting.contains(&header.producer_id().0) {
            continue;
        }
        if header.next_offset().0 <= from {
            continue;
        }
        let area = record_area(batch, &header).map_err(|e| e.to_string())?;
        read_records(&topic, partition, &header, &area, from, &mut out.records)?;
    }
    Ok(out)
}

fn read_records(
    topic: &Arc<str>,
    partition: i32,
    header: &BatchHeader,
    area: &[u8],
    from: i64,
    out: &mut Vec<Consumed>,
) -> Result<(), String> {
    let mut at = 0usize;
    let shared = Bytes::copy_from_slice(area);
    for _ in 0..header.record_count().max(0) {
        let length = get_varint(area, &mut at)?;
        let end = at
            .checked_add(usize::try_from(length).map_err(|_| "negative record length")?)
            .filter(|end| *end <= area.len())
            .ok_or("record runs past its batch")?;
        let _attributes = area.get(at).ok_or("empty record")?;
        at += 1;
        let delta = get_varint(area, &mut at)?;
        let offset_delta = get_varint(area, &mut at)?;
        let key = get_nullable(&shared, &mut at)?;
        let value = get_nullable(&shared, &mut at)?;
        let count = get_varint(area, &mut at)?;
        let mut headers = Vec::with_capacity(count.clamp(0, 64) as usize);
        for _ in 0..count.max(0) {
            let name = get_nullable(&shared, &mut at)?.unwrap_or_default();
            let name = String::from_utf8(name.to_vec()).map_err(|_| "header key is not UTF-8")?;
            headers.push((name, get_nullable(&shared, &mut at)?));
        }
        if at != end {
            return Err("record length does not match its fields".into());
        }
        let offset = header.base_offset().0 + offset_delta;
        if offset < from {
            continue;
        }
        let timestamp = if header.is_log_append_time() {
            header.max_timestamp().0
        } else {
            header.base_timestamp().0 + delta
        };
        out.push(Consumed {
            topic: topic.clone(),
            partition,
            offset,
            timestamp,
            key,
            value,
            headers,
        });
    }
    Ok(())
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Result<i64, String> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *bytes.get(*at).ok_or("varint runs past its record")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err("varint too long".into())
}

fn get_nullable(bytes: &Bytes, at: &mut usize) -> Result<Option<Bytes>, String> {
    let length = get_varint(bytes, at)?;
    if length < 0 {
        return Ok(None);
    }
    let end = at
        .checked_add(length as usize)
        .filter(|end| *end <= bytes.len())
        .ok_or("field runs past its record")?;
    let field = bytes.slice(*at..end);
    *at = end;
    Ok(Some(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::batch;

    #[test]
    fn a_batch_sealed_with_each_codec_is_valid_compressed_and_reads_back_exactly() {
        let records: Vec<Record> = (0..200)
            .map(|i| Record::value(format!("{i:05}-{}", "z".repeat(200))).with_key("same"))
            .collect();
        let write = || {
            let mut writer = BatchWriter::new(1 << 16, 5_000);
            for (i, record) in records.iter().enumerate() {
                writer.push(record.borrowed(), 5_000 + i as i64);
            }
            writer
        };
        let plain = write().seal((9, 1), 400);
        let plain_records = decode("t", 0, &plain, 0, &[]).unwrap().records;
        for codec in [
            Codec::Gzip { level: -1 },
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd { level: 3 },
        ] {
            let batch = write().seal_with((9, 1), 400, codec);
            batch::validate_batch(&batch).unwrap();
            let header = BatchHeader::parse_unchecked(&batch).unwrap();
            assert_eq!(header.compression_codec(), codec.id(), "{codec:?}");
            assert_eq!((header.producer_id().0, header.producer_epoch()), (9, 1));
            assert_eq!(header.base_sequence(), 400);
            assert_eq!(header.record_count(), 200);
            assert!(
                batch.len() * 4 < plain.len(),
                "{codec:?}: {} of {} bytes",
                batch.len(),
                plain.len()
            );
            // A repair restamps a compressed batch as it does a plain one.
            batch::validate_batch(&restamp(&batch, (10, 0), 0)).unwrap();
            let decoded = decode("t", 0, &batch, 0, &[]).unwrap();
            assert_eq!(decoded.records, plain_records, "{codec:?}");
        }
        assert_eq!(write().seal_with((9, 1), 400, Codec::None), plain);

        // Records that do not compress are sent plain: the batch never grows.
        let noisy = || {
            let mut noise = 0x9E37_79B9_7F4A_7C15u64;
            let mut writer = BatchWriter::new(1 << 16, 5_000);
            for _ in 0..50 {
                let value: Vec<u8> = (0..500)
                    .map(|_| {
                        noise ^= noise << 13;
                        noise ^= noise >> 7;
                        noise ^= noise << 17;
                        (noise >> 56) as u8
                    })
                    .collect();
                writer.push(RecordRef::value(&value), 5_000);
            }
            writer
        };
        // (lz4's and snappy's framing make such records larger; gzip still finds a little.)
        for codec in [Codec::Lz4, Codec::Snappy] {
            let sealed = noisy().seal_with((9, 1), 0, codec);
            assert!(sealed == noisy().seal((9, 1), 0), "{codec:?} grew it");
        }
    }

    #[test]
    fn a_written_batch_validates_and_reads_back_exactly() {
        let records = [
            Record::value("one").with_key("k1").with_header("h", "x"),
            Record {
                key: None,
                value: None,
                headers: vec![("n".into(), None)],
                timestamp: None,
            },
            Record::value(vec![7u8; 300]),
        ];
        let mut writer = BatchWriter::new(1024, 1_000);
        for (i, record) in records.iter().enumerate() {
            writer.push(record.borrowed(), 1_000 + i as i64);
        }
        let batch = writer.seal((42, 3), 17);
        batch::validate_batch(&batch).unwrap();
        let header = BatchHeader::parse_unchecked(&batch).unwrap();
        assert_eq!(header.base_sequence(), 17);
        assert_eq!(header.producer_id().0, 42);
        assert_eq!(header.producer_epoch(), 3);
        assert_eq!(header.record_count(), 3);
        assert_eq!(header.max_timestamp().0, 1_002);
        // Restamped for another producer: still valid, records unchanged.
        let again = restamp(&batch, (77, 0), 5);
        batch::validate_batch(&again).unwrap();
        let header = BatchHeader::parse_unchecked(&again).unwrap();
        assert_eq!((header.producer_id().0, header.base_sequence()), (77, 5));
        assert_eq!(again[61..], batch[61..]);
        let decoded = decode("t", 0, &batch, 0, &[]).unwrap();
        assert_eq!(decoded.next_offset, Some(3));
        let got: Vec<_> = decoded
            .records
            .iter()
            .map(|c| {
                (
                    c.key.clone(),
                    c.value.clone(),
                    c.headers.clone(),
                    c.timestamp,
                )
            })
            .collect();
        let want: Vec<_> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    r.key.clone(),
                    r.value.clone(),
                    r.headers.clone(),
                    1_000 + i as i64,
                )
            })
            .collect();
        assert_eq!(got, want);
        // From an offset inside the batch, the earlier records are skipped.
        let later = decode("t", 0, &batch, 2, &[]).unwrap();
        assert_eq!(later.records.len(), 1);
        assert_eq!(later.records[0].offset, 2);
    }

    #[test]
    fn varint_lengths_match_their_encoding() {
        for value in [0i64, 1, -1, 63, 64, -65, 8191, 8192, i64::MAX, i64::MIN] {
            let mut buffer = BytesMut::new();
            put_varint(&mut buffer, value);
            assert_eq!(buffer.len(), varint_len(value), "{value}");
            let mut at = 0;
            assert_eq!(get_varint(&buffer, &mut at).unwrap(), value);
        }
    }
}

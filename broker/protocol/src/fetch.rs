//! Fetch response encoding that carries record bytes by reference.
//!
//! ```text
//! FetchResponse v4..=12 (compact strings/arrays and tagged fields from v12)
//!   throttle_time_ms : i32
//!   error_code       : i16        (v7+)
//!   session_id       : i32        (v7+)
//!   responses        : [ topic: string,
//!                        partitions: [ partition_index: i32, error_code: i16,
//!                                      high_watermark: i64, last_stable_offset: i64,
//!                                      log_start_offset: i64 (v5+),
//!                                      aborted_transactions: nullable [producer_id: i64,
//!                                                                      first_offset: i64,
//!                                                                      <tags v12+>],
//!                                      preferred_read_replica: i32 (v11+),
//!                                      records: nullable bytes, <tags v12+> ],
//!                        <tags v12+> ]
//!   <tags v12+>
//! ```
//! The writer produces a list of `Bytes` segments: small encoded fields accumulate in one
//! growing buffer, and each partition's record chunks (tail-cache or read buffers from the
//! log) are appended as their own segments, never copied. The connection writes the
//! segments with one vectored write.

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{put_array_len, put_bytes_len, put_empty_tags, put_string};

pub const FLEXIBLE_FROM: i16 = 12;

#[derive(Debug, Clone)]
pub struct PartitionHeader {
    pub partition_index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// (producer id, first offset) of each aborted transaction with records in the answer,
    /// for read_committed fetches; empty otherwise.
    pub aborted_transactions: Vec<(i64, i64)>,
}

/// Builds one framed Fetch response (size prefix and response header included).
#[derive(Debug)]
pub struct FetchResponseWriter {
    version: i16,
    compact: bool,
    current: BytesMut,
    segments: Vec<Bytes>,
    records_bytes: usize,
    /// Where `throttle_time_ms` sits in `current` (before the first partition is added).
    throttle_at: usize,
}

impl FetchResponseWriter {
    pub fn new(
        version: i16,
        correlation_id: i32,
        error_code: i16,
        session_id: i32,
        topic_count: usize,
    ) -> Self {
        let compact = version >= FLEXIBLE_FROM;
        let mut current = BytesMut::with_capacity(256);
        current.put_i32(0); // Size prefix, patched in `finish`.
        current.put_i32(correlation_id);
        if compact {
            put_empty_tags(&mut current); // Response header v1.
        }
        let throttle_at = current.len();
        current.put_i32(0); // throttle_time_ms, see `set_throttle_time_ms`.
        if version >= 7 {
            current.put_i16(error_code);
            current.put_i32(session_id);
        }
        put_array_len(&mut current, Some(topic_count), compact);
        FetchResponseWriter {
            version,
            compact,
            current,
            segments: Vec::new(),
            records_bytes: 0,
            throttle_at,
        }
    }

    /// Asks the client to wait `ms` before its next fetch. Must come before the first
    /// partition is added.
    pub fn set_throttle_time_ms(&mut self, ms: i32) {
        assert!(
            self.segments.is_empty(),
            "throttle time is set before partitions"
        );
        let at = self.throttle_at;
        self.current[at..at + 4].copy_from_slice(&ms.max(0).to_be_bytes());
    }

    pub fn begin_topic(&mut self, name: &str, partition_count: usize) {
        put_string(&mut self.current, name, self.compact);
        put_array_len(&mut self.current, Some(partition_count), self.compact);
    }

    pub fn end_topic(&mut self) {
        if self.compact {
            put_empty_tags(&mut self.current);
        }
    }

    /// Appends one partition; `records` are whole record batches, referenced, not copied.
    pub fn partition(&mut self, header: &PartitionHeader, records: &[Bytes]) {
        let out = &mut self.current;
        out.put_i32(header.partition_index);
        out.put_i16(header.error_code);
        out.put_i64(header.high_watermark);
        out.put_i64(header.last_stable_offset);
        if self.version >= 5 {
            out.put_i64(header.log_start_offset);
        }
        // An empty (not null) list when there is nothing to skip, as the Java broker sends for
        // READ_COMMITTED fetches of non-transactional data; valid for READ_UNCOMMITTED too.
        put_array_len(out, Some(header.aborted_transactions.len()), self.compact);
        for (producer_id, first_offset) in &header.aborted_transactions {
            out.put_i64(*producer_id);
            out.put_i64(*first_offset);
            if self.compact {
                put_empty_tags(out);
            }
        }
        if self.version >= 11 {
            out.put_i32(-1); // preferred_read_replica: none.
        }
        let records_len: usize = records.iter().map(Bytes::len).sum();
        put_bytes_len(out, Some(records_len), self.compact);
        if records_len > 0 {
            let head = self.current.split().freeze();
            self.segments.push(head);
            self.segments
                .extend(records.iter().filter(|chunk| !chunk.is_empty()).cloned());
            self.records_bytes += records_len;
        }
        if self.compact {
            put_empty_tags(&mut self.current);
        }
    }

    /// Bytes of records referenced so far.
    pub fn records_bytes(&self) -> usize {
        self.records_bytes
    }

    /// Closes the response and returns its segments, size prefix first.
    pub fn finish(mut self) -> Vec<Bytes> {
        if self.compact {
            put_empty_tags(&mut self.current);
        }
        let tail = self.current.split().freeze();
        self.segments.push(tail);
        let total: usize = self.segments.iter().map(Bytes::len).sum();
        let size = (total - 4) as i32;
        // The first segment always begins with the size placeholder; rebuild just its first
        // four bytes (the head segment is small) rather than the whole response.
        let first = &self.segments[0];
        let mut patched = BytesMut::with_capacity(first.len());
        patched.put_i32(size);
        patched.extend_from_slice(&first[4..]);
        self.segments[0] = patched.freeze();
        self.segments
    }
}

/// Bytes before a batch's (or a legacy message set entry's) length field: its base offset.
const BATCH_LENGTH_AT: usize = 8;

/// The batch length field itself; a batch occupies `BATCH_LENGTH_AT + 4 + length` bytes.
const BATCH_PREFIX_BYTES: usize = BATCH_LENGTH_AT + 4;

/// How many leading bytes of `chunks` (record batches as the log stores them, possibly split
/// across chunks) form whole batches within `limit` bytes. When not even the first batch fits
/// and `at_least_one` is set, the first batch alone: Kafka lets the first batch of a response
/// exceed `max_bytes` so that a consumer is never stuck behind a large record. A trailing
/// partial batch, or a length field that does not parse, ends the prefix.
pub fn whole_batches_within(chunks: &[Bytes], limit: usize, at_least_one: bool) -> usize {
    // A cursor that only moves forward: (chunk index, bytes before that chunk).
    let mut chunk = 0usize;
    let mut chunk_start = 0usize;
    let mut byte_at = |at: usize| -> Option<u8> {
        while chunk < chunks.len() && at >= chunk_start + chunks[chunk].len() {
            chunk_start += chunks[chunk].len();
            chunk += 1;
        }
        chunks.get(chunk).map(|bytes| bytes[at - chunk_start])
    };
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let mut taken = 0usize;
    loop {
        let mut length = [0u8; 4];
        for (i, byte) in length.iter_mut().enumerate() {
            match byte_at(taken + BATCH_LENGTH_AT + i) {
                Some(b) => *byte = b,
                None => return taken,
            }
        }
        let Ok(length) = usize::try_from(i32::from_be_bytes(length)) else {
            return taken;
        };
        let end = taken + BATCH_PREFIX_BYTES + length;
        if end > total {
            return taken;
        }
        let first = taken == 0;
        if end > limit && !(first && at_least_one) {
            return taken;
        }
        taken = end;
        if end >= limit {
            return taken;
        }
    }
}

/// The first `len` bytes of `chunks`, as slices of the same buffers (no copy).
pub fn prefix(chunks: &[Bytes], len: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut left = len;
    for chunk in chunks {
        if left == 0 {
            break;
        }
        let take = left.min(chunk.len());
        out.push(chunk.slice(..take));
        left -= take;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake batch of `len` bytes in all: base offset, length field, filler.
    fn batch(len: usize, fill: u8) -> Vec<u8> {
        let mut out = 0i64.to_be_bytes().to_vec();
        out.extend_from_slice(&((len - BATCH_PREFIX_BYTES) as i32).to_be_bytes());
        out.resize(len, fill);
        out
    }

    #[test]
    fn whole_batches_are_taken_up_to_the_limit() {
        let bytes: Vec<u8> = [batch(100, 1), batch(50, 2), batch(80, 3)].concat();
        // Split the bytes across chunks at awkward places, inside length fields too.
        let chunks = vec![
            Bytes::copy_from_slice(&bytes[..7]),
            Bytes::copy_from_slice(&bytes[7..109]),
            Bytes::copy_from_slice(&bytes[109..]),
        ];
        assert_eq!(whole_batches_within(&chunks, 1000, false), 230);
        assert_eq!(whole_batches_within(&chunks, 229, false), 150);
        assert_eq!(whole_batches_within(&chunks, 150, false), 150);
        assert_eq!(whole_batches_within(&chunks, 99, false), 0);
        assert_eq!(
            whole_batches_within(&chunks, 99, true),
            100,
            "the first batch may exceed"
        );
        assert_eq!(whole_batches_within(&chunks, 0, true), 100);
        let taken = prefix(&chunks, 150);
        assert_eq!(taken.concat(), bytes[..150].to_vec());
        // A partial trailing batch is never taken.
        let cut = vec![Bytes::copy_from_slice(&bytes[..120])];
        assert_eq!(whole_batches_within(&cut, 1000, true), 100);
    }
    use kafka_protocol::messages::FetchResponse;
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn crate_decoder_reads_what_the_writer_writes() {
        for version in 4..=12 {
            let mut writer = FetchResponseWriter::new(version, 42, 0, 7, 1);
            writer.begin_topic("orders", 2);
            let header = PartitionHeader {
                partition_index: 0,
                error_code: 0,
                high_watermark: 10,
                last_stable_offset: 8,
                log_start_offset: 0,
                aborted_transactions: vec![(77, 2), (78, 5)],
            };
            writer.partition(
                &header,
                &[Bytes::from_static(b"abc"), Bytes::from_static(b"def")],
            );
            writer.partition(
                &PartitionHeader {
                    partition_index: 1,
                    error_code: 1,
                    aborted_transactions: Vec::new(),
                    ..header.clone()
                },
                &[],
            );
            writer.end_topic();
            let segments = writer.finish();
            let frame: Vec<u8> = segments.iter().flat_map(|s| s.iter().copied()).collect();
            let size = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(size, frame.len() - 4);
            let header_len = if version >= 12 { 5 } else { 4 };
            let mut body = Bytes::copy_from_slice(&frame[4 + header_len..]);
            let decoded = FetchResponse::decode(&mut body, version).unwrap();
            let partitions = &decoded.responses[0].partitions;
            assert_eq!(
                partitions[0].records.as_deref(),
                Some(&b"abcdef"[..]),
                "v{version}"
            );
            assert_eq!(partitions[1].error_code, 1);
            assert_eq!(partitions[0].high_watermark, 10);
            assert_eq!(partitions[0].last_stable_offset, 8);
            let aborted: Vec<(i64, i64)> = partitions[0]
                .aborted_transactions
                .iter()
                .flatten()
                .map(|a| (a.producer_id.0, a.first_offset))
                .collect();
            assert_eq!(aborted, [(77, 2), (78, 5)], "v{version}");
            assert_eq!(
                partitions[1].aborted_transactions.as_ref().map(Vec::len),
                Some(0)
            );
            assert!(body.is_empty());
        }
    }
}

//! The sparse offset index and the time index of one segment: in-memory form, on-disk
//! encoding, and lookups. Pure: no I/O, so the same code runs in tests and under a simulator.
//!
//! The segment code feeds every written batch to a [`SegmentIndexer`], which decides when to add
//! entries; the log persists [`OffsetIndex::encode`] / [`TimeIndex::encode`] at roll and close
//! and rebuilds them by scanning when they are missing or fail [`OffsetIndex::decode`].
//!
//! # `<base_offset:020>.index` (one entry per `index_interval_bytes` of batches)
//!
//! | offset | size | field                                                   |
//! |-------:|-----:|---------------------------------------------------------|
//! |      0 |    4 | relative offset u32 BE (batch base offset − segment base) |
//! |      4 |    4 | position u32 BE (byte position of that batch in `.log`)   |
//!
//! Entries are strictly increasing in both fields. The file is `8 × entries` bytes long.
//!
//! # `<base_offset:020>.timeindex`
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! |      0 |    8 | timestamp i64 BE (largest maxTimestamp so far in the segment)    |
//! |      8 |    4 | relative offset u32 BE (base offset of the batch that holds it)  |
//!
//! Timestamps are strictly increasing. On roll and close a final entry records the segment's
//! largest timestamp, so the last entry is the segment's maximum. `12 × entries` bytes.

use tern_protocol::batch::BatchHeader;
use tern_protocol::types::{Offset, TimestampMs};
use zerocopy::byteorder::big_endian::{I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::limits::{OFFSET_INDEX_ENTRY_BYTES, TIME_INDEX_ENTRY_BYTES};

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawOffsetEntry {
    relative_offset: U32,
    position: U32,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawTimeEntry {
    timestamp: I64,
    relative_offset: U32,
}

const _: () = assert!(std::mem::size_of::<RawOffsetEntry>() == OFFSET_INDEX_ENTRY_BYTES);
const _: () = assert!(std::mem::size_of::<RawTimeEntry>() == TIME_INDEX_ENTRY_BYTES);

/// Why a persisted index cannot be trusted; the caller rebuilds it by scanning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexDamage {
    BadLength(usize),
    NotIncreasing { entry: usize },
    BeyondSegment { entry: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: TimestampMs,
    pub relative_offset: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub fn entries(&self) -> &[OffsetEntry] {
        &self.entries
    }

    pub fn push(&mut self, entry: OffsetEntry) {
        if let Some(last) = self.entries.last() {
            assert!(entry.relative_offset > last.relative_offset && entry.position > last.position);
        }
        self.entries.push(entry);
    }

    /// The last entry at or below `relative_offset`: where a scan for it starts. `(0, 0)` when
    /// the offset precedes every entry.
    pub fn floor(&self, relative_offset: u32) -> OffsetEntry {
        let i = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        if i == 0 {
            OffsetEntry {
                relative_offset: 0,
                position: 0,
            }
        } else {
            self.entries[i - 1]
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_INDEX_ENTRY_BYTES);
        for e in &self.entries {
            let raw = RawOffsetEntry {
                relative_offset: e.relative_offset.into(),
                position: e.position.into(),
            };
            out.extend_from_slice(raw.as_bytes());
        }
        out
    }

    /// Decodes and checks an index against its segment's size in bytes.
    pub fn decode(bytes: &[u8], segment_bytes: u64) -> Result<OffsetIndex, IndexDamage> {
        let raw = <[RawOffsetEntry]>::ref_from_bytes(bytes)
            .map_err(|_| IndexDamage::BadLength(bytes.len()))?;
        let mut index = OffsetIndex::default();
        for (i, r) in raw.iter().enumerate() {
            let entry = OffsetEntry {
                relative_offset: r.relative_offset.get(),
                position: r.position.get(),
            };
            if u64::from(entry.position) >= segment_bytes {
                return Err(IndexDamage::BeyondSegment { entry: i });
            }
            if let Some(last) = index.entries.last() {
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position
                {
                    return Err(IndexDamage::NotIncreasing { entry: i });
                }
            }
            index.entries.push(entry);
        }
        Ok(index)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    pub fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    /// Adds an entry if its timestamp is larger than the last one's (the index only grows).
    pub fn maybe_push(&mut self, entry: TimeEntry) {
        match self.entries.last() {
            Some(last) if entry.timestamp <= last.timestamp => {}
            Some(last) if entry.relative_offset < last.relative_offset => {}
            _ => self.entries.push(entry),
        }
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// The relative offset from which to scan for the first batch whose max timestamp is at
    /// least `timestamp`: the batch of the last entry below it (every earlier batch is below too).
    pub fn scan_start(&self, timestamp: TimestampMs) -> u32 {
        let i = self.entries.partition_point(|e| e.timestamp < timestamp);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].relative_offset
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_INDEX_ENTRY_BYTES);
        for e in &self.entries {
            let raw = RawTimeEntry {
                timestamp: e.timestamp.0.into(),
                relative_offset: e.relative_offset.into(),
            };
            out.extend_from_slice(raw.as_bytes());
        }
        out
    }

    /// Decodes and checks an index; `next_relative` bounds the relative offsets it may hold.
    pub fn decode(bytes: &[u8], next_relative: Option<u32>) -> Result<TimeIndex, IndexDamage> {
        let raw = <[RawTimeEntry]>::ref_from_bytes(bytes)
            .map_err(|_| IndexDamage::BadLength(bytes.len()))?;
        let mut index = TimeIndex::default();
        for (i, r) in raw.iter().enumerate() {
            let entry = TimeEntry {
                timestamp: TimestampMs(r.timestamp.get()),
                relative_offset: r.relative_offset.get(),
            };
            if let Some(next) = next_relative {
                if entry.relative_offset >= next {
                    return Err(IndexDamage::BeyondSegment { entry: i });
                }
            }
            if let Some(last) = index.entries.last() {
                if entry.timestamp <= last.timestamp || entry.relative_offset < last.relative_offset
                {
                    return Err(IndexDamage::NotIncreasing { entry: i });
                }
            }
            index.entries.push(entry);
        }
        Ok(index)
    }
}

/// The per-segment bookkeeping fed with every batch in file order, by the appender and by the
/// recovery scan alike, so both build identical indexes.
#[derive(Debug, Clone)]
pub struct SegmentIndexer {
    pub base: Offset,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Bytes of batches since the last index entry (or the segment start).
    pub bytes_since_entry: u64,
    /// The largest maxTimestamp in the segment and the base offset of its batch.
    pub max_timestamp: Option<(Offset, TimestampMs)>,
    /// The offset after the last batch seen.
    pub next_offset: Offset,
    /// The maxTimestamp of the segment's first batch.
    pub first_timestamp: Option<TimestampMs>,
}

impl SegmentIndexer {
    pub fn new(base: Offset) -> SegmentIndexer {
        SegmentIndexer {
            base,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_entry: 0,
            max_timestamp: None,
            next_offset: base,
            first_timestamp: None,
        }
    }

    pub fn relative(&self, offset: Offset) -> u32 {
        let delta = offset.0 - self.base.0;
        assert!(
            (0..=i64::from(u32::MAX)).contains(&delta),
            "offset {offset} outside segment {}",
            self.base
        );
        delta as u32
    }

    /// Records a batch written at `position`. An index entry is added when at least
    /// `interval_bytes` were written since the previous one, pointing at this batch.
    pub fn observe(&mut self, header: &BatchHeader, position: u64, interval_bytes: u32) {
        if self.bytes_since_entry >= u64::from(interval_bytes) {
            let rel = self.relative(header.base_offset());
            self.offset_index.push(OffsetEntry {
                relative_offset: rel,
                position: position as u32,
            });
            if let Some((offset, ts)) = self.max_timestamp {
                let entry = TimeEntry {
                    timestamp: ts,
                    relative_offset: self.relative(offset),
                };
                self.time_index.maybe_push(entry);
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += header.total_bytes() as u64;
        let ts = header.max_timestamp();
        if self.max_timestamp.is_none_or(|(_, max)| ts > max) {
            self.max_timestamp = Some((header.base_offset(), ts));
        }
        if self.first_timestamp.is_none() {
            self.first_timestamp = Some(ts);
        }
        self.next_offset = header.next_offset();
    }

    /// Adds the final time index entry (the segment's maximum), done at roll and close.
    pub fn seal(&mut self) {
        if let Some((offset, ts)) = self.max_timestamp {
            let entry = TimeEntry {
                timestamp: ts,
                relative_offset: self.relative(offset),
            };
            self.time_index.maybe_push(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_index_round_trips_and_floors() {
        let mut index = OffsetIndex::default();
        index.push(OffsetEntry {
            relative_offset: 10,
            position: 4096,
        });
        index.push(OffsetEntry {
            relative_offset: 20,
            position: 8192,
        });
        let decoded = OffsetIndex::decode(&index.encode(), 10_000).unwrap();
        assert_eq!(decoded, index);
        assert_eq!(decoded.floor(5).position, 0);
        assert_eq!(decoded.floor(10).position, 4096);
        assert_eq!(decoded.floor(19).position, 4096);
        assert_eq!(decoded.floor(99).position, 8192);
    }

    #[test]
    fn damaged_indexes_are_detected() {
        let mut index = OffsetIndex::default();
        index.push(OffsetEntry {
            relative_offset: 10,
            position: 4096,
        });
        index.push(OffsetEntry {
            relative_offset: 20,
            position: 8192,
        });
        let bytes = index.encode();
        assert_eq!(
            OffsetIndex::decode(&bytes[..7], 10_000),
            Err(IndexDamage::BadLength(7))
        );
        assert_eq!(
            OffsetIndex::decode(&bytes, 5000),
            Err(IndexDamage::BeyondSegment { entry: 1 })
        );
        let mut swapped = bytes[8..].to_vec();
        swapped.extend_from_slice(&bytes[..8]);
        assert_eq!(
            OffsetIndex::decode(&swapped, 10_000),
            Err(IndexDamage::NotIncreasing { entry: 1 })
        );
    }

    #[test]
    fn time_index_scan_start_points_below_target() {
        let mut index = TimeIndex::default();
        index.maybe_push(TimeEntry {
            timestamp: TimestampMs(100),
            relative_offset: 0,
        });
        index.maybe_push(TimeEntry {
            timestamp: TimestampMs(90),
            relative_offset: 5,
        });
        index.maybe_push(TimeEntry {
            timestamp: TimestampMs(200),
            relative_offset: 10,
        });
        assert_eq!(index.entries().len(), 2);
        assert_eq!(index.scan_start(TimestampMs(50)), 0);
        assert_eq!(index.scan_start(TimestampMs(150)), 0);
        assert_eq!(index.scan_start(TimestampMs(250)), 10);
        assert_eq!(TimeIndex::decode(&index.encode(), Some(11)).unwrap(), index);
    }
}

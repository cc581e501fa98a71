//! The leader-epoch cache of one log (Kafka's `leader-epoch-checkpoint`): which leader epoch
//! started at which offset, its lookups (OffsetForLeaderEpoch) and its file encoding. Pure: no
//! I/O; `log` keeps one per partition, persists it and rebuilds it on recovery.
//!
//! Invariants: epochs strictly increase, start offsets never decrease (entries [`assign`]ed in
//! a running log even strictly increase, as Kafka's do); at most
//! `limits::LEADER_EPOCH_ENTRIES_MAX` entries (the oldest is dropped beyond that).
//!
//! [`assign`]: LeaderEpochCache::assign
//!
//! # `leader-epoch-checkpoint`
//!
//! Written whole (tmp + fdatasync + rename + directory sync) whenever an epoch starts, before
//! any batch of that epoch is written; so it may run ahead of the log, never behind, and
//! recovery trims entries at or above the log end.
//!
//! | offset     | size | field                                            |
//! |-----------:|-----:|--------------------------------------------------|
//! |          0 |    2 | format version u16 BE = 1                        |
//! |          2 |    4 | entry count n u32 BE (≤ LEADER_EPOCH_ENTRIES_MAX) |
//! |          6 |    4 | entry 0: leader epoch i32 BE                     |
//! |         10 |    8 | entry 0: start offset i64 BE                     |
//! |         18 | 12 × (n − 1) | entries 1 .. n − 1, same layout          |
//! |   6 + 12 n |    4 | CRC32C u32 BE of bytes 0 .. 6 + 12 n             |

use tern_protocol::types::{LeaderEpoch, Offset};
use zerocopy::byteorder::big_endian::{I32, I64, U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::limits::{
    LEADER_EPOCH_ENTRIES_MAX, LEADER_EPOCH_ENTRY_BYTES, LEADER_EPOCH_FILE_CRC_BYTES,
    LEADER_EPOCH_FILE_HEADER_BYTES,
};

pub const LEADER_EPOCH_FILE_NAME: &str = "leader-epoch-checkpoint";
const FORMAT_VERSION: u16 = 1;

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawHeader {
    version: U16,
    entries: U32,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawEntry {
    epoch: I32,
    start_offset: I64,
}

const _: () = assert!(std::mem::size_of::<RawHeader>() == LEADER_EPOCH_FILE_HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<RawEntry>() == LEADER_EPOCH_ENTRY_BYTES);

/// One leader epoch and the first offset written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: LeaderEpoch,
    pub start_offset: Offset,
}

/// Why a `leader-epoch-checkpoint` cannot be trusted; the log rebuilds it from batch headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochFileDamage {
    BadLength(usize),
    BadVersion(u16),
    BadCrc,
    TooManyEntries(u32),
    /// Entry `entry` breaks an invariant (negative, epoch not above, or start below, the
    /// previous one's).
    OutOfOrder {
        entry: usize,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset` (a batch of that epoch is appended there).
    /// Returns whether the cache changed. No-op for a negative epoch (batches written without
    /// one) and for an epoch not above the latest: the same epoch continuing, or a batch from a
    /// stale leader, which Kafka also leaves out of the cache. Entries starting at or after
    /// `start_offset` are dropped first, as Kafka does, so start offsets strictly increase.
    pub fn assign(&mut self, epoch: LeaderEpoch, start_offset: Offset) -> bool {
        if epoch.0 < 0 || self.latest().is_some_and(|l| epoch <= l.epoch) {
            return false;
        }
        self.entries.retain(|e| e.start_offset < start_offset);
        if self.entries.len() >= LEADER_EPOCH_ENTRIES_MAX {
            // The oldest epochs matter least (followers that far behind truncate to the log
            // start anyway); bounded memory and file size matter more.
            self.entries.remove(0);
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// Removes the entries of epochs that start at or after `end` (the log was truncated
    /// there, or recovery found it ends there). Returns whether the cache changed.
    pub fn truncate_from_end(&mut self, end: Offset) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end);
        self.entries.len() != before
    }

    /// The log now starts at `start`: entries starting at or below it collapse into the latest
    /// of them, moved to start at `start` (Kafka's `truncateFromStart`). Returns whether the
    /// cache changed.
    pub fn truncate_from_start(&mut self, start: Offset) -> bool {
        let below = self.entries.partition_point(|e| e.start_offset <= start);
        let Some(last_below) = below.checked_sub(1) else {
            return false;
        };
        let kept = EpochEntry {
            epoch: self.entries[last_below].epoch,
            start_offset: start,
        };
        let changed = below > 1 || self.entries[0] != kept;
        self.entries.drain(..last_below);
        self.entries[0] = kept;
        changed
    }

    /// Kafka's OffsetForLeaderEpoch answer for `requested` on a log ending at `log_end`: the
    /// largest epoch at or below `requested` and its end offset, which is the start offset of
    /// the next higher epoch, or `log_end` when `requested` is the latest epoch. When
    /// `requested` is below every known epoch, Kafka answers `requested` itself with the first
    /// epoch's start offset (the data before it is gone; the follower truncates to there).
    /// `None` is Kafka's UNDEFINED (epoch -1, offset -1): a negative epoch, an empty cache, or
    /// an epoch above the latest.
    pub fn end_offset_for(
        &self,
        requested: LeaderEpoch,
        log_end: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        let latest = self.latest()?;
        if requested.0 < 0 {
            return None;
        }
        if requested == latest.epoch {
            return Some((requested, log_end));
        }
        let higher = self.entries.partition_point(|e| e.epoch <= requested);
        let next = self.entries.get(higher)?;
        match higher.checked_sub(1) {
            Some(floor) => Some((self.entries[floor].epoch, next.start_offset)),
            None => Some((requested, next.start_offset)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let count = u32::try_from(self.entries.len()).expect("bounded by LEADER_EPOCH_ENTRIES_MAX");
        let mut out = Vec::with_capacity(
            LEADER_EPOCH_FILE_HEADER_BYTES
                + self.entries.len() * LEADER_EPOCH_ENTRY_BYTES
                + LEADER_EPOCH_FILE_CRC_BYTES,
        );
        let header = RawHeader {
            version: FORMAT_VERSION.into(),
            entries: count.into(),
        };
        out.extend_from_slice(header.as_bytes());
        for e in &self.entries {
            let raw = RawEntry {
                epoch: e.epoch.0.into(),
                start_offset: e.start_offset.0.into(),
            };
            out.extend_from_slice(raw.as_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes and checks a `leader-epoch-checkpoint`. Never trusts a count or length read.
    pub fn decode(bytes: &[u8]) -> Result<LeaderEpochCache, EpochFileDamage> {
        let damaged_length = || EpochFileDamage::BadLength(bytes.len());
        let (header, rest) = RawHeader::ref_from_prefix(bytes).map_err(|_| damaged_length())?;
        if header.version.get() != FORMAT_VERSION {
            return Err(EpochFileDamage::BadVersion(header.version.get()));
        }
        let count = header.entries.get();
        if count as usize > LEADER_EPOCH_ENTRIES_MAX {
            return Err(EpochFileDamage::TooManyEntries(count));
        }
        let body_bytes = count as usize * LEADER_EPOCH_ENTRY_BYTES;
        if rest.len() != body_bytes + LEADER_EPOCH_FILE_CRC_BYTES {
            return Err(damaged_length());
        }
        let covered = LEADER_EPOCH_FILE_HEADER_BYTES + body_bytes;
        let stored = u32::from_be_bytes(bytes[covered..].try_into().map_err(|_| damaged_length())?);
        if stored != crc32c::crc32c(&bytes[..covered]) {
            return Err(EpochFileDamage::BadCrc);
        }
        let raw =
            <[RawEntry]>::ref_from_bytes(&rest[..body_bytes]).map_err(|_| damaged_length())?;
        let mut entries: Vec<EpochEntry> = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let entry = EpochEntry {
                epoch: LeaderEpoch(r.epoch.get()),
                start_offset: Offset(r.start_offset.get()),
            };
            let in_order = entry.epoch.0 >= 0
                && entry.start_offset.0 >= 0
                && entries.last().is_none_or(|last| {
                    entry.epoch > last.epoch && entry.start_offset >= last.start_offset
                });
            if !in_order {
                return Err(EpochFileDamage::OutOfOrder { entry: i });
            }
            entries.push(entry);
        }
        Ok(LeaderEpochCache { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::default();
        for &(epoch, start) in entries {
            assert!(c.assign(LeaderEpoch(epoch), Offset(start)));
        }
        c
    }

    fn pairs(c: &LeaderEpochCache) -> Vec<(i32, i64)> {
        c.entries()
            .iter()
            .map(|e| (e.epoch.0, e.start_offset.0))
            .collect()
    }

    #[test]
    fn assign_keeps_epochs_increasing_and_ignores_stale_or_unknown_epochs() {
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert!(
            !c.assign(LeaderEpoch(3), Offset(15)),
            "same epoch continues"
        );
        assert!(!c.assign(LeaderEpoch(2), Offset(20)), "stale leader");
        assert!(!c.assign(LeaderEpoch::NONE, Offset(20)), "no epoch");
        assert!(c.assign(LeaderEpoch(5), Offset(20)));
        // A new epoch at or below an existing start replaces the entries from there.
        assert!(c.assign(LeaderEpoch(6), Offset(10)));
        assert_eq!(pairs(&c), vec![(1, 0), (6, 10)]);
    }

    #[test]
    fn end_offset_for_epoch_follows_kafka() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        let end = Offset(40);
        let cases: &[(i32, Option<(i32, i64)>)] = &[
            (-1, None),
            (0, Some((0, 0))), // below the first epoch: Kafka answers the first start
            (1, Some((1, 10))),
            (2, Some((1, 10))), // unknown epoch in between: the floor epoch's end
            (3, Some((3, 25))),
            (4, Some((4, 40))), // the latest: the log end
            (5, None),          // above the latest
        ];
        for &(requested, want) in cases {
            let got = c
                .end_offset_for(LeaderEpoch(requested), end)
                .map(|(e, o)| (e.0, o.0));
            assert_eq!(got, want, "epoch {requested}");
        }
        assert_eq!(
            LeaderEpochCache::default().end_offset_for(LeaderEpoch(0), end),
            None
        );
    }

    #[test]
    fn truncation_from_either_end() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert!(!c.truncate_from_end(Offset(26)));
        assert!(c.truncate_from_end(Offset(25)));
        assert_eq!(pairs(&c), vec![(1, 0), (3, 10)]);
        assert!(!c.truncate_from_start(Offset(0)));
        assert!(c.truncate_from_start(Offset(12)));
        assert_eq!(pairs(&c), vec![(3, 12)]);
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert!(c.truncate_from_start(Offset(10)));
        assert_eq!(pairs(&c), vec![(3, 10), (4, 25)]);
    }

    #[test]
    fn file_round_trips_and_damage_is_detected() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        let bytes = c.encode();
        assert_eq!(bytes.len(), 6 + 3 * 12 + 4);
        assert_eq!(LeaderEpochCache::decode(&bytes), Ok(c.clone()));
        assert_eq!(
            LeaderEpochCache::decode(&LeaderEpochCache::default().encode()),
            Ok(LeaderEpochCache::default())
        );
        let mut flipped = bytes.clone();
        flipped[12] ^= 1;
        assert_eq!(
            LeaderEpochCache::decode(&flipped),
            Err(EpochFileDamage::BadCrc)
        );
        assert_eq!(
            LeaderEpochCache::decode(&bytes[..bytes.len() - 1]),
            Err(EpochFileDamage::BadLength(bytes.len() - 1))
        );
        assert_eq!(
            LeaderEpochCache::decode(&[0, 1, 0]),
            Err(EpochFileDamage::BadLength(3))
        );
        let mut huge = bytes.clone();
        huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            LeaderEpochCache::decode(&huge),
            Err(EpochFileDamage::TooManyEntries(u32::MAX))
        );
        // Epochs out of order, with a valid CRC.
        let mut swapped = bytes[..6].to_vec();
        swapped.extend_from_slice(&bytes[18..30]);
        swapped.extend_from_slice(&bytes[6..18]);
        swapped.extend_from_slice(&bytes[30..42]);
        let crc = crc32c::crc32c(&swapped);
        swapped.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(
            LeaderEpochCache::decode(&swapped),
            Err(EpochFileDamage::OutOfOrder { entry: 1 })
        );
    }

    #[test]
    fn the_cache_stays_within_its_entry_limit() {
        let mut c = LeaderEpochCache::default();
        for i in 0..(LEADER_EPOCH_ENTRIES_MAX as i32 + 10) {
            c.assign(LeaderEpoch(i), Offset(i64::from(i)));
        }
        assert_eq!(c.entries().len(), LEADER_EPOCH_ENTRIES_MAX);
        assert_eq!(c.entries()[0].epoch, LeaderEpoch(10));
        assert!(LeaderEpochCache::decode(&c.encode()).is_ok());
    }
}

//! One partition's view of transactions: which producers have a transaction open here (and
//! from which offset), and which transactions were aborted (their offset ranges), so that
//! read_committed consumers stop at the last stable offset and skip aborted records.
//!
//! Plain Rust, no I/O. The partition feeds it every batch it appends (as leader or follower)
//! with `observe`; the shard persists `snapshot` beside the log at each index checkpoint and
//! at close, and `open` replays only what the log holds past the snapshot, so recovery never
//! depends on how far back the log goes.
//!
//! Snapshot file (`txn-state`), integers big-endian:
//!
//! | field                                                   |
//! |---------------------------------------------------------|
//! | magic u32 = 0x54584e31 ("TXN1")                          |
//! | next offset i64: everything below it has been observed  |
//! | open count u32, then per open transaction: producer id i64, first offset i64 |
//! | aborted count u32, then per aborted transaction: producer id i64, first offset i64, last offset i64 |
//! | crc32c u32 of everything before it                      |

use std::collections::{BTreeMap, VecDeque};

use bytes::{BufMut, BytesMut};
use tern_protocol::batch::BatchHeader;

pub const SNAPSHOT_FILE: &str = "txn-state";
const MAGIC: u32 = 0x5458_4e31;

/// An aborted transaction's range in this partition (Kafka's `AbortedTransaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The offset of its abort marker.
    pub last_offset: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionTxns {
    /// Producer id → first offset of its open transaction.
    open: BTreeMap<i64, i64>,
    /// By marker offset, ascending.
    aborted: VecDeque<AbortedTxn>,
    /// Every batch below this offset has been observed.
    next_offset: i64,
    /// Changed since the last snapshot.
    dirty: bool,
}

impl PartitionTxns {
    /// Nothing known, everything below `offset` observed (a log that starts there).
    pub fn starting_at(offset: i64) -> PartitionTxns {
        PartitionTxns {
            next_offset: offset,
            ..PartitionTxns::default()
        }
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Feeds one appended batch whose first offset is `base_offset` (the log's, which a
    /// leader's append assigns after the producer wrote the header): a transactional data
    /// batch opens its producer's transaction (if none is open); a marker (`marker`:
    /// Some(commit)) closes it, recording an abort.
    pub fn observe(&mut self, header: &BatchHeader, base_offset: i64, marker: Option<bool>) {
        let producer_id = header.producer_id().0;
        let next = base_offset + i64::from(header.last_offset_delta()) + 1;
        self.next_offset = self.next_offset.max(next);
        if producer_id < 0 || !header.is_transactional() {
            return;
        }
        if header.is_control() {
            let Some(commit) = marker else {
                return;
            };
            if let Some(first_offset) = self.open.remove(&producer_id) {
                if !commit {
                    self.aborted.push_back(AbortedTxn {
                        producer_id,
                        first_offset,
                        last_offset: base_offset,
                    });
                }
                self.dirty = true;
            }
        } else {
            self.open.entry(producer_id).or_insert(base_offset);
            self.dirty = true;
        }
    }

    /// Every batch below `offset` has been observed (batches outside transactions are not fed
    /// to `observe` as they are appended; a replay point records where the log stood).
    pub fn observed_through(&mut self, offset: i64) {
        self.next_offset = self.next_offset.max(offset);
    }

    /// The first offset of the oldest open transaction: read_committed readers stop there.
    pub fn first_unstable(&self) -> Option<i64> {
        self.open.values().min().copied()
    }

    /// Whether `producer_id` has a transaction open here.
    pub fn is_open(&self, producer_id: i64) -> bool {
        self.open.contains_key(&producer_id)
    }

    /// Aborted transactions with records in `[from, to)`, for a read_committed Fetch.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted ranges wholly below the log start (retention deleted them).
    pub fn trim(&mut self, log_start: i64) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start)
        {
            self.aborted.pop_front();
            self.dirty = true;
        }
    }

    /// The snapshot bytes if anything changed since the last call.
    pub fn snapshot_if_dirty(&mut self) -> Option<BytesMut> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.encode())
    }

    pub fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(24 + 16 * self.open.len() + 24 * self.aborted.len());
        out.put_u32(MAGIC);
        out.put_i64(self.next_offset);
        out.put_u32(self.open.len() as u32);
        for (producer_id, first) in &self.open {
            out.put_i64(*producer_id);
            out.put_i64(*first);
        }
        out.put_u32(self.aborted.len() as u32);
        for aborted in &self.aborted {
            out.put_i64(aborted.producer_id);
            out.put_i64(aborted.first_offset);
            out.put_i64(aborted.last_offset);
        }
        let crc = crc32c::crc32c(&out);
        out.put_u32(crc);
        out
    }

    /// A snapshot read back; `None` when it is damaged (the caller replays the whole log).
    pub fn decode(bytes: &[u8]) -> Option<PartitionTxns> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut reader = tern_protocol::wire::Reader::new(body);
        if reader.i32().ok()? as u32 != MAGIC {
            return None;
        }
        let next_offset = reader.i64().ok()?;
        let open_count = reader.i32().ok()? as u32 as usize;
        if open_count > reader.remaining() / 16 {
            return None;
        }
        let mut open = BTreeMap::new();
        for _ in 0..open_count {
            open.insert(reader.i64().ok()?, reader.i64().ok()?);
        }
        let aborted_count = reader.i32().ok()? as u32 as usize;
        if aborted_count > reader.remaining() / 24 {
            return None;
        }
        let mut aborted = VecDeque::with_capacity(aborted_count);
        for _ in 0..aborted_count {
            aborted.push_back(AbortedTxn {
                producer_id: reader.i64().ok()?,
                first_offset: reader.i64().ok()?,
                last_offset: reader.i64().ok()?,
            });
        }
        reader.expect_end().ok()?;
        Some(PartitionTxns {
            open,
            aborted,
            next_offset,
            dirty: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::batch::{BatchBuilder, ATTR_TRANSACTIONAL};
    use tern_protocol::types::{Offset, ProducerId, TimestampMs};

    fn data(producer: i64, base: i64, records: usize) -> BytesMut {
        let mut b = BatchBuilder::new(TimestampMs(0));
        b.attributes = ATTR_TRANSACTIONAL;
        b.producer_id = ProducerId(producer);
        b.producer_epoch = 0;
        b.base_sequence = 0;
        b.base_offset = Offset(base);
        for _ in 0..records {
            b = b.value(0, "v");
        }
        b.build()
    }

    fn marker(producer: i64, base: i64, commit: bool) -> BytesMut {
        let mut batch =
            tern_protocol::records::build_control_marker(producer, 0, commit, 0, TimestampMs(0));
        batch[..8].copy_from_slice(&base.to_be_bytes());
        batch
    }

    fn feed(txns: &mut PartitionTxns, batch: &[u8]) {
        let header = BatchHeader::parse_unchecked(batch).unwrap();
        let kind = tern_protocol::records::control_marker(batch, &header);
        txns.observe(&header, header.base_offset().0, kind);
    }

    #[test]
    fn open_transactions_hold_the_stable_offset_and_aborts_are_remembered() {
        let mut t = PartitionTxns::default();
        feed(&mut t, &data(1, 0, 3)); // 0..=2, producer 1 opens at 0
        feed(&mut t, &data(2, 3, 2)); // 3..=4, producer 2 opens at 3
        feed(&mut t, &data(1, 5, 1)); // 5, producer 1 again
        assert_eq!(t.first_unstable(), Some(0));
        feed(&mut t, &marker(1, 6, false)); // producer 1 aborts
        assert_eq!(t.first_unstable(), Some(3));
        feed(&mut t, &marker(2, 7, true)); // producer 2 commits
        assert_eq!(t.first_unstable(), None);
        assert_eq!(t.next_offset(), 8);
        assert_eq!(
            t.aborted_between(0, 8),
            vec![AbortedTxn {
                producer_id: 1,
                first_offset: 0,
                last_offset: 6
            }]
        );
        assert!(t.aborted_between(7, 8).is_empty());
        // The snapshot round-trips, and damage is detected.
        let bytes = t.encode();
        let mut back = PartitionTxns::decode(&bytes).unwrap();
        back.dirty = t.dirty;
        assert_eq!(back, t);
        for cut in 0..bytes.len() {
            assert!(PartitionTxns::decode(&bytes[..cut]).is_none());
        }
        let mut flipped = bytes.to_vec();
        flipped[10] ^= 1;
        assert!(PartitionTxns::decode(&flipped).is_none());
        t.trim(7);
        assert!(t.aborted_between(0, 8).is_empty());
    }
}

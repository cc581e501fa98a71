//! The cleaner's offset map: for each key seen in the dirty part of a log, the offset of its
//! latest record. Fixed memory: an open-addressing table of 24-byte slots (a 128-bit hash of
//! the key, as Kafka's map keeps an MD5, and an offset), sized once from a byte budget and
//! filled to at most `LOAD_FACTOR` so that probes stay short. Pure: no I/O.
//!
//! A false match needs two keys with the same 128-bit XXH3 hash; at 10^9 keys the chance is
//! about 10^-21, well below the disk's own undetected error rate.

use tern_protocol::types::Offset;

/// Slot layout: hash (16 bytes) and offset (8). An empty slot holds offset -1.
#[derive(Clone, Copy)]
struct Slot {
    hash: u128,
    offset: i64,
}

const EMPTY: Slot = Slot {
    hash: 0,
    offset: -1,
};

/// Bytes one key costs the map (Kafka's figure is the same: 16 + 8).
pub const SLOT_BYTES: usize = std::mem::size_of::<u128>() + std::mem::size_of::<i64>();

/// The map is full at this fraction of its slots (Kafka's `log.cleaner.io.buffer.load.factor`).
pub const LOAD_FACTOR: f64 = 0.9;

pub struct OffsetMap {
    slots: Vec<Slot>,
    used: usize,
    limit: usize,
}

impl std::fmt::Debug for OffsetMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetMap")
            .field("slots", &self.slots.len())
            .field("used", &self.used)
            .finish()
    }
}

impl OffsetMap {
    /// A map using about `budget_bytes` (at least 16 slots).
    pub fn with_budget(budget_bytes: usize) -> OffsetMap {
        let slots = (budget_bytes / SLOT_BYTES).max(16);
        OffsetMap {
            slots: vec![EMPTY; slots],
            used: 0,
            limit: ((slots as f64) * LOAD_FACTOR) as usize,
        }
    }

    pub fn hash(key: &[u8]) -> u128 {
        twox_hash::XxHash3_128::oneshot(key)
    }

    /// Keys the map can still take before it is full.
    pub fn room(&self) -> usize {
        self.limit - self.used
    }

    pub fn len(&self) -> usize {
        self.used
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * SLOT_BYTES
    }

    pub fn clear(&mut self) {
        if self.used == 0 {
            return;
        }
        self.slots.fill(EMPTY);
        self.used = 0;
    }

    fn probe(&self, hash: u128) -> usize {
        let n = self.slots.len();
        let mut i = (hash as u64 % n as u64) as usize;
        loop {
            let slot = &self.slots[i];
            if slot.offset < 0 || slot.hash == hash {
                return i;
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
    }

    /// Records `offset` as `key`'s latest (a later offset replaces an earlier one). False when
    /// the map is full and the key is new: the caller stops adding.
    pub fn put(&mut self, key: &[u8], offset: Offset) -> bool {
        let hash = Self::hash(key);
        let i = self.probe(hash);
        let slot = &mut self.slots[i];
        if slot.offset < 0 {
            if self.used >= self.limit {
                return false;
            }
            self.used += 1;
            *slot = Slot {
                hash,
                offset: offset.0,
            };
        } else {
            slot.offset = slot.offset.max(offset.0);
        }
        true
    }

    /// The latest offset recorded for `key`.
    pub fn get(&self, key: &[u8]) -> Option<Offset> {
        let slot = &self.slots[self.probe(Self::hash(key))];
        (slot.offset >= 0).then_some(Offset(slot.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_offset_per_key_and_refuses_new_keys_when_full() {
        let mut map = OffsetMap::with_budget(100 * SLOT_BYTES);
        assert_eq!(map.room(), 90);
        for i in 0..90 {
            assert!(map.put(format!("key-{i}").as_bytes(), Offset(i)));
        }
        assert_eq!(map.room(), 0);
        assert!(
            !map.put(b"one more", Offset(1000)),
            "full: a new key is refused"
        );
        assert!(map.put(b"key-3", Offset(500)), "a known key still updates");
        assert!(
            map.put(b"key-3", Offset(400)),
            "an earlier offset does not win"
        );
        assert_eq!(map.get(b"key-3"), Some(Offset(500)));
        assert_eq!(map.get(b"key-89"), Some(Offset(89)));
        assert_eq!(map.get(b"absent"), None);
        map.clear();
        assert!(map.is_empty());
        assert_eq!(map.get(b"key-3"), None);
    }
}

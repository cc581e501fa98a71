//! The memory budget for the indexes of sealed segments, shared by every log of a shard.
//!
//! Only the active segment's indexes live inside its log (bounded by `segment_index_bytes`,
//! which rolls the segment when they would outgrow it). A sealed segment's indexes are on disk
//! (persisted at roll) and are held in memory only here, least recently used first out, so a
//! shard's index memory is `budget_bytes` plus one active index per partition, whatever the
//! size of its logs. A lookup that misses loads the two index files again (see
//! `Log::read_with`).
//!
//! What it must never do: hold more than its budget (an index larger than the whole budget is
//! used once and not kept), or outlive a segment's deletion with that segment's entry.
//!
//! Not thread-safe by design: one cache per shard, like the logs that use it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tern_protocol::types::Offset;

use crate::index::{OffsetIndex, TimeIndex};

/// Both indexes of one sealed segment.
#[derive(Debug, Default)]
pub struct SegmentIndexes {
    pub offset: OffsetIndex,
    pub time: TimeIndex,
}

impl SegmentIndexes {
    /// Bytes of memory the entries take.
    pub fn memory_bytes(&self) -> usize {
        SegmentIndexes::memory_bytes_of(&self.offset, &self.time)
    }

    pub fn memory_bytes_of(offset: &OffsetIndex, time: &TimeIndex) -> usize {
        std::mem::size_of_val(offset.entries()) + std::mem::size_of_val(time.entries())
    }
}

/// Counters for `/metrics` and the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexCacheStats {
    pub budget_bytes: usize,
    pub bytes: usize,
    pub entries: usize,
    pub hits: u64,
    /// Lookups that had to load (or rebuild) an index.
    pub misses: u64,
    pub evictions: u64,
}

struct Entry {
    indexes: Rc<SegmentIndexes>,
    bytes: usize,
    last_used: u64,
}

struct State {
    budget_bytes: usize,
    bytes: usize,
    /// Logical clock for least-recently-used eviction.
    tick: u64,
    next_log_id: u64,
    entries: HashMap<(u64, Offset), Entry>,
    stats: IndexCacheStats,
}

/// See the module documentation.
pub struct IndexCache {
    state: RefCell<State>,
}

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl IndexCache {
    pub fn new(budget_bytes: usize) -> Rc<IndexCache> {
        Rc::new(IndexCache {
            state: RefCell::new(State {
                budget_bytes,
                bytes: 0,
                tick: 0,
                next_log_id: 0,
                entries: HashMap::new(),
                stats: IndexCacheStats::default(),
            }),
        })
    }

    pub fn stats(&self) -> IndexCacheStats {
        let st = self.state.borrow();
        IndexCacheStats {
            budget_bytes: st.budget_bytes,
            bytes: st.bytes,
            entries: st.entries.len(),
            ..st.stats
        }
    }

    /// A key space for one log; its entries are dropped by `remove_log`.
    pub(crate) fn register_log(&self) -> u64 {
        let mut st = self.state.borrow_mut();
        st.next_log_id += 1;
        st.next_log_id
    }

    pub(crate) fn get(&self, log: u64, base: Offset) -> Option<Rc<SegmentIndexes>> {
        let mut st = self.state.borrow_mut();
        st.tick += 1;
        let tick = st.tick;
        match st.entries.get_mut(&(log, base)) {
            Some(entry) => {
                entry.last_used = tick;
                let hit = entry.indexes.clone();
                st.stats.hits += 1;
                Some(hit)
            }
            None => {
                st.stats.misses += 1;
                None
            }
        }
    }

    /// Keeps `indexes`, evicting the least recently used entries to stay within the budget.
    /// Indexes larger than the whole budget are not kept.
    pub(crate) fn insert(&self, log: u64, base: Offset, indexes: Rc<SegmentIndexes>) {
        let bytes = indexes.memory_bytes();
        let mut st = self.state.borrow_mut();
        if let Some(old) = st.entries.remove(&(log, base)) {
            st.bytes -= old.bytes;
        }
        if bytes > st.budget_bytes {
            return;
        }
        while st.bytes + bytes > st.budget_bytes {
            let Some(victim) = st
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(key, _)| *key)
            else {
                break;
            };
            if let Some(evicted) = st.entries.remove(&victim) {
                st.bytes -= evicted.bytes;
                st.stats.evictions += 1;
            }
        }
        st.tick += 1;
        let last_used = st.tick;
        st.bytes += bytes;
        st.entries.insert(
            (log, base),
            Entry {
                indexes,
                bytes,
                last_used,
            },
        );
    }

    pub(crate) fn remove(&self, log: u64, base: Offset) {
        let mut st = self.state.borrow_mut();
        if let Some(old) = st.entries.remove(&(log, base)) {
            st.bytes -= old.bytes;
        }
    }

    pub(crate) fn remove_log(&self, log: u64) {
        let mut st = self.state.borrow_mut();
        let mut freed = 0;
        st.entries.retain(|(l, _), e| {
            if *l == log {
                freed += e.bytes;
            }
            *l != log
        });
        st.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::OffsetEntry;

    fn indexes(entries: u32) -> Rc<SegmentIndexes> {
        let mut offset = OffsetIndex::default();
        for i in 0..entries {
            offset.push(OffsetEntry {
                relative_offset: i + 1,
                position: (i + 1) * 100,
            });
        }
        Rc::new(SegmentIndexes {
            offset,
            time: TimeIndex::default(),
        })
    }

    #[test]
    fn stays_within_budget_and_evicts_least_recently_used() {
        let entry = std::mem::size_of::<OffsetEntry>();
        let cache = IndexCache::new(10 * entry);
        let log = cache.register_log();
        cache.insert(log, Offset(0), indexes(4));
        cache.insert(log, Offset(100), indexes(4));
        assert!(cache.get(log, Offset(0)).is_some());
        // Needs room: the least recently used one (base 100) goes.
        cache.insert(log, Offset(200), indexes(4));
        assert!(cache.get(log, Offset(100)).is_none());
        assert!(cache.get(log, Offset(0)).is_some());
        assert!(cache.get(log, Offset(200)).is_some());
        let stats = cache.stats();
        assert_eq!(stats.bytes, 8 * entry);
        assert!(stats.bytes <= stats.budget_bytes);
        assert_eq!(stats.evictions, 1);
        // Larger than the whole budget: used, never kept.
        cache.insert(log, Offset(300), indexes(11));
        assert!(cache.get(log, Offset(300)).is_none());
        assert_eq!(cache.stats().bytes, 8 * entry);
    }

    #[test]
    fn removing_a_log_frees_only_its_entries() {
        let cache = IndexCache::new(1 << 20);
        let (a, b) = (cache.register_log(), cache.register_log());
        cache.insert(a, Offset(0), indexes(3));
        cache.insert(b, Offset(0), indexes(5));
        cache.remove_log(a);
        assert!(cache.get(a, Offset(0)).is_none());
        assert!(cache.get(b, Offset(0)).is_some());
        assert_eq!(cache.stats().bytes, 5 * std::mem::size_of::<OffsetEntry>());
        cache.remove(b, Offset(0));
        assert_eq!(cache.stats().bytes, 0);
    }
}

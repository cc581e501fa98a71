//! The shard's tail-cache budget: one byte budget for the tail caches of every log of a shard,
//! so memory is bounded by configuration, not by the number of partitions (10,000 partitions
//! with an 8 MiB cache each would be 80 GB).
//!
//! Each log's tail cache holds the batches it appended last, oldest first; the budget keeps
//! one queue of every cached batch of the shard in append order. When the shard is over
//! budget, the batches appended longest ago leave first, whichever log holds them (the
//! consumers that read from the tail read what was appended last). A batch not yet written
//! cannot leave (it exists nowhere else); eviction stops there and resumes after the next
//! write. A log's own cap (`LogConfig::tail_cache_bytes`) still applies within the budget.
//!
//! Batches also leave a cache by other ways (the log's own cap, truncation, cleaning, the log
//! being dropped): their bytes are given back at once, and their queue entries are skipped
//! when met. The queue is swept of such entries when it grows to twice the cached batches, so
//! it stays proportional to what is cached.
//!
//! Single-threaded, like the logs it serves: one per shard, never shared across executors.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use tern_protocol::types::Offset;

use super::Inner;

/// One budget per shard; see the module documentation.
pub struct TailBudget {
    limit: usize,
    used: Cell<usize>,
    /// Batches cached in every log of the shard.
    batches: Cell<usize>,
    /// Every cached batch in append order: its log and its next offset (which names it).
    queue: RefCell<VecDeque<(Weak<Inner>, Offset)>>,
    evictions: Cell<u64>,
}

/// What the budget holds, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct TailBudgetStats {
    pub limit_bytes: usize,
    pub bytes: usize,
    pub batches: usize,
    /// Batches that left a cache to keep the shard within the budget.
    pub evictions: u64,
}

impl TailBudget {
    pub fn new(limit_bytes: usize) -> Rc<TailBudget> {
        Rc::new(TailBudget {
            limit: limit_bytes,
            used: Cell::new(0),
            batches: Cell::new(0),
            queue: RefCell::new(VecDeque::new()),
            evictions: Cell::new(0),
        })
    }

    pub fn stats(&self) -> TailBudgetStats {
        TailBudgetStats {
            limit_bytes: self.limit,
            bytes: self.used.get(),
            batches: self.batches.get(),
            evictions: self.evictions.get(),
        }
    }

    /// A batch entered `log`'s cache.
    pub(super) fn charge(&self, log: &Weak<Inner>, next: Offset, bytes: usize) {
        self.used.set(self.used.get() + bytes);
        self.batches.set(self.batches.get() + 1);
        self.queue.borrow_mut().push_back((log.clone(), next));
    }

    /// A batch left a cache (by any way).
    pub(super) fn release(&self, bytes: usize) {
        self.used.set(self.used.get() - bytes);
        self.batches.set(self.batches.get() - 1);
    }

    /// Evicts batches appended longest ago until the shard is within the budget, or the oldest
    /// is not written yet. No log's state may be borrowed by the caller.
    pub(super) fn evict(&self) {
        while self.used.get() > self.limit {
            let Some((log, next)) = self.queue.borrow_mut().pop_front() else {
                return;
            };
            let Some(inner) = log.upgrade() else {
                continue;
            };
            let mut st = inner.state.borrow_mut();
            let front = st.cache.front().map(|c| (c.next, c.bytes.len()));
            match front {
                Some((front_next, len)) if front_next == next => {
                    if next > st.written_end {
                        // Not written yet: it must stay; so must everything after it.
                        drop(st);
                        self.queue.borrow_mut().push_front((log, next));
                        return;
                    }
                    st.cache.pop_front();
                    st.cache_bytes -= len;
                    self.release(len);
                    self.evictions.set(self.evictions.get() + 1);
                }
                // Left the cache another way already (its bytes were given back then).
                _ => {}
            }
        }
        self.sweep_if_sparse();
    }

    /// Drops queue entries whose batches left their caches, when they outnumber the cached ones.
    fn sweep_if_sparse(&self) {
        let mut queue = self.queue.borrow_mut();
        if queue.len() <= 2 * self.batches.get() + 1024 {
            return;
        }
        queue.retain(|(log, next)| {
            log.upgrade().is_some_and(|inner| {
                let st = inner.state.borrow();
                let i = st.cache.partition_point(|c| c.next < *next);
                st.cache.get(i).is_some_and(|c| c.next == *next)
            })
        });
    }
}

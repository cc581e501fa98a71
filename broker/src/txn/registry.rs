//! The per-shard registry of the transaction coordinator: this shard's `Transactions` (the
//! I/O-free state machine), which `__transaction_state` partitions it has replayed, the
//! marker tasks in flight and the EndTxn answers waiting for them. Plain data held by the
//! shard; the glue that drives it lives in `coordinator`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use futures::channel::oneshot;

use super::state::{Transactions, TxnConfig};
use crate::group::codec::partition_for_group;

/// This shard's transaction coordinator: its `Transactions` and which `__transaction_state`
/// partitions it has replayed.
pub struct Registry {
    pub(super) state: RefCell<Transactions>,
    pub(super) loaded: RefCell<HashSet<i32>>,
    pub(super) loading: RefCell<HashSet<i32>>,
    /// Transactional ids whose markers a task is sending.
    pub(super) sending: RefCell<HashSet<String>>,
    /// EndTxn answers waiting for their transaction to complete.
    pub(super) completions: RefCell<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

impl Registry {
    pub fn new(config: TxnConfig) -> Registry {
        Registry {
            state: RefCell::new(Transactions::new(config)),
            loaded: RefCell::new(HashSet::new()),
            loading: RefCell::new(HashSet::new()),
            sending: RefCell::new(HashSet::new()),
            completions: RefCell::new(HashMap::new()),
        }
    }

    /// Read-only access for DescribeTransactions and ListTransactions.
    pub fn with_state<R>(&self, read: impl FnOnce(&Transactions) -> R) -> R {
        read(&self.state.borrow())
    }

    /// This broker stopped leading `__transaction_state` partition `partition` (of `count`):
    /// its ids are dropped; a later leadership replays them.
    pub fn unload_partition(&self, partition: i32, count: i32) {
        if self.loaded.borrow_mut().remove(&partition) {
            self.state
                .borrow_mut()
                .unload(|id| partition_for_group(id, count) == partition);
        }
    }
}

//! The per-shard registry of the group coordinator: this shard's `Groups` (the I/O-free
//! state machine), the requests waiting for a delayed answer, and which `__consumer_offsets`
//! partitions have been replayed. Plain data held by the shard; the glue that drives it lives
//! in `coordinator`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use futures::channel::oneshot;
use tern_protocol::error_code::{self, ErrorCode};

use super::state::{GroupConfig, Groups, Reply};

pub struct Coordinator {
    pub(super) groups: RefCell<Groups>,
    pub(super) waiters: RefCell<HashMap<u64, oneshot::Sender<Reply>>>,
    pub(super) next_token: Cell<u64>,
    /// `__consumer_offsets` partitions whose records have been replayed into `groups`.
    pub(super) loaded: RefCell<HashSet<i32>>,
    pub(super) loading: RefCell<HashSet<i32>>,
}

/// Why a group request cannot reach its group; each maps to one Kafka error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("__consumer_offsets does not exist")]
    NoOffsetsTopic,
    #[error("the group's partition is still loading")]
    Loading,
    #[error("this shard does not own the group's partition")]
    NotOwner,
}

impl RouteError {
    pub fn code(self) -> ErrorCode {
        match self {
            RouteError::NoOffsetsTopic => error_code::COORDINATOR_NOT_AVAILABLE,
            RouteError::Loading => error_code::COORDINATOR_LOAD_IN_PROGRESS,
            RouteError::NotOwner => error_code::NOT_COORDINATOR,
        }
    }
}

impl Coordinator {
    pub fn new(config: GroupConfig) -> Coordinator {
        Coordinator {
            groups: RefCell::new(Groups::new(config)),
            waiters: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            loaded: RefCell::new(HashSet::new()),
            loading: RefCell::new(HashSet::new()),
        }
    }

    pub(super) fn waiter(&self) -> (u64, oneshot::Receiver<Reply>) {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(token, tx);
        (token, rx)
    }

    /// This broker stopped leading `__consumer_offsets` partition `partition` (of `count`): its
    /// groups are dropped and the requests waiting on them answered NOT_COORDINATOR, so their
    /// clients find the new coordinator; a later leadership loads them again from the log.
    /// Returns how many groups went, or None if the partition was not loaded.
    pub fn unload_partition(&self, partition: i32, count: i32) -> Option<usize> {
        if !self.loaded.borrow_mut().remove(&partition) {
            return None;
        }
        let mut out = super::state::Effects::default();
        let unloaded = self.groups.borrow_mut().unload(
            |group| super::codec::partition_for_group(group, count) == partition,
            &mut out,
        );
        let mut waiters = self.waiters.borrow_mut();
        for (token, reply) in out.replies {
            if let Some(waiter) = waiters.remove(&token) {
                let _ = waiter.send(reply);
            }
        }
        Some(unloaded)
    }

    /// Read-only access for DescribeGroups, ListGroups and OffsetFetch.
    pub fn with_groups<R>(&self, read: impl FnOnce(&Groups) -> R) -> R {
        read(&self.groups.borrow())
    }
}

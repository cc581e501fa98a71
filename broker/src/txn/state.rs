//! The transaction coordinator's state machine: one `TxnMeta` per transactional id, as
//! Kafka's `TransactionCoordinator` keeps them, error for error.
//!
//! A transaction moves Empty → Ongoing (AddPartitionsToTxn / AddOffsetsToTxn) →
//! PrepareCommit or PrepareAbort (EndTxn, a timeout, or a new producer incarnation fencing an
//! open transaction) → CompleteCommit or CompleteAbort once every partition holds its marker.
//! Each step is a `__transaction_state` record; an answer that depends on a step goes out
//! only after the record is durable. While a step is being written (`pending`) or markers are
//! outstanding (a Prepare state), the producer's next request gets CONCURRENT_TRANSACTIONS and
//! retries, as with Kafka.
//!
//! What it must never do: I/O, timers or reading a clock. Calls take `now_ms`; what must be
//! written comes back as `Effects` (records to persist, marker jobs to send), and the glue
//! (`txn::coordinator`) reports completions back with `persisted` and `markers_written`.

use std::collections::{BTreeMap, BTreeSet};

use tern_protocol::error_code::{self, ErrorCode};

/// Kafka's `TransactionState`, with the byte its log records carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub fn byte(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_byte(byte: i8) -> Option<TxnState> {
        Some(match byte {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The names DescribeTransactions and ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    fn is_prepare(self) -> bool {
        matches!(
            self,
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence
        )
    }
}

/// One transactional id's metadata: the value of its `__transaction_state` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The partitions the open (or completing) transaction wrote to.
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_ms: i64,
    /// When the open transaction began (-1 when none).
    pub start_ms: i64,
}

/// Coordinator settings from the broker config.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// Kafka's `transaction.max.timeout.ms`.
    pub max_timeout_ms: i32,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_timeout_ms: 900_000,
        }
    }
}

/// Commit or abort markers for every partition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerJob {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub partitions: BTreeSet<(String, i32)>,
}

/// What a call asks the glue to do, in order: persist the records, then send the markers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Transactional ids whose current metadata must be written (the glue snapshots them).
    pub persist: Vec<String>,
    pub markers: Vec<MarkerJob>,
}

/// What InitProducerId needs before it can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// Answer with this id and epoch once `persist` is durable.
    Ready {
        producer_id: i64,
        producer_epoch: i16,
    },
    /// A new transactional id (or an exhausted epoch): call `init` again with a fresh id.
    NeedsProducerId,
    Refused(ErrorCode),
}

#[derive(Debug)]
struct Entry {
    meta: TxnMeta,
    /// A record for this id is being written; the next request waits for it.
    pending: bool,
}

/// The transactional ids one shard coordinates.
#[derive(Debug, Default)]
pub struct Transactions {
    pub config: TxnConfig,
    entries: BTreeMap<String, Entry>,
}

impl Transactions {
    pub fn new(config: TxnConfig) -> Transactions {
        Transactions {
            config,
            entries: BTreeMap::new(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&TxnMeta> {
        self.entries.get(id).map(|e| &e.meta)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &TxnMeta)> {
        self.entries.iter().map(|(id, e)| (id, &e.meta))
    }

    /// InitProducerId with a transactional id. `fresh_id` is a newly allocated producer id
    /// when the previous call answered `NeedsProducerId`. `expected` is the (id, epoch) a
    /// KIP-360 client names when it re-initialises.
    pub fn init(
        &mut self,
        txn_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        fresh_id: Option<i64>,
        now_ms: i64,
        out: &mut Effects,
    ) -> InitOutcome {
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return InitOutcome::Refused(error_code::INVALID_TRANSACTION_TIMEOUT);
        }
        let Some(entry) = self
            .entries
            .get_mut(txn_id)
            .filter(|e| e.meta.state != TxnState::Dead)
        else {
            let Some(producer_id) = fresh_id else {
                return InitOutcome::NeedsProducerId;
            };
            self.entries.insert(
                txn_id.to_owned(),
                Entry {
                    meta: TxnMeta {
                        producer_id,
                        producer_epoch: 0,
                        timeout_ms,
                        state: TxnState::Empty,
                        partitions: BTreeSet::new(),
                        last_update_ms: now_ms,
                        start_ms: -1,
                    },
                    pending: true,
                },
            );
            out.persist.push(txn_id.to_owned());
            return InitOutcome::Ready {
                producer_id,
                producer_epoch: 0,
            };
        };
        if entry.pending || entry.meta.state.is_prepare() {
            return InitOutcome::Refused(error_code::CONCURRENT_TRANSACTIONS);
        }
        if let Some((id, epoch)) = expected {
            let current = (entry.meta.producer_id, entry.meta.producer_epoch);
            if (id, epoch) != current {
                return InitOutcome::Refused(error_code::PRODUCER_FENCED);
            }
        }
        let meta = &mut entry.meta;
        if meta.state == TxnState::Ongoing {
            // A new incarnation while a transaction is open: fence the old one (a bumped
            // epoch) and abort what it wrote; the producer retries once that completes.
            // The abort markers carry the transaction's own producer id at the bumped epoch
            // (at most i16::MAX; the retried InitProducerId then moves to a fresh id).
            meta.producer_epoch = meta.producer_epoch.saturating_add(1);
            meta.state = TxnState::PrepareAbort;
            meta.last_update_ms = now_ms;
            entry.pending = true;
            out.persist.push(txn_id.to_owned());
            return InitOutcome::Refused(error_code::CONCURRENT_TRANSACTIONS);
        }
        if meta.producer_epoch >= i16::MAX - 1 {
            let Some(id) = fresh_id else {
                return InitOutcome::NeedsProducerId;
            };
            meta.producer_id = id;
            meta.producer_epoch = 0;
        } else {
            meta.producer_epoch += 1;
        }
        meta.timeout_ms = timeout_ms;
        meta.state = TxnState::Empty;
        meta.partitions.clear();
        meta.start_ms = -1;
        meta.last_update_ms = now_ms;
        entry.pending = true;
        out.persist.push(txn_id.to_owned());
        InitOutcome::Ready {
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
        }
    }

    fn check_producer(
        &self,
        txn_id: &str,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<(), ErrorCode> {
        let entry = self
            .entries
            .get(txn_id)
            .ok_or(error_code::INVALID_PRODUCER_ID_MAPPING)?;
        if entry.meta.producer_id != producer_id {
            return Err(error_code::INVALID_PRODUCER_ID_MAPPING);
        }
        if entry.meta.producer_epoch != producer_epoch {
            return Err(error_code::PRODUCER_FENCED);
        }
        if entry.pending || entry.meta.state.is_prepare() {
            return Err(error_code::CONCURRENT_TRANSACTIONS);
        }
        Ok(())
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's `__consumer_offsets`
    /// partition). `Ok(true)`: the answer waits for `persist`; `Ok(false)`: nothing changed.
    pub fn add_partitions(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
        now_ms: i64,
        out: &mut Effects,
    ) -> Result<bool, ErrorCode> {
        self.check_producer(txn_id, producer_id, producer_epoch)?;
        let entry = self
            .entries
            .get_mut(txn_id)
            .ok_or(error_code::INVALID_PRODUCER_ID_MAPPING)?;
        let meta = &mut entry.meta;
        if meta.state == TxnState::Ongoing && partitions.iter().all(|p| meta.partitions.contains(p))
        {
            return Ok(false);
        }
        if meta.state != TxnState::Ongoing {
            meta.partitions.clear();
            meta.start_ms = now_ms;
        }
        meta.state = TxnState::Ongoing;
        meta.partitions.extend(partitions.iter().cloned());
        meta.last_update_ms = now_ms;
        entry.pending = true;
        out.persist.push(txn_id.to_owned());
        Ok(true)
    }

    /// EndTxn. `Ok(true)`: the answer waits for `persist` (the Prepare record); markers follow.
    pub fn end(
        &mut self,
        txn_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
        out: &mut Effects,
    ) -> Result<bool, ErrorCode> {
        let entry = self
            .entries
            .get(txn_id)
            .ok_or(error_code::INVALID_PRODUCER_ID_MAPPING)?;
        if entry.meta.producer_id != producer_id {
            return Err(error_code::INVALID_PRODUCER_ID_MAPPING);
        }
        if entry.meta.producer_epoch != producer_epoch {
            return Err(error_code::PRODUCER_FENCED);
        }
        if entry.pending {
            return Err(error_code::CONCURRENT_TRANSACTIONS);
        }
        match (entry.meta.state, commit) {
            (TxnState::Ongoing, _) => {}
            // A retry of an EndTxn whose answer was lost.
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
                return Ok(false)
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                return Err(error_code::CONCURRENT_TRANSACTIONS)
            }
            _ => return Err(error_code::INVALID_TXN_STATE),
        }
        self.prepare(txn_id, commit, now_ms, out);
        Ok(true)
    }

    fn prepare(&mut self, txn_id: &str, commit: bool, now_ms: i64, out: &mut Effects) {
        if let Some(entry) = self.entries.get_mut(txn_id) {
            entry.meta.state = if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            };
            entry.meta.last_update_ms = now_ms;
            entry.pending = true;
            out.persist.push(txn_id.to_owned());
        }
    }

    /// The record written for `txn_id` is durable (`ok`) or failed. A durable Prepare record
    /// starts its markers.
    pub fn persisted(&mut self, txn_id: &str, ok: bool, out: &mut Effects) {
        let Some(entry) = self.entries.get_mut(txn_id) else {
            return;
        };
        entry.pending = false;
        if !ok {
            return;
        }
        let meta = &entry.meta;
        let commit = match meta.state {
            TxnState::PrepareCommit => true,
            TxnState::PrepareAbort | TxnState::PrepareEpochFence => false,
            _ => return,
        };
        out.markers.push(MarkerJob {
            transactional_id: txn_id.to_owned(),
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
            commit,
            partitions: meta.partitions.clone(),
        });
    }

    /// Every partition holds the transaction's marker: it is complete.
    pub fn markers_written(&mut self, txn_id: &str, commit: bool, now_ms: i64, out: &mut Effects) {
        let Some(entry) = self.entries.get_mut(txn_id) else {
            return;
        };
        let expected = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        if entry.meta.state != expected && entry.meta.state != TxnState::PrepareEpochFence {
            return;
        }
        entry.meta.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        entry.meta.partitions.clear();
        entry.meta.start_ms = -1;
        entry.meta.last_update_ms = now_ms;
        entry.pending = true;
        out.persist.push(txn_id.to_owned());
    }

    /// Aborts every transaction open longer than its timeout, fencing its producer with a
    /// bumped epoch so a late write or commit from it is refused.
    pub fn expire(&mut self, now_ms: i64, out: &mut Effects) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                !e.pending
                    && e.meta.state == TxnState::Ongoing
                    && now_ms - e.meta.start_ms > i64::from(e.meta.timeout_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.meta.producer_epoch = entry.meta.producer_epoch.saturating_add(1);
                tracing::info!(transactional_id = %id, "transaction timed out; aborting it");
            }
            self.prepare(&id, false, now_ms, out);
        }
    }

    /// Replaces (or removes, with `None`) an id's metadata while replaying
    /// `__transaction_state`.
    pub fn load(&mut self, txn_id: &str, meta: Option<TxnMeta>) {
        match meta {
            Some(meta) => {
                self.entries.insert(
                    txn_id.to_owned(),
                    Entry {
                        meta,
                        pending: false,
                    },
                );
            }
            None => {
                self.entries.remove(txn_id);
            }
        }
    }

    /// After a replay: the marker jobs of transactions a crash left half-ended.
    pub fn resume(&self, out: &mut Effects) {
        for (id, entry) in &self.entries {
            let commit = match entry.meta.state {
                TxnState::PrepareCommit => true,
                TxnState::PrepareAbort | TxnState::PrepareEpochFence => false,
                _ => continue,
            };
            out.markers.push(MarkerJob {
                transactional_id: id.clone(),
                producer_id: entry.meta.producer_id,
                producer_epoch: entry.meta.producer_epoch,
                commit,
                partitions: entry.meta.partitions.clone(),
            });
        }
    }

    /// Drops the ids `belongs` picks (their partition moved to another broker).
    pub fn unload(&mut self, belongs: impl Fn(&str) -> bool) {
        self.entries.retain(|id, _| !belongs(id));
    }
}

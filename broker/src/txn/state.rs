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
    /// Kafka's `transactional.id.expiration.ms`: an id with no transaction open and no
    /// request for this long is forgotten (a tombstone in `__transaction_state`).
    pub id_expiration_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_timeout_ms: 900_000,
            id_expiration_ms: 7 * 24 * 3600 * 1000,
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
    /// What the log holds for this id while a write is pending (None: nothing yet): a failed
    /// write puts it back, so memory never runs ahead of the log.
    durable: Option<TxnMeta>,
}

impl Entry {
    /// Starts a write of the current metadata, remembering what the log holds.
    fn begin_write(&mut self, before: TxnMeta) {
        self.pending = true;
        self.durable = Some(before);
    }
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
                    durable: None,
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
        let before = entry.meta.clone();
        let meta = &mut entry.meta;
        if meta.state == TxnState::Ongoing {
            // A new incarnation while a transaction is open: fence the old one (a bumped
            // epoch) and abort what it wrote; the producer retries once that completes.
            // The abort markers carry the transaction's own producer id at the bumped epoch
            // (at most i16::MAX; the retried InitProducerId then moves to a fresh id).
            meta.producer_epoch = meta.producer_epoch.saturating_add(1);
            meta.state = TxnState::PrepareAbort;
            meta.last_update_ms = now_ms;
            entry.begin_write(before);
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
        let answer = InitOutcome::Ready {
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
        };
        entry.begin_write(before);
        out.persist.push(txn_id.to_owned());
        answer
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
        if entry.meta.state == TxnState::Ongoing
            && partitions.iter().all(|p| entry.meta.partitions.contains(p))
        {
            return Ok(false);
        }
        let before = entry.meta.clone();
        let meta = &mut entry.meta;
        if meta.state != TxnState::Ongoing {
            meta.partitions.clear();
            meta.start_ms = now_ms;
        }
        meta.state = TxnState::Ongoing;
        meta.partitions.extend(partitions.iter().cloned());
        meta.last_update_ms = now_ms;
        entry.begin_write(before);
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
            let before = entry.durable.take().unwrap_or_else(|| entry.meta.clone());
            entry.meta.state = if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            };
            entry.meta.last_update_ms = now_ms;
            entry.begin_write(before);
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
        let durable = entry.durable.take();
        if !ok {
            // The log does not hold this step: forget it (a new id that was never written
            // goes entirely).
            match durable {
                Some(before) => entry.meta = before,
                None => {
                    self.entries.remove(txn_id);
                    return;
                }
            }
            // Back in a Prepare state (the Complete record failed): its markers go out again
            // (a repeated marker is harmless), so the transaction still completes.
            if !entry.meta.state.is_prepare() {
                return;
            }
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
        let before = entry.meta.clone();
        entry.meta.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        entry.meta.partitions.clear();
        entry.meta.start_ms = -1;
        entry.meta.last_update_ms = now_ms;
        entry.begin_write(before);
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
        // Ids idle past `id_expiration_ms` with nothing open go, with a tombstone (the glue
        // writes one for an id it no longer finds).
        let idle: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                !e.pending
                    && matches!(
                        e.meta.state,
                        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                    )
                    && now_ms - e.meta.last_update_ms > self.config.id_expiration_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            tracing::info!(transactional_id = %id, "transactional id expired");
            self.entries.remove(&id);
            out.persist.push(id);
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
                        durable: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn txns() -> Transactions {
        Transactions::new(TxnConfig {
            max_timeout_ms: 60_000,
            id_expiration_ms: 100_000,
        })
    }

    fn ready(outcome: InitOutcome) -> (i64, i16) {
        match outcome {
            InitOutcome::Ready {
                producer_id,
                producer_epoch,
            } => (producer_id, producer_epoch),
            other => panic!("not ready: {other:?}"),
        }
    }

    /// Completes every write the effects ask for, then every marker job; returns the jobs.
    fn settle(t: &mut Transactions, mut fx: Effects, now: i64) -> Vec<MarkerJob> {
        let mut jobs = Vec::new();
        loop {
            let mut next = Effects::default();
            for id in fx.persist.drain(..) {
                t.persisted(&id, true, &mut next);
            }
            let pending: Vec<MarkerJob> =
                fx.markers.drain(..).chain(next.markers.drain(..)).collect();
            for job in pending {
                t.markers_written(&job.transactional_id, job.commit, now, &mut next);
                jobs.push(job);
            }
            if next.persist.is_empty() && next.markers.is_empty() {
                return jobs;
            }
            fx = next;
        }
    }

    fn parts(list: &[(&str, i32)]) -> Vec<(String, i32)> {
        list.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect()
    }

    #[test]
    fn a_transaction_commits_through_prepare_and_markers() {
        let mut t = txns();
        let mut fx = Effects::default();
        assert_eq!(
            t.init("tx", 10_000, None, None, 0, &mut fx),
            InitOutcome::NeedsProducerId
        );
        let (pid, epoch) = ready(t.init("tx", 10_000, None, Some(7), 0, &mut fx));
        assert_eq!((pid, epoch), (7, 0));
        // While the record is written, the next request waits.
        assert_eq!(
            t.add_partitions(
                "tx",
                pid,
                epoch,
                &parts(&[("a", 0)]),
                1,
                &mut Effects::default()
            ),
            Err(error_code::CONCURRENT_TRANSACTIONS)
        );
        settle(&mut t, fx, 1);
        let mut fx = Effects::default();
        assert_eq!(
            t.add_partitions("tx", pid, epoch, &parts(&[("a", 0), ("b", 1)]), 2, &mut fx),
            Ok(true)
        );
        settle(&mut t, fx, 2);
        assert_eq!(t.get("tx").unwrap().state, TxnState::Ongoing);
        // Adding what is already there writes nothing.
        assert_eq!(
            t.add_partitions(
                "tx",
                pid,
                epoch,
                &parts(&[("a", 0)]),
                3,
                &mut Effects::default()
            ),
            Ok(false)
        );
        let mut fx = Effects::default();
        assert_eq!(t.end("tx", pid, epoch, true, 4, &mut fx), Ok(true));
        assert_eq!(t.get("tx").unwrap().state, TxnState::PrepareCommit);
        let jobs = settle(&mut t, fx, 5);
        assert_eq!(jobs.len(), 1);
        assert!(jobs[0].commit);
        assert_eq!(
            jobs[0].partitions,
            parts(&[("a", 0), ("b", 1)]).into_iter().collect()
        );
        assert_eq!(t.get("tx").unwrap().state, TxnState::CompleteCommit);
        // A retried EndTxn(commit) is answered; an abort of a committed one is refused.
        assert_eq!(
            t.end("tx", pid, epoch, true, 6, &mut Effects::default()),
            Ok(false)
        );
        assert_eq!(
            t.end("tx", pid, epoch, false, 6, &mut Effects::default()),
            Err(error_code::INVALID_TXN_STATE)
        );
    }

    #[test]
    fn a_new_incarnation_fences_the_old_and_aborts_its_open_transaction() {
        let mut t = txns();
        let mut fx = Effects::default();
        let (pid, epoch) = ready(t.init("tx", 10_000, None, Some(1), 0, &mut fx));
        settle(&mut t, fx, 0);
        let mut fx = Effects::default();
        t.add_partitions("tx", pid, epoch, &parts(&[("a", 0)]), 1, &mut fx)
            .unwrap();
        settle(&mut t, fx, 1);
        // The second producer: CONCURRENT_TRANSACTIONS while the old transaction is aborted
        // (at a bumped epoch, so the old producer's writes are refused), then a new epoch.
        let mut fx = Effects::default();
        assert_eq!(
            t.init("tx", 10_000, None, None, 2, &mut fx),
            InitOutcome::Refused(error_code::CONCURRENT_TRANSACTIONS)
        );
        let jobs = settle(&mut t, fx, 2);
        assert_eq!(jobs.len(), 1);
        assert!(!jobs[0].commit);
        assert_eq!(jobs[0].producer_epoch, epoch + 1);
        let mut fx = Effects::default();
        let (pid2, epoch2) = ready(t.init("tx", 10_000, None, None, 3, &mut fx));
        settle(&mut t, fx, 3);
        assert_eq!((pid2, epoch2), (pid, epoch + 2));
        // The old producer is fenced everywhere.
        assert_eq!(
            t.end("tx", pid, epoch, true, 4, &mut Effects::default()),
            Err(error_code::PRODUCER_FENCED)
        );
        assert_eq!(
            t.add_partitions(
                "tx",
                pid,
                epoch,
                &parts(&[("a", 1)]),
                4,
                &mut Effects::default()
            ),
            Err(error_code::PRODUCER_FENCED)
        );
        assert_eq!(
            t.add_partitions("tx", 99, 0, &parts(&[("a", 1)]), 4, &mut Effects::default()),
            Err(error_code::INVALID_PRODUCER_ID_MAPPING)
        );
        // KIP-360: a client naming an id and epoch that are not current is fenced.
        assert_eq!(
            t.init(
                "tx",
                10_000,
                Some((pid, epoch)),
                None,
                5,
                &mut Effects::default()
            ),
            InitOutcome::Refused(error_code::PRODUCER_FENCED)
        );
        assert_eq!(
            t.init("tx", 0, None, None, 5, &mut Effects::default()),
            InitOutcome::Refused(error_code::INVALID_TRANSACTION_TIMEOUT)
        );
        assert_eq!(
            t.init("tx", 60_001, None, None, 5, &mut Effects::default()),
            InitOutcome::Refused(error_code::INVALID_TRANSACTION_TIMEOUT)
        );
    }

    #[test]
    fn a_timed_out_transaction_is_aborted_and_its_producer_fenced() {
        let mut t = txns();
        let mut fx = Effects::default();
        let (pid, epoch) = ready(t.init("tx", 1_000, None, Some(1), 0, &mut fx));
        settle(&mut t, fx, 0);
        let mut fx = Effects::default();
        t.add_partitions("tx", pid, epoch, &parts(&[("a", 0)]), 100, &mut fx)
            .unwrap();
        settle(&mut t, fx, 100);
        let mut fx = Effects::default();
        t.expire(1_000, &mut fx);
        assert!(fx.persist.is_empty(), "not yet");
        t.expire(1_101, &mut fx);
        let jobs = settle(&mut t, fx, 1_101);
        assert_eq!(jobs.len(), 1);
        assert!(!jobs[0].commit);
        assert_eq!(t.get("tx").unwrap().state, TxnState::CompleteAbort);
        assert_eq!(
            t.end("tx", pid, epoch, true, 1_200, &mut Effects::default()),
            Err(error_code::PRODUCER_FENCED)
        );
    }

    #[test]
    fn idle_ids_expire_with_a_tombstone_but_open_transactions_stay() {
        let mut t = txns();
        let mut fx = Effects::default();
        ready(t.init("idle", 10_000, None, Some(1), 0, &mut fx));
        let (pid, epoch) = ready(t.init("busy", 60_000, None, Some(2), 0, &mut fx));
        settle(&mut t, fx, 0);
        let mut fx = Effects::default();
        t.add_partitions("busy", pid, epoch, &parts(&[("a", 0)]), 95_000, &mut fx)
            .unwrap();
        settle(&mut t, fx, 95_000);
        let mut fx = Effects::default();
        t.expire(100_000, &mut fx);
        assert!(t.get("idle").is_some(), "not idle long enough yet");
        assert!(fx.persist.is_empty());
        t.expire(100_001, &mut fx);
        assert!(t.get("idle").is_none());
        assert_eq!(fx.persist, vec!["idle".to_owned()], "a tombstone for it");
        assert_eq!(t.get("busy").unwrap().state, TxnState::Ongoing);
    }

    #[test]
    fn a_replayed_prepare_resends_its_markers() {
        let mut t = txns();
        let mut fx = Effects::default();
        let (pid, epoch) = ready(t.init("tx", 10_000, None, Some(1), 0, &mut fx));
        settle(&mut t, fx, 0);
        let mut fx = Effects::default();
        t.add_partitions("tx", pid, epoch, &parts(&[("a", 0)]), 1, &mut fx)
            .unwrap();
        settle(&mut t, fx, 1);
        let mut fx = Effects::default();
        t.end("tx", pid, epoch, true, 2, &mut fx).unwrap();
        // The Prepare record is durable, then the broker dies before the markers: a replay
        // through the codec finds it and resumes them.
        let record = crate::txn::codec::value(t.get("tx").unwrap());
        let (_, meta) =
            crate::txn::codec::decode(&crate::txn::codec::key("tx"), Some(&record)).unwrap();
        let mut replayed = txns();
        replayed.load("tx", meta);
        let mut resumed = Effects::default();
        replayed.resume(&mut resumed);
        assert_eq!(resumed.markers.len(), 1);
        assert!(resumed.markers[0].commit);
        assert_eq!(
            resumed.markers[0].partitions,
            parts(&[("a", 0)]).into_iter().collect()
        );
    }

    use crate::sim_rng::Rng;

    /// Producers (incarnations) of three transactional ids act at random while writes and
    /// markers complete in random order (or fail). Checked after every step:
    /// - every request from an incarnation older than the id's newest is refused;
    /// - a transaction gets exactly one decision: never a commit marker job after the
    ///   coordinator decided to abort it, nor the reverse;
    /// - once writes stop failing, every transaction that reached Prepare completes.
    fn simulate(seed: u64) {
        let mut rng = Rng::new(seed);
        let mut t = txns();
        let ids = ["t0", "t1", "t2"];
        // The newest incarnation each id handed out, and what each live one believes.
        let mut newest: BTreeMap<&str, (i64, i16)> = BTreeMap::new();
        // Answers the client learns only once their record is durable.
        let mut pending_init: BTreeMap<String, (i64, i16)> = BTreeMap::new();
        let mut added: BTreeMap<&str, BTreeSet<(String, i32)>> = BTreeMap::new();
        let mut decided: BTreeMap<(&str, i64, i16, i64), bool> = BTreeMap::new();
        let mut queued = Effects::default();
        let mut next_pid = 100;
        let mut now = 0i64;
        let mut txn_seq: BTreeMap<&str, i64> = BTreeMap::new();
        for step in 0..4_000 {
            now += rng.below(50) as i64;
            let id = ids[rng.below(3) as usize];
            let roll = rng.below(100);
            let mut fx = Effects::default();
            // Some incarnation acts: the newest, or (sometimes) a stale one.
            let (pid, epoch) = match newest.get(id) {
                Some(&(p, e)) if rng.below(6) == 0 && e > 0 => (p, e - 1),
                Some(&(p, e)) => (p, e),
                None => (-1, -1),
            };
            let stale = newest.get(id).is_some_and(|&n| n != (pid, epoch));
            if roll < 15 || pid < 0 {
                match t.init(id, 5_000, None, Some(next_pid), now, &mut fx) {
                    InitOutcome::Ready {
                        producer_id,
                        producer_epoch,
                    } => {
                        if producer_id == next_pid {
                            next_pid += 1;
                        }
                        pending_init.insert(id.to_owned(), (producer_id, producer_epoch));
                    }
                    InitOutcome::Refused(code) => assert_eq!(
                        code,
                        error_code::CONCURRENT_TRANSACTIONS,
                        "seed {seed} step {step}"
                    ),
                    InitOutcome::NeedsProducerId => panic!("seed {seed}: a fresh id was given"),
                }
            } else if roll < 60 {
                let partition = (
                    ["a", "b"][rng.below(2) as usize].to_owned(),
                    rng.below(3) as i32,
                );
                match t.add_partitions(
                    id,
                    pid,
                    epoch,
                    std::slice::from_ref(&partition),
                    now,
                    &mut fx,
                ) {
                    Ok(_) => {
                        assert!(
                            !stale,
                            "seed {seed} step {step}: a stale producer added a partition"
                        );
                        added.entry(id).or_default().insert(partition);
                    }
                    Err(code) => assert!(
                        [
                            error_code::CONCURRENT_TRANSACTIONS,
                            error_code::PRODUCER_FENCED,
                            error_code::INVALID_PRODUCER_ID_MAPPING
                        ]
                        .contains(&code),
                        "seed {seed} step {step}: {code}"
                    ),
                }
            } else if roll < 80 {
                let commit = rng.below(2) == 0;
                match t.end(id, pid, epoch, commit, now, &mut fx) {
                    Ok(true) => {
                        assert!(
                            !stale,
                            "seed {seed} step {step}: a stale producer ended a transaction"
                        );
                        added.remove(id);
                        *txn_seq.entry(id).or_default() += 1;
                    }
                    Ok(false) => {}
                    Err(code) => assert!(
                        [
                            error_code::CONCURRENT_TRANSACTIONS,
                            error_code::PRODUCER_FENCED,
                            error_code::INVALID_TXN_STATE,
                            error_code::INVALID_PRODUCER_ID_MAPPING
                        ]
                        .contains(&code),
                        "seed {seed} step {step}: {code}"
                    ),
                }
            } else if roll < 85 {
                t.expire(now, &mut fx);
            }
            queued.persist.append(&mut fx.persist);
            queued.markers.append(&mut fx.markers);
            // Complete some of what is in flight, in random order; a write may fail.
            while !queued.persist.is_empty() && rng.below(3) != 0 {
                let i = rng.below(queued.persist.len() as u64) as usize;
                let id = queued.persist.remove(i);
                let mut next = Effects::default();
                let ok = rng.below(20) != 0;
                if let Some(answer) = pending_init.remove(&id) {
                    if ok {
                        let key = ids.iter().find(|i| **i == id).copied().unwrap();
                        newest.insert(key, answer);
                        added.remove(key);
                        *txn_seq.entry(key).or_default() += 1;
                    }
                }
                t.persisted(&id, ok, &mut next);
                queued.markers.append(&mut next.markers);
            }
            while !queued.markers.is_empty() && rng.below(3) != 0 {
                let i = rng.below(queued.markers.len() as u64) as usize;
                let job = queued.markers.remove(i);
                let key = ids
                    .iter()
                    .find(|i| **i == job.transactional_id)
                    .copied()
                    .unwrap();
                let seq = txn_seq.get(key).copied().unwrap_or(0);
                let previous =
                    decided.insert((key, job.producer_id, job.producer_epoch, seq), job.commit);
                assert!(
                    previous.is_none_or(|p| p == job.commit),
                    "seed {seed} step {step}: two decisions for one transaction"
                );
                let mut next = Effects::default();
                t.markers_written(&job.transactional_id, job.commit, now, &mut next);
                queued.persist.append(&mut next.persist);
            }
        }
        // Drain: every acknowledged commit ends in its commit markers.
        for _ in 0..100 {
            let mut next = Effects::default();
            for id in queued.persist.drain(..) {
                t.persisted(&id, true, &mut next);
            }
            for job in queued.markers.drain(..) {
                t.markers_written(&job.transactional_id, job.commit, now, &mut next);
            }
            queued = next;
        }
        // Liveness: with every write succeeding, nothing is left half-ended.
        for id in ids {
            if let Some(meta) = t.get(id) {
                assert!(
                    !meta.state.is_prepare(),
                    "seed {seed}: {id} left in {:?}",
                    meta.state
                );
            }
        }
    }

    #[test]
    fn seeded_simulation_fences_stale_producers_and_decides_each_transaction_once() {
        let seeds: u64 = std::env::var("TERN_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40);
        for seed in 1..=seeds {
            simulate(seed);
        }
    }
}

//! The partition layer: one `Partition` per replica this broker holds, on the shard that owns
//! it, and the owner-side operations every caller goes through.
//!
//! - `state`: the I/O-free `PartitionState` (leader epoch, replicas and ISR, offsets and the
//!   high watermark, `min.insync.replicas`, idempotent producers), unit-tested on its own.
//! - `txns`: open and aborted transactions and the last stable offset, snapshotted beside
//!   the log when they change.
//! - `replay_point`: the producers' and transactions' state as of one offset, written beside
//!   the log every index checkpoint when no append is in flight; `restore_state` starts from
//!   it at open and after a truncation and replays only the batches past it (without one:
//!   the end of the log for producers, the transaction snapshot onwards for transactions).
//! - `waiters`: long-poll fetches parked on a partition until its high watermark passes what
//!   they have seen, under a per-shard cap; acks=all produces waiting for the watermark, and
//!   retries waiting for their original, park the same way under the acks=all budget.
//! - here: `Partition::append` (produce and the group coordinator append through it as the
//!   leader: it applies the topic's record rules — timestamp bounds, a compacted topic's
//!   refusal of keyless records, recompression — checks an idempotent batch's sequence (a
//!   retry of a batch still being written waits for it and is answered as it turns out),
//!   stamps the partition's real leader epoch, appends to the log, moves the high watermark,
//!   wakes waiters, and with acks=all waits for the high watermark to cover the batch), `write_marker` and `append_for_transaction` (the transaction and
//!   group coordinators' transactional appends), `append_replica` and `truncate` (a
//!   follower's side), and
//!   `read_or_wait` (read now, or park until data arrives, the deadline passes or the caller
//!   cancels, then read again, all on the owner: one cross-shard hop per owner per Fetch,
//!   however long it waits). Consumers read up to the high watermark; followers (a Fetch with
//!   a replica id) read up to what the leader's log acknowledges, and their fetch offsets are
//!   what moves the high watermark.
//!
//! Architecture invariant: a partition is touched only on its owner shard; its state lives in
//! `RefCell`s never borrowed across an `.await`. Consumers read up to the high watermark,
//! which the partition layer decides; the log only reports what it has made durable.

pub mod epochs;
pub mod replay_point;
pub mod state;
pub mod txns;
pub mod waiters;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::future::{select, select_all, Either};
use tern_protocol::batch::{peek_batch_total_bytes, BatchHeader};
use tern_protocol::error_code::{self, ErrorCode};
use tern_protocol::types::{Offset, TimestampMs};
use tern_replication::metadata::{BrokerId, PartitionMeta};
use tern_storage::{Log, ReadMode};

use crate::producer_state::{BatchSeq, Check, ProducerStates};
use crate::topic_config::TopicPolicy;
use state::{LogOffsets, PartitionState, ProduceRefusal};
pub use waiters::{ParkBudget, Parked};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// The partition's directory under the data dir (Kafka's `<topic>-<partition>`).
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
}

/// A partition replica owned by this shard.
pub struct Partition {
    pub tp: TopicPartition,
    pub log: Log,
    pub policy: RefCell<TopicPolicy>,
    state: RefCell<PartitionState>,
    /// Consumers' long polls and acks=all produces, woken as the high watermark moves.
    waiters: Rc<RefCell<waiters::Waiters>>,
    /// Followers' long polls, woken as the leader's acknowledged end moves.
    replica_waiters: Rc<RefCell<waiters::Waiters>>,
    /// Retries of an idempotent batch whose original is still on its way to the log, woken
    /// whenever an append settles a sequence (written or failed).
    sequence_waiters: Rc<RefCell<waiters::Waiters>>,
    /// The idempotent batches checked and not yet written or failed: a retry of one of them
    /// waits until it is no longer here (a few per producer, at most five each).
    appending: RefCell<Vec<BatchSeq>>,
    /// acks=all produces waiting for the watermark are bounded by the request budget, not
    /// by the fetch cap.
    ack_budget: Rc<ParkBudget>,
    /// Set when the shard drops the partition (deleted, moved, shutting down): reads answer
    /// NOT_LEADER_OR_FOLLOWER and parked fetches return.
    detached: Cell<bool>,
    /// The broker's `replica.lag.time.max.ms`.
    replica_lag_max_ms: Cell<i64>,
    /// Set while `truncate` runs: the log's end moves back before the state hears of it, so
    /// `log_moved` leaves the state alone meanwhile.
    truncating: Cell<bool>,
    /// The id of the topic this replica belongs to: a topic deleted and made again under the
    /// same name is another topic.
    topic_id: Cell<[u8; 16]>,
    /// Open and aborted transactions: the last stable offset and read_committed's skips.
    txns: RefCell<txns::PartitionTxns>,
    /// Appends and truncations between their first look at the producers' or transactions'
    /// state and their last change to it.
    appends: Appends,
    /// The log end the last replay point on disk was taken at.
    replay_point_at: Cell<Offset>,
}

/// Appends and truncations in flight, and how many have started: while one runs, the
/// producers' and transactions' state and the log disagree, so no replay point is taken; one
/// that started meanwhile voids a replay point being prepared.
#[derive(Default)]
struct Appends {
    in_flight: Cell<u32>,
    started: Cell<u64>,
    /// One ended half way (its caller went away, say a client that disconnected while its
    /// produce waited for the disk): the log may hold a batch the state never heard of, so no
    /// replay point is taken until the state is rebuilt from the log (a truncation, a restart).
    abandoned: Cell<bool>,
}

impl Appends {
    fn enter(&self) -> InFlight<'_> {
        self.in_flight.set(self.in_flight.get() + 1);
        self.started.set(self.started.get() + 1);
        InFlight {
            appends: self,
            done: false,
        }
    }

    /// None while one is in flight (or one was abandoned), else a mark that `unchanged_since`
    /// compares.
    fn settled(&self) -> Option<u64> {
        (self.in_flight.get() == 0 && !self.abandoned.get()).then(|| self.started.get())
    }

    fn unchanged_since(&self, mark: u64) -> bool {
        self.settled() == Some(mark)
    }
}

/// An idempotent batch in `Partition::appending` from its sequence check until its append
/// settles, also when the append's future is dropped half way.
struct Appending<'a> {
    list: &'a RefCell<Vec<BatchSeq>>,
    sequence: BatchSeq,
}

impl<'a> Appending<'a> {
    fn enter(list: &'a RefCell<Vec<BatchSeq>>, sequence: BatchSeq) -> Appending<'a> {
        list.borrow_mut().push(sequence);
        Appending { list, sequence }
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        let mut list = self.list.borrow_mut();
        if let Some(at) = list.iter().position(|s| *s == self.sequence) {
            list.swap_remove(at);
        }
    }
}

/// One append in `Appends::in_flight`: `done` once the state has taken in what the log did;
/// dropped without it, the append was abandoned half way.
struct InFlight<'a> {
    appends: &'a Appends,
    done: bool,
}

impl InFlight<'_> {
    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.appends.in_flight.set(self.appends.in_flight.get() - 1);
        if !self.done {
            self.appends.abandoned.set(true);
        }
    }
}

/// The producers' and transactions' state a partition opens with, and the offset of the
/// replay point it came from (-1 when none was usable).
pub struct Restored {
    pub producers: ProducerStates,
    pub txns: txns::PartitionTxns,
    pub replay_point_at: Offset,
}

/// A successful (or duplicate) append, as Produce answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: Offset,
    pub log_append_time: TimestampMs,
    pub log_start_offset: Offset,
}

/// Why an append was not done; each carries one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendFailure {
    pub code: ErrorCode,
    pub message: Option<String>,
    /// The records that made a batch be refused, by their index in it (KIP-467).
    pub record_errors: Vec<(i32, String)>,
}

impl AppendFailure {
    fn code(code: ErrorCode) -> AppendFailure {
        AppendFailure {
            code,
            message: None,
            record_errors: Vec::new(),
        }
    }

    /// The log refused or failed an append: its code, and its words as the message.
    fn storage(code: ErrorCode, error: &dyn std::fmt::Display) -> AppendFailure {
        AppendFailure {
            code,
            message: Some(error.to_string()),
            record_errors: Vec::new(),
        }
    }
}

impl From<ProduceRefusal> for AppendFailure {
    fn from(refusal: ProduceRefusal) -> Self {
        AppendFailure {
            code: refusal.code(),
            message: Some(refusal.message()),
            record_errors: Vec::new(),
        }
    }
}

/// What one partition of a Fetch asks for.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest {
    pub offset: Offset,
    pub max_bytes: usize,
    /// The client's `current_leader_epoch`, -1 when it sent none.
    pub current_leader_epoch: i32,
    /// Set when a follower fetches (a Fetch with a replica id).
    pub replica: Option<ReplicaFetch>,
    /// A read_committed consumer: reads stop at the last stable offset, and the aborted
    /// transactions among what it reads are listed.
    pub read_committed: bool,
}

/// A follower's fetch: who, and when (the shard's clock, for the ISR's lag rule).
#[derive(Debug, Clone, Copy)]
pub struct ReplicaFetch {
    pub id: BrokerId,
    pub now_ms: i64,
}

/// One partition's part of a Fetch answer.
#[derive(Debug, Default)]
pub struct ReadResult {
    pub error_code: ErrorCode,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// (producer id, first offset) of aborted transactions in what a read_committed read
    /// returns.
    pub aborted: Vec<(i64, i64)>,
    pub chunks: Vec<Bytes>,
    pub len: usize,
}

impl ReadResult {
    pub fn error(error_code: ErrorCode) -> ReadResult {
        ReadResult {
            error_code,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            ..ReadResult::default()
        }
    }
}

/// How a `read_or_wait` ended, besides its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// Enough bytes, an error, or nothing to wait for.
    Answered,
    /// The deadline passed.
    Deadline,
    /// The caller cancelled (the Fetch was answered from another owner, or its client left).
    Cancelled,
    /// The shard's cap on parked waiters was reached: answered at once.
    Refused,
}

impl Partition {
    /// A partition over `log` as `meta` describes it, with the state `restore_state` rebuilt
    /// from it.
    pub fn new(
        tp: TopicPartition,
        log: Log,
        policy: TopicPolicy,
        node: BrokerId,
        meta: &PartitionMeta,
        restored: Restored,
    ) -> Partition {
        let Restored {
            producers,
            txns,
            replay_point_at,
        } = restored;
        let offsets = log_offsets(&log);
        let state = PartitionState::new(
            node,
            meta,
            policy.min_insync_replicas as usize,
            offsets,
            producers,
        );
        Partition {
            tp,
            log,
            policy: RefCell::new(policy),
            state: RefCell::new(state),
            waiters: Rc::new(RefCell::new(waiters::Waiters::default())),
            replica_waiters: Rc::new(RefCell::new(waiters::Waiters::default())),
            sequence_waiters: Rc::new(RefCell::new(waiters::Waiters::default())),
            appending: RefCell::new(Vec::new()),
            ack_budget: ParkBudget::new(usize::MAX),
            replica_lag_max_ms: Cell::new(30_000),
            truncating: Cell::new(false),
            topic_id: Cell::new([0; 16]),
            detached: Cell::new(false),
            txns: RefCell::new(txns),
            appends: Appends::default(),
            replay_point_at: Cell::new(replay_point_at),
        }
    }

    /// Takes in a new image's view of this partition and its (possibly changed) configs. A
    /// new leader epoch wakes every waiter: acks=all produces then answer from the new state,
    /// and long polls re-check leadership.
    pub fn update(&self, meta: &PartitionMeta, policy: TopicPolicy) {
        self.log.set_config(policy.log.clone());
        let (new_epoch, advanced) = {
            let mut state = self.state.borrow_mut();
            let (before, watermark) = (state.leader_epoch(), state.high_watermark());
            state.set_min_insync(policy.min_insync_replicas as usize);
            state.update(meta);
            (
                state.leader_epoch() != before,
                (state.high_watermark() > watermark).then_some(state.high_watermark()),
            )
        };
        *self.policy.borrow_mut() = policy;
        if new_epoch {
            self.waiters.borrow_mut().wake_all();
            self.replica_waiters.borrow_mut().wake_all();
            self.sequence_waiters.borrow_mut().wake_all();
        } else if let Some(high_watermark) = advanced {
            // A smaller ISR can move the watermark past parked produces and fetches.
            self.waiters.borrow_mut().wake_below(high_watermark);
        }
        self.log_moved();
    }

    /// The broker's `replica.lag.time.max.ms` (acks=all counts only followers heard from
    /// within it).
    pub fn set_replica_lag_max_ms(&self, lag_max_ms: i64) {
        self.replica_lag_max_ms.set(lag_max_ms);
    }

    /// The id of the topic this replica belongs to.
    pub fn topic_id(&self) -> [u8; 16] {
        self.topic_id.get()
    }

    pub fn set_topic_id(&self, id: [u8; 16]) {
        self.topic_id.set(id);
    }

    /// This partition's leader as its image says (-1: none).
    pub fn leader(&self) -> BrokerId {
        self.state.borrow().leader()
    }

    /// The leader's ISR check (see `PartitionState::isr_duty`): an ISR to propose, if any.
    pub fn isr_duty(&self, now_ms: i64, lag_max_ms: i64) -> Option<state::IsrProposal> {
        if self.detached.get() {
            return None;
        }
        self.state.borrow_mut().isr_duty(now_ms, lag_max_ms)
    }

    /// For metrics, when this broker leads: (under-replicated, under min ISR, follower lag in
    /// records); `None` otherwise.
    pub fn replication_health(&self) -> Option<(bool, bool, u64)> {
        let state = self.state.borrow();
        state.is_leader().then(|| state.replication_health())
    }

    /// The controller did not answer the proposed ISR (it goes again at the next check).
    pub fn isr_proposal_unanswered(&self) {
        self.state.borrow_mut().isr_proposal_unanswered();
    }

    /// The controller refused the proposed ISR for a reason other than staleness.
    pub fn isr_proposal_refused(&self) {
        let advanced = {
            let mut state = self.state.borrow_mut();
            let before = state.high_watermark();
            state.isr_proposal_refused();
            (state.high_watermark() > before).then_some(state.high_watermark())
        };
        if let Some(high_watermark) = advanced {
            self.waiters.borrow_mut().wake_below(high_watermark);
        }
    }

    /// The ISR as the image says.
    pub fn isr(&self) -> Vec<BrokerId> {
        self.state.borrow().isr().to_vec()
    }

    /// The replicas as the image says.
    pub fn replicas(&self) -> Vec<BrokerId> {
        self.state.borrow().replicas().to_vec()
    }

    pub fn high_watermark(&self) -> Offset {
        self.state.borrow().high_watermark()
    }

    pub fn is_leader(&self) -> bool {
        self.state.borrow().is_leader()
    }

    pub fn leader_epoch(&self) -> tern_protocol::types::LeaderEpoch {
        self.state.borrow().leader_epoch()
    }

    /// Whether this broker leads the partition in the epoch the client believes current
    /// (`-1`: the client sent none), as Kafka checks Fetch and ListOffsets.
    pub fn check_leader(&self, current_leader_epoch: i32) -> Result<(), ErrorCode> {
        if self.detached.get() {
            return Err(error_code::NOT_LEADER_OR_FOLLOWER);
        }
        let state = self.state.borrow();
        if !state.is_leader() {
            return Err(error_code::NOT_LEADER_OR_FOLLOWER);
        }
        state.check_leader_epoch(current_leader_epoch)
    }

    /// Validates and appends `records` (one produce's record set, or a coordinator's batch)
    /// as this partition's leader, stamped with its leader epoch; returns once the append is
    /// as durable as the topic's flush policy requires and, for acks=all, once the high
    /// watermark covers it (every ISR member has it, durably under the same policy), or
    /// with REQUEST_TIMED_OUT at `deadline`.
    pub async fn append(
        &self,
        records: BytesMut,
        acks: i16,
        now: TimestampMs,
        deadline: Instant,
    ) -> Result<Appended, AppendFailure> {
        if self.detached.get() {
            return Err(AppendFailure::code(error_code::NOT_LEADER_OR_FOLLOWER));
        }
        let leader_epoch = {
            let state = self.state.borrow();
            state.check_produce(acks, now.0, self.replica_lag_max_ms.get())?;
            state.leader_epoch()
        };
        let records = self.as_topic_stores(records, now)?;
        let first = BatchHeader::parse_unchecked(&records).ok();
        // Any batch, not just the first: a marker forged into a produce would end another
        // producer's transaction on the followers that replay it. (Headers only; nothing is
        // allocated on this path.)
        if batches(&records).any(|(_, header)| header.is_control()) {
            return Err(AppendFailure {
                code: error_code::INVALID_RECORD,
                message: Some("client produce requests may not carry control batches".into()),
                record_errors: Vec::new(),
            });
        }
        let transactional = first.filter(|h| h.is_transactional() && h.producer_id().0 >= 0);
        let mut leader_epoch = leader_epoch;
        // Read only when a retry first waits: no clock read on the common path.
        let mut waiting_since: Option<Instant> = None;
        let sequence = loop {
            match self.idempotence(&records)? {
                Sequenced::None => break None,
                Sequenced::Append(sequence) => break Some(sequence),
                Sequenced::Duplicate(appended) => {
                    // A retry of a batch already in the log: answered as the original would be.
                    if acks == -1 {
                        self.replicated(appended.base_offset, leader_epoch, deadline)
                            .await?;
                    }
                    return Ok(appended);
                }
                Sequenced::InFlight(original) => {
                    // A retry of a batch still on its way to the log (the client gave up on
                    // the first answer): it is answered as the original turns out, written
                    // or not, so a failed original is never acknowledged through its retry.
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    self.original_settled(original, leader_epoch, deadline)
                        .await?;
                    if self.detached.get() {
                        return Err(AppendFailure::code(error_code::NOT_LEADER_OR_FOLLOWER));
                    }
                    let waited_ms = since.elapsed().as_millis() as i64;
                    let state = self.state.borrow();
                    state.check_produce(
                        acks,
                        now.0.saturating_add(waited_ms),
                        self.replica_lag_max_ms.get(),
                    )?;
                    leader_epoch = state.leader_epoch();
                }
            }
        };
        // No await since the sequence check: the state and the log agree until here.
        let appending = sequence.map(|sequence| Appending::enter(&self.appending, sequence));
        match self.append_counted(records, leader_epoch, now).await {
            Ok((info, in_flight)) => {
                if let Some(sequence) = sequence {
                    self.state
                        .borrow_mut()
                        .sequence_committed(sequence, info.base_offset);
                    drop(appending);
                    self.sequence_waiters.borrow_mut().wake_all();
                }
                if let Some(header) = &transactional {
                    self.txns
                        .borrow_mut()
                        .observe(header, info.base_offset.0, None);
                }
                in_flight.done();
                self.log_moved();
                if acks == -1 {
                    self.replicated(info.base_offset, leader_epoch, deadline)
                        .await?;
                }
                Ok(Appended {
                    base_offset: info.base_offset,
                    log_append_time: info.log_append_time,
                    log_start_offset: info.log_start_offset,
                })
            }
            Err(failure) => {
                if let Some(sequence) = sequence {
                    self.state.borrow_mut().sequence_failed(sequence);
                    drop(appending);
                    self.sequence_waiters.borrow_mut().wake_all();
                }
                tracing::debug!(partition = %self.tp.dir_name(), error = ?failure.message, "append rejected");
                Err(failure)
            }
        }
    }

    /// Applies the topic's `message.timestamp.before/after.max.ms` bounds (CreateTime topics),
    /// a compacted topic's refusal of keyless records, and `compression.type` (recompressing
    /// batches the producer compressed otherwise) to a produce's record set. The log validates the batches fully afterwards.
    fn as_topic_stores(
        &self,
        records: BytesMut,
        now: TimestampMs,
    ) -> Result<BytesMut, AppendFailure> {
        let policy = self.policy.borrow();
        let bounded = policy.log.timestamp_type == tern_storage::TimestampType::CreateTime
            && (policy.timestamp_before_max_ms < i64::MAX
                || policy.timestamp_after_max_ms < i64::MAX);
        let compacted = policy.compaction.is_some();
        if !bounded && policy.compression.is_none() && !compacted {
            return Ok(records);
        }
        let mut rewritten: Option<BytesMut> = None;
        let mut rest: &[u8] = &records;
        let mut done = 0usize;
        while let Ok(total) = peek_batch_total_bytes(rest) {
            let Some(batch) = rest.get(..total) else {
                break;
            };
            let Ok(header) = BatchHeader::parse_unchecked(batch) else {
                break;
            };
            if bounded && !header.is_control() {
                let earliest = now.0.saturating_sub(policy.timestamp_before_max_ms);
                let latest = now.0.saturating_add(policy.timestamp_after_max_ms);
                if header.base_timestamp().0 < earliest || header.max_timestamp().0 > latest {
                    return Err(AppendFailure {
                        code: error_code::INVALID_TIMESTAMP,
                        message: Some(format!(
                            "timestamps {}..{} outside the topic's bounds {earliest}..{latest}",
                            header.base_timestamp().0,
                            header.max_timestamp().0
                        )),
                        record_errors: Vec::new(),
                    });
                }
            }
            if compacted && !header.is_control() {
                self.refuse_keyless(batch, &header)?;
            }
            if let Some(codec) = policy.compression {
                let recompressed =
                    tern_protocol::records::recompress(batch, codec).map_err(|error| {
                        AppendFailure {
                            code: error_code::CORRUPT_MESSAGE,
                            message: Some(error.to_string()),
                            record_errors: Vec::new(),
                        }
                    })?;
                if let Some(new) = recompressed {
                    let out = rewritten.get_or_insert_with(|| {
                        let mut out = BytesMut::with_capacity(records.len());
                        out.extend_from_slice(&records[..done]);
                        out
                    });
                    out.extend_from_slice(&new);
                } else if let Some(out) = rewritten.as_mut() {
                    out.extend_from_slice(batch);
                }
            }
            done += total;
            rest = &rest[total..];
        }
        Ok(match rewritten {
            Some(mut out) => {
                // Whatever did not parse as a batch goes on as it came: the log refuses it.
                out.extend_from_slice(&records[done..]);
                out
            }
            None => records,
        })
    }

    /// A compacted topic refuses a batch holding a record without a key: INVALID_RECORD naming
    /// the record's index in its batch (KIP-467), as Kafka answers.
    fn refuse_keyless(&self, batch: &[u8], header: &BatchHeader) -> Result<(), AppendFailure> {
        let mut keyless: Vec<(i32, String)> = Vec::new();
        let looked = tern_protocol::records::for_each_record(batch, header, |record| {
            if record.key.is_none() && keyless.len() < crate::limits::RECORD_ERRORS_MAX {
                keyless.push((
                    record.index as i32,
                    "Compacted topic cannot accept message without key.".to_owned(),
                ));
            }
        });
        if let Err(error) = looked {
            return Err(AppendFailure {
                code: error_code::CORRUPT_MESSAGE,
                message: Some(error.to_string()),
                record_errors: Vec::new(),
            });
        }
        if keyless.is_empty() {
            return Ok(());
        }
        Err(AppendFailure {
            code: error_code::INVALID_RECORD,
            message: Some(format!(
                "Compacted topic cannot accept message without key in topic partition {}.",
                self.tp.dir_name()
            )),
            record_errors: keyless,
        })
    }

    /// Waits until the append of `original` (checked, not yet written or failed) settles, or
    /// this partition stops leading in `epoch`, or fails with REQUEST_TIMED_OUT at `deadline`;
    /// the caller then checks its retry again. A retry's answer must not be
    /// DUPLICATE_SEQUENCE_NUMBER while the original may still fail: clients take that code for
    /// "written". Each wake-up (any sequence settling, a new leader epoch, a truncation, a
    /// detach) looks again. The waits count against the acks=all budget.
    async fn original_settled(
        &self,
        original: BatchSeq,
        epoch: tern_protocol::types::LeaderEpoch,
        deadline: Instant,
    ) -> Result<(), AppendFailure> {
        loop {
            let unsettled = self.appending.borrow().contains(&original);
            if !unsettled || self.detached.get() || self.state.borrow().leader_epoch() != epoch {
                return Ok(());
            }
            if !self
                .park_until(&self.sequence_waiters, Offset(0), deadline)
                .await
            {
                return Err(AppendFailure {
                    code: error_code::REQUEST_TIMED_OUT,
                    message: Some(
                        "the original of this retried batch was not written in time".into(),
                    ),
                    record_errors: Vec::new(),
                });
            }
        }
    }

    /// Parks on `waiters` as having seen `seen` until woken or `deadline`, under the acks=all
    /// budget; false, without waiting, once the deadline has passed or the budget is spent.
    async fn park_until(
        &self,
        waiters: &Rc<RefCell<waiters::Waiters>>,
        seen: Offset,
        deadline: Instant,
    ) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let Some(mut parked) = waiters::park(waiters, seen, &self.ack_budget) else {
            return false;
        };
        let woken = Box::pin(parked.wait());
        let timer = Box::pin(glommio::timer::sleep(deadline - now));
        select(woken, timer).await;
        true
    }

    /// Waits until the high watermark passes `base_offset` (batches are whole, so it then
    /// covers the batch) while this broker still leads in `epoch`.
    async fn replicated(
        &self,
        base_offset: Offset,
        epoch: tern_protocol::types::LeaderEpoch,
        deadline: Instant,
    ) -> Result<(), AppendFailure> {
        loop {
            {
                let state = self.state.borrow();
                if self.detached.get() || state.leader_epoch() != epoch {
                    return Err(AppendFailure::code(error_code::NOT_LEADER_OR_FOLLOWER));
                }
                if state.high_watermark() > base_offset {
                    return state.check_after_append().map_err(AppendFailure::from);
                }
            }
            if Instant::now() >= deadline {
                return Err(AppendFailure {
                    code: error_code::REQUEST_TIMED_OUT,
                    message: Some("the in-sync replicas did not all have the batch in time".into()),
                    record_errors: Vec::new(),
                });
            }
            if !self.park_until(&self.waiters, base_offset, deadline).await {
                return Err(AppendFailure::code(error_code::REQUEST_TIMED_OUT));
            }
        }
    }

    /// A follower's append of batches its leader sent (offsets and epochs as the leader
    /// assigned them), then the leader's high watermark as far as this log reaches. Idempotent
    /// producers' sequences are learnt too, so that a retry after a failover to this broker is
    /// recognised. Returns the new log end.
    pub async fn append_replica(
        &self,
        records: Bytes,
        leader_high_watermark: Offset,
        now: TimestampMs,
        fetched_in: tern_protocol::types::LeaderEpoch,
    ) -> Result<Offset, AppendFailure> {
        if self.detached.get() || self.is_leader() {
            return Err(AppendFailure::code(error_code::NOT_LEADER_OR_FOLLOWER));
        }
        // Fetched from a leader of an epoch this replica has moved past: the new leader's
        // reconciliation may already have run, so these records must not land after it.
        if self.leader_epoch() != fetched_in {
            return Err(AppendFailure::code(error_code::FENCED_LEADER_EPOCH));
        }
        if !records.is_empty() {
            let headers = batch_headers(&records);
            let markers = control_markers(&records);
            let in_flight = self.appends.enter();
            if let Err(error) = self.log.append_replicated(records, now).await {
                in_flight.done();
                return Err(AppendFailure::storage(error.kafka_error_code(), &error));
            }
            let mut state = self.state.borrow_mut();
            let mut txns = self.txns.borrow_mut();
            for header in &headers {
                let marker = markers
                    .iter()
                    .find(|(base, _)| *base == header.base_offset().0)
                    .and_then(|(_, marker)| *marker);
                learn_batch(state.producers_mut(), &mut txns, header, marker);
            }
            in_flight.done();
        }
        let advanced = {
            let mut state = self.state.borrow_mut();
            let before = state.high_watermark();
            state.follower_appended(log_offsets(&self.log), leader_high_watermark);
            (state.high_watermark() > before).then_some(state.high_watermark())
        };
        if let Some(high_watermark) = advanced {
            self.waiters.borrow_mut().wake_below(high_watermark);
        }
        Ok(self.log.log_end_offset())
    }

    /// A follower's log start follows its leader's (DeleteRecords and retention on the
    /// leader), as far as its own log reaches, so that records deleted there are not read again
    /// here after a failover.
    pub async fn follow_log_start(&self, leader_start: Offset) {
        if self.is_leader() || leader_start <= self.log.log_start_offset() {
            return;
        }
        let before = leader_start.min(self.log.acknowledged_end_offset());
        if before <= self.log.log_start_offset() {
            return;
        }
        match self.log.delete_records(before).await {
            Ok(_) => self.log_moved(),
            Err(error) => {
                tracing::warn!(partition = %self.tp.dir_name(), %error, "cannot follow the leader's log start")
            }
        }
    }

    /// A follower cuts its log at `offset` (its tail diverged from the leader of `epoch`) and
    /// rebuilds its idempotent producers' state from what is left.
    pub async fn truncate(
        &self,
        offset: Offset,
        epoch: tern_protocol::types::LeaderEpoch,
    ) -> Result<Offset, AppendFailure> {
        if self.detached.get() || self.is_leader() {
            return Err(AppendFailure::code(error_code::NOT_LEADER_OR_FOLLOWER));
        }
        if self.leader_epoch() != epoch {
            return Err(AppendFailure::code(error_code::FENCED_LEADER_EPOCH));
        }
        let in_flight = self.appends.enter();
        self.truncating.set(true);
        let cut = self.log.truncate_to(offset).await;
        // The state hears of the new end before anything else can move it.
        if self.state.borrow_mut().truncated(log_offsets(&self.log)) {
            tracing::warn!(partition = %self.tp.dir_name(), end = offset.0,
                "truncation went below this follower's high watermark");
        }
        self.truncating.set(false);
        let end = cut.map_err(|error| AppendFailure {
            code: error_code::KAFKA_STORAGE_ERROR,
            message: Some(error.to_string()),
            record_errors: Vec::new(),
        })?;
        let restored = restore_state(&self.log, &self.tp).await;
        self.state
            .borrow_mut()
            .replace_producers(restored.producers);
        *self.txns.borrow_mut() = restored.txns;
        self.replay_point_at.set(restored.replay_point_at);
        self.sequence_waiters.borrow_mut().wake_all();
        // Rebuilt from the log: whatever an abandoned append left out is in it again.
        self.appends.abandoned.set(false);
        in_flight.done();
        Ok(end)
    }

    /// OffsetForLeaderEpoch, as the leader answers it: the largest epoch at or below `epoch`
    /// this log has and where it ends, or `None` (Kafka's UNDEFINED).
    pub fn end_offset_for_epoch(
        &self,
        current_leader_epoch: i32,
        epoch: tern_protocol::types::LeaderEpoch,
    ) -> Result<Option<(tern_protocol::types::LeaderEpoch, Offset)>, ErrorCode> {
        self.check_leader(current_leader_epoch)?;
        Ok(epochs::leader_end_offset(
            self.log.end_offset_for_epoch(epoch),
            self.log.latest_epoch(),
            self.leader_epoch(),
            epoch,
            self.log.log_end_offset(),
        ))
    }

    /// This replica's latest leader epoch with data, and its log end (a follower's question
    /// before it fetches from a new leader).
    pub fn latest_epoch(&self) -> Option<tern_protocol::types::LeaderEpoch> {
        self.log.latest_epoch()
    }

    /// This log's own end for `epoch` (a follower reconciling the leader's answer).
    pub fn local_end_offset_for_epoch(
        &self,
        epoch: tern_protocol::types::LeaderEpoch,
    ) -> Option<(tern_protocol::types::LeaderEpoch, Offset)> {
        self.log.end_offset_for_epoch(epoch)
    }

    /// Checks an idempotent producer's batch against the partition's producer state.
    fn idempotence(&self, records: &[u8]) -> Result<Sequenced, AppendFailure> {
        let Ok(header) = BatchHeader::parse_unchecked(records) else {
            // The log validates fully and refuses it with the right code.
            return Ok(Sequenced::None);
        };
        if header.producer_id().0 < 0 {
            return Ok(Sequenced::None);
        }
        // Kafka accepts exactly one batch per partition from an idempotent producer.
        if peek_batch_total_bytes(records).ok() != Some(records.len()) {
            return Err(AppendFailure {
                code: error_code::INVALID_RECORD,
                message: Some("idempotent produce must carry exactly one batch".into()),
                record_errors: Vec::new(),
            });
        }
        let sequence = BatchSeq::of(&header);
        let check = self.state.borrow_mut().check_sequence(sequence);
        match check {
            Check::Append => Ok(Sequenced::Append(sequence)),
            Check::Duplicate {
                base_offset: Some(base_offset),
            } => Ok(Sequenced::Duplicate(Appended {
                base_offset: Offset(base_offset),
                log_append_time: TimestampMs::NONE,
                log_start_offset: self.log.log_start_offset(),
            })),
            Check::Duplicate { base_offset: None } => Ok(Sequenced::InFlight(sequence)),
            Check::Reject(code) => Err(AppendFailure::code(code)),
        }
    }

    /// Tells the partition state where the log now stands (after an append, retention or
    /// DeleteRecords) and wakes the fetches the new high watermark satisfies.
    pub fn log_moved(&self) {
        if self.truncating.get() {
            return;
        }
        let offsets = log_offsets(&self.log);
        let advanced = self.state.borrow_mut().local_log_moved(offsets);
        if let Some(high_watermark) = advanced {
            self.waiters.borrow_mut().wake_below(high_watermark);
        }
        self.replica_waiters
            .borrow_mut()
            .wake_below(offsets.durable_end);
    }

    /// Reads whole batches from `request.offset`: up to the high watermark for a consumer, up
    /// to what the log acknowledges for a follower, whose fetch offset is first taken as its
    /// log end (which may move the high watermark and wake acks=all produces).
    pub async fn read(&self, request: ReadRequest, mode: ReadMode) -> ReadResult {
        if let Err(code) = self.check_leader(request.current_leader_epoch) {
            return ReadResult::error(code);
        }
        // Only a replica of this partition reads past the watermark; anyone else sending a
        // replica id is served as a consumer (authenticating brokers is the security issue's).
        let replica = request
            .replica
            .filter(|replica| self.state.borrow().replicas().contains(&replica.id));
        let upper = match replica {
            Some(replica) => {
                let advanced = self.state.borrow_mut().follower_fetched(
                    replica.id,
                    request.offset,
                    replica.now_ms,
                );
                if let Some(high_watermark) = advanced {
                    self.waiters.borrow_mut().wake_below(high_watermark);
                }
                self.log.acknowledged_end_offset()
            }
            None if request.read_committed => self.last_stable_offset(),
            None => self.high_watermark(),
        };
        let high_watermark = self.high_watermark();
        let last_stable = self.last_stable_offset();
        let log_start = self.log.log_start_offset();
        match self
            .log
            .read_with(request.offset, request.max_bytes, upper, mode)
            .await
        {
            Ok(slice) => ReadResult {
                error_code: error_code::NONE,
                high_watermark: high_watermark.0,
                last_stable_offset: last_stable.0,
                log_start_offset: log_start.0,
                aborted: if request.read_committed && slice.len > 0 {
                    self.txns
                        .borrow()
                        .aborted_between(slice.first_offset.0, slice.next_offset.0)
                        .iter()
                        .map(|a| (a.producer_id, a.first_offset))
                        .collect()
                } else {
                    Vec::new()
                },
                len: slice.len,
                chunks: slice.chunks,
            },
            Err(error) => ReadResult {
                error_code: error.kafka_error_code(),
                high_watermark: high_watermark.0,
                last_stable_offset: last_stable.0,
                log_start_offset: log_start.0,
                ..ReadResult::default()
            },
        }
    }

    /// Kafka's last stable offset: the first offset of the oldest transaction still open
    /// here, or the high watermark when none is (read_committed readers stop there).
    pub fn last_stable_offset(&self) -> Offset {
        let high_watermark = self.high_watermark();
        match self.txns.borrow().first_unstable() {
            Some(first) => Offset(first).min(high_watermark),
            None => high_watermark,
        }
    }

    /// Appends a transaction marker (a control batch) for `producer_id` as the coordinator
    /// asks (WriteTxnMarkers), fencing older epochs of that producer, and waits for the
    /// in-sync replicas like an acks=all produce.
    pub async fn write_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        now: TimestampMs,
        deadline: Instant,
    ) -> Result<(), AppendFailure> {
        if self.detached.get() {
            return Err(AppendFailure::code(error_code::NOT_LEADER_OR_FOLLOWER));
        }
        let leader_epoch = {
            let state = self.state.borrow();
            state.check_produce(-1, now.0, self.replica_lag_max_ms.get())?;
            if state
                .producer_epoch(producer_id)
                .is_some_and(|known| producer_epoch < known)
            {
                return Err(AppendFailure {
                    code: error_code::INVALID_PRODUCER_EPOCH,
                    message: Some(format!(
                        "marker for producer {producer_id} at epoch {producer_epoch} is older than its current epoch"
                    )),
                    record_errors: Vec::new(),
                });
            }
            state.leader_epoch()
        };
        let batch = tern_protocol::records::build_control_marker(
            producer_id,
            producer_epoch,
            commit,
            coordinator_epoch,
            now,
        );
        let header = BatchHeader::parse_unchecked(&batch)
            .map_err(|_| AppendFailure::code(error_code::UNKNOWN_SERVER_ERROR))?;
        let (info, in_flight) = self.append_counted(batch, leader_epoch, now).await?;
        self.state
            .borrow_mut()
            .fence_producer(producer_id, producer_epoch);
        self.txns
            .borrow_mut()
            .observe(&header, info.base_offset.0, Some(commit));
        in_flight.done();
        self.log_moved();
        self.replicated(info.base_offset, leader_epoch, deadline)
            .await?;
        Ok(())
    }

    /// Appends a transactional batch the group coordinator wrote for a producer
    /// (TxnOffsetCommit): no sequence numbers, but a fenced epoch is refused.
    pub async fn append_for_transaction(
        &self,
        records: BytesMut,
        now: TimestampMs,
        deadline: Instant,
    ) -> Result<Appended, AppendFailure> {
        if self.detached.get() {
            return Err(AppendFailure::code(error_code::NOT_LEADER_OR_FOLLOWER));
        }
        let header = BatchHeader::parse_unchecked(&records)
            .map_err(|_| AppendFailure::code(error_code::CORRUPT_MESSAGE))?;
        let leader_epoch = {
            let state = self.state.borrow();
            state.check_produce(-1, now.0, self.replica_lag_max_ms.get())?;
            if state
                .producer_epoch(header.producer_id().0)
                .is_some_and(|known| header.producer_epoch() < known)
            {
                return Err(AppendFailure::code(error_code::PRODUCER_FENCED));
            }
            state.leader_epoch()
        };
        let (info, in_flight) = self.append_counted(records, leader_epoch, now).await?;
        self.txns
            .borrow_mut()
            .observe(&header, info.base_offset.0, None);
        in_flight.done();
        self.log_moved();
        self.replicated(info.base_offset, leader_epoch, deadline)
            .await?;
        Ok(Appended {
            base_offset: info.base_offset,
            log_append_time: info.log_append_time,
            log_start_offset: info.log_start_offset,
        })
    }

    /// Appends as the leader, counted in flight until the caller has told the producers' and
    /// transactions' state what the log did (`InFlight::done`); a refusal or failure changed
    /// nothing, so it is done at once.
    async fn append_counted(
        &self,
        records: BytesMut,
        leader_epoch: tern_protocol::types::LeaderEpoch,
        now: TimestampMs,
    ) -> Result<(tern_storage::AppendInfo, InFlight<'_>), AppendFailure> {
        let in_flight = self.appends.enter();
        match self.log.append(records, leader_epoch, now).await {
            Ok(info) => Ok((info, in_flight)),
            Err(error) => {
                in_flight.done();
                Err(AppendFailure::storage(error.kafka_error_code(), &error))
            }
        }
    }

    /// Whether `producer_id` has a transaction open on this partition.
    pub fn has_open_transaction(&self, producer_id: i64) -> bool {
        self.txns.borrow().is_open(producer_id)
    }

    /// Persists the transaction snapshot beside the log if it changed (index checkpoints
    /// and close).
    pub async fn checkpoint_txns(&self) {
        let snapshot = {
            let mut txns = self.txns.borrow_mut();
            txns.trim(self.log.log_start_offset().0);
            txns.snapshot_if_dirty()
        };
        if let Some(bytes) = snapshot {
            if let Err(error) = self.log.write_sidecar(txns::SNAPSHOT_FILE, &bytes).await {
                tracing::warn!(partition = %self.tp.dir_name(), %error, "cannot persist the transaction snapshot");
            }
        }
    }

    /// Writes a replay point (`replay_point`) if the log moved since the last one and no
    /// append is in flight (index checkpoints and close).
    pub async fn checkpoint_replay_point(&self) {
        let Some(mark) = self.appends.settled() else {
            return;
        };
        let end = self.log.log_end_offset();
        if end == self.replay_point_at.get() {
            return;
        }
        let last = if end > self.log.log_start_offset() {
            let Some(last) = batch_ending_at(&self.log, end).await else {
                return;
            };
            Some(last)
        } else {
            None
        };
        if !self.appends.unchanged_since(mark) || self.log.log_end_offset() != end {
            return;
        }
        let bytes = {
            let mut txns = self.txns.borrow().clone();
            txns.observed_through(end.0);
            replay_point::encode(end, last.as_ref(), self.state.borrow().producers(), &txns)
        };
        match self
            .log
            .write_sidecar_in_place(replay_point::FILE, &bytes)
            .await
        {
            // A truncation meanwhile leaves it to the next checkpoint.
            Ok(()) if self.appends.unchanged_since(mark) => self.replay_point_at.set(end),
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(partition = %self.tp.dir_name(), %error, "cannot write the replay point")
            }
        }
    }

    /// Parks a fetch that read up to `result`: a consumer until the high watermark passes
    /// what it saw, a follower until the acknowledged end passes its offset; `None` when the
    /// shard's cap is reached.
    pub fn park(
        &self,
        request: &ReadRequest,
        result: &ReadResult,
        budget: &Rc<ParkBudget>,
    ) -> Option<Parked> {
        if self.detached.get() {
            return Some(Parked::ready());
        }
        let replica = request
            .replica
            .is_some_and(|replica| self.state.borrow().replicas().contains(&replica.id));
        if replica {
            if self.log.acknowledged_end_offset() > request.offset {
                return Some(Parked::ready());
            }
            return waiters::park(&self.replica_waiters, request.offset, budget);
        }
        let seen = request.offset.max(Offset(result.high_watermark));
        if self.high_watermark() > seen {
            return Some(Parked::ready());
        }
        waiters::park(&self.waiters, seen, budget)
    }

    /// The shard dropped this partition: fail its reads and release its parked fetches.
    pub fn detach(&self) {
        self.detached.set(true);
        self.waiters.borrow_mut().wake_all();
        self.replica_waiters.borrow_mut().wake_all();
        self.sequence_waiters.borrow_mut().wake_all();
    }

    /// Fetches parked on this partition now.
    pub fn parked(&self) -> usize {
        self.waiters.borrow().len()
    }
}

enum Sequenced {
    None,
    Append(BatchSeq),
    Duplicate(Appended),
    /// A retry of a batch checked but not yet written or failed.
    InFlight(BatchSeq),
}

/// The headers of the whole batches in `records`, unchecked (the log validates them).
/// Each whole batch in `records` with its header, until one does not parse.
fn batches(records: &[u8]) -> impl Iterator<Item = (&[u8], BatchHeader)> {
    let mut rest = records;
    std::iter::from_fn(move || {
        let total = peek_batch_total_bytes(rest).ok()?;
        let batch = rest.get(..total)?;
        let header = BatchHeader::parse_unchecked(batch).ok()?;
        rest = &rest[total..];
        Some((batch, header))
    })
}

/// The base offset and marker type (Some(commit)) of each control batch in `records`.
fn control_markers(records: &[u8]) -> Vec<(i64, Option<bool>)> {
    batches(records)
        .filter(|(_, header)| header.is_control())
        .map(|(batch, header)| {
            (
                header.base_offset().0,
                tern_protocol::records::control_marker(batch, &header),
            )
        })
        .collect()
}

/// A partition's transactions as its snapshot and the log past it describe them: the
/// snapshot (`txns::SNAPSHOT_FILE`) when it is intact and the log still reaches it, then
/// every batch from there to the log end; the whole log when there is no usable snapshot.
pub async fn restore_txns(log: &Log, tp: &TopicPartition) -> txns::PartitionTxns {
    let start = log.log_start_offset().0;
    let end = log.log_end_offset();
    let mut txns = match log.read_sidecar(txns::SNAPSHOT_FILE).await {
        Ok(Some(bytes)) => match txns::PartitionTxns::decode(&bytes) {
            Some(snapshot) if snapshot.next_offset() <= end.0 => snapshot,
            Some(_) => {
                tracing::info!(partition = %tp.dir_name(), "transaction snapshot is ahead of the log; replaying the log");
                txns::PartitionTxns::default()
            }
            None => {
                tracing::warn!(partition = %tp.dir_name(), "transaction snapshot is damaged; replaying the log");
                txns::PartitionTxns::default()
            }
        },
        Ok(None) => txns::PartitionTxns::default(),
        Err(error) => {
            tracing::warn!(partition = %tp.dir_name(), %error, "cannot read the transaction snapshot; replaying the log");
            txns::PartitionTxns::default()
        }
    };
    txns.trim(start);
    let from = Offset(txns.next_offset().max(start));
    let replayed = replay_batches(log, from, end, |batch, header| {
        let marker = tern_protocol::records::control_marker(batch, header);
        txns.observe(header, header.base_offset().0, marker);
    })
    .await;
    if let Err(error) = replayed {
        tracing::error!(partition = %tp.dir_name(), %error, "cannot replay transactions from the log");
    }
    txns
}

/// Feeds `visit` every batch from the one holding `from` (those ending at or below it left
/// out) up to `end`, in log order.
async fn replay_batches(
    log: &Log,
    from: Offset,
    end: Offset,
    mut visit: impl FnMut(&[u8], &BatchHeader),
) -> Result<(), tern_storage::ReadError> {
    let mut next = from;
    while next < end {
        let slice = log
            .read(next, crate::limits::TXN_REPLAY_READ_BYTES, end)
            .await?;
        if slice.next_offset <= next {
            break;
        }
        for chunk in &slice.chunks {
            for (batch, header) in batches(chunk).filter(|(_, h)| h.next_offset() > next) {
                visit(batch, &header);
            }
        }
        next = slice.next_offset;
    }
    Ok(())
}

/// What a batch already in the log (a follower's append, a replay) tells the producers' and
/// transactions' state: a marker (`marker`: Some(commit)) fences its producer's older epochs
/// and ends its transaction, a data batch is its producer's latest.
fn learn_batch(
    producers: &mut ProducerStates,
    txns: &mut txns::PartitionTxns,
    header: &BatchHeader,
    marker: Option<bool>,
) {
    let producer_id = header.producer_id().0;
    if producer_id >= 0 && header.is_control() {
        producers.fence(producer_id, header.producer_epoch());
    } else if producer_id >= 0 {
        producers.restore(BatchSeq::of(header), header.base_offset().0);
    }
    txns.observe(header, header.base_offset().0, marker);
}

/// The header of the batch whose next offset is `end`, if the log holds one.
async fn batch_ending_at(log: &Log, end: Offset) -> Option<BatchHeader> {
    let slice = log.read(Offset(end.0 - 1), 1, end).await.ok()?;
    let header = BatchHeader::parse_unchecked(slice.chunks.first()?).ok()?;
    (header.next_offset() == end).then_some(header)
}

/// A partition's producers and transactions as the log leaves them: its replay point and the
/// batches past it when the point is usable (see `replay_point`), else what
/// `restore_producers` and `restore_txns` rebuild.
pub async fn restore_state(log: &Log, tp: &TopicPartition) -> Restored {
    if let Some(point) = usable_replay_point(log, tp).await {
        let replay_point::ReplayPoint {
            next_offset,
            mut producers,
            mut txns,
            ..
        } = point;
        txns.trim(log.log_start_offset().0);
        let from = next_offset.max(log.log_start_offset());
        let replayed = replay_batches(log, from, log.log_end_offset(), |batch, header| {
            let marker = tern_protocol::records::control_marker(batch, header);
            learn_batch(&mut producers, &mut txns, header, marker);
        })
        .await;
        match replayed {
            Ok(()) => {
                return Restored {
                    producers,
                    txns,
                    replay_point_at: next_offset,
                }
            }
            Err(error) => {
                tracing::warn!(partition = %tp.dir_name(), %error, "cannot replay the log past the replay point; rebuilding from the log")
            }
        }
    }
    Restored {
        producers: restore_producers(log, tp).await,
        txns: restore_txns(log, tp).await,
        replay_point_at: Offset(-1),
    }
}

/// The replay point beside `log` if it is intact and leads to this log: within it, and after
/// the very batch it was taken after.
async fn usable_replay_point(log: &Log, tp: &TopicPartition) -> Option<replay_point::ReplayPoint> {
    let bytes = match log.read_sidecar(replay_point::FILE).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return None,
        Err(error) => {
            tracing::warn!(partition = %tp.dir_name(), %error, "cannot read the replay point; rebuilding from the log");
            return None;
        }
    };
    let Some(point) = replay_point::decode(&bytes) else {
        tracing::warn!(partition = %tp.dir_name(), "damaged replay point; rebuilding from the log");
        return None;
    };
    let at = point.next_offset;
    let start = log.log_start_offset();
    let leads_here = if at > log.log_end_offset() || at < start {
        // Past the log, or its batch is gone below the log start and cannot be checked.
        false
    } else if at > start {
        batch_ending_at(log, at)
            .await
            .is_some_and(|last| point.last_batch_crc == Some(last.crc()))
    } else {
        // Taken on a log that was empty there.
        point.last_batch_crc.is_none()
    };
    if !leads_here {
        tracing::info!(partition = %tp.dir_name(), at = at.0,
            "replay point does not match the log (truncated or rewritten since); rebuilding from the log");
        return None;
    }
    Some(point)
}

fn batch_headers(records: &[u8]) -> Vec<BatchHeader> {
    batches(records).map(|(_, header)| header).collect()
}

fn log_offsets(log: &Log) -> LogOffsets {
    let log_start = log.log_start_offset();
    let durable_end = log.acknowledged_end_offset();
    LogOffsets {
        log_start: log_start.min(durable_end),
        durable_end,
        log_end: log.log_end_offset(),
    }
}

/// The owner side of a Fetch: reads every requested partition; if together they hold fewer
/// than `min_bytes` and none failed, parks on all of them until one's high watermark moves
/// past what was seen, the deadline passes, or `cancel` resolves (the caller answered or went
/// away), then reads again. Runs entirely on the owner shard: one hop per owner per Fetch.
pub async fn read_or_wait(
    parts: &[(Option<Rc<Partition>>, ReadRequest)],
    mode: ReadMode,
    min_bytes: usize,
    deadline: Instant,
    mut cancel: futures::channel::oneshot::Receiver<()>,
    budget: &Rc<ParkBudget>,
) -> (Vec<ReadResult>, WaitEnd) {
    loop {
        let mut results = Vec::with_capacity(parts.len());
        for (partition, request) in parts {
            results.push(match partition {
                Some(partition) => partition.read(*request, mode).await,
                None => ReadResult::error(error_code::NOT_LEADER_OR_FOLLOWER),
            });
        }
        let total: usize = results.iter().map(|r| r.len).sum();
        if total >= min_bytes.max(1) || results.iter().any(|r| r.error_code != error_code::NONE) {
            return (results, WaitEnd::Answered);
        }
        let now = Instant::now();
        if now >= deadline {
            return (results, WaitEnd::Deadline);
        }
        let mut parked = Vec::with_capacity(parts.len());
        for ((partition, request), result) in parts.iter().zip(&results) {
            let Some(partition) = partition else { continue };
            match partition.park(request, result, budget) {
                Some(park) => parked.push(park),
                None => return (results, WaitEnd::Refused),
            }
        }
        if parked.is_empty() {
            return (results, WaitEnd::Answered);
        }
        let end = {
            let woken = Box::pin(select_all(parked.iter_mut().map(|p| Box::pin(p.wait()))));
            let timer = Box::pin(glommio::timer::sleep(deadline - now));
            match select(select(woken, timer), &mut cancel).await {
                Either::Left((Either::Left(_), _)) => None,
                Either::Left((Either::Right(_), _)) => Some(WaitEnd::Deadline),
                Either::Right(_) => Some(WaitEnd::Cancelled),
            }
        };
        drop(parked);
        if let Some(end) = end {
            return (results, end);
        }
    }
}

/// Idempotent producers' state as the end of the log left it (see `ProducerStates::restore`):
/// replays the batches in the last `PRODUCER_STATE_SCAN_BYTES` of the log. A producer whose
/// last batch is older than that gets UNKNOWN_PRODUCER_ID and resets, as Kafka's clients do.
pub async fn restore_producers(log: &Log, tp: &TopicPartition) -> ProducerStates {
    let mut states = ProducerStates::default();
    match log
        .recent_batch_headers(crate::limits::PRODUCER_STATE_SCAN_BYTES)
        .await
    {
        Ok(headers) => {
            for header in headers
                .iter()
                .filter(|h| h.producer_id().0 >= 0 && !h.is_control())
            {
                states.restore(BatchSeq::of(header), header.base_offset().0);
            }
        }
        Err(error) => {
            tracing::warn!(partition = %tp.dir_name(), %error,
                "cannot rebuild idempotent producers' state from the log; they will be asked to reset")
        }
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    use tern_protocol::batch::BatchBuilder;
    use tern_protocol::types::ProducerId;

    use crate::topic_config::{policy, TopicDefaults};

    fn run<Fut: std::future::Future<Output = ()> + 'static>(
        test: impl FnOnce() -> Fut + Send + 'static,
    ) {
        glommio::LocalExecutorBuilder::default()
            .spawn(test)
            .expect("executor")
            .join()
            .expect("join");
    }

    /// A partition led by this broker (1) alone, over a fresh log in `dir`.
    async fn sole_leader(dir: &std::path::Path) -> Partition {
        let tp = TopicPartition::new("t", 0);
        let policy = policy(&TopicDefaults::default(), &BTreeMap::new());
        let log = Log::open(dir.join(tp.dir_name()), policy.log.clone())
            .await
            .expect("open");
        let restored = restore_state(&log, &tp).await;
        let meta = PartitionMeta {
            index: 0,
            replicas: vec![1],
            isr: vec![1],
            leader: 1,
            leader_epoch: 1,
            partition_epoch: 1,
        };
        Partition::new(tp, log, policy, 1, &meta, restored)
    }

    fn idempotent_batch(producer_id: i64) -> BytesMut {
        let mut builder = BatchBuilder::new(TimestampMs(1_000)).value(0, &b"once"[..]);
        builder.producer_id = ProducerId(producer_id);
        builder.producer_epoch = 0;
        builder.base_sequence = 0;
        builder.build()
    }

    /// A retry that arrives while its original is still on its way to the disk is answered
    /// as the original turns out: with its offset once written, with its error if it fails.
    /// Answering DUPLICATE_SEQUENCE_NUMBER at once (which clients count as written) would
    /// acknowledge a record the log never took.
    #[test]
    fn a_retry_of_a_batch_still_being_written_is_answered_as_its_original_turns_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        run(move || async move {
            let partition = sole_leader(&path).await;
            // Far off, so a retry that only woke at its deadline shows in the elapsed time.
            let deadline = || Instant::now() + Duration::from_secs(30);
            let started = Instant::now();
            let now = TimestampMs(1_000);

            // The original is checked and waits for the disk when the retry comes.
            let mut original = Box::pin(partition.append(idempotent_batch(7), -1, now, deadline()));
            assert!(futures::poll!(&mut original).is_pending());
            let retry = partition.append(idempotent_batch(7), -1, now, deadline());
            let (original, retry) = futures::join!(original, retry);
            assert_eq!(original.expect("written").base_offset, Offset(0));
            assert_eq!(retry.expect("the original's answer").base_offset, Offset(0));
            assert_eq!(partition.log.log_end_offset(), Offset(1), "written once");

            // Now the disk fails under the original, queued behind a write already on the
            // device (which the failure voids too, since nothing was synced yet): its retry
            // must fail as well.
            let plain = BatchBuilder::new(TimestampMs(1_000))
                .value(0, &b"ahead"[..])
                .build();
            let mut ahead = Box::pin(partition.append(plain, -1, now, deadline()));
            assert!(futures::poll!(&mut ahead).is_pending());
            let mut original = Box::pin(partition.append(idempotent_batch(8), -1, now, deadline()));
            assert!(futures::poll!(&mut original).is_pending());
            partition.log.inject_write_failures(1);
            let retry = partition.append(idempotent_batch(8), -1, now, deadline());
            let (_, original, retry) = futures::join!(ahead, original, retry);
            assert_eq!(
                original.expect_err("the disk failed").code,
                error_code::KAFKA_STORAGE_ERROR
            );
            assert_eq!(
                retry.expect_err("not written").code,
                error_code::KAFKA_STORAGE_ERROR
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the retries were answered when their originals settled, not at their deadlines"
            );
        });
    }

    #[test]
    fn replay_points_wait_for_appends_and_stop_after_an_abandoned_one() {
        let appends = Appends::default();
        let mark = appends.settled().unwrap();
        let first = appends.enter();
        assert_eq!(appends.settled(), None, "an append is in flight");
        first.done();
        assert!(
            !appends.unchanged_since(mark),
            "an append ran since the mark"
        );
        let mark = appends.settled().unwrap();
        assert!(appends.unchanged_since(mark));
        // Its caller went away mid-append (the future was dropped): the log may hold what
        // the state lacks.
        drop(appends.enter());
        assert_eq!(
            appends.settled(),
            None,
            "no replay point after an abandoned append"
        );
        appends.abandoned.set(false); // what a rebuild from the log does
        assert!(appends.settled().is_some());
    }
}

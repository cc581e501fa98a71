//! `PartitionState`: what is decided per partition replica, with no I/O: whether this broker
//! leads it and in which leader epoch, the replica set and ISR, the offsets (log start, local
//! durable end, log end, high watermark), `min.insync.replicas`, and idempotent producers'
//! sequences.
//!
//! The owner shard feeds it facts (the metadata image's view of the partition, what the local
//! log made durable, later what followers have fetched) and asks it for decisions (may this
//! produce be appended, which epoch stamps it, how far may consumers read). It never reads a
//! clock or touches a file, so a simulator can drive it step by step.
//!
//! Invariant, asserted after every change:
//! `log_start <= high_watermark <= durable_end <= log_end`, and the high watermark never goes
//! back, except on a follower whose log a new leader made it truncate. On the leader it is the
//! smallest end among the ISR members' logs, where the leader's own end is its durable end and
//! a follower's is the offset it fetches from (it fetches only once its appends are
//! acknowledged, so that too is durable under the flush policy): with one replica, what the
//! local log made durable. While the leader has asked the controller to add members to the
//! ISR, they count as members already (KIP-497's "maximal ISR"): the watermark must never
//! pass a replica the controller may make leader. A follower's watermark is the leader's, as
//! far as its own log reaches.
//!
//! The leader also decides ISR changes to propose (`isr_duty`): a member whose fetches have
//! not caught up with the leader's end for `replica.lag.time.max.ms` leaves, a replica whose
//! fetches in this leader epoch reached the high watermark joins (Kafka's rules).

use std::collections::BTreeMap;

use tern_protocol::error_code::{self, ErrorCode};
use tern_protocol::types::{LeaderEpoch, Offset};
use tern_replication::metadata::{BrokerId, PartitionMeta};

use crate::producer_state::{BatchSeq, Check, ProducerStates};

/// Why a produce may not be appended here; each is one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProduceRefusal {
    /// This broker does not lead the partition (or no longer does).
    NotLeader,
    /// acks=all, but fewer replicas are in sync than `min.insync.replicas`.
    NotEnoughReplicas { in_sync: usize, min_insync: usize },
    /// acks=all: the batch is appended and replicated, but the ISR shrank below
    /// `min.insync.replicas` meanwhile.
    NotEnoughReplicasAfterAppend { in_sync: usize, min_insync: usize },
}

impl ProduceRefusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProduceRefusal::NotLeader => error_code::NOT_LEADER_OR_FOLLOWER,
            ProduceRefusal::NotEnoughReplicas { .. } => error_code::NOT_ENOUGH_REPLICAS,
            ProduceRefusal::NotEnoughReplicasAfterAppend { .. } => {
                error_code::NOT_ENOUGH_REPLICAS_AFTER_APPEND
            }
        }
    }

    pub fn message(&self) -> String {
        match self {
            ProduceRefusal::NotLeader => "this broker does not lead the partition".into(),
            ProduceRefusal::NotEnoughReplicas {
                in_sync,
                min_insync,
            } => format!("min.insync.replicas={min_insync} but {in_sync} replica(s) in sync"),
            ProduceRefusal::NotEnoughReplicasAfterAppend {
                in_sync,
                min_insync,
            } => format!(
                "appended, but min.insync.replicas={min_insync} and the ISR shrank to {in_sync}"
            ),
        }
    }
}

#[derive(Debug)]
pub struct PartitionState {
    /// This broker.
    node: BrokerId,
    leader: BrokerId,
    leader_epoch: LeaderEpoch,
    replicas: Vec<BrokerId>,
    isr: Vec<BrokerId>,
    min_insync: usize,
    log_start: Offset,
    /// What the local log has made durable (or acknowledgeable, under an interval flush
    /// policy); the leader's own end in the high-watermark computation.
    durable_end: Offset,
    log_end: Offset,
    /// What followers reported by fetching in this leader epoch (leader only).
    followers: BTreeMap<BrokerId, Follower>,
    /// The image's partition epoch for this partition (see `PartitionMeta`).
    partition_epoch: i32,
    /// The ISR this leader asked the controller for, until an image answers.
    proposed_isr: Option<Proposal>,
    /// Where this leader's epoch starts: its log end when it became leader. A replica joins
    /// the ISR only once it has everything below (Kafka's rule), since this leader's own
    /// high watermark may lag the one its predecessor acknowledged up to.
    epoch_start: Offset,
    high_watermark: Offset,
    producers: ProducerStates,
}

/// An ISR change this leader proposed. It stays until an image shows the partition changed
/// (the change was taken, or another made it stale) or the controller refuses it for another
/// reason: giving up on a proposal that may still commit would let the watermark pass a
/// member the controller is adding.
#[derive(Debug, Clone)]
struct Proposal {
    isr: Vec<BrokerId>,
    /// The partition epoch it starts from.
    base: i32,
    /// Whether it is with the controller now (else it is sent again at the next check).
    in_flight: bool,
}

/// What a leader asks the controller for: AlterPartition's ISR and the partition epoch it
/// starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrProposal {
    pub isr: Vec<BrokerId>,
    pub partition_epoch: i32,
}

/// A follower as the leader knows it from its fetches.
#[derive(Debug, Clone, Copy)]
struct Follower {
    /// The offset it last fetched from: everything below is in its log.
    end: Offset,
    /// The last time its fetches had everything the leader had (Kafka's
    /// `lastCaughtUpTimeMs`): a fetch at the leader's end, or at the end the leader had at the
    /// follower's previous fetch, which proves it was caught up then.
    caught_up_ms: i64,
    /// The leader's end and the time at the follower's previous fetch.
    previous_fetch: (Offset, i64),
    /// Whether it has fetched in this leader epoch (a fetch is how a joiner proves it).
    fetched: bool,
}

/// The local log's offsets, as the owner reads them after an append or at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start: Offset,
    pub durable_end: Offset,
    pub log_end: Offset,
}

impl PartitionState {
    /// The state of a replica this broker (`node`) holds, as `meta` describes it, over a log
    /// whose offsets are `log`. The high watermark starts at what is durable locally when this
    /// broker is the only in-sync replica, and at the log start otherwise (followers' ends are
    /// learnt as they fetch).
    pub fn new(
        node: BrokerId,
        meta: &PartitionMeta,
        min_insync: usize,
        log: LogOffsets,
        producers: ProducerStates,
    ) -> PartitionState {
        let mut state = PartitionState {
            node,
            leader: meta.leader,
            leader_epoch: LeaderEpoch(meta.leader_epoch),
            replicas: meta.replicas.clone(),
            isr: meta.isr.clone(),
            min_insync: min_insync.max(1),
            log_start: log.log_start,
            durable_end: log.durable_end,
            log_end: log.log_end,
            followers: BTreeMap::new(),
            partition_epoch: meta.partition_epoch,
            proposed_isr: None,
            epoch_start: log.log_end,
            high_watermark: log.log_start,
            producers,
        };
        state.advance_high_watermark();
        state.check();
        state
    }

    pub fn is_leader(&self) -> bool {
        self.leader == self.node
    }

    pub fn leader(&self) -> BrokerId {
        self.leader
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch
    }

    pub fn isr(&self) -> &[BrokerId] {
        &self.isr
    }

    pub fn replicas(&self) -> &[BrokerId] {
        &self.replicas
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn log_start(&self) -> Offset {
        self.log_start
    }

    pub fn log_end(&self) -> Offset {
        self.log_end
    }

    pub fn set_min_insync(&mut self, min_insync: usize) {
        self.min_insync = min_insync.max(1);
    }

    /// Takes in the metadata image's view of this partition. A new leader epoch resets what
    /// followers reported (they report again to the new leader); the high watermark is kept,
    /// since it never goes back. Any ISR change this leader proposed is answered by the image
    /// (taken, or made stale by another change) once the partition epoch moves, so it is
    /// forgotten then.
    pub fn update(&mut self, meta: &PartitionMeta) {
        let epoch = LeaderEpoch(meta.leader_epoch);
        assert!(
            epoch >= self.leader_epoch,
            "leader epoch went back from {:?} to {epoch:?}",
            self.leader_epoch
        );
        if epoch > self.leader_epoch {
            self.followers.clear();
            self.epoch_start = self.log_end;
            self.proposed_isr = None;
        }
        if self
            .proposed_isr
            .as_ref()
            .is_some_and(|p| p.base != meta.partition_epoch)
        {
            self.proposed_isr = None;
        }
        self.partition_epoch = meta.partition_epoch;
        self.leader = meta.leader;
        self.leader_epoch = epoch;
        self.replicas = meta.replicas.clone();
        self.isr = meta.isr.clone();
        self.followers
            .retain(|broker, _| meta.replicas.contains(broker));
        self.advance_high_watermark();
        self.check();
    }

    /// The leader's view for metrics: (ISR smaller than the replicas, ISR below
    /// `min.insync.replicas`, records the followers are behind in total).
    pub fn replication_health(&self) -> (bool, bool, u64) {
        let lag = self
            .replicas
            .iter()
            .filter(|replica| **replica != self.node)
            .map(|replica| {
                let end = self
                    .followers
                    .get(replica)
                    .map_or(self.log_start, |f| f.end);
                (self.durable_end.0 - end.0).max(0) as u64
            })
            .sum();
        (
            self.isr.len() < self.replicas.len(),
            self.isr.len() < self.min_insync,
            lag,
        )
    }

    /// The ISR proposal this leader is waiting on, if any.
    pub fn proposed_isr(&self) -> Option<&[BrokerId]> {
        self.proposed_isr.as_ref().map(|p| p.isr.as_slice())
    }

    /// The outstanding ISR proposal as it was sent, if any.
    pub fn isr_proposal(&self) -> Option<IsrProposal> {
        self.proposed_isr.as_ref().map(|p| IsrProposal {
            isr: p.isr.clone(),
            partition_epoch: p.base,
        })
    }

    /// The controller did not answer the proposal (unreachable, timed out): it may still be
    /// taken, so it stays, and goes again at the next check.
    pub fn isr_proposal_unanswered(&mut self) {
        if let Some(proposal) = self.proposed_isr.as_mut() {
            proposal.in_flight = false;
        }
    }

    /// The controller refused the proposal for a reason other than staleness (a member is
    /// fenced, say): it can never be taken, so it goes, and the next check decides afresh.
    pub fn isr_proposal_refused(&mut self) {
        self.proposed_isr = None;
        let before = self.high_watermark;
        self.advance_high_watermark();
        debug_assert!(self.high_watermark >= before);
    }

    /// The leader's periodic ISR check at `now_ms`: the ISR to propose to the controller, if
    /// it should change and no proposal is outstanding. Members whose fetches have not caught
    /// up for `lag_max_ms` leave (a member that has not fetched in this epoch counts from its
    /// first check); replicas that fetched in this epoch from at least the high watermark
    /// join once they also hold everything from before this leader's epoch. The leader stays.
    /// The proposal counts toward the watermark until answered.
    pub fn isr_duty(&mut self, now_ms: i64, lag_max_ms: i64) -> Option<IsrProposal> {
        if !self.is_leader() {
            return None;
        }
        if let Some(proposal) = self.proposed_isr.as_mut() {
            if proposal.in_flight {
                return None;
            }
            proposal.in_flight = true;
            return Some(IsrProposal {
                isr: proposal.isr.clone(),
                partition_epoch: proposal.base,
            });
        }
        for replica in &self.replicas {
            if *replica != self.node {
                self.followers.entry(*replica).or_insert(Follower {
                    end: self.log_start,
                    caught_up_ms: now_ms,
                    previous_fetch: (self.durable_end, now_ms),
                    fetched: false,
                });
            }
        }
        let proposal: Vec<BrokerId> = self
            .replicas
            .iter()
            .copied()
            .filter(|replica| {
                if *replica == self.node {
                    return true;
                }
                let Some(follower) = self.followers.get(replica) else {
                    return false;
                };
                if self.isr.contains(replica) {
                    now_ms - follower.caught_up_ms <= lag_max_ms
                } else {
                    follower.fetched
                        && follower.end >= self.high_watermark
                        && follower.end >= self.epoch_start
                }
            })
            .collect();
        let same = proposal.len() == self.isr.len()
            && proposal.iter().all(|member| self.isr.contains(member));
        if same {
            return None;
        }
        self.proposed_isr = Some(Proposal {
            isr: proposal.clone(),
            base: self.partition_epoch,
            in_flight: true,
        });
        Some(IsrProposal {
            isr: proposal,
            partition_epoch: self.partition_epoch,
        })
    }

    /// A follower appended what its leader sent: its log moved to `log`, and the leader's
    /// high watermark was `leader_high_watermark`.
    pub fn follower_appended(&mut self, log: LogOffsets, leader_high_watermark: Offset) {
        self.local_log_moved(log);
        if !self.is_leader() {
            let reach = leader_high_watermark.min(self.durable_end);
            self.high_watermark = self.high_watermark.max(reach).max(self.log_start);
        }
        self.check();
    }

    /// A follower truncated its log to `log` (a new leader's log diverged from it). The high
    /// watermark follows if the cut went below it. Returns whether it did (the leader epoch
    /// protocol keeps that from happening to records the old ISR held).
    pub fn truncated(&mut self, log: LogOffsets) -> bool {
        self.log_start = log.log_start;
        self.durable_end = log.durable_end;
        self.log_end = log.log_end;
        // Promoted while the cut was under way: its epoch starts where its log now ends.
        self.epoch_start = self.epoch_start.min(self.log_end);
        let cut_below = self.high_watermark > self.durable_end;
        self.high_watermark = self
            .high_watermark
            .min(self.durable_end)
            .max(self.log_start);
        self.check();
        cut_below
    }

    /// The idempotent producers' state (for a replay point).
    pub fn producers(&self) -> &ProducerStates {
        &self.producers
    }

    /// Replaces the idempotent producers' state (rebuilt from the log after a truncation).
    pub fn replace_producers(&mut self, producers: ProducerStates) {
        self.producers = producers;
    }

    /// The idempotent producers' state, for a follower to feed the batches it appended.
    pub fn producers_mut(&mut self) -> &mut ProducerStates {
        &mut self.producers
    }

    /// Whether acks=all may be answered for a batch the high watermark now covers:
    /// `min.insync.replicas` must still hold (else NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    pub fn check_after_append(&self) -> Result<(), ProduceRefusal> {
        if !self.is_leader() {
            return Err(ProduceRefusal::NotLeader);
        }
        if self.isr.len() < self.min_insync {
            return Err(ProduceRefusal::NotEnoughReplicasAfterAppend {
                in_sync: self.isr.len(),
                min_insync: self.min_insync,
            });
        }
        Ok(())
    }

    /// Kafka's check of a request's `current_leader_epoch` (-1: the client sent none).
    pub fn check_leader_epoch(&self, current: i32) -> Result<(), ErrorCode> {
        if current < 0 || current == self.leader_epoch.0 {
            Ok(())
        } else if current < self.leader_epoch.0 {
            Err(error_code::FENCED_LEADER_EPOCH)
        } else {
            Err(error_code::UNKNOWN_LEADER_EPOCH)
        }
    }

    /// May a produce with `acks` be appended at `now_ms`? For acks=all, the ISR must hold
    /// `min.insync.replicas` members, counting only followers whose fetches caught up within
    /// `lag_max_ms`: a member the leader has not heard from for that long is on its way out of
    /// the ISR (the controller may be unreachable to take it out), and waiting on it would
    /// only time out.
    pub fn check_produce(
        &self,
        acks: i16,
        now_ms: i64,
        lag_max_ms: i64,
    ) -> Result<(), ProduceRefusal> {
        if !self.is_leader() {
            return Err(ProduceRefusal::NotLeader);
        }
        if acks == -1 {
            let in_sync = self
                .isr
                .iter()
                .filter(|member| {
                    **member == self.node
                        || self
                            .followers
                            .get(member)
                            .is_none_or(|f| now_ms - f.caught_up_ms <= lag_max_ms)
                })
                .count();
            if in_sync < self.min_insync {
                return Err(ProduceRefusal::NotEnoughReplicas {
                    in_sync,
                    min_insync: self.min_insync,
                });
            }
        }
        Ok(())
    }

    /// Checks an idempotent producer's batch against its sequence state.
    pub fn check_sequence(&mut self, batch: BatchSeq) -> Check {
        self.producers.check(batch)
    }

    /// A transaction marker at `epoch` was written for `producer_id` (see
    /// `ProducerStates::fence`).
    pub fn fence_producer(&mut self, producer_id: i64, epoch: i16) {
        self.producers.fence(producer_id, epoch);
    }

    pub fn producer_epoch(&self, producer_id: i64) -> Option<i16> {
        self.producers.epoch_of(producer_id)
    }

    pub fn sequence_committed(&mut self, batch: BatchSeq, base_offset: Offset) {
        self.producers.committed(batch, base_offset.0);
    }

    pub fn sequence_failed(&mut self, batch: BatchSeq) {
        self.producers.failed(batch);
    }

    /// The local log's offsets moved (an append became durable, retention or DeleteRecords
    /// moved the start). Returns the new high watermark if it advanced.
    pub fn local_log_moved(&mut self, log: LogOffsets) -> Option<Offset> {
        assert!(
            log.log_end >= self.log_end,
            "a log end moved back without a truncation"
        );
        assert!(
            log.durable_end >= self.durable_end,
            "the durable end moved back"
        );
        self.log_start = self.log_start.max(log.log_start);
        self.durable_end = log.durable_end;
        self.log_end = log.log_end;
        let before = self.high_watermark;
        // A follower's start may pass its watermark when it follows its leader's start:
        // nothing below the start exists any more, so the watermark comes along.
        self.high_watermark = self.high_watermark.max(self.log_start);
        self.advance_high_watermark();
        self.check();
        (self.high_watermark > before).then_some(self.high_watermark)
    }

    /// A follower fetched from `end` at `now_ms`: everything below it is in its log. Returns
    /// the new high watermark if it advanced.
    pub fn follower_fetched(
        &mut self,
        follower: BrokerId,
        end: Offset,
        now_ms: i64,
    ) -> Option<Offset> {
        if follower == self.node || !self.replicas.contains(&follower) || !self.is_leader() {
            return None;
        }
        let end = end.min(self.durable_end);
        let leader_end = self.durable_end;
        let known = self.followers.entry(follower).or_insert(Follower {
            end,
            caught_up_ms: now_ms,
            previous_fetch: (leader_end, now_ms),
            fetched: true,
        });
        known.end = known.end.max(end);
        known.fetched = true;
        if end >= leader_end {
            known.caught_up_ms = now_ms;
        } else if end >= known.previous_fetch.0 {
            known.caught_up_ms = known.caught_up_ms.max(known.previous_fetch.1);
        }
        known.previous_fetch = (leader_end, now_ms);
        let before = self.high_watermark;
        self.advance_high_watermark();
        self.check();
        (self.high_watermark > before).then_some(self.high_watermark)
    }

    /// The smallest end among the ISR members and proposed members (the leader's being its
    /// durable end), never below the current high watermark. Only a leader advances it from
    /// its own facts.
    fn advance_high_watermark(&mut self) {
        if !self.is_leader() {
            return;
        }
        let proposed = self.proposed_isr.iter().flat_map(|p| p.isr.iter());
        let mut candidate = self.durable_end;
        for member in self.isr.iter().chain(proposed) {
            if *member == self.node {
                continue;
            }
            match self.followers.get(member).filter(|f| f.fetched) {
                Some(follower) => candidate = candidate.min(follower.end),
                // A member that has not reported yet holds the watermark where it is.
                None => candidate = candidate.min(self.high_watermark),
            }
        }
        self.high_watermark = self.high_watermark.max(candidate).max(self.log_start);
    }

    fn check(&self) {
        assert!(
            self.log_start <= self.high_watermark
                && self.high_watermark <= self.durable_end
                && self.durable_end <= self.log_end,
            "partition offsets out of order: log start {:?}, high watermark {:?}, durable end {:?}, log end {:?}",
            self.log_start,
            self.high_watermark,
            self.durable_end,
            self.log_end
        );
        assert!(
            self.leader < 0 || self.isr.contains(&self.leader),
            "leader {} outside the ISR {:?}",
            self.leader,
            self.isr
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: BrokerId = 1;
    const LAG: i64 = 30_000;

    fn meta(
        leader: BrokerId,
        epoch: i32,
        replicas: &[BrokerId],
        isr: &[BrokerId],
    ) -> PartitionMeta {
        PartitionMeta {
            index: 0,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader,
            leader_epoch: epoch,
            partition_epoch: 0,
        }
    }

    fn offsets(start: i64, durable: i64, end: i64) -> LogOffsets {
        LogOffsets {
            log_start: Offset(start),
            durable_end: Offset(durable),
            log_end: Offset(end),
        }
    }

    fn state(meta: &PartitionMeta, min_insync: usize) -> PartitionState {
        PartitionState::new(
            ME,
            meta,
            min_insync,
            offsets(0, 0, 0),
            ProducerStates::default(),
        )
    }

    #[test]
    fn a_sole_replica_exposes_what_its_log_made_durable() {
        let mut s = state(&meta(ME, 0, &[ME], &[ME]), 1);
        assert_eq!(s.high_watermark(), Offset(0));
        // Written but not yet durable: consumers must not see it.
        assert_eq!(s.local_log_moved(offsets(0, 0, 10)), None);
        assert_eq!(s.local_log_moved(offsets(0, 10, 10)), Some(Offset(10)));
        assert_eq!(s.high_watermark(), Offset(10));
    }

    #[test]
    fn the_high_watermark_is_the_smallest_isr_end_and_never_goes_back() {
        let mut s = state(&meta(ME, 3, &[ME, 2, 3], &[ME, 2, 3]), 2);
        s.local_log_moved(offsets(0, 100, 100));
        assert_eq!(s.high_watermark(), Offset(0), "followers have not reported");
        assert_eq!(
            s.follower_fetched(2, Offset(40), 0),
            None,
            "3 has not reported"
        );
        assert_eq!(s.follower_fetched(3, Offset(60), 0), Some(Offset(40)));
        assert_eq!(s.follower_fetched(2, Offset(100), 0), Some(Offset(60)));
        // A follower reporting less than before (a stale fetch) moves nothing back.
        assert_eq!(s.follower_fetched(3, Offset(10), 0), None);
        assert_eq!(s.high_watermark(), Offset(60));
        // Shrinking the ISR to the leader and 2 lets the watermark reach 2's end.
        s.update(&meta(ME, 3, &[ME, 2, 3], &[ME, 2]));
        assert_eq!(s.high_watermark(), Offset(100));
        // A report from a broker that is not a replica is ignored.
        assert_eq!(s.follower_fetched(9, Offset(1_000), 0), None);
    }

    #[test]
    fn produce_is_refused_off_the_leader_and_below_min_insync_for_acks_all() {
        let s = state(&meta(2, 1, &[ME, 2], &[2, ME]), 1);
        assert_eq!(s.check_produce(1, 0, LAG), Err(ProduceRefusal::NotLeader));
        let s = state(&meta(ME, 0, &[ME, 2, 3], &[ME]), 2);
        assert_eq!(
            s.check_produce(-1, 0, LAG),
            Err(ProduceRefusal::NotEnoughReplicas {
                in_sync: 1,
                min_insync: 2
            })
        );
        assert_eq!(s.check_produce(1, 0, LAG), Ok(()));
        assert_eq!(s.check_produce(0, 0, LAG), Ok(()));
        assert_eq!(
            ProduceRefusal::NotLeader.code(),
            error_code::NOT_LEADER_OR_FOLLOWER
        );
    }

    #[test]
    fn current_leader_epoch_checks_answer_as_kafka_does() {
        let s = state(&meta(ME, 5, &[ME], &[ME]), 1);
        let table = [
            (-1, Ok(())),
            (5, Ok(())),
            (4, Err(error_code::FENCED_LEADER_EPOCH)),
            (6, Err(error_code::UNKNOWN_LEADER_EPOCH)),
        ];
        for (current, expected) in table {
            assert_eq!(s.check_leader_epoch(current), expected, "current {current}");
        }
    }

    #[test]
    fn a_new_leader_epoch_forgets_follower_reports_but_keeps_the_watermark() {
        let mut s = state(&meta(ME, 0, &[ME, 2], &[ME, 2]), 1);
        s.local_log_moved(offsets(0, 50, 50));
        s.follower_fetched(2, Offset(50), 0);
        assert_eq!(s.high_watermark(), Offset(50));
        s.update(&meta(ME, 1, &[ME, 2], &[ME, 2]));
        assert_eq!(s.leader_epoch(), LeaderEpoch(1));
        assert_eq!(s.high_watermark(), Offset(50));
        s.local_log_moved(offsets(0, 80, 80));
        assert_eq!(
            s.high_watermark(),
            Offset(50),
            "2 must report to the new epoch"
        );
    }

    fn proposal(isr: &[BrokerId], partition_epoch: i32) -> Option<IsrProposal> {
        Some(IsrProposal {
            isr: isr.to_vec(),
            partition_epoch,
        })
    }

    #[test]
    fn a_member_that_stops_catching_up_is_proposed_out_and_a_caught_up_replica_in() {
        let mut s = state(&meta(ME, 0, &[ME, 2, 3], &[ME, 2]), 1);
        s.local_log_moved(offsets(0, 10, 10));
        assert_eq!(s.isr_duty(0, LAG), None, "2 counts from its first check");
        s.follower_fetched(2, Offset(10), 1_000);
        assert_eq!(s.high_watermark(), Offset(10));
        // 3 fetches but is behind the watermark: not yet.
        s.follower_fetched(3, Offset(4), 1_000);
        assert_eq!(s.isr_duty(1_000, LAG), None);
        // 3 reaches the watermark: it is proposed in, and counts toward it at once.
        s.follower_fetched(3, Offset(10), 2_000);
        assert_eq!(s.isr_duty(2_000, LAG), proposal(&[ME, 2, 3], 0));
        assert_eq!(s.isr_duty(2_000, LAG), None, "one proposal at a time");
        s.local_log_moved(offsets(0, 20, 20));
        s.follower_fetched(2, Offset(20), 3_000);
        assert_eq!(
            s.high_watermark(),
            Offset(10),
            "the proposed member holds the watermark (maximal ISR)"
        );
        // Unanswered: it stays (it may still be taken) and goes again.
        s.isr_proposal_unanswered();
        assert_eq!(s.high_watermark(), Offset(10));
        assert_eq!(s.isr_duty(2_500, LAG), proposal(&[ME, 2, 3], 0));
        // An image that does not touch the partition answers nothing.
        s.update(&meta(ME, 0, &[ME, 2, 3], &[ME, 2]));
        assert_eq!(s.proposed_isr(), Some(&[ME, 2, 3][..]));
        let mut taken = meta(ME, 0, &[ME, 2, 3], &[ME, 2, 3]);
        taken.partition_epoch = 1;
        s.update(&taken);
        assert_eq!(s.proposed_isr(), None);
        // 2 last caught up at 3 s, 3 at 2 s; then 2 keeps fetching without reaching the
        // leader's end again, and 3 stops fetching.
        s.local_log_moved(offsets(0, 40, 40));
        s.follower_fetched(2, Offset(20), 20_000);
        s.follower_fetched(2, Offset(20), 21_000);
        assert_eq!(s.isr_duty(2_000 + LAG, LAG), None, "within the lag limit");
        assert_eq!(s.isr_duty(2_500 + LAG, LAG), proposal(&[ME, 2], 1));
        s.isr_proposal_refused();
        // Refused: decided afresh, and acks=all counts only live members.
        assert_eq!(s.isr_duty(40_000 + LAG, LAG), proposal(&[ME], 1));
        let mut strict = s;
        strict.set_min_insync(2);
        assert!(strict.check_produce(-1, 40_000 + LAG, LAG).is_err());
    }

    #[test]
    fn a_follower_takes_the_leaders_watermark_as_far_as_its_log_reaches_and_truncates() {
        let mut s = state(&meta(2, 0, &[ME, 2], &[ME, 2]), 1);
        s.follower_appended(offsets(0, 30, 30), Offset(50));
        assert_eq!(s.high_watermark(), Offset(30));
        s.follower_appended(offsets(0, 30, 30), Offset(20));
        assert_eq!(s.high_watermark(), Offset(30), "never back on an append");
        assert!(!s.truncated(offsets(0, 30, 30)));
        assert!(
            s.truncated(offsets(0, 25, 25)),
            "a cut below the watermark is reported"
        );
        assert_eq!(s.high_watermark(), Offset(25));
    }

    #[test]
    #[should_panic(expected = "leader epoch went back")]
    fn a_leader_epoch_never_goes_back() {
        let mut s = state(&meta(ME, 4, &[ME], &[ME]), 1);
        s.update(&meta(ME, 3, &[ME], &[ME]));
    }

    #[test]
    fn retention_moving_the_log_start_past_the_watermark_drags_it_along() {
        let mut s = state(&meta(ME, 0, &[ME, 2], &[ME, 2]), 1);
        s.local_log_moved(offsets(0, 30, 30));
        assert_eq!(s.high_watermark(), Offset(0));
        s.local_log_moved(offsets(20, 30, 30));
        assert_eq!(s.high_watermark(), Offset(20));
    }

    /// A seeded random walk over appends, syncs, follower reports and ISR changes, checking
    /// after every step that the watermark never goes back and never passes an ISR member.
    #[test]
    fn random_walks_keep_the_offset_invariants() {
        for seed in 0..200u64 {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move |bound: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % bound
            };
            let replicas = [ME, 2, 3];
            let mut isr = vec![ME, 2, 3];
            let mut s = state(&meta(ME, 0, &replicas, &isr), 1);
            let (mut end, mut durable) = (0i64, 0i64);
            let mut follower = [0i64; 4];
            let mut watermark = Offset(0);
            for _ in 0..300 {
                match next(4) {
                    0 => end += 1 + next(5) as i64,
                    1 => durable = end,
                    2 => {
                        let who = 2 + next(2) as usize;
                        follower[who] = (follower[who] + next(4) as i64).min(end);
                        s.follower_fetched(who as BrokerId, Offset(follower[who]), 0);
                    }
                    _ => {
                        isr = replicas
                            .iter()
                            .copied()
                            .filter(|b| *b == ME || next(2) == 0)
                            .collect();
                        s.update(&meta(ME, 0, &replicas, &isr));
                    }
                }
                s.local_log_moved(offsets(0, durable, end));
                assert!(s.high_watermark() >= watermark, "seed {seed}: went back");
                watermark = s.high_watermark();
                assert!(watermark.0 <= durable, "seed {seed}: past the durable end");
            }
        }
    }
}

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
//! back. The high watermark is the smallest end among the ISR members' logs, where the
//! leader's own end is its durable end: with one replica, what the local log made durable.

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
}

impl ProduceRefusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProduceRefusal::NotLeader => error_code::NOT_LEADER_OR_FOLLOWER,
            ProduceRefusal::NotEnoughReplicas { .. } => error_code::NOT_ENOUGH_REPLICAS,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ProduceRefusal::NotLeader => "this broker does not lead the partition".into(),
            ProduceRefusal::NotEnoughReplicas {
                in_sync,
                min_insync,
            } => format!("min.insync.replicas={min_insync} but {in_sync} replica(s) in sync"),
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
    /// Log ends followers reported by fetching (leader only).
    follower_ends: BTreeMap<BrokerId, Offset>,
    high_watermark: Offset,
    producers: ProducerStates,
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
            follower_ends: BTreeMap::new(),
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
    /// since it never goes back.
    pub fn update(&mut self, meta: &PartitionMeta) {
        let epoch = LeaderEpoch(meta.leader_epoch);
        assert!(
            epoch >= self.leader_epoch,
            "leader epoch went back from {:?} to {epoch:?}",
            self.leader_epoch
        );
        if epoch > self.leader_epoch {
            self.follower_ends.clear();
        }
        self.leader = meta.leader;
        self.leader_epoch = epoch;
        self.replicas = meta.replicas.clone();
        self.isr = meta.isr.clone();
        self.follower_ends
            .retain(|broker, _| meta.replicas.contains(broker));
        self.advance_high_watermark();
        self.check();
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

    /// May a produce with `acks` be appended now?
    pub fn check_produce(&self, acks: i16) -> Result<(), ProduceRefusal> {
        if !self.is_leader() {
            return Err(ProduceRefusal::NotLeader);
        }
        if acks == -1 && self.isr.len() < self.min_insync {
            return Err(ProduceRefusal::NotEnoughReplicas {
                in_sync: self.isr.len(),
                min_insync: self.min_insync,
            });
        }
        Ok(())
    }

    /// Checks an idempotent producer's batch against its sequence state.
    pub fn check_sequence(&mut self, batch: BatchSeq) -> Check {
        self.producers.check(batch)
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
        self.advance_high_watermark();
        self.check();
        (self.high_watermark > before).then_some(self.high_watermark)
    }

    /// A follower fetched from `end`: everything below it is in its log. Returns the new high
    /// watermark if it advanced.
    pub fn follower_fetched(&mut self, follower: BrokerId, end: Offset) -> Option<Offset> {
        if follower == self.node || !self.replicas.contains(&follower) {
            return None;
        }
        let end = end.min(self.log_end);
        let known = self.follower_ends.entry(follower).or_insert(end);
        *known = (*known).max(end);
        let before = self.high_watermark;
        self.advance_high_watermark();
        self.check();
        (self.high_watermark > before).then_some(self.high_watermark)
    }

    /// The smallest end among the ISR members (the leader's being its durable end), never
    /// below the current high watermark. Only a leader advances it from its own facts.
    fn advance_high_watermark(&mut self) {
        if !self.is_leader() {
            return;
        }
        let mut candidate = self.durable_end;
        for member in self.isr.iter().filter(|member| **member != self.node) {
            match self.follower_ends.get(member) {
                Some(end) => candidate = candidate.min(*end),
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
            s.follower_fetched(2, Offset(40)),
            None,
            "3 has not reported"
        );
        assert_eq!(s.follower_fetched(3, Offset(60)), Some(Offset(40)));
        assert_eq!(s.follower_fetched(2, Offset(100)), Some(Offset(60)));
        // A follower reporting less than before (a stale fetch) moves nothing back.
        assert_eq!(s.follower_fetched(3, Offset(10)), None);
        assert_eq!(s.high_watermark(), Offset(60));
        // Shrinking the ISR to the leader and 2 lets the watermark reach 2's end.
        s.update(&meta(ME, 3, &[ME, 2, 3], &[ME, 2]));
        assert_eq!(s.high_watermark(), Offset(100));
        // A report from a broker that is not a replica is ignored.
        assert_eq!(s.follower_fetched(9, Offset(1_000)), None);
    }

    #[test]
    fn produce_is_refused_off_the_leader_and_below_min_insync_for_acks_all() {
        let s = state(&meta(2, 1, &[ME, 2], &[2, ME]), 1);
        assert_eq!(s.check_produce(1), Err(ProduceRefusal::NotLeader));
        let s = state(&meta(ME, 0, &[ME, 2, 3], &[ME]), 2);
        assert_eq!(
            s.check_produce(-1),
            Err(ProduceRefusal::NotEnoughReplicas {
                in_sync: 1,
                min_insync: 2
            })
        );
        assert_eq!(s.check_produce(1), Ok(()));
        assert_eq!(s.check_produce(0), Ok(()));
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
        s.follower_fetched(2, Offset(50));
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
                        s.follower_fetched(who as BrokerId, Offset(follower[who]));
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

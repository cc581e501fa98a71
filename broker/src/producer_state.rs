//! Idempotent-producer bookkeeping for one partition: which sequence numbers each producer
//! has written, so retries are recognised as duplicates and gaps as errors.
//!
//! Plain Rust, no I/O. The owner shard calls `check` before appending a batch (and records
//! the batch as pending, so pipelined batches from one producer are checked in arrival
//! order), then `committed` or `failed` once the log answers. Kafka's rules:
//! - a newer epoch must start at sequence 0;
//! - an older epoch is fenced (INVALID_PRODUCER_EPOCH);
//! - the next batch must start right after the last one (OUT_OF_ORDER_SEQUENCE_NUMBER);
//! - a batch equal to one of the last five is a duplicate: answered with its original offset;
//! - state for an unknown producer starts only at sequence 0 (else UNKNOWN_PRODUCER_ID, so
//!   the client resets its sequence after the broker lost track of it).
//!
//! After a restart the state comes back from the partition's replay point
//! (`partition/replay_point.rs`: `encode_into` / `decode` here, then `restore` of every batch
//! past it), or, without a usable one, from `restore` of the batches at the end of the log
//! (`Log::recent_batch_headers`); either way a producer continues where it was and a batch it
//! retries across the restart is answered as the duplicate it is.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, BytesMut};

use crate::limits;
use tern_protocol::error_code::{self, ErrorCode};
use tern_protocol::wire::Reader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSeq {
    pub producer_id: i64,
    pub epoch: i16,
    pub first: i32,
    pub count: i32,
}

impl BatchSeq {
    /// The producer id, epoch and sequences a batch's header carries.
    pub fn of(header: &tern_protocol::batch::BatchHeader) -> BatchSeq {
        BatchSeq {
            producer_id: header.producer_id().0,
            epoch: header.producer_epoch(),
            first: header.base_sequence(),
            count: header.record_count().max(1),
        }
    }

    fn last(&self) -> i32 {
        wrapping_add(self.first, self.count - 1)
    }
}

fn wrapping_add(sequence: i32, delta: i32) -> i32 {
    // Kafka sequences wrap from i32::MAX to 0.
    ((i64::from(sequence) + i64::from(delta)) % (i64::from(i32::MAX) + 1)) as i32
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Append it; call `committed` or `failed` afterwards.
    Append,
    /// Already written: answer with this base offset. None while the original is in flight:
    /// the caller waits for it to be written or to fail, and checks again.
    Duplicate {
        base_offset: Option<i64>,
    },
    Reject(ErrorCode),
}

#[derive(Debug)]
struct Remembered {
    first: i32,
    last: i32,
    base_offset: Option<i64>,
}

#[derive(Debug)]
struct Producer {
    epoch: i16,
    batches: VecDeque<Remembered>,
    touched: u64,
}

#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
    clock: u64,
}

impl ProducerStates {
    pub fn check(&mut self, batch: BatchSeq) -> Check {
        self.clock += 1;
        let clock = self.clock;
        let remember = |first, last| Remembered {
            first,
            last,
            base_offset: None,
        };
        let Some(producer) = self.producers.get_mut(&batch.producer_id) else {
            if batch.first != 0 {
                return Check::Reject(error_code::UNKNOWN_PRODUCER_ID);
            }
            if self.producers.len() >= limits::PRODUCERS_PER_PARTITION_MAX {
                self.evict_oldest();
            }
            let mut batches = VecDeque::with_capacity(limits::BATCHES_REMEMBERED);
            batches.push_back(remember(batch.first, batch.last()));
            self.producers.insert(
                batch.producer_id,
                Producer {
                    epoch: batch.epoch,
                    batches,
                    touched: clock,
                },
            );
            return Check::Append;
        };
        producer.touched = clock;
        if batch.epoch < producer.epoch {
            return Check::Reject(error_code::INVALID_PRODUCER_EPOCH);
        }
        if batch.epoch > producer.epoch {
            if batch.first != 0 {
                return Check::Reject(error_code::OUT_OF_ORDER_SEQUENCE_NUMBER);
            }
            producer.epoch = batch.epoch;
            producer.batches.clear();
            producer
                .batches
                .push_back(remember(batch.first, batch.last()));
            return Check::Append;
        }
        if let Some(seen) = producer
            .batches
            .iter()
            .find(|seen| seen.first == batch.first && seen.last == batch.last())
        {
            return Check::Duplicate {
                base_offset: seen.base_offset,
            };
        }
        let expected = producer
            .batches
            .back()
            .map(|last| wrapping_add(last.last, 1))
            .unwrap_or(0);
        if batch.first != expected {
            return Check::Reject(error_code::OUT_OF_ORDER_SEQUENCE_NUMBER);
        }
        if producer.batches.len() == limits::BATCHES_REMEMBERED {
            producer.batches.pop_front();
        }
        producer
            .batches
            .push_back(remember(batch.first, batch.last()));
        Check::Append
    }

    /// Replays a batch found in the log at `base_offset` (start-up). The log is the truth: no
    /// checks, only the newest epoch's last `limits::BATCHES_REMEMBERED` batches are kept.
    pub fn restore(&mut self, batch: BatchSeq, base_offset: i64) {
        self.clock += 1;
        if !self.producers.contains_key(&batch.producer_id)
            && self.producers.len() >= limits::PRODUCERS_PER_PARTITION_MAX
        {
            self.evict_oldest();
        }
        let producer = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| Producer {
                epoch: batch.epoch,
                batches: VecDeque::with_capacity(limits::BATCHES_REMEMBERED),
                touched: 0,
            });
        producer.touched = self.clock;
        if batch.epoch < producer.epoch {
            return;
        }
        if batch.epoch > producer.epoch {
            producer.epoch = batch.epoch;
            producer.batches.clear();
        }
        if let Some(seen) = producer
            .batches
            .iter_mut()
            .find(|seen| seen.first == batch.first && seen.last == batch.last())
        {
            // Already known (a replay that overlaps what a snapshot holds).
            seen.base_offset = Some(base_offset);
            return;
        }
        if producer.batches.len() == limits::BATCHES_REMEMBERED {
            producer.batches.pop_front();
        }
        producer.batches.push_back(Remembered {
            first: batch.first,
            last: batch.last(),
            base_offset: Some(base_offset),
        });
    }

    /// A transaction marker at `epoch` was written for `producer_id` (the coordinator bumped
    /// the epoch to fence an old incarnation, or ended a transaction at the same epoch): data
    /// from an older epoch is refused from now on; a newer epoch starts again at sequence 0.
    pub fn fence(&mut self, producer_id: i64, epoch: i16) {
        self.clock += 1;
        let clock = self.clock;
        match self.producers.get_mut(&producer_id) {
            Some(producer) if epoch > producer.epoch => {
                producer.epoch = epoch;
                producer.batches.clear();
                producer.touched = clock;
            }
            Some(_) => {}
            None => {
                if self.producers.len() >= limits::PRODUCERS_PER_PARTITION_MAX {
                    self.evict_oldest();
                }
                self.producers.insert(
                    producer_id,
                    Producer {
                        epoch,
                        batches: VecDeque::new(),
                        touched: clock,
                    },
                );
            }
        }
    }

    /// The epoch this partition knows for `producer_id`.
    pub fn epoch_of(&self, producer_id: i64) -> Option<i16> {
        self.producers.get(&producer_id).map(|p| p.epoch)
    }

    /// The log accepted the batch at `base_offset` (remembered only if the producer is still
    /// at the batch's epoch).
    pub fn committed(&mut self, batch: BatchSeq, base_offset: i64) {
        if let Some(producer) = self
            .producers
            .get_mut(&batch.producer_id)
            .filter(|producer| producer.epoch == batch.epoch)
        {
            if let Some(seen) = producer
                .batches
                .iter_mut()
                .find(|seen| seen.first == batch.first && seen.last == batch.last())
            {
                seen.base_offset = Some(base_offset);
            }
        }
    }

    /// The log refused or failed the batch. If it is the producer's newest (nothing of the
    /// producer's was checked after it), it alone is forgotten: the producer goes on from the
    /// batch before it, whose retries are still recognised, and a batch numbered after the
    /// failed one is OUT_OF_ORDER_SEQUENCE_NUMBER. Otherwise batches checked after it are on
    /// their way to the log: the producer is forgotten, so no retry is taken for a duplicate
    /// of data never written (its next batch gets UNKNOWN_PRODUCER_ID).
    pub fn failed(&mut self, batch: BatchSeq) {
        let Some(producer) = self.producers.get_mut(&batch.producer_id) else {
            return;
        };
        let newest = producer.epoch == batch.epoch
            && producer.batches.back().is_some_and(|last| {
                last.first == batch.first && last.last == batch.last() && last.base_offset.is_none()
            });
        if newest {
            producer.batches.pop_back();
        } else {
            self.producers.remove(&batch.producer_id);
        }
    }

    /// Appends the state every written batch left, least recently touched producer first:
    /// batches still in flight (no base offset yet) are left out, so only a state with none in
    /// flight describes the log exactly. Layout, big-endian: producer count u32, then per
    /// producer its id i64, epoch i16, batch count u8 and per batch first and last sequence
    /// i32 and base offset i64.
    pub fn encode_into(&self, out: &mut BytesMut) {
        let mut producers: Vec<(&i64, &Producer)> = self.producers.iter().collect();
        producers.sort_by_key(|(_, producer)| producer.touched);
        out.put_u32(producers.len() as u32);
        for (id, producer) in producers {
            let written = || producer.batches.iter().filter(|b| b.base_offset.is_some());
            out.put_i64(*id);
            out.put_i16(producer.epoch);
            out.put_u8(written().count() as u8);
            for batch in written() {
                out.put_i32(batch.first);
                out.put_i32(batch.last);
                out.put_i64(batch.base_offset.unwrap_or(-1));
            }
        }
    }

    /// Reads back what `encode_into` wrote; None when a count breaks the limits or the bytes
    /// run out (the caller's checksum has passed, so that is a bug or a foreign file).
    pub fn decode(reader: &mut Reader<'_>) -> Option<ProducerStates> {
        let count = reader.i32().ok()? as u32 as usize;
        if count > limits::PRODUCERS_PER_PARTITION_MAX {
            return None;
        }
        let mut states = ProducerStates::default();
        for _ in 0..count {
            let id = reader.i64().ok()?;
            let epoch = reader.i16().ok()?;
            let batch_count = reader.i8().ok()? as u8 as usize;
            if batch_count > limits::BATCHES_REMEMBERED {
                return None;
            }
            let mut batches = VecDeque::with_capacity(limits::BATCHES_REMEMBERED);
            for _ in 0..batch_count {
                batches.push_back(Remembered {
                    first: reader.i32().ok()?,
                    last: reader.i32().ok()?,
                    base_offset: Some(reader.i64().ok()?),
                });
            }
            states.clock += 1;
            let touched = states.clock;
            states.producers.insert(
                id,
                Producer {
                    epoch,
                    batches,
                    touched,
                },
            );
        }
        Some(states)
    }

    fn evict_oldest(&mut self) {
        if let Some((&id, _)) = self
            .producers
            .iter()
            .min_by_key(|(_, producer)| producer.touched)
        {
            self.producers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(epoch: i16, first: i32, count: i32) -> BatchSeq {
        BatchSeq {
            producer_id: 7,
            epoch,
            first,
            count,
        }
    }

    #[test]
    fn a_written_batch_of_an_older_epoch_lends_its_offset_to_no_newer_batch() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(batch(0, 0, 3)), Check::Append);
        // The next epoch starts at 0 while the old epoch's batch is still being written.
        assert_eq!(states.check(batch(1, 0, 2)), Check::Append);
        states.committed(batch(0, 0, 3), 100);
        assert_eq!(
            states.check(batch(1, 0, 2)),
            Check::Duplicate { base_offset: None },
            "the new epoch's batch is still unwritten"
        );
        states.committed(batch(1, 0, 2), 103);
        assert_eq!(
            states.check(batch(1, 0, 2)),
            Check::Duplicate {
                base_offset: Some(103)
            }
        );
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(batch(0, 0, 3)), Check::Append);
        states.committed(batch(0, 0, 3), 100);
        assert_eq!(states.check(batch(0, 3, 2)), Check::Append);
        assert_eq!(
            states.check(batch(0, 0, 3)),
            Check::Duplicate {
                base_offset: Some(100)
            }
        );
        assert_eq!(
            states.check(batch(0, 3, 2)),
            Check::Duplicate { base_offset: None }
        );
    }

    #[test]
    fn a_failed_newest_batch_is_forgotten_alone_and_an_earlier_one_forgets_the_producer() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(batch(0, 0, 3)), Check::Append);
        states.committed(batch(0, 0, 3), 100);
        // Refused by the log with nothing checked after it: the producer goes on from 3.
        assert_eq!(states.check(batch(0, 3, 2)), Check::Append);
        states.failed(batch(0, 3, 2));
        assert_eq!(
            states.check(batch(0, 0, 3)),
            Check::Duplicate {
                base_offset: Some(100)
            }
        );
        assert_eq!(
            states.check(batch(0, 5, 1)),
            Check::Reject(error_code::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(states.check(batch(0, 3, 1)), Check::Append);
        // A batch checked after the failed one: the producer is forgotten.
        assert_eq!(states.check(batch(0, 4, 1)), Check::Append);
        states.failed(batch(0, 3, 1));
        assert_eq!(
            states.check(batch(0, 5, 1)),
            Check::Reject(error_code::UNKNOWN_PRODUCER_ID)
        );
        // A new epoch's first batch, refused: the epoch starts from 0 again.
        assert_eq!(states.check(batch(1, 0, 2)), Check::Append);
        states.failed(batch(1, 0, 2));
        assert_eq!(states.check(batch(1, 0, 1)), Check::Append);
    }

    #[test]
    fn gaps_old_epochs_and_unknown_producers_are_rejected() {
        let mut states = ProducerStates::default();
        assert_eq!(
            states.check(batch(1, 5, 1)),
            Check::Reject(error_code::UNKNOWN_PRODUCER_ID)
        );
        assert_eq!(states.check(batch(1, 0, 1)), Check::Append);
        assert_eq!(
            states.check(batch(1, 2, 1)),
            Check::Reject(error_code::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(
            states.check(batch(0, 1, 1)),
            Check::Reject(error_code::INVALID_PRODUCER_EPOCH)
        );
        assert_eq!(
            states.check(batch(2, 1, 1)),
            Check::Reject(error_code::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(states.check(batch(2, 0, 1)), Check::Append);
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(batch(0, 0, 1)), Check::Append);
        states
            .producers
            .get_mut(&7)
            .unwrap()
            .batches
            .back_mut()
            .unwrap()
            .last = i32::MAX;
        assert_eq!(
            states.check(batch(0, 0, 1)),
            Check::Append,
            "after i32::MAX comes 0"
        );
    }

    #[test]
    fn failed_append_forgets_the_producer() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(batch(0, 0, 1)), Check::Append);
        states.failed(batch(0, 0, 1));
        assert_eq!(
            states.check(batch(0, 0, 1)),
            Check::Append,
            "the retry is appended, not taken as a duplicate"
        );
    }

    #[test]
    fn encoded_state_decodes_to_the_same_answers_without_batches_in_flight() {
        let mut states = ProducerStates::default();
        for i in 0..7 {
            states.restore(batch(0, i * 2, 2), 100 + i64::from(i) * 2);
        }
        let other = BatchSeq {
            producer_id: 9,
            ..batch(3, 0, 4)
        };
        assert_eq!(states.check(other), Check::Append);
        states.committed(other, 300);
        // In flight: checked, not yet written.
        assert_eq!(states.check(batch(0, 14, 1)), Check::Append);
        let mut out = BytesMut::new();
        states.encode_into(&mut out);
        let mut reader = Reader::new(&out);
        let mut back = ProducerStates::decode(&mut reader).unwrap();
        assert!(reader.is_empty());
        assert_eq!(
            back.check(batch(0, 12, 2)),
            Check::Duplicate {
                base_offset: Some(112)
            }
        );
        assert_eq!(
            back.check(other),
            Check::Duplicate {
                base_offset: Some(300)
            }
        );
        // The batch that was in flight is not in the snapshot: its retry is appended.
        assert_eq!(back.check(batch(0, 14, 1)), Check::Append);
        // Replaying a batch the snapshot already holds changes nothing.
        back.restore(batch(0, 12, 2), 112);
        assert_eq!(
            back.check(batch(0, 10, 2)),
            Check::Duplicate {
                base_offset: Some(110)
            }
        );
        for cut in 0..out.len() {
            let mut reader = Reader::new(&out[..cut]);
            assert!(ProducerStates::decode(&mut reader).is_none());
        }
    }

    #[test]
    fn restored_state_continues_sequences_and_recognises_retries() {
        let mut states = ProducerStates::default();
        // Seven batches of epoch 0 in the log, then one of epoch 1: only the newest epoch's
        // last five are remembered.
        for i in 0..7 {
            states.restore(batch(0, i * 2, 2), 100 + i64::from(i) * 2);
        }
        assert_eq!(
            states.check(batch(0, 12, 2)),
            Check::Duplicate {
                base_offset: Some(112)
            }
        );
        assert_eq!(states.check(batch(0, 14, 1)), Check::Append);
        states.restore(batch(1, 0, 3), 200);
        states.restore(batch(0, 20, 1), 150); // an older epoch's batch changes nothing
        assert_eq!(
            states.check(batch(1, 0, 3)),
            Check::Duplicate {
                base_offset: Some(200)
            }
        );
        assert_eq!(states.check(batch(1, 3, 1)), Check::Append);
        assert_eq!(
            states.check(batch(0, 15, 1)),
            Check::Reject(error_code::INVALID_PRODUCER_EPOCH)
        );
    }
}

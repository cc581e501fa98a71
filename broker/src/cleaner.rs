//! The log cleaner of one shard: which compacted log to clean and when; the cleaning itself
//! is `tern_storage::Log::clean`.
//!
//! Every `log.cleaner.backoff.ms` the task looks at the shard's compacted partitions (leaders
//! and followers alike: each replica cleans its own log, as in Kafka) and cleans, one pass at a
//! time, the dirtiest one that is due: its dirty ratio at least `min.cleanable.dirty.ratio`,
//! or dirty data older than `max.compaction.lag.ms`, or a tombstone's delete horizon passed.
//! It goes on until none is due, then sleeps again. Nothing at or above a partition's high
//! watermark is cleaned (a follower may still have to truncate there).
//!
//! Memory: the offset map (the shard's share of `log.cleaner.dedupe.buffer.size`) is allocated
//! for a burst of passes and freed after it, so an idle shard holds none.
//!
//! Latency: a pass yields to the shard's other tasks after every batch it reads or writes and
//! takes the log's writer role only to swap a cleaned group in.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tern_protocol::types::TimestampMs;
use tern_storage::offset_map::{OffsetMap, SLOT_BYTES};
use tern_storage::{CleanOptions, Cleanable};

use crate::partition::Partition;
use crate::shard::Shard;

/// Starts the shard's cleaner task (a no-op loop when `log.cleaner.enable` is false); dropping
/// the task stops it (a pass cut short leaves files `open` tidies or completes).
pub fn start(shard: Rc<Shard>) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        let backoff = Duration::from_millis(shard.config.cleaner_backoff_ms.max(1));
        loop {
            glommio::timer::sleep(backoff).await;
            if shard.shutting_down.get() {
                break;
            }
            if shard.config.cleaner_enable {
                clean_while_due(&shard).await;
            }
        }
    })
}

/// A partition due for cleaning and how dirty it is.
struct Candidate {
    partition: Rc<Partition>,
    cleanable: Cleanable,
    /// Due by `max.compaction.lag.ms` or a tombstone horizon: goes before ratio-only ones.
    urgent: bool,
}

/// Cleans the dirtiest due log, pass after pass, until none is due.
pub async fn clean_while_due(shard: &Rc<Shard>) {
    let mut map: Option<OffsetMap> = None;
    // Bounded: a log whose pass gives up (the log changed underneath) is not retried at once.
    for _ in 0..crate::limits::CLEANER_PASSES_PER_ROUND {
        if shard.shutting_down.get() {
            break;
        }
        let Some(candidate) = dirtiest(shard) else {
            break;
        };
        let budget = shard_budget(shard);
        let map = map.get_or_insert_with(|| OffsetMap::with_budget(budget));
        let partition = &candidate.partition;
        let Some(compaction) = partition.policy.borrow().compaction else {
            continue;
        };
        let options = CleanOptions {
            upto: partition.high_watermark(),
            now: TimestampMs(shard.now_ms()),
            min_lag_ms: compaction.min_lag_ms,
            delete_retention_ms: compaction.delete_retention_ms,
            segment_bytes: partition.policy.borrow().log.segment_bytes,
        };
        let started = Instant::now();
        let probe = &shard.cleaner_probe;
        let abort_at = shard.config.fault_clean_abort_after_step;
        if let Some(step) = abort_at {
            partition.log.inject_clean_crash(step);
        }
        match partition.log.clean(options, map).await {
            Ok(report) => {
                let elapsed = started.elapsed();
                probe.passes.inc();
                probe.bytes_read.add(report.bytes_read);
                probe.bytes_written.add(report.bytes_written);
                probe.records_removed.add(report.records_removed);
                probe.last_pass_us.set(elapsed.as_micros() as u64);
                probe.busy_us.add(elapsed.as_micros() as u64);
                tracing::info!(
                    partition = %partition.tp.dir_name(),
                    dirty_ratio = format!("{:.2}", candidate.cleanable.dirty_ratio()),
                    urgent = candidate.urgent,
                    read_bytes = report.bytes_read,
                    written_bytes = report.bytes_written,
                    removed = report.records_removed,
                    tombstones_removed = report.tombstones_removed,
                    keys = report.keys,
                    segments = format!("{} -> {}", report.segments_before, report.segments_after),
                    ms = elapsed.as_millis() as u64,
                    completed = report.completed,
                    "cleaned"
                );
                if !report.completed {
                    break;
                }
            }
            Err(error) if abort_at.is_some() => {
                tracing::error!(partition = %partition.tp.dir_name(), %error, "fault injection: aborting mid-clean");
                std::process::abort();
            }
            Err(error) => {
                probe.failures.inc();
                tracing::warn!(partition = %partition.tp.dir_name(), %error, "cleaning failed");
                break;
            }
        }
        futures_lite::future::yield_now().await;
    }
}

/// The shard's compacted partition most in need of a pass, if any is due.
fn dirtiest(shard: &Shard) -> Option<Candidate> {
    let now = TimestampMs(shard.now_ms());
    let partitions = shard.owned_partitions();
    let mut best: Option<Candidate> = None;
    let mut max_ratio = 0.0f64;
    for partition in partitions {
        let Some(compaction) = partition.policy.borrow().compaction else {
            continue;
        };
        let cleanable =
            partition
                .log
                .cleanable(partition.high_watermark(), now, compaction.min_lag_ms);
        let ratio = cleanable.dirty_ratio();
        max_ratio = max_ratio.max(ratio);
        let overdue = cleanable.dirty_bytes > 0
            && cleanable
                .dirty_since
                .is_some_and(|since| now.0.saturating_sub(since.0) > compaction.max_lag_ms);
        let urgent = overdue || cleanable.tombstones_due;
        let by_ratio = cleanable.dirty_bytes > 0 && ratio >= compaction.min_cleanable_dirty_ratio;
        if !(urgent || by_ratio) {
            continue;
        }
        let better = best
            .as_ref()
            .is_none_or(|b| (urgent, ratio) > (b.urgent, b.cleanable.dirty_ratio()));
        if better {
            best = Some(Candidate {
                partition,
                cleanable,
                urgent,
            });
        }
    }
    shard
        .cleaner_probe
        .max_dirty_ratio_permille
        .set((max_ratio * 1000.0) as u64);
    best
}

/// Bytes for the offset map of a pass: the shard's share of `log.cleaner.dedupe.buffer.size`
/// (the dirty part's size says little about its record count once batches are compressed).
fn shard_budget(shard: &Shard) -> usize {
    (shard.config.cleaner_dedupe_buffer_bytes / shard.count.max(1)).max(SLOT_BYTES * 64)
}

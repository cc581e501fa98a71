//! `Log::truncate_to`: removing every batch at or above an offset (a follower discarding what
//! its new leader does not have), crash-safe, and its completion by `open` after a crash.
//!
//! Rounding: the log is cut at the start of the batch containing the requested offset, so the
//! new end is that batch's base offset (Kafka's `LogSegment.truncateTo` does the same; in
//! practice followers truncate to batch boundaries, where nothing is rounded). An offset in a
//! gap compaction left ends the log exactly there.
//!
//! Contract: it takes the writer role, makes appends wait (`State::truncating`), writes and
//! fdatasyncs every batch already assigned an offset (their appenders are acknowledged as
//! usual, then the batches are removed like any others), and only then cuts. Reads that run
//! concurrently either see the old log or the new one; a read that started on the old one and
//! reaches cut bytes fails with a storage error rather than return them.
//!
//! Crash safety, in steps (each one a point `inject_truncate_crash` can stop after):
//!
//! 1. write the intent, `truncate-to` (below), tmp + fdatasync + rename + directory sync;
//! 2. delete every segment wholly above the cut, highest first, so a crash leaves a contiguous
//!    prefix of segments (per segment: `.index`, `.timeindex`, then `.log`);
//! 3. cut the segment holding the new end and fdatasync it;
//! 4. remove that segment's stale index files (it is the active segment now: its indexes live
//!    in memory until roll or close persists them);
//! 5. rewrite `leader-epoch-checkpoint` without the epochs that started at or above the cut
//!    (recovery trims those anyway, so a crash before this step is harmless);
//! 6. sync the directory;
//! 7. remove the intent and sync the directory.
//!
//! A crash before step 1 completes leaves the old end (everything was synced first); after it,
//! `open` recovers whatever prefix of the steps ran, then finds the intent and truncates again
//! to its offset, so the log always ends exactly at the new end.
//!
//! # `truncate-to`
//!
//! | offset | size | field                                           |
//! |-------:|-----:|-------------------------------------------------|
//! |      0 |    8 | new log end offset i64 BE (a batch boundary)    |
//! |      8 |    4 | CRC32C u32 BE of bytes 0..8                     |

use std::rc::Rc;

use tern_protocol::types::{FilePosition, Offset};

use crate::error::{StorageIoError, TruncateError};
use crate::index::{OffsetIndex, SegmentIndexer, TimeIndex};
use crate::index_cache::SegmentIndexes;
use crate::segment::{
    self, align_down, log_file_name, offset_index_file_name, read_vec, time_index_file_name,
    walk_headers, walk_to_offset, WalkError,
};

use super::{
    active, failed_error, injected_crash, remove_if_exists, sync_dir, Inner, Log,
    INDEX_CHECKPOINT_FILE_NAME,
};
use crate::checkpoint::{decode_checkpoint, encode_checkpoint};

pub const TRUNCATE_TO_FILE_NAME: &str = "truncate-to";

/// Clears `State::truncating` and wakes waiting appenders, also when `truncate_to` is cancelled.
struct TruncatingGuard<'a> {
    inner: &'a Inner,
}

impl Drop for TruncatingGuard<'_> {
    fn drop(&mut self) {
        self.inner.state.borrow_mut().truncating = false;
        self.inner.notify.notify_all();
    }
}

/// Where the log is cut and what the segment holding the cut looks like afterwards, worked out
/// before anything on disk changes.
struct Cut {
    new_end: Offset,
    /// Index of the segment holding the new end; every later one is deleted.
    segment: usize,
    position: FilePosition,
    indexer: SegmentIndexer,
    tail: Vec<u8>,
}

impl Log {
    /// Removes every batch at or above `offset`, rounding down to the start of the batch that
    /// contains it, across segments; returns the new log end offset. A no-op returning the log
    /// end when `offset` is at or above it. See the module documentation for the contract with
    /// concurrent appends and reads, and for crash safety.
    pub async fn truncate_to(&self, offset: Offset) -> Result<Offset, TruncateError> {
        let _writer = self.inner.acquire_writer().await;
        if let Some(message) = &self.inner.state.borrow().failed {
            return Err(failed_error(message).into());
        }
        self.inner.state.borrow_mut().truncating = true;
        let _truncating = TruncatingGuard { inner: &self.inner };
        let _zeroing = self.inner.hold_zeroing().await;
        let _index_io = self.inner.acquire_index_io().await;
        // Write and sync everything assigned so far: a crash before the intent is durable must
        // leave the old end, whole.
        while !self.inner.state.borrow().pending.is_empty() {
            self.inner.run_round(true).await?;
        }
        self.inner.run_round(true).await?;
        self.inner.truncate_locked(offset).await
    }

    /// Failure injection for tests: the next `truncate_to` stops as if the process died after
    /// `steps` of its steps (see the module documentation); the log then refuses further use.
    #[doc(hidden)]
    pub fn inject_truncate_crash(&self, steps: u32) {
        self.inner.state.borrow_mut().truncate_crash_after_steps = Some(steps);
    }
}

impl Inner {
    /// Waits until no truncation is running (appends must not assign offsets during one).
    pub(super) async fn wait_not_truncating(&self) {
        loop {
            let listen = {
                let st = self.state.borrow();
                if !st.truncating {
                    return;
                }
                self.notify.listen()
            };
            listen.await;
        }
    }

    /// Finishes a truncation that a crash interrupted, from the `truncate-to` intent. Called by
    /// `open` before the log is handed out.
    pub(super) async fn complete_truncation(&self) -> Result<(), TruncateError> {
        let path = self.dir.join(TRUNCATE_TO_FILE_NAME);
        let Some(bytes) = segment::read_small_file(&path).await? else {
            return Ok(());
        };
        let _writer = self.acquire_writer().await;
        match decode_checkpoint(&bytes) {
            Some(target) => {
                let (log_start, leo) = {
                    let st = self.state.borrow();
                    (st.log_start, st.leo)
                };
                tracing::warn!(dir = %self.dir.display(), target = target.0, log_end = leo.0,
                    "completing a truncation interrupted by a crash");
                if target >= log_start && target < leo {
                    self.truncate_locked(target).await?;
                    return Ok(());
                }
                if target < log_start {
                    // Cannot happen (truncate_to refuses it before writing the intent), short
                    // of a damaged directory: keep the data rather than guess.
                    tracing::error!(dir = %self.dir.display(), target = target.0, log_start = log_start.0,
                        "ignoring a truncate-to intent below the log start offset");
                }
            }
            None => {
                // The intent is renamed into place whole, so this is media damage; the segments
                // still form a valid prefix of the log.
                tracing::error!(dir = %self.dir.display(), "ignoring a damaged truncate-to intent");
            }
        }
        remove_if_exists(&path).await?;
        sync_dir(&self.dir).await?;
        Ok(())
    }

    /// The truncation proper. The caller holds the writer role, and nothing is pending.
    async fn truncate_locked(&self, offset: Offset) -> Result<Offset, TruncateError> {
        {
            let st = self.state.borrow();
            assert!(st.pending.is_empty(), "truncating with batches pending");
            if offset >= st.leo {
                return Ok(st.leo);
            }
            if offset < st.log_start {
                return Err(TruncateError::BelowLogStart {
                    requested: offset,
                    batch_base: offset,
                    log_start: st.log_start,
                });
            }
        }
        let cut = self.plan_cut(offset).await?;
        let log_start = self.state.borrow().log_start;
        if cut.new_end < log_start {
            return Err(TruncateError::BelowLogStart {
                requested: offset,
                batch_base: cut.new_end,
                log_start,
            });
        }
        self.apply_cut(cut)
            .await
            .inspect_err(|e| self.fail(e))
            .map_err(TruncateError::from)
    }

    /// Finds the batch containing `offset` and rebuilds, in memory, the indexes of its segment
    /// as they will be once cut there. Reads only.
    async fn plan_cut(&self, offset: Offset) -> Result<Cut, TruncateError> {
        let (i, file, size_bytes, base, active_indexer, interval) = {
            let st = self.state.borrow();
            let i = st.segments.partition_point(|s| s.base() <= offset) - 1;
            let seg = &st.segments[i];
            let active_indexer = (i + 1 == st.segments.len()).then(|| seg.indexer.clone());
            (
                i,
                seg.file.clone(),
                seg.size_bytes,
                seg.base(),
                active_indexer,
                st.config.index_interval_bytes,
            )
        };
        let path = self.dir.join(log_file_name(base));
        let segment_file = file;
        let file = segment_file.file().await?;
        let corrupt = |(position, error): (FilePosition, WalkError)| match error {
            WalkError::Io(e) => TruncateError::Storage(e),
            WalkError::Corrupt(error) => TruncateError::Corrupt {
                segment: base,
                position,
                error,
            },
        };
        // The segment's indexes as they are: the active one's own, a sealed one's from the
        // cache or its files.
        let (offsets, times, first_timestamp) = match &active_indexer {
            Some(indexer) => (
                indexer.offset_index.clone(),
                indexer.time_index.clone(),
                indexer.first_timestamp,
            ),
            None => {
                let indexes = match self.index_cache.get(self.log_id, base) {
                    Some(cached) => cached,
                    None => self
                        .sealed_indexes(base, &segment_file, size_bytes)
                        .await?
                        .unwrap_or_else(|| Rc::new(SegmentIndexes::default())),
                };
                (indexes.offset.clone(), indexes.time.clone(), None)
            }
        };
        let relative = u32::try_from(offset.0 - base.0).expect("offset within its segment");
        let floor = offsets.floor(relative);
        let (position, new_end) = if offset == base {
            (FilePosition(0), base)
        } else {
            let found = walk_to_offset(
                &file,
                &path,
                FilePosition(u64::from(floor.position)),
                size_bytes,
                offset,
            )
            .await
            .map_err(corrupt)?;
            match found {
                // Inside a batch: cut at its start (rounding down).
                Some((position, header)) if header.base_offset() <= offset => {
                    (position, header.base_offset())
                }
                // In a gap compaction left (on this log or its leader's): everything from the
                // next batch on goes and the log ends exactly at `offset`, as Kafka's does. A
                // log that ended past it would report, and fetch from, offsets it never had.
                Some((position, _)) => (position, offset),
                // In a gap at the segment's end: the segment stays whole.
                None => (FilePosition(size_bytes), offset),
            }
        };
        // Rebuild the indexer as it stood when the batch at the last index entry below the cut
        // was about to be observed, then replay the batches from there to the cut: at most one
        // index interval and a batch, whatever the segment's size.
        let entries = offsets.entries();
        let kept = entries.partition_point(|e| u64::from(e.position) < position.0);
        let mut indexer = SegmentIndexer::new(base);
        let mut start = FilePosition(0);
        if let Some(last) = kept.checked_sub(1).map(|k| entries[k]) {
            let mut trimmed_offsets = OffsetIndex::default();
            for e in &entries[..kept - 1] {
                trimmed_offsets.push(*e);
            }
            // Time entries below the last kept offset entry's batch are exactly those that
            // existed when that entry was added (any later maximum lies at or after it).
            let mut trimmed_times = TimeIndex::default();
            for e in times.entries() {
                if e.relative_offset < last.relative_offset {
                    trimmed_times.maybe_push(*e);
                }
            }
            indexer.max_timestamp = trimmed_times
                .last()
                .map(|e| (base.plus(i64::from(e.relative_offset)), e.timestamp));
            indexer.offset_index = trimmed_offsets;
            indexer.time_index = trimmed_times;
            indexer.next_offset = base.plus(i64::from(last.relative_offset));
            // Forces the replay to add `last` again, exactly as the appender did.
            indexer.bytes_since_entry = u64::MAX;
            start = FilePosition(u64::from(last.position));
            indexer.first_timestamp = match first_timestamp {
                Some(ts) => Some(ts),
                None => {
                    let mut at = FilePosition(0);
                    walk_headers(&file, &path, &mut at, size_bytes, |_| true)
                        .await
                        .map_err(corrupt)?
                        .map(|(_, header)| header.max_timestamp())
                }
            };
        }
        let outcome =
            segment::scan(&file, &path, indexer, start, position.0, interval, true).await?;
        if outcome.valid_bytes != position.0 {
            return Err(TruncateError::Corrupt {
                segment: base,
                position: FilePosition(outcome.valid_bytes),
                error: outcome
                    .stopped_by
                    .unwrap_or(tern_protocol::batch::BatchError::Truncated {
                        needed_bytes: 0,
                        available_bytes: 0,
                    }),
            });
        }
        let mut indexer = outcome.indexer;
        assert!(indexer.next_offset <= new_end, "replayed up to the cut");
        indexer.next_offset = new_end;
        let tail_start = align_down(position.0);
        let tail = if tail_start < position.0 {
            read_vec(
                &file,
                FilePosition(tail_start),
                (position.0 - tail_start) as usize,
                &path,
            )
            .await?
        } else {
            Vec::new()
        };
        Ok(Cut {
            new_end,
            segment: i,
            position,
            indexer,
            tail,
        })
    }

    /// Records the intent, switches the in-memory state to the new end, then changes the files
    /// step by step (see the module documentation).
    async fn apply_cut(&self, cut: Cut) -> Result<Offset, StorageIoError> {
        let mut steps = 0u32;
        let step = |steps: &mut u32| -> Result<(), StorageIoError> {
            let after = self.state.borrow().truncate_crash_after_steps;
            injected_crash(after, *steps, "truncating", &self.dir)?;
            *steps += 1;
            Ok(())
        };
        step(&mut steps)?;
        segment::write_file_atomically(
            &self.dir,
            TRUNCATE_TO_FILE_NAME,
            &encode_checkpoint(cut.new_end),
        )
        .await?;
        sync_dir(&self.dir).await?;
        // The segment holding the cut becomes the active one: its file stays open from now on.
        let cut_file = self.state.borrow().segments[cut.segment].file.clone();
        let file = cut_file.pin().await?;
        let (victims, was_sealed) = {
            let mut st = self.state.borrow_mut();
            let st = &mut *st;
            let victims: Vec<_> = st.segments.drain(cut.segment + 1..).collect();
            for victim in &victims {
                self.index_cache.remove(self.log_id, victim.base());
            }
            let was_sealed = !victims.is_empty();
            let seg = st.segments.last_mut().expect("the cut segment remains");
            self.index_cache.remove(self.log_id, seg.base());
            seg.size_bytes = cut.position.0;
            seg.indexer = cut.indexer;
            seg.tail = cut.tail;
            seg.preallocated_bytes = 0;
            seg.zeroed_bytes = cut.position.0;
            if cut.position.0 == 0 || was_sealed {
                seg.first_append_ms = None;
            }
            let end = cut.new_end;
            st.leo = end;
            st.written_end = end;
            st.durable_end = end;
            st.ack_end = end;
            st.sync_issued_end = end;
            st.unsynced_messages = 0;
            st.write_in_flight_end = 0;
            st.truncations += 1;
            st.read_ahead = None;
            st.epochs_dirty |= st.epochs.truncate_from_end(end);
            while st.cache.back().is_some_and(|c| c.base >= end) {
                let dropped = st.cache.pop_back().expect("checked non-empty");
                st.cache_bytes -= dropped.bytes.len();
                self.tail_budget.release(dropped.bytes.len());
            }
            st.check_offsets();
            (victims, was_sealed)
        };
        for victim in victims.into_iter().rev() {
            step(&mut steps)?;
            let base = victim.base();
            victim.file.close().await;
            for name in [
                offset_index_file_name(base),
                time_index_file_name(base),
                log_file_name(base),
            ] {
                remove_if_exists(&self.dir.join(name)).await?;
            }
        }
        step(&mut steps)?;
        let path = self
            .dir
            .join(log_file_name(active(&self.state.borrow().segments).base()));
        file.truncate(cut.position.0)
            .await
            .map_err(|e| StorageIoError::new(format!("truncating {}", path.display()), e))?;
        file.fdatasync()
            .await
            .map_err(|e| StorageIoError::new(format!("syncing {}", path.display()), e))?;
        step(&mut steps)?;
        // The checkpointed indexes may name batches past the cut.
        remove_if_exists(&self.dir.join(INDEX_CHECKPOINT_FILE_NAME)).await?;
        self.state.borrow_mut().indexes_checkpointed = (Offset(-1), 0);
        if was_sealed {
            let base = active(&self.state.borrow().segments).base();
            remove_if_exists(&self.dir.join(offset_index_file_name(base))).await?;
            remove_if_exists(&self.dir.join(time_index_file_name(base))).await?;
        }
        step(&mut steps)?;
        self.persist_epochs_if_dirty().await?;
        step(&mut steps)?;
        sync_dir(&self.dir).await?;
        step(&mut steps)?;
        remove_if_exists(&self.dir.join(TRUNCATE_TO_FILE_NAME)).await?;
        sync_dir(&self.dir).await?;
        tracing::info!(dir = %self.dir.display(), end = cut.new_end.0, "truncated log");
        Ok(cut.new_end)
    }
}

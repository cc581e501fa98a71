//! Log compaction (`cleanup.policy=compact`): `Log::cleanable` says how dirty a log is, and
//! `Log::clean` keeps the latest record of each key in its sealed segments, as Kafka's cleaner
//! does. The broker's per-shard cleaner (`broker/src/cleaner.rs`) decides when and which log.
//!
//! One pass:
//! 1. **Range.** Only sealed segments that end at or below the caller's bound (the replicated
//!    high watermark: a record above it may still be truncated away, and its older versions
//!    must not be gone by then) and are older than `min.compaction.lag.ms` are cleaned. The
//!    *dirty* part starts at the cleaner checkpoint (where the last pass ended).
//! 2. **Map.** Every keyed record of the dirty part goes into the [`OffsetMap`] (key hash ->
//!    latest offset). When the map fills, the pass ends where it filled (a later pass goes on).
//! 3. **Rewrite.** Segments from the log start to the map's end are read in groups (as many
//!    as fit `segment.bytes` together) and each batch is filtered: a record goes when the map
//!    holds a later offset for its key, when it has no key, or when it is a tombstone whose
//!    delete horizon has passed and nothing older of its key can remain. A retained tombstone's
//!    batch gets a delete horizon (`now + delete.retention.ms`, KIP-534) the first time a pass
//!    sees it. Kept batches keep their base offset and last offset delta, so offsets never
//!    move; batches left empty go. Control and transactional batches are copied unchanged.
//! 4. **Swap**, per group, crash-safe (below), then the checkpoint moves to the map's end.
//!
//! Work is done in small slices (the task yields after every batch), reads and writes are
//! direct I/O in 1 MiB pieces, and the writer role is held only for the swap itself, so
//! appends and reads go on while a log is cleaned. A read that started on an old segment
//! keeps reading its file (still open; unlinked files live on until closed).
//!
//! Crash safety of a group's swap, in steps (each one a point `inject_clean_crash` can stop
//! after):
//! 1. write `<base>.log.cleaned` and its two indexes as `<base>.index.cleaned` /
//!    `<base>.timeindex.cleaned`, each fdatasync'ed, and sync the directory;
//! 2. write the intent `clean-swap` (below), tmp + fdatasync + rename + directory sync;
//! 3. delete the files of the group's other segments;
//! 4. rename the cleaned index files, then the cleaned `.log`, over the group's first segment
//!    (rename replaces atomically), and sync the directory;
//! 5. remove the intent and sync the directory.
//!
//! `open` finds an intent and redoes steps 3-5 (each is idempotent); without an intent it
//! deletes any `*.cleaned` file. So after a crash a group is either all old or all new.
//!
//! # `clean-swap`
//!
//! | offset | size | field                                            |
//! |-------:|-----:|--------------------------------------------------|
//! |      0 |    8 | base offset i64 BE of the group (its first segment) |
//! |      8 |    4 | count n u32 BE of the group's segments           |
//! |     12 | 8 × n | base offsets i64 BE of the group's segments     |
//! | 12 + 8n |   4 | CRC32C u32 BE of bytes 0..12 + 8n                 |
//!
//! # `cleaner-offset-checkpoint`
//!
//! Same layout as `log-start-offset`: the first offset a pass has not mapped yet.

use std::path::Path;
use std::rc::Rc;

use glommio::io::DmaFile;
use tern_protocol::batch::{peek_batch_total_bytes, validate_batch, BatchHeader};
use tern_protocol::records::{delete_horizon, filter_batch, for_each_record, Filtered};
use tern_protocol::types::{FilePosition, Offset, TimestampMs};

use crate::error::StorageIoError;
use crate::file_budget::SegmentFile;
use crate::index::SegmentIndexer;
use crate::index_cache::SegmentIndexes;
use crate::limits;
use crate::offset_map::OffsetMap;
use crate::segment::{
    self, align_up, log_file_name, offset_index_file_name, open_rw, read_vec, time_index_file_name,
    Segment,
};

use super::{injected_crash, remove_if_exists, sync_dir, Inner, Log};
use crate::checkpoint::{decode_checkpoint, encode_checkpoint};

pub const CLEAN_SWAP_FILE_NAME: &str = "clean-swap";
pub const CLEANER_CHECKPOINT_FILE_NAME: &str = "cleaner-offset-checkpoint";
const CLEANED_SUFFIX: &str = ".cleaned";

/// How dirty a log is: what `Log::cleanable` reports and the broker's cleaner ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleanable {
    /// Bytes of sealed segments below the cleaner checkpoint.
    pub clean_bytes: u64,
    /// Bytes of cleanable sealed segments from the checkpoint on.
    pub dirty_bytes: u64,
    /// Where the dirty part starts and where cleanable data ends.
    pub first_dirty: Offset,
    pub end: Offset,
    /// The earliest timestamp known in the dirty part (first batch of its first segment, or
    /// the segment's earliest indexed time), for `max.compaction.lag.ms`.
    pub dirty_since: Option<TimestampMs>,
    /// A tombstone's delete horizon that a pass may now act on (the earliest one retained).
    pub tombstones_due: bool,
}

impl Cleanable {
    /// `dirty / (clean + dirty)`, Kafka's cleanable ratio.
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }
}

/// What one pass is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct CleanOptions {
    /// Nothing at or above this offset is cleaned (the replicated high watermark).
    pub upto: Offset,
    pub now: TimestampMs,
    /// `min.compaction.lag.ms`: segments holding records newer than this are left alone.
    pub min_lag_ms: i64,
    /// `delete.retention.ms`: how long a tombstone stays after a pass first retains it.
    pub delete_retention_ms: i64,
    /// The largest group of segments rewritten into one (`segment.bytes`).
    pub segment_bytes: u64,
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_kept: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    pub segments_before: usize,
    pub segments_after: usize,
    /// The new cleaner checkpoint (unchanged when the pass did nothing or gave up).
    pub checkpoint: Offset,
    /// Keys in the map.
    pub keys: usize,
    /// False when the log changed underneath (retention, truncation, close) and the pass gave
    /// up before finishing; nothing is lost, a later pass starts again.
    pub completed: bool,
}

/// A sealed segment as a pass sees it, copied out of the state so no borrow is held.
#[derive(Clone)]
struct SealedView {
    base: Offset,
    next_base: Offset,
    size_bytes: u64,
    file: SegmentFile,
    max_timestamp: Option<TimestampMs>,
    first_timestamp: Option<TimestampMs>,
}

impl Log {
    /// The first offset no cleaning pass has mapped yet.
    pub fn cleaner_checkpoint(&self) -> Offset {
        let st = self.inner.state.borrow();
        st.cleaner_checkpoint.max(st.log_start)
    }

    /// How dirty the log is, counting only what a pass with these bounds could clean.
    pub fn cleanable(&self, upto: Offset, now: TimestampMs, min_lag_ms: i64) -> Cleanable {
        let (sealed, checkpoint, horizon) = {
            let st = self.inner.state.borrow();
            (
                self.inner.sealed_views(upto, now, min_lag_ms),
                st.cleaner_checkpoint.max(st.log_start),
                st.earliest_tombstone_horizon,
            )
        };
        let end = sealed.last().map_or(checkpoint, |s| s.next_base);
        let mut out = Cleanable {
            clean_bytes: 0,
            dirty_bytes: 0,
            first_dirty: checkpoint.min(end),
            end,
            dirty_since: None,
            tombstones_due: horizon.is_some_and(|h| now >= h),
        };
        for s in &sealed {
            if s.next_base <= checkpoint {
                out.clean_bytes += s.size_bytes;
            } else {
                out.dirty_bytes += s.size_bytes;
                if out.dirty_since.is_none() {
                    out.dirty_since = s.first_timestamp.or(s.max_timestamp);
                }
            }
        }
        out
    }

    /// Failure injection for tests: the next clean stops after `steps` swap steps as if the
    /// process died there (see the module documentation); the log keeps serving what it had.
    #[doc(hidden)]
    pub fn inject_clean_crash(&self, steps: u32) {
        self.inner.state.borrow_mut().clean_crash_after_steps = Some(steps);
    }

    /// One cleaning pass (see the module documentation). `map` is cleared first and left
    /// holding the pass's keys.
    pub async fn clean(
        &self,
        options: CleanOptions,
        map: &mut OffsetMap,
    ) -> Result<CleanReport, StorageIoError> {
        let inner = &self.inner;
        {
            let mut st = inner.state.borrow_mut();
            if st.cleaning || st.closed || st.failed.is_some() {
                return Ok(CleanReport::default());
            }
            st.cleaning = true;
        }
        let _guard = CleaningGuard { inner };
        map.clear();
        let sealed = inner.sealed_views(options.upto, options.now, options.min_lag_ms);
        let first_dirty = self.cleaner_checkpoint();
        let mut report = CleanReport {
            checkpoint: first_dirty,
            segments_before: sealed.len(),
            ..CleanReport::default()
        };
        let Some(end) = sealed.last().map(|s| s.next_base) else {
            report.completed = true;
            return Ok(report);
        };
        let due = inner
            .state
            .borrow()
            .earliest_tombstone_horizon
            .is_some_and(|h| options.now >= h);
        if first_dirty >= end && !due {
            report.completed = true;
            return Ok(report);
        }

        // 2. Map the dirty part.
        let mut map_end = end;
        'map: for s in sealed.iter().filter(|s| s.next_base > first_dirty) {
            let mut reader = SegmentReader::new(inner, s);
            while let Some((_, header, range)) = reader.next_batch().await? {
                if header.next_offset() <= first_dirty || header.is_control() {
                    continue;
                }
                if map.room() < header.record_count().max(0) as usize {
                    map_end = header.base_offset();
                    break 'map;
                }
                let bytes = &reader.window[range];
                let mapped = for_each_record(bytes, &header, |record| {
                    if let Some(key) = record.key {
                        if record.offset >= first_dirty {
                            map.put(key, record.offset);
                        }
                    }
                });
                if let Err(error) = mapped {
                    tracing::warn!(dir = %inner.dir.display(), offset = header.base_offset().0, %error,
                        "cleaner cannot read a batch's records; its keys are not mapped");
                }
                report.bytes_read += header.total_bytes() as u64;
                futures_lite::future::yield_now().await;
            }
        }
        if map_end <= first_dirty && !due {
            tracing::warn!(dir = %inner.dir.display(), map_bytes = map.memory_bytes(),
                "the cleaner's offset map cannot hold one batch's keys; raise log.cleaner.dedupe.buffer.size");
            return Ok(report);
        }
        report.keys = map.len();

        // 3-4. Rewrite and swap, group by group, oldest first: an older version of a key is
        // always gone before the group holding the tombstone that lets it go is swapped in.
        let rewrite: Vec<SealedView> = sealed.into_iter().filter(|s| s.base < map_end).collect();
        let mut earliest_horizon: Option<TimestampMs> = None;
        let mut i = 0;
        while i < rewrite.len() {
            let mut j = i + 1;
            let mut bytes = rewrite[i].size_bytes;
            while j < rewrite.len()
                && bytes + rewrite[j].size_bytes <= options.segment_bytes
                && rewrite[j].next_base.0 - rewrite[i].base.0 <= i64::from(u32::MAX)
            {
                bytes += rewrite[j].size_bytes;
                j += 1;
            }
            let group = &rewrite[i..j];
            let rules = Rules {
                map,
                first_dirty,
                now: options.now,
                delete_retention_ms: options.delete_retention_ms,
            };
            let written = inner.rewrite_group(group, &rules, &mut report).await?;
            if let Some(h) = written.earliest_horizon {
                earliest_horizon = Some(earliest_horizon.map_or(h, |e| e.min(h)));
            }
            if !inner.swap_group(group, written).await? {
                return Ok(report);
            }
            i = j;
        }
        let checkpoint = map_end.max(first_dirty);
        segment::write_file_atomically(
            &inner.dir,
            CLEANER_CHECKPOINT_FILE_NAME,
            &encode_checkpoint(checkpoint),
        )
        .await?;
        sync_dir(&inner.dir).await?;
        {
            let mut st = inner.state.borrow_mut();
            st.cleaner_checkpoint = checkpoint;
            st.earliest_tombstone_horizon = earliest_horizon;
            report.segments_after = st.segments.len() - 1;
        }
        report.checkpoint = checkpoint;
        report.completed = true;
        Ok(report)
    }
}

/// Clears `State::cleaning`, also when a pass fails or is cancelled.
struct CleaningGuard<'a> {
    inner: &'a Inner,
}

impl Drop for CleaningGuard<'_> {
    fn drop(&mut self) {
        self.inner.state.borrow_mut().cleaning = false;
    }
}

/// What decides a record's fate in a pass.
struct Rules<'a> {
    map: &'a OffsetMap,
    first_dirty: Offset,
    now: TimestampMs,
    delete_retention_ms: i64,
}

impl Rules<'_> {
    /// Whether `record` stays. `horizon` is its batch's delete horizon, if stamped.
    fn keep(
        &self,
        record: &tern_protocol::records::RecordView<'_>,
        horizon: Option<TimestampMs>,
    ) -> (bool, bool) {
        let Some(key) = record.key else {
            return (false, false);
        };
        let latest = self.map.get(key);
        if latest.is_some_and(|latest| latest > record.offset) {
            return (false, false);
        }
        if record.is_tombstone && horizon.is_some_and(|h| self.now >= h) {
            // Safe only when every older version of the key is gone by the end of this pass:
            // the tombstone was mapped now, or an earlier pass mapped it (it lies below the
            // dirty part) and removed them then.
            let mapped_now = latest == Some(record.offset);
            if mapped_now || record.offset < self.first_dirty {
                return (false, true);
            }
        }
        (true, false)
    }
}

/// A rewritten group waiting to be swapped in.
struct Written {
    file: DmaFile,
    size_bytes: u64,
    indexer: SegmentIndexer,
    earliest_horizon: Option<TimestampMs>,
}

impl Inner {
    /// Sealed segments a pass may clean, oldest first: those ending at or below `upto`, up to
    /// the first one holding a record newer than `now - min_lag_ms`.
    fn sealed_views(&self, upto: Offset, now: TimestampMs, min_lag_ms: i64) -> Vec<SealedView> {
        let st = self.state.borrow();
        let mut out = Vec::new();
        for pair in st.segments.windows(2) {
            let (s, next) = (&pair[0], &pair[1]);
            if next.base() > upto {
                break;
            }
            let max_timestamp = s.indexer.max_timestamp.map(|(_, ts)| ts);
            if min_lag_ms > 0
                && max_timestamp.is_some_and(|ts| now.0.saturating_sub(ts.0) < min_lag_ms)
            {
                break;
            }
            out.push(SealedView {
                base: s.base(),
                next_base: next.base(),
                size_bytes: s.size_bytes,
                file: s.file.clone(),
                max_timestamp,
                first_timestamp: s.indexer.first_timestamp.or_else(|| {
                    self.index_cache
                        .get(self.log_id, s.base())
                        .and_then(|indexes| indexes.time.entries().first().map(|e| e.timestamp))
                }),
            });
        }
        out
    }

    /// Writes `group`'s kept batches into `<base>.log.cleaned` with its indexes (step 1).
    async fn rewrite_group(
        &self,
        group: &[SealedView],
        rules: &Rules<'_>,
        report: &mut CleanReport,
    ) -> Result<Written, StorageIoError> {
        let base = group[0].base;
        let name = format!("{}{CLEANED_SUFFIX}", log_file_name(base));
        let path = self.dir.join(&name);
        remove_if_exists(&path).await?;
        let file = open_rw(&path).await?;
        let interval = self.state.borrow().config.index_interval_bytes;
        let mut out = OutputFile {
            file: &file,
            path: &path,
            pending: Vec::with_capacity(
                limits::CLEAN_IO_BYTES + limits::DMA_ALIGNMENT_BYTES as usize,
            ),
            flushed: 0,
        };
        let mut indexer = SegmentIndexer::new(base);
        let mut earliest_horizon: Option<TimestampMs> = None;
        for s in group {
            let mut reader = SegmentReader::new(self, s);
            while let Some((_, header, range)) = reader.next_batch().await? {
                let bytes = &reader.window[range];
                report.bytes_read += bytes.len() as u64;
                let position = out.position();
                let kept: std::borrow::Cow<'_, [u8]> = if header.is_control()
                    || header.is_transactional()
                {
                    bytes.into()
                } else {
                    match filter(bytes, &header, rules, report) {
                        Ok(Some(filtered)) => filtered,
                        Ok(None) => continue,
                        Err(error) => {
                            tracing::warn!(dir = %self.dir.display(), offset = header.base_offset().0, %error,
                                    "cleaner cannot read a batch's records; keeping it as it is");
                            bytes.into()
                        }
                    }
                };
                let kept_header = BatchHeader::parse_unchecked(&kept).map_err(|e| {
                    StorageIoError::new(
                        "re-reading a cleaned batch",
                        std::io::Error::other(e.to_string()),
                    )
                })?;
                // A horizon already passed that this pass kept belongs to a tombstone it could
                // not drop yet (beyond the map): a later pass that maps it will, so only future
                // horizons make the log due by time.
                if let Some(h) = delete_horizon(&kept_header).filter(|&h| h > rules.now) {
                    earliest_horizon = Some(earliest_horizon.map_or(h, |e| e.min(h)));
                }
                indexer.observe(&kept_header, position, interval);
                out.push(&kept).await?;
                futures_lite::future::yield_now().await;
            }
        }
        let size_bytes = out.finish().await?;
        indexer.next_offset = group[group.len() - 1].next_base;
        indexer.seal();
        report.bytes_written += size_bytes;
        file.fdatasync()
            .await
            .map_err(|e| StorageIoError::new(format!("syncing {}", path.display()), e))?;
        segment::write_file_atomically(
            &self.dir,
            &format!("{}{CLEANED_SUFFIX}", offset_index_file_name(base)),
            &indexer.offset_index.encode(),
        )
        .await?;
        segment::write_file_atomically(
            &self.dir,
            &format!("{}{CLEANED_SUFFIX}", time_index_file_name(base)),
            &indexer.time_index.encode(),
        )
        .await?;
        sync_dir(&self.dir).await?;
        Ok(Written {
            file,
            size_bytes,
            indexer,
            earliest_horizon,
        })
    }

    /// Steps 2-5 for one group, under the writer role. False when the log changed meanwhile
    /// (the cleaned files are removed and the pass gives up).
    async fn swap_group(
        &self,
        group: &[SealedView],
        written: Written,
    ) -> Result<bool, StorageIoError> {
        let _writer = self.acquire_writer().await;
        let base = group[0].base;
        // Where the group still stands, unchanged. Segments move only under the writer role
        // (roll, retention, truncation, close), held from here to the splice below.
        let first = {
            let st = self.state.borrow();
            st.segments
                .iter()
                .position(|s| s.base() == base)
                .filter(|&first| {
                    let olds = &st.segments[first..];
                    !st.closed
                        && st.failed.is_none()
                        && olds.len() > group.len()
                        && group
                            .iter()
                            .zip(olds)
                            .all(|(view, s)| s.base() == view.base && s.file.same(&view.file))
                })
        };
        let Some(first) = first else {
            let _ = written.file.close().await;
            remove_cleaned_files(&self.dir, base).await?;
            tracing::info!(dir = %self.dir.display(), segment = base.0, "log changed during cleaning; the pass gives up");
            return Ok(false);
        };
        // Readers reach the old segments until the splice below, and the swap renames over and
        // removes their files: their open files, held from here, keep serving the old bytes.
        for view in group {
            view.file.pin().await?;
        }
        // An injected crash leaves the files as a real one would; the log keeps serving what
        // it had in memory, and only a reopen sees the result.
        let mut steps = 1u32;
        let step = |steps: &mut u32| -> Result<(), StorageIoError> {
            let after = self.state.borrow().clean_crash_after_steps;
            injected_crash(after, *steps, "cleaning", &self.dir)
                .inspect_err(|_| self.state.borrow_mut().clean_crash_after_steps = None)?;
            *steps += 1;
            Ok(())
        };
        step(&mut steps)?;
        let bases: Vec<Offset> = group.iter().map(|s| s.base).collect();
        segment::write_file_atomically(&self.dir, CLEAN_SWAP_FILE_NAME, &encode_swap(base, &bases))
            .await?;
        sync_dir(&self.dir).await?;
        step(&mut steps)?;
        complete_swap(&self.dir, base, &bases, true).await?;
        step(&mut steps)?;
        remove_if_exists(&self.dir.join(CLEAN_SWAP_FILE_NAME)).await?;
        sync_dir(&self.dir).await?;

        let Written {
            file,
            size_bytes,
            mut indexer,
            ..
        } = written;
        let indexes = SegmentIndexes {
            offset: std::mem::take(&mut indexer.offset_index),
            time: std::mem::take(&mut indexer.time_index),
        };
        let olds: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let new = Segment {
                file: SegmentFile::sealed(
                    &self.dir.join(log_file_name(base)),
                    Some(file),
                    &self.file_budget,
                ),
                size_bytes,
                indexer,
                preallocated_bytes: 0,
                zeroed_bytes: size_bytes,
                tail: Vec::new(),
                first_append_ms: None,
            };
            let olds = st
                .segments
                .splice(first..first + group.len(), std::iter::once(new))
                .collect();
            // The tail cache may still hold the group's batches as appended: readers must see
            // the cleaned ones from now on. (Only written batches lie below a sealed segment's
            // end, so nothing unwritten is dropped.)
            let group_end = group[group.len() - 1].next_base;
            while st.cache.front().is_some_and(|c| c.next <= group_end) {
                if let Some(dropped) = st.cache.pop_front() {
                    st.cache_bytes -= dropped.bytes.len();
                    self.tail_budget.release(dropped.bytes.len());
                }
            }
            st.check_offsets();
            olds
        };
        for old in olds {
            self.index_cache.remove(self.log_id, old.base());
            old.file.close().await;
        }
        self.index_cache.insert(self.log_id, base, Rc::new(indexes));
        Ok(true)
    }
}

/// Filters one batch by `rules`: the bytes to keep (the original ones when nothing changed),
/// or None when no record stays.
fn filter<'b>(
    bytes: &'b [u8],
    header: &BatchHeader,
    rules: &Rules<'_>,
    report: &mut CleanReport,
) -> Result<Option<std::borrow::Cow<'b, [u8]>>, tern_protocol::records::RecordsError> {
    let horizon = delete_horizon(header);
    let (mut kept, mut removed, mut tombstones_removed) = (0u64, 0u64, 0u64);
    // A retained tombstone without a horizon gets one now (KIP-534).
    let new_horizon = TimestampMs(rules.now.0.saturating_add(rules.delete_retention_ms));
    let filtered = filter_batch(
        bytes,
        header,
        |record| {
            let (keep, tombstone_dropped) = rules.keep(record, horizon);
            if keep {
                kept += 1;
            } else {
                removed += 1;
                tombstones_removed += u64::from(tombstone_dropped);
            }
            keep
        },
        Some(new_horizon),
    )?;
    report.records_kept += kept;
    report.records_removed += removed;
    report.tombstones_removed += tombstones_removed;
    Ok(match filtered {
        Filtered::Empty => None,
        Filtered::Unchanged => Some(bytes.into()),
        Filtered::Rewritten(out) => Some(out.into()),
    })
}

/// Reads a sealed segment's batches in order, in windows of `CLEAN_IO_BYTES` (or one batch).
struct SegmentReader<'a> {
    inner: &'a Inner,
    segment: SegmentFile,
    /// Opened at the first read.
    file: Option<Rc<DmaFile>>,
    path: std::path::PathBuf,
    size_bytes: u64,
    position: u64,
    window: Vec<u8>,
    window_start: u64,
}

impl<'a> SegmentReader<'a> {
    fn new(inner: &'a Inner, s: &SealedView) -> SegmentReader<'a> {
        SegmentReader {
            inner,
            segment: s.file.clone(),
            file: None,
            path: inner.dir.join(log_file_name(s.base)),
            size_bytes: s.size_bytes,
            position: 0,
            window: Vec::new(),
            window_start: 0,
        }
    }

    /// The next batch: its position, header, and its bytes' range in `self.window`. A batch
    /// that does not validate ends the segment (it was validated when written; recovery would
    /// have cut it) with a warning.
    async fn next_batch(
        &mut self,
    ) -> Result<Option<(FilePosition, BatchHeader, std::ops::Range<usize>)>, StorageIoError> {
        if self.position >= self.size_bytes {
            return Ok(None);
        }
        let remaining = self.size_bytes - self.position;
        let mut at = (self.position - self.window_start) as usize;
        let fits = |window: &[u8], at: usize| {
            peek_batch_total_bytes(window.get(at..).unwrap_or(&[]))
                .ok()
                .filter(|total| at + total <= window.len())
        };
        let total = match fits(&self.window, at) {
            Some(total) => total,
            None => {
                if self.file.is_none() {
                    // Deleted meanwhile: the swap sees the log changed and gives up.
                    let Some(file) = self.segment.open().await? else {
                        return Ok(None);
                    };
                    self.file = Some(file);
                }
                let Some(file) = self.file.clone() else {
                    return Ok(None);
                };
                let len = limits::CLEAN_IO_BYTES.min(remaining as usize);
                self.window = read_vec(&file, FilePosition(self.position), len, &self.path).await?;
                self.window_start = self.position;
                at = 0;
                match peek_batch_total_bytes(&self.window) {
                    Ok(total) if total as u64 <= remaining => {
                        if total > self.window.len() {
                            self.window =
                                read_vec(&file, FilePosition(self.position), total, &self.path)
                                    .await?;
                        }
                        total
                    }
                    _ => {
                        self.warn_damaged();
                        return Ok(None);
                    }
                }
            }
        };
        let Some(bytes) = self.window.get(at..at + total) else {
            self.warn_damaged();
            return Ok(None);
        };
        let Ok(header) = validate_batch(bytes) else {
            self.warn_damaged();
            return Ok(None);
        };
        let position = FilePosition(self.position);
        self.position += total as u64;
        Ok(Some((position, header, at..at + total)))
    }

    fn warn_damaged(&self) {
        tracing::warn!(dir = %self.inner.dir.display(), segment = %self.path.display(), position = self.position,
            "cleaner found an invalid batch; the rest of the segment is left out of this pass");
    }
}

/// The cleaned file being written: whole aligned pieces go out as they fill.
struct OutputFile<'a> {
    file: &'a DmaFile,
    path: &'a Path,
    pending: Vec<u8>,
    /// Bytes already written (a multiple of the alignment).
    flushed: u64,
}

impl OutputFile<'_> {
    fn position(&self) -> u64 {
        self.flushed + self.pending.len() as u64
    }

    async fn push(&mut self, bytes: &[u8]) -> Result<(), StorageIoError> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= limits::CLEAN_IO_BYTES {
            let whole = segment::align_down(self.pending.len() as u64) as usize;
            self.write(whole).await?;
            self.pending.drain(..whole);
        }
        Ok(())
    }

    async fn write(&mut self, len: usize) -> Result<(), StorageIoError> {
        let aligned = align_up(len as u64) as usize;
        let mut buf = self.file.alloc_dma_buffer(aligned);
        buf.as_bytes_mut()[..len].copy_from_slice(&self.pending[..len]);
        buf.as_bytes_mut()[len..].fill(0);
        let written = self
            .file
            .write_at(buf, self.flushed)
            .await
            .map_err(|e| StorageIoError::new(format!("writing {}", self.path.display()), e))?;
        if written != aligned {
            return Err(StorageIoError::new(
                format!("short write to {}", self.path.display()),
                std::io::Error::from(std::io::ErrorKind::WriteZero),
            ));
        }
        self.flushed += len as u64;
        Ok(())
    }

    /// Writes the rest and cuts the file to its logical size, which it returns.
    async fn finish(mut self) -> Result<u64, StorageIoError> {
        let len = self.pending.len();
        if len > 0 {
            self.write(len).await?;
        }
        let size = self.flushed;
        self.file
            .truncate(size)
            .await
            .map_err(|e| StorageIoError::new(format!("truncating {}", self.path.display()), e))?;
        Ok(size)
    }
}

fn encode_swap(base: Offset, bases: &[Offset]) -> Vec<u8> {
    let mut out = base.0.to_be_bytes().to_vec();
    out.extend_from_slice(&(bases.len() as u32).to_be_bytes());
    for b in bases {
        out.extend_from_slice(&b.0.to_be_bytes());
    }
    out.extend_from_slice(&crc32c::crc32c(&out).to_be_bytes());
    out
}

fn decode_swap(bytes: &[u8]) -> Option<(Offset, Vec<Offset>)> {
    let body_len = bytes.len().checked_sub(4)?;
    let (body, crc) = bytes.split_at(body_len);
    if u32::from_be_bytes(crc.try_into().ok()?) != crc32c::crc32c(body) || body.len() < 12 {
        return None;
    }
    let base = Offset(i64::from_be_bytes(body[..8].try_into().ok()?));
    let count = u32::from_be_bytes(body[8..12].try_into().ok()?) as usize;
    if body.len() != 12 + 8 * count {
        return None;
    }
    let bases = body[12..]
        .chunks_exact(8)
        .map(|c| Some(Offset(i64::from_be_bytes(c.try_into().ok()?))))
        .collect::<Option<Vec<Offset>>>()?;
    Some((base, bases))
}

/// Steps 3-4: deletes the group's other segments and renames the cleaned files over the
/// first. Idempotent, so `open` can redo it after a crash at any point.
async fn complete_swap(
    dir: &Path,
    base: Offset,
    bases: &[Offset],
    sync: bool,
) -> Result<(), StorageIoError> {
    for &old in bases.iter().filter(|&&b| b != base) {
        for name in [
            offset_index_file_name(old),
            time_index_file_name(old),
            log_file_name(old),
        ] {
            remove_if_exists(&dir.join(name)).await?;
        }
    }
    for name in [
        offset_index_file_name(base),
        time_index_file_name(base),
        log_file_name(base),
    ] {
        let cleaned = dir.join(format!("{name}{CLEANED_SUFFIX}"));
        if cleaned.exists() {
            glommio::io::rename(&cleaned, dir.join(&name))
                .await
                .map_err(|e| StorageIoError::new(format!("renaming {}", cleaned.display()), e))?;
        }
    }
    if sync {
        sync_dir(dir).await?;
    }
    Ok(())
}

async fn remove_cleaned_files(dir: &Path, base: Offset) -> Result<(), StorageIoError> {
    for name in [
        offset_index_file_name(base),
        time_index_file_name(base),
        log_file_name(base),
    ] {
        remove_if_exists(&dir.join(format!("{name}{CLEANED_SUFFIX}"))).await?;
    }
    Ok(())
}

/// At open, before segments are listed: completes a swap whose intent is durable, removes
/// cleaned files of a pass that never got that far (and `*.deleted` files retention left),
/// and returns the cleaner checkpoint.
pub(super) async fn recover_cleaning(dir: &Path) -> Result<Offset, StorageIoError> {
    let intent = dir.join(CLEAN_SWAP_FILE_NAME);
    if let Some(bytes) = segment::read_small_file(&intent).await? {
        match decode_swap(&bytes) {
            Some((base, bases)) => {
                tracing::info!(dir = %dir.display(), segment = base.0, "completing an interrupted cleaner swap");
                complete_swap(dir, base, &bases, false).await?;
            }
            None => {
                tracing::warn!(dir = %dir.display(), "damaged clean-swap intent; the old segments stand");
            }
        }
        sync_dir(dir).await?;
        remove_if_exists(&intent).await?;
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StorageIoError::new(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| StorageIoError::new(format!("listing {}", dir.display()), e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(CLEANED_SUFFIX)
        {
            remove_if_exists(&entry.path()).await?;
        }
    }
    Ok(
        match segment::read_small_file(&dir.join(CLEANER_CHECKPOINT_FILE_NAME)).await? {
            Some(bytes) => decode_checkpoint(&bytes).unwrap_or(Offset(0)),
            None => Offset(0),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_intents_round_trip_and_reject_damage() {
        let bytes = encode_swap(Offset(10), &[Offset(10), Offset(20), Offset(35)]);
        assert_eq!(
            decode_swap(&bytes),
            Some((Offset(10), vec![Offset(10), Offset(20), Offset(35)]))
        );
        let mut damaged = bytes.clone();
        damaged[13] ^= 1;
        assert_eq!(decode_swap(&damaged), None);
        assert_eq!(decode_swap(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_swap(&[]), None);
    }
}

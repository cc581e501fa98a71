//! Opening a log: listing the segments, recovering them (a clean-shutdown marker lets the
//! active segment skip the full scan; without one it is scanned batch by batch and a torn tail
//! truncated), rebuilding missing or damaged indexes, and reading the `log-start-offset`
//! checkpoint.
//!
//! What it must never do: trust a byte it reads (every batch is validated and offsets must
//! increase; compaction leaves gaps between batches), or keep data past the first invalid batch
//! of the active segment.
//!
//! # `log-start-offset`
//!
//! | offset | size | field                                 |
//! |-------:|-----:|---------------------------------------|
//! |      0 |    8 | log start offset i64 BE               |
//! |      8 |    4 | CRC32C u32 BE of bytes 0..8           |

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use tern_protocol::types::{FilePosition, Offset};

use crate::config::LogConfig;
use crate::error::{OpenError, StorageIoError, TruncateError};
use crate::file_budget::{FileBudget, SegmentFile};
use crate::index::{OffsetIndex, SegmentIndexer, TimeIndex};
use crate::index_cache::{IndexCache, SegmentIndexes};
use crate::leader_epoch::LeaderEpochCache;
use crate::limits;
use crate::notify::{AckWaiters, Notify};
use crate::segment::{
    self, align_down, log_file_name, offset_index_file_name, open_rw, parse_file_name, read_vec,
    time_index_file_name, Segment,
};

use super::commit::spawn_interval_flusher;
use crate::checkpoint::{decode_checkpoint, decode_index_checkpoint};

use super::{
    io_ctx, remove_if_exists, sync_dir, Inner, Log, LogStats, State, TailBudget,
    CLEAN_SHUTDOWN_FILE_NAME, INDEX_CHECKPOINT_FILE_NAME, LOG_START_OFFSET_FILE_NAME,
};

/// How a segment's indexer came back at open.
enum Recovered {
    /// Its persisted indexes, whole (a sealed segment, or a clean shutdown's active one).
    Loaded(SegmentIndexer),
    /// The active segment after a crash: its checkpointed indexes, then a scan of the rest;
    /// with the valid length found and whether more than zeros follow it.
    Scanned(SegmentIndexer, u64, bool),
}

/// After a crash, the active segment's indexer from the indexes `checkpoint_active_indexes`
/// persisted (all below the durable end then) and a scan from their last entry: the entry is
/// replayed, so the batch there must validate; if it does not, or the files are missing or
/// damaged, None (the caller scans the whole segment).
async fn recover_from_checkpointed_indexes(
    dir: &std::path::Path,
    file: &glommio::io::DmaFile,
    path: &std::path::Path,
    base: Offset,
    file_bytes: u64,
    interval: u32,
) -> Result<Option<Recovered>, StorageIoError> {
    let Some(bytes) = segment::read_small_file(&dir.join(INDEX_CHECKPOINT_FILE_NAME)).await? else {
        return Ok(None);
    };
    let Some((checkpoint_base, offsets, times)) = decode_index_checkpoint(&bytes) else {
        tracing::warn!(dir = %dir.display(), "damaged index checkpoint; scanning the whole active segment");
        return Ok(None);
    };
    if checkpoint_base != base {
        // Written for a segment since sealed (a crash between roll and the next checkpoint).
        return Ok(None);
    }
    let (Ok(offsets), Ok(times)) = (
        OffsetIndex::decode(offsets, file_bytes.max(1)),
        TimeIndex::decode(times, None),
    ) else {
        tracing::warn!(dir = %dir.display(), "index checkpoint out of step with the segment; scanning it whole");
        return Ok(None);
    };
    let Some(last) = offsets.entries().last().copied() else {
        return Ok(None);
    };
    // As the appender stood just before it observed the batch at `last`: the replay adds
    // that entry again and every later one.
    let mut indexer = SegmentIndexer::new(base);
    for e in &offsets.entries()[..offsets.entries().len() - 1] {
        indexer.offset_index.push(*e);
    }
    for e in times.entries() {
        if e.relative_offset < last.relative_offset {
            indexer.time_index.maybe_push(*e);
        }
    }
    indexer.max_timestamp = indexer
        .time_index
        .last()
        .map(|e| (base.plus(i64::from(e.relative_offset)), e.timestamp));
    indexer.next_offset = base.plus(i64::from(last.relative_offset));
    indexer.bytes_since_entry = u64::MAX;
    // The segment's first batch's time (for roll by `segment_ms`), from its header.
    let mut at = FilePosition(0);
    indexer.first_timestamp = segment::walk_headers(file, path, &mut at, file_bytes, |_| true)
        .await
        .ok()
        .flatten()
        .map(|(_, header)| header.max_timestamp());
    let start = FilePosition(u64::from(last.position));
    let outcome = segment::scan(file, path, indexer, start, file_bytes, interval, true).await?;
    if outcome.valid_bytes <= start.0 {
        tracing::warn!(segment = %path.display(), position = start.0,
            "no valid batch at the checkpointed index's last entry; scanning the whole segment");
        return Ok(None);
    }
    let torn = outcome.torn(file_bytes);
    Ok(Some(Recovered::Scanned(
        outcome.indexer,
        outcome.valid_bytes,
        torn,
    )))
}

impl Log {
    /// Opens (creating if missing) the log in `dir` and recovers it: without a clean-shutdown
    /// marker the active segment is scanned batch by batch and a torn tail truncated; missing or
    /// damaged indexes are rebuilt.
    pub async fn open(dir: PathBuf, config: LogConfig) -> Result<Log, OpenError> {
        Log::open_with_cache(
            dir,
            config,
            IndexCache::new(limits::INDEX_CACHE_BYTES_DEFAULT),
        )
        .await
    }

    /// `open`, keeping sealed segments' indexes in `index_cache` (one per shard in the broker).
    pub async fn open_with_cache(
        dir: PathBuf,
        config: LogConfig,
        index_cache: Rc<IndexCache>,
    ) -> Result<Log, OpenError> {
        Log::open_with_caches(
            dir,
            config,
            index_cache,
            TailBudget::new(usize::MAX),
            FileBudget::new(limits::OPEN_SEALED_FILES_DEFAULT),
        )
        .await
    }

    /// `open_with_cache`, the tail cache also counting against `tail_budget` and sealed
    /// segments' open files against `file_budget` (one of each per shard in the broker).
    pub async fn open_with_caches(
        dir: PathBuf,
        config: LogConfig,
        index_cache: Rc<IndexCache>,
        tail_budget: Rc<TailBudget>,
        file_budget: Rc<FileBudget>,
    ) -> Result<Log, OpenError> {
        let log_id = index_cache.register_log();
        config.validate().map_err(OpenError::InvalidConfig)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageIoError::new(format!("creating {}", dir.display()), e))?;
        segment::prime_direct_io(&dir).await?;
        let cleaner_checkpoint = super::clean::recover_cleaning(&dir).await?;
        let marker = dir.join(CLEAN_SHUTDOWN_FILE_NAME);
        let clean = marker.exists();
        let mut bases = Vec::new();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| StorageIoError::new(format!("listing {}", dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| StorageIoError::new(format!("listing {}", dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name == ".direct-io-probe" {
                // A checkpoint or index write interrupted before its rename: the old file wins.
                remove_if_exists(&entry.path()).await?;
                continue;
            }
            if let Some((base, "log")) = parse_file_name(&name) {
                bases.push(base);
            }
        }
        bases.sort();
        let checkpoint =
            match segment::read_small_file(&dir.join(LOG_START_OFFSET_FILE_NAME)).await? {
                Some(bytes) => decode_checkpoint(&bytes),
                None => None,
            };
        if bases.is_empty() {
            bases.push(checkpoint.unwrap_or(Offset(0)).max(Offset(0)));
        }
        let interval = config.index_interval_bytes;
        let mut segments = Vec::with_capacity(bases.len());
        for (i, &base) in bases.iter().enumerate() {
            let is_active = i + 1 == bases.len();
            let path = dir.join(log_file_name(base));
            let file = open_rw(&path).await?;
            let file_bytes = file
                .file_size()
                .await
                .map_err(io_ctx(format!("stat {}", path.display())))?;
            let mut loaded = None;
            if !clean && is_active {
                // A crash: the indexes `checkpoint_active_indexes` last persisted cover durable
                // batches, so only the stretch from their last entry on needs a scan.
                if let Some(outcome) = recover_from_checkpointed_indexes(
                    &dir, &file, &path, base, file_bytes, interval,
                )
                .await?
                {
                    loaded = Some(outcome);
                }
            }
            if loaded.is_none() && (clean || !is_active) {
                if let Some((offset_index, time_index)) =
                    segment::load_indexes(&dir, base, file_bytes.max(1)).await?
                {
                    let mut indexer = SegmentIndexer::new(base);
                    indexer.max_timestamp = time_index
                        .last()
                        .map(|e| (base.plus(i64::from(e.relative_offset)), e.timestamp));
                    indexer.offset_index = offset_index;
                    indexer.time_index = time_index;
                    loaded = Some(Recovered::Loaded(indexer));
                }
            }
            let (indexer, size_bytes) = match loaded {
                Some(Recovered::Scanned(indexer, valid_bytes, torn)) => {
                    if torn {
                        tracing::warn!(segment = %path.display(), position = valid_bytes, file_bytes,
                            "truncating segment at the last valid batch (scanned from its checkpointed index)");
                    }
                    (indexer, valid_bytes)
                }
                Some(Recovered::Loaded(mut indexer)) if is_active => {
                    // Clean shutdown: only the stretch after the last index entry is scanned, to
                    // find the log end offset.
                    let floor = indexer.offset_index.entries().last().copied();
                    let (position, next) = floor
                        .map(|e| {
                            (
                                FilePosition(u64::from(e.position)),
                                base.plus(i64::from(e.relative_offset)),
                            )
                        })
                        .unwrap_or((FilePosition(0), base));
                    indexer.next_offset = next;
                    let outcome =
                        segment::scan(&file, &path, indexer, position, file_bytes, interval, false)
                            .await?;
                    if outcome.torn(file_bytes) {
                        tracing::warn!(segment = %path.display(), position = outcome.valid_bytes, reason = ?outcome.stopped_by,
                            "truncating invalid tail of a cleanly closed segment");
                    }
                    (outcome.indexer, outcome.valid_bytes)
                }
                Some(Recovered::Loaded(mut indexer)) => {
                    indexer.next_offset = bases[i + 1];
                    (indexer, file_bytes)
                }
                None => {
                    let outcome = segment::scan(
                        &file,
                        &path,
                        SegmentIndexer::new(base),
                        FilePosition(0),
                        file_bytes,
                        interval,
                        true,
                    )
                    .await?;
                    if outcome.torn(file_bytes) {
                        tracing::warn!(segment = %path.display(), position = outcome.valid_bytes, file_bytes, reason = ?outcome.stopped_by,
                            "truncating segment at the last valid batch");
                    }
                    let mut indexer = outcome.indexer;
                    if !is_active {
                        indexer.seal();
                        segment::persist_indexes(&dir, &indexer).await?;
                        // A cleaned segment may end before the next one starts.
                        indexer.next_offset = bases[i + 1];
                    }
                    (indexer, outcome.valid_bytes)
                }
            };
            if size_bytes < file_bytes {
                file.truncate(size_bytes)
                    .await
                    .map_err(io_ctx(format!("truncating {}", path.display())))?;
                // The active segment's cut is not synced here: what follows `size_bytes` was
                // never acknowledged, and the first fdatasync of this file after an append
                // (before that append is acknowledged) commits the new size with it; a crash
                // before then finds the same tail and cuts it again. A sealed segment's size
                // is trusted at the next open, so its cut is made durable now.
                if !is_active {
                    file.fdatasync()
                        .await
                        .map_err(io_ctx(format!("syncing {}", path.display())))?;
                }
            }
            let tail = if is_active && size_bytes % limits::DMA_ALIGNMENT_BYTES != 0 {
                let start = align_down(size_bytes);
                read_vec(
                    &file,
                    FilePosition(start),
                    (size_bytes - start) as usize,
                    &path,
                )
                .await?
            } else {
                Vec::new()
            };
            if is_active {
                // Stale indexes of the active segment would disagree with a rebuilt one.
                remove_if_exists(&dir.join(offset_index_file_name(base))).await?;
                remove_if_exists(&dir.join(time_index_file_name(base))).await?;
            }
            let mut indexer = indexer;
            if !is_active {
                // Sealed: its indexes are on disk; memory holds them only within the cache's
                // budget.
                let indexes = SegmentIndexes {
                    offset: std::mem::take(&mut indexer.offset_index),
                    time: std::mem::take(&mut indexer.time_index),
                };
                index_cache.insert(log_id, base, Rc::new(indexes));
            }
            let file = if is_active {
                SegmentFile::active(&path, file, &file_budget)
            } else {
                SegmentFile::sealed(&path, Some(file), &file_budget)
            };
            segments.push(Segment {
                file,
                size_bytes,
                indexer,
                preallocated_bytes: 0,
                zeroed_bytes: size_bytes,
                tail,
                first_append_ms: None,
            });
        }
        if clean {
            remove_if_exists(&marker).await?;
        }
        sync_dir(&dir).await?;
        let leo = segments
            .last()
            .map(|s| s.indexer.next_offset)
            .unwrap_or(Offset(0));
        let first_base = segments[0].base();
        let log_start = checkpoint.unwrap_or(first_base).max(first_base).min(leo);
        let state = State {
            config,
            segments,
            log_start,
            leo,
            written_end: leo,
            durable_end: leo,
            ack_end: leo,
            pending: VecDeque::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            writer_busy: false,
            index_io_busy: false,
            syncs_in_flight: 0,
            sync_issued_end: leo,
            failed: None,
            closed: false,
            unsynced_messages: 0,
            last_sync: Instant::now(),
            stats: LogStats::default(),
            inject_write_failures: 0,
            truncating: false,
            truncations: 0,
            truncate_crash_after_steps: None,
            epochs: LeaderEpochCache::default(),
            epochs_dirty: false,
            cleaner_checkpoint,
            cleaning: false,
            earliest_tombstone_horizon: None,
            clean_crash_after_steps: None,
            indexes_checkpointed: (Offset(-1), 0),
            write_in_flight_end: 0,
            zeroing: None,
            zero_scheduled: false,
            zeroing_holds: 0,
            zero_paused_until: None,
            last_write_ms: 0,
            zeroing_delay: None,
            read_ahead: None,
        };
        state.check_offsets();
        let inner = Rc::new_cyclic(|this| Inner {
            dir,
            state: RefCell::new(state),
            notify: Notify::default(),
            ack_waiters: AckWaiters::default(),
            index_cache,
            log_id,
            this: this.clone(),
            tail_budget,
            file_budget,
        });
        inner.recover_epochs().await?;
        inner.complete_truncation().await.map_err(|e| match e {
            TruncateError::Storage(e) => e,
            other => StorageIoError::new(
                "completing an interrupted truncation",
                std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
            ),
        })?;
        spawn_interval_flusher(Rc::downgrade(&inner));
        Ok(Log { inner })
    }
}

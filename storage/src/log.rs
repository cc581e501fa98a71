//! The partition log: append with group commit, the tail cache, reads, timestamp lookups,
//! roll, retention, delete_records, recovery on open, and clean shutdown.
//!
//! Concurrency contract: a `Log` is `!Send` and owned by one shard. All methods take `&self`
//! and may be called from many tasks of that shard's executor at once. State lives in one
//! `RefCell` that is never borrowed across an `.await`. All writes to segment files, rolls,
//! checkpoint writes and segment deletions are done by whichever task holds the *writer role*
//! (a flag plus a [`Notify`]); the fdatasync that acknowledges appends runs under a separate
//! *sync role*, so the next group's write overlaps the previous group's fdatasync. Appenders that
//! find both roles taken wait; appends arriving during one fdatasync share the next one (group
//! commit). Batches stay in the `pending` queue until written, so a
//! cancelled round is simply redone at the same file position.
//!
//! What it must never do: copy record bytes on the tail-cache read path, acknowledge an append
//! before the fdatasync covering it (EveryAppend), trust bytes read back from disk, or call
//! blocking std::fs on the append/read path (open and remove are the exceptions, at start-up and
//! DeleteTopics).
//!
//! Memory: the log keeps the tail cache, the pending batches and the active segment's indexes;
//! a sealed segment's indexes are persisted at roll and held only in the shard's
//! [`IndexCache`], looked up through `Inner::index_floor`.
//!
//! Directory layout: `<base:020>.log`, `.index`, `.timeindex` per segment (see `segment` and
//! `index`), `log-start-offset` (checkpoint, below), `.clean-shutdown` (empty marker written
//! last by `close`, removed by `open`).
//!
//! # `log-start-offset`
//!
//! | offset | size | field                                 |
//! |-------:|-----:|---------------------------------------|
//! |      0 |    8 | log start offset i64 BE               |
//! |      8 |    4 | CRC32C u32 BE of bytes 0..8           |

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_protocol::batch::{
    set_base_offset, set_log_append_time, set_partition_leader_epoch, BatchError, BatchHeader,
    BatchIter,
};
use tern_protocol::records::first_at_or_after;
use tern_protocol::types::{FilePosition, LeaderEpoch, Offset, TimestampMs};

use crate::config::{FlushPolicy, LogConfig, TimestampType};
use crate::error::{AppendError, DeleteError, OpenError, ReadError, StorageIoError};
use crate::index::{OffsetEntry, OffsetIndex, SegmentIndexer, TimeIndex};
use crate::index_cache::{IndexCache, SegmentIndexes};
use crate::limits;
use crate::notify::{AckWaiters, Notify};
use crate::segment::{
    self, align_down, align_up, log_file_name, offset_index_file_name, open_rw, parse_file_name,
    read_vec, time_index_file_name, walk_headers, walk_to_offset, Segment, WalkError,
};

pub const CLEAN_SHUTDOWN_FILE_NAME: &str = ".clean-shutdown";
pub const LOG_START_OFFSET_FILE_NAME: &str = "log-start-offset";

/// Whole batches returned by [`Log::read`]. `chunks` are shared, not copied, when they come from
/// the tail cache.
#[derive(Debug, Clone)]
pub struct ReadSlice {
    pub chunks: Vec<Bytes>,
    /// Total bytes in `chunks`.
    pub len: usize,
    /// Base offset of the first batch returned (may be below the requested offset).
    pub first_offset: Offset,
    /// The offset after the last batch returned; the requested offset when empty.
    pub next_offset: Offset,
}

/// Where the bytes of a read may travel; decides whether cold data is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// The result may cross to another shard's thread: cold data is copied once out of the
    /// DMA read buffer into shareable memory.
    CrossThread,
    /// The caller consumes and drops the result on this shard's thread: cold data stays in the
    /// DMA read buffer, handed over without a copy. Dropping such bytes on another thread
    /// aborts the process (it would otherwise corrupt glommio's thread-local buffer pool).
    SameThread,
}

/// A DMA read buffer lent out as `Bytes` to code on the same thread.
struct ThreadBoundRead {
    result: glommio::io::ReadResult,
    len: usize,
    thread: std::thread::ThreadId,
}

// SAFETY: `ReadMode::SameThread` results are only produced for callers on the reading thread
// (the broker passes it only when the connection lives on the owner shard), and `Drop` below
// aborts before the inner buffer is touched if that promise is ever broken, so the non-Send
// glommio buffer is never used from two threads.
unsafe impl Send for ThreadBoundRead {}

impl AsRef<[u8]> for ThreadBoundRead {
    fn as_ref(&self) -> &[u8] {
        &self.result[..self.len]
    }
}

impl Drop for ThreadBoundRead {
    fn drop(&mut self) {
        if std::thread::current().id() != self.thread {
            eprintln!(
                "tern-storage: a same-thread read buffer was dropped on another thread; aborting"
            );
            std::process::abort();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The broker's timestamp for LogAppendTime topics, -1 otherwise.
    pub log_append_time: TimestampMs,
    pub log_start_offset: Offset,
}

/// Counters of one log, for metrics and the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogStats {
    /// Bytes served from the tail cache by sharing the appended buffers.
    pub bytes_zero_copy: u64,
    /// Bytes served from disk, copied once out of the DMA read buffer.
    pub bytes_copied: u64,
    pub appends: u64,
    pub batches_written: u64,
    pub bytes_written: u64,
    pub dma_writes: u64,
    pub fdatasyncs: u64,
    pub rolls: u64,
    pub tail_cache_bytes: usize,
    pub segments: usize,
    /// Memory held by the active segment's indexes (sealed ones are in the `IndexCache`).
    pub active_index_bytes: usize,
}

struct PendingBatch {
    bytes: Bytes,
    header: BatchHeader,
    now_ms: i64,
}

struct CachedBatch {
    base: Offset,
    next: Offset,
    bytes: Bytes,
}

struct State {
    config: LogConfig,
    /// Sorted by base offset; the last one is the active segment. Never empty.
    segments: Vec<Segment>,
    log_start: Offset,
    /// Log end offset: offsets are assigned up to here.
    leo: Offset,
    /// Every batch below this is written to a segment file.
    written_end: Offset,
    /// Every batch below this is covered by an fdatasync.
    durable_end: Offset,
    /// Acknowledged-able prefix; monotonic.
    hw: Offset,
    pending: VecDeque<PendingBatch>,
    cache: VecDeque<CachedBatch>,
    cache_bytes: usize,
    writer_busy: bool,
    /// Appenders running an fdatasync (the sync role), at most `limits::SYNCS_IN_FLIGHT_MAX`.
    syncs_in_flight: u32,
    /// The end of written data that some issued fdatasync covers (complete or in flight).
    sync_issued_end: Offset,
    failed: Option<String>,
    closed: bool,
    unsynced_messages: u64,
    last_sync: Instant,
    stats: LogStats,
    /// Failure injection: the next this-many segment writes fail with ENOSPC (tests only).
    inject_write_failures: u32,
}

/// What a waiting appender can do next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Write,
    Sync,
}

/// The segment appends go to: the last one. A log always has one (`open` creates it, `roll`
/// replaces it, retention and DeleteRecords never delete it); only `close` and `remove`, which
/// consume the log, empty the list.
fn active(segments: &[Segment]) -> &Segment {
    segments.last().expect("a log always has an active segment")
}

fn active_mut(segments: &mut [Segment]) -> &mut Segment {
    segments
        .last_mut()
        .expect("a log always has an active segment")
}

impl State {
    /// Whether an Interval policy's fdatasync is due (EveryAppend: whenever data is unsynced).
    fn sync_due(&self) -> bool {
        self.written_end > self.durable_end.max(self.sync_issued_end)
            && match self.config.flush {
                FlushPolicy::EveryAppend => true,
                FlushPolicy::Interval { messages, ms } => {
                    self.unsynced_messages >= messages
                        || self.last_sync.elapsed() >= Duration::from_millis(ms)
                }
            }
    }

    /// The role a waiting appender may take now: write pending batches, or sync written ones.
    fn next_step(&self) -> Option<Step> {
        if !self.writer_busy && !self.pending.is_empty() {
            Some(Step::Write)
        } else if self.syncs_in_flight < limits::SYNCS_IN_FLIGHT_MAX
            && self.config.flush == FlushPolicy::EveryAppend
            && self.sync_due()
        {
            Some(Step::Sync)
        } else {
            None
        }
    }
}

struct Inner {
    dir: PathBuf,
    state: RefCell<State>,
    notify: Notify,
    ack_waiters: AckWaiters,
    /// Where sealed segments' indexes are kept (shared by the shard's logs), under `log_id`.
    index_cache: Rc<IndexCache>,
    log_id: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.index_cache.remove_log(self.log_id);
    }
}

/// A partition's log. See the module documentation for the concurrency contract.
pub struct Log {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.inner.dir).finish()
    }
}

/// Releases the writer role when dropped, also when the holding future is cancelled.
struct WriterGuard<'a> {
    inner: &'a Inner,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let hw = {
            let mut st = self.inner.state.borrow_mut();
            st.writer_busy = false;
            st.hw
        };
        self.inner.notify.notify_all();
        // Hand the role to the appender next in line, if any waits.
        self.inner.ack_waiters.wake_satisfied(hw.0, true);
    }
}

/// Releases the sync role when dropped and hands a turn to the next waiting appender.
struct SyncGuard<'a> {
    inner: &'a Inner,
}

impl Drop for SyncGuard<'_> {
    fn drop(&mut self) {
        let hw = {
            let mut st = self.inner.state.borrow_mut();
            st.syncs_in_flight -= 1;
            st.hw
        };
        self.inner.ack_waiters.wake_satisfied(hw.0, true);
    }
}

/// Unregisters a waiting appender. If it was cancelled after being woken as next in line, it
/// passes that turn on so pending batches are not stranded.
struct AckWaitGuard<'a> {
    inner: &'a Inner,
    key: (i64, u64),
    done: bool,
}

impl Drop for AckWaitGuard<'_> {
    fn drop(&mut self) {
        let was_registered = self.inner.ack_waiters.remove(self.key);
        if !self.done && !was_registered {
            let (can_progress, hw) = {
                let st = self.inner.state.borrow();
                (st.next_step().is_some(), st.hw)
            };
            if can_progress {
                self.inner.ack_waiters.wake_satisfied(hw.0, true);
            }
        }
    }
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(glommio::GlommioError<()>) -> StorageIoError {
    let context = context.into();
    move |e| StorageIoError::new(context, e)
}

fn failed_error(message: &str) -> StorageIoError {
    StorageIoError::new(
        "using a log that failed earlier",
        std::io::Error::other(message.to_string()),
    )
}

fn encode_checkpoint(offset: Offset) -> Vec<u8> {
    let mut out = offset.0.to_be_bytes().to_vec();
    out.extend_from_slice(&crc32c::crc32c(&out).to_be_bytes());
    out
}

fn decode_checkpoint(bytes: &[u8]) -> Option<Offset> {
    if bytes.len() != limits::CHECKPOINT_BYTES {
        return None;
    }
    let crc = u32::from_be_bytes(bytes[8..12].try_into().ok()?);
    if crc != crc32c::crc32c(&bytes[..8]) {
        return None;
    }
    Some(Offset(i64::from_be_bytes(bytes[..8].try_into().ok()?)))
}

async fn sync_dir(dir: &Path) -> Result<(), StorageIoError> {
    let d = glommio::io::Directory::open(dir)
        .await
        .map_err(io_ctx(format!("opening directory {}", dir.display())))?;
    d.sync()
        .await
        .map_err(io_ctx(format!("syncing directory {}", dir.display())))?;
    let _ = d.close().await;
    Ok(())
}

async fn remove_if_exists(path: &Path) -> Result<(), StorageIoError> {
    match glommio::io::remove(path).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let e: std::io::Error = e.into();
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(StorageIoError::new(
                    format!("removing {}", path.display()),
                    e,
                ))
            }
        }
    }
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
        let log_id = index_cache.register_log();
        config.validate().map_err(OpenError::InvalidConfig)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageIoError::new(format!("creating {}", dir.display()), e))?;
        segment::prime_direct_io(&dir).await?;
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
            if clean || !is_active {
                if let Some((offset_index, time_index)) =
                    segment::load_indexes(&dir, base, file_bytes.max(1)).await?
                {
                    let mut indexer = SegmentIndexer::new(base);
                    indexer.max_timestamp = time_index
                        .last()
                        .map(|e| (base.plus(i64::from(e.relative_offset)), e.timestamp));
                    indexer.offset_index = offset_index;
                    indexer.time_index = time_index;
                    loaded = Some(indexer);
                }
            }
            let (indexer, size_bytes) = match loaded {
                Some(mut indexer) if is_active => {
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
                    if outcome.valid_bytes < file_bytes {
                        tracing::warn!(segment = %path.display(), position = outcome.valid_bytes, reason = ?outcome.stopped_by,
                            "truncating invalid tail of a cleanly closed segment");
                    }
                    (outcome.indexer, outcome.valid_bytes)
                }
                Some(mut indexer) => {
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
                    if outcome.valid_bytes < file_bytes {
                        tracing::warn!(segment = %path.display(), position = outcome.valid_bytes, file_bytes, reason = ?outcome.stopped_by,
                            "truncating segment at the last valid batch");
                    }
                    let mut indexer = outcome.indexer;
                    if !is_active {
                        indexer.seal();
                        segment::persist_indexes(&dir, &indexer).await?;
                    }
                    (indexer, outcome.valid_bytes)
                }
            };
            if size_bytes < file_bytes {
                file.truncate(size_bytes)
                    .await
                    .map_err(io_ctx(format!("truncating {}", path.display())))?;
                file.fdatasync()
                    .await
                    .map_err(io_ctx(format!("syncing {}", path.display())))?;
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
            segments.push(Segment {
                file: Rc::new(file),
                size_bytes,
                indexer,
                preallocated_bytes: 0,
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
            hw: leo,
            pending: VecDeque::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            writer_busy: false,
            syncs_in_flight: 0,
            sync_issued_end: leo,
            failed: None,
            closed: false,
            unsynced_messages: 0,
            last_sync: Instant::now(),
            stats: LogStats::default(),
            inject_write_failures: 0,
        };
        let inner = Rc::new(Inner {
            dir,
            state: RefCell::new(state),
            notify: Notify::default(),
            ack_waiters: AckWaiters::default(),
            index_cache,
            log_id,
        });
        spawn_interval_flusher(Rc::downgrade(&inner));
        Ok(Log { inner })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Validates every batch, assigns offsets, patches them in place, and returns once the
    /// batches are durable according to the flush policy.
    pub async fn append(
        &self,
        mut batches: BytesMut,
        leader_epoch: LeaderEpoch,
        now: TimestampMs,
    ) -> Result<AppendInfo, AppendError> {
        let (max_message_bytes, timestamp_type) = {
            let st = self.inner.state.borrow();
            if let Some(message) = &st.failed {
                return Err(failed_error(message).into());
            }
            (st.config.max_message_bytes, st.config.timestamp_type)
        };
        // Validation of everything comes first: a bad batch anywhere means nothing is written.
        let mut spans = Vec::new();
        let mut iter = BatchIter::new(&batches);
        while let Some(item) = iter.next() {
            let span = item.map_err(|error| AppendError::InvalidBatch {
                position: iter.position(),
                error,
            })?;
            if span.total_bytes > max_message_bytes as usize {
                return Err(AppendError::MessageTooLarge {
                    batch_bytes: span.total_bytes,
                    max_bytes: max_message_bytes,
                });
            }
            spans.push(span);
        }
        if spans.is_empty() {
            return Err(AppendError::Empty);
        }
        let log_append = timestamp_type == TimestampType::LogAppendTime;
        let (base, next, log_start) = {
            let mut st = self.inner.state.borrow_mut();
            if let Some(message) = &st.failed {
                return Err(failed_error(message).into());
            }
            let base = st.leo;
            let mut next = base;
            for span in &mut spans {
                let batch = &mut batches[span.position..span.position + span.total_bytes];
                set_base_offset(batch, next);
                set_partition_leader_epoch(batch, leader_epoch);
                if log_append {
                    set_log_append_time(batch, now);
                }
                next = next.plus(i64::from(span.header.last_offset_delta()) + 1);
                // The header as stored: offsets (and the timestamp) patched. Nothing in the log
                // has changed yet, so an error here still leaves it untouched.
                span.header = BatchHeader::parse_unchecked(batch).map_err(|error| {
                    AppendError::InvalidBatch {
                        position: span.position,
                        error,
                    }
                })?;
            }
            let frozen = batches.freeze();
            for span in &spans {
                let bytes = frozen.slice(span.position..span.position + span.total_bytes);
                let header = span.header;
                st.cache_bytes += bytes.len();
                st.cache.push_back(CachedBatch {
                    base: header.base_offset(),
                    next: header.next_offset(),
                    bytes: bytes.clone(),
                });
                st.pending.push_back(PendingBatch {
                    bytes,
                    header,
                    now_ms: now.0,
                });
            }
            st.leo = next;
            st.stats.appends += 1;
            (base, next, st.log_start)
        };
        self.inner.wait_acked(next).await?;
        Ok(AppendInfo {
            base_offset: base,
            last_offset: Offset(next.0 - 1),
            log_append_time: if log_append { now } else { TimestampMs::NONE },
            log_start_offset: log_start,
        })
    }

    pub fn log_start_offset(&self) -> Offset {
        self.inner.state.borrow().log_start
    }

    fn out_of_range(&self, requested: Offset) -> ReadError {
        let st = self.inner.state.borrow();
        ReadError::OffsetOutOfRange {
            requested,
            log_start: st.log_start,
            log_end: st.leo,
        }
    }

    pub fn log_end_offset(&self) -> Offset {
        self.inner.state.borrow().leo
    }

    /// The end of the acknowledged-able prefix: durable (EveryAppend) or written (Interval).
    pub fn high_watermark(&self) -> Offset {
        self.inner.state.borrow().hw
    }

    /// Failure injection for tests: the next `writes` segment writes fail as if the disk were
    /// full (ENOSPC), before any byte reaches the file.
    #[doc(hidden)]
    pub fn inject_write_failures(&self, writes: u32) {
        self.inner.state.borrow_mut().inject_write_failures = writes;
    }

    pub fn stats(&self) -> LogStats {
        let st = self.inner.state.borrow();
        let mut stats = st.stats;
        stats.tail_cache_bytes = st.cache_bytes;
        stats.segments = st.segments.len();
        let active = &active(&st.segments).indexer;
        stats.active_index_bytes =
            SegmentIndexes::memory_bytes_of(&active.offset_index, &active.time_index);
        stats
    }

    /// The shard-wide cache holding this log's sealed indexes.
    pub fn index_cache(&self) -> &Rc<IndexCache> {
        &self.inner.index_cache
    }

    /// Base offsets of the segments, oldest first (for tests and admin tools).
    pub fn segment_bases(&self) -> Vec<Offset> {
        self.inner
            .state
            .borrow()
            .segments
            .iter()
            .map(|s| s.base())
            .collect()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.inner.state.borrow_mut().config = config;
        self.inner.notify.notify_all();
    }

    /// Whole batches from the one containing `start`, up to `max_bytes` but at least one whole
    /// batch (KIP-74), never a batch at or above `upper`.
    pub async fn read(
        &self,
        start: Offset,
        max_bytes: usize,
        upper: Offset,
    ) -> Result<ReadSlice, ReadError> {
        self.read_with(start, max_bytes, upper, ReadMode::CrossThread)
            .await
    }

    /// `read`, choosing whether cold data may stay in its DMA buffer (see [`ReadMode`]).
    pub async fn read_with(
        &self,
        start: Offset,
        max_bytes: usize,
        upper: Offset,
        mode: ReadMode,
    ) -> Result<ReadSlice, ReadError> {
        let max_bytes = max_bytes.min(limits::READ_BYTES_MAX);
        let empty = ReadSlice {
            chunks: Vec::new(),
            len: 0,
            first_offset: start,
            next_offset: start,
        };
        let (file, path, segment_base, size_bytes, upper, relative) = {
            let mut st = self.inner.state.borrow_mut();
            if start < st.log_start || start > st.leo {
                return Err(ReadError::OffsetOutOfRange {
                    requested: start,
                    log_start: st.log_start,
                    log_end: st.leo,
                });
            }
            let upper = upper.min(st.leo);
            if start >= upper {
                return Ok(empty);
            }
            if st.cache.front().is_some_and(|front| start >= front.base) {
                let first = st.cache.partition_point(|c| c.next <= start);
                let mut chunks = Vec::new();
                let mut len = 0;
                let mut next_offset = start;
                let first_offset = st.cache.get(first).map(|c| c.base).unwrap_or(start);
                for cached in st.cache.range(first..) {
                    if cached.base >= upper
                        || (!chunks.is_empty() && len + cached.bytes.len() > max_bytes)
                    {
                        break;
                    }
                    chunks.push(cached.bytes.clone());
                    len += cached.bytes.len();
                    next_offset = cached.next;
                }
                st.stats.bytes_zero_copy += len as u64;
                return Ok(ReadSlice {
                    chunks,
                    len,
                    first_offset,
                    next_offset,
                });
            }
            let i = st.segments.partition_point(|s| s.base() <= start);
            let Some(i) = i.checked_sub(1) else {
                return Err(ReadError::OffsetOutOfRange {
                    requested: start,
                    log_start: st.log_start,
                    log_end: st.leo,
                });
            };
            let seg = &st.segments[i];
            (
                seg.file.clone(),
                self.inner.dir.join(log_file_name(seg.base())),
                seg.base(),
                seg.size_bytes,
                upper,
                seg.indexer.relative(start),
            )
        };
        let Some(floor_position) = self
            .inner
            .index_floor(segment_base, |offsets, _| offsets.floor(relative))
            .await?
        else {
            return Err(self.out_of_range(start));
        };
        let (position, first) =
            match walk_to_offset(&file, &path, floor_position, size_bytes, start).await {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(empty),
                Err((_, WalkError::Io(e))) => return Err(e.into()),
                Err((position, WalkError::Corrupt(error))) => {
                    return Err(ReadError::Corrupt {
                        segment: segment_base,
                        position,
                        error,
                    })
                }
            };
        if first.base_offset() >= upper {
            return Ok(empty);
        }
        let available = size_bytes - position.0;
        let want = (max_bytes.max(first.total_bytes()) as u64).min(available) as usize;
        let result = file.read_at(position.0, want).await.map_err(|e| {
            StorageIoError::new(format!("reading {} at {position}", path.display()), e)
        })?;
        let mut taken = 0;
        let mut next_offset = start;
        let mut iter = BatchIter::new(&result);
        while let Some(item) = iter.next() {
            match item {
                Ok(span) => {
                    if span.header.base_offset() >= upper {
                        break;
                    }
                    taken = span.position + span.total_bytes;
                    next_offset = span.header.next_offset();
                }
                Err(BatchError::Truncated { .. }) if taken > 0 => break,
                Err(error) if taken == 0 => {
                    return Err(ReadError::Corrupt {
                        segment: segment_base,
                        position: position.plus(iter.position() as u64),
                        error,
                    })
                }
                Err(_) => break,
            }
        }
        let data = match mode {
            ReadMode::SameThread => {
                self.inner.state.borrow_mut().stats.bytes_zero_copy += taken as u64;
                Bytes::from_owner(ThreadBoundRead {
                    result,
                    len: taken,
                    thread: std::thread::current().id(),
                })
            }
            ReadMode::CrossThread => {
                // The one copy on the cross-shard cold path: out of the DMA buffer into
                // memory any thread may free.
                self.inner.state.borrow_mut().stats.bytes_copied += taken as u64;
                Bytes::copy_from_slice(&result[..taken])
            }
        };
        Ok(ReadSlice {
            chunks: vec![data],
            len: taken,
            first_offset: first.base_offset(),
            next_offset,
        })
    }

    /// The first batch whose max timestamp is at least `ts`, with that timestamp. The offset is
    /// the batch's base offset (never below the log start).
    pub async fn offset_for_timestamp(
        &self,
        ts: TimestampMs,
    ) -> Result<Option<(Offset, TimestampMs)>, ReadError> {
        let (file, path, segment_base, size_bytes, log_start) = {
            let st = self.inner.state.borrow();
            let Some(i) = st
                .segments
                .iter()
                .position(|s| s.indexer.max_timestamp.is_some_and(|(_, max)| max >= ts))
            else {
                return Ok(None);
            };
            let seg = &st.segments[i];
            (
                seg.file.clone(),
                self.inner.dir.join(log_file_name(seg.base())),
                seg.base(),
                seg.size_bytes,
                st.log_start,
            )
        };
        let Some(mut position) = self
            .inner
            .index_floor(segment_base, |offsets, times| {
                offsets.floor(times.scan_start(ts))
            })
            .await?
        else {
            // Deleted by retention meanwhile: the answer lies in a later segment.
            return Box::pin(self.offset_for_timestamp(ts)).await;
        };
        match walk_headers(&file, &path, &mut position, size_bytes, |h| {
            h.max_timestamp() >= ts
        })
        .await
        {
            Ok(Some((at, header))) if header.record_count() > 1 && !header.is_log_append_time() => {
                // Kafka answers with the first *record* at or after the time, which may sit
                // inside the batch: read it and look (decompressing if needed).
                let bytes = read_vec(&file, at, header.total_bytes(), &path).await?;
                match first_at_or_after(&bytes, &header, ts) {
                    Ok(Some((offset, found))) => Ok(Some((offset.max(log_start), found))),
                    // The header's max timestamp says a record qualifies; fall back to the
                    // batch if the records disagree (a damaged or odd batch).
                    Ok(None) => Ok(Some((
                        header.base_offset().max(log_start),
                        header.max_timestamp(),
                    ))),
                    Err(error) => {
                        tracing::warn!(segment = %segment_base, position = at.0, %error, "cannot look inside batch for ListOffsets");
                        Ok(Some((
                            header.base_offset().max(log_start),
                            header.max_timestamp(),
                        )))
                    }
                }
            }
            Ok(Some((_, header))) => Ok(Some((
                header.base_offset().max(log_start),
                header.max_timestamp(),
            ))),
            Ok(None) => Ok(None),
            Err((_, WalkError::Io(e))) => Err(e.into()),
            Err((position, WalkError::Corrupt(error))) => Err(ReadError::Corrupt {
                segment: segment_base,
                position,
                error,
            }),
        }
    }

    /// Headers of the batches in about the last `max_bytes` of the active segment (from the
    /// index entry at or before that point), oldest first: what a restarted broker replays to
    /// rebuild state kept per batch, such as idempotent producers' sequence numbers. Only the
    /// active segment is read, so start-up reads at most `max_bytes` (plus one index interval)
    /// per log, whatever its size.
    pub async fn recent_batch_headers(
        &self,
        max_bytes: u64,
    ) -> Result<Vec<BatchHeader>, ReadError> {
        let (file, path, segment_base, size_bytes, start) = {
            let st = self.inner.state.borrow();
            let active = active(&st.segments);
            let from = active.size_bytes.saturating_sub(max_bytes);
            let entries = active.indexer.offset_index.entries();
            let i = entries.partition_point(|e| u64::from(e.position) <= from);
            let start = i
                .checked_sub(1)
                .map_or(0, |i| u64::from(entries[i].position));
            (
                active.file.clone(),
                self.inner.dir.join(log_file_name(active.base())),
                active.base(),
                active.size_bytes,
                FilePosition(start),
            )
        };
        let mut headers = Vec::new();
        let mut position = start;
        let walked = walk_headers(&file, &path, &mut position, size_bytes, |header| {
            headers.push(*header);
            false
        })
        .await;
        match walked {
            Ok(_) => Ok(headers),
            Err((_, WalkError::Io(e))) => Err(e.into()),
            Err((position, WalkError::Corrupt(error))) => Err(ReadError::Corrupt {
                segment: segment_base,
                position,
                error,
            }),
        }
    }

    /// The largest timestamp written and its batch's base offset (ListOffsets MAX_TIMESTAMP).
    pub fn max_timestamp(&self) -> Option<(Offset, TimestampMs)> {
        let st = self.inner.state.borrow();
        let mut best: Option<(Offset, TimestampMs)> = None;
        for seg in &st.segments {
            if let Some((offset, ts)) = seg.indexer.max_timestamp {
                if best.is_none_or(|(_, b)| ts > b) {
                    best = Some((offset, ts));
                }
            }
        }
        best
    }

    /// Advances the log start offset to `before` (persisted first), then deletes whole segments
    /// entirely below it. Returns the new log start offset.
    pub async fn delete_records(&self, before: Offset) -> Result<Offset, DeleteError> {
        let _writer = self.inner.acquire_writer().await;
        {
            let st = self.inner.state.borrow();
            if let Some(message) = &st.failed {
                return Err(failed_error(message).into());
            }
            if before.0 < 0 || before > st.hw {
                return Err(DeleteError::OffsetOutOfRange {
                    requested: before,
                    high_watermark: st.hw,
                });
            }
            if before <= st.log_start {
                return Ok(st.log_start);
            }
        }
        segment::write_file_atomically(
            &self.inner.dir,
            LOG_START_OFFSET_FILE_NAME,
            &encode_checkpoint(before),
        )
        .await?;
        sync_dir(&self.inner.dir).await?;
        self.inner.state.borrow_mut().log_start = before;
        self.inner.delete_old_segments(None).await?;
        Ok(self.log_start_offset())
    }

    /// Rolls the active segment if it is older than `segment_ms`, then deletes whole old segments
    /// beyond `retention_ms` / `retention_bytes` (never the active one).
    pub async fn enforce_retention(&self, now: TimestampMs) -> Result<(), StorageIoError> {
        let _writer = self.inner.acquire_writer().await;
        let roll = {
            let st = self.inner.state.borrow();
            if let Some(message) = &st.failed {
                return Err(failed_error(message));
            }
            let active = active(&st.segments);
            let first_ms = active
                .first_append_ms
                .or(active.indexer.first_timestamp.map(|t| t.0));
            active.size_bytes > 0 && first_ms.is_some_and(|t| now.0 - t >= st.config.segment_ms)
        };
        if roll {
            self.inner
                .roll()
                .await
                .inspect_err(|e| self.inner.fail(e))?;
        }
        self.inner.delete_old_segments(Some(now)).await
    }

    /// Writes everything pending, syncs, persists the active segment's indexes and writes the
    /// clean-shutdown marker, so the next open skips the recovery scan.
    pub async fn close(self) -> Result<(), StorageIoError> {
        let inner = self.inner.clone();
        let _writer = inner.acquire_writer().await;
        if let Some(message) = &inner.state.borrow().failed {
            return Err(failed_error(message));
        }
        while !inner.state.borrow().pending.is_empty() {
            inner.run_round(true).await?;
        }
        inner.run_round(true).await?;
        let (file, size_bytes, indexer) = {
            let mut st = inner.state.borrow_mut();
            st.closed = true;
            let active = active_mut(&mut st.segments);
            active.indexer.seal();
            (
                active.file.clone(),
                active.size_bytes,
                active.indexer.clone(),
            )
        };
        let path = inner.dir.join(log_file_name(indexer.base));
        file.truncate(size_bytes)
            .await
            .map_err(io_ctx(format!("truncating {}", path.display())))?;
        file.fdatasync()
            .await
            .map_err(io_ctx(format!("syncing {}", path.display())))?;
        segment::persist_indexes(&inner.dir, &indexer).await?;
        sync_dir(&inner.dir).await?;
        segment::write_file_atomically(&inner.dir, CLEAN_SHUTDOWN_FILE_NAME, &[]).await?;
        sync_dir(&inner.dir).await?;
        let files: Vec<Rc<glommio::io::DmaFile>> = inner
            .state
            .borrow_mut()
            .segments
            .drain(..)
            .map(|s| s.file)
            .collect();
        for file in files {
            if let Ok(file) = Rc::try_unwrap(file) {
                let _ = file.close().await;
            }
        }
        Ok(())
    }

    /// Deletes the partition's directory and everything in it (DeleteTopics).
    pub async fn remove(self) -> Result<(), StorageIoError> {
        let inner = self.inner.clone();
        let _writer = inner.acquire_writer().await;
        let files: Vec<Rc<glommio::io::DmaFile>> = {
            let mut st = inner.state.borrow_mut();
            st.closed = true;
            st.pending.clear();
            st.segments.drain(..).map(|s| s.file).collect()
        };
        for file in files {
            if let Ok(file) = Rc::try_unwrap(file) {
                let _ = file.close().await;
            }
        }
        let entries = std::fs::read_dir(&inner.dir)
            .map_err(|e| StorageIoError::new(format!("listing {}", inner.dir.display()), e))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| StorageIoError::new(format!("listing {}", inner.dir.display()), e))?;
            remove_if_exists(&entry.path()).await?;
        }
        std::fs::remove_dir(&inner.dir)
            .map_err(|e| StorageIoError::new(format!("removing {}", inner.dir.display()), e))?;
        Ok(())
    }
}

impl Inner {
    /// Where a scan in the segment at `base` starts: the index entry `lookup` picks from that
    /// segment's offset and time indexes, which are the active segment's own or a sealed
    /// segment's from the shard cache (read from disk on a miss). None when the segment was
    /// deleted meanwhile.
    async fn index_floor(
        &self,
        base: Offset,
        lookup: impl Fn(&OffsetIndex, &TimeIndex) -> OffsetEntry,
    ) -> Result<Option<FilePosition>, StorageIoError> {
        let position = |entry: OffsetEntry| FilePosition(u64::from(entry.position));
        let (file, size_bytes) = {
            let st = self.state.borrow();
            let Ok(i) = st.segments.binary_search_by_key(&base, |s| s.base()) else {
                return Ok(None);
            };
            let seg = &st.segments[i];
            if i + 1 == st.segments.len() {
                let entry = lookup(&seg.indexer.offset_index, &seg.indexer.time_index);
                return Ok(Some(position(entry)));
            }
            if let Some(cached) = self.index_cache.get(self.log_id, base) {
                return Ok(Some(position(lookup(&cached.offset, &cached.time))));
            }
            (seg.file.clone(), seg.size_bytes)
        };
        let loaded = self.sealed_indexes(base, &file, size_bytes).await?;
        Ok(loaded.map(|indexes| position(lookup(&indexes.offset, &indexes.time))))
    }

    /// Reads the indexes of the sealed segment at `base` from its index files (rebuilt by a
    /// scan when those are missing or damaged) and caches them. None when the segment was
    /// deleted meanwhile.
    async fn sealed_indexes(
        &self,
        base: Offset,
        file: &glommio::io::DmaFile,
        size_bytes: u64,
    ) -> Result<Option<Rc<SegmentIndexes>>, StorageIoError> {
        let exists = || {
            self.state
                .borrow()
                .segments
                .iter()
                .any(|s| s.base() == base)
        };
        let loaded = segment::load_indexes(&self.dir, base, size_bytes.max(1)).await?;
        if !exists() {
            return Ok(None);
        }
        let indexes = match loaded {
            Some((offset, time)) => SegmentIndexes { offset, time },
            None => {
                tracing::warn!(dir = %self.dir.display(), segment = base.0,
                    "index files of a sealed segment are missing or damaged; rebuilding the index in memory");
                let interval = self.state.borrow().config.index_interval_bytes;
                let path = self.dir.join(log_file_name(base));
                let outcome = segment::scan(
                    file,
                    &path,
                    SegmentIndexer::new(base),
                    FilePosition(0),
                    size_bytes,
                    interval,
                    true,
                )
                .await?;
                let mut indexer = outcome.indexer;
                indexer.seal();
                SegmentIndexes {
                    offset: indexer.offset_index,
                    time: indexer.time_index,
                }
            }
        };
        let indexes = Rc::new(indexes);
        if exists() {
            self.index_cache.insert(self.log_id, base, indexes.clone());
        }
        Ok(Some(indexes))
    }

    async fn acquire_writer(&self) -> WriterGuard<'_> {
        loop {
            let listen = {
                let mut st = self.state.borrow_mut();
                if !st.writer_busy {
                    st.writer_busy = true;
                    return WriterGuard { inner: self };
                }
                self.notify.listen()
            };
            listen.await;
        }
    }

    fn fail(&self, error: &StorageIoError) {
        tracing::error!(dir = %self.dir.display(), %error, "log failed; further appends are refused");
        let mut st = self.state.borrow_mut();
        st.failed = Some(error.to_string());
        st.pending.clear();
        drop(st);
        self.notify.notify_all();
        self.ack_waiters.wake_all();
    }

    /// Waits until `target` is acknowledged-able. A waiting appender takes whichever role is free
    /// and useful: the writer role to write the pending batches, or the sync role to fdatasync
    /// what is written; so one group's write overlaps the previous group's fdatasync.
    async fn wait_acked(&self, target: Offset) -> Result<(), StorageIoError> {
        loop {
            let step = {
                let mut st = self.state.borrow_mut();
                if st.hw >= target {
                    return Ok(());
                }
                if let Some(message) = &st.failed {
                    return Err(failed_error(message));
                }
                let step = st.next_step();
                match step {
                    Some(Step::Write) => st.writer_busy = true,
                    Some(Step::Sync) => st.syncs_in_flight += 1,
                    None => {}
                }
                step
            };
            match step {
                Some(Step::Write) => {
                    let _writer = WriterGuard { inner: self };
                    self.write_round(false)
                        .await
                        .inspect_err(|e| self.fail(e))?;
                    continue;
                }
                Some(Step::Sync) => {
                    let _sync = SyncGuard { inner: self };
                    self.sync_written().await.inspect_err(|e| self.fail(e))?;
                    continue;
                }
                None => {}
            }
            let mut guard = AckWaitGuard {
                inner: self,
                key: (target.0, self.ack_waiters.ticket()),
                done: false,
            };
            std::future::poll_fn(|cx| {
                let st = self.state.borrow();
                if st.hw >= target || st.failed.is_some() || st.next_step().is_some() {
                    return std::task::Poll::Ready(());
                }
                self.ack_waiters.register(guard.key, cx.waker());
                std::task::Poll::Pending
            })
            .await;
            guard.done = true;
        }
    }

    async fn run_round(&self, force_sync: bool) -> Result<(), StorageIoError> {
        self.write_round(force_sync)
            .await
            .inspect_err(|e| self.fail(e))
    }

    /// One group-commit round: writes pending batches (rolling as needed). With `force_sync`, or
    /// when an Interval policy's sync is due, it also fdatasyncs; EveryAppend syncs are run by
    /// appenders holding the sync role (see `wait_acked`). The caller holds the writer role.
    async fn write_round(&self, force_sync: bool) -> Result<(), StorageIoError> {
        // A round covers the batches assigned before it started. Batches arriving during it wait
        // for the next round: otherwise a steady stream keeps the writer writing and the fdatasync
        // (and every ack) is postponed without bound.
        let round_end = self.state.borrow().leo;
        loop {
            // Plan the next write: which pending batches go to the active segment in one DMA write.
            let (count, roll) = {
                let st = self.state.borrow();
                let Some(first) = st
                    .pending
                    .front()
                    .filter(|p| p.header.base_offset() < round_end)
                else {
                    break;
                };
                let active = active(&st.segments);
                // Each batch adds at most one entry to each index, and the seal one more time
                // entry: `batches` more must leave both within `segment_index_bytes`.
                let index_room = |batches: usize| {
                    let cap = st.config.segment_index_bytes as usize;
                    let offsets = active.indexer.offset_index.entries().len() + batches;
                    let times = active.indexer.time_index.entries().len() + batches + 1;
                    offsets * limits::OFFSET_INDEX_ENTRY_BYTES <= cap
                        && times * limits::TIME_INDEX_ENTRY_BYTES <= cap
                };
                let fits = |size: u64, header: &BatchHeader, batches: usize| {
                    size + header.total_bytes() as u64 <= st.config.segment_bytes
                        && header.last_offset().0 - active.base().0 <= i64::from(u32::MAX)
                        && index_room(batches)
                };
                let too_old = active
                    .first_append_ms
                    .is_some_and(|t| first.now_ms - t >= st.config.segment_ms);
                if active.size_bytes > 0 && (too_old || !fits(active.size_bytes, &first.header, 1))
                {
                    (0, true)
                } else {
                    let mut size = active.size_bytes + first.bytes.len() as u64;
                    let mut bytes = first.bytes.len();
                    let mut count = 1;
                    for p in st.pending.iter().skip(1) {
                        if p.header.base_offset() >= round_end
                            || bytes + p.bytes.len() > limits::WRITE_COALESCE_BYTES_MAX
                            || !fits(size, &p.header, count + 1)
                        {
                            break;
                        }
                        size += p.bytes.len() as u64;
                        bytes += p.bytes.len();
                        count += 1;
                    }
                    (count, false)
                }
            };
            if roll {
                self.roll().await?;
                continue;
            }
            self.write_to_active(count).await?;
        }
        let hw = {
            let mut st = self.state.borrow_mut();
            if matches!(st.config.flush, FlushPolicy::Interval { .. }) {
                st.hw = st.hw.max(st.written_end);
            }
            st.hw
        };
        self.ack_waiters.wake_satisfied(hw.0, false);
        let interval_due = {
            let st = self.state.borrow();
            matches!(st.config.flush, FlushPolicy::Interval { .. }) && st.sync_due()
        };
        if force_sync || interval_due {
            self.sync_written().await?;
        }
        Ok(())
    }

    /// fdatasyncs the active segment, making everything written before the call durable. Runs
    /// concurrently with the next write round (only with the sync role, or the writer role at
    /// close), so a write overlaps the previous group's fdatasync.
    async fn sync_written(&self) -> Result<(), StorageIoError> {
        let (file, written_end) = {
            let mut st = self.state.borrow_mut();
            if st.written_end <= st.durable_end {
                return Ok(());
            }
            // A second fdatasync may start while one is in flight: whichever completes, all
            // data written before it was issued is durable, so the next group need not wait
            // for the previous group's sync before issuing its own.
            st.sync_issued_end = st.sync_issued_end.max(st.written_end);
            // Data below `written_end` lies in this file or in older segments, which a roll
            // synced before the active segment changed.
            (active(&st.segments).file.clone(), st.written_end)
        };
        file.fdatasync()
            .await
            .map_err(io_ctx(format!("fdatasync in {}", self.dir.display())))?;
        let mut st = self.state.borrow_mut();
        st.durable_end = st.durable_end.max(written_end);
        st.unsynced_messages = 0;
        st.last_sync = Instant::now();
        st.stats.fdatasyncs += 1;
        if st.config.flush == FlushPolicy::EveryAppend {
            st.hw = st.hw.max(st.durable_end);
        }
        let hw = st.hw;
        drop(st);
        self.ack_waiters.wake_satisfied(hw.0, false);
        Ok(())
    }

    /// Writes the first `count` pending batches after the active segment's logical end in one
    /// aligned direct-IO write that starts with the in-memory partial tail block.
    async fn write_to_active(&self, count: usize) -> Result<(), StorageIoError> {
        let (file, start, buffer, new_size, new_tail, preallocate_to) = {
            let st = self.state.borrow();
            let active = active(&st.segments);
            let start = align_down(active.size_bytes);
            assert_eq!(
                active.tail.len() as u64,
                active.size_bytes - start,
                "tail block out of step"
            );
            let total: usize = st.pending.iter().take(count).map(|p| p.bytes.len()).sum();
            let new_size = active.size_bytes + total as u64;
            let end = align_up(new_size);
            let mut buffer = active.file.alloc_dma_buffer((end - start) as usize);
            let out = buffer.as_bytes_mut();
            let mut at = active.tail.len();
            out[..at].copy_from_slice(&active.tail);
            for p in st.pending.iter().take(count) {
                out[at..at + p.bytes.len()].copy_from_slice(&p.bytes);
                at += p.bytes.len();
            }
            out[at..].fill(0);
            let tail_start = (align_down(new_size) - start) as usize;
            let new_tail = out[tail_start..(new_size - start) as usize].to_vec();
            let preallocate_to =
                (end > active.preallocated_bytes).then(|| end + limits::PREALLOCATE_EXTENT_BYTES);
            (
                active.file.clone(),
                start,
                buffer,
                new_size,
                new_tail,
                preallocate_to,
            )
        };
        let path = || self.dir.display().to_string();
        if let Some(to) = preallocate_to {
            file.pre_allocate(to, true)
                .await
                .map_err(io_ctx(format!("preallocating in {}", path())))?;
            active_mut(&mut self.state.borrow_mut().segments).preallocated_bytes = to;
        }
        let len = buffer.len();
        let injected = {
            let mut st = self.state.borrow_mut();
            let inject = st.inject_write_failures > 0;
            st.inject_write_failures = st.inject_write_failures.saturating_sub(1);
            inject
        };
        if injected {
            return Err(StorageIoError::new(
                format!("writing in {}", path()),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        let written = file
            .write_at(buffer, start)
            .await
            .map_err(io_ctx(format!("writing in {}", path())))?;
        if written != len {
            return Err(StorageIoError::new(
                format!("short write in {}", path()),
                std::io::Error::from(std::io::ErrorKind::WriteZero),
            ));
        }
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        if let Some(message) = &st.failed {
            // A failed fdatasync elsewhere cleared the pending batches while this write was on
            // the device: nothing it holds may be counted as written.
            return Err(failed_error(message));
        }
        let interval = st.config.index_interval_bytes;
        let active = active_mut(&mut st.segments);
        let mut position = active.size_bytes;
        for p in st.pending.drain(..count) {
            active.indexer.observe(&p.header, position, interval);
            active.first_append_ms.get_or_insert(p.now_ms);
            position += p.bytes.len() as u64;
            st.unsynced_messages += p.header.record_count().max(0) as u64;
            st.written_end = p.header.next_offset();
            st.stats.batches_written += 1;
            st.stats.bytes_written += p.bytes.len() as u64;
        }
        assert_eq!(position, new_size);
        active.size_bytes = new_size;
        active.tail = new_tail;
        st.stats.dma_writes += 1;
        // Only written batches may leave the cache: the rest exist nowhere else yet.
        while st.cache_bytes > st.config.tail_cache_bytes {
            match st.cache.front() {
                Some(front) if front.next <= st.written_end => {
                    st.cache_bytes -= front.bytes.len();
                    st.cache.pop_front();
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Seals the active segment (truncate to its logical size, fdatasync, persist indexes) and
    /// starts a new one at the log's written end. The caller holds the writer role.
    async fn roll(&self) -> Result<(), StorageIoError> {
        let (file, size_bytes, indexer) = {
            let mut st = self.state.borrow_mut();
            let active = active_mut(&mut st.segments);
            active.indexer.seal();
            (
                active.file.clone(),
                active.size_bytes,
                active.indexer.clone(),
            )
        };
        let next_base = indexer.next_offset;
        let old_path = self.dir.join(log_file_name(indexer.base));
        file.truncate(size_bytes)
            .await
            .map_err(io_ctx(format!("truncating {}", old_path.display())))?;
        file.fdatasync()
            .await
            .map_err(io_ctx(format!("syncing {}", old_path.display())))?;
        segment::persist_indexes(&self.dir, &indexer).await?;
        let new_path = self.dir.join(log_file_name(next_base));
        let new_file = open_rw(&new_path).await?;
        new_file
            .pre_allocate(limits::PREALLOCATE_EXTENT_BYTES, true)
            .await
            .map_err(io_ctx(format!("preallocating {}", new_path.display())))?;
        sync_dir(&self.dir).await?;
        let mut st = self.state.borrow_mut();
        st.durable_end = st.durable_end.max(next_base);
        let old = active_mut(&mut st.segments);
        old.tail = Vec::new();
        old.preallocated_bytes = 0;
        // Sealed now: its indexes are on disk and stay in memory only within the cache budget.
        let indexes = SegmentIndexes {
            offset: std::mem::take(&mut old.indexer.offset_index),
            time: std::mem::take(&mut old.indexer.time_index),
        };
        self.index_cache
            .insert(self.log_id, indexer.base, Rc::new(indexes));
        st.segments.push(Segment {
            file: Rc::new(new_file),
            size_bytes: 0,
            indexer: SegmentIndexer::new(next_base),
            preallocated_bytes: limits::PREALLOCATE_EXTENT_BYTES,
            tail: Vec::new(),
            first_append_ms: None,
        });
        st.stats.rolls += 1;
        Ok(())
    }

    /// Removes old segments: those entirely below the log start offset, and, when `now` is
    /// given, those beyond the retention limits. Never the active segment.
    async fn delete_old_segments(&self, now: Option<TimestampMs>) -> Result<(), StorageIoError> {
        let victims: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let candidates = st.segments.len() - 1;
            let mut n = 0;
            while n < candidates && st.segments[n + 1].base() <= st.log_start {
                n += 1;
            }
            if let Some(now) = now {
                if st.config.retention_ms >= 0 {
                    while n < candidates
                        && st.segments[n]
                            .indexer
                            .max_timestamp
                            .is_some_and(|(_, ts)| now.0 - ts.0 > st.config.retention_ms)
                    {
                        n += 1;
                    }
                }
                if st.config.retention_bytes >= 0 {
                    let mut remaining: u64 = st.segments[n..].iter().map(|s| s.size_bytes).sum();
                    while n < candidates
                        && remaining - st.segments[n].size_bytes >= st.config.retention_bytes as u64
                    {
                        remaining -= st.segments[n].size_bytes;
                        n += 1;
                    }
                }
            }
            let victims: Vec<Segment> = st.segments.drain(..n).collect();
            let first_base = st.segments[0].base();
            st.log_start = st.log_start.max(first_base);
            victims
        };
        if victims.is_empty() {
            return Ok(());
        }
        for victim in victims {
            let base = victim.base();
            self.index_cache.remove(self.log_id, base);
            if let Ok(file) = Rc::try_unwrap(victim.file) {
                let _ = file.close().await;
            }
            for name in [
                log_file_name(base),
                offset_index_file_name(base),
                time_index_file_name(base),
            ] {
                remove_if_exists(&self.dir.join(name)).await?;
            }
            tracing::info!(dir = %self.dir.display(), segment = base.0, "deleted segment");
        }
        sync_dir(&self.dir).await
    }
}

/// Syncs logs with an interval flush policy every `ms`, so unsynced data does not wait for the
/// next append. Holds only a weak reference: it ends when the log is dropped or closed.
fn spawn_interval_flusher(weak: Weak<Inner>) {
    glommio::spawn_local(async move {
        loop {
            let period_ms = {
                let Some(inner) = weak.upgrade() else { return };
                let st = inner.state.borrow();
                if st.closed || st.failed.is_some() {
                    return;
                }
                match st.config.flush {
                    FlushPolicy::Interval { ms, .. } => ms,
                    FlushPolicy::EveryAppend => 1000,
                }
            };
            glommio::timer::sleep(Duration::from_millis(period_ms)).await;
            let Some(inner) = weak.upgrade() else { return };
            let due = {
                let st = inner.state.borrow();
                matches!(st.config.flush, FlushPolicy::Interval { .. })
                    && st.written_end > st.durable_end
                    && !st.writer_busy
                    && !st.closed
            };
            if due {
                let _writer = inner.acquire_writer().await;
                let _ = inner.run_round(true).await;
            }
        }
    })
    .detach();
}

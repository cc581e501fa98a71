//! The partition log: the `Log` type, its state and the invariants between its offsets, the
//! small read-only accessors, and the `close` / `remove` API surface. The work is split by
//! concern into the submodules:
//!
//! - `recovery`: `open` — the directory scan, torn-tail truncation, index rebuild, the
//!   `log-start-offset` checkpoint.
//! - `commit`: `append`, the writer and sync roles, group commit, writing to the active
//!   segment, roll, and the interval flusher.
//! - `read`: `read` / `read_with`, the tail cache, the read ahead for consumers catching up
//!   from disk, timestamp lookups, `recent_batch_headers`, sealed-segment index lookups through
//!   the shard's [`IndexCache`].
//! - `retention`: `enforce_retention`, `delete_records`, deleting whole old segments.
//! - `truncate`: `truncate_to` (a follower dropping its uncommitted tail), crash-safe through a
//!   durable intent that `open` completes.
//! - `epochs`: the leader-epoch cache's persistence, recovery and OffsetForLeaderEpoch lookups.
//! - `clean`: log compaction — how dirty a log is, and one cleaning pass with its crash-safe
//!   segment swap.
//! - `tail_budget`: the shard's one budget for every log's tail cache, oldest appended out.
//! - `zero`: zeroing ahead — a busy active segment's blocks are written with zeros before the
//!   appends reach them, so appends change no file metadata (inline writes, cheap fdatasync).
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
//! Memory: the log keeps the tail cache (within its own cap and the shard's [`TailBudget`]),
//! the pending batches, the active segment's indexes and at most one read ahead (within a
//! per-shard budget); a sealed segment's indexes are persisted at roll and held only in the
//! shard's [`IndexCache`], looked up through `Inner::index_floor`. Files: the active segment's
//! stays open; a sealed one's is open within the shard's [`FileBudget`], reached through its
//! `SegmentFile`.
//!
//! Directory layout: `<base:020>.log`, `.index`, `.timeindex` per segment (see `segment` and
//! `index`), `log-start-offset` (checkpoint, drawn in `recovery`), `leader-epoch-checkpoint`
//! (drawn in `crate::leader_epoch`), `truncate-to` (present only while a truncation runs or
//! after a crash interrupted one; drawn in `truncate`), `cleaner-offset-checkpoint` and, while a
//! cleaned group is swapped in, `clean-swap` and `*.cleaned` files (drawn in `clean`),
//! `.clean-shutdown` (empty marker written last by `close`, removed by `open`),
//! `active-indexes-checkpoint` (the active segment's indexes over durable data, overwritten
//! in place every few seconds; drawn in `crate::checkpoint`), and the sidecar files the layer
//! above writes through `write_sidecar` / `write_sidecar_in_place`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use tern_protocol::batch::BatchHeader;
use tern_protocol::types::{Offset, TimestampMs};

use crate::config::LogConfig;
use crate::error::{OpenError, StorageIoError};
use crate::file_budget::{FileBudget, SegmentFile};
use crate::index_cache::{IndexCache, SegmentIndexes};
use crate::leader_epoch::LeaderEpochCache;
use crate::notify::{AckWaiters, Notify};
use crate::segment::{self, log_file_name, Segment};

mod clean;
mod commit;
mod epochs;
mod read;
mod recovery;
mod retention;
mod tail_budget;
mod truncate;
mod zero;

pub use clean::{
    CleanOptions, CleanReport, Cleanable, CLEANER_CHECKPOINT_FILE_NAME, CLEAN_SWAP_FILE_NAME,
};
pub use read::{ReadMode, ReadSlice};
pub use tail_budget::{TailBudget, TailBudgetStats};
pub use truncate::TRUNCATE_TO_FILE_NAME;

pub const CLEAN_SHUTDOWN_FILE_NAME: &str = ".clean-shutdown";
pub const LOG_START_OFFSET_FILE_NAME: &str = "log-start-offset";
/// The active segment's index checkpoint (drawn in `crate::checkpoint`).
pub const INDEX_CHECKPOINT_FILE_NAME: &str = "active-indexes-checkpoint";

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
    /// Bytes of zeros written ahead of the appends (`log/zero.rs`).
    pub zeroed_bytes: u64,
    /// Times the writer waited for a zeroing write in flight (the appends caught up with it).
    pub zeroing_waits: u64,
    /// Reads from disk served by a read ahead (`log/read.rs`).
    pub read_ahead_hits: u64,
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
    /// The acknowledgeable prefix: appends below it are answered. EveryAppend: the durable end
    /// as of the last completed sync (it may briefly trail `durable_end` after a roll, which
    /// syncs without waking appenders); Interval: the written end. Moves backwards only by
    /// `truncate_to`. Not a replicated high watermark: that belongs to the broker.
    ack_end: Offset,
    pending: VecDeque<PendingBatch>,
    cache: VecDeque<CachedBatch>,
    cache_bytes: usize,
    writer_busy: bool,
    /// The *index role*: held while the active segment's index files are written or removed
    /// (`roll`, `close`, `truncate_to`, and the periodic checkpoint, which holds only this
    /// role, so appends go on while it writes).
    index_io_busy: bool,
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
    /// Set while `truncate_to` runs: appends wait, since their offsets would be assigned from
    /// an end that is about to move.
    truncating: bool,
    /// Counts truncations, so an fdatasync issued before one does not, on completion, mark as
    /// durable offsets that were rewritten after it.
    truncations: u64,
    /// The read started ahead of a consumer catching up from disk (`log/read.rs`).
    read_ahead: Option<read::ReadAhead>,
    /// Failure injection: `truncate_to` stops as if the process died after this many of its
    /// steps (tests only).
    truncate_crash_after_steps: Option<u32>,
    /// Which leader epoch started where, up to `leo` (pending batches included).
    epochs: LeaderEpochCache,
    /// `epochs` changed since it was last persisted: the next write round persists it before
    /// writing any batch, so the file never lags the data.
    epochs_dirty: bool,
    /// The first offset no cleaning pass has mapped (`cleaner-offset-checkpoint`).
    cleaner_checkpoint: Offset,
    /// A cleaning pass is running (at most one per log).
    cleaning: bool,
    /// The earliest delete horizon the last completed pass left on a retained tombstone's batch.
    earliest_tombstone_horizon: Option<TimestampMs>,
    /// Failure injection: the next clean stops after this many swap steps (tests only).
    clean_crash_after_steps: Option<u32>,
    /// (active segment base, offset index entries) the last `checkpoint_active_indexes` wrote.
    indexes_checkpointed: (Offset, usize),
    /// End (aligned) of the writer's direct write in flight to the active segment, so zeroing
    /// starts past it; 0 when none has been issued in this segment.
    write_in_flight_end: u64,
    /// Start of the zeroing write in flight, if one is (`zero`): the writer must not write past
    /// it until it completes.
    zeroing: Option<u64>,
    /// A zeroing task is scheduled or running for this log.
    zero_scheduled: bool,
    /// Operations changing the active file's size hold zeroing off (`Inner::hold_zeroing`).
    zeroing_holds: u32,
    /// Zeroing pauses until then (the appends caught up with it, or it failed).
    zero_paused_until: Option<Instant>,
    /// Failure injection: each zeroing write waits this long before it is issued, so tests can
    /// line a roll or a truncation up against one in flight (tests only).
    zeroing_delay: Option<std::time::Duration>,
    /// The append time (wall clock, ms) of the last batch written: with the active segment's
    /// first, its write rate, which sizes the zeroing window.
    last_write_ms: i64,
}

impl State {
    /// Asserts the relations between the log's offsets. Called after every state change that
    /// moves one of them (append, write, sync, roll, retention, delete_records, open), so a
    /// bookkeeping bug stops the shard at its cause rather than surfacing later as a wrong read
    /// or a lost acknowledgement. A handful of comparisons: cheap enough for release builds.
    ///
    /// ```text
    /// segments[0].base <= log_start <= max(durable_end, ack_end)
    /// durable_end <= written_end <= leo   ack_end <= written_end
    /// sync_issued_end <= written_end           active segment's next offset == written_end
    /// the tail cache's last batch ends at or below leo
    /// ```
    ///
    /// `log_start <= durable_end` alone does not hold: with an Interval flush policy `ack_end` runs
    /// ahead of `durable_end`, and DeleteRecords may advance the log start up to `ack_end`.
    fn check_offsets(&self) {
        let st = self;
        assert!(
            st.durable_end <= st.written_end && st.written_end <= st.leo,
            "offsets out of order: durable {} written {} leo {}",
            st.durable_end,
            st.written_end,
            st.leo
        );
        assert!(
            st.ack_end <= st.written_end,
            "ack end {} above written end {}",
            st.ack_end,
            st.written_end
        );
        assert!(
            st.sync_issued_end <= st.written_end,
            "sync issued to {} above written end {}",
            st.sync_issued_end,
            st.written_end
        );
        assert!(
            st.log_start <= st.durable_end.max(st.ack_end),
            "log start {} above durable end {} and ack end {}",
            st.log_start,
            st.durable_end,
            st.ack_end
        );
        let first = st.segments.first().map(Segment::base);
        assert!(
            first.is_some_and(|base| base <= st.log_start),
            "log start {} below the first segment {first:?}",
            st.log_start
        );
        assert_eq!(
            active(&st.segments).indexer.next_offset,
            st.written_end,
            "the active segment ends at the written end"
        );
        if st.failed.is_none() {
            // Pending batches are exactly the assigned but unwritten offsets (a failure clears
            // them without moving `leo`; the log refuses everything afterwards).
            // A follower's batches may start past the written end: the leader's cleaner
            // removed whole batches there.
            let pending = match (st.pending.front(), st.pending.back()) {
                (Some(first), Some(last)) => {
                    (first.header.base_offset(), last.header.next_offset())
                }
                _ => (st.leo, st.leo),
            };
            assert!(
                pending.0 >= st.written_end && pending.1 == st.leo,
                "pending batches {pending:?} lie in [written end {}, leo {})",
                st.written_end,
                st.leo
            );
        }
        if let Some(last) = st.cache.back() {
            // Below leo only after a truncation into a gap compaction left.
            assert!(last.next <= st.leo, "the tail cache ends at or below leo");
        }
        if let Some(latest) = st.epochs.latest() {
            assert!(
                latest.start_offset <= st.leo,
                "epoch {} starts at {}, above leo {}",
                latest.epoch,
                latest.start_offset,
                st.leo
            );
        }
    }
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

struct Inner {
    dir: PathBuf,
    state: RefCell<State>,
    notify: Notify,
    ack_waiters: AckWaiters,
    /// Where sealed segments' indexes are kept (shared by the shard's logs), under `log_id`.
    index_cache: Rc<IndexCache>,
    log_id: u64,
    /// This log itself, for the background tasks it starts (zeroing ahead) and the shard's
    /// tail budget queue.
    this: std::rc::Weak<Inner>,
    /// The shard's budget the tail cache's bytes count against.
    tail_budget: Rc<TailBudget>,
    /// The shard's budget of open sealed-segment files.
    file_budget: Rc<FileBudget>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.index_cache.remove_log(self.log_id);
        for cached in &self.state.get_mut().cache {
            self.tail_budget.release(cached.bytes.len());
        }
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

/// Failure injection for crash tests (`truncate_to`, a cleaner swap): fails, as the process
/// dying there would, once `done` of an operation's steps have run and `after` says to stop.
fn injected_crash(
    after: Option<u32>,
    done: u32,
    doing: &str,
    dir: &Path,
) -> Result<(), StorageIoError> {
    if after.is_some_and(|n| done >= n) {
        return Err(StorageIoError::new(
            format!(
                "{doing} {} (injected crash after step {done})",
                dir.display()
            ),
            std::io::Error::other("injected crash"),
        ));
    }
    Ok(())
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
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Writes a small file the layer above keeps beside this log (a partition's transaction
    /// snapshot): atomically (temporary file, fdatasync, rename, directory sync), so a crash
    /// leaves the old or the new contents. `name` must not collide with the log's own files.
    pub async fn write_sidecar(&self, name: &str, bytes: &[u8]) -> Result<(), StorageIoError> {
        segment::write_file_atomically(&self.inner.dir, name, bytes).await?;
        sync_dir(&self.inner.dir).await
    }

    /// Writes a sidecar file over its old contents in place, without a rename or an
    /// fdatasync: for state the layer above can rebuild, written often. A kill -9 keeps the
    /// write; a power loss may leave the old contents, a torn mix or no file, so `bytes` must
    /// carry their own length and checksum (what follows them is not cleared).
    pub async fn write_sidecar_in_place(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), StorageIoError> {
        segment::write_in_place(&self.inner.dir, name, bytes, false).await?;
        Ok(())
    }

    /// Reads a sidecar file written by `write_sidecar` or `write_sidecar_in_place`, or None
    /// if there is none.
    pub async fn read_sidecar(&self, name: &str) -> Result<Option<Vec<u8>>, StorageIoError> {
        segment::read_small_file(&self.inner.dir.join(name)).await
    }

    pub fn log_start_offset(&self) -> Offset {
        self.inner.state.borrow().log_start
    }

    pub fn log_end_offset(&self) -> Offset {
        self.inner.state.borrow().leo
    }

    /// Every batch below this offset is covered by a completed fdatasync: it survives a crash
    /// or power loss, whatever the flush policy.
    pub fn durable_end_offset(&self) -> Offset {
        self.inner.state.borrow().durable_end
    }

    /// The end of what this log acknowledges to appenders under its flush policy: with
    /// `FlushPolicy::EveryAppend` an fdatasync covers it (it is at most `durable_end_offset`,
    /// which a roll may advance before the next sync tells appenders), with
    /// `FlushPolicy::Interval` it is the written end, which a crash may lose. Followers and
    /// consumers must not be served beyond it.
    pub fn acknowledged_end_offset(&self) -> Offset {
        self.inner.state.borrow().ack_end
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
    /// Writes everything pending, syncs, persists the active segment's indexes and writes the
    /// clean-shutdown marker, so the next open skips the recovery scan.
    pub async fn close(self) -> Result<(), StorageIoError> {
        let inner = self.inner.clone();
        let _writer = inner.acquire_writer().await;
        let _zeroing = inner.hold_zeroing().await;
        let _index_io = inner.acquire_index_io().await;
        if let Some(message) = &inner.state.borrow().failed {
            return Err(failed_error(message));
        }
        while !inner.state.borrow().pending.is_empty() {
            inner.run_round(true).await?;
        }
        inner.run_round(true).await?;
        inner.persist_epochs_if_dirty().await?;
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
        let file = file.file().await?;
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
        drop(file);
        let files: Vec<SegmentFile> = inner
            .state
            .borrow_mut()
            .segments
            .drain(..)
            .map(|s| s.file)
            .collect();
        for file in files {
            file.close().await;
        }
        Ok(())
    }

    /// Replaces this log by an empty one that starts at `start` in the same directory: a
    /// follower whose leader no longer holds what it would fetch next (the leader's log start
    /// passed it) starts over from the leader's start, as Kafka's followers do. Everything is
    /// removed, the new start is persisted before the log reopens, so a crash in between
    /// leaves an empty log (which the follower refills) or the new one, never a gap.
    pub async fn restart_at(self, start: Offset) -> Result<Log, OpenError> {
        let dir = self.inner.dir.clone();
        let config = self.inner.state.borrow().config.clone();
        let (index_cache, tail_budget, file_budget) = (
            self.inner.index_cache.clone(),
            self.inner.tail_budget.clone(),
            self.inner.file_budget.clone(),
        );
        self.remove().await?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageIoError::new(format!("creating {}", dir.display()), e))?;
        segment::write_file_atomically(
            &dir,
            LOG_START_OFFSET_FILE_NAME,
            &crate::checkpoint::encode_checkpoint(start),
        )
        .await?;
        sync_dir(&dir).await?;
        Log::open_with_caches(dir, config, index_cache, tail_budget, file_budget).await
    }

    /// Deletes the partition's directory and everything in it (DeleteTopics).
    pub async fn remove(self) -> Result<(), StorageIoError> {
        let inner = self.inner.clone();
        let _writer = inner.acquire_writer().await;
        let files: Vec<SegmentFile> = {
            let mut st = inner.state.borrow_mut();
            st.closed = true;
            st.pending.clear();
            st.segments.drain(..).map(|s| s.file).collect()
        };
        for file in files {
            file.close().await;
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
    fn fail(&self, error: &StorageIoError) {
        tracing::error!(dir = %self.dir.display(), %error, "log failed; further appends are refused");
        let mut st = self.state.borrow_mut();
        st.failed = Some(error.to_string());
        st.pending.clear();
        drop(st);
        self.notify.notify_all();
        self.ack_waiters.wake_all();
    }
}

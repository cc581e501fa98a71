//! The write path: `append` (validation, offset assignment, the tail cache and the pending
//! queue), the writer, sync and index roles, group-commit rounds, the direct-IO write to the
//! active segment, fdatasync, roll, and the interval flusher.
//!
//! Only the task holding the writer role writes segment files or rolls; only tasks holding the
//! sync role (or the writer role, at close) fdatasync. `pending` is drained only after a write
//! completed, so a cancelled round is redone at the same file position.
//!
//! What it must never do: acknowledge an EveryAppend batch before an fdatasync covers it, write
//! a batch that failed validation, or let a steady stream of appends postpone a round's sync.

use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_protocol::batch::{
    set_base_offset, set_log_append_time, set_partition_leader_epoch, BatchHeader, BatchIter,
    BatchSpan,
};
use tern_protocol::types::{LeaderEpoch, Offset, TimestampMs};

use crate::config::{FlushPolicy, TimestampType};
use crate::error::{AppendError, AppendReplicatedError, StorageIoError};
use crate::file_budget::SegmentFile;
use crate::index::SegmentIndexer;
use crate::index_cache::SegmentIndexes;
use crate::limits;
use crate::segment::{self, align_down, align_up, log_file_name, open_rw, Segment};

use super::{
    active, active_mut, failed_error, io_ctx, sync_dir, AppendInfo, CachedBatch, Inner, Log,
    PendingBatch, State,
};

/// What a waiting appender can do next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Write,
    Sync,
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

/// Releases the writer role when dropped, also when the holding future is cancelled.
pub(super) struct WriterGuard<'a> {
    inner: &'a Inner,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let ack_end = {
            let mut st = self.inner.state.borrow_mut();
            st.writer_busy = false;
            st.ack_end
        };
        self.inner.notify.notify_all();
        // Hand the role to the appender next in line, if any waits.
        self.inner.ack_waiters.wake_satisfied(ack_end.0, true);
    }
}

/// Releases the sync role when dropped and hands a turn to the next waiting appender.
struct SyncGuard<'a> {
    inner: &'a Inner,
}

impl Drop for SyncGuard<'_> {
    fn drop(&mut self) {
        let ack_end = {
            let mut st = self.inner.state.borrow_mut();
            st.syncs_in_flight -= 1;
            st.ack_end
        };
        self.inner.ack_waiters.wake_satisfied(ack_end.0, true);
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
            let (can_progress, ack_end) = {
                let st = self.inner.state.borrow();
                (st.next_step().is_some(), st.ack_end)
            };
            if can_progress {
                self.inner.ack_waiters.wake_satisfied(ack_end.0, true);
            }
        }
    }
}

impl Log {
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
        // No await between this and the offset assignment below: a truncation cannot start in
        // between and move the end these offsets are assigned from.
        self.inner.wait_not_truncating().await;
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
            st.enqueue(&self.inner, &batches.freeze(), &spans, now);
            assert_eq!(st.leo, next);
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
}

impl State {
    /// Queues validated batches, whose headers hold their final offsets starting at `leo`, for
    /// the next write round, and puts them in the tail cache.
    fn enqueue(&mut self, inner: &Inner, frozen: &Bytes, spans: &[BatchSpan], now: TimestampMs) {
        for span in spans {
            let bytes = frozen.slice(span.position..span.position + span.total_bytes);
            let header = span.header;
            assert!(
                header.base_offset() >= self.leo,
                "batches enqueued in offset order"
            );
            self.cache_bytes += bytes.len();
            inner
                .tail_budget
                .charge(&inner.this, header.next_offset(), bytes.len());
            self.cache.push_back(CachedBatch {
                base: header.base_offset(),
                next: header.next_offset(),
                bytes: bytes.clone(),
            });
            self.pending.push_back(PendingBatch {
                bytes,
                header,
                now_ms: now.0,
            });
            if self
                .epochs
                .assign(header.partition_leader_epoch(), header.base_offset())
            {
                self.epochs_dirty = true;
            }
            self.leo = header.next_offset();
        }
        self.stats.appends += 1;
        self.check_offsets();
    }
}

impl Log {
    /// A follower's append: `records` holds one or more whole batches whose `baseOffset`s the
    /// leader assigned and whose `partitionLeaderEpoch` (and timestamps) are kept exactly as
    /// sent. Validates each batch as `append` does (header, counts, CRC32C; the size only
    /// against `limits::BATCH_BYTES_MAX`, since the leader already applied its
    /// `max.message.bytes`, as Kafka's followers do), requires the first batch to start at or
    /// past the log end and each next one at or past where the previous ended (past: the
    /// leader's cleaner removed whole batches between them), and returns the last offset once the
    /// batches are acknowledged under the flush policy, exactly as `append` would. Nothing is
    /// written when any check fails.
    pub async fn append_replicated(
        &self,
        records: Bytes,
        now: TimestampMs,
    ) -> Result<Offset, AppendReplicatedError> {
        if let Some(message) = &self.inner.state.borrow().failed {
            return Err(failed_error(message).into());
        }
        let mut spans: Vec<BatchSpan> = Vec::new();
        let mut iter = BatchIter::new(&records);
        while let Some(item) = iter.next() {
            let span = item.map_err(|error| AppendReplicatedError::InvalidBatch {
                position: iter.position(),
                error,
            })?;
            if span.total_bytes > limits::BATCH_BYTES_MAX as usize {
                return Err(AppendReplicatedError::BatchTooLarge {
                    batch_bytes: span.total_bytes,
                    max_bytes: limits::BATCH_BYTES_MAX,
                });
            }
            if let Some(previous) = spans.last() {
                let expected = previous.header.next_offset();
                if span.header.base_offset() < expected {
                    return Err(AppendReplicatedError::NonContiguous {
                        position: span.position,
                        expected,
                        found: span.header.base_offset(),
                    });
                }
            }
            spans.push(span);
        }
        let (Some(first), Some(last)) = (spans.first(), spans.last()) else {
            return Err(AppendReplicatedError::Empty);
        };
        let (base_offset, next) = (first.header.base_offset(), last.header.next_offset());
        // As in `append`: nothing awaits between this and the check against the log end.
        self.inner.wait_not_truncating().await;
        {
            let mut st = self.inner.state.borrow_mut();
            if let Some(message) = &st.failed {
                return Err(failed_error(message).into());
            }
            // A gap is the leader's cleaner at work (whole batches removed): kept as it is.
            let log_end = st.leo;
            if base_offset < log_end {
                return Err(AppendReplicatedError::Overlap {
                    log_end,
                    base_offset,
                });
            }
            st.enqueue(&self.inner, &records, &spans, now);
        }
        self.inner.wait_acked(next).await?;
        Ok(Offset(next.0 - 1))
    }
}

/// Releases the index role when dropped.
pub(super) struct IndexIoGuard<'a> {
    inner: &'a Inner,
}

impl Drop for IndexIoGuard<'_> {
    fn drop(&mut self) {
        self.inner.state.borrow_mut().index_io_busy = false;
        self.inner.notify.notify_all();
    }
}

impl Inner {
    /// Takes the index role (see `State::index_io_busy`). A holder of the writer role may take
    /// it; a holder of only the index role never waits for the writer role.
    pub(super) async fn acquire_index_io(&self) -> IndexIoGuard<'_> {
        self.take_role(|st| &mut st.index_io_busy).await;
        IndexIoGuard { inner: self }
    }

    pub(super) async fn acquire_writer(&self) -> WriterGuard<'_> {
        self.take_role(|st| &mut st.writer_busy).await;
        WriterGuard { inner: self }
    }

    /// Waits until the role flag `busy` picks is clear, then sets it.
    async fn take_role(&self, busy: impl Fn(&mut State) -> &mut bool) {
        loop {
            let listen = {
                let mut st = self.state.borrow_mut();
                let flag = busy(&mut st);
                if !*flag {
                    *flag = true;
                    return;
                }
                self.notify.listen()
            };
            listen.await;
        }
    }

    /// Waits until `target` is acknowledged-able. A waiting appender takes whichever role is free
    /// and useful: the writer role to write the pending batches, or the sync role to fdatasync
    /// what is written; so one group's write overlaps the previous group's fdatasync.
    async fn wait_acked(&self, target: Offset) -> Result<(), StorageIoError> {
        loop {
            let step = {
                let mut st = self.state.borrow_mut();
                if st.ack_end >= target {
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
                if st.ack_end >= target || st.failed.is_some() || st.next_step().is_some() {
                    return std::task::Poll::Ready(());
                }
                self.ack_waiters.register(guard.key, cx.waker());
                std::task::Poll::Pending
            })
            .await;
            guard.done = true;
        }
    }

    pub(super) async fn run_round(&self, force_sync: bool) -> Result<(), StorageIoError> {
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
        // Every epoch of the batches this round writes is in the cache now: the file goes first.
        self.persist_epochs_if_dirty().await?;
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
        let ack_end = {
            let mut st = self.state.borrow_mut();
            if matches!(st.config.flush, FlushPolicy::Interval { .. }) {
                st.ack_end = st.ack_end.max(st.written_end);
            }
            st.check_offsets();
            st.ack_end
        };
        self.ack_waiters.wake_satisfied(ack_end.0, false);
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
        let (file, written_end, truncations) = {
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
            (
                active(&st.segments).file.clone(),
                st.written_end,
                st.truncations,
            )
        };
        file.file()
            .await?
            .fdatasync()
            .await
            .map_err(io_ctx(format!("fdatasync in {}", self.dir.display())))?;
        let mut st = self.state.borrow_mut();
        if st.truncations != truncations {
            // `truncate_to` ran meanwhile: it synced what it kept, and offsets above its cut may
            // hold new batches this fdatasync did not cover.
            return Ok(());
        }
        st.durable_end = st.durable_end.max(written_end);
        st.unsynced_messages = 0;
        st.last_sync = Instant::now();
        st.stats.fdatasyncs += 1;
        if st.config.flush == FlushPolicy::EveryAppend {
            st.ack_end = st.ack_end.max(st.durable_end);
        }
        st.check_offsets();
        let ack_end = st.ack_end;
        drop(st);
        self.ack_waiters.wake_satisfied(ack_end.0, false);
        Ok(())
    }

    /// Writes the first `count` pending batches after the active segment's logical end in one
    /// aligned direct-IO write that starts with the in-memory partial tail block.
    async fn write_to_active(&self, count: usize) -> Result<(), StorageIoError> {
        // A zeroing write in flight past the data must complete before this write reaches it.
        let end = {
            let st = self.state.borrow();
            st.zeroing.is_some().then(|| {
                let total: u64 = st
                    .pending
                    .iter()
                    .take(count)
                    .map(|p| p.bytes.len() as u64)
                    .sum();
                align_up(active(&st.segments).size_bytes + total)
            })
        };
        if let Some(end) = end {
            self.wait_zeroing(Some(end)).await;
        }
        // The writer role keeps the active segment where it is across this await (and its file
        // is open: no I/O here).
        let file = {
            let st = self.state.borrow();
            active(&st.segments).file.clone()
        };
        let file = file.file().await?;
        let (start, buffer, new_size, new_tail, preallocate_to) = {
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
            let mut buffer = file.alloc_dma_buffer((end - start) as usize);
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
                (end > active.preallocated_bytes).then(|| end + limits::preallocate_extent(end));
            (start, buffer, new_size, new_tail, preallocate_to)
        };
        // Before any await: a zeroing planned from now on starts past this write.
        self.state.borrow_mut().write_in_flight_end = start + buffer.len() as u64;
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
        let mut state = self.state.borrow_mut();
        let st = &mut *state;
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
            st.last_write_ms = p.now_ms;
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
                    self.tail_budget.release(front.bytes.len());
                    st.cache.pop_front();
                }
                _ => break,
            }
        }
        st.check_offsets();
        drop(state);
        self.tail_budget.evict();
        self.zero_ahead_if_due();
        Ok(())
    }

    /// Seals the active segment (truncate to its logical size, fdatasync, persist indexes) and
    /// starts a new one at the log's written end. The caller holds the writer role.
    pub(super) async fn roll(&self) -> Result<(), StorageIoError> {
        // No zeros may land past the end of a sealed segment.
        let _zeroing = self.hold_zeroing().await;
        // A checkpoint of the active segment's indexes must not land over the sealed ones.
        let _index_io = self.acquire_index_io().await;
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
        let sealed = file.clone();
        let file = file.file().await?;
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
            .pre_allocate(limits::PREALLOCATE_EXTENT_MIN_BYTES, true)
            .await
            .map_err(io_ctx(format!("preallocating {}", new_path.display())))?;
        sync_dir(&self.dir).await?;
        let mut st = self.state.borrow_mut();
        st.durable_end = st.durable_end.max(next_base);
        st.write_in_flight_end = 0;
        let old = active_mut(&mut st.segments);
        old.tail = Vec::new();
        old.preallocated_bytes = 0;
        sealed.seal();
        // Sealed now: its indexes are on disk and stay in memory only within the cache budget.
        let indexes = SegmentIndexes {
            offset: std::mem::take(&mut old.indexer.offset_index),
            time: std::mem::take(&mut old.indexer.time_index),
        };
        self.index_cache
            .insert(self.log_id, indexer.base, Rc::new(indexes));
        st.segments.push(Segment {
            file: SegmentFile::active(&new_path, new_file, &self.file_budget),
            size_bytes: 0,
            indexer: SegmentIndexer::new(next_base),
            preallocated_bytes: limits::PREALLOCATE_EXTENT_MIN_BYTES,
            zeroed_bytes: 0,
            tail: Vec::new(),
            first_append_ms: None,
        });
        st.stats.rolls += 1;
        st.check_offsets();
        Ok(())
    }
}

/// Syncs logs with an interval flush policy every `ms`, so unsynced data does not wait for the
/// next append. Holds only a weak reference: it ends when the log is dropped or closed.
pub(super) fn spawn_interval_flusher(weak: Weak<Inner>) {
    glommio::spawn_local(async move {
        loop {
            let period_ms = {
                let Some(inner) = weak.upgrade() else { return };
                let st = inner.state.borrow();
                if st.closed || st.failed.is_some() {
                    return;
                }
                match st.config.flush {
                    // Wake when the interval is due, and at least this often (a long interval,
                    // or Kafka's default Long.MAX: never by time), so a config change is noticed.
                    FlushPolicy::Interval { ms, .. } if st.written_end > st.durable_end => {
                        let since = st.last_sync.elapsed().as_millis() as u64;
                        ms.saturating_sub(since)
                            .clamp(1, limits::FLUSH_CHECK_INTERVAL_MS)
                    }
                    // Nothing unsynced: nothing can fall due before the next check.
                    FlushPolicy::Interval { .. } => limits::FLUSH_CHECK_INTERVAL_MS,
                    FlushPolicy::EveryAppend => limits::FLUSH_CHECK_INTERVAL_MS,
                }
            };
            glommio::timer::sleep(Duration::from_millis(period_ms)).await;
            let Some(inner) = weak.upgrade() else { return };
            let due = {
                let st = inner.state.borrow();
                matches!(st.config.flush, FlushPolicy::Interval { ms, .. }
                    if st.last_sync.elapsed() >= Duration::from_millis(ms))
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

//! The read path: `read` / `read_with` (from the tail cache without copying, else from the
//! segment files), `offset_for_timestamp`, `max_timestamp`, `recent_batch_headers`, and the
//! lookups of sealed segments' indexes through the shard's `IndexCache`.
//!
//! Read ahead: O_DIRECT has no page cache to read ahead for a consumer catching up, so the
//! log does it. A read from disk of at least `READ_AHEAD_MIN_BYTES` starts reading the next
//! as many bytes of the same segment (one read ahead per log, within a per-shard budget). The
//! next read at exactly the offset where it begins takes it instead of looking the offset up and
//! reading, so the disk works while the previous answer travels to the consumer.
//!
//! What it must never do: take the writer role, copy bytes served from the tail cache, return
//! bytes read back from disk that do not parse as whole batches, or serve a read ahead from a
//! segment deleted, replaced or truncated since it started.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::Bytes;
use tern_protocol::batch::{BatchError, BatchHeader, BatchIter};
use tern_protocol::records::first_at_or_after;
use tern_protocol::types::{FilePosition, Offset, TimestampMs};

use crate::error::{ReadError, StorageIoError};
use crate::file_budget::SegmentFile;
use crate::index::{OffsetEntry, OffsetIndex, SegmentIndexer, TimeIndex};
use crate::index_cache::SegmentIndexes;
use crate::limits;
use crate::notify::Notify;
use crate::segment::{self, log_file_name, read_vec, walk_headers, walk_to_offset, WalkError};

use super::{active, Inner, Log};

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

/// Bytes read from a segment file at `position`, starting with a whole batch.
struct Prefetched {
    segment: SegmentFile,
    base: Offset,
    position: FilePosition,
    result: glommio::io::ReadResult,
}

/// A read started ahead of a consumer reading a segment from disk in order: the bytes from
/// `position` on, where the batch at `next_offset` starts. Used only by a read at exactly
/// `next_offset` while the segment is still the log's and no truncation happened; at most one
/// per log, and together within `limits::READ_AHEAD_BYTES_PER_SHARD` per shard.
pub(super) struct ReadAhead {
    segment: SegmentFile,
    base: Offset,
    position: FilePosition,
    next_offset: Offset,
    truncations: u64,
    slot: Rc<AheadSlot>,
}

/// Where a read ahead's bytes land. The task that reads them empties it, and gives its bytes
/// back to the budget, once `READ_AHEAD_UNCLAIMED` has passed without a reader claiming them:
/// a consumer that caught up into the tail cache, or went away, holds nothing for long.
struct AheadSlot {
    state: RefCell<AheadState>,
    read: Notify,
    reserved: RefCell<Option<ReadAheadBytes>>,
}

enum AheadState {
    Reading,
    Read(Result<glommio::io::ReadResult, String>),
    Gone,
}

thread_local! {
    /// Bytes of read-ahead buffers reserved on this shard (thread).
    static READ_AHEAD_RESERVED: Cell<usize> = const { Cell::new(0) };
}

/// A reservation of read-ahead bytes from this shard's budget, given back when dropped.
struct ReadAheadBytes(usize);

impl ReadAheadBytes {
    fn reserve(bytes: usize) -> Option<ReadAheadBytes> {
        READ_AHEAD_RESERVED.with(|reserved| {
            let total = reserved.get() + bytes;
            (total <= limits::READ_AHEAD_BYTES_PER_SHARD).then(|| {
                reserved.set(total);
                ReadAheadBytes(bytes)
            })
        })
    }
}

impl Drop for ReadAheadBytes {
    fn drop(&mut self) {
        READ_AHEAD_RESERVED.with(|reserved| reserved.set(reserved.get() - self.0));
    }
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

impl Log {
    fn out_of_range(&self, requested: Offset) -> ReadError {
        let st = self.inner.state.borrow();
        ReadError::OffsetOutOfRange {
            requested,
            log_start: st.log_start,
            log_end: st.leo,
        }
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
        let upper = {
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
            upper
        };
        if let Some(ahead) = self.take_read_ahead(start).await {
            if let Some(slice) = self.package(&ahead, start, max_bytes, upper, mode, true)? {
                self.inner.state.borrow_mut().stats.read_ahead_hits += 1;
                let end = ahead.position.plus(slice.len as u64);
                self.read_ahead(&ahead.segment, end, slice.next_offset, slice.len, max_bytes);
                return Ok(slice);
            }
        }
        // The segment holding `start`, or, when compaction left nothing at or after it there,
        // the next one.
        let mut seek = start;
        let mut retries = 0;
        let (segment, file, segment_base, size_bytes, position, first) = loop {
            let (segment, path, segment_base, size_bytes, relative, next_base) = {
                let st = self.inner.state.borrow();
                let i = st.segments.partition_point(|s| s.base() <= seek);
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
                    seg.indexer.relative(seek),
                    st.segments.get(i + 1).map(|s| s.base()),
                )
            };
            let floor = self
                .inner
                .index_floor(segment_base, &segment, |offsets, _| offsets.floor(relative))
                .await?;
            let found = match floor {
                Some(floor) => segment.open().await?.map(|file| (floor, file)),
                None => None,
            };
            let Some((floor_position, file)) = found else {
                // Deleted or replaced by the cleaner meanwhile: look again (what was deleted
                // is then below the log start; a cleaned group is found under its base).
                retries += 1;
                if retries > limits::READ_RETRIES_MAX {
                    return Err(self.out_of_range(start));
                }
                seek = start;
                continue;
            };
            match walk_to_offset(&file, &path, floor_position, size_bytes, start).await {
                Ok(Some((position, first))) => {
                    break (segment, file, segment_base, size_bytes, position, first)
                }
                Ok(None) => match next_base {
                    Some(next) if next < upper => seek = next,
                    _ => return Ok(empty),
                },
                Err((_, WalkError::Io(e))) => return Err(e.into()),
                Err((position, WalkError::Corrupt(error))) => {
                    return Err(ReadError::Corrupt {
                        segment: segment_base,
                        position,
                        error,
                    })
                }
            }
        };
        if first.base_offset() >= upper {
            return Ok(empty);
        }
        let available = size_bytes - position.0;
        let want = (max_bytes.max(first.total_bytes()) as u64).min(available) as usize;
        let path = self.inner.dir.join(log_file_name(segment_base));
        let result = file.read_at(position.0, want).await.map_err(|e| {
            StorageIoError::new(format!("reading {} at {position}", path.display()), e)
        })?;
        let read = Prefetched {
            segment,
            base: segment_base,
            position,
            result,
        };
        let slice = self
            .package(&read, start, max_bytes, upper, mode, false)?
            .unwrap_or(empty);
        let end = read.position.plus(slice.len as u64);
        self.read_ahead(&read.segment, end, slice.next_offset, slice.len, max_bytes);
        Ok(slice)
    }

    /// The whole batches of `read` (which starts at the batch holding `start`), as many as
    /// `max_bytes` allows but at least one, none at or above `upper`; None when not even one
    /// whole batch is there (a read ahead shorter than the batch).
    fn package(
        &self,
        read: &Prefetched,
        start: Offset,
        max_bytes: usize,
        upper: Offset,
        mode: ReadMode,
        ahead: bool,
    ) -> Result<Option<ReadSlice>, ReadError> {
        let mut taken = 0;
        let mut next_offset = start;
        let mut first_offset = start;
        let mut iter = BatchIter::new(&read.result);
        while let Some(item) = iter.next() {
            match item {
                Ok(span) => {
                    if span.header.base_offset() >= upper
                        || (taken > 0 && span.position + span.total_bytes > max_bytes)
                    {
                        break;
                    }
                    if taken == 0 {
                        first_offset = span.header.base_offset();
                    }
                    taken = span.position + span.total_bytes;
                    next_offset = span.header.next_offset();
                }
                Err(BatchError::Truncated { .. }) if taken > 0 => break,
                // A read ahead may end inside the batch; a read sized for it may not.
                Err(BatchError::Truncated { .. }) if ahead => return Ok(None),
                Err(error) if taken == 0 => {
                    return Err(ReadError::Corrupt {
                        segment: read.base,
                        position: read.position.plus(iter.position() as u64),
                        error,
                    })
                }
                Err(_) => break,
            }
        }
        if taken == 0 {
            return Ok(None);
        }
        let data = match mode {
            ReadMode::SameThread => {
                self.inner.state.borrow_mut().stats.bytes_zero_copy += taken as u64;
                Bytes::from_owner(ThreadBoundRead {
                    result: read.result.clone(),
                    len: taken,
                    thread: std::thread::current().id(),
                })
            }
            ReadMode::CrossThread => {
                // The one copy on the cross-shard cold path: out of the DMA buffer into
                // memory any thread may free.
                self.inner.state.borrow_mut().stats.bytes_copied += taken as u64;
                Bytes::copy_from_slice(&read.result[..taken])
            }
        };
        Ok(Some(ReadSlice {
            chunks: vec![data],
            len: taken,
            first_offset,
            next_offset,
        }))
    }

    /// The read ahead waiting at `start`, if this log has one there and its segment has not
    /// changed since it was started.
    async fn take_read_ahead(&self, start: Offset) -> Option<Prefetched> {
        let ahead = {
            let mut st = self.inner.state.borrow_mut();
            let st = &mut *st;
            let usable = st
                .read_ahead
                .as_ref()
                .is_some_and(|a| a.next_offset == start && a.truncations == st.truncations);
            if !usable {
                return None;
            }
            st.read_ahead.take()?
        };
        let ReadAhead {
            segment,
            base,
            position,
            truncations,
            slot,
            ..
        } = ahead;
        let result = loop {
            let read = slot.read.listen();
            let state = std::mem::replace(&mut *slot.state.borrow_mut(), AheadState::Gone);
            match state {
                AheadState::Reading => {
                    *slot.state.borrow_mut() = AheadState::Reading;
                    read.await;
                }
                AheadState::Read(Ok(result)) => {
                    // Claimed: its bytes now belong to the answer.
                    slot.reserved.borrow_mut().take();
                    break result;
                }
                AheadState::Read(Err(_)) | AheadState::Gone => return None,
            }
        };
        let st = self.inner.state.borrow();
        if st.truncations != truncations || same_segment(&st.segments, base, &segment).is_none() {
            return None;
        }
        Some(Prefetched {
            segment,
            base,
            position,
            result,
        })
    }

    /// After a large read from disk of `len` bytes that ended at `position`, before the batch
    /// at `next_offset`: starts reading the next `len` bytes of the same segment (a consumer
    /// catching up asks for them next, and its fetch then finds them read), within the shard's
    /// read-ahead budget.
    fn read_ahead(
        &self,
        segment: &SegmentFile,
        position: FilePosition,
        next_offset: Offset,
        len: usize,
        max_bytes: usize,
    ) {
        if len < limits::READ_AHEAD_MIN_BYTES || max_bytes < limits::READ_AHEAD_MIN_BYTES {
            return;
        }
        let mut st = self.inner.state.borrow_mut();
        let st = &mut *st;
        // This log's previous read ahead, unused, gives its bytes back first.
        st.read_ahead = None;
        let Some(i) = st.segments.iter().rposition(|s| s.file.same(segment)) else {
            return;
        };
        let seg = &st.segments[i];
        let Some(file) = seg.file.if_open() else {
            return;
        };
        if position.0 >= seg.size_bytes {
            return;
        }
        let len = len
            .min(limits::READ_AHEAD_BYTES_MAX)
            .min((seg.size_bytes - position.0) as usize);
        let Some(reserved) = ReadAheadBytes::reserve(len) else {
            return;
        };
        let slot = Rc::new(AheadSlot {
            state: RefCell::new(AheadState::Reading),
            read: Notify::default(),
            reserved: RefCell::new(Some(reserved)),
        });
        let reading = slot.clone();
        glommio::spawn_local(async move {
            let result = file.read_at(position.0, len).await;
            *reading.state.borrow_mut() = AheadState::Read(result.map_err(|e| e.to_string()));
            reading.read.notify_all();
            glommio::timer::sleep(limits::READ_AHEAD_UNCLAIMED).await;
            *reading.state.borrow_mut() = AheadState::Gone;
            reading.reserved.borrow_mut().take();
        })
        .detach();
        st.read_ahead = Some(ReadAhead {
            segment: segment.clone(),
            base: seg.base(),
            position,
            next_offset,
            truncations: st.truncations,
            slot,
        });
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
            .index_floor(segment_base, &file, |offsets, times| {
                offsets.floor(times.scan_start(ts))
            })
            .await?
        else {
            // Deleted by retention (the answer lies in a later segment) or replaced by the
            // cleaner meanwhile: look again.
            return Box::pin(self.offset_for_timestamp(ts)).await;
        };
        let Some(file) = file.open().await? else {
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
        let file = file.file().await?;
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
}

/// The index of the segment at `base` if it is still the one whose file the caller holds.
fn same_segment(
    segments: &[crate::segment::Segment],
    base: Offset,
    file: &SegmentFile,
) -> Option<usize> {
    let i = segments.binary_search_by_key(&base, |s| s.base()).ok()?;
    segments[i].file.same(file).then_some(i)
}

impl Inner {
    /// Where a scan in the segment at `base` starts: the index entry `lookup` picks from that
    /// segment's offset and time indexes, which are the active segment's own or a sealed
    /// segment's from the shard cache (read from disk on a miss). None when the segment the
    /// caller holds (`file`) is no longer the log's at `base`: deleted, or replaced by the
    /// cleaner (whose group keeps the first segment's base), so the caller looks again.
    async fn index_floor(
        &self,
        base: Offset,
        file: &SegmentFile,
        lookup: impl Fn(&OffsetIndex, &TimeIndex) -> OffsetEntry,
    ) -> Result<Option<FilePosition>, StorageIoError> {
        let position = |entry: OffsetEntry| FilePosition(u64::from(entry.position));
        let size_bytes = {
            let st = self.state.borrow();
            let Some(i) = same_segment(&st.segments, base, file) else {
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
            seg.size_bytes
        };
        let loaded = self.sealed_indexes(base, file, size_bytes).await?;
        Ok(loaded.map(|indexes| position(lookup(&indexes.offset, &indexes.time))))
    }

    /// Reads the indexes of the sealed segment at `base` from its index files (rebuilt by a
    /// scan when those are missing or damaged) and caches them. None when the segment was
    /// deleted meanwhile.
    pub(super) async fn sealed_indexes(
        &self,
        base: Offset,
        file: &SegmentFile,
        size_bytes: u64,
    ) -> Result<Option<Rc<SegmentIndexes>>, StorageIoError> {
        let exists = || same_segment(&self.state.borrow().segments, base, file).is_some();
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
                let Some(file) = file.open().await? else {
                    return Ok(None);
                };
                let outcome = segment::scan(
                    &file,
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
}

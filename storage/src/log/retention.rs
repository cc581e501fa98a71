//! Removing data from the start of a log: `enforce_retention` (roll by `segment_ms`, delete
//! whole old segments beyond `retention_ms` / `retention_bytes`), `delete_records` (advance and
//! persist the log start offset), and the segment deletion both share: a deleted segment's
//! files are renamed `*.deleted` at once and removed `file_delete_delay_ms` later (`open`
//! removes any it finds, so a crash in between leaves nothing behind for long). Also the
//! periodic checkpoint of the active segment's indexes (`checkpoint_active_indexes`, under the
//! index role only), which bounds what a restart after a crash rescans.
//!
//! What it must never do: delete the active segment, or move the log start offset backwards or
//! above what the log considers acknowledged.

use tern_protocol::types::{Offset, TimestampMs};

use crate::error::{DeleteError, StorageIoError};
use crate::index::SegmentIndexer;
use crate::segment::{self, log_file_name, offset_index_file_name, time_index_file_name, Segment};

use crate::checkpoint::{encode_checkpoint, encode_index_checkpoint};
pub(super) const DELETED_SUFFIX: &str = ".deleted";

use super::{
    active, failed_error, remove_if_exists, sync_dir, Inner, Log, INDEX_CHECKPOINT_FILE_NAME,
    LOG_START_OFFSET_FILE_NAME,
};

impl Log {
    /// Advances the log start offset to `before` (persisted first), then deletes whole segments
    /// entirely below it. Returns the new log start offset.
    pub async fn delete_records(&self, before: Offset) -> Result<Offset, DeleteError> {
        let _writer = self.inner.acquire_writer().await;
        {
            let st = self.inner.state.borrow();
            if let Some(message) = &st.failed {
                return Err(failed_error(message).into());
            }
            if before.0 < 0 || before > st.ack_end {
                return Err(DeleteError::OffsetOutOfRange {
                    requested: before,
                    high_watermark: st.ack_end,
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
        {
            let mut st = self.inner.state.borrow_mut();
            st.log_start = before;
            st.epochs_dirty |= st.epochs.truncate_from_start(before);
            st.check_offsets();
        }
        self.inner.delete_old_segments(None).await?;
        Ok(self.log_start_offset())
    }

    /// Rolls the active segment if it is older than `segment_ms`, then deletes whole old segments
    /// beyond `retention_ms` / `retention_bytes` (never the active one, and none holding an
    /// offset at or above `keep_from`: a replicated partition's leader keeps what its followers
    /// have not fetched, as Kafka keeps what is above the high watermark).
    pub async fn enforce_retention(
        &self,
        now: TimestampMs,
        keep_from: Offset,
    ) -> Result<(), StorageIoError> {
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
        self.inner.delete_old_segments(Some((now, keep_from))).await
    }
}

impl Log {
    /// Persists the active segment's indexes as far as they cover durable data, so that after
    /// a crash `open` scans only what was written since (from the last entry) instead of the
    /// whole active segment. A no-op when nothing was indexed since the last call.
    pub async fn checkpoint_active_indexes(&self) -> Result<(), StorageIoError> {
        // Only the index role: appends go on while the files are written. The copy below is
        // taken at once, so it is consistent without the writer role.
        let _index_io = self.inner.acquire_index_io().await;
        let indexer = {
            let mut st = self.inner.state.borrow_mut();
            if st.failed.is_some() || st.closed {
                return Ok(());
            }
            let durable = st.durable_end;
            let active = active(&st.segments);
            let covered = active
                .indexer
                .offset_index
                .entries()
                .iter()
                .take_while(|e| active.base().plus(i64::from(e.relative_offset)) < durable)
                .count();
            if covered == 0 || st.indexes_checkpointed == (active.base(), covered) {
                return Ok(());
            }
            let mut indexer = SegmentIndexer::new(active.base());
            for e in &active.indexer.offset_index.entries()[..covered] {
                indexer.offset_index.push(*e);
            }
            let last = indexer.offset_index.entries()[covered - 1].relative_offset;
            for e in active.indexer.time_index.entries() {
                if e.relative_offset <= last {
                    indexer.time_index.maybe_push(*e);
                }
            }
            st.indexes_checkpointed = (indexer.base, covered);
            indexer
        };
        let bytes = encode_index_checkpoint(
            indexer.base,
            &indexer.offset_index.encode(),
            &indexer.time_index.encode(),
        );
        if segment::write_in_place(&self.inner.dir, INDEX_CHECKPOINT_FILE_NAME, &bytes, true)
            .await?
        {
            sync_dir(&self.inner.dir).await?;
        }
        Ok(())
    }
}

impl Inner {
    /// Removes old segments: those entirely below the log start offset, and, when `retention`
    /// gives the time and the offset to keep from, those beyond the retention limits that end
    /// at or below that offset. Never the active segment.
    async fn delete_old_segments(
        &self,
        retention: Option<(TimestampMs, Offset)>,
    ) -> Result<(), StorageIoError> {
        let victims: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let candidates = st.segments.len() - 1;
            let mut n = 0;
            while n < candidates && st.segments[n + 1].base() <= st.log_start {
                n += 1;
            }
            if let Some((now, keep_from)) = retention {
                // Retention may take only segments that end at or below `keep_from`.
                let bounded = |st: &super::State, n: usize| st.segments[n + 1].base() <= keep_from;
                if st.config.retention_ms >= 0 {
                    while n < candidates
                        && bounded(&st, n)
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
                        && bounded(&st, n)
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
            let log_start = st.log_start;
            st.epochs_dirty |= st.epochs.truncate_from_start(log_start);
            st.check_offsets();
            victims
        };
        if victims.is_empty() {
            return Ok(());
        }
        let delay_ms = self.state.borrow().config.file_delete_delay_ms;
        let mut doomed = Vec::new();
        for victim in victims {
            let base = victim.base();
            self.index_cache.remove(self.log_id, base);
            victim.file.close().await;
            for name in [
                log_file_name(base),
                offset_index_file_name(base),
                time_index_file_name(base),
            ] {
                let from = self.dir.join(&name);
                if delay_ms == 0 {
                    remove_if_exists(&from).await?;
                    continue;
                }
                // Renamed now (a reopen no longer sees the segment), removed after the delay.
                let to = self.dir.join(format!("{name}{DELETED_SUFFIX}"));
                match glommio::io::rename(&from, &to).await {
                    Ok(()) => doomed.push(to),
                    Err(e) => {
                        let e: std::io::Error = e.into();
                        if e.kind() != std::io::ErrorKind::NotFound {
                            return Err(StorageIoError::new(
                                format!("renaming {}", from.display()),
                                e,
                            ));
                        }
                    }
                }
            }
            tracing::info!(dir = %self.dir.display(), segment = base.0, delay_ms, "deleted segment");
        }
        if !doomed.is_empty() {
            glommio::spawn_local(async move {
                glommio::timer::sleep(std::time::Duration::from_millis(delay_ms)).await;
                for path in doomed {
                    if let Err(error) = remove_if_exists(&path).await {
                        tracing::warn!(%error, "removing a deleted segment file");
                    }
                }
            })
            .detach();
        }
        sync_dir(&self.dir).await
    }
}

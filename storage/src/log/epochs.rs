//! The log's leader-epoch cache: persisting it (before any batch of a new epoch is written),
//! recovering it on open (from `leader-epoch-checkpoint`, trimmed to the recovered log, or
//! rebuilt from batch headers when the file is missing or damaged), and its public lookups.
//!
//! The pure logic and the file format are in `crate::leader_epoch`; epochs enter the cache in
//! `State::enqueue` (commit), leave it in `truncate_to` and when the log start advances.
//!
//! What it must never do: let the file lag the data (a crash would forget an epoch that has
//! batches), or fail `open` because the file is damaged (it is derived data).

use tern_protocol::types::{FilePosition, LeaderEpoch, Offset};

use crate::error::StorageIoError;
use crate::leader_epoch::{EpochEntry, LeaderEpochCache, LEADER_EPOCH_FILE_NAME};
use crate::segment::{self, log_file_name, walk_headers};

use super::{sync_dir, Inner, Log};

impl Log {
    /// The latest leader epoch with data in this log (pending appends included).
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.inner.state.borrow().epochs.latest().map(|e| e.epoch)
    }

    /// OffsetForLeaderEpoch: the largest epoch at or below `epoch` and its end offset (the
    /// start of the next epoch, or the log end offset for the latest); `None` is Kafka's
    /// UNDEFINED. See [`LeaderEpochCache::end_offset_for`] for the exact cases.
    pub fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> Option<(LeaderEpoch, Offset)> {
        let st = self.inner.state.borrow();
        st.epochs.end_offset_for(epoch, st.leo)
    }

    /// The (epoch, start offset) entries, oldest first.
    pub fn epoch_entries(&self) -> Vec<EpochEntry> {
        self.inner.state.borrow().epochs.entries().to_vec()
    }
}

impl Inner {
    /// Writes `leader-epoch-checkpoint` if the cache changed since it was last written. The
    /// caller holds the writer role.
    pub(super) async fn persist_epochs_if_dirty(&self) -> Result<(), StorageIoError> {
        let bytes = {
            let mut st = self.state.borrow_mut();
            if !st.epochs_dirty {
                return Ok(());
            }
            st.epochs_dirty = false;
            st.epochs.encode()
        };
        let written = async {
            segment::write_file_atomically(&self.dir, LEADER_EPOCH_FILE_NAME, &bytes).await?;
            sync_dir(&self.dir).await
        }
        .await;
        if written.is_err() {
            self.state.borrow_mut().epochs_dirty = true;
        }
        written
    }

    /// Loads the cache at open, once the segments are recovered: from the file, trimmed to the
    /// recovered log; or, when the file is missing or damaged, from every batch header in the
    /// log (one header walk over all segments: slow for a large log, but only after damage or
    /// when upgrading a log written before epochs were kept).
    pub(super) async fn recover_epochs(&self) -> Result<(), StorageIoError> {
        let path = self.dir.join(LEADER_EPOCH_FILE_NAME);
        let loaded = match segment::read_small_file(&path).await? {
            Some(bytes) => match LeaderEpochCache::decode(&bytes) {
                Ok(cache) => Some(cache),
                Err(damage) => {
                    tracing::warn!(dir = %self.dir.display(), ?damage,
                        "leader-epoch-checkpoint is damaged; rebuilding it from batch headers");
                    None
                }
            },
            None => None,
        };
        let (mut cache, mut dirty) = match loaded {
            Some(cache) => (cache, false),
            None => (self.epochs_from_headers().await?, true),
        };
        let (log_start, leo) = {
            let st = self.state.borrow();
            (st.log_start, st.leo)
        };
        // The file runs ahead of the data by design (written before the batches): drop epochs
        // whose batches did not survive.
        dirty |= cache.truncate_from_end(leo);
        dirty |= cache.truncate_from_start(log_start);
        {
            let mut st = self.state.borrow_mut();
            st.epochs = cache;
            st.epochs_dirty = dirty;
            st.check_offsets();
        }
        self.persist_epochs_if_dirty().await
    }

    /// Walks every batch header of every segment, noting where each epoch starts. A segment
    /// whose headers stop parsing contributes what came before (recovery already validated the
    /// active segment; a sealed one damaged since is reported by reads, not here).
    async fn epochs_from_headers(&self) -> Result<LeaderEpochCache, StorageIoError> {
        let segments: Vec<_> = {
            let st = self.state.borrow();
            st.segments
                .iter()
                .map(|s| (s.base(), s.file.clone(), s.size_bytes))
                .collect()
        };
        let mut cache = LeaderEpochCache::default();
        for (base, file, size_bytes) in segments {
            let path = self.dir.join(log_file_name(base));
            let Some(file) = file.open().await? else {
                continue;
            };
            let mut position = FilePosition(0);
            let walked = walk_headers(&file, &path, &mut position, size_bytes, |header| {
                cache.assign(header.partition_leader_epoch(), header.base_offset());
                false
            })
            .await;
            if let Err((position, error)) = walked {
                tracing::warn!(segment = %path.display(), position = position.0, ?error,
                    "cannot read batch headers while rebuilding the leader-epoch cache");
            }
        }
        Ok(cache)
    }
}

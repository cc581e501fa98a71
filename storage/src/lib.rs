//! tern-storage: the partition log (segments, indexes, recovery, retention, tail cache, read
//! path) on glommio direct IO.
//!
//! Architecture invariant: a `Log` is touched only by its owner shard; it spawns at most one
//! local timer task (interval flush) and never blocks the executor on the append or read path.
//! Index lookups and batch validation are pure code (`index`, `tern_protocol::batch`); the I/O
//! lives in `segment` and `log`.
//!
//! Code map:
//! - `log/mod.rs`: the `Log` type, its state and offset invariants, accessors, `close`,
//!   `remove`.
//! - `log/recovery.rs`: `open` — segment scan, torn-tail truncation, index rebuild, the
//!   `log-start-offset` checkpoint.
//! - `log/commit.rs`: `append`, `append_replicated`, the writer and sync roles, group commit,
//!   roll.
//! - `log/read.rs`: reads, the tail cache, timestamp lookups, `recent_batch_headers`.
//! - `log/retention.rs`: `enforce_retention`, `delete_records`.
//! - `log/truncate.rs`: `truncate_to`, crash-safe through the `truncate-to` intent file.
//! - `log/epochs.rs`: persisting, recovering and querying the log's leader-epoch cache.
//! - `log/clean.rs`: log compaction — dirtiness, one cleaning pass, the crash-safe swap.
//! - `offset_map`: the cleaner's fixed-memory map of key hash to latest offset (pure).
//! - `leader_epoch`: the leader-epoch cache and its `leader-epoch-checkpoint` format (pure).
//! - `segment`, `index`, `index_cache`, `file_budget`: one segment's files, the sparse
//!   indexes (pure), the shard-wide budgets for sealed segments' indexes and open files.
//! - `checkpoint`: the one-offset checkpoint files' format (pure).
//! - `config`, `limits`, `error`, `lock`, `notify`: configuration, every bound, one error enum
//!   per operation, the data-dir lock, the wake-up primitives.

mod checkpoint;
pub mod config;
pub mod error;
mod file_budget;
pub mod index;
pub mod index_cache;
pub mod leader_epoch;
pub mod limits;
mod lock;
mod log;
mod notify;
pub mod offset_map;
mod segment;

pub use config::{FlushPolicy, LogConfig, TimestampType};
pub use error::{
    codes, AppendError, AppendReplicatedError, DeleteError, LockError, OpenError, ReadError,
    StorageIoError, TruncateError,
};
pub use file_budget::{FileBudget, FileBudgetStats};
pub use index_cache::{IndexCache, IndexCacheStats};
pub use leader_epoch::{EpochEntry, LeaderEpochCache, LEADER_EPOCH_FILE_NAME};
pub use lock::{DataDirLock, LOCK_FILE_NAME};
pub use log::{
    AppendInfo, CleanOptions, CleanReport, Cleanable, Log, LogStats, ReadMode, ReadSlice,
    TailBudget, TailBudgetStats, CLEANER_CHECKPOINT_FILE_NAME, CLEAN_SHUTDOWN_FILE_NAME,
    CLEAN_SWAP_FILE_NAME, INDEX_CHECKPOINT_FILE_NAME, LOG_START_OFFSET_FILE_NAME,
    TRUNCATE_TO_FILE_NAME,
};
pub use offset_map::OffsetMap;
pub use segment::prime_direct_io;
pub use segment_names::*;

/// File names of a segment, for tools and tests that inspect a log directory.
pub mod segment_names {
    use tern_protocol::types::Offset;

    pub fn log_file_name(base: Offset) -> String {
        crate::segment::log_file_name(base)
    }
    pub fn offset_index_file_name(base: Offset) -> String {
        crate::segment::offset_index_file_name(base)
    }
    pub fn time_index_file_name(base: Offset) -> String {
        crate::segment::time_index_file_name(base)
    }
}

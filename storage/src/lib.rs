//! tern-storage: the partition log (segments, indexes, recovery, retention, tail cache, read
//! path) on glommio direct IO.
//!
//! Architecture invariant: a `Log` is touched only by its owner shard; it spawns at most one
//! local timer task (interval flush) and never blocks the executor on the append or read path.
//! Index lookups and batch validation are pure code (`index`, `tern_protocol::batch`); the I/O
//! lives in `segment` and `log`.

pub mod config;
pub mod error;
pub mod index;
pub mod index_cache;
pub mod limits;
mod lock;
mod log;
mod notify;
mod segment;

pub use config::{FlushPolicy, LogConfig, TimestampType};
pub use error::{codes, AppendError, DeleteError, LockError, OpenError, ReadError, StorageIoError};
pub use index_cache::{IndexCache, IndexCacheStats};
pub use lock::{DataDirLock, LOCK_FILE_NAME};
pub use log::{
    AppendInfo, Log, LogStats, ReadMode, ReadSlice, CLEAN_SHUTDOWN_FILE_NAME,
    LOG_START_OFFSET_FILE_NAME,
};
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

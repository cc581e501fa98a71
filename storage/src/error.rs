//! The typed errors of the storage engine: one enum per operation, each variant naming the
//! Kafka error code the broker answers with.
//!
//! Expected failures (bad input, an offset out of range, a failing disk) are values here; bugs
//! are assertions elsewhere. This file must never grow an "Other(String)" catch-all.

use std::path::PathBuf;

use tern_protocol::batch::BatchError;
use tern_protocol::types::{FilePosition, Offset};

/// Kafka error codes used below, named once.
pub mod codes {
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_CONFIG: i16 = 40;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const INVALID_RECORD: i16 = 87;
}

/// An I/O failure (full disk, EIO, …) or a log that stopped after one. Maps to
/// KAFKA_STORAGE_ERROR (56). The log stays consistent on disk and can be reopened.
#[derive(Debug, thiserror::Error)]
#[error("storage I/O error while {context}: {source}")]
pub struct StorageIoError {
    pub context: String,
    #[source]
    pub source: std::io::Error,
}

impl StorageIoError {
    pub fn new(context: impl Into<String>, source: impl Into<std::io::Error>) -> StorageIoError {
        StorageIoError {
            context: context.into(),
            source: source.into(),
        }
    }

    pub fn kafka_error_code(&self) -> i16 {
        codes::KAFKA_STORAGE_ERROR
    }
}

/// Why `Log::append` refused or failed. Nothing was written for the first three variants.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// A batch failed header or CRC validation: CORRUPT_MESSAGE (2) or INVALID_RECORD (87),
    /// as [`BatchError::kafka_error_code`] says.
    #[error("invalid batch at byte {position}: {error}")]
    InvalidBatch { position: usize, error: BatchError },
    /// The request carried no batch at all. Maps to INVALID_RECORD (87).
    #[error("empty record set")]
    Empty,
    /// A batch is larger than `max_message_bytes`. Maps to MESSAGE_TOO_LARGE (10).
    #[error("batch of {batch_bytes} bytes exceeds max.message.bytes {max_bytes}")]
    MessageTooLarge { batch_bytes: usize, max_bytes: u32 },
    /// The write or the fdatasync failed. Maps to KAFKA_STORAGE_ERROR (56).
    #[error(transparent)]
    Storage(#[from] StorageIoError),
}

impl AppendError {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            AppendError::InvalidBatch { error, .. } => error.kafka_error_code(),
            AppendError::Empty => codes::INVALID_RECORD,
            AppendError::MessageTooLarge { .. } => codes::MESSAGE_TOO_LARGE,
            AppendError::Storage(e) => e.kafka_error_code(),
        }
    }
}

/// Why `Log::append_replicated` refused or failed. Nothing was written for any variant but
/// `Storage`. These reach a follower's fetcher, not a client; the codes are for its logs and
/// metrics.
#[derive(Debug, thiserror::Error)]
pub enum AppendReplicatedError {
    /// A batch failed header or CRC validation: CORRUPT_MESSAGE (2) or INVALID_RECORD (87),
    /// as [`BatchError::kafka_error_code`] says.
    #[error("invalid batch at byte {position}: {error}")]
    InvalidBatch { position: usize, error: BatchError },
    /// No batch at all. Maps to INVALID_RECORD (87).
    #[error("empty record set")]
    Empty,
    /// A batch is larger than the engine's hard limit. Maps to MESSAGE_TOO_LARGE (10).
    #[error("batch of {batch_bytes} bytes exceeds the limit of {max_bytes}")]
    BatchTooLarge { batch_bytes: usize, max_bytes: u32 },
    /// The first batch starts below the log end: the follower must truncate first. Maps to
    /// OFFSET_OUT_OF_RANGE (1).
    #[error("replicated batch at {base_offset} overlaps the log, which ends at {log_end}")]
    Overlap {
        log_end: Offset,
        base_offset: Offset,
    },
    /// A batch within the call starts before the previous one ended. Maps to
    /// INVALID_RECORD (87).
    #[error("batch at byte {position} starts at offset {found}, expected {expected}")]
    NonContiguous {
        position: usize,
        expected: Offset,
        found: Offset,
    },
    /// The write or the fdatasync failed. Maps to KAFKA_STORAGE_ERROR (56).
    #[error(transparent)]
    Storage(#[from] StorageIoError),
}

impl AppendReplicatedError {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            AppendReplicatedError::InvalidBatch { error, .. } => error.kafka_error_code(),
            AppendReplicatedError::Empty | AppendReplicatedError::NonContiguous { .. } => {
                codes::INVALID_RECORD
            }
            AppendReplicatedError::BatchTooLarge { .. } => codes::MESSAGE_TOO_LARGE,
            AppendReplicatedError::Overlap { .. } => codes::OFFSET_OUT_OF_RANGE,
            AppendReplicatedError::Storage(e) => e.kafka_error_code(),
        }
    }
}

/// Why `Log::read` or `Log::offset_for_timestamp` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The offset is below the log start or above the log end. Maps to OFFSET_OUT_OF_RANGE (1).
    #[error("offset {requested} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    /// Bytes read back from disk are not valid batches (pair assertion failed). Maps to
    /// KAFKA_STORAGE_ERROR (56).
    #[error("corrupt data in segment {segment} at byte {position}: {error}")]
    Corrupt {
        segment: Offset,
        position: FilePosition,
        error: BatchError,
    },
    /// The read itself failed. Maps to KAFKA_STORAGE_ERROR (56).
    #[error(transparent)]
    Storage(#[from] StorageIoError),
}

impl ReadError {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            ReadError::OffsetOutOfRange { .. } => codes::OFFSET_OUT_OF_RANGE,
            ReadError::Corrupt { .. } | ReadError::Storage(_) => codes::KAFKA_STORAGE_ERROR,
        }
    }
}

/// Why `Log::open` failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration is outside the limits. Maps to INVALID_CONFIG (40).
    #[error("invalid log config: {0}")]
    InvalidConfig(String),
    /// Reading, creating or repairing files failed. Maps to KAFKA_STORAGE_ERROR (56).
    #[error(transparent)]
    Storage(#[from] StorageIoError),
}

impl OpenError {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            OpenError::InvalidConfig(_) => codes::INVALID_CONFIG,
            OpenError::Storage(e) => e.kafka_error_code(),
        }
    }
}

/// Why `Log::delete_records` failed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// `before` is negative or above the log's acknowledged end
    /// (`Log::acknowledged_end_offset`; the field keeps its historical name). Maps to
    /// OFFSET_OUT_OF_RANGE (1).
    #[error("delete_records offset {requested} out of range [0, {high_watermark}]")]
    OffsetOutOfRange {
        requested: Offset,
        high_watermark: Offset,
    },
    /// Writing the checkpoint or removing files failed. Maps to KAFKA_STORAGE_ERROR (56).
    #[error(transparent)]
    Storage(#[from] StorageIoError),
}

impl DeleteError {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            DeleteError::OffsetOutOfRange { .. } => codes::OFFSET_OUT_OF_RANGE,
            DeleteError::Storage(e) => e.kafka_error_code(),
        }
    }
}

/// Why `Log::truncate_to` failed.
#[derive(Debug, thiserror::Error)]
pub enum TruncateError {
    /// The batch containing `requested` starts below the log start offset: truncating there
    /// would end the log before it begins. Nothing was changed. Maps to OFFSET_OUT_OF_RANGE (1).
    #[error(
        "truncate_to {requested} (batch at {batch_base}) below the log start offset {log_start}"
    )]
    BelowLogStart {
        requested: Offset,
        /// Where the log would end: the base offset of the batch containing `requested`.
        batch_base: Offset,
        log_start: Offset,
    },
    /// The batch headers leading to `requested` do not parse. Nothing was changed. Maps to
    /// KAFKA_STORAGE_ERROR (56).
    #[error("corrupt data in segment {segment} at byte {position}: {error}")]
    Corrupt {
        segment: Offset,
        position: FilePosition,
        error: BatchError,
    },
    /// A file operation failed part way. The log refuses further use; reopening completes the
    /// truncation from its durable intent record. Maps to KAFKA_STORAGE_ERROR (56).
    #[error(transparent)]
    Storage(#[from] StorageIoError),
}

impl TruncateError {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            TruncateError::BelowLogStart { .. } => codes::OFFSET_OUT_OF_RANGE,
            TruncateError::Corrupt { .. } | TruncateError::Storage(_) => codes::KAFKA_STORAGE_ERROR,
        }
    }
}

/// Why `DataDirLock::acquire` failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or open file description) holds the lock. Maps to KAFKA_STORAGE_ERROR (56).
    #[error("data directory {} is locked by another process{}", dir.display(), holder_pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        dir: PathBuf,
        holder_pid: Option<u32>,
    },
    /// The lock file could not be created or locked. Maps to KAFKA_STORAGE_ERROR (56).
    #[error("cannot lock data directory {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl LockError {
    pub fn kafka_error_code(&self) -> i16 {
        codes::KAFKA_STORAGE_ERROR
    }
}

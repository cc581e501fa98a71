//! Per-log configuration (Kafka's topic-level `segment.bytes`, `retention.ms`, … equivalents).
//!
//! Plain data with defaults and a validation against `limits`; it never performs I/O.

use crate::limits;

/// How appends become durable before they are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Acknowledge after the fdatasync covering the append (group commit). The default.
    EveryAppend,
    /// Acknowledge after the write; fdatasync every `messages` records or `ms` milliseconds
    /// (Kafka's `flush.messages` / `flush.ms`; `u64::MAX` ms: never by time, as Kafka's
    /// default `Long.MAX_VALUE`).
    Interval { messages: u64, ms: u64 },
}

/// Which timestamp a batch carries: the producer's, or the broker's at append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll when the active segment would exceed this.
    pub segment_bytes: u64,
    /// Roll when the active segment's first batch is older than this.
    pub segment_ms: i64,
    /// Delete old segments while the log exceeds this; -1 is unlimited.
    pub retention_bytes: i64,
    /// Delete segments whose newest timestamp is older than this; -1 is unlimited.
    pub retention_ms: i64,
    /// Largest batch accepted.
    pub max_message_bytes: u32,
    pub flush: FlushPolicy,
    /// One offset and time index entry per this many bytes of batches.
    pub index_interval_bytes: u32,
    /// Largest index of one segment (Kafka's `segment.index.bytes`): the active segment rolls
    /// before its offset index (8 bytes an entry) or time index (12) would outgrow it, which
    /// bounds the one index each log keeps in memory.
    pub segment_index_bytes: u32,
    /// Memory budget of this log's tail cache.
    pub tail_cache_bytes: usize,
    pub timestamp_type: TimestampType,
    /// How long a segment deleted by retention or DeleteRecords stays on disk, renamed
    /// `*.deleted`, before it is removed (Kafka's `file.delete.delay.ms`). Readers that hold
    /// it open keep reading it either way.
    pub file_delete_delay_ms: u64,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            retention_ms: 7 * 24 * 3600 * 1000,
            max_message_bytes: 1_048_588,
            flush: FlushPolicy::EveryAppend,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 * 1024 * 1024,
            tail_cache_bytes: 8 * 1024 * 1024,
            timestamp_type: TimestampType::CreateTime,
            file_delete_delay_ms: 60_000,
        }
    }
}

impl LogConfig {
    /// Checks the configuration against the engine's limits; returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(format!(
                "segment_bytes {} outside [{}, {}]",
                self.segment_bytes,
                limits::SEGMENT_BYTES_MIN,
                limits::SEGMENT_BYTES_MAX
            ));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > limits::BATCH_BYTES_MAX {
            return Err(format!(
                "max_message_bytes {} outside [1, {}]",
                self.max_message_bytes,
                limits::BATCH_BYTES_MAX
            ));
        }
        if self.index_interval_bytes < limits::INDEX_INTERVAL_BYTES_MIN {
            return Err(format!(
                "index_interval_bytes {} below {}",
                self.index_interval_bytes,
                limits::INDEX_INTERVAL_BYTES_MIN
            ));
        }
        if self.segment_index_bytes < limits::SEGMENT_INDEX_BYTES_MIN {
            return Err(format!(
                "segment_index_bytes {} below {}",
                self.segment_index_bytes,
                limits::SEGMENT_INDEX_BYTES_MIN
            ));
        }
        if self.segment_ms <= 0 {
            return Err(format!("segment_ms {} must be positive", self.segment_ms));
        }
        if let FlushPolicy::Interval { messages, ms } = self.flush {
            if messages == 0 || ms == 0 {
                return Err("flush interval messages and ms must be positive".into());
            }
        }
        Ok(())
    }
}

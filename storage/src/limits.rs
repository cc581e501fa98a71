//! Every size and count the storage engine bounds, in one place, with their relations
//! asserted at compile time.
//!
//! Nothing here does I/O; other modules read these constants and must not invent their own
//! magic numbers. When a limit changes, the assertions below say which others must follow.

use tern_protocol::batch::BATCH_HEADER_BYTES;

/// Alignment of every direct-IO write and read position and size. Devices report 512 or 4096;
/// 4096 satisfies both.
pub const DMA_ALIGNMENT_BYTES: u64 = 4096;

/// Largest batch any log accepts, whatever `max_message_bytes` says.
pub const BATCH_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Smallest and largest `segment_bytes`. Index positions are u32, so a segment stays below 4 GiB;
/// Kafka's own ceiling is i32::MAX.
pub const SEGMENT_BYTES_MIN: u64 = 1024;
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

/// Smallest `index_interval_bytes`: one index entry per this many bytes at most.
pub const INDEX_INTERVAL_BYTES_MIN: u32 = 64;

/// Largest single direct-IO write built from coalesced pending batches (group commit). A single
/// larger batch is still written whole.
pub const WRITE_COALESCE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Preallocation of segment files (fallocate with KEEP_SIZE), so that appends rarely allocate
/// blocks synchronously. A segment is preallocated ahead of its end by as much as it already
/// holds, between these bounds: a partition that holds little costs about the minimum on
/// disk (a fixed 64 MiB step made 300 partitions of 10 records take 19 GB; a 1 MiB minimum
/// still made 10,000 quiet partitions take 10 GB), a busy one reaches the maximum after a
/// dozen steps (each one fallocate call, off the write's path).
pub const PREALLOCATE_EXTENT_MIN_BYTES: u64 = 64 * 1024;
pub const PREALLOCATE_EXTENT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// How far past `end` a segment holding `end` bytes is preallocated.
pub const fn preallocate_extent(end: u64) -> u64 {
    clamp_to_blocks(
        end,
        PREALLOCATE_EXTENT_MIN_BYTES,
        PREALLOCATE_EXTENT_MAX_BYTES,
    )
}

/// `v` within `[min, max]`, rounded up to whole DMA blocks.
const fn clamp_to_blocks(v: u64, min: u64, max: u64) -> u64 {
    let v = if v < min {
        min
    } else if v > max {
        max
    } else {
        v
    };
    v.div_ceil(DMA_ALIGNMENT_BYTES) * DMA_ALIGNMENT_BYTES
}

/// Zeroing ahead (`log/zero.rs`): a busy active segment's blocks past its end are written with
/// zeros ahead of the appends, so an append overwrites blocks that are already written inside
/// the file's size. On ext4 such a direct write changes no metadata: it is issued inline from
/// the io_uring submission instead of being punted to an io-wq worker, and the fdatasync after
/// it is a device cache flush without a journal commit. A segment starts zeroing once it holds
/// `ZERO_AHEAD_FROM_BYTES` (a quiet partition never pays for it), keeps about a second of its
/// write rate zeroed ahead, between the window bounds (zeros are written twice, and a crash
/// leaves them to be cut off at recovery: a window as large as the segment made 1,000
/// partitions' restart take 16.6 s instead of 7), and zeroes in writes of at most
/// `ZERO_CHUNK_BYTES_MAX`, one at a time per shard (the bound on the disk bandwidth it takes).
pub const ZERO_AHEAD_FROM_BYTES: u64 = 64 * 1024;
pub const ZERO_AHEAD_WINDOW_MIN_BYTES: u64 = 128 * 1024;
pub const ZERO_AHEAD_WINDOW_MAX_BYTES: u64 = 8 * 1024 * 1024;
pub const ZERO_CHUNK_BYTES_MAX: u64 = 1024 * 1024;
/// When the appends catch up with a zeroing write in flight (they must wait for it), the log
/// stops zeroing for this long: at that write rate zeroing costs more than it saves.
pub const ZERO_AHEAD_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// How far past its end a segment written at `bytes_per_s` keeps blocks zeroed.
pub const fn zero_ahead_window(bytes_per_s: u64) -> u64 {
    clamp_to_blocks(
        bytes_per_s,
        ZERO_AHEAD_WINDOW_MIN_BYTES,
        ZERO_AHEAD_WINDOW_MAX_BYTES,
    )
}

/// Size of each read while scanning a segment during recovery or an index rebuild.
pub const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

/// The cleaner reads and writes segments in pieces of this size (a multiple of the alignment).
pub const CLEAN_IO_BYTES: usize = 1024 * 1024;
const _: () = assert!((CLEAN_IO_BYTES as u64).is_multiple_of(DMA_ALIGNMENT_BYTES));

/// Size of each read while walking batch headers from an index entry to a target offset.
pub const HEADER_WALK_WINDOW_BYTES: usize = 64 * 1024;

/// Largest read served by one `Log::read` call, whatever `max_bytes` the caller passes.
pub const READ_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Smallest `segment_index_bytes`: room for one batch's offset entry and the two time entries
/// (its own and the seal's) that one batch can add.
pub const SEGMENT_INDEX_BYTES_MIN: u32 = 2 * TIME_INDEX_ENTRY_BYTES as u32;

/// Memory for sealed segments' indexes in a cache made by `Log::open` for a lone log. The broker
/// shares one cache per shard, sized by its own configuration.
pub const INDEX_CACHE_BYTES_DEFAULT: usize = 16 * 1024 * 1024;

/// Reads from disk at least this large start a read ahead of the next as many bytes (a
/// consumer catching up; Kafka's clients fetch up to 1 MiB a partition by default).
pub const READ_AHEAD_MIN_BYTES: usize = 512 * 1024;

/// The largest read ahead, and the most all of one shard's logs hold at once.
pub const READ_AHEAD_BYTES_MAX: usize = 16 * 1024 * 1024;
pub const READ_AHEAD_BYTES_PER_SHARD: usize = 64 * 1024 * 1024;

/// A read ahead no reader has claimed this long after it completed is dropped (its consumer
/// caught up into the tail cache, or went away).
pub const READ_AHEAD_UNCLAIMED: std::time::Duration = std::time::Duration::from_secs(1);

/// Sealed segments' files kept open by a budget made by `Log::open` for a lone log. The broker
/// shares one budget per shard (`--open-files-per-shard`).
pub const OPEN_SEALED_FILES_DEFAULT: usize = 1024;

/// Offset index entry: relative offset u32 + position u32.
pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;
/// Time index entry: timestamp i64 + relative offset u32.
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// Size of the `log-start-offset` checkpoint file: offset i64 + CRC32C u32.
pub const CHECKPOINT_BYTES: usize = 12;

/// Entries a log's leader-epoch cache keeps; beyond it the oldest epoch is forgotten. One entry
/// per leader change that wrote data: far more than a partition sees in its lifetime.
pub const LEADER_EPOCH_ENTRIES_MAX: usize = 4096;
/// `leader-epoch-checkpoint` layout: version u16 + count u32, entries of epoch i32 + start
/// offset i64, then a CRC32C u32.
pub const LEADER_EPOCH_FILE_HEADER_BYTES: usize = 6;
pub const LEADER_EPOCH_ENTRY_BYTES: usize = 12;
pub const LEADER_EPOCH_FILE_CRC_BYTES: usize = 4;
/// Largest valid `leader-epoch-checkpoint`.
pub const LEADER_EPOCH_FILE_BYTES_MAX: usize = LEADER_EPOCH_FILE_HEADER_BYTES
    + LEADER_EPOCH_ENTRIES_MAX * LEADER_EPOCH_ENTRY_BYTES
    + LEADER_EPOCH_FILE_CRC_BYTES;

const _: () = assert!(DMA_ALIGNMENT_BYTES.is_power_of_two());
const _: () = assert!(DMA_ALIGNMENT_BYTES >= 512);
// `%` rather than is_multiple_of: the workspace's rust-version (1.85) predates it.
#[allow(clippy::manual_is_multiple_of)]
const _: () = assert!(PREALLOCATE_EXTENT_MIN_BYTES % DMA_ALIGNMENT_BYTES == 0);
const _: () = assert!(PREALLOCATE_EXTENT_MIN_BYTES <= PREALLOCATE_EXTENT_MAX_BYTES);
#[allow(clippy::manual_is_multiple_of)]
const _: () = assert!(ZERO_CHUNK_BYTES_MAX % DMA_ALIGNMENT_BYTES == 0);
const _: () = assert!(ZERO_AHEAD_WINDOW_MIN_BYTES <= ZERO_AHEAD_WINDOW_MAX_BYTES);
const _: () = assert!(WRITE_COALESCE_BYTES_MAX as u64 >= DMA_ALIGNMENT_BYTES);
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(SEGMENT_BYTES_MIN < SEGMENT_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX as usize <= READ_BYTES_MAX);
const _: () = assert!((BATCH_BYTES_MAX as u64) < SEGMENT_BYTES_MAX);
const _: () = assert!(SCAN_CHUNK_BYTES >= BATCH_HEADER_BYTES);
const _: () = assert!(HEADER_WALK_WINDOW_BYTES >= BATCH_HEADER_BYTES);
const _: () = assert!(INDEX_INTERVAL_BYTES_MIN as usize >= BATCH_HEADER_BYTES);
const _: () = assert!(SEGMENT_INDEX_BYTES_MIN as usize >= OFFSET_INDEX_ENTRY_BYTES);
// The entry count is stored as u32, and the whole file is written with one small DMA buffer.
const _: () = assert!(LEADER_EPOCH_ENTRIES_MAX <= u32::MAX as usize);
const _: () = assert!(LEADER_EPOCH_FILE_BYTES_MAX <= WRITE_COALESCE_BYTES_MAX);

/// fdatasync calls one log may have in flight at once. The code is correct for more than one
/// (any completed sync covers everything written before it was issued), but on ext4 here two
/// concurrent syncs of one file serialise in the journal and made durable p99 worse
/// (storage-bench: p99 2.2-2.4 ms with two, 1.1-2.1 ms with one), so one it is.
pub const SYNCS_IN_FLIGHT_MAX: u32 = 1;

/// How often a log with an interval flush policy checks whether its `flush.ms` has passed
/// (and a log without one wakes at all): the longest a time-based fsync can be late.
pub const FLUSH_CHECK_INTERVAL_MS: u64 = 1000;

/// Times a read looks up its segment again when the one it found was deleted or replaced by
/// the cleaner while it waited for its index (a swap takes far longer than a lookup, so more
/// than one retry means the log is being rewritten under it continuously).
pub const READ_RETRIES_MAX: u32 = 8;

//! One segment's files and the direct-IO operations on them: naming, opening, the recovery
//! scan, walking batch headers from an index entry, and atomic whole-file writes for indexes
//! and checkpoints.
//!
//! Owns the `.log` byte format (batches back to back, exactly as received except for the
//! patched `baseOffset` / `partitionLeaderEpoch`, and `maxTimestamp`/CRC for LogAppendTime):
//!
//! | offset   | size            | field                                  |
//! |---------:|----------------:|----------------------------------------|
//! | 0        | 12 + batchLength | RecordBatch v2 (see tern_protocol::batch) |
//! | previous end | …           | next batch, offsets increasing         |
//!
//! After a crash the file may end with a torn batch or zeros (direct-IO writes are padded to
//! the alignment, and preallocated blocks read as zeros); the scan stops at the first byte that
//! is not a valid batch with offsets above the previous one's (they are contiguous but where
//! compaction removed whole batches). This module never trusts a length read from disk: every
//! length is checked against the limits and the bytes actually there, and nothing panics on
//! what it reads back.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};
use tern_protocol::batch::{
    peek_batch_total_bytes, validate_batch, BatchError, BatchHeader, BATCH_HEADER_BYTES,
    BATCH_LOG_OVERHEAD_BYTES,
};
use tern_protocol::types::{FilePosition, Offset};

use crate::error::StorageIoError;
use crate::file_budget::SegmentFile;
use crate::index::{OffsetIndex, SegmentIndexer, TimeIndex};
use crate::limits;

pub(crate) fn log_file_name(base: Offset) -> String {
    format!("{:020}.log", base.0)
}
pub(crate) fn offset_index_file_name(base: Offset) -> String {
    format!("{:020}.index", base.0)
}
pub(crate) fn time_index_file_name(base: Offset) -> String {
    format!("{:020}.timeindex", base.0)
}

/// Parses `<20 digits>.<ext>` into the base offset and extension.
pub(crate) fn parse_file_name(name: &str) -> Option<(Offset, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Offset(stem.parse().ok()?), ext))
}

pub(crate) fn align_down(v: u64) -> u64 {
    v & !(limits::DMA_ALIGNMENT_BYTES - 1)
}
pub(crate) fn align_up(v: u64) -> u64 {
    align_down(v + limits::DMA_ALIGNMENT_BYTES - 1)
}

/// A segment as the log holds it in memory. Only the active (last) segment is written, and
/// only by the task holding the writer role; its file stays open, a sealed one's is open
/// within the shard's `FileBudget`.
pub(crate) struct Segment {
    pub file: SegmentFile,
    /// Logical size: bytes of whole batches written. Bytes beyond it are padding or garbage.
    pub size_bytes: u64,
    pub indexer: SegmentIndexer,
    /// End of the preallocated extent (fallocate KEEP_SIZE), active segment only.
    pub preallocated_bytes: u64,
    /// Blocks below this are written (data or zeros) and inside the file's size, so a write
    /// there changes no metadata (`log/zero.rs`). Active segment only.
    pub zeroed_bytes: u64,
    /// The bytes of the last partial alignment block, rewritten with the next write.
    pub tail: Vec<u8>,
    /// When the first batch arrived (wall clock at append), for roll by `segment_ms`.
    pub first_append_ms: Option<i64>,
}

impl Segment {
    pub fn base(&self) -> Offset {
        self.indexer.base
    }
}

thread_local! {
    static IOPOLL_PROBED: Cell<bool> = const { Cell::new(false) };
}

/// Makes glommio's per-thread iopoll probe see a real read before this thread opens any
/// segment or index file.
///
/// glommio decides, per device and per thread, whether a DMA file's reads go to its io_uring
/// poll ring by reading the first `alignment` bytes of the first DMA file opened on that
/// device. When that file is empty (a new segment, or a freshly truncated index `.tmp`), the
/// read ends at EOF before reaching the device and succeeds, so the device is marked
/// iopoll-capable; on devices without poll queues every later read then fails with
/// EOPNOTSUPP (seen as KAFKA_STORAGE_ERROR on ListOffsets by timestamp). Opening a non-empty
/// file first makes the probe fail the way it should. Data directories live on one device,
/// so once per thread is enough.
async fn probe_iopoll_once(dir: &Path) -> Result<(), StorageIoError> {
    if IOPOLL_PROBED.with(Cell::get) {
        return Ok(());
    }
    let path = dir.join(".iopoll-probe");
    let ctx = |what: &str| format!("{what} {}", path.display());
    let buffered = glommio::io::BufferedFile::create(&path)
        .await
        .map_err(|e| StorageIoError::new(ctx("creating"), e))?;
    buffered
        .write_at(vec![0u8; limits::DMA_ALIGNMENT_BYTES as usize], 0)
        .await
        .map_err(|e| StorageIoError::new(ctx("writing"), e))?;
    buffered
        .close()
        .await
        .map_err(|e| StorageIoError::new(ctx("closing"), e))?;
    let probed = DmaFile::open(&path)
        .await
        .map_err(|e| StorageIoError::new(ctx("opening"), e))?;
    let _ = probed.close().await;
    let _ = glommio::io::remove(&path).await;
    IOPOLL_PROBED.with(|probed| probed.set(true));
    Ok(())
}

pub(crate) async fn open_rw(path: &Path) -> Result<DmaFile, StorageIoError> {
    probe_iopoll_once(path.parent().unwrap_or(Path::new("."))).await?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .map_err(|e| StorageIoError::new(format!("opening {}", path.display()), e))
}

/// Reads `len` bytes at `position` (unaligned allowed) into an owned vector; short at EOF.
pub(crate) async fn read_vec(
    file: &DmaFile,
    position: FilePosition,
    len: usize,
    what: &Path,
) -> Result<Vec<u8>, StorageIoError> {
    let result = file
        .read_at(position.0, len)
        .await
        .map_err(|e| StorageIoError::new(format!("reading {} at {position}", what.display()), e))?;
    Ok(result.to_vec())
}

/// What a scan of a segment found.
pub(crate) struct ScanOutcome {
    pub indexer: SegmentIndexer,
    /// Position after the last valid batch.
    pub valid_bytes: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped_by: Option<BatchError>,
    /// The scan stopped where the file holds zeros: blocks zeroed ahead of the appends
    /// (`log/zero.rs`) or preallocated, not a torn write.
    pub stopped_at_zeros: bool,
}

impl ScanOutcome {
    /// Whether what follows the valid batches is more than the zeros the log leaves past its
    /// end: worth a warning when the tail is cut.
    pub fn torn(&self, file_bytes: u64) -> bool {
        self.valid_bytes < file_bytes && !self.stopped_at_zeros
    }
}

/// Scans batches from `position` (which must start a batch of offset `indexer.next_offset`) up
/// to `file_bytes`, validating header, CRC and offset contiguity, feeding `indexer` when
/// `rebuild` is set. Stops at the first invalid batch or one whose offsets go backwards.
pub(crate) async fn scan(
    file: &DmaFile,
    path: &Path,
    mut indexer: SegmentIndexer,
    mut position: FilePosition,
    file_bytes: u64,
    interval_bytes: u32,
    rebuild: bool,
) -> Result<ScanOutcome, StorageIoError> {
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = position;
    let mut stopped_by = None;
    while position.0 < file_bytes {
        let remaining = file_bytes - position.0;
        if remaining < BATCH_LOG_OVERHEAD_BYTES as u64 {
            stopped_by = Some(BatchError::Truncated {
                needed_bytes: BATCH_LOG_OVERHEAD_BYTES,
                available_bytes: remaining as usize,
            });
            break;
        }
        let mut in_window = position.since(window_start) as usize;
        if in_window + BATCH_HEADER_BYTES > window.len() {
            let len = limits::SCAN_CHUNK_BYTES.min(remaining as usize);
            window = read_vec(file, position, len, path).await?;
            window_start = position;
            in_window = 0;
        }
        let total = match peek_batch_total_bytes(&window[in_window..]) {
            Ok(total) => total,
            Err(e) => {
                stopped_by = Some(e);
                break;
            }
        };
        if total > limits::BATCH_BYTES_MAX as usize + BATCH_LOG_OVERHEAD_BYTES
            || total as u64 > remaining
        {
            stopped_by = Some(BatchError::Truncated {
                needed_bytes: total,
                available_bytes: remaining as usize,
            });
            break;
        }
        if in_window + total > window.len() {
            let len = limits::SCAN_CHUNK_BYTES.max(total).min(remaining as usize);
            window = read_vec(file, position, len, path).await?;
            window_start = position;
            in_window = 0;
            if window.len() < total {
                stopped_by = Some(BatchError::Truncated {
                    needed_bytes: total,
                    available_bytes: window.len(),
                });
                break;
            }
        }
        let header = match validate_batch(&window[in_window..in_window + total]) {
            Ok(header) => header,
            Err(e) => {
                stopped_by = Some(e);
                break;
            }
        };
        // Offsets increase; they may jump where the cleaner removed whole batches.
        if header.base_offset() < indexer.next_offset
            || header.last_offset().0 - indexer.base.0 > i64::from(u32::MAX)
        {
            stopped_by = Some(BatchError::InvalidCounts {
                record_count: header.record_count(),
                last_offset_delta: header.last_offset_delta(),
            });
            break;
        }
        if rebuild {
            indexer.observe(&header, position.0, interval_bytes);
        } else {
            indexer.next_offset = header.next_offset();
            indexer.bytes_since_entry += total as u64;
        }
        position = position.plus(total as u64);
    }
    // A batch starts with its 8-byte base offset and 4-byte length: never all zeros (a zero
    // length is invalid), so zeros there are the unwritten rest of the file.
    let stopped_at_zeros = stopped_by.is_some()
        && window
            .get(position.since(window_start) as usize..)
            .and_then(|rest| rest.get(..BATCH_LOG_OVERHEAD_BYTES))
            .is_some_and(|head| head.iter().all(|&b| b == 0));
    Ok(ScanOutcome {
        indexer,
        valid_bytes: position.0,
        stopped_by,
        stopped_at_zeros,
    })
}

/// Walks batch headers from `position` until the batch containing `target` (its next offset is
/// above `target`), reading windows of `HEADER_WALK_WINDOW_BYTES`. Returns the batch's position
/// and header, or None when `target` is beyond the segment's `size_bytes`.
pub(crate) async fn walk_to_offset(
    file: &DmaFile,
    path: &Path,
    mut position: FilePosition,
    size_bytes: u64,
    target: Offset,
) -> Result<Option<(FilePosition, BatchHeader)>, (FilePosition, WalkError)> {
    walk_headers(file, path, &mut position, size_bytes, |h| {
        h.next_offset() > target
    })
    .await
}

#[derive(Debug)]
pub(crate) enum WalkError {
    Io(StorageIoError),
    Corrupt(BatchError),
}

/// Walks batch headers from `*position` and returns the first one `stop` accepts.
pub(crate) async fn walk_headers(
    file: &DmaFile,
    path: &Path,
    position: &mut FilePosition,
    size_bytes: u64,
    mut stop: impl FnMut(&BatchHeader) -> bool,
) -> Result<Option<(FilePosition, BatchHeader)>, (FilePosition, WalkError)> {
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = *position;
    while position.0 < size_bytes {
        let mut in_window = position.since(window_start) as usize;
        if in_window + BATCH_HEADER_BYTES > window.len() {
            let len = limits::HEADER_WALK_WINDOW_BYTES.min((size_bytes - position.0) as usize);
            window = read_vec(file, *position, len, path)
                .await
                .map_err(|e| (*position, WalkError::Io(e)))?;
            window_start = *position;
            in_window = 0;
        }
        let rest = &window[in_window..];
        let header =
            BatchHeader::parse_unchecked(rest).map_err(|e| (*position, WalkError::Corrupt(e)))?;
        let total = peek_batch_total_bytes(rest).map_err(|e| (*position, WalkError::Corrupt(e)))?;
        if stop(&header) {
            return Ok(Some((*position, header)));
        }
        *position = position.plus(total as u64);
    }
    Ok(None)
}

/// Writes `bytes` to `dir/name` atomically: a temporary file written with direct IO, truncated
/// to its length, fdatasync'ed, then renamed over the target. The caller syncs the directory.
pub(crate) async fn write_file_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), StorageIoError> {
    let final_path = dir.join(name);
    let tmp_path: PathBuf = dir.join(format!("{name}.tmp"));
    let ctx = |what: &str| format!("{what} {}", tmp_path.display());
    probe_iopoll_once(dir).await?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp_path)
        .await
        .map_err(|e| StorageIoError::new(ctx("creating"), e))?;
    if !bytes.is_empty() {
        write_padded_at_start(&file, bytes, &tmp_path).await?;
        file.truncate(bytes.len() as u64)
            .await
            .map_err(|e| StorageIoError::new(ctx("truncating"), e))?;
    }
    file.fdatasync()
        .await
        .map_err(|e| StorageIoError::new(ctx("syncing"), e))?;
    file.close()
        .await
        .map_err(|e| StorageIoError::new(ctx("closing"), e))?;
    glommio::io::rename(&tmp_path, &final_path)
        .await
        .map_err(|e| StorageIoError::new(format!("renaming to {}", final_path.display()), e))?;
    Ok(())
}

/// Writes `bytes` at position 0 of `file` in one direct write, padded with zeros to the
/// alignment; a short write is an error.
async fn write_padded_at_start(
    file: &DmaFile,
    bytes: &[u8],
    path: &Path,
) -> Result<(), StorageIoError> {
    let aligned = align_up(bytes.len() as u64) as usize;
    let mut buf = file.alloc_dma_buffer(aligned);
    buf.as_bytes_mut()[..bytes.len()].copy_from_slice(bytes);
    buf.as_bytes_mut()[bytes.len()..].fill(0);
    let written = file
        .write_at(buf, 0)
        .await
        .map_err(|e| StorageIoError::new(format!("writing {}", path.display()), e))?;
    if written != aligned {
        return Err(StorageIoError::new(
            format!("short write to {}", path.display()),
            std::io::Error::from(std::io::ErrorKind::WriteZero),
        ));
    }
    Ok(())
}

/// Writes `bytes` over the start of `dir/name` in place (direct IO, padded with zeros to the
/// alignment, fdatasync'ed when `sync`), creating the file if needed; never truncates or
/// renames, so it frees no blocks. The content must guard itself against a torn write and
/// ignore what follows it (a checksum and a length). Returns whether the file was created: a
/// caller that syncs then syncs the directory.
pub(crate) async fn write_in_place(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    sync: bool,
) -> Result<bool, StorageIoError> {
    let path = dir.join(name);
    let created = !path.exists();
    let file = open_rw(&path).await?;
    let result = async {
        write_padded_at_start(&file, bytes, &path).await?;
        if !sync {
            return Ok(());
        }
        file.fdatasync()
            .await
            .map_err(|e| StorageIoError::new(format!("syncing {}", path.display()), e))
    }
    .await;
    let _ = file.close().await;
    result.map(|()| created)
}

/// Reads a whole small file, or None if it does not exist.
pub(crate) async fn read_small_file(path: &Path) -> Result<Option<Vec<u8>>, StorageIoError> {
    if !path.exists() {
        return Ok(None);
    }
    probe_iopoll_once(path.parent().unwrap_or(Path::new("."))).await?;
    let file = DmaFile::open(path)
        .await
        .map_err(|e| StorageIoError::new(format!("opening {}", path.display()), e))?;
    let size = file
        .file_size()
        .await
        .map_err(|e| StorageIoError::new(format!("stat {}", path.display()), e))?;
    let bytes = if size == 0 {
        Vec::new()
    } else {
        read_vec(&file, FilePosition(0), size as usize, path).await?
    };
    let _ = file.close().await;
    Ok(Some(bytes))
}

/// Persists a segment's indexes next to its `.log`.
pub(crate) async fn persist_indexes(
    dir: &Path,
    indexer: &SegmentIndexer,
) -> Result<(), StorageIoError> {
    write_file_atomically(
        dir,
        &offset_index_file_name(indexer.base),
        &indexer.offset_index.encode(),
    )
    .await?;
    write_file_atomically(
        dir,
        &time_index_file_name(indexer.base),
        &indexer.time_index.encode(),
    )
    .await
}

/// Loads both persisted indexes of a segment, None when missing or damaged.
pub(crate) async fn load_indexes(
    dir: &Path,
    base: Offset,
    size_bytes: u64,
) -> Result<Option<(OffsetIndex, TimeIndex)>, StorageIoError> {
    let Some(offset_bytes) = read_small_file(&dir.join(offset_index_file_name(base))).await? else {
        return Ok(None);
    };
    let Some(time_bytes) = read_small_file(&dir.join(time_index_file_name(base))).await? else {
        return Ok(None);
    };
    let Ok(offset_index) = OffsetIndex::decode(&offset_bytes, size_bytes) else {
        return Ok(None);
    };
    let Ok(time_index) = TimeIndex::decode(&time_bytes, None) else {
        return Ok(None);
    };
    Ok(Some((offset_index, time_index)))
}

/// Makes glommio classify the device holding `dir` correctly before any segment file is opened.
///
/// Why: glommio decides once per device and process whether direct IO may use the polled
/// io_uring ring, by reading the first block of the first `DmaFile` opened there. When that file
/// is empty (a new segment), the read succeeds without reaching the device and the device is
/// wrongly marked pollable; every later read then fails with EOPNOTSUPP on devices without poll
/// queues (virtio disks, for example). Opening a file that has a real block first makes the
/// probe reach the device and get the true answer. Runs at open time only.
pub async fn prime_direct_io(dir: &Path) -> Result<(), StorageIoError> {
    use std::os::unix::fs::MetadataExt;
    // glommio's per-device cache is thread-local (one per executor thread), so this one is too.
    thread_local!(static PRIMED_DEVICES: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) });
    let ctx = |what: &str| format!("{what} {}", dir.display());
    let dev = std::fs::metadata(dir)
        .map_err(|e| StorageIoError::new(ctx("stat"), e))?
        .dev();
    if PRIMED_DEVICES.with(|d| d.borrow().contains(&dev)) {
        return Ok(());
    }
    let path = dir.join(".direct-io-probe");
    std::fs::write(&path, vec![0u8; limits::DMA_ALIGNMENT_BYTES as usize])
        .map_err(|e| StorageIoError::new(ctx("writing the direct-IO probe in"), e))?;
    let file = DmaFile::open(&path)
        .await
        .map_err(|e| StorageIoError::new(ctx("opening the direct-IO probe in"), e))?;
    let _ = file.close().await;
    let _ = std::fs::remove_file(&path);
    PRIMED_DEVICES.with(|d| d.borrow_mut().push(dev));
    Ok(())
}

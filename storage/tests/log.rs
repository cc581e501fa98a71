//! Specification tests of the partition log: append/read round trips (property based), group
//! commit, crash recovery, index rebuild, clean shutdown, roll, retention, delete_records,
//! validation, and the data directory lock. Each runs on a real glommio executor in a temp dir.

mod support;

use support::run_async;

use std::path::Path;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tern_protocol::batch::{build_simple_batch, validate_batch};
use tern_protocol::types::{LeaderEpoch, Offset, TimestampMs};
use tern_storage::{
    log_file_name, offset_index_file_name, time_index_file_name, AppendError, DataDirLock,
    FlushPolicy, LockError, Log, LogConfig, ReadError, TimestampType, CLEAN_SHUTDOWN_FILE_NAME,
    INDEX_CHECKPOINT_FILE_NAME,
};

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 256,
        tail_cache_bytes: 4 * 1024,
        ..LogConfig::default()
    }
}

fn batch(records: usize, value_bytes: usize, ts: i64) -> BytesMut {
    build_simple_batch(TimestampMs(ts), records, value_bytes)
}

/// What the test appended: base offset, next offset, and the bytes as they must read back.
#[derive(Clone, Debug)]
struct Expected {
    base: Offset,
    next: Offset,
    bytes: Bytes,
}

async fn append_all(log: &Log, specs: &[(usize, usize)], ts: i64) -> Vec<Expected> {
    let mut out = Vec::new();
    for &(records, value_bytes) in specs {
        let info = log
            .append(
                batch(records, value_bytes, ts),
                LeaderEpoch(3),
                TimestampMs(ts),
            )
            .await
            .unwrap();
        // The stored form is the input with baseOffset and the epoch patched: rebuild it.
        let mut b = batch(records, value_bytes, ts);
        tern_protocol::batch::set_base_offset(&mut b, info.base_offset);
        tern_protocol::batch::set_partition_leader_epoch(&mut b, LeaderEpoch(3));
        out.push(Expected {
            base: info.base_offset,
            next: info.last_offset.next(),
            bytes: b.freeze(),
        });
    }
    out
}

fn concat(slice: &tern_storage::ReadSlice) -> Vec<u8> {
    let mut v = Vec::with_capacity(slice.len);
    for c in &slice.chunks {
        v.extend_from_slice(c);
    }
    assert_eq!(v.len(), slice.len);
    v
}

/// Every offset reads back the batch containing it, byte exact, and a large read returns a
/// contiguous run of whole batches.
async fn check_reads(log: &Log, expected: &[Expected]) {
    let end = expected.last().map(|e| e.next).unwrap_or(Offset(0));
    assert_eq!(log.log_end_offset(), end);
    for (i, e) in expected.iter().enumerate() {
        for o in e.base.0..e.next.0 {
            let slice = log.read(Offset(o), 1, end).await.unwrap();
            assert_eq!(slice.first_offset, e.base, "offset {o}");
            assert_eq!(slice.next_offset, e.next, "offset {o}");
            assert_eq!(concat(&slice), &e.bytes[..], "offset {o}");
        }
        let slice = log.read(e.base, 1 << 20, end).await.unwrap();
        let got = concat(&slice);
        let mut want = Vec::new();
        for f in &expected[i..] {
            if want.len() >= got.len() {
                break;
            }
            want.extend_from_slice(&f.bytes);
        }
        assert_eq!(got, want, "run from {}", e.base);
    }
    let at_end = log.read(end, 1024, end).await.unwrap();
    assert_eq!(at_end.len, 0);
    assert!(matches!(
        log.read(end.next(), 1024, end).await,
        Err(ReadError::OffsetOutOfRange { .. })
    ));
}

/// Bytes of the expected batches with base offsets in [from, to): a segment's data.
fn data_bytes(expected: &[Expected], from: Offset, to: Offset) -> u64 {
    expected
        .iter()
        .filter(|e| e.base >= from && e.base < to)
        .map(|e| e.bytes.len() as u64)
        .sum()
}

/// The size of a segment's `.log` file.
fn segment_file_len(dir: &Path, base: Offset) -> u64 {
    std::fs::metadata(dir.join(log_file_name(base)))
        .unwrap()
        .len()
}

/// Every segment but the last (sealed) is exactly its batches long: no zeros past its data.
fn check_sealed_files_hold_only_their_data(dir: &Path, bases: &[Offset], expected: &[Expected]) {
    for pair in bases.windows(2) {
        assert_eq!(
            segment_file_len(dir, pair[0]),
            data_bytes(expected, pair[0], pair[1]),
            "sealed segment {} holds its data and nothing past it",
            pair[0]
        );
    }
}

/// The whole log reads back as the expected batches, in order, byte exact (large reads).
async fn check_whole_log(log: &Log, expected: &[Expected]) {
    let end = expected.last().map(|e| e.next).unwrap_or(Offset(0));
    assert_eq!(log.log_end_offset(), end);
    let want: Vec<u8> = expected
        .iter()
        .flat_map(|e| e.bytes.iter().copied())
        .collect();
    let mut got = Vec::with_capacity(want.len());
    let mut at = expected.first().map(|e| e.base).unwrap_or(Offset(0));
    while at < end {
        let slice = log.read(at, 1 << 20, end).await.unwrap();
        assert!(slice.len > 0, "read at {at} returned nothing");
        got.extend_from_slice(&concat(&slice));
        at = slice.next_offset;
    }
    assert!(got == want, "the log reads back as appended");
}

/// Every persisted index entry points at the start of the batch it names; time index entries
/// grow and end at the segment's largest timestamp.
fn check_index_invariants(dir: &Path) {
    use tern_storage::index::{OffsetIndex, TimeIndex};
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    bases.sort();
    for base in bases {
        let log = std::fs::read(dir.join(log_file_name(Offset(base)))).unwrap();
        let index = OffsetIndex::decode(
            &std::fs::read(dir.join(offset_index_file_name(Offset(base)))).unwrap(),
            log.len() as u64 + 1,
        )
        .unwrap();
        for entry in index.entries() {
            let header =
                tern_protocol::batch::BatchHeader::parse_unchecked(&log[entry.position as usize..])
                    .unwrap();
            assert_eq!(
                header.base_offset(),
                Offset(base + i64::from(entry.relative_offset))
            );
        }
        let time = TimeIndex::decode(
            &std::fs::read(dir.join(time_index_file_name(Offset(base)))).unwrap(),
            None,
        )
        .unwrap();
        let max = tern_protocol::batch::BatchIter::new(&log)
            .map(|b| b.unwrap().header.max_timestamp())
            .max();
        assert_eq!(time.last().map(|e| e.timestamp), max, "segment {base}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]
    #[test]
    fn appended_batches_read_back_byte_exact_before_and_after_reopen(
        specs in proptest::collection::vec((1usize..6, 0usize..3000), 1..40),
        clean in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        run_async(move || async move {
            let log = Log::open(path.clone(), small_config()).await.unwrap();
            let expected = append_all(&log, &specs, 1_000).await;
            // Offsets are contiguous.
            for w in expected.windows(2) {
                assert_eq!(w[0].next, w[1].base);
            }
            assert_eq!(log.acknowledged_end_offset(), log.log_end_offset());
            check_reads(&log, &expected).await;
            if clean {
                log.close().await.unwrap();
                check_index_invariants(&path);
            } else {
                drop(log);
            }
            let log = Log::open(path.clone(), small_config()).await.unwrap();
            check_reads(&log, &expected).await;
            // Appending after reopen continues the offsets.
            let more = append_all(&log, &[(2, 100)], 2_000).await;
            assert_eq!(more[0].base, expected.last().unwrap().next);
            log.close().await.unwrap();
        });
    }
}

#[test]
fn concurrent_appenders_share_fdatasyncs_and_get_contiguous_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let log = std::rc::Rc::new(Log::open(path, LogConfig::default()).await.unwrap());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut infos = Vec::new();
                for _ in 0..20 {
                    infos.push(
                        log.append(batch(3, 200, 5), LeaderEpoch(1), TimestampMs(5))
                            .await
                            .unwrap(),
                    );
                }
                infos
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await);
        }
        all.sort_by_key(|i| i.base_offset);
        for (i, info) in all.iter().enumerate() {
            assert_eq!(info.base_offset, Offset(i as i64 * 3));
            assert_eq!(info.last_offset, Offset(i as i64 * 3 + 2));
        }
        let stats = log.stats();
        assert!(
            stats.fdatasyncs < 160,
            "group commit shares syncs: {stats:?}"
        );
        assert_eq!(log.acknowledged_end_offset(), Offset(480));
        assert_eq!(
            log.durable_end_offset(),
            Offset(480),
            "EveryAppend acks only durable data"
        );
    });
}

/// Zeroing ahead: a busy segment's blocks past its end are written with zeros before the
/// appends reach them; appends from concurrent tasks land over them; no zero ever lands past a
/// sealed segment's data; a crash leaves zeros past the active segment's end that recovery
/// drops without losing a batch; close trims them.
#[test]
fn appends_land_on_zeroed_blocks_and_zeros_never_outlive_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let config = LogConfig {
            segment_bytes: 3 << 19,
            ..LogConfig::default()
        };
        let log = std::rc::Rc::new(Log::open(path.clone(), config.clone()).await.unwrap());
        // Eight appenders of ~1 KiB batches: about 3,300 batches, two segments and a half.
        let mut tasks = Vec::new();
        for task in 0..8i64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut out = Vec::new();
                for i in 0..420i64 {
                    let ts = 1_000 + task * 1_000 + i;
                    let info = log
                        .append(batch(1, 1000, ts), LeaderEpoch(3), TimestampMs(ts))
                        .await
                        .unwrap();
                    let mut b = batch(1, 1000, ts);
                    tern_protocol::batch::set_base_offset(&mut b, info.base_offset);
                    tern_protocol::batch::set_partition_leader_epoch(&mut b, LeaderEpoch(3));
                    out.push(Expected {
                        base: info.base_offset,
                        next: info.last_offset.next(),
                        bytes: b.freeze(),
                    });
                }
                out
            }));
        }
        let mut expected = Vec::new();
        for t in tasks {
            expected.extend(t.await);
        }
        expected.sort_by_key(|e| e.base);
        // Let a zeroing write in flight complete.
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        let stats = log.stats();
        assert!(stats.zeroed_bytes > 0, "{stats:?}");
        let bases = log.segment_bases();
        assert!(bases.len() >= 3, "{bases:?}");
        check_sealed_files_hold_only_their_data(&path, &bases, &expected);
        let active = *bases.last().unwrap();
        let active_data = data_bytes(&expected, active, Offset(i64::MAX));
        assert!(
            segment_file_len(&path, active) > active_data,
            "zeros past the active segment's data: {} <= {active_data}",
            segment_file_len(&path, active)
        );
        check_whole_log(&log, &expected).await;
        // A crash: zeros stay past the data; recovery keeps every batch.
        drop(log);
        let log = Log::open(path.clone(), config.clone()).await.unwrap();
        check_whole_log(&log, &expected).await;
        expected.extend(append_all(&log, &[(1, 1000); 100], 9_000).await);
        check_whole_log(&log, &expected).await;
        log.close().await.unwrap();
        let active = expected
            .iter()
            .map(|e| e.base)
            .filter(|b| path.join(log_file_name(*b)).exists())
            .max()
            .unwrap();
        assert_eq!(
            segment_file_len(&path, active),
            data_bytes(&expected, active, Offset(i64::MAX)),
            "close trims the zeros"
        );
        let log = Log::open(path.clone(), config).await.unwrap();
        check_whole_log(&log, &expected).await;
    });
}

/// A roll (and a truncation) that meets a zeroing write in flight waits for it: no zero lands
/// past the data of a segment once sealed, or past a cut. Each zeroing write is held back
/// 30 ms, and each segment rolls by time 5 ms after its zeroing started.
#[test]
fn a_roll_or_truncation_meeting_a_zeroing_write_in_flight_leaves_no_zeros_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let config = LogConfig {
            segment_ms: 1_000,
            ..LogConfig::default()
        };
        let log = Log::open(path.clone(), config.clone()).await.unwrap();
        log.inject_zeroing_delay(std::time::Duration::from_millis(30));
        let mut expected = Vec::new();
        for round in 0..4 {
            // 62 batches of 1,071 bytes: the last one crosses the 64 KiB where zeroing starts.
            expected.extend(append_all(&log, &[(1, 1000); 62], 1_000 + round).await);
            // It is in flight (held back 30 ms) when the segment rolls by time.
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            log.enforce_retention(TimestampMs(10_000), Offset(i64::MAX))
                .await
                .unwrap();
        }
        assert!(log.stats().zeroed_bytes > 0, "{:?}", log.stats());
        let bases = log.segment_bases();
        assert!(bases.len() >= 3, "{bases:?}");
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        check_sealed_files_hold_only_their_data(&path, &bases, &expected);
        // A truncation while a zeroing write is in flight.
        expected.extend(append_all(&log, &[(1, 1000); 80], 9_000).await);
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        let cut = expected[expected.len() - 40].base;
        log.truncate_to(cut).await.unwrap();
        expected.truncate(expected.len() - 40);
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        check_whole_log(&log, &expected).await;
        let active = *log.segment_bases().last().unwrap();
        log.close().await.unwrap();
        assert_eq!(
            segment_file_len(&path, active),
            data_bytes(&expected, active, Offset(i64::MAX))
        );
        let log = Log::open(path.clone(), config).await.unwrap();
        check_whole_log(&log, &expected).await;
    });
}

/// Appends, "crashes" (drops without close), damages the active segment, reopens.
fn crash_case(damage: impl FnOnce(&Path, &[(u64, Expected)]) -> usize + Send + 'static) {
    crash_case_with(false, damage)
}

/// `crash_case`; with `checkpoint`, the active segment's indexes are checkpointed after the
/// first 20 of the 30 batches, so recovery scans only from the checkpoint's last entry.
fn crash_case_with(
    checkpoint: bool,
    damage: impl FnOnce(&Path, &[(u64, Expected)]) -> usize + Send + 'static,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let config = LogConfig {
            index_interval_bytes: 256,
            ..LogConfig::default()
        };
        let log = Log::open(path.clone(), config.clone()).await.unwrap();
        let specs: Vec<(usize, usize)> =
            (0..30).map(|i| (1 + i % 4, 50 + (i * 37) % 700)).collect();
        let mut expected = append_all(&log, &specs[..20], 7).await;
        if checkpoint {
            log.checkpoint_active_indexes().await.unwrap();
            assert!(path.join(INDEX_CHECKPOINT_FILE_NAME).exists());
        }
        expected.extend(append_all(&log, &specs[20..], 7).await);
        drop(log);
        let mut positions = Vec::new();
        let mut pos = 0u64;
        for e in &expected {
            positions.push((pos, e.clone()));
            pos += e.bytes.len() as u64;
        }
        let survivors = damage(&path.join(log_file_name(Offset(0))), &positions);
        let log = Log::open(path.clone(), config).await.unwrap();
        let kept = &expected[..survivors];
        check_reads(&log, kept).await;
        // The log keeps working after recovery.
        let more = append_all(&log, &[(1, 10)], 9).await;
        assert_eq!(
            more[0].base,
            kept.last().map(|e| e.next).unwrap_or(Offset(0))
        );
    });
}

/// Damage: the segment cut to `cut_seed` bytes (at most its length); the whole batches left.
fn cut_segment(file: &Path, positions: &[(u64, Expected)], cut_seed: u64) -> usize {
    let total: u64 = positions
        .last()
        .map(|(p, e)| p + e.bytes.len() as u64)
        .unwrap();
    let cut = cut_seed.min(total);
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(cut).unwrap();
    positions
        .iter()
        .filter(|(p, e)| p + e.bytes.len() as u64 <= cut)
        .count()
}

/// Damage: one byte flipped at `at_seed` (at most the last byte); the whole batches before it.
fn flip_byte(file: &Path, positions: &[(u64, Expected)], at_seed: u64) -> usize {
    let total: u64 = positions
        .last()
        .map(|(p, e)| p + e.bytes.len() as u64)
        .unwrap();
    let at = at_seed.min(total - 1);
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at as usize] ^= 0x5a;
    std::fs::write(file, &bytes).unwrap();
    positions
        .iter()
        .filter(|(p, e)| p + e.bytes.len() as u64 <= at)
        .count()
}

#[test]
fn crash_with_cut_segment_recovers_the_prefix_of_whole_batches() {
    for cut_seed in [0u64, 1, 61, 500, 4095, 4096, 7000, 9999, 12_345, u64::MAX] {
        crash_case(move |file, positions| cut_segment(file, positions, cut_seed));
    }
}

#[test]
fn crash_with_flipped_byte_truncates_at_the_damaged_batch() {
    for flip_seed in [0u64, 9, 20, 70, 3000, 8000, 11_111] {
        crash_case(move |file, positions| flip_byte(file, positions, flip_seed));
    }
}

#[test]
fn a_crash_after_an_index_checkpoint_recovers_the_same_prefix_scanning_only_the_tail() {
    // Torn writes happen after the last sync, past what the checkpoint covers; cuts anywhere
    // (the checkpoint then points past the file and is ignored).
    let checkpointed = |positions: &[(u64, Expected)]| positions[20].0;
    for seed in [0u64, 9, 100, 700, 3000] {
        crash_case_with(true, move |file, positions| {
            flip_byte(file, positions, checkpointed(positions) + seed)
        });
    }
    for cut_seed in [0u64, 500, 4096, 9999, u64::MAX] {
        crash_case_with(true, move |file, positions| {
            cut_segment(file, positions, cut_seed)
        });
    }
}

#[test]
fn damaged_or_missing_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let log = Log::open(path.clone(), small_config()).await.unwrap();
        let specs: Vec<(usize, usize)> = (0..60).map(|i| (2, 300 + i * 10)).collect();
        let expected = append_all(&log, &specs, 1).await;
        let bases = log.segment_bases();
        assert!(bases.len() >= 3, "rolled by size: {bases:?}");
        log.close().await.unwrap();
        let good_index = std::fs::read(path.join(offset_index_file_name(bases[0]))).unwrap();
        assert!(!good_index.is_empty());
        // Damage: garbage in one offset index, a missing time index, a truncated one.
        std::fs::write(path.join(offset_index_file_name(bases[0])), [0xffu8; 13]).unwrap();
        std::fs::remove_file(path.join(time_index_file_name(bases[1]))).unwrap();
        let last = bases[bases.len() - 1];
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join(offset_index_file_name(last)))
            .unwrap();
        f.set_len(3).unwrap();
        let log = Log::open(path.clone(), small_config()).await.unwrap();
        check_reads(&log, &expected).await;
        assert_eq!(
            std::fs::read(path.join(offset_index_file_name(bases[0]))).unwrap(),
            good_index
        );
        assert!(path.join(time_index_file_name(bases[1])).exists());
        assert!(log
            .offset_for_timestamp(TimestampMs(1))
            .await
            .unwrap()
            .is_some());
    });
}

#[test]
fn clean_shutdown_marker_skips_the_recovery_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let config = LogConfig {
            index_interval_bytes: 1024,
            ..LogConfig::default()
        };
        let log = Log::open(path.clone(), config.clone()).await.unwrap();
        append_all(&log, &(0..20).map(|_| (2, 500)).collect::<Vec<_>>(), 1).await;
        let end = log.log_end_offset();
        log.close().await.unwrap();
        assert!(path.join(CLEAN_SHUTDOWN_FILE_NAME).exists());
        // Damage an early batch: only a full scan would notice it.
        let file = path.join(log_file_name(Offset(0)));
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let log = Log::open(path.clone(), config.clone()).await.unwrap();
        assert!(
            !path.join(CLEAN_SHUTDOWN_FILE_NAME).exists(),
            "marker removed on open"
        );
        assert_eq!(log.log_end_offset(), end, "no scan, nothing truncated");
        // Reading the damaged batch reports corruption rather than returning bad bytes.
        assert!(matches!(
            log.read(Offset(0), 1, end).await,
            Err(ReadError::Corrupt { .. })
        ));
        drop(log);
        // Without the marker the scan finds the damage and truncates there.
        let log = Log::open(path.clone(), config).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(0));
    });
}

#[test]
fn invalid_batches_are_rejected_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let config = LogConfig {
            max_message_bytes: 4000,
            ..LogConfig::default()
        };
        let log = Log::open(path.clone(), config).await.unwrap();
        append_all(&log, &[(1, 10)], 1).await;
        let good = batch(2, 20, 1);
        let damaged = |offset: usize, value: u8| {
            let mut b = good.clone();
            b[offset] = value;
            b
        };
        let mut bad_length = good.clone();
        bad_length[8..12].copy_from_slice(&20i32.to_be_bytes());
        let cases: Vec<(&str, BytesMut, i16)> = vec![
            ("bad crc", damaged(70, good[70] ^ 1), 2),
            ("bad magic", damaged(16, 1), 87),
            ("bad length", bad_length, 87),
            ("too large", batch(1, 5000, 1), 10),
            ("empty", BytesMut::new(), 87),
        ];
        for (name, bad, code) in cases {
            // A good batch before the bad one must not be written either.
            let mut input = good.clone();
            input.extend_from_slice(&bad);
            if name == "empty" {
                input = bad;
            }
            let err = log
                .append(input, LeaderEpoch(1), TimestampMs(1))
                .await
                .expect_err(name);
            assert_eq!(err.kafka_error_code(), code, "{name}: {err}");
            assert_eq!(log.log_end_offset(), Offset(1), "{name}");
            assert_eq!(log.stats().batches_written, 1, "{name}");
        }
        assert!(matches!(
            log.append(batch(1, 5000, 1), LeaderEpoch(1), TimestampMs(1))
                .await,
            Err(AppendError::MessageTooLarge { .. })
        ));
    });
}

#[test]
fn roll_by_size_and_time_and_retention_by_size_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let config = LogConfig {
            segment_bytes: 4096,
            segment_ms: 1000,
            file_delete_delay_ms: 200,
            ..small_config()
        };
        let log = Log::open(path.clone(), config.clone()).await.unwrap();
        // Each batch is ~1.1 KB: three fit in a segment.
        for i in 0..9 {
            log.append(
                batch(1, 1000, 10_000 + i),
                LeaderEpoch(1),
                TimestampMs(10_000),
            )
            .await
            .unwrap();
        }
        assert_eq!(log.segment_bases(), vec![Offset(0), Offset(3), Offset(6)]);
        // Roll by time: the active segment's first batch is older than segment_ms.
        log.enforce_retention(TimestampMs(10_500), Offset(i64::MAX))
            .await
            .unwrap();
        assert_eq!(log.segment_bases().len(), 3);
        log.enforce_retention(TimestampMs(11_000), Offset(i64::MAX))
            .await
            .unwrap();
        assert_eq!(
            log.segment_bases(),
            vec![Offset(0), Offset(3), Offset(6), Offset(9)]
        );
        // Retention by size keeps at least retention_bytes, deleting whole oldest segments.
        log.set_config(LogConfig {
            retention_bytes: 6000,
            retention_ms: -1,
            ..config.clone()
        });
        log.enforce_retention(TimestampMs(11_000), Offset(i64::MAX))
            .await
            .unwrap();
        assert_eq!(log.segment_bases(), vec![Offset(3), Offset(6), Offset(9)]);
        assert_eq!(log.log_start_offset(), Offset(3));
        // file.delete.delay.ms: renamed at once, removed after the delay.
        assert!(!path.join(log_file_name(Offset(0))).exists());
        let deleted = path.join(format!("{}.deleted", log_file_name(Offset(0))));
        assert!(
            deleted.exists(),
            "kept as *.deleted for file_delete_delay_ms"
        );
        glommio::timer::sleep(std::time::Duration::from_millis(400)).await;
        assert!(!deleted.exists(), "removed after the delay");
        // Retention by time: segments whose newest timestamp is older than retention_ms go,
        // never the active one.
        log.set_config(LogConfig {
            retention_ms: 100,
            ..config.clone()
        });
        log.enforce_retention(TimestampMs(1_000_000), Offset(i64::MAX))
            .await
            .unwrap();
        assert_eq!(log.segment_bases(), vec![Offset(9)]);
        assert_eq!(log.log_start_offset(), Offset(9));
        assert!(matches!(
            log.read(Offset(5), 100, Offset(9)).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        log.close().await.unwrap();
        let log = Log::open(path, config).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(9));
        assert_eq!(log.log_end_offset(), Offset(9));
    });
}

#[test]
fn delete_records_advances_and_persists_the_log_start_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let config = LogConfig {
            segment_bytes: 4096,
            ..small_config()
        };
        let log = Log::open(path.clone(), config.clone()).await.unwrap();
        let expected = append_all(&log, &(0..9).map(|_| (1, 1000)).collect::<Vec<_>>(), 5).await;
        assert!(
            log.delete_records(Offset(100)).await.is_err(),
            "above the high watermark"
        );
        assert_eq!(log.delete_records(Offset(4)).await.unwrap(), Offset(4));
        assert_eq!(log.segment_bases(), vec![Offset(3), Offset(6)]);
        assert!(matches!(
            log.read(Offset(3), 100, Offset(9)).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        let slice = log.read(Offset(4), 1, Offset(9)).await.unwrap();
        assert_eq!(concat(&slice), &expected[4].bytes[..]);
        // Moving backwards is a no-op.
        assert_eq!(log.delete_records(Offset(2)).await.unwrap(), Offset(4));
        drop(log);
        let log = Log::open(path, config).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(4));
    });
}

#[test]
fn log_append_time_stamps_batches_and_timestamp_lookups_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let config = LogConfig {
            timestamp_type: TimestampType::LogAppendTime,
            ..small_config()
        };
        let log = Log::open(path.clone(), config).await.unwrap();
        for i in 0..20i64 {
            let info = log
                .append(batch(2, 400, 1), LeaderEpoch(1), TimestampMs(1000 + i * 10))
                .await
                .unwrap();
            assert_eq!(info.log_append_time, TimestampMs(1000 + i * 10));
        }
        let slice = log.read(Offset(0), 1, Offset(40)).await.unwrap();
        let header = validate_batch(&slice.chunks[0]).unwrap();
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp(), TimestampMs(1000));
        assert_eq!(log.max_timestamp(), Some((Offset(38), TimestampMs(1190))));
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(0)).await.unwrap(),
            Some((Offset(0), TimestampMs(1000)))
        );
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(1055)).await.unwrap(),
            Some((Offset(12), TimestampMs(1060)))
        );
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(1190)).await.unwrap(),
            Some((Offset(38), TimestampMs(1190)))
        );
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(5000)).await.unwrap(),
            None
        );
    });
}

#[test]
fn reads_respect_upper_bound_max_bytes_and_return_at_least_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        for cache in [0usize, 1 << 20] {
            let config = LogConfig {
                tail_cache_bytes: cache,
                ..LogConfig::default()
            };
            let log = Log::open(path.join(format!("c{cache}")), config)
                .await
                .unwrap();
            let expected =
                append_all(&log, &(0..10).map(|_| (2, 500)).collect::<Vec<_>>(), 1).await;
            let one = expected[0].bytes.len();
            let slice = log.read(Offset(0), 10, Offset(20)).await.unwrap();
            assert_eq!(
                (slice.len, slice.next_offset),
                (one, Offset(2)),
                "KIP-74, cache {cache}"
            );
            let slice = log.read(Offset(0), 3 * one + 5, Offset(20)).await.unwrap();
            assert_eq!(slice.len, 3 * one);
            let slice = log.read(Offset(3), 1 << 20, Offset(6)).await.unwrap();
            assert_eq!(
                (slice.first_offset, slice.next_offset),
                (Offset(2), Offset(6)),
                "upper excludes batch 6"
            );
            assert_eq!(log.read(Offset(6), 100, Offset(6)).await.unwrap().len, 0);
            let stats = log.stats();
            if cache == 0 {
                assert!(
                    stats.bytes_copied > 0 && stats.bytes_zero_copy == 0,
                    "{stats:?}"
                );
            } else {
                assert!(
                    stats.bytes_zero_copy > 0 && stats.bytes_copied == 0,
                    "{stats:?}"
                );
            }
        }
    });
}

#[test]
fn interval_flush_acknowledges_without_fdatasync_and_syncs_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        // 500 ms leaves ten appends ample time to finish before any sync is due, even on a busy
        // machine, so "acknowledged without fdatasync" is not a race.
        let config = LogConfig {
            flush: FlushPolicy::Interval {
                messages: 1_000_000,
                ms: 500,
            },
            ..LogConfig::default()
        };
        let log = Log::open(path, config).await.unwrap();
        for _ in 0..10 {
            log.append(batch(1, 100, 1), LeaderEpoch(1), TimestampMs(1))
                .await
                .unwrap();
        }
        assert_eq!(log.acknowledged_end_offset(), Offset(10));
        assert_eq!(log.acknowledged_end_offset(), Offset(10));
        assert_eq!(
            log.durable_end_offset(),
            Offset(0),
            "acknowledged, not durable"
        );
        assert_eq!(log.stats().fdatasyncs, 0);
        glommio::timer::sleep(std::time::Duration::from_millis(1200)).await;
        assert!(log.stats().fdatasyncs >= 1, "the interval flusher synced");
        assert_eq!(log.durable_end_offset(), Offset(10));
        log.close().await.unwrap();
    });
}

#[test]
fn remove_deletes_the_partition_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    let p = path.clone();
    run_async(move || async move {
        let log = Log::open(p, small_config()).await.unwrap();
        append_all(&log, &[(1, 10), (2, 20)], 1).await;
        log.remove().await.unwrap();
    });
    assert!(!path.exists());
}

#[test]
fn second_lock_on_a_data_dir_fails_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let lock = DataDirLock::acquire(dir.path()).unwrap();
    // flock is per open file description: a second acquire in this process conflicts too.
    match DataDirLock::acquire(dir.path()) {
        Err(err @ LockError::Held { .. }) => {
            let text = err.to_string();
            assert!(text.contains(&dir.path().display().to_string()), "{text}");
            assert!(text.contains(&std::process::id().to_string()), "{text}");
        }
        other => panic!("expected Held, got {other:?}"),
    }
    drop(lock);
    DataDirLock::acquire(dir.path()).unwrap();
}

#[test]
fn a_failing_disk_surfaces_a_storage_error_and_the_log_reopens_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let log = Log::open(path.clone(), small_config()).await.unwrap();
        let acked = append_all(&log, &[(2, 100), (3, 200)], 1).await;
        log.inject_write_failures(1);
        let err = log
            .append(batch(1, 10, 1), LeaderEpoch(1), TimestampMs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, AppendError::Storage(_)), "{err}");
        assert_eq!(err.kafka_error_code(), 56);
        // The log refuses further appends rather than guess, and still serves what was acked.
        assert!(log
            .append(batch(1, 10, 1), LeaderEpoch(1), TimestampMs(1))
            .await
            .is_err());
        assert_eq!(log.acknowledged_end_offset(), acked.last().unwrap().next);
        let slice = log
            .read(Offset(0), 1, log.acknowledged_end_offset())
            .await
            .unwrap();
        assert_eq!(concat(&slice), &acked[0].bytes[..]);
        assert!(
            log.close().await.is_err(),
            "no clean-shutdown marker after a failure"
        );
        let log = Log::open(path.clone(), small_config()).await.unwrap();
        check_reads(&log, &acked).await;
        let more = append_all(&log, &[(1, 10)], 2).await;
        assert_eq!(more[0].base, acked.last().unwrap().next);
    });
}

#[test]
fn sealed_indexes_stay_within_the_shared_cache_budget_whatever_the_log_size() {
    use tern_storage::IndexCache;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_async(move || async move {
        // About 1.5 KiB of index per 16 KiB segment with small_config: room for two or three.
        let budget = 4 * 1024;
        let cache = IndexCache::new(budget);
        let a = Log::open_with_cache(root.join("a"), small_config(), cache.clone())
            .await
            .unwrap();
        let b = Log::open_with_cache(root.join("b"), small_config(), cache.clone())
            .await
            .unwrap();
        let mut expected_a = Vec::new();
        let mut expected_b = Vec::new();
        for i in 0..240i64 {
            expected_a.extend(append_all(&a, &[(1, 200)], 1000 + i).await);
            expected_b.extend(append_all(&b, &[(1, 200)], 5000 + i).await);
            assert!(cache.stats().bytes <= budget);
        }
        assert!(a.segment_bases().len() >= 3, "{:?}", a.segment_bases());
        check_reads(&a, &expected_a).await;
        check_reads(&b, &expected_b).await;
        let stats = cache.stats();
        assert!(stats.bytes <= budget, "{stats:?}");
        assert!(stats.misses > 0 && stats.evictions > 0, "{stats:?}");
        // Time lookups land in sealed segments whose indexes had been evicted.
        for i in [0i64, 37, 120, 239] {
            let e = &expected_a[i as usize];
            assert_eq!(
                a.offset_for_timestamp(TimestampMs(1000 + i)).await.unwrap(),
                Some((e.base, TimestampMs(1000 + i)))
            );
        }
        // A sealed index file lost while the log is open is rebuilt in memory for the read.
        let first = a.segment_bases()[0];
        check_reads(&b, &expected_b).await; // evicts a's entries
        std::fs::remove_file(root.join("a").join(offset_index_file_name(first))).unwrap();
        let slice = a
            .read(expected_a[3].base, 1, Offset(i64::MAX))
            .await
            .unwrap();
        assert_eq!(concat(&slice), &expected_a[3].bytes[..]);
        assert!(cache.stats().bytes <= budget);
        // A dropped log gives its share back.
        drop(b);
        a.close().await.unwrap();
        assert_eq!(cache.stats().bytes, 0, "{:?}", cache.stats());
        // Reopened under the same budget, every offset still reads back.
        let a = Log::open_with_cache(root.join("a"), small_config(), cache.clone())
            .await
            .unwrap();
        check_reads(&a, &expected_a).await;
        assert!(cache.stats().bytes <= budget);
    });
}

#[test]
fn tail_caches_of_a_shard_stay_within_one_budget_oldest_appended_out_first() {
    use tern_storage::{IndexCache, TailBudget};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_async(move || async move {
        let budget_bytes = 64 * 1024;
        let budget = TailBudget::new(budget_bytes);
        let config = LogConfig {
            tail_cache_bytes: 1 << 20,
            ..small_config()
        };
        let open = |name: &str| {
            Log::open_with_caches(
                root.join(name),
                config.clone(),
                IndexCache::new(1 << 20),
                budget.clone(),
                tern_storage::FileBudget::new(64),
            )
        };
        let (a, b) = (open("a").await.unwrap(), open("b").await.unwrap());
        let mut expected_a = Vec::new();
        let mut expected_b = Vec::new();
        for i in 0..100i64 {
            expected_a.extend(append_all(&a, &[(1, 1000)], 1000 + i).await);
            assert!(budget.stats().bytes <= budget_bytes, "{:?}", budget.stats());
        }
        // a alone filled the budget: its own cap (1 MiB) is not what bounds it.
        assert!(
            a.stats().tail_cache_bytes > budget_bytes / 2,
            "{:?}",
            a.stats()
        );
        for i in 0..100i64 {
            expected_b.extend(append_all(&b, &[(1, 1000)], 5000 + i).await);
            assert!(budget.stats().bytes <= budget_bytes, "{:?}", budget.stats());
        }
        // b's appends pushed a's older batches out first.
        assert!(
            a.stats().tail_cache_bytes < budget_bytes / 8,
            "{:?}",
            a.stats()
        );
        assert!(
            b.stats().tail_cache_bytes > budget_bytes / 2,
            "{:?}",
            b.stats()
        );
        let stats = budget.stats();
        assert!(stats.evictions > 0, "{stats:?}");
        assert_eq!(
            stats.bytes,
            a.stats().tail_cache_bytes + b.stats().tail_cache_bytes,
            "the budget counts exactly what the caches hold"
        );
        // Evicted batches read back from disk.
        check_whole_log(&a, &expected_a).await;
        check_whole_log(&b, &expected_b).await;
        // A log gone gives its bytes back.
        drop(b);
        assert_eq!(budget.stats().bytes, a.stats().tail_cache_bytes);
        a.close().await.unwrap();
        assert_eq!(budget.stats().bytes, 0);
        assert_eq!(budget.stats().batches, 0);
    });
}

/// A consumer reading from disk in order finds each next read already under way (the log reads
/// ahead, there being no page cache), gets exactly the bytes appended, and never stale bytes
/// after a truncation rewrote what a read ahead had read.
#[test]
fn sequential_reads_from_disk_are_read_ahead_and_a_truncation_voids_the_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let config = LogConfig {
            segment_bytes: 64 << 20,
            ..small_config()
        };
        let log = Log::open(path, config).await.unwrap();
        // ~6 MiB in batches of ~64 KiB: far beyond the 4 KiB tail cache.
        let specs: Vec<(usize, usize)> = (0..96).map(|_| (16, 4_000)).collect();
        let expected = append_all(&log, &specs, 1_000).await;
        let end = log.log_end_offset();
        let mut got = Vec::new();
        let mut at = Offset(0);
        let mut reads = 0;
        while at < end {
            let slice = log.read(at, 1 << 20, end).await.unwrap();
            got.extend_from_slice(&concat(&slice));
            at = slice.next_offset;
            reads += 1;
        }
        let want: Vec<u8> = expected
            .iter()
            .flat_map(|e| e.bytes.iter().copied())
            .collect();
        assert!(got == want, "the log reads back as appended");
        // Every read but the first found its bytes read ahead.
        assert!(reads >= 5, "{reads} reads");
        assert_eq!(log.stats().read_ahead_hits, reads - 1, "{:?}", log.stats());

        // A read starts a read ahead; a truncation inside what it read, and new appends there,
        // must be what the next read returns.
        let from = expected[10].base;
        let slice = log.read(from, 1 << 20, end).await.unwrap();
        let next = slice.next_offset;
        let cut = expected
            .iter()
            .find(|e| e.base > next)
            .map(|e| e.base)
            .unwrap();
        log.truncate_to(cut).await.unwrap();
        let rewritten = append_all(&log, &[(3, 100), (2, 50)], 9_000).await;
        let hits = log.stats().read_ahead_hits;
        let mut got = Vec::new();
        let mut at = next;
        let end = log.log_end_offset();
        while at < end {
            let slice = log.read(at, 1 << 20, end).await.unwrap();
            got.extend_from_slice(&concat(&slice));
            at = slice.next_offset;
        }
        let want: Vec<u8> = expected
            .iter()
            .filter(|e| e.base >= next && e.base < cut)
            .chain(&rewritten)
            .flat_map(|e| e.bytes.iter().copied())
            .collect();
        assert!(
            got == want,
            "the bytes after the truncation, not the read ahead's"
        );
        assert_eq!(
            log.stats().read_ahead_hits,
            hits,
            "the truncation voided the read ahead"
        );

        // A read ahead nobody claims within a second is dropped: the read after that reads
        // the disk itself, and the same bytes.
        let slice = log.read(Offset(0), 1 << 20, end).await.unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(1_300)).await;
        let again = log.read(slice.next_offset, 1 << 20, end).await.unwrap();
        assert_eq!(log.stats().read_ahead_hits, hits, "the read ahead expired");
        let want: Vec<u8> = expected
            .iter()
            .filter(|e| e.base < cut)
            .chain(&rewritten)
            .filter(|e| e.base >= slice.next_offset && e.base < again.next_offset)
            .flat_map(|e| e.bytes.iter().copied())
            .collect();
        assert!(concat(&again) == want);
    });
}

/// Descriptors this process holds on `.log` files under `dir`.
fn open_log_files(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir) && target.extension().is_some_and(|e| e == "log"))
        .count()
}

#[test]
fn sealed_segments_files_stay_within_the_shard_file_budget_and_read_back() {
    use tern_storage::{FileBudget, IndexCache, TailBudget};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_async(move || async move {
        let limit = 3;
        let budget = FileBudget::new(limit);
        let config = LogConfig {
            segment_bytes: 4 * 1024,
            ..small_config()
        };
        let open = |name: &str| {
            Log::open_with_caches(
                root.join(name),
                config.clone(),
                IndexCache::new(1 << 20),
                TailBudget::new(usize::MAX),
                budget.clone(),
            )
        };
        // Descriptors close on glommio's next I/O cycle: give it one before counting.
        let settle = || glommio::timer::sleep(std::time::Duration::from_millis(20));
        let (a, b) = (open("a").await.unwrap(), open("b").await.unwrap());
        let specs: Vec<(usize, usize)> = (0..40).map(|_| (2, 500)).collect();
        let expected_a = append_all(&a, &specs, 1_000).await;
        let expected_b = append_all(&b, &specs, 2_000).await;
        assert!(a.segment_bases().len() > 10, "{:?}", a.segment_bases());
        assert!(budget.stats().open <= limit, "{:?}", budget.stats());
        settle().await;
        // One active file per log, and the budget's sealed ones.
        assert!(
            open_log_files(&root) <= limit + 2,
            "{}",
            open_log_files(&root)
        );
        // Every sealed segment is read, so every one is opened again, and the budget holds.
        check_whole_log(&a, &expected_a).await;
        check_whole_log(&b, &expected_b).await;
        let stats = budget.stats();
        assert!(stats.open <= limit, "{stats:?}");
        assert!(stats.reopens > 10 && stats.evictions > 10, "{stats:?}");
        settle().await;
        assert!(
            open_log_files(&root) <= limit + 2,
            "{}",
            open_log_files(&root)
        );
        // A cut inside a sealed segment makes it the active one again: its file is written.
        let cut = expected_a[5].base;
        a.truncate_to(cut).await.unwrap();
        let mut expected_a = expected_a[..5].to_vec();
        expected_a.extend(append_all(&a, &specs[..10], 3_000).await);
        check_whole_log(&a, &expected_a).await;
        // Reopened, a log's sealed files count in the budget from the start.
        a.close().await.unwrap();
        let a = open("a").await.unwrap();
        assert!(budget.stats().open <= limit, "{:?}", budget.stats());
        check_whole_log(&a, &expected_a).await;
        a.close().await.unwrap();
        b.close().await.unwrap();
        assert_eq!(budget.stats().open, 0);
        settle().await;
        assert_eq!(open_log_files(&root), 0);
    });
}

#[test]
fn the_active_segment_rolls_before_its_index_outgrows_segment_index_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let config = LogConfig {
            segment_bytes: 1 << 30,
            index_interval_bytes: 64,
            segment_index_bytes: 120,
            ..small_config()
        };
        let log = Log::open(path.clone(), config.clone()).await.unwrap();
        let specs: Vec<(usize, usize)> = (0..100).map(|_| (1, 100)).collect();
        let expected = append_all(&log, &specs, 7).await;
        assert!(log.segment_bases().len() > 5, "{:?}", log.segment_bases());
        // At most 15 offset entries (8 bytes each on disk), 10 time entries (12 bytes).
        assert!(log.stats().active_index_bytes <= 15 * 8 + 10 * 16);
        check_reads(&log, &expected).await;
        log.close().await.unwrap();
        for base in Log::open(path.clone(), config)
            .await
            .unwrap()
            .segment_bases()
        {
            let offsets = std::fs::metadata(path.join(offset_index_file_name(base)));
            let times = std::fs::metadata(path.join(time_index_file_name(base)));
            if let (Ok(offsets), Ok(times)) = (offsets, times) {
                assert!(offsets.len() <= 120 && times.len() <= 120);
            }
        }
    });
}

/// A log of 20 batches of two records (~1.1 KB each) in 4 KiB segments of three batches:
/// offsets 0..40, segment bases 0, 6, 12, 18, 24, 30, 36. Timestamps grow with the offset.
fn truncation_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        ..small_config()
    }
}

async fn truncation_fixture(path: &Path) -> (Log, Vec<Expected>) {
    let log = Log::open(path.to_path_buf(), truncation_config())
        .await
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..20 {
        expected.extend(append_all(&log, &[(2, 500)], 1_000 + i).await);
    }
    assert_eq!(
        log.segment_bases(),
        [0, 6, 12, 18, 24, 30, 36].map(Offset).to_vec()
    );
    (log, expected)
}

/// The log after reopening holds exactly the batches below `end`, reads back byte exact, keeps
/// its indexes consistent, and appends continue at `end`.
async fn check_truncated(path: &Path, expected: &[Expected], end: Offset) {
    let log = Log::open(path.to_path_buf(), truncation_config())
        .await
        .unwrap();
    assert!(!path.join(tern_storage::TRUNCATE_TO_FILE_NAME).exists());
    let kept: Vec<Expected> = expected.iter().filter(|e| e.next <= end).cloned().collect();
    assert_eq!(kept.last().map_or(Offset(0), |e| e.next), end);
    check_reads(&log, &kept).await;
    assert_eq!(
        log.max_timestamp().map(|(o, _)| o),
        kept.last().map(|e| e.base)
    );
    let more = append_all(&log, &[(1, 10)], 5_000).await;
    assert_eq!(more[0].base, end);
    log.close().await.unwrap();
    check_index_invariants(path);
}

/// Runs `truncate_to(target)` stopped after every possible step in turn, reopening each time:
/// the log ends at the old end only when the crash came before the intent was recorded, and
/// exactly at `new_end` otherwise.
fn truncation_survives_a_crash_at_every_step(target: Offset, new_end: Offset) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_async(move || async move {
        for steps in 0..30u32 {
            let path = root.join(format!("crash-after-{steps}"));
            let (log, expected) = truncation_fixture(&path).await;
            log.inject_truncate_crash(steps);
            let result = log.truncate_to(target).await;
            let finished = result.is_ok();
            if let Ok(end) = result {
                assert_eq!(end, new_end);
            }
            drop(log);
            let end = if steps == 0 { Offset(40) } else { new_end };
            check_truncated(&path, &expected, end).await;
            if finished {
                assert!(steps >= 6, "every step ran: {steps}");
                return;
            }
        }
        panic!("truncate_to never finished");
    });
}

#[test]
fn truncate_to_inside_the_active_segment_survives_a_crash_at_every_step() {
    // Offset 39 lies in the batch [38, 40): the log is cut at 38.
    truncation_survives_a_crash_at_every_step(Offset(39), Offset(38));
}

#[test]
fn truncate_to_across_segment_boundaries_survives_a_crash_at_every_step() {
    // Offset 15 lies in the batch [14, 16) of segment 12; segments 18..36 go.
    truncation_survives_a_crash_at_every_step(Offset(15), Offset(14));
}

#[test]
fn truncate_to_exactly_a_segment_base_survives_a_crash_at_every_step() {
    truncation_survives_a_crash_at_every_step(Offset(18), Offset(18));
}

#[test]
fn truncate_to_keeps_serving_reads_appends_and_lookups_without_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let (log, expected) = truncation_fixture(&path).await;
        assert_eq!(
            log.truncate_to(Offset(40)).await.unwrap(),
            Offset(40),
            "at the end: no-op"
        );
        assert_eq!(
            log.truncate_to(Offset(99)).await.unwrap(),
            Offset(40),
            "above: no-op"
        );
        assert_eq!(log.truncate_to(Offset(21)).await.unwrap(), Offset(20));
        assert_eq!(log.segment_bases(), [0, 6, 12, 18].map(Offset).to_vec());
        assert_eq!(
            (
                log.log_end_offset(),
                log.durable_end_offset(),
                log.acknowledged_end_offset()
            ),
            (Offset(20), Offset(20), Offset(20))
        );
        check_reads(&log, &expected[..10]).await;
        // Batch i holds records stamped 1000 + i and 1001 + i; batch 9 ([18, 20)) is the last.
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(1_010)).await.unwrap(),
            Some((Offset(19), TimestampMs(1_010)))
        );
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(1_011)).await.unwrap(),
            None
        );
        assert_eq!(log.max_timestamp(), Some((Offset(18), TimestampMs(1_010))));
        // Appends continue at the new end, and the segment rolls as usual.
        let mut kept = expected[..10].to_vec();
        for i in 0..6 {
            kept.extend(append_all(&log, &[(2, 500)], 2_000 + i).await);
        }
        assert_eq!(kept[10].base, Offset(20));
        check_reads(&log, &kept).await;
        log.close().await.unwrap();
        check_index_invariants(&path);
        let log = Log::open(path.clone(), truncation_config()).await.unwrap();
        check_reads(&log, &kept).await;
    });
}

#[test]
fn truncate_to_below_the_log_start_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let (log, expected) = truncation_fixture(&path).await;
        assert_eq!(log.delete_records(Offset(9)).await.unwrap(), Offset(9));
        for (target, batch_base) in [(Offset(8), Offset(8)), (Offset(9), Offset(8))] {
            match log.truncate_to(target).await {
                Err(err @ tern_storage::TruncateError::BelowLogStart { .. }) => {
                    assert_eq!(err.kafka_error_code(), 1);
                    assert!(
                        matches!(err, tern_storage::TruncateError::BelowLogStart { batch_base: b, .. } if b == batch_base),
                        "{err}"
                    );
                }
                other => panic!("expected BelowLogStart for {target}, got {other:?}"),
            }
        }
        assert_eq!(log.log_end_offset(), Offset(40));
        // At the log start, on a batch boundary: everything goes, the log is empty at 10.
        assert_eq!(log.truncate_to(Offset(10)).await.unwrap(), Offset(10));
        let more = append_all(&log, &[(1, 10)], 9).await;
        assert_eq!(more[0].base, Offset(10));
        let slice = log.read(Offset(10), 1, Offset(11)).await.unwrap();
        assert_eq!(concat(&slice), &more[0].bytes[..]);
        assert_eq!(expected.len(), 20);
    });
}

#[test]
fn truncate_to_waits_for_appends_in_flight_and_appends_after_it_start_at_the_new_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let log = std::rc::Rc::new(Log::open(path, LogConfig::default()).await.unwrap());
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                log.append(batch(2, 100, 5), LeaderEpoch(1), TimestampMs(5))
                    .await
                    .unwrap()
            }));
        }
        // Let the appenders run up to their wait: their batches are queued (one of them may hold
        // the writer role for a round already; truncate_to then waits for it).
        while log.log_end_offset() < Offset(8) {
            futures_lite::future::yield_now().await;
        }
        // truncate_to writes and syncs whatever is still queued (the appends succeed), then
        // cuts.
        let end = log.truncate_to(Offset(3)).await.unwrap();
        assert_eq!(end, Offset(2));
        for t in tasks {
            t.await;
        }
        let info = log
            .append(batch(1, 100, 5), LeaderEpoch(1), TimestampMs(5))
            .await
            .unwrap();
        assert_eq!(info.base_offset, Offset(2));
        assert_eq!(log.log_end_offset(), Offset(3));
    });
}

/// Batches as a leader would send them: offsets assigned from `base`, the given epoch stamped.
/// Returns the concatenated bytes and each batch as it must read back.
fn leader_batches(specs: &[(usize, usize)], base: Offset, epoch: i32) -> (Bytes, Vec<Expected>) {
    let mut all = BytesMut::new();
    let mut expected = Vec::new();
    let mut next = base;
    for &(records, value_bytes) in specs {
        let mut b = batch(records, value_bytes, 3_000 + next.0);
        tern_protocol::batch::set_base_offset(&mut b, next);
        tern_protocol::batch::set_partition_leader_epoch(&mut b, LeaderEpoch(epoch));
        let header = validate_batch(&b).unwrap();
        expected.push(Expected {
            base: next,
            next: header.next_offset(),
            bytes: b.clone().freeze(),
        });
        next = header.next_offset();
        all.extend_from_slice(&b);
    }
    (all.freeze(), expected)
}

#[test]
fn append_replicated_refuses_overlaps_and_bad_batches_writing_nothing_and_keeps_gaps() {
    use tern_storage::AppendReplicatedError as E;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let log = Log::open(path, small_config()).await.unwrap();
        let (good, expected) = leader_batches(&[(2, 100), (3, 50)], Offset(0), 7);
        assert_eq!(
            log.append_replicated(good, TimestampMs(1)).await.unwrap(),
            Offset(4)
        );
        // The log now ends at 5.
        let (gap, _) = leader_batches(&[(1, 10)], Offset(6), 7);
        let (overlap, _) = leader_batches(&[(1, 10)], Offset(4), 7);
        let (ok_then_skip, _) = {
            let (a, _) = leader_batches(&[(1, 10)], Offset(5), 7);
            let (b, _) = leader_batches(&[(1, 10)], Offset(7), 7);
            ([a, b].concat(), ())
        };
        let (ok_then_repeat, _) = {
            let (a, _) = leader_batches(&[(2, 10)], Offset(5), 7);
            let (b, _) = leader_batches(&[(1, 10)], Offset(6), 7);
            ([a, b].concat(), ())
        };
        let bad_crc = {
            let (a, _) = leader_batches(&[(1, 10)], Offset(5), 7);
            let mut a = a.to_vec();
            let last = a.len() - 1;
            a[last] ^= 1;
            a
        };
        let too_short = leader_batches(&[(1, 10)], Offset(5), 7).0[..30].to_vec();
        type Check = fn(&E) -> bool;
        let cases: Vec<(&str, Vec<u8>, i16, Check)> = vec![
            ("overlap", overlap.to_vec(), 1, |e| {
                matches!(
                    e,
                    E::Overlap {
                        log_end: Offset(5),
                        base_offset: Offset(4)
                    }
                )
            }),
            ("repeat within the call", ok_then_repeat, 87, |e| {
                matches!(
                    e,
                    E::NonContiguous {
                        expected: Offset(7),
                        found: Offset(6),
                        ..
                    }
                )
            }),
            ("bad crc", bad_crc, 2, |e| {
                matches!(e, E::InvalidBatch { .. })
            }),
            ("truncated", too_short, 2, |e| {
                matches!(e, E::InvalidBatch { .. })
            }),
            ("empty", Vec::new(), 87, |e| matches!(e, E::Empty)),
        ];
        for (name, input, code, check) in cases {
            let err = log
                .append_replicated(Bytes::from(input), TimestampMs(1))
                .await
                .expect_err(name);
            assert!(check(&err), "{name}: {err:?}");
            assert_eq!(err.kafka_error_code(), code, "{name}: {err}");
            assert_eq!(log.log_end_offset(), Offset(5), "{name}");
            assert_eq!(log.stats().batches_written, 2, "{name}");
        }
        // Stored exactly as sent: offsets and the leader's epoch untouched.
        check_reads(&log, &expected).await;
        let slice = log.read(Offset(2), 1, Offset(5)).await.unwrap();
        let header = validate_batch(&slice.chunks[0]).unwrap();
        assert_eq!(header.partition_leader_epoch(), LeaderEpoch(7));

        // Gaps are a compacted leader's removed batches: kept, and reads step over them.
        log.append_replicated(gap, TimestampMs(1)).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(7));
        let (later, _) = leader_batches(&[(1, 10)], Offset(9), 7);
        log.append_replicated(later, TimestampMs(1)).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(10));
        for (from, first) in [(5, 6), (6, 6), (7, 9), (8, 9)] {
            let slice = log.read(Offset(from), 1, Offset(10)).await.unwrap();
            assert_eq!(slice.first_offset, Offset(first), "read from {from}");
        }
        // Truncating to an offset inside a gap ends the log exactly there, never past it:
        // what follows must come from the new leader.
        assert_eq!(log.truncate_to(Offset(8)).await.unwrap(), Offset(8));
        assert_eq!(log.log_end_offset(), Offset(8));
        let (at_eight, _) = leader_batches(&[(1, 10)], Offset(8), 8);
        log.append_replicated(at_eight, TimestampMs(1))
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), Offset(9));
        let slice = log.read(Offset(7), 1, Offset(9)).await.unwrap();
        assert_eq!(slice.first_offset, Offset(8));
        drop(ok_then_skip);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, .. ProptestConfig::default() })]
    /// However the leader's batches are split into calls, the follower's log holds exactly the
    /// leader's bytes, before and after a reopen, and a leader-side `append` continues it.
    #[test]
    fn replicated_batches_read_back_byte_exact_however_they_are_split(
        specs in proptest::collection::vec((1usize..5, 0usize..2500), 1..30),
        cuts in proptest::collection::vec(any::<bool>(), 30),
        interval in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        run_async(move || async move {
            let config = LogConfig {
                flush: if interval {
                    FlushPolicy::Interval { messages: 3, ms: 50 }
                } else {
                    FlushPolicy::EveryAppend
                },
                ..small_config()
            };
            let log = Log::open(path.clone(), config.clone()).await.unwrap();
            let (_, expected) = leader_batches(&specs, Offset(0), 4);
            let mut call = BytesMut::new();
            for (i, e) in expected.iter().enumerate() {
                call.extend_from_slice(&e.bytes);
                if cuts[i] || i + 1 == expected.len() {
                    let last = log
                        .append_replicated(call.split().freeze(), TimestampMs(1))
                        .await
                        .unwrap();
                    assert_eq!(last, Offset(e.next.0 - 1));
                    assert_eq!(log.acknowledged_end_offset(), e.next);
                }
            }
            check_reads(&log, &expected).await;
            drop(log);
            let log = Log::open(path.clone(), config).await.unwrap();
            check_reads(&log, &expected).await;
            let more = append_all(&log, &[(1, 10)], 9).await;
            assert_eq!(more[0].base, expected.last().unwrap().next);
        });
    }
}

fn epoch_pairs(log: &Log) -> Vec<(i32, i64)> {
    log.epoch_entries()
        .iter()
        .map(|e| (e.epoch.0, e.start_offset.0))
        .collect()
}

/// A log whose batches carry epochs 1, 1, 3, 3, 5 (leader appends of two records each) and 7
/// (a replicated batch of two records): epoch 1 starts at 0, 3 at 4, 5 at 8, 7 at 10; the log
/// ends at 12, in several 4 KiB segments.
async fn epoch_fixture(path: &Path) -> Log {
    let log = Log::open(path.to_path_buf(), truncation_config())
        .await
        .unwrap();
    for epoch in [1, 1, 3, 3, 5] {
        log.append(batch(2, 1000, 1), LeaderEpoch(epoch), TimestampMs(1))
            .await
            .unwrap();
    }
    let (replicated, _) = leader_batches(&[(2, 1000)], Offset(10), 7);
    log.append_replicated(replicated, TimestampMs(1))
        .await
        .unwrap();
    // A stale leader's batch does not enter the cache.
    log.append(batch(2, 10, 1), LeaderEpoch(6), TimestampMs(1))
        .await
        .unwrap();
    assert!(log.segment_bases().len() > 2, "{:?}", log.segment_bases());
    log
}

const FIXTURE_EPOCHS: [(i32, i64); 4] = [(1, 0), (3, 4), (5, 8), (7, 10)];

#[test]
fn leader_epochs_are_kept_across_clean_and_killed_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let log = epoch_fixture(&path).await;
        assert_eq!(epoch_pairs(&log), FIXTURE_EPOCHS);
        assert_eq!(log.latest_epoch(), Some(LeaderEpoch(7)));
        let cases = [
            (0, Some((0, 0))),
            (1, Some((1, 4))),
            (2, Some((1, 4))),
            (3, Some((3, 8))),
            (6, Some((5, 10))),
            (7, Some((7, 14))),
            (8, None),
        ];
        let check = |log: &Log| {
            for (requested, want) in cases {
                let got = log
                    .end_offset_for_epoch(LeaderEpoch(requested))
                    .map(|(e, o)| (e.0, o.0));
                assert_eq!(got, want, "epoch {requested}");
            }
        };
        check(&log);
        assert!(path.join(tern_storage::LEADER_EPOCH_FILE_NAME).exists());
        log.close().await.unwrap();
        let log = Log::open(path.clone(), truncation_config()).await.unwrap();
        assert_eq!(epoch_pairs(&log), FIXTURE_EPOCHS, "after a clean close");
        check(&log);
        drop(log);
        let log = Log::open(path.clone(), truncation_config()).await.unwrap();
        assert_eq!(epoch_pairs(&log), FIXTURE_EPOCHS, "after a kill");
        check(&log);
    });
}

#[test]
fn a_missing_or_damaged_epoch_file_is_rebuilt_from_batch_headers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_async(move || async move {
        type Damage = fn(&Path);
        let damages: [(&str, Damage); 4] = [
            ("missing", |f| std::fs::remove_file(f).unwrap()),
            ("flipped byte", |f| {
                let mut bytes = std::fs::read(f).unwrap();
                bytes[9] ^= 0x10;
                std::fs::write(f, bytes).unwrap();
            }),
            ("cut short", |f| {
                let bytes = std::fs::read(f).unwrap();
                std::fs::write(f, &bytes[..bytes.len() - 3]).unwrap();
            }),
            ("empty", |f| std::fs::write(f, []).unwrap()),
        ];
        for (name, damage) in damages {
            let path = root.join(name.replace(' ', "-"));
            let log = epoch_fixture(&path).await;
            drop(log);
            let file = path.join(tern_storage::LEADER_EPOCH_FILE_NAME);
            damage(&file);
            let log = Log::open(path.clone(), truncation_config()).await.unwrap();
            assert_eq!(epoch_pairs(&log), FIXTURE_EPOCHS, "{name}");
            let rewritten = tern_storage::LeaderEpochCache::decode(&std::fs::read(&file).unwrap());
            assert_eq!(
                rewritten.map(|c| c.entries().to_vec()),
                Ok(log.epoch_entries()),
                "{name}: the rebuilt cache is persisted"
            );
        }
    });
}

#[test]
fn epochs_whose_batches_did_not_survive_a_crash_are_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let log = Log::open(path.clone(), small_config()).await.unwrap();
        let first = append_all(&log, &[(2, 100), (2, 100)], 1).await;
        log.append(batch(1, 100, 1), LeaderEpoch(9), TimestampMs(1))
            .await
            .unwrap();
        assert_eq!(epoch_pairs(&log), vec![(3, 0), (9, 4)]);
        drop(log);
        // The epoch-9 batch is torn away; the file still names epoch 9.
        let segment = path.join(log_file_name(Offset(0)));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(segment)
            .unwrap();
        f.set_len((first[0].bytes.len() + first[1].bytes.len() + 10) as u64)
            .unwrap();
        let log = Log::open(path.clone(), small_config()).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(4));
        assert_eq!(epoch_pairs(&log), vec![(3, 0)]);
        assert_eq!(
            log.end_offset_for_epoch(LeaderEpoch(3)),
            Some((LeaderEpoch(3), Offset(4)))
        );
    });
}

#[test]
fn truncate_to_and_delete_records_trim_the_epoch_cache_and_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let log = epoch_fixture(&path).await;
        assert_eq!(log.truncate_to(Offset(9)).await.unwrap(), Offset(8));
        assert_eq!(epoch_pairs(&log), vec![(1, 0), (3, 4)]);
        assert_eq!(
            log.end_offset_for_epoch(LeaderEpoch(3)),
            Some((LeaderEpoch(3), Offset(8)))
        );
        // A new leader epoch continues the log.
        log.append(batch(1, 10, 1), LeaderEpoch(8), TimestampMs(1))
            .await
            .unwrap();
        assert_eq!(epoch_pairs(&log), vec![(1, 0), (3, 4), (8, 8)]);
        assert_eq!(log.delete_records(Offset(5)).await.unwrap(), Offset(5));
        assert_eq!(epoch_pairs(&log), vec![(3, 5), (8, 8)]);
        drop(log);
        let log = Log::open(path.clone(), truncation_config()).await.unwrap();
        assert_eq!(epoch_pairs(&log), vec![(3, 5), (8, 8)]);
    });
}

/// A follower whose leader's log start passed it restarts its log there: everything before is
/// gone, the leader's batches from that offset append, and a reopen keeps the new start.
#[test]
fn restart_at_empties_the_log_and_starts_it_at_the_given_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run_async(move || async move {
        let log = Log::open(path.clone(), small_config()).await.unwrap();
        let (old, _) = leader_batches(&[(3, 100), (2, 100)], Offset(0), 1);
        log.append_replicated(old, TimestampMs(1)).await.unwrap();
        let log = log.restart_at(Offset(1_000)).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(1_000));
        assert_eq!(log.log_end_offset(), Offset(1_000));
        assert_eq!(log.latest_epoch(), None);
        let (new, expected) = leader_batches(&[(2, 100), (1, 50)], Offset(1_000), 4);
        assert_eq!(
            log.append_replicated(new, TimestampMs(2)).await.unwrap(),
            Offset(1_002)
        );
        check_reads(&log, &expected).await;
        assert!(log.read(Offset(0), 1 << 20, Offset(2_000)).await.is_err());
        log.close().await.unwrap();
        let log = Log::open(path, small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(1_000));
        assert_eq!(log.log_end_offset(), Offset(1_003));
        check_reads(&log, &expected).await;
    });
}

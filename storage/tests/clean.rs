//! Specification tests of log compaction: a pass keeps the latest record of each key at its
//! offset, tombstones stay until their delete horizon and then go, reads step over the gaps,
//! a small offset map cleans in several passes to the same result, and a crash at every step
//! of the swap leaves a log that reads as all-old or all-new and cleans to the same end.

mod support;

use support::run_async;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tern_protocol::batch::{validate_batch, BatchBuilder, BatchIter, BuilderRecord};
use tern_protocol::records::for_each_record;
use tern_protocol::types::{LeaderEpoch, Offset, TimestampMs};
use tern_storage::{CleanOptions, Log, LogConfig, OffsetMap};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4 * 1024,
        index_interval_bytes: 256,
        tail_cache_bytes: 1024,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

const T0: i64 = 1_700_000_000_000;

/// One record as the test wrote it or reads it back: (offset, key, value or None).
type Rec = (i64, String, Option<String>);

fn keyed_batch(records: &[(String, Option<String>)], ts: i64) -> bytes::BytesMut {
    let mut builder = BatchBuilder::new(TimestampMs(ts));
    for (i, (key, value)) in records.iter().enumerate() {
        builder = builder.record(BuilderRecord {
            timestamp_delta_ms: i as i64,
            key: Some(key.clone().into_bytes().into()),
            value: value.clone().map(|v| v.into_bytes().into()),
            headers: Vec::new(),
        });
    }
    builder.build()
}

/// Appends `rounds` batches: batch i holds one to three records of keys `k{(i + j) % keys}`,
/// every seventh record a tombstone, values padded so segments roll often.
async fn fill(log: &Log, rounds: usize, keys: usize) -> Vec<Rec> {
    let mut written = Vec::new();
    for i in 0..rounds {
        let records: Vec<(String, Option<String>)> = (0..1 + i % 3)
            .map(|j| {
                let n = i * 3 + j;
                let key = format!("k{}", (i + j) % keys);
                let value = (n % 7 != 3).then(|| format!("v{n}-{}", "x".repeat(60)));
                (key, value)
            })
            .collect();
        let info = log
            .append(
                keyed_batch(&records, T0 + i as i64),
                LeaderEpoch(1),
                TimestampMs(T0),
            )
            .await
            .unwrap();
        for (j, (key, value)) in records.into_iter().enumerate() {
            written.push((info.base_offset.0 + j as i64, key, value));
        }
    }
    written
}

/// Every record the log serves, read from offset 0 in small reads.
async fn read_all(log: &Log) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    let end = log.log_end_offset();
    while next < end {
        let slice = log.read(next, 512, end).await.unwrap();
        assert!(
            slice.next_offset > next,
            "a read makes progress from {next}"
        );
        for chunk in &slice.chunks {
            for item in BatchIter::new(chunk) {
                let span = item.unwrap();
                let bytes = &chunk[span.position..span.position + span.total_bytes];
                let header = validate_batch(bytes).unwrap();
                for_each_record(bytes, &header, |r| {
                    if r.offset >= next {
                        out.push((
                            r.offset.0,
                            String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                            r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
                        ));
                    }
                })
                .unwrap();
            }
        }
        next = slice.next_offset;
    }
    out
}

/// What a log holding `written` must read as once everything below `end` is cleaned, with
/// tombstones kept (`drop_tombstones` false) or gone.
fn compacted(written: &[Rec], end: i64, drop_tombstones: bool) -> Vec<Rec> {
    let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
    for (offset, key, _) in written.iter().filter(|r| r.0 < end) {
        latest.insert(key, *offset);
    }
    written
        .iter()
        .filter(|(offset, key, value)| {
            *offset >= end
                || (latest[key.as_str()] == *offset && (value.is_some() || !drop_tombstones))
        })
        .cloned()
        .collect()
}

fn options(log: &Log, now: i64) -> CleanOptions {
    CleanOptions {
        upto: log.log_end_offset(),
        now: TimestampMs(now),
        min_lag_ms: 0,
        delete_retention_ms: 1_000,
        // Groups of up to four of the log's 4 KiB segments are rewritten into one.
        segment_bytes: 16 * 1024,
    }
}

/// The offset the active segment starts at: where cleaning stops.
fn active_base(log: &Log) -> i64 {
    log.segment_bases().last().unwrap().0
}

fn dir_in(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("compacted-0")
}

#[test]
fn a_pass_keeps_the_latest_record_of_each_key_at_its_offset_across_reopens() {
    let tmp = tempfile::tempdir().unwrap();
    let path = dir_in(&tmp);
    run_async(move || async move {
        let log = Log::open(path.clone(), config()).await.unwrap();
        let written = fill(&log, 300, 12).await;
        let segments_before = log.segment_bases().len();
        let end = active_base(&log);
        let dirty = log.cleanable(log.log_end_offset(), TimestampMs(T0), 0);
        assert_eq!(dirty.clean_bytes, 0);
        assert!(dirty.dirty_bytes > 0 && dirty.dirty_ratio() == 1.0);

        let mut map = OffsetMap::with_budget(1 << 20);
        let report = log.clean(options(&log, T0), &mut map).await.unwrap();
        assert!(report.completed, "{report:?}");
        assert_eq!(report.checkpoint, Offset(end));
        assert_eq!(report.keys, 12);
        assert!(report.records_removed > 0 && report.bytes_written < report.bytes_read);
        let expected = compacted(&written, end, false);
        assert_eq!(read_all(&log).await, expected);
        assert!(
            log.segment_bases().len() < segments_before,
            "groups were merged"
        );
        assert_eq!(log.log_end_offset(), Offset(written.last().unwrap().0 + 1));
        assert_eq!(log.log_start_offset(), Offset(0));
        let after = log.cleanable(log.log_end_offset(), TimestampMs(T0), 0);
        assert_eq!(after.dirty_bytes, 0, "{after:?}");

        // Appends go on after a pass; a reopen after a clean close and after a kill read the same.
        let more = fill(&log, 20, 12).await;
        let mut expected = expected;
        expected.extend(more);
        log.close().await.unwrap();
        let log = Log::open(path.clone(), config()).await.unwrap();
        assert_eq!(read_all(&log).await, expected);
        drop(log);
        let log = Log::open(path.clone(), config()).await.unwrap();
        assert_eq!(read_all(&log).await, expected);
        // A read from any offset makes progress and skips no kept record.
        for from in 0..log.log_end_offset().0 {
            let slice = log
                .read(Offset(from), 1, log.log_end_offset())
                .await
                .unwrap();
            let first_kept = expected.iter().find(|r| r.0 >= from).unwrap().0;
            assert!(
                slice.next_offset.0 > from && slice.first_offset.0 <= first_kept,
                "read from {from}: {:?}, first kept {first_kept}, segments {:?}",
                (slice.first_offset, slice.next_offset),
                log.segment_bases(),
            );
        }
    });
}

#[test]
fn tombstones_stay_until_their_delete_horizon_then_go() {
    let tmp = tempfile::tempdir().unwrap();
    let path = dir_in(&tmp);
    run_async(move || async move {
        let log = Log::open(path, config()).await.unwrap();
        let written = fill(&log, 300, 12).await;
        let end = active_base(&log);
        let mut map = OffsetMap::with_budget(1 << 20);
        log.clean(options(&log, T0), &mut map).await.unwrap();
        let kept = compacted(&written, end, false);
        assert!(
            kept.iter().any(|r| r.0 < end && r.2.is_none()),
            "the fixture has a latest tombstone"
        );
        assert_eq!(read_all(&log).await, kept);

        // Before the horizon (1 s after the first pass) nothing is due.
        assert!(
            !log.cleanable(log.log_end_offset(), TimestampMs(T0 + 999), 0)
                .tombstones_due
        );
        let report = log.clean(options(&log, T0 + 999), &mut map).await.unwrap();
        assert_eq!(report.tombstones_removed, 0);
        assert_eq!(read_all(&log).await, kept);

        // After it, a pass drops them, and with them nothing else.
        assert!(
            log.cleanable(log.log_end_offset(), TimestampMs(T0 + 1_000), 0)
                .tombstones_due
        );
        let report = log
            .clean(options(&log, T0 + 1_000), &mut map)
            .await
            .unwrap();
        assert!(report.tombstones_removed > 0, "{report:?}");
        assert_eq!(read_all(&log).await, compacted(&written, end, true));
    });
}

#[test]
fn a_small_offset_map_cleans_in_several_passes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let path = dir_in(&tmp);
    run_async(move || async move {
        let log = Log::open(path, config()).await.unwrap();
        let written = fill(&log, 300, 200).await;
        let end = active_base(&log);
        // Room for 28 keys (the map's minimum is 16 slots; 32 slots at 90 %).
        let mut map = OffsetMap::with_budget(32 * tern_storage::offset_map::SLOT_BYTES);
        let mut passes = 0;
        while log.cleaner_checkpoint() < Offset(end) {
            let report = log.clean(options(&log, T0), &mut map).await.unwrap();
            assert!(report.completed && report.keys <= 28, "{report:?}");
            passes += 1;
            assert!(passes < 100, "passes make progress");
        }
        assert!(passes > 3, "{passes} passes");
        assert_eq!(read_all(&log).await, compacted(&written, end, false));
    });
}

/// A log cut off after `steps` steps of a group's swap reopens holding either the old or the
/// cleaned group, never a mix, never missing a latest record; cleaning again completes.
fn crash_during_swap(steps: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let path = dir_in(&tmp);
    run_async(move || async move {
        let log = Log::open(path.clone(), config()).await.unwrap();
        let written = fill(&log, 300, 12).await;
        let end = active_base(&log);
        log.inject_clean_crash(steps);
        let mut map = OffsetMap::with_budget(1 << 20);
        let error = log.clean(options(&log, T0), &mut map).await.unwrap_err();
        assert!(error.to_string().contains("injected crash"), "{error}");
        drop(log); // killed: no close
        let log = Log::open(path.clone(), config()).await.unwrap();
        check_dir_has_no_leftovers(&path);
        let read = read_all(&log).await;
        let all_old = written.clone();
        let first_group_cleaned = {
            // The first group swapped, the rest old: each latest record is there, every record
            // read is one written, at its offset.
            let latest = compacted(&written, end, false);
            latest.iter().all(|r| read.contains(r)) && read.iter().all(|r| written.contains(r))
        };
        assert!(read == all_old || first_group_cleaned, "step {steps}");
        if steps >= 3 {
            assert_ne!(
                read, all_old,
                "the intent was durable: the swap completed at open"
            );
        }
        let report = log.clean(options(&log, T0), &mut map).await.unwrap();
        assert!(report.completed);
        assert_eq!(read_all(&log).await, compacted(&written, end, false));
    });
}

fn check_dir_has_no_leftovers(path: &Path) {
    for entry in std::fs::read_dir(path).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".cleaned") && name != tern_storage::CLEAN_SWAP_FILE_NAME,
            "{name} left behind"
        );
    }
}

#[test]
fn a_crash_before_the_intent_leaves_the_old_segments() {
    crash_during_swap(1);
}

#[test]
fn a_crash_after_the_intent_completes_the_swap_at_open() {
    crash_during_swap(2);
}

#[test]
fn a_crash_after_the_renames_completes_the_swap_at_open() {
    crash_during_swap(3);
}

#[test]
fn min_compaction_lag_and_the_upper_bound_keep_recent_segments_dirty() {
    let tmp = tempfile::tempdir().unwrap();
    let path = dir_in(&tmp);
    run_async(move || async move {
        let log = Log::open(path, config()).await.unwrap();
        let written = fill(&log, 300, 12).await;
        let bases = log.segment_bases();
        // Only segments that end at or below `upto` are cleanable.
        let upto = bases[3];
        let mut map = OffsetMap::with_budget(1 << 20);
        let report = log
            .clean(
                CleanOptions {
                    upto,
                    ..options(&log, T0)
                },
                &mut map,
            )
            .await
            .unwrap();
        assert_eq!(report.checkpoint, upto);
        assert_eq!(read_all(&log).await, compacted(&written, upto.0, false));
        // Every record is younger than a day: a day's lag cleans nothing more.
        let report = log
            .clean(
                CleanOptions {
                    min_lag_ms: 86_400_000,
                    ..options(&log, T0 + 1_000)
                },
                &mut map,
            )
            .await
            .unwrap();
        assert_eq!(report.checkpoint, upto);
        assert_eq!(report.records_removed, 0);
    });
}

#[test]
fn reads_running_beside_a_pass_always_see_a_valid_log() {
    let tmp = tempfile::tempdir().unwrap();
    let path = dir_in(&tmp);
    run_async(move || async move {
        let log = std::rc::Rc::new(Log::open(path, config()).await.unwrap());
        let written = fill(&log, 600, 12).await;
        let end = active_base(&log);
        let done = std::rc::Rc::new(std::cell::Cell::new(false));
        let reader = {
            let (log, done, written) = (log.clone(), done.clone(), written.clone());
            glommio::spawn_local(async move {
                let mut reads = 0;
                while !done.get() {
                    let read = read_all(&log).await;
                    assert!(
                        read.iter().all(|r| written.contains(r)),
                        "only written records"
                    );
                    for latest in compacted(&written, end, false) {
                        assert!(read.contains(&latest), "latest {latest:?} missing");
                    }
                    reads += 1;
                    futures_lite::future::yield_now().await;
                }
                reads
            })
        };
        let mut map = OffsetMap::with_budget(1 << 20);
        let report = log.clean(options(&log, T0), &mut map).await.unwrap();
        assert!(report.completed);
        done.set(true);
        let reads = reader.await;
        assert!(reads >= 2, "{reads} reads overlapped the pass");
        assert_eq!(read_all(&log).await, compacted(&written, end, false));
    });
}

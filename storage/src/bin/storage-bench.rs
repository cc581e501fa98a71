//! storage-bench: measures the partition log against the raw device, on the same file system,
//! with the same block sizes, in one run.
//!
//! Phases: raw O_DIRECT sequential write bandwidth (DmaFile), raw write+fdatasync latency, log
//! append throughput (1 KiB records in 16 KiB and 1 MiB batches; EveryAppend group commit with
//! several concurrent appenders, and interval flush), and durable-append latency at a fixed
//! offered rate of half of saturation (open loop: latency counts from the scheduled time, so
//! queueing is not hidden), next to the same schedule served by a minimal group commit on a
//! raw file (the device's own floor at that load). It ends with `key value` lines for scripts.
//! It is a benchmark, not a test: it never fails on a slow machine. It must never leave its
//! temporary directory behind, but deletes files only between rounds, followed by a sync: with
//! ext4's `discard` mount option, deleting gigabytes sends discards that stall the fdatasyncs
//! of whatever runs next.
//!
//! Every phase runs `--rounds` times (default 3), interleaved: this machine's disk drifts by
//! tens of percent within a minute, so a ratio is taken within each round (its two sides seconds
//! apart) and the median over rounds is printed, with the smallest and largest.
//!
//! Usage: `cargo run --release -p tern-storage --bin storage-bench -- [--dir D] [--seconds S]
//! [--rounds N] [--rate-fraction F] [--sync-only]`
//!
//! `--sync-only` runs only the lone write+fdatasync phase, twice per round: writes past the end
//! of file into preallocated (unwritten) space, as a segment without zeroing ahead is written,
//! and writes over blocks already written with zeros, as the log writes within its zeroed-ahead
//! stretch. Scripts that compare the broker's latency with the disk's use it.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::io::OpenOptions;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use tern_protocol::batch::build_simple_batch;
use tern_protocol::types::{LeaderEpoch, TimestampMs};
use tern_storage::{FlushPolicy, Log, LogConfig};

const RECORD_VALUE_BYTES: usize = 1000;
/// Concurrent appenders in the throughput phases: enough for group commit to form large groups
/// and to saturate the log. With 8, only 128 KiB of 16 KiB batches were ever in flight and the
/// "saturation" rate (which sets the latency phase's offered rate) was a third of what 32 reach.
const APPENDERS: usize = 32;

struct Args {
    dir: PathBuf,
    seconds: f64,
    /// Offered rate of the latency phase as a fraction of the measured saturation rate.
    rate_fraction: f64,
    /// Every phase runs this many times, interleaved, so each ratio's two sides are measured
    /// seconds apart; the figures printed are medians.
    rounds: usize,
    /// Only the lone write+fdatasync phase, extending and overwriting.
    sync_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut dir = std::env::current_dir()
        .map_err(|e| format!("no current directory: {e}"))?
        .join(format!("storage-bench-{}", std::process::id()));
    let mut seconds = 3.0;
    let mut rate_fraction = 0.5;
    let mut rounds = 3;
    let mut sync_only = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => {
                dir = PathBuf::from(it.next().ok_or("--dir needs a path")?)
                    .join(format!("storage-bench-{}", std::process::id()))
            }
            "--rate-fraction" => {
                rate_fraction = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--rate-fraction needs a number")?
            }
            "--rounds" => {
                rounds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n: &usize| n > 0)
                    .ok_or("--rounds needs a positive number")?
            }
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds needs a number")?
            }
            "--sync-only" => sync_only = true,
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: storage-bench [--dir D] [--seconds S] [--rounds N] [--rate-fraction F] [--sync-only]"
                ))
            }
        }
    }
    Ok(Args {
        dir,
        seconds,
        rate_fraction,
        rounds,
        sync_only,
    })
}

fn mb_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

/// Creates a raw O_DIRECT file with `preallocate_bytes` preallocated (fallocate KEEP_SIZE, as a
/// segment's extents are).
async fn open_raw(path: &Path, preallocate_bytes: u64) -> Result<glommio::io::DmaFile, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .map_err(|e| e.to_string())?;
    file.pre_allocate(preallocate_bytes, true)
        .await
        .map_err(|e| e.to_string())?;
    Ok(file)
}

/// Sequential O_DIRECT writes of `block_bytes` through DmaFile, one at a time (as the log's
/// appender issues them), preallocated like a segment, with an fdatasync at the end.
async fn raw_write_bandwidth(dir: &Path, block_bytes: usize, seconds: f64) -> Result<f64, String> {
    let file = open_raw(&dir.join(format!("raw-{block_bytes}")), 64 << 20).await?;
    let mut position = 0u64;
    let mut preallocated = 64u64 << 20;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        if position + block_bytes as u64 > preallocated {
            preallocated += 64 << 20;
            file.pre_allocate(preallocated, true)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut buf = file.alloc_dma_buffer(block_bytes);
        buf.as_bytes_mut().fill(0x5a);
        file.write_at(buf, position)
            .await
            .map_err(|e| e.to_string())?;
        position += block_bytes as u64;
    }
    file.fdatasync().await.map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    file.close().await.map_err(|e| e.to_string())?;
    Ok(mb_s(position, elapsed))
}

/// Closed loop of write(`block_bytes`) + fdatasync at sequential positions; latency per pair.
/// With `overwrite`, the file's blocks are first written with zeros and synced (not timed), so
/// every timed write lands in written blocks below the end of file and changes no metadata.
async fn raw_write_fdatasync_latency(
    dir: &Path,
    block_bytes: usize,
    seconds: f64,
    overwrite: bool,
) -> Result<Histogram<u64>, String> {
    const FILE_BYTES: u64 = 256 << 20;
    let name = if overwrite {
        "raw-sync-over"
    } else {
        "raw-sync"
    };
    let file = open_raw(&dir.join(name), FILE_BYTES).await?;
    if overwrite {
        const CHUNK: usize = 1 << 20;
        for at in (0..FILE_BYTES).step_by(CHUNK) {
            let mut zeros = file.alloc_dma_buffer(CHUNK);
            zeros.as_bytes_mut().fill(0);
            file.write_at(zeros, at).await.map_err(|e| e.to_string())?;
        }
        file.fdatasync().await.map_err(|e| e.to_string())?;
    }
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut position = 0u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds && position < FILE_BYTES {
        let mut buf = file.alloc_dma_buffer(block_bytes);
        buf.as_bytes_mut().fill(0x33);
        let t = Instant::now();
        file.write_at(buf, position)
            .await
            .map_err(|e| e.to_string())?;
        file.fdatasync().await.map_err(|e| e.to_string())?;
        hist.record(t.elapsed().as_micros() as u64)
            .map_err(|e| e.to_string())?;
        position += block_bytes as u64;
    }
    file.close().await.map_err(|e| e.to_string())?;
    Ok(hist)
}

/// The floor for the durable-append latency phase: the same open-loop schedule served by the
/// simplest possible group commit on a raw file (no log, no validation, no indexes): write
/// everything that has arrived in one O_DIRECT write, fdatasync, acknowledge, repeat. Latency
/// counts from the scheduled time, as in `durable_latency`.
async fn raw_group_commit_latency(
    dir: &Path,
    block_bytes: usize,
    rate_per_s: f64,
    seconds: f64,
) -> Result<Histogram<u64>, String> {
    let block = block_bytes.next_multiple_of(4096);
    let total = (rate_per_s * seconds) as u64;
    let file = Rc::new(open_raw(&dir.join("raw-group-commit"), (total + 1) * block as u64).await?);
    let queue: Rc<RefCell<Vec<Instant>>> = Rc::new(RefCell::new(Vec::new()));
    let done = Rc::new(Cell::new(false));
    let (wake_tx, wake_rx) = glommio::channels::local_channel::new_unbounded::<()>();
    let committer = {
        let (file, queue, done) = (file.clone(), queue.clone(), done.clone());
        glommio::spawn_local(async move {
            let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
            let mut position = 0u64;
            loop {
                if queue.borrow().is_empty() {
                    if done.get() {
                        return Ok::<_, String>(hist);
                    }
                    wake_rx.recv().await;
                    continue;
                }
                let group = std::mem::take(&mut *queue.borrow_mut());
                let len = group.len() * block;
                let mut buf = file.alloc_dma_buffer(len);
                buf.as_bytes_mut().fill(0x44);
                file.write_at(buf, position)
                    .await
                    .map_err(|e| e.to_string())?;
                file.fdatasync().await.map_err(|e| e.to_string())?;
                position += len as u64;
                for scheduled in group {
                    hist.record(scheduled.elapsed().as_micros() as u64)
                        .map_err(|e| e.to_string())?;
                }
            }
        })
    };
    let interval = Duration::from_secs_f64(1.0 / rate_per_s);
    let start = Instant::now();
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        let now = Instant::now();
        if scheduled > now {
            glommio::timer::sleep(scheduled - now).await;
        }
        queue.borrow_mut().push(scheduled);
        let _ = wake_tx.try_send(());
    }
    done.set(true);
    let _ = wake_tx.try_send(());
    let hist = committer.await?;
    drop(file);
    Ok(hist)
}

fn bench_config(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        flush,
        tail_cache_bytes: 64 << 20,
        max_message_bytes: 2 << 20,
        ..LogConfig::default()
    }
}

/// `APPENDERS` tasks append copies of `batch` back to back for `seconds`; returns MB/s and
/// appends per second.
async fn append_throughput(
    dir: &Path,
    name: &str,
    batch: &BytesMut,
    flush: FlushPolicy,
    seconds: f64,
) -> Result<(f64, f64), String> {
    let log = Rc::new(
        Log::open(dir.join(name), bench_config(flush))
            .await
            .map_err(|e| e.to_string())?,
    );
    let bytes = Rc::new(Cell::new(0u64));
    let appends = Rc::new(Cell::new(0u64));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..APPENDERS {
        let (log, bytes, appends, batch) =
            (log.clone(), bytes.clone(), appends.clone(), batch.clone());
        tasks.push(glommio::spawn_local(async move {
            while start.elapsed().as_secs_f64() < seconds {
                log.append(batch.clone(), LeaderEpoch(1), TimestampMs(1))
                    .await
                    .map_err(|e| e.to_string())?;
                bytes.set(bytes.get() + batch.len() as u64);
                appends.set(appends.get() + 1);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed();
    let stats = log.stats();
    eprintln!("  {name}: {stats:?}");
    Rc::try_unwrap(log)
        .map_err(|_| "log still shared".to_string())?
        .close()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        mb_s(bytes.get(), elapsed),
        appends.get() as f64 / elapsed.as_secs_f64(),
    ))
}

/// Open loop: appends scheduled at `rate_per_s`; latency from the scheduled time to the ack.
async fn durable_latency(
    dir: &Path,
    batch: &BytesMut,
    rate_per_s: f64,
    seconds: f64,
) -> Result<Histogram<u64>, String> {
    let log = Rc::new(
        Log::open(dir.join("latency"), bench_config(FlushPolicy::EveryAppend))
            .await
            .map_err(|e| e.to_string())?,
    );
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
    ));
    let in_flight = Rc::new(Cell::new(0usize));
    // Diagnostics: time from issue to ack, and how late the generator issued.
    let service = Rc::new(RefCell::new(
        Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
    ));
    let lateness = Rc::new(RefCell::new(
        Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
    ));
    let interval = Duration::from_secs_f64(1.0 / rate_per_s);
    let start = Instant::now();
    let total = (rate_per_s * seconds) as u64;
    let mut tasks = Vec::new();
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        // A timer, not a busy yield: a task that keeps yielding starves glommio's I/O polling.
        // A late wake-up still counts as latency, since it is measured from `scheduled`.
        let now = Instant::now();
        if scheduled > now {
            glommio::timer::sleep(scheduled - now).await;
        }
        if in_flight.get() > 4096 {
            break;
        }
        let (log, hist, in_flight, batch) =
            (log.clone(), hist.clone(), in_flight.clone(), batch.clone());
        in_flight.set(in_flight.get() + 1);
        let (service, lateness) = (service.clone(), lateness.clone());
        lateness
            .borrow_mut()
            .record(scheduled.elapsed().as_micros() as u64)
            .map_err(|e| e.to_string())?;
        tasks.push(glommio::spawn_local(async move {
            let issued = Instant::now();
            log.append(batch, LeaderEpoch(1), TimestampMs(1))
                .await
                .map_err(|e| e.to_string())?;
            service
                .borrow_mut()
                .record(issued.elapsed().as_micros() as u64)
                .map_err(|e| e.to_string())?;
            hist.borrow_mut()
                .record(scheduled.elapsed().as_micros() as u64)
                .map_err(|e| e.to_string())?;
            in_flight.set(in_flight.get() - 1);
            Ok::<(), String>(())
        }));
    }
    let generated = start.elapsed();
    for t in tasks {
        t.await?;
    }
    eprintln!("  latency: generated in {generated:?}, {:?}", log.stats());
    let (service, lateness) = (service.borrow().clone(), lateness.borrow().clone());
    eprintln!(
        "  latency: service p50/p99/p99.9 {}/{}/{} us; generator lateness p50/p99/p99.9 {}/{}/{} us",
        service.value_at_quantile(0.5),
        service.value_at_quantile(0.99),
        service.value_at_quantile(0.999),
        lateness.value_at_quantile(0.5),
        lateness.value_at_quantile(0.99),
        lateness.value_at_quantile(0.999)
    );
    Rc::try_unwrap(log)
        .map_err(|_| "log still shared".to_string())?
        .close()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Rc::try_unwrap(hist)
        .map_err(|_| "histogram still shared".to_string())?
        .into_inner())
}

/// One round's figures, in the order the phases run.
#[derive(Default)]
struct Round {
    raw_1m: f64,
    raw_16k: f64,
    raw_sync: Option<Histogram<u64>>,
    append_1m: f64,
    append_16k: f64,
    rate_16k: f64,
    interval_1m: f64,
    interval_16k: f64,
    floor: Option<Histogram<u64>>,
    durable: Option<Histogram<u64>>,
}

/// Runs every phase once in `dir`. `offered` is the durable phase's rate; None measures
/// saturation first and offers `rate_fraction` of it.
async fn run_round(
    dir: &Path,
    seconds: f64,
    offered: Option<f64>,
    rate_fraction: f64,
) -> Result<Round, String> {
    let batch_16k = build_simple_batch(TimestampMs(1), 16, RECORD_VALUE_BYTES);
    let batch_1m = build_simple_batch(TimestampMs(1), 1024, RECORD_VALUE_BYTES);
    let every = FlushPolicy::EveryAppend;
    let interval = FlushPolicy::Interval {
        messages: 1_000_000,
        ms: 1000,
    };
    let mut r = Round {
        raw_1m: raw_write_bandwidth(dir, 1 << 20, seconds).await?,
        ..Round::default()
    };
    r.append_1m = append_throughput(dir, "every-1m", &batch_1m, every, seconds)
        .await?
        .0;
    r.interval_1m = append_throughput(dir, "interval-1m", &batch_1m, interval, seconds)
        .await?
        .0;
    r.raw_16k = raw_write_bandwidth(dir, 16 << 10, seconds).await?;
    (r.append_16k, r.rate_16k) =
        append_throughput(dir, "every-16k", &batch_16k, every, seconds).await?;
    r.interval_16k = append_throughput(dir, "interval-16k", &batch_16k, interval, seconds)
        .await?
        .0;
    let offered = offered.unwrap_or((r.rate_16k * rate_fraction).max(1.0));
    r.raw_sync = Some(raw_write_fdatasync_latency(dir, 16 << 10, seconds, false).await?);
    r.floor =
        Some(raw_group_commit_latency(dir, batch_16k.len(), offered, seconds.max(3.0)).await?);
    r.durable = Some(durable_latency(dir, &batch_16k, offered, seconds.max(3.0)).await?);
    Ok(r)
}

/// `--sync-only`: lone 16 KiB write+fdatasync latency, extending and overwriting, interleaved
/// over the rounds; prints medians over rounds of each quantile.
fn sync_only(args: &Args) -> Result<(), String> {
    let (dir, seconds, rounds) = (args.dir.clone(), args.seconds, args.rounds);
    let per_round = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            tern_storage::prime_direct_io(&dir).await.map_err(|e| e.to_string())?;
            let mut all = Vec::new();
            for round in 0..rounds {
                let round_dir = dir.join(format!("round-{round}"));
                std::fs::create_dir_all(&round_dir).map_err(|e| e.to_string())?;
                let extending = raw_write_fdatasync_latency(&round_dir, 16 << 10, seconds, false).await?;
                let overwriting = raw_write_fdatasync_latency(&round_dir, 16 << 10, seconds, true).await?;
                eprintln!(
                    "round {round}: 16 KiB write+fdatasync p50/p99 us: extending {}/{}, overwriting {}/{}",
                    extending.value_at_quantile(0.5),
                    extending.value_at_quantile(0.99),
                    overwriting.value_at_quantile(0.5),
                    overwriting.value_at_quantile(0.99),
                );
                all.push((extending, overwriting));
                std::fs::remove_dir_all(&round_dir).map_err(|e| e.to_string())?;
                // SAFETY: sync(2) has no preconditions.
                unsafe { libc::sync() };
            }
            Ok::<_, String>(all)
        })
        .map_err(|e| format!("cannot start the bench executor: {e}"))?
        .join()
        .map_err(|e| format!("bench executor failed: {e}"))??;
    println!("rounds {}", per_round.len());
    for (name, pick) in [("extending", 0), ("overwriting", 1)] {
        for (label, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            let values = per_round
                .iter()
                .map(|r| if pick == 0 { &r.0 } else { &r.1 })
                .map(|h| h.value_at_quantile(quantile) as f64)
                .collect();
            println!("raw_fdatasync_{name}_{label}_us {:.0}", median(values));
        }
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("creating {}: {e}", args.dir.display()))?;
    if args.sync_only {
        let result = sync_only(&args);
        let _ = std::fs::remove_dir_all(&args.dir);
        return result;
    }
    let dir = args.dir.clone();
    let (seconds, rate_fraction, rounds) = (args.seconds, args.rate_fraction, args.rounds);
    let result = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            tern_storage::prime_direct_io(&dir).await.map_err(|e| e.to_string())?;
            eprintln!("{rounds} rounds of every phase, {seconds} s per phase, {APPENDERS} appenders");
            let mut all: Vec<Round> = Vec::new();
            let mut offered = None;
            for round in 0..rounds {
                let round_dir = dir.join(format!("round-{round}"));
                std::fs::create_dir_all(&round_dir).map_err(|e| e.to_string())?;
                let r = run_round(&round_dir, seconds, offered, rate_fraction).await?;
                let rate = offered.unwrap_or((r.rate_16k * rate_fraction).max(1.0));
                offered = Some(rate);
                let q99 = |h: &Option<Histogram<u64>>| h.as_ref().map_or(0, |h| h.value_at_quantile(0.99));
                eprintln!(
                    "round {round}: raw 1m {:.0} MB/s, append 1m {:.0} MB/s (x{:.3}); raw 16k {:.0}, append 16k {:.0} (x{:.3}); \
                     p99 us: raw write+fdatasync {}, raw group commit {}, durable {} at {rate:.0}/s",
                    r.raw_1m, r.append_1m, r.append_1m / r.raw_1m, r.raw_16k, r.append_16k,
                    r.append_16k / r.raw_16k, q99(&r.raw_sync), q99(&r.floor), q99(&r.durable),
                );
                all.push(r);
                // Deleting gigabytes on ext4 with `discard` issues discards at the next journal
                // commit; let them finish before the next round measures anything.
                std::fs::remove_dir_all(&round_dir).map_err(|e| e.to_string())?;
                // SAFETY: sync(2) has no preconditions.
                unsafe { libc::sync() };
                glommio::timer::sleep(Duration::from_secs(1)).await;
            }
            Ok::<_, String>((all, offered.unwrap_or(0.0)))
        })
        .map_err(|e| format!("cannot start the bench executor: {e}"))?
        .join()
        .map_err(|e| format!("bench executor failed: {e}"))?;
    let _ = std::fs::remove_dir_all(&args.dir);
    let (rounds, offered) = result?;
    // Figures are medians over rounds; ratios are medians of each round's own ratio (the two
    // sides of a ratio ran seconds apart, in the same round).
    let med = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let q = |h: &Option<Histogram<u64>>, q: f64| {
        h.as_ref().map_or(0, |h| h.value_at_quantile(q)) as f64
    };
    let put = |k: &str, v: f64| println!("{k} {v:.1}");
    let ratio = |k: &str, f: &dyn Fn(&Round) -> f64| {
        let values: Vec<f64> = rounds.iter().map(f).collect();
        let (lo, hi) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        println!("{k} {:.3}", median(values));
        println!("{k}_min {lo:.3}");
        println!("{k}_max {hi:.3}");
    };
    println!("rounds {}", rounds.len());
    put("raw_write_mb_s_1m", med(&|r| r.raw_1m));
    put("raw_write_mb_s_16k", med(&|r| r.raw_16k));
    put("raw_fdatasync_p50_us", med(&|r| q(&r.raw_sync, 0.5)));
    put("raw_fdatasync_p99_us", med(&|r| q(&r.raw_sync, 0.99)));
    put("raw_fdatasync_p999_us", med(&|r| q(&r.raw_sync, 0.999)));
    put("append_mb_s_1m", med(&|r| r.append_1m));
    put("append_mb_s_16k", med(&|r| r.append_16k));
    put("append_per_s_16k", med(&|r| r.rate_16k));
    put("append_interval_mb_s_1m", med(&|r| r.interval_1m));
    put("append_interval_mb_s_16k", med(&|r| r.interval_16k));
    put("durable_offered_per_s", offered);
    put("raw_group_commit_p50_us", med(&|r| q(&r.floor, 0.5)));
    put("raw_group_commit_p99_us", med(&|r| q(&r.floor, 0.99)));
    put("raw_group_commit_p999_us", med(&|r| q(&r.floor, 0.999)));
    put("durable_p50_us", med(&|r| q(&r.durable, 0.5)));
    put("durable_p99_us", med(&|r| q(&r.durable, 0.99)));
    put("durable_p999_us", med(&|r| q(&r.durable, 0.999)));
    ratio("ratio_throughput_1m", &|r| r.append_1m / r.raw_1m);
    ratio("ratio_throughput_16k", &|r| r.append_16k / r.raw_16k);
    ratio("ratio_p99", &|r| {
        q(&r.durable, 0.99) / q(&r.raw_sync, 0.99).max(1.0)
    });
    ratio("ratio_p99_vs_raw_group_commit", &|r| {
        q(&r.durable, 0.99) / q(&r.floor, 0.99).max(1.0)
    });
    Ok(())
}

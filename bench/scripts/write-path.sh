#!/usr/bin/env bash
# The write path against the disk's floor, in one sitting on one file system: a lone 16 KiB
# write+fdatasync measured by storage-bench (extending the file, and over written blocks), then
# the latency workload (10k msg/s of 1 KiB, acks=all, 16 partitions, linger 1 ms) against one
# broker, with perf counting on the broker's CPU what each message cost it: io_uring
# submissions, requests punted to io-wq kernel workers, context switches.
#
#   bash bench/scripts/write-path.sh                       # data under ./, 20 s per run, 3 runs
#   DATA_PARENT=/mnt/xfs bash bench/scripts/write-path.sh  # another file system
#   FLUSH=off bash bench/scripts/write-path.sh             # flush.ms=1000 instead of fsync per ack
#   TERN_BIN=/path/to/other/tern bash bench/scripts/write-path.sh   # another broker build
#
# The broker runs pinned to CPU 0 (--cpuset 0, one shard), the harness on CPU 1. perf counts
# everything on CPU 0 over the whole harness run (warm-up, measurement and drain), so the
# per-message figures divide by every message acknowledged in that time; io-wq workers run on
# the CPUs of the thread that submitted to them, the broker's. Needs perf (linux-perf) with the
# io_uring tracepoints, and root or perf_event_paranoid <= -1.
# Results go to tern-bench-results/write-path (OUT to change); a rerun replaces them.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p tern -p tern-bench -p tern-storage --bins
bin=$PWD/target/release
tern=${TERN_BIN:-$bin/tern}
out=${OUT:-tern-bench-results/write-path}
duration=${DURATION_S:-20}
runs=${RUNS:-3}
work=$(mktemp -d -p "${DATA_PARENT:-$PWD}" write-path.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$out"
mkdir -p "$out"
fs=$(stat -f -c %T "$work")
echo "file system of the data directory: $fs ($work)" | tee "$out/summary.txt"

taskset -c 0 "$bin/storage-bench" --sync-only --dir "$work/disk" --seconds 3 --rounds 3 \
    >"$out/disk.txt" 2>"$out/disk.log"
cat "$out/disk.txt" >>"$out/summary.txt"

flush_args=()
if [ "${FLUSH:-on}" = off ]; then
    flush_args=(--topic-default flush.messages=100000000 --topic-default flush.ms=1000)
fi
"$tern" serve --cores 1 --cpuset 0 --data-dir "$work/data" --admin-listen off \
    --native-listen off --listen 127.0.0.1:29692 "${flush_args[@]}" >"$work/broker.log" 2>&1 &
broker=$!
pids+=("$broker")
for _ in $(seq 1 100); do
    "$bin/tern" topic list --bootstrap 127.0.0.1:29692 >/dev/null 2>&1 && break
    sleep 0.1
done
# A fresh broker's first minute of writes is not its steady state: one unrecorded run first.
taskset -c 1 "$bin/tern-bench" run -w latency-10k-1kib --bootstrap 127.0.0.1:29692 \
    --consumer-mode assign --duration-s "${WARMUP_RUN_S:-20}" --out "$work/warmup" >/dev/null

events=io_uring:io_uring_submit_req,io_uring:io_uring_queue_async_work,context-switches
for run in $(seq 1 "$runs"); do
    dir="$out/run-$run"
    mkdir -p "$dir"
    perf stat -C 0 -x, -e "$events" -o "$dir/perf.csv" -- \
        taskset -c 1 "$bin/tern-bench" run -w latency-10k-1kib --bootstrap 127.0.0.1:29692 \
        --broker-pid "$broker" --consumer-mode assign --duration-s "$duration" --out "$dir" \
        --label "run $run" >"$dir/bench.txt"
    python3 - "$dir" <<'EOF' | tee -a "$out/summary.txt"
import csv, glob, json, sys
d = sys.argv[1]
result = json.load(open(glob.glob(f"{d}/*.json")[0]))
acked = result["counts"]["acked_msgs"] + result["warmup_counts"]["acked_msgs"]
counters = {}
for row in csv.reader(open(f"{d}/perf.csv")):
    if len(row) > 2 and row[0].strip().isdigit():
        counters[row[2]] = int(row[0])
lat = result["produce_ack_latency"] or {}
ms = lambda q: lat.get(f"latency_us_{q}", 0) / 1000
per = lambda k: counters.get(k, 0) / max(acked, 1)
cores = result["broker"].get("cpu_cores_used") or 0
print(f"{d.rsplit('/', 1)[-1]}: produce->ack p50/p99/p99.9 {ms('p50'):.2f}/{ms('p99'):.2f}/{ms('p999'):.2f} ms, "
      f"broker {cores:.2f} cores; per message: {per('io_uring:io_uring_submit_req'):.2f} SQEs, "
      f"{per('io_uring:io_uring_queue_async_work'):.3f} io-wq punts, "
      f"{per('context-switches'):.2f} context switches ({acked} acked)")
EOF
done

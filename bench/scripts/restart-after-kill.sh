#!/usr/bin/env bash
# Time from a kill -9 to serving again, with GB of data over 1,000 partitions (#12's target:
# 10 GB over 1,000 partitions serving in <= 5 s).
#
#   bash bench/scripts/restart-after-kill.sh      # GB=10 PARTITIONS=1000 to change
#
# One broker `--cores 1` pinned to CPU 0; tern-bench fills a topic at its highest rate
# (acks=1, 1 KiB) until about GB gigabytes are in the data directory; the broker is killed
# with SIGKILL mid-write and started again; the figure is the time from its start until it
# answers a Metadata request naming every partition (librdkafka's view of "serving"), and
# until a consumer has read the last partition's newest record back.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p tern -p tern-bench
bin=target/release
gb=${GB:-10}
partitions=${PARTITIONS:-1000}
work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
start() {
    taskset -c 0 "$bin/tern" serve --cores 1 --listen 127.0.0.1:29680 --native-listen off --admin-listen 127.0.0.1:29681 \
        --data-dir "$work/data" >>"$work/broker.log" 2>&1 &
    pid=$!
}
start
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/29680) 2>/dev/null && break; sleep 0.1; done
"$bin/tern" topic create fill --partitions "$partitions" --bootstrap 127.0.0.1:29680
# Fill in the background; kill the broker once the data directory holds the target.
"$bin/tern-bench" run --bootstrap 127.0.0.1:29680 --broker-pid "$pid" --partitions "$partitions" \
    --rate max --duration-s 600 --warmup-s 0 --consumer-groups 0 --message-size-bytes 1024 \
    --acks 1 --out "$work/bench" >"$work/bench.log" 2>&1 &
bench=$!
target=$(( gb * 1024 * 1024 * 1024 ))
while [ "$(du -s --block-size=1 "$work/data" | cut -f1)" -lt "$target" ]; do sleep 1; done
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
kill "$bench" 2>/dev/null || true; wait "$bench" 2>/dev/null || true
echo "killed with $(du -sh "$work/data" | cut -f1) in $partitions partitions"
t0=$(date +%s%N)
start
until "$bin/tern" topic describe fill --bootstrap 127.0.0.1:29680 >"$work/describe.txt" 2>/dev/null; do
    sleep 0.05
done
t1=$(date +%s%N)
echo "serving (topic describe with every partition's offsets answered): $(( (t1 - t0) / 1000000 )) ms after start"
grep -c "partition " "$work/describe.txt" | sed 's/^/partitions described: /'
# Recovery warns only about torn tails (zeros written ahead are cut silently) and about index
# checkpoints it could not use (a segment then scanned from byte 0).
echo "torn tails cut: $(grep -c 'truncating segment at the last valid batch' "$work/broker.log" || true)" \
    "(found from an index checkpoint: $(grep -c 'scanned from its checkpointed index' "$work/broker.log" || true));" \
    "index checkpoints not usable: $(grep -cE 'damaged index checkpoint|index checkpoint out of step|no valid batch at the checkpointed' "$work/broker.log" || true)"
# Producer and transaction state comes back from each partition's replay point when it is
# usable; the others replay their log (transactions: from the start).
sed 's/\x1b\[[0-9;]*m//g' "$work/broker.log" | grep -o "opened [0-9]* partition(s), [0-9]* from their replay point" | tail -1 || true
grep -E "tern is serving|starting|shutting down" "$work/broker.log" | tail -3 | cut -c1-160 || true

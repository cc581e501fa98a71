#!/usr/bin/env bash
# What 10,000 partitions cost one broker, and what they do to its produce throughput, in one
# sitting (#12's targets: 10,000 partitions x ~10 records within 2 GB of disk and 1 GB of RSS;
# produce to all of them within 20 % of the msg/s of 16 partitions).
#
#   bash bench/scripts/many-partitions.sh      # PARTITIONS=10000 DURATION_S=20 to change
#
# One broker, `--cores 1`, pinned to CPU 0 (tern-bench pins itself to the others). Steps:
# 1. a topic of PARTITIONS partitions gets about ten 1 KiB records each (tern-bench at 100k
#    msg/s for PARTITIONS/10000 s, spread over every partition), then the data directory's
#    allocated bytes and the broker's RSS are read;
# 2. tern-bench at the highest rate it can offer (acks=all, 1 KiB) to a 16-partition topic,
#    then to a PARTITIONS-partition topic, and `tern-bench compare`.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p tern -p tern-bench
bin=target/release
partitions=${PARTITIONS:-10000}
duration=${DURATION_S:-20}
out=${OUT:-tern-bench-results/many-partitions}
work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$out"
taskset -c 0 "$bin/tern" serve --cores 1 --listen 127.0.0.1:29480 --native-listen off --admin-listen 127.0.0.1:29481 \
    --data-dir "$work/data" >"$work/broker.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/29480) 2>/dev/null && break
    sleep 0.1
done
bench() { "$bin/tern-bench" run --bootstrap 127.0.0.1:29480 --broker-pid "$pid" "$@"; }

allocated() { du -s --block-size=1 "$work/data" | cut -f1; }
rss() { awk '/VmRSS/ { printf "%d", $2 * 1024 }' "/proc/$pid/status"; }
disk0=$(allocated); rss0=$(rss)
seconds=$(( (partitions + 9999) / 10000 ))
bench --partitions "$partitions" --rate "100000 msg/s" --duration-s "$seconds" --warmup-s 0 \
    --consumer-groups 0 --message-size-bytes 1024 --out "$out/fill" --label "fill"
disk1=$(allocated); rss1=$(rss)
echo "fill: $partitions partitions, ~$(( 100000 * seconds / partitions )) x 1 KiB records each"
echo "disk allocated: $(( (disk1 - disk0) / 1048576 )) MiB ($(( (disk1 - disk0) / partitions )) bytes per partition)"
echo "broker RSS: $(( rss1 / 1048576 )) MiB ($(( rss0 / 1048576 )) MiB before the topic)"

bench --partitions 16 --rate max --duration-s "$duration" --consumer-groups 0 \
    --message-size-bytes 1024 --out "$out/p16" --label "16 partitions"
bench --partitions "$partitions" --rate max --duration-s "$duration" --consumer-groups 0 \
    --message-size-bytes 1024 --out "$out/many" --label "$partitions partitions"
echo "broker RSS after both runs: $(( $(rss) / 1048576 )) MiB"
"$bin/tern-bench" compare --out "$out" "$out"/p16/*.json "$out"/many/*.json

#!/usr/bin/env bash
# One sitting, side by side: tern-bench's latency workload (10k msg/s of 1 KiB, acks=all,
# 16 partitions, one consumer group) against one broker with replication factor 1, then
# against three local brokers with replication factor 3, then `tern-bench compare`.
#
#   bash bench/scripts/cluster-vs-single.sh            # 30 s per run (DURATION_S to change)
#
# Every broker runs `--cores 1` and nothing is pinned (three brokers and the harness share the
# machine's cores), so the single broker is run unpinned too. The CPU figure for the cluster is
# broker 0's alone (about a third of the partitions lead there). Results go to
# tern-bench-results/cluster-vs-single (OUT to change).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p tern -p tern-bench
bin=target/release
out=${OUT:-tern-bench-results/cluster-vs-single}
duration=${DURATION_S:-30}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$out"

"$bin/tern-bench" run --spawn --no-pin --duration-s "$duration" --out "$out/single" \
    --label "1 broker, RF 1"

voters="0@127.0.0.1:29190,1@127.0.0.1:29191,2@127.0.0.1:29192"
for id in 0 1 2; do
    "$bin/tern" serve --node-id "$id" --voters "$voters" --cores 1 \
        --listen "127.0.0.1:2909$id" --native-listen off --admin-listen "127.0.0.1:2929$id" \
        --data-dir "$work/broker-$id" >"$work/broker-$id.log" 2>&1 &
    pids+=("$!")
done
# Until the quorum has all three brokers registered and unfenced.
for _ in $(seq 1 120); do
    if "$bin/tern" cluster status --admin 127.0.0.1:29290 2>/dev/null \
        | grep -cE "  false$" | grep -q "^3$"; then
        break
    fi
    sleep 0.5
done
"$bin/tern" cluster status --admin 127.0.0.1:29290
"$bin/tern-bench" run --bootstrap 127.0.0.1:29090,127.0.0.1:29091,127.0.0.1:29092 \
    --broker-pid "${pids[0]}" \
    --replication-factor 3 --duration-s "$duration" --out "$out/cluster" \
    --label "3 brokers, RF 3"

"$bin/tern-bench" compare --out "$out" "$out"/single/*.json "$out"/cluster/*.json

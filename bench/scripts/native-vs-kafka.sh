#!/usr/bin/env bash
# One sitting, one broker, side by side: the same workload through librdkafka (the Kafka
# driver, to the Kafka listener) and through tern::client (the native driver, to the native
# listener), then `tern-bench compare`. The latency workload (10k msg/s of 1 KiB, acks=all,
# 16 partitions), producing alone at the highest rate (produce-max-1kib: 4 producers, no
# consumers) and producing with consumers at the highest rate (throughput-max-1kib), acks=1;
# compression none for all (the figures are of the clients, not of a codec).
#
#   bash bench/scripts/native-vs-kafka.sh            # 20 s per run (DURATION_S to change)
#   WORKLOADS=latency-10k-1kib bash bench/scripts/native-vs-kafka.sh
#   DRIVERS="native kafka" bash bench/scripts/native-vs-kafka.sh   # the other order
#
# The broker is pinned to CPU 0 (--cpuset 0, one shard), the harness to CPU 1: one client
# core. Each result gives the harness's CPU over the measurement window ("harness cpu", and
# "acked/s per h.core" in the comparison): msg/s per client core. The harness's CPU over its
# whole life (warm-up, drain and start-up included) is printed next to it as a cross-check.
# Results go to tern-bench-results/native-vs-kafka (OUT to change); a rerun replaces them.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p tern -p tern-bench
bin=$PWD/target/release
out=${OUT:-tern-bench-results/native-vs-kafka}
duration=${DURATION_S:-20}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$out"

"$bin/tern" serve --cores 1 --cpuset 0 --data-dir "$work/data" --admin-listen off \
    --listen 127.0.0.1:29592 --native-listen 127.0.0.1:29594 >"$work/broker.log" 2>&1 &
broker=$!
pids+=("$broker")
for _ in $(seq 1 100); do
    "$bin/tern" topic list --bootstrap 127.0.0.1:29592 >/dev/null 2>&1 && break
    sleep 0.1
done

# A broker's first minute of writes is slower than its steady state (new segment files, the
# shard's preallocation growing), and whichever driver ran first paid for it: one unrecorded
# run of the latency workload first (WARMUP_RUN_S=0 to skip).
warmup_run=${WARMUP_RUN_S:-20}
if [ "$warmup_run" -gt 0 ]; then
    taskset -c 1 "$bin/tern-bench" run -w latency-10k-1kib --driver kafka \
        --bootstrap 127.0.0.1:29592 --consumer-mode assign --compression none \
        --duration-s "$warmup_run" --out "$work/warmup" >/dev/null
fi

for w in ${WORKLOADS:-latency-10k-1kib produce-max-1kib throughput-max-1kib}; do
    for driver in ${DRIVERS:-kafka native}; do
        case $driver in
            kafka) bootstrap=127.0.0.1:29592; label="librdkafka (Kafka protocol)" ;;
            native) bootstrap=127.0.0.1:29594; label="tern::client (native protocol)" ;;
        esac
        dir="$out/$w/$driver"
        rm -rf "$dir"
        mkdir -p "$dir"
        /usr/bin/time -f "%U %S %e" -o "$dir/harness-time.txt" \
            taskset -c 1 "$bin/tern-bench" run -w "$w" --driver "$driver" \
            --bootstrap "$bootstrap" --broker-pid "$broker" --consumer-mode assign \
            --compression none --duration-s "$duration" --out "$dir" --label "$label"
        read -r user sys wall <"$dir/harness-time.txt"
        cores=$(awk -v u="$user" -v s="$sys" -v w="$wall" 'BEGIN { printf "%.2f", (u + s) / w }')
        echo "$w $driver: harness CPU $cores cores" \
            "(user $user s, sys $sys s, wall $wall s)" | tee "$dir/harness-cpu.txt"
    done
    "$bin/tern-bench" compare --out "$out/$w" "$out/$w"/*/*.json
done

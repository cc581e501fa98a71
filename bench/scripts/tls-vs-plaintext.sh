#!/usr/bin/env bash
# One sitting, one broker, side by side: the same workload over the broker's PLAINTEXT
# listener, its SSL listener, and its SASL_SSL listener (SCRAM-SHA-512), then
# `tern-bench compare`. Twice: the latency workload (10k msg/s of 1 KiB, acks=all, 16
# partitions, a consumer group), then the throughput-max-1kib workload.
#
#   bash bench/scripts/tls-vs-plaintext.sh          # 20 s per run (DURATION_S to change)
#   WORKLOADS=latency-10k-1kib bash bench/scripts/tls-vs-plaintext.sh   # one workload only
#
# The broker is pinned to CPU 0 (--cpuset 0, one shard), the harness to the other CPUs.
# Certificates are made for the run with openssl (EC P-256, TLS 1.3 negotiated). Results go to
# tern-bench-results/tls-vs-plaintext (OUT to change).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p tern -p tern-bench
bin=$PWD/target/release
out=${OUT:-tern-bench-results/tls-vs-plaintext}
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

# A CA and the broker's certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=broker" \
    -keyout "$work/broker.key" -out "$work/broker.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$work/ext"
openssl x509 -req -in "$work/broker.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/ext" -out "$work/broker.pem" 2>/dev/null

"$bin/tern" serve --cores 1 --cpuset 0 --data-dir "$work/data" --native-listen off --admin-listen off \
    --listeners PLAINTEXT://127.0.0.1:29392,SSL://127.0.0.1:29393,SASL_SSL://127.0.0.1:29394 \
    --ssl-certificate "$work/broker.pem" --ssl-key "$work/broker.key" \
    >"$work/broker.log" 2>&1 &
broker=$!
pids+=("$broker")
for _ in $(seq 1 100); do
    "$bin/tern" topic list --bootstrap 127.0.0.1:29392 >/dev/null 2>&1 && break
    sleep 0.1
done
"$bin/tern" user create bench --password bench-secret --mechanisms SCRAM-SHA-512 \
    --bootstrap 127.0.0.1:29392

harness() { taskset -c "1-$(($(nproc) - 1))" "$bin/tern-bench" "$@"; }
tls=(-X security.protocol=ssl -X "ssl.ca.location=$work/ca.pem")
sasl_ssl=(-X security.protocol=sasl_ssl -X "ssl.ca.location=$work/ca.pem"
    -X sasl.mechanism=SCRAM-SHA-512 -X sasl.username=bench -X sasl.password=bench-secret)

for w in ${WORKLOADS:-latency-10k-1kib throughput-max-1kib}; do
    workload=$w
    harness run -w "$w" --bootstrap 127.0.0.1:29392 --broker-pid "$broker" \
        --duration-s "$duration" --out "$out/$workload/plaintext" --label "PLAINTEXT"
    harness run -w "$w" --bootstrap 127.0.0.1:29393 --broker-pid "$broker" \
        "${tls[@]}" --duration-s "$duration" --out "$out/$workload/ssl" --label "SSL"
    harness run -w "$w" --bootstrap 127.0.0.1:29394 --broker-pid "$broker" \
        "${sasl_ssl[@]}" --duration-s "$duration" --out "$out/$workload/sasl-ssl" \
        --label "SASL_SSL (SCRAM-SHA-512)"
    "$bin/tern-bench" compare --out "$out/$workload" "$out/$workload"/*/*.json
done

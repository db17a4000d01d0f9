#!/usr/bin/env bash
# Server user-space instructions per round trip, counted by callgrind: a
# stable yardstick for A/B comparisons on a noisy machine (CPU time per
# round trip drifts by ±15% here; instruction counts by < 0.1%).
#
#   bench/instructions.sh [IOCORE_BINARY] [PORT]
#
# Runs `IOCORE_BINARY serve --engine epoll --threads 1` under callgrind
# (valgrind does not follow io_uring), drives 20 connections × 1000
# ping-pongs of 100 B with this tree's release client, and prints the
# server's total instructions and instructions per round trip.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/iocore}
port=${2:-7870}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --quiet
out=$(mktemp)
valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" serve --engine epoll --threads 1 \
    --addr "127.0.0.1:$port" --log-level warn 2>/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do
    (: >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.2
done
rts=$(target/release/iocore client --addr "127.0.0.1:$port" --connections 20 --pipeline 1 \
    --size 100 --count 1000 --json 2>/dev/null \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["errors"]==0; print(d["round_trips"])')
kill -INT "$server"
wait "$server" 2>/dev/null || true
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "round trips: $rts  instructions: $total  per round trip: $((total / rts))"

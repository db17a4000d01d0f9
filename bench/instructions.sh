#!/usr/bin/env bash
# Server user-space instructions per round trip, counted by callgrind: a
# stable yardstick for A/B comparisons on a noisy machine (CPU time per
# round trip drifts by ±15% here; instruction counts by < 0.1%).
#
#   bench/instructions.sh [SERVER] [PORT]
#
# SERVER: `iocore` (this tree's release build, epoll engine, one worker;
# the default), `tokio` or `epoll-floor` (the peer servers of `iocore
# bench`), or the path of another iocore binary to compare builds.
# valgrind does not follow io_uring, so the uring engine, monoio and compio
# are compared by `iocore bench` only.
#
# Runs the server under callgrind, drives 20 connections × 1000 ping-pongs
# of 100 B with this tree's release client, and prints the server's total
# instructions (all threads, user space) and instructions per round trip;
# then runs it again with 2000 ping-pongs per connection and prints the
# marginal figure: the difference per added round trip, which leaves out
# start-up (the dynamic loader, argument parsing), accepts and closes.
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-iocore}
port=${2:-7870}
addr="127.0.0.1:$port"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --quiet
case "$server" in
    iocore) cmd=(target/release/iocore serve --engine epoll --threads 1 --addr "$addr" --log-level warn) ;;
    tokio) cargo build --release --quiet -p iocore-peers; cmd=(target/release/peer-tokio "$addr") ;;
    epoll-floor) cargo build --release --quiet -p iocore-peers; cmd=(target/release/peer-epoll "$addr") ;;
    *) cmd=("$server" serve --engine epoll --threads 1 --addr "$addr" --log-level warn) ;;
esac
# One run: the server under callgrind, 20 connections × $1 ping-pongs;
# prints "round-trips instructions".
measure() {
    local out pid rts total
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do
        (: >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.2
    done
    rts=$(target/release/iocore client --addr "$addr" --connections 20 --pipeline 1 \
        --size 100 --count "$1" --json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["errors"]==0; print(d["round_trips"])')
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    rm -f "$out"
    echo "$rts $total"
}
read -r rts total < <(measure 1000)
echo "$server: round trips: $rts  instructions: $total  per round trip: $((total / rts))"
# The same with twice the messages: the difference is the work per
# message alone, without start-up, accepts and closes.
read -r rts2 total2 < <(measure 2000)
echo "$server: marginal (2,000 − 1,000 ping-pongs per connection): per round trip: $(((total2 - total) / (rts2 - rts)))"

#!/usr/bin/env bash
# The highest bot count each arena server holds at 20 Hz with the p99 of
# its tick lateness at most 5 ms: runs `iocore client --scenario arena`
# (rooms of 20, 30 inputs/s per bot) at rising bot counts against each
# server, pinned to CPU 0 (client on CPU 1), and prints one line per run.
#
#   bench/arena_sweep.sh [BOTS...]        (default: 500 1000 1500 2000 3000 4000)
#
# Servers: iocore serve --app arena (epoll and uring, one worker) and the
# tokio peer (bench/peers, peer-tokio-arena). A run "holds" when every bot
# joined, no error, no missed tick and the tick lateness p99 <= 5000 us.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p iocore-cli -p iocore-peers
bots=("$@")
[ ${#bots[@]} -gt 0 ] || bots=(500 1000 1500 2000 3000 4000)
port=7930
addr="127.0.0.1:$port"
start() {
    case "$1" in
        tokio) taskset -c 0 target/release/peer-tokio-arena "$addr" & ;;
        *) taskset -c 0 target/release/iocore serve --app arena --threads 1 --engine "$1" \
               --addr "$addr" --max-sessions 30000 --log-level warn & ;;
    esac
    server=$!
    for _ in $(seq 100); do (: >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.1; done
    echo "server $1 did not listen" >&2; exit 1
}
printf "%-8s %6s %10s %10s %8s %12s %6s\n" server bots p99_us max_us missed cpu_us/ptick holds
for n in "${bots[@]}"; do
    for s in iocore-epoll iocore-uring tokio; do
        start "${s#iocore-}"
        json=$(taskset -c 1 target/release/iocore client --scenario arena --addr "$addr" \
            --bots "$n" --rooms $((n / 20)) --duration 8s --warmup 2s --engine epoll \
            --log-level error --json --server-pid "$server" || true)
        kill "$server"; wait "$server" 2>/dev/null || true
        python3 - "$s" "$n" "$json" <<'PY'
import json, sys
s, n, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    v = json.loads(text)
except ValueError:
    print(f"{s:<8} {n:>6} {'(no report)':>10}"); sys.exit()
p99, mx = v["tick_lateness"]["p99_us"], v["tick_lateness"]["max_us"]
cpu = (v.get("server") or {}).get("cpu_us_per_round_trip", 0.0)
holds = v["errors"] == 0 and v["joined"] == n and v["ticks_missed"] == 0 and p99 <= 5000
print(f"{s:<8} {n:>6} {p99:>10} {mx:>10} {v['ticks_missed']:>8} {cpu:>12.2f} {'yes' if holds else 'no':>6}")
PY
        sleep 0.5
    done
done

#!/usr/bin/env bash
# Server CPU time (perf stat task-clock) per round trip or per connection,
# for A/B runs of one engine feature: one worker on CPU 0, this tree's
# release client on CPU 1.
#
#   bench/task_clock.sh echo  ENGINE CONNECTIONS COUNT [SIZE] [VAR=VALUE...]
#   bench/task_clock.sh churn ENGINE SECONDS [VAR=VALUE...]
#
# echo: CONNECTIONS × COUNT ping-pongs of SIZE bytes (default 100);
# churn: 50 lanes of connect, one 100 B echo, reset, for SECONDS.
# VAR=VALUE go into the server's environment, e.g.
# IOCORE_URING_OFF=fixed-files. Prints one line: label, count, µs each.
# Run the variants interleaved: this machine drifts by ±15% run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=$1 engine=$2
shift 2
case "$mode" in
    echo) conns=$1 count=$2; shift 2
          size=100
          if [[ $# -gt 0 && $1 != *=* ]]; then size=$1; shift; fi ;;
    churn) secs=$1; shift ;;
    *) echo "usage: $0 echo|churn ENGINE ..." >&2; exit 2 ;;
esac
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
cargo build --release --quiet
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
out=$(mktemp)
env "$@" taskset -c 0 perf stat -x, -e task-clock -o "$out" \
    target/release/iocore serve --engine "$engine" --threads 1 --addr "$addr" --log-level warn &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do
    (: >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
case "$mode" in
    echo) n=$(taskset -c 1 target/release/iocore client --addr "$addr" --connections "$conns" \
              --pipeline 1 --size "$size" --count "$count" --json 2>/dev/null \
              | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["errors"]==0; print(d["round_trips"])') ;;
    churn) n=$(taskset -c 1 target/release/iocore client --addr "$addr" --scenario churn \
              --connections 50 --duration "${secs}s" --json 2>/dev/null \
              | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["completed"])') ;;
esac
pkill -INT -P "$pid" || true
wait "$pid" || true
python3 - "$out" "$n" "$mode $engine $* " <<'PY'
import sys
path, n, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ms = 0.0
for line in open(path):
    f = line.strip().split(',')
    if len(f) > 2 and f[2].startswith('task-clock') and f[0][:1].isdigit():
        ms = float(f[0])
unit = "round trip" if label.startswith("echo") else "connection"
print(f"{label.strip():50s} {n:>8} {unit}s  {ms * 1000 / max(n, 1):7.2f} us CPU per {unit}")
PY

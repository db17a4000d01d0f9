#!/usr/bin/env bash
# System calls per round trip of each echo server, counted by `strace -c -f`:
# a change that adds a kernel crossing per message shows at once.
#
#   bench/syscalls.sh [SERVER...]        (default: all four below)
#
# SERVER: iocore-epoll, iocore-uring (this tree's release build, one
# worker), tokio, epoll-floor (the peer servers of `iocore bench`).
# CONNECTIONS (100) × COUNT (200) ping-pongs of 100 B from this tree's
# release client, server pinned to CPU 0 and client to CPU 1. Start-up,
# accepts and closes are included (a few hundred calls, under 1% here).
# Under strace every call is slower, so this counts crossings, not time.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${CONNECTIONS:-100}
count=${COUNT:-200}
command -v strace >/dev/null || { echo "needs strace (apt-get install strace)" >&2; exit 1; }
cargo build --release --quiet
cargo build --release --quiet -p iocore-peers
servers=("$@")
[ ${#servers[@]} -gt 0 ] || servers=(iocore-epoll iocore-uring tokio epoll-floor)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

echo "| server | round trips | system calls | per round trip | top calls (count) |"
echo "|---|---|---|---|---|"
for server in "${servers[@]}"; do
    port=$(free_port)
    addr="127.0.0.1:$port"
    case "$server" in
        iocore-epoll | iocore-uring)
            cmd=(target/release/iocore serve --engine "${server#iocore-}" --threads 1 --addr "$addr" --log-level warn) ;;
        tokio) cmd=(target/release/peer-tokio "$addr") ;;
        epoll-floor) cmd=(target/release/peer-epoll "$addr") ;;
        *) echo "unknown server '$server'" >&2; exit 1 ;;
    esac
    out=$(mktemp)
    taskset -c 0 strace -f -c -o "$out" "${cmd[@]}" &
    tracer=$!
    for _ in $(seq 100); do
        (: >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    rts=$(taskset -c 1 target/release/iocore client --addr "$addr" --connections "$connections" \
        --pipeline 1 --size 100 --count "$count" --json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["errors"]==0; print(d["round_trips"])')
    # Stop the traced server (strace's child); strace then writes its table.
    pkill -TERM -P "$tracer" || true
    wait "$tracer" 2>/dev/null || true
    python3 - "$out" "$server" "$rts" <<'EOF'
import sys
path, server, rts = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = {}
for line in open(path):
    f = line.split()
    # % time, seconds, usecs/call, calls, [errors,] syscall
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        calls[f[-1]] = int(f[3])
total = sum(calls.values())
top = sorted(calls.items(), key=lambda kv: -kv[1])[:4]
tops = ", ".join(f"{name} {n}" for name, n in top)
print(f"| {server} | {rts:,} | {total:,} | {total / rts:.3f} | {tops} |")
EOF
    rm -f "$out"
done

#!/usr/bin/env bash
# A chat cluster on this machine's loopback: Redis, three `iocore serve
# --app chat` instances behind HAProxy (PROXY protocol v2), each with its
# metrics endpoint. Ctrl-C stops everything it started.
#
#   examples/cluster/run.sh
#
# Then chat through HAProxy from two terminals:
#
#   target/release/iocore chat --addr 127.0.0.1:17000 --room lobby
#
# and watch an instance: `target/release/iocore top --metrics 19461`.
# Needs redis-server and haproxy (Debian: apt-get install redis-server
# haproxy). The ports can be moved with the variables below.
set -euo pipefail
cd "$(dirname "$0")/../.."

export FRONT_PORT=${FRONT_PORT:-17000} STATS_PORT=${STATS_PORT:-17001}
export CHAT1_PORT=${CHAT1_PORT:-17011} CHAT2_PORT=${CHAT2_PORT:-17012} CHAT3_PORT=${CHAT3_PORT:-17013}
REDIS_PORT=${REDIS_PORT:-16379}
METRICS_BASE=${METRICS_BASE:-19460}

for program in redis-server haproxy; do
    command -v "$program" >/dev/null || { echo "needs $program (apt-get install redis-server haproxy)" >&2; exit 1; }
done
cargo build --release --quiet
bin=target/release/iocore

pids=()
logs=$(mktemp -d)
stop() {
    trap - INT TERM EXIT
    echo "stopping ${#pids[@]} processes"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$logs"
}
trap stop INT TERM EXIT

# wait_for WHAT PID CHECK...: runs CHECK every 0.1 s until it succeeds;
# fails (naming WHAT) if process PID ends first or 30 s pass.
wait_for() {
    local what=$1 pid=$2
    shift 2
    for _ in $(seq 300); do
        "$@" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { echo "FAILED: $what ended while starting" >&2; exit 1; }
        sleep 0.1
    done
    echo "FAILED: $what did not come up within 30 s" >&2
    exit 1
}
# redis_pong: Redis answers PING (bash's /dev/tcp, no client needed).
redis_pong() {
    exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || return 1
    printf 'PING\r\n' >&3
    local answer
    read -r -t 1 answer <&3
    exec 3>&-
    [[ $answer == +PONG* ]]
}
# instances_up: HAProxy's statistics say all three instances are UP.
instances_up() {
    exec 3<>"/dev/tcp/127.0.0.1/$STATS_PORT" || return 1
    printf 'GET /stats;csv HTTP/1.0\r\n\r\n' >&3
    local up
    up=$(grep -c '^instances,chat[123],.*,UP,' <&3)
    exec 3>&-
    [ "$up" -eq 3 ]
}

# Redis first, so that the instances find it at once.
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning &
pids+=($!)
wait_for "redis-server" "${pids[-1]}" redis_pong

for i in 1 2 3; do
    port_var=CHAT${i}_PORT
    "$bin" serve --app chat --addr "127.0.0.1:${!port_var}" --threads 1 \
        --proxy-protocol --redis "redis://127.0.0.1:$REDIS_PORT" \
        --metrics "127.0.0.1:$((METRICS_BASE + i))" \
        > >(tee "$logs/chat$i.log" | sed -u "s/^/[chat$i] /") 2>&1 &
    pids+=($!)
    wait_for "instance chat$i" "${pids[-1]}" grep -q "ready" "$logs/chat$i.log"
done

haproxy -db -f examples/cluster/haproxy.cfg &
pids+=($!)
wait_for "haproxy (its checks of the instances)" "${pids[-1]}" instances_up

cat <<INFO
cluster up:
  clients      -> HAProxy 127.0.0.1:$FRONT_PORT (stats: http://127.0.0.1:$STATS_PORT/stats)
  instances    -> 127.0.0.1:$CHAT1_PORT, :$CHAT2_PORT, :$CHAT3_PORT (PROXY v2 from HAProxy only)
  metrics      -> http://127.0.0.1:$((METRICS_BASE + 1))/metrics .. $((METRICS_BASE + 3))
  redis        -> 127.0.0.1:$REDIS_PORT
Ctrl-C stops it all.
INFO
wait

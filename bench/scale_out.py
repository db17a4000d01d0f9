#!/usr/bin/env python3
"""Scale-out point: one chat room spread over 1 and 3 `iocore serve --app
chat` instances. Runs, in interleaved rounds, three setups:

  1 instance          no Redis: the single-process baseline
  1 instance + Redis  the same with the Redis bridge on (its cost alone)
  3 instances + Redis members spread over three instances, rooms relayed

Each instance has one worker thread. The servers and Redis are pinned to
CPU 0, the load client (`iocore client --scenario chat`, members connected
to the instances in turn) to CPU 1. Reported per setup: deliveries per
second, delivery latency p50/p99 (from each message's scheduled send
time), and the CPU the server side (instances + Redis) spent per delivery,
from /proc. Medians over the rounds.

Usage: bench/scale_out.py [--members 300] [--rate 2] [--duration 10]
                          [--rounds 3] [--engine uring]
Needs a release build (cargo build --release) and redis-server.
Traffic: loopback only.
"""
import argparse, json, os, socket, statistics, subprocess, sys, time

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "iocore")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, what):
    deadline = time.time() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            if time.time() > deadline:
                sys.exit(f"{what} did not come up on port {port}")
            time.sleep(0.05)


def cpu_secs(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICK


def run(setup, args):
    procs = []
    try:
        redis_url = None
        if setup["redis"]:
            rport = free_port()
            procs.append(subprocess.Popen(
                ["taskset", "-c", "0", "redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL))
            wait_port(rport, "redis-server")
            redis_url = f"redis://127.0.0.1:{rport}"
        addrs = []
        for _ in range(setup["instances"]):
            port = free_port()
            cmd = ["taskset", "-c", "0", BIN, "serve", "--app", "chat", "--engine", args.engine,
                   "--threads", "1", "--addr", f"127.0.0.1:{port}", "--log-level", "warn",
                   "--max-sessions", str(args.members + 100)]
            if redis_url:
                cmd += ["--redis", redis_url]
            procs.append(subprocess.Popen(cmd))
            wait_port(port, "iocore serve")
            addrs.append(f"127.0.0.1:{port}")
        time.sleep(0.5)
        pids = [p.pid for p in procs]
        before = cpu_secs(pids)
        out = subprocess.run(
            ["taskset", "-c", "1", BIN, "client", "--scenario", "chat", "--addr", ",".join(addrs),
             "--connections", str(args.members), "--rooms", "1", "--rate", str(args.rate),
             "--size", "64", "--duration", f"{args.duration}s", "--warmup", "2s", "--json",
             "--log-level", "warn"],
            capture_output=True, text=True, timeout=args.duration + 120)
        used = cpu_secs(pids) - before
        if out.returncode not in (0, 1):
            sys.exit(f"client failed: {out.stderr}")
        r = json.loads(out.stdout)
        return {
            "ok": r["lost"] == 0 and r["misdelivered"] == 0 and r["errors"] == 0,
            "dps": r["deliveries_per_sec"],
            "p50_ms": r["latency"]["p50_us"] / 1000,
            "p99_ms": r["latency"]["p99_us"] / 1000,
            "cpu_us": used * 1e6 / max(r["deliveries"], 1),
            "lost": r["lost"],
        }
    finally:
        # The instances first, then Redis (else they warn of its loss).
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=300)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engine", default="uring")
    args = ap.parse_args()
    setups = [
        {"name": "1 instance", "instances": 1, "redis": False},
        {"name": "1 instance + Redis", "instances": 1, "redis": True},
        {"name": "3 instances + Redis", "instances": 3, "redis": True},
    ]
    results = {s["name"]: [] for s in setups}
    for rnd in range(args.rounds):
        order = setups[rnd % len(setups):] + setups[:rnd % len(setups)]
        for s in order:
            r = run(s, args)
            results[s["name"]].append(r)
            print(f"round {rnd + 1} {s['name']:<20} {r['dps']:>9.0f} dlv/s  p99 {r['p99_ms']:6.2f} ms  "
                  f"{r['cpu_us']:5.2f} us/dlv  lost {r['lost']}", file=sys.stderr)
    base = statistics.median(r["cpu_us"] for r in results["1 instance"])
    print(f"\nOne room of {args.members} members, {args.rate:g} messages/s each "
          f"({args.members * args.rate:g} messages/s, {args.members * args.members * args.rate:,.0f} deliveries/s asked), "
          f"engine {args.engine}, {args.rounds} rounds of {args.duration} s, medians:\n")
    print("| setup | deliveries/s | p50 latency (ms) | p99 latency (ms) | server-side CPU per delivery (µs) | vs 1 instance | every round exact |")
    print("|---|---|---|---|---|---|---|")
    for s in setups:
        rs = results[s["name"]]
        med = lambda k: statistics.median(r[k] for r in rs)
        print(f"| {s['name']} | {med('dps'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | "
              f"{med('cpu_us'):.2f} | {med('cpu_us') / base:.2f}× | {'yes' if all(r['ok'] for r in rs) else 'NO'} |")


if __name__ == "__main__":
    main()

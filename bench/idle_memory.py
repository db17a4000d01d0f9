#!/usr/bin/env python3
"""Server RSS per idle connection: start `iocore serve` (one worker thread,
pinned to CPU 0), read its VmRSS, open N idle connections to it on
127.0.0.1 from this process (pinned to CPU 1), wait until the server has
accepted them all, read VmRSS again, and report (after - before) / N.

Usage: bench/idle_memory.py [--engines epoll,uring] [--connections 10000]
Needs a release build (cargo build --release). Traffic: loopback only.
"""
import argparse, os, re, resource, socket, subprocess, sys, time

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))

def established(port):
    """Accepted server-side sockets on `port` (from /proc/net/tcp)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if int(parts[1].split(":")[1], 16) == port and parts[3] == "01":
                    n += 1
    return n

def measure(binary, engine, count):
    port = 20000 + os.getpid() % 10000
    server = subprocess.Popen(
        ["taskset", "-c", "0", binary, "serve", "--engine", engine, "--threads", "1",
         "--addr", f"127.0.0.1:{port}", "--max-sessions", str(count + 100), "--log-level", "warn"])
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        time.sleep(0.5)
        before = rss_kib(server.pid)
        socks = []
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        deadline = time.time() + 60
        while established(port) < count and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        after = rss_kib(server.pid)
        for s in socks:
            s.close()
        return before, after
    finally:
        server.terminate()
        server.wait(timeout=30)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="epoll,uring")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--binary", default="target/release/iocore")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {1})
    print(f"| engine | connections | VmRSS before (KiB) | VmRSS after (KiB) | bytes per idle connection |")
    print(f"|---|---|---|---|---|")
    for engine in a.engines.split(","):
        before, after = measure(a.binary, engine, a.connections)
        per = (after - before) * 1024 / a.connections
        print(f"| {engine} | {a.connections} | {before} | {after} | {per:.0f} |")

if __name__ == "__main__":
    main()

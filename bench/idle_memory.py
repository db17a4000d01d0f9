#!/usr/bin/env python3
"""Server RSS per idle connection: start `iocore serve` (one worker thread,
pinned to CPU 0), read its VmRSS, open N idle connections to it on
127.0.0.1 from this process (pinned to CPU 1), wait until the server has
accepted them all, read VmRSS again, and report (after - before) / N.

With `--transports tcp,ws` it also measures WebSocket sessions: the server
gets `--ws`, and each connection to that port makes its upgrade (the 101
is read) before it idles; with `tls` the server gets a certificate made
for the run (openssl) and each connection finishes its TLS handshake
(Python's ssl) before it idles.

Usage: bench/idle_memory.py [--engines epoll,uring] [--connections 10000] [--transports tcp,ws]
Needs a release build (cargo build --release). Traffic: loopback only.
"""
import argparse, base64, os, re, resource, socket, ssl, subprocess, sys, tempfile, time

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

def upgraded(s):
    """Makes the WebSocket upgrade on socket `s` and reads the 101."""
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return s

def certificate(dir):
    """A self-signed certificate for 127.0.0.1: (cert, key) paths."""
    cert, key = os.path.join(dir, "cert.pem"), os.path.join(dir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"],
                   check=True, capture_output=True)
    return cert, key

def measure(binary, engine, count, transport):
    port = 20000 + os.getpid() % 10000
    ws_port = port + 1
    extra, tls = [], None
    if transport == "tls":
        cert, key = certificate(tempfile.mkdtemp())
        extra = ["--tls-cert", cert, "--tls-key", key]
        tls = ssl.create_default_context(cafile=cert)
    server = subprocess.Popen(
        ["taskset", "-c", "0", binary, "serve", "--engine", engine, "--threads", "1",
         "--addr", f"127.0.0.1:{port}", "--ws", f"127.0.0.1:{ws_port}",
         "--max-sessions", str(count + 100), "--log-level", "warn"] + extra)
    if transport == "ws":
        port = ws_port
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
            s = socket.create_connection(("127.0.0.1", port))
            if transport == "tls":
                s = tls.wrap_socket(s, server_hostname="127.0.0.1")
            socks.append(upgraded(s) if transport == "ws" else s)
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
    ap.add_argument("--transports", default="tcp")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {1})
    print(f"| engine | transport | connections | VmRSS before (KiB) | VmRSS after (KiB) | bytes per idle connection |")
    print(f"|---|---|---|---|---|---|")
    for engine in a.engines.split(","):
        for transport in a.transports.split(","):
            before, after = measure(a.binary, engine, a.connections, transport)
            per = (after - before) * 1024 / a.connections
            print(f"| {engine} | {transport} | {a.connections} | {before} | {after} | {per:.0f} |")

if __name__ == "__main__":
    main()

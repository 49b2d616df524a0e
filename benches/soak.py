#!/usr/bin/env python3
"""Soak: mixed load against one emp-sidecar for 10 minutes; does anything grow?

Everything on loopback: the release binary, the mock EMP issuing 20-second
tokens (so sessions refresh every 10 s), an upstream nginx (100-byte body)
and a small WebSocket echo upstream. At once, for DURATION seconds:
  - wrk, 16 connections, an authenticated route (one session, refreshed
    throughout), and wrk, 8 connections, a skip-auth route;
  - a thread logging in and signing out again and again (new sessions,
    new login cookies, each ended);
  - a thread of slow clients: a request head dribbled byte by byte until the
    head timeout cuts it, and an upload that stalls until the body timeout;
  - a thread of WebSocket clients: upgrade, ten echoed messages, close.
The sidecar's RSS and open file descriptors are sampled every 10 s; the
slope over the part after warm-up (the first quarter) is reported. The
only errors allowed are the deliberate ones (the slow clients').

Usage: python3 benches/soak.py [--duration SECONDS]
"""

import argparse
import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as o  # noqa: E402

ROOT = o.ROOT
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_echo_server(port, stop):
    """After a WebSocket handshake, echoes whatever bytes arrive."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    srv.settimeout(0.5)

    def serve(c):
        with c:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = c.recv(4096)
                if not chunk:
                    return
                head += chunk
            key = re.search(rb"(?i)sec-websocket-key:\s*(\S+)", head).group(1)
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID.encode()).digest())
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            while True:
                data = c.recv(4096)
                if not data:
                    return
                c.sendall(data)

    while not stop.is_set():
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope(points):
    """Least-squares slope of (t, v) points, per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    num = sum((t - mt) * (v - mv) for t, v in points)
    den = sum((t - mt) ** 2 for t, _ in points) or 1.0
    return num / den * 60.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=600)
    args = ap.parse_args()
    binary = o.prepare("nginx:nginx", "wrk:wrk")
    tmp = tempfile.mkdtemp(prefix="emp-soak-")
    procs, stop = [], threading.Event()
    counts = {"logins": 0, "slow_heads": 0, "slow_uploads": 0, "ws_sessions": 0,
              "unexpected": []}
    try:
        up_port, emp_port, sc_port, ws_port = (o.free_port() for _ in range(4))
        threading.Thread(target=ws_echo_server, args=(ws_port, stop), daemon=True).start()
        emp = subprocess.Popen([binary, "mock-emp", "--listen", f"127.0.0.1:{emp_port}",
                                "--token-lifetime", "20s"], stdout=subprocess.DEVNULL)
        procs.append((emp, signal.SIGTERM))
        up = o.start_nginx(o.nginx_conf(tmp, "upstream", f"""
    server {{ listen 127.0.0.1:{up_port} backlog=4096; access_log off;
        location / {{ default_type text/plain; return 200 "{o.BODY}"; }}
        # Reads the whole body before answering (nginx buffers it for
        # proxy_pass), so a stalled upload stalls here too.
        location /public/up {{ proxy_pass http://127.0.0.1:{up_port}/public/x; }}
        location /ws {{ proxy_pass http://127.0.0.1:{ws_port}; proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s; }} }}"""))
        procs.append((up, signal.SIGQUIT))
        conf = o.sidecar_conf(
            Path(tmp) / "sidecar.toml", sc_port, up_port, emp_port,
            server='header_read_timeout = "2s"\nbody_read_timeout = "2s"', log_level="warn",
            claims=False, skip_auth='"^/public/", "^/ws$"')
        log = open(Path(tmp) / "sidecar.log", "w")
        sc = subprocess.Popen([binary, "--config", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        procs.append((sc, signal.SIGTERM))
        for p in (up_port, emp_port, sc_port):
            o.wait_port(p)
        base = f"http://127.0.0.1:{sc_port}"
        cookie = o.login(base)

        def logins():
            # Each login is signed out again, so the number of sessions
            # stays level and any growth is a leak, not stored sessions.
            while not stop.is_set():
                try:
                    c = o.login(base, user=f"soak{counts['logins']}")
                    status, _ = o.http("GET", base + "/oauth2/sign_out", {"Cookie": c})
                    if status != 302:
                        counts["unexpected"].append(f"sign-out: {status}")
                    counts["logins"] += 1
                except Exception as e:  # noqa: BLE001
                    counts["unexpected"].append(f"login: {e}")
                time.sleep(0.2)

        def slow():
            while not stop.is_set():
                try:
                    slow_round()
                except OSError as e:
                    if not stop.is_set():
                        counts["unexpected"].append(f"slow client: {e}")

        def slow_round():
            s = socket.create_connection(("127.0.0.1", sc_port))
            try:  # a head dribbled until the 2 s head timeout closes it
                for b in b"GET /public/x HTTP/1.1\r\nHost: a\r\nX-Slow: ":
                    s.sendall(bytes([b]))
                    time.sleep(0.2)
                    if stop.is_set():
                        break
            except OSError:
                counts["slow_heads"] += 1
            finally:
                s.close()
            s = socket.create_connection(("127.0.0.1", sc_port))
            s.settimeout(10)
            try:  # an upload that stalls: 408 after the 2 s body timeout
                s.sendall(b"POST /public/up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nab")
                resp = s.recv(4096)
                if resp.startswith(b"HTTP/1.1 408"):
                    counts["slow_uploads"] += 1
                elif resp:
                    counts["unexpected"].append(f"stalled upload: {resp[:40]!r}")
            except OSError as e:
                counts["unexpected"].append(f"stalled upload: {e}")
            finally:
                s.close()

        def websockets():
            while not stop.is_set():
                try:
                    s = socket.create_connection(("127.0.0.1", sc_port))
                    s.settimeout(10)
                    key = base64.b64encode(os.urandom(16))
                    s.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                              b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += s.recv(4096)
                    if not head.startswith(b"HTTP/1.1 101"):
                        counts["unexpected"].append(f"ws: {head[:40]!r}")
                    for _ in range(10):
                        msg = os.urandom(64)
                        s.sendall(msg)
                        got = b""
                        while len(got) < len(msg):
                            got += s.recv(4096)
                        if got != msg:
                            counts["unexpected"].append("ws: echo differs")
                    s.close()
                    counts["ws_sessions"] += 1
                except OSError as e:
                    counts["unexpected"].append(f"ws: {e}")
                time.sleep(0.1)

        threads = [threading.Thread(target=f, daemon=True) for f in (logins, slow, websockets)]
        for t in threads:
            t.start()
        wrks = [subprocess.Popen(["wrk", "-t1", "-c16", f"-d{args.duration}s", "-H",
                                  f"Cookie: {cookie}", base + "/app/soak"],
                                 stdout=subprocess.PIPE, text=True),
                subprocess.Popen(["wrk", "-t1", "-c8", f"-d{args.duration}s",
                                  base + "/public/soak"], stdout=subprocess.PIPE, text=True)]
        samples, started = [], time.time()
        while any(w.poll() is None for w in wrks):
            t = time.time() - started
            samples.append((t, o.rss_kib(sc.pid), fds(sc.pid)))
            print(f"t={t:6.0f}s RSS {samples[-1][1] / 1024:6.1f} MiB  fds {samples[-1][2]}",
                  file=sys.stderr)
            time.sleep(10)
        stop.set()
        outs = [w.communicate()[0] for w in wrks]
        for out in outs:
            if "Non-2xx" in out or "Socket errors" in out:
                counts["unexpected"].append("wrk: " + out)
        warm = [s for s in samples if s[0] >= args.duration / 4]
        rss_slope = slope([(t, r) for t, r, _ in warm])
        fd_slope = slope([(t, f) for t, _, f in warm])
        reqs = [int(re.search(r"(\d+) requests in", out).group(1)) for out in outs]
        print(f"duration {args.duration} s: {reqs[0]} authenticated and {reqs[1]} skip-auth "
              f"requests, {counts['logins']} logins, {counts['ws_sessions']} WebSocket sessions, "
              f"{counts['slow_heads']} slow heads cut, {counts['slow_uploads']} stalled uploads "
              f"answered 408")
        print(f"RSS {samples[0][1] / 1024:.1f} MiB at start, {warm[0][1] / 1024:.1f} after "
              f"warm-up, {samples[-1][1] / 1024:.1f} at the end; slope after warm-up "
              f"{rss_slope:+.1f} KiB/min")
        print(f"open fds {samples[0][2]} at start, {samples[-1][2]} at the end; slope after "
              f"warm-up {fd_slope:+.2f}/min")
        print(f"unexpected errors: {len(counts['unexpected'])} {counts['unexpected'][:5]}")
    finally:
        stop.set()
        o.stop_all(procs)


if __name__ == "__main__":
    main()

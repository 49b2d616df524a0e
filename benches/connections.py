#!/usr/bin/env python3
"""Memory per idle keep-alive client connection: emp-sidecar against nginx.

Each server gets N connections (default 10 000) that have each made one
request and then stay open, idle. Reported: the server's RSS before, with
the connections open 1 s and 9 s (the sidecar parks quiet HTTP/1
connections, freeing hyper's buffers), and after they all closed (is the
memory given back?), as KiB per connection. nginx is `proxy_pass` to the same upstream (its RSS
is the master's and workers' summed). Both on loopback, one run each.

Usage: python3 benches/connections.py [--connections N]
"""

import argparse
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as o  # noqa: E402

ROOT = o.ROOT


def conns_conf(conf, n=20000):
    """The nginx configuration with room for the connections."""
    conf.write_text(conf.read_text().replace("worker_connections 4096",
                                             f"worker_connections {n}"))
    return conf


def rss_kib(pids):
    return sum(o.rss_kib(p) for p in pids)


def hold(port, n, path):
    """n connections that each made one request and now stay idle."""
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        got = b""
        while b"\r\n\r\n" not in got or not got.endswith(o.BODY.encode()):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            got += chunk
        socks.append(s)
    return socks


def measure(name, port, pids, n, path):
    before = rss_kib(pids)
    socks = hold(port, n, path)
    time.sleep(1)
    held = rss_kib(pids)
    # Quiet for longer: the sidecar parks idle HTTP/1 connections after a
    # quiet second (at its watchdog's next tick) and trims what they freed
    # at its next 2-second look.
    time.sleep(8)
    idle = rss_kib(pids)
    for s in socks:
        s.close()
    time.sleep(5)  # the sidecar looks every 2 s whether a burst is over
    after = rss_kib(pids)
    per, per_idle = (held - before) / n, (idle - before) / n
    print(f"| {name} | {n} | {before / 1024:.1f} | {held / 1024:.1f} | {idle / 1024:.1f} "
          f"| {after / 1024:.1f} | {per:.1f} | {per_idle:.1f} |")
    return per_idle


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=10000)
    args = ap.parse_args()
    # The hard limit here is 20 000: enough for 10 000 on each side.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    binary = o.prepare("nginx:nginx")
    tmp = tempfile.mkdtemp(prefix="emp-bench-conns-")
    procs = []
    try:
        up_port, ngx_port, sc_port = o.free_port(), o.free_port(), o.free_port()
        up = o.start_nginx(o.nginx_conf(tmp, "upstream", f"""
    server {{ listen 127.0.0.1:{up_port} backlog=4096; access_log off;
        location / {{ default_type text/plain; return 200 "{o.BODY}"; }} }}"""))
        procs.append((up, signal.SIGQUIT))
        ngx = o.start_nginx(conns_conf(o.nginx_conf(tmp, "proxy", f"""
    upstream app {{ server 127.0.0.1:{up_port}; keepalive 512; }}
    server {{ listen 127.0.0.1:{ngx_port} backlog=4096; keepalive_timeout 600s;
        location / {{ proxy_pass http://app; proxy_http_version 1.1;
            proxy_set_header Connection ""; }} }}""")))
        procs.append((ngx, signal.SIGQUIT))
        conf = Path(tmp) / "sidecar.toml"
        conf.write_text(f"""
[server]
listen = "127.0.0.1:{sc_port}"
idle_timeout = "600s"
max_connections = {args.connections + 1024}
[upstream]
url = "http://127.0.0.1:{up_port}"
[provider]
base_url = "http://127.0.0.1:9"
client_id = "k"
redirect_url = "http://127.0.0.1:{sc_port}/oauth2/callback"
[session]
cookie_secret = "YmVuY2gtb25seS1jb29raWUtc2VjcmV0LTMyLWJ5dGVz"
[routes]
skip_auth = ["^/public/"]
""")
        sc = subprocess.Popen([binary, "--config", str(conf)],
                              stdout=subprocess.DEVNULL)
        procs.append((sc, signal.SIGTERM))
        for p in (up_port, ngx_port, sc_port):
            o.wait_port(p)
        print("| server | connections | RSS before MiB | RSS held 1 s MiB | RSS held 9 s MiB "
              "| RSS after close MiB | KiB per connection at 1 s | at 9 s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        n = args.connections
        measure("nginx proxy_pass", ngx_port, [ngx.pid] + o.children(ngx.pid), n, "/public/x")
        measure("emp-sidecar", sc_port, [sc.pid], n, "/public/x")
    finally:
        o.stop_all(procs)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""HTTP/2 clients and TLS termination: the authenticated sidecar against
nginx `proxy_pass` doing the same, one CPU each as in `overhead.py --pin`.

On loopback: the 100-byte upstream (nginx), nginx `proxy_pass` listening
three ways (plain HTTP/1.1, HTTP/2 with prior knowledge, TLS with ALPN h2
and http/1.1) and two sidecars (plain, with HTTP/2 prior knowledge on the
same port; TLS, `server.tls_cert`), each logged in through the mock EMP.
The upstream, nginx and the sidecars run on CPU 0 with one worker each,
the load generator on CPU 1. Both terminate TLS with the same self-signed
P-256 certificate (openssl), so the handshake and ciphers are alike
(TLS 1.3, AES-GCM); connections are opened once and kept.

Loads, each run ROUNDS times with the targets in rotating order:
  h2c      h2load, HTTP/2 with prior knowledge, C connections x 10 streams
  tls-h1   wrk over TLS (HTTP/1.1), C connections
  tls-h2   h2load over TLS (ALPN h2), C connections x 10 streams
Reported: req/s and server CPU per request (CPU 0's, the upstream's share
included) for each, and the sidecar/nginx ratios (median of rounds).
Nothing here has a target yet (issue 15 asks for the figures).

Usage: python3 benches/protocols.py [--duration SECONDS] [--rounds N] [--connections C]
"""

import argparse
import os
import re
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as o  # noqa: E402

SERVER_CPU, LOAD_CPU = 0, 1


def certificate(tmp):
    """A self-signed P-256 certificate for 127.0.0.1: (cert, key) paths."""
    cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def nginx_proxy(tmp, up_port, ports, cert, key):
    """nginx proxy_pass (overhead.proxy_block's location) on three listeners."""
    block = o.proxy_block(ports["plain"], up_port)
    listen = f"listen 127.0.0.1:{ports['plain']} backlog=4096;"
    assert listen in block
    block = block.replace(listen, f"""{listen}
        listen 127.0.0.1:{ports['h2c']} http2 backlog=4096;
        listen 127.0.0.1:{ports['tls']} ssl http2 backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:SSL:1m;""")
    return o.start_nginx(o.nginx_conf(tmp, "proxy", block, workers="1"), cpu=SERVER_CPU)


def h2load(url, conns, duration, headers, pids):
    """One h2load run: req/s and the servers' CPU µs a request."""
    extra = [a for h in headers for a in ("-H", h)]
    jif0, _ = o.proc_stats(pids)
    out = subprocess.run([*o.on_cpu(LOAD_CPU), "h2load", "-c", str(conns), "-m", "10",
                          "-D", str(duration), *extra, url],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed against {url}:\n{out.stdout}\n{out.stderr}")
    out = out.stdout
    jif1, _ = o.proc_stats(pids)
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not done or int(done.group(4)) or int(done.group(5)) or not codes \
            or int(codes.group(3)) or int(codes.group(4)) or int(codes.group(1)) == 0:
        raise RuntimeError(f"h2load saw errors against {url}:\n{out}")
    rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    requests = max(1, int(done.group(2)))
    cpu_us = 1e6 * (jif1 - jif0) / os.sysconf("SC_CLK_TCK") / requests
    return {"rps": rps, "cpu_us": cpu_us}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    binary = o.prepare("nginx:nginx", "wrk:wrk", "h2load:nghttp2-client", "openssl:openssl")
    tmp = tempfile.mkdtemp(prefix="emp-proto-")
    procs = []
    try:
        cert, key = certificate(tmp)
        up_port, emp_port, sc_port, tls_port = (o.free_port() for _ in range(4))
        ngx_ports = {k: o.free_port() for k in ("plain", "h2c", "tls")}
        up = o.start_nginx(o.nginx_conf(tmp, "upstream", o.upstream_block(up_port), workers="1"),
                           cpu=SERVER_CPU)
        procs.append((up, signal.SIGQUIT))
        ngx = nginx_proxy(tmp, up_port, ngx_ports, cert, key)
        procs.append((ngx, signal.SIGQUIT))
        emp = subprocess.Popen([*o.on_cpu(SERVER_CPU), binary, "mock-emp", "--listen",
                                f"127.0.0.1:{emp_port}", "--token-lifetime", "3600s"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((emp, signal.SIGTERM))
        sidecars = {}
        for name, port, server, scheme in (
                ("plain", sc_port, "workers = 1", "http"),
                ("tls", tls_port, f'workers = 1\ntls_cert = "{cert}"\ntls_key = "{key}"', "https")):
            conf = o.sidecar_conf(Path(tmp) / f"sidecar-{name}.toml", port, up_port, emp_port,
                                  server=server, scheme=scheme)
            p = subprocess.Popen([*o.on_cpu(SERVER_CPU), binary, "--config", str(conf)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append((p, signal.SIGTERM))
            sidecars[name] = p
        for p in (up_port, emp_port, sc_port, tls_port, *ngx_ports.values()):
            o.wait_port(p)
        cookies = {"plain": o.login(f"http://127.0.0.1:{sc_port}"),
                   "tls": o.login(f"https://127.0.0.1:{tls_port}")}
        upstream = o.children(up.pid)
        nginx_pids = o.children(ngx.pid) + upstream
        # Each load: scheme, nginx's port, the sidecar's, the load tool and
        # which sidecar. nginx gets the same cookie: the same request to both.
        loads = {"h2c": ("http", ngx_ports["h2c"], sc_port, "h2", "plain"),
                 "tls-h1": ("https", ngx_ports["tls"], tls_port, "wrk", "tls"),
                 "tls-h2": ("https", ngx_ports["tls"], tls_port, "h2", "tls")}
        runs = {}
        for load, (scheme, ngx_port, port, tool, who) in loads.items():
            cookie = (f"{'Cookie' if tool == 'wrk' else 'cookie'}: {cookies[who]}",)
            for target, p in (("nginx", ngx_port), ("sidecar", port)):
                runs[(load, target)] = (f"{scheme}://127.0.0.1:{p}/app/bench", tool, cookie)
        pids = {"nginx": nginx_pids, "plain": [sidecars["plain"].pid] + upstream,
                "tls": [sidecars["tls"].pid] + upstream}

        def run(key, duration):
            url, tool, headers = runs[key]
            who = "nginx" if key[1] == "nginx" else ("plain" if key[0] == "h2c" else "tls")
            if tool == "h2":
                return h2load(url, args.connections, duration, headers, pids[who])
            return o.wrk(url, args.connections, duration, headers, pids[who], threads=1,
                         cpu=LOAD_CPU)

        for key in runs:  # warm-up
            run(key, 1)
        samples = {key: [] for key in runs}
        keys = list(runs)
        for r in range(args.rounds):
            shift = (2 * r) % len(keys)
            for key in keys[shift:] + keys[:shift]:
                res = run(key, args.duration)
                samples[key].append(res)
                print(f"round {r + 1} {key[0]:<7} {key[1]:<8} {res['rps']:>9.0f} req/s  "
                      f"server CPU {res['cpu_us']:.1f} us/req", file=sys.stderr)
        lines = [f"{args.connections} connections (h2load: 10 streams each), "
                 f"{args.rounds} rounds of {args.duration} s, medians:", "",
                 "| load | nginx req/s | sidecar req/s | nginx CPU µs/req | sidecar CPU µs/req "
                 "| sidecar/nginx req/s | sidecar/nginx CPU per request |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for load in ("h2c", "tls-h1", "tls-h2"):
            n, s = samples[(load, "nginx")], samples[(load, "sidecar")]

            def med(xs, k):
                return statistics.median(x[k] for x in xs)

            def paired(k):
                return statistics.median(a[k] / b[k] for a, b in zip(s, n))
            lines.append(f"| {load} | {med(n, 'rps'):.0f} | {med(s, 'rps'):.0f} | "
                         f"{med(n, 'cpu_us'):.1f} | {med(s, 'cpu_us'):.1f} | "
                         f"{paired('rps'):.2f} | {paired('cpu_us'):.2f} |")
        print("\n".join(lines))
    finally:
        o.stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Proxy overhead benchmark: emp-sidecar against nginx proxy_pass, same run.

Targets, all on loopback, all in front of the same upstream (an nginx that
answers a fixed 100-byte body):
  direct   the upstream itself
  nginx    nginx proxy_pass with upstream keepalive (its best configuration)
  sidecar  emp-sidecar on a skip-auth route (no login needed)
  sidecar-auth  emp-sidecar on a protected route with a valid session (logged in
           through `emp-sidecar mock-emp` before the run)

Every target gets the same request, the session cookie included (sent by
wrk), as a browser would send it to whichever proxy fronts the app.

Load: wrk (Debian), 2 threads, 16 and 128 connections. Each (target, connections)
pair runs ROUNDS times, interleaved (each round starting with another
target), and the median is reported, because this 2-core machine is shared
and noisy; so are the medians of the ratios of each round's pairs, the
comparison least moved by the machine's slow spells. Both proxies write an access log and set
X-Forwarded-For/-Proto and X-Request-Id, so they do the same work.

With `--together` (and `--pin`), nginx and the sidecar are also loaded
at the same time, each by its own wrk, ROUNDS times per target: both
proxies then run under the same conditions, and each one's own CPU per
request (and with the upstream's share added) compares without the
machine's slow spells, which move sequential runs by +-30% here. On a
saturated CPU, req/s goes as the inverse of CPU per request.

One-CPU mode (`--pin`), the way a sidecar really runs (a fraction of a CPU
in the app's pod): the upstream, nginx, the mock EMP and the sidecar on CPU
0, one worker each (nginx `worker_processes 1`, `server.workers = 1`), wrk
with one thread on CPU 1; 32 and 128 connections unless told otherwise.
Server CPU per request then counts the upstream's share too, for nginx and
the sidecar alike (all of CPU 0's work for that request).

Usage: python3 benches/overhead.py [--duration SECONDS] [--rounds N] [--workers N] [--pin [--together]]
Writes benches/results/overhead.json and prints a Markdown table.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = "x" * 100


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=20.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {limit}s")


def nginx_conf(tmp, name, server_block, workers="auto"):
    d = Path(tmp) / name
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    {server_block}
}}
""")
    return conf


def prepare(*packages):
    """Installs Debian packages whose command is missing (`cmd:package`),
    builds the release binary, and returns its path; or returns the binary
    named by `BENCH_BINARY`, built otherwise (`scripts/build-pgo`)."""
    subprocess.run([str(ROOT / "scripts/ensure-packages"), *packages], check=True)
    given = os.environ.get("BENCH_BINARY")
    if given:
        return str(Path(given).resolve())
    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=ROOT, check=True)
    return str(ROOT / "target/release/emp-sidecar")


def upstream_block(up_port):
    """The upstream: nginx answering a fixed 100-byte body."""
    return f"""
    server {{
        listen 127.0.0.1:{up_port} backlog=4096;
        access_log off;
        location / {{ default_type text/plain; return 200 "{BODY}"; }}
    }}"""


def proxy_block(ngx_port, up_port):
    """The reference: nginx proxy_pass with upstream keepalive (its best
    configuration), setting the same forwarding headers as the sidecar."""
    return f"""
    upstream app {{ server 127.0.0.1:{up_port}; keepalive 512; }}
    server {{
        listen 127.0.0.1:{ngx_port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-Id $request_id;
        }}
    }}"""


def on_cpu(cpu):
    """The command prefix that runs a process on one CPU (None: anywhere)."""
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def start_nginx(conf, cpu=None):
    return subprocess.Popen([*on_cpu(cpu), "nginx", "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


LAT_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_latency(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * LAT_UNITS[m.group(2)]


def cpu_jiffies():
    """(busy, idle) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v[:8]) - idle, idle


def children(pid):
    """The processes whose parent is `pid` (an nginx master's workers)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def proc_stats(pids):
    """(CPU jiffies, voluntary context switches) summed over every thread of `pids`."""
    jiffies = sleeps = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            jiffies += int(fields[11]) + int(fields[12])  # utime + stime
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        sleeps += int(line.split()[1])
    return jiffies, sleeps


def wrk(url, conns, duration, headers=(), pids=(), threads=2, cpu=None):
    """One wrk run; `pids` are the processes that serve it (the proxy's), whose
    CPU time and sleeps (voluntary context switches) are counted per request.
    `threads` and `cpu`: wrk's threads, and the CPU it is pinned to."""
    extra = [a for h in headers for a in ("-H", h)]
    busy0, idle0 = cpu_jiffies()
    jif0, sleeps0 = proc_stats(pids)
    out = subprocess.run(
        [*on_cpu(cpu), "wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency",
         *extra, url],
        capture_output=True, text=True, check=True).stdout
    jif1, sleeps1 = proc_stats(pids)
    busy1, idle1 = cpu_jiffies()
    requests = max(1, int(re.search(r"(\d+) requests in", out).group(1)))
    cpu_us = 1e6 * (jif1 - jif0) / os.sysconf("SC_CLK_TCK") / requests
    sleeps = (sleeps1 - sleeps0) / requests
    # CPU time nobody used during the run: with every process of the
    # benchmark on these cores, idle time is throughput left on the table.
    idle_pct = 100.0 * (idle1 - idle0) / max(1, (busy1 - busy0) + (idle1 - idle0))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = parse_latency(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = parse_latency(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "idle_pct": idle_pct,
            "cpu_us": cpu_us, "sleeps": sleeps}


def wrk_together(runs, conns, duration, cpu):
    """Two or more wrk runs at the same time (one thread each, on `cpu`),
    `runs` being (url, headers, pids) each: every proxy serves under the
    same conditions (the same slow spells of a shared machine, the same
    CPU speed). Per run: req/s, and its `pids`' CPU µs a request."""
    before = [proc_stats(pids)[0] for _, _, pids in runs]
    procs = [subprocess.Popen(
        [*on_cpu(cpu), "wrk", "-t1", f"-c{conns}", f"-d{duration}s",
         *[a for h in headers for a in ("-H", h)], url],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for url, headers, _ in runs]
    outs = [p.communicate()[0] for p in procs]
    after = [proc_stats(pids)[0] for _, _, pids in runs]
    results = []
    for (url, _, _), out, j0, j1 in zip(runs, outs, before, after):
        if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
            raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
        requests = max(1, int(re.search(r"(\d+) requests in", out).group(1)))
        results.append({"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
                        "cpu_us": 1e6 * (j1 - j0) / os.sysconf("SC_CLK_TCK") / requests,
                        "requests": requests})
    return results


def http(method, url, headers=None, body=None):
    """One request, no redirect following: (status, headers as list of pairs)."""
    import http.client
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":  # the benchmarks' own self-signed certificate
        import ssl
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=10,
                                           context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    path = u.path + ("?" + u.query if u.query else "")
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, resp.getheaders()


def login(sidecar, user="bench"):
    """The browser's login dance against the mock EMP; returns the Cookie header."""
    import urllib.parse
    status, h = http("GET", sidecar + "/app", {"Accept": "text/html"})
    assert status == 302, status
    authorize = {k.lower(): v for k, v in h}["location"]
    csrf = [v.split(";")[0] for k, v in h if k.lower() == "set-cookie"][0]
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize).query))
    mock = authorize.split("/authorize")[0]
    form = urllib.parse.urlencode({"client_id": q["client_id"], "redirect_uri": q["redirect_uri"],
                                   "state": q["state"], "user_id": user})
    status, h = http("POST", mock + "/login", {"Content-Type": "application/x-www-form-urlencoded"}, form)
    assert status == 302, status
    status, h = http("GET", {k.lower(): v for k, v in h}["location"], {"Cookie": csrf})
    assert status == 302, status
    session = [v.split(";")[0] for k, v in h if k.lower() == "set-cookie" and not v.startswith(csrf.split("=")[0])]
    return session[0]


def sidecar_conf(path, port, up_port, emp_port, server="", log_level="info", claims=True,
                 session="", skip_auth='"^/public/"', scheme="http"):
    """Writes the benchmarks' sidecar configuration to `path`: listening on
    `port`, the upstream on `up_port`, the mock EMP on `emp_port` (DR profile
    on). `server` and `session` are extra lines for those sections; with
    `claims`, two claim headers are injected."""
    claim_headers = ('[headers.claims]\n"X-Auth-Request-User" = "/sub"\n'
                     '"X-Auth-Request-Email" = "/email"\n') if claims else ""
    path.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
{server}
[log]
level = "{log_level}"
format = "json"
[upstream]
url = "http://127.0.0.1:{up_port}"
[provider]
base_url = "http://127.0.0.1:{emp_port}"
client_id = "demo-app-key"
redirect_url = "{scheme}://127.0.0.1:{port}/oauth2/callback"
profile = true
{claim_headers}[session]
cookie_secret = "YmVuY2gtb25seS1jb29raWUtc2VjcmV0LTMyLWJ5dGVz"
{session}
[routes]
skip_auth = [{skip_auth}]
""")
    return path


def stop_all(procs):
    """Signals each (process, signal) pair, waits (15 s at most), then kills."""
    for p, sig in procs:
        p.send_signal(sig)
    for p, _ in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", default=None,
                    help="comma separated (default 16,128; with --pin 32,128)")
    ap.add_argument("--workers", type=int, default=None,
                    help="server.workers for the sidecar (default: the sidecar's default)")
    ap.add_argument("--pin", action="store_true",
                    help="servers on CPU 0 with one worker each, wrk on CPU 1 with one thread")
    ap.add_argument("--together", action="store_true",
                    help="with --pin: also load nginx and the sidecar at the same time, "
                         "and compare each proxy's own CPU per request")
    args = ap.parse_args()
    conns_list = [int(c) for c in (args.connections or ("32,128" if args.pin else "16,128"))
                  .split(",")]
    server_cpu, load_cpu = (0, 1) if args.pin else (None, None)
    nginx_workers = "1" if args.pin else "auto"
    wrk_threads = 1 if args.pin else 2
    if args.pin:
        args.workers = 1

    binary = prepare("nginx:nginx", "wrk:wrk")

    tmp = tempfile.mkdtemp(prefix="emp-bench-")
    procs = []
    try:
        up_port, ngx_port, sc_port, emp_port = free_port(), free_port(), free_port(), free_port()
        emp = subprocess.Popen([*on_cpu(server_cpu), binary, "mock-emp", "--listen",
                                f"127.0.0.1:{emp_port}",
                                "--token-lifetime", "3600s"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        procs.append((emp, signal.SIGTERM))
        up = start_nginx(nginx_conf(tmp, "upstream", upstream_block(up_port), workers=nginx_workers), cpu=server_cpu)
        procs.append((up, signal.SIGQUIT))  # nginx drains on SIGQUIT
        ngx = start_nginx(nginx_conf(tmp, "proxy", proxy_block(ngx_port, up_port), workers=nginx_workers), cpu=server_cpu)
        procs.append((ngx, signal.SIGQUIT))
        sc_conf = sidecar_conf(
            Path(tmp) / "sidecar.toml", sc_port, up_port, emp_port,
            server=f"workers = {args.workers}" if args.workers is not None else "")
        sc_log = open(Path(tmp) / "sidecar.log", "w")
        sc = subprocess.Popen([*on_cpu(server_cpu), binary, "--config", str(sc_conf)],
                              stdout=sc_log,
                              stderr=subprocess.STDOUT)
        procs.append((sc, signal.SIGTERM))
        for p in (up_port, ngx_port, sc_port, emp_port):
            wait_port(p)
        cookie = login(f"http://127.0.0.1:{sc_port}")

        targets = {
            "direct": f"http://127.0.0.1:{up_port}/public/bench",
            "nginx": f"http://127.0.0.1:{ngx_port}/public/bench",
            "sidecar": f"http://127.0.0.1:{sc_port}/public/bench",
            "sidecar-auth": f"http://127.0.0.1:{sc_port}/app/bench",
        }
        # The same request to every target, the session cookie included, as
        # a browser sends it whichever proxy is in front of the app: nginx
        # parses and forwards the cookie too.
        headers = {t: [f"Cookie: {cookie}"] for t in targets}
        # Whose CPU and sleeps each target's row counts: the server wrk talks to.
        servers = {"direct": children(up.pid), "nginx": children(ngx.pid),
                   "sidecar": [sc.pid], "sidecar-auth": [sc.pid]}
        if args.pin:
            # Everything CPU 0 does for a request: the upstream's share too.
            for t in ("nginx", "sidecar", "sidecar-auth"):
                servers[t] = servers[t] + children(up.pid)
        for t, url in targets.items():  # warm-up: pools, caches, page faults
            wrk(url, 16, 2, headers.get(t, ()), threads=wrk_threads, cpu=load_cpu)
        samples = {(t, c): [] for t in targets for c in conns_list}
        names = list(targets)
        for r in range(args.rounds):
            # Each round starts with another target: on a shared machine a
            # slow spell then falls on each of them in turn, not always on
            # the one measured at the same point of the round.
            order = names[r % len(names):] + names[:r % len(names)]
            for c in conns_list:
                for t in order:
                    url = targets[t]
                    res = wrk(url, c, args.duration, headers.get(t, ()), servers[t],
                              threads=wrk_threads, cpu=load_cpu)
                    samples[(t, c)].append(res)
                    print(f"round {r + 1} c={c:<4} {t:<8} {res['rps']:>10.0f} req/s "
                          f"p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  "
                          f"CPU idle {res['idle_pct']:.1f}%  server CPU "
                          f"{res['cpu_us']:.1f} us/req, sleeps {res['sleeps']:.3f}/req",
                          file=sys.stderr)
        together = []
        if args.pin and args.together:
            # Both proxies loaded at once, each by its own wrk: the same
            # machine conditions for both, so each proxy's own CPU per
            # request compares without the slow spells that move
            # sequential runs by +-30%. The upstream's share is measured
            # over both loads' requests.
            upstream, nginx_own = children(up.pid), children(ngx.pid)
            for c in conns_list:
                for t in ("sidecar-auth", "sidecar"):
                    ratios = []
                    for r in range(args.rounds):
                        order = [("nginx", targets["nginx"], headers["nginx"], nginx_own),
                                 (t, targets[t], headers.get(t, ()), [sc.pid])]
                        if r % 2:
                            order.reverse()
                        up0 = proc_stats(upstream)[0]
                        res = wrk_together([(u, h, p) for _, u, h, p in order], c,
                                           args.duration, load_cpu)
                        up_us = (1e6 * (proc_stats(upstream)[0] - up0) / os.sysconf("SC_CLK_TCK")
                                 / sum(x["requests"] for x in res))
                        by = {name: x for (name, *_), x in zip(order, res)}
                        ratios.append({
                            "nginx_us": by["nginx"]["cpu_us"], "sidecar_us": by[t]["cpu_us"],
                            "upstream_us": up_us,
                            "proxy": by[t]["cpu_us"] / by["nginx"]["cpu_us"],
                            "with_upstream": (by[t]["cpu_us"] + up_us)
                            / (by["nginx"]["cpu_us"] + up_us)})
                        print(f"together round {r + 1} c={c:<4} {t:<12} nginx "
                              f"{by['nginx']['cpu_us']:.1f} us/req, {t} {by[t]['cpu_us']:.1f} "
                              f"us/req, upstream {up_us:.1f} us/req", file=sys.stderr)
                    together.append((c, t, ratios))
        sidecar_rss = rss_kib(sc.pid)
        # Every sidecar-auth request must have been authenticated: the login
        # counter says one login, and no 401 was seen (wrk fails on non-2xx).

        def med(t, c, k):
            return statistics.median(s[k] for s in samples[(t, c)])

        result = {"machine": {"cpus": os.cpu_count(), "nginx": subprocess.run(
            ["nginx", "-v"], capture_output=True, text=True).stderr.strip()},
            "sidecar_workers": args.workers, "pinned": args.pin,
            "duration_s": args.duration, "rounds": args.rounds, "sidecar_rss_kib": sidecar_rss,
            "rows": []}
        lines = ["| connections | target | req/s | p50 ms | p99 ms | CPU idle % "
                 "| server CPU µs/req | server sleeps/req |",
                 "|---|---|---:|---:|---:|---:|---:|---:|"]
        for c in conns_list:
            for t in targets:
                row = {"connections": c, "target": t, "rps": med(t, c, "rps"),
                       "p50_ms": med(t, c, "p50_ms"), "p99_ms": med(t, c, "p99_ms"),
                       "idle_pct": med(t, c, "idle_pct"), "cpu_us": med(t, c, "cpu_us"),
                       "sleeps": med(t, c, "sleeps")}
                result["rows"].append(row)
                lines.append(f"| {c} | {t} | {row['rps']:.0f} | {row['p50_ms']:.3f} | "
                             f"{row['p99_ms']:.3f} | {row['idle_pct']:.1f} | "
                             f"{row['cpu_us']:.1f} | {row['sleeps']:.3f} |")
        lines.append("")
        lines.append("| connections | sidecar/nginx req/s | sidecar/nginx p99 | sidecar/direct req/s "
                     "| auth/no-login req/s | auth/nginx req/s | auth/nginx p99 "
                     "| auth/nginx CPU per request |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for c in conns_list:
            ratio = {"connections": c,
                     "rps_vs_nginx": med("sidecar", c, "rps") / med("nginx", c, "rps"),
                     "p99_vs_nginx": med("sidecar", c, "p99_ms") / med("nginx", c, "p99_ms"),
                     "rps_vs_direct": med("sidecar", c, "rps") / med("direct", c, "rps"),
                     "auth_vs_public": med("sidecar-auth", c, "rps") / med("sidecar", c, "rps"),
                     "auth_vs_nginx": med("sidecar-auth", c, "rps") / med("nginx", c, "rps"),
                     "auth_p99_vs_nginx": med("sidecar-auth", c, "p99_ms") / med("nginx", c, "p99_ms"),
                     "auth_cpu_vs_nginx": med("sidecar-auth", c, "cpu_us") / med("nginx", c, "cpu_us")}
            result.setdefault("ratios", []).append(ratio)
            lines.append(f"| {c} | {ratio['rps_vs_nginx']:.2f} | {ratio['p99_vs_nginx']:.2f} | "
                         f"{ratio['rps_vs_direct']:.2f} | {ratio['auth_vs_public']:.2f} | "
                         f"{ratio['auth_vs_nginx']:.2f} | {ratio['auth_p99_vs_nginx']:.2f} | "
                         f"{ratio['auth_cpu_vs_nginx']:.2f} |")
        for c in conns_list:
            per_round = [f"{a['rps'] / b['rps']:.2f}"
                         for a, b in zip(samples[("sidecar", c)], samples[("nginx", c)])]
            lines.append(f"sidecar/nginx req/s by round, {c} connections: {', '.join(per_round)}")
        for c in conns_list:
            per_round = [f"{a['rps'] / b['rps']:.2f}"
                         for a, b in zip(samples[("sidecar-auth", c)], samples[("nginx", c)])]
            lines.append(f"auth/nginx req/s by round, {c} connections: {', '.join(per_round)}")
        # The same pair measured within one round, a few seconds apart, is
        # the comparison least moved by the machine's slow spells.
        lines.append("")
        lines.append("| connections | paired medians of rounds: sidecar/nginx req/s "
                     "| auth/nginx req/s | auth/nginx p99 | auth/nginx CPU per request |")
        lines.append("|---|---:|---:|---:|---:|")
        for c in conns_list:
            def paired(t, k):
                return statistics.median(a[k] / b[k] for a, b in
                                         zip(samples[(t, c)], samples[("nginx", c)]))
            row = {"connections": c, "rps_vs_nginx": paired("sidecar", "rps"),
                   "auth_vs_nginx": paired("sidecar-auth", "rps"),
                   "auth_p99_vs_nginx": paired("sidecar-auth", "p99_ms"),
                   "auth_cpu_vs_nginx": paired("sidecar-auth", "cpu_us")}
            result.setdefault("paired_ratios", []).append(row)
            lines.append(f"| {c} | {row['rps_vs_nginx']:.2f} | {row['auth_vs_nginx']:.2f} | "
                         f"{row['auth_p99_vs_nginx']:.2f} | {row['auth_cpu_vs_nginx']:.2f} |")
        if together:
            lines.append("")
            lines.append("Loaded at the same time (each by its own wrk, "
                         f"{args.rounds} rounds of {args.duration} s), medians:")
            lines.append("")
            lines.append("| connections | target | nginx proxy CPU µs/req | its proxy CPU µs/req "
                         "| upstream CPU µs/req | proxy CPU /nginx's (paired) "
                         "| CPU per request with the upstream's, /nginx's (paired) |")
            lines.append("|---|---|---:|---:|---:|---:|---:|")
            for c, t, ratios in together:
                def m(k):
                    return statistics.median(x[k] for x in ratios)
                row = {"connections": c, "target": t, **{k: m(k) for k in ratios[0]}}
                result.setdefault("together", []).append(row)
                lines.append(f"| {c} | {t} | {row['nginx_us']:.1f} | {row['sidecar_us']:.1f} | "
                             f"{row['upstream_us']:.1f} | {row['proxy']:.2f} | "
                             f"{row['with_upstream']:.2f} |")
        lines.append("")
        lines.append(f"sidecar RSS after the run: {sidecar_rss / 1024:.1f} MiB")
        out_dir = ROOT / "benches/results"
        out_dir.mkdir(exist_ok=True)
        name = "overhead-pinned.json" if args.pin else "overhead.json"
        (out_dir / name).write_text(json.dumps(result, indent=2))
        print("\n".join(lines))
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

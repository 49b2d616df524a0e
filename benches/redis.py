#!/usr/bin/env python3
"""The Redis session store under load, against the memory store and nginx.

In the same run, on loopback, in front of the same upstream (an nginx that
answers a fixed 100-byte body):
  nginx         nginx proxy_pass with upstream keepalive
  sidecar-mem   emp-sidecar, authenticated route, session.store = "memory"
  sidecar-redis emp-sidecar, authenticated route, session.store = "redis"
                (a redis-server started here), warm sessions
wrk at 16 and 128 connections, ROUNDS interleaved rounds, medians. For the
Redis target, Redis commands per proxied request come from INFO
commandstats around each run. Then logins per second through three Redis
replicas (the browser's three-request dance against the mock EMP, 16
client threads round robin over the replicas).

Usage: python3 benches/redis.py [--duration SECONDS] [--rounds N]
Writes benches/results/redis.json and prints a Markdown table.
"""

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as o  # noqa: E402  (the shared helpers: wrk, nginx, login)

ROOT = o.ROOT


def redis_calls(port):
    """Total commands Redis has executed (INFO commandstats)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split("calls=")[1].split(",")[0])
               for line in out.splitlines() if line.startswith("cmdstat_"))


def logins_per_second(replicas, seconds, threads=16):
    """Complete logins (start, mock EMP form, callback) per second."""
    done = [0] * threads
    stop = time.time() + seconds

    def worker(i):
        n = 0
        while time.time() < stop:
            o.login(replicas[(i + n) % len(replicas)], user=f"u{i}-{n}")
            n += 1
        done[i] = n

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    started = time.time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(done) / (time.time() - started)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", default="16,128")
    args = ap.parse_args()
    conns_list = [int(c) for c in args.connections.split(",")]
    binary = o.prepare("nginx:nginx", "wrk:wrk", "redis-server:redis-server")
    tmp = tempfile.mkdtemp(prefix="emp-bench-redis-")
    procs = []
    try:
        up_port, ngx_port, emp_port, redis_port = (o.free_port() for _ in range(4))
        mem_port, red_ports = o.free_port(), [o.free_port() for _ in range(3)]
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", tmp],
                                 stdout=subprocess.DEVNULL)
        procs.append((redis, signal.SIGTERM))
        emp = subprocess.Popen([binary, "mock-emp", "--listen", f"127.0.0.1:{emp_port}",
                                "--token-lifetime", "3600s"], stdout=subprocess.DEVNULL)
        procs.append((emp, signal.SIGTERM))
        up = o.start_nginx(o.nginx_conf(tmp, "upstream", f"""
    server {{ listen 127.0.0.1:{up_port} backlog=4096; access_log off;
        location / {{ default_type text/plain; return 200 "{o.BODY}"; }} }}"""))
        procs.append((up, signal.SIGQUIT))
        ngx = o.start_nginx(o.nginx_conf(tmp, "proxy", f"""
    upstream app {{ server 127.0.0.1:{up_port}; keepalive 512; }}
    server {{ listen 127.0.0.1:{ngx_port} backlog=4096;
        location / {{ proxy_pass http://app; proxy_http_version 1.1;
            proxy_set_header Connection ""; proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-Id $request_id; }} }}"""))
        procs.append((ngx, signal.SIGQUIT))
        for p in (up_port, ngx_port, emp_port, redis_port):
            o.wait_port(p)
        sidecars = {}
        for name, port, rport in [("mem", mem_port, None)] + [
                (f"redis{i}", p, redis_port) for i, p in enumerate(red_ports)]:
            store = f'store = "redis"\n[session.redis]\nurl = "redis://127.0.0.1:{rport}"' \
                if rport else ""
            conf = o.sidecar_conf(Path(tmp) / f"{name}.toml", port, up_port, emp_port,
                                  session=store)
            log = open(Path(tmp) / f"{name}.log", "w")
            p = subprocess.Popen([binary, "--config", str(conf)], stdout=log,
                                 stderr=subprocess.STDOUT)
            procs.append((p, signal.SIGTERM))
            o.wait_port(port)
            sidecars[name] = p
        mem_url = f"http://127.0.0.1:{mem_port}"
        red_url = f"http://127.0.0.1:{red_ports[0]}"
        targets = {
            "nginx": (f"http://127.0.0.1:{ngx_port}/app/bench", []),
            "sidecar-mem": (mem_url + "/app/bench", [f"Cookie: {o.login(mem_url)}"]),
            "sidecar-redis": (red_url + "/app/bench", [f"Cookie: {o.login(red_url)}"]),
        }
        servers = {"nginx": o.children(ngx.pid), "sidecar-mem": [sidecars["mem"].pid],
                   "sidecar-redis": [sidecars["redis0"].pid]}
        for t, (url, h) in targets.items():
            o.wrk(url, 16, 2, h)
        samples = {(t, c): [] for t in targets for c in conns_list}
        for r in range(args.rounds):
            for c in conns_list:
                for t, (url, h) in targets.items():
                    calls0 = redis_calls(redis_port)
                    res = o.wrk(url, c, args.duration, h, servers[t])
                    requests = res["rps"] * args.duration
                    res["redis_per_req"] = (redis_calls(redis_port) - calls0) / requests
                    samples[(t, c)].append(res)
                    print(f"round {r + 1} c={c:<4} {t:<14} {res['rps']:>9.0f} req/s "
                          f"p99 {res['p99_ms']:.3f} ms  CPU {res['cpu_us']:.1f} us/req  "
                          f"Redis commands {res['redis_per_req']:.5f}/req", file=sys.stderr)

        def med(t, c, k):
            return statistics.median(s[k] for s in samples[(t, c)])

        lines = ["| connections | target | req/s | p50 ms | p99 ms | server CPU µs/req "
                 "| Redis commands/req |", "|---|---|---:|---:|---:|---:|---:|"]
        result = {"duration_s": args.duration, "rounds": args.rounds, "rows": [], "ratios": []}
        for c in conns_list:
            for t in targets:
                row = {k: med(t, c, k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us",
                                                 "redis_per_req")}
                row.update(connections=c, target=t)
                result["rows"].append(row)
                lines.append(f"| {c} | {t} | {row['rps']:.0f} | {row['p50_ms']:.3f} | "
                             f"{row['p99_ms']:.3f} | {row['cpu_us']:.1f} | "
                             f"{row['redis_per_req']:.5f} |")
        lines += ["", "| connections | redis/memory req/s | redis/nginx req/s | "
                  "redis/memory CPU per request |", "|---|---:|---:|---:|"]
        for c in conns_list:
            ratio = {"connections": c,
                     "redis_vs_memory": med("sidecar-redis", c, "rps") / med("sidecar-mem", c, "rps"),
                     "redis_vs_nginx": med("sidecar-redis", c, "rps") / med("nginx", c, "rps"),
                     "cpu_vs_memory": med("sidecar-redis", c, "cpu_us") / med("sidecar-mem", c, "cpu_us")}
            result["ratios"].append(ratio)
            lines.append(f"| {c} | {ratio['redis_vs_memory']:.2f} | {ratio['redis_vs_nginx']:.2f} "
                         f"| {ratio['cpu_vs_memory']:.2f} |")
        for c in conns_list:
            per_round = [f"{a['rps'] / b['rps']:.2f}" for a, b in
                         zip(samples[("sidecar-redis", c)], samples[("sidecar-mem", c)])]
            lines.append(f"redis/memory req/s by round, {c} connections: {', '.join(per_round)}")
        replicas = [f"http://127.0.0.1:{p}" for p in red_ports]
        lps = logins_per_second(replicas, args.duration)
        mem_lps = logins_per_second([mem_url], args.duration)
        result.update(logins_per_s_three_redis_replicas=lps, logins_per_s_memory=mem_lps)
        lines += ["", f"logins per second, 16 clients: {lps:.0f} through three Redis replicas, "
                  f"{mem_lps:.0f} through one memory-store sidecar"]
        out = ROOT / "benches/results"
        out.mkdir(exist_ok=True)
        (out / "redis.json").write_text(json.dumps(result, indent=2))
        print("\n".join(lines))
    finally:
        o.stop_all(procs)


if __name__ == "__main__":
    main()

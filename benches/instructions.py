#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind: repeatable where
req/s is not (the same binary and load give the same count whatever else
the machine does).

One upstream (nginx, `return 200` with a 100-byte body). Each proxy runs
under `valgrind --tool=callgrind` with one worker: the release sidecar
(`server.workers = 1`) and, as the reference, nginx `proxy_pass`
(`master_process off`, one process). After a warm-up the counters are
zeroed (`callgrind_control -z`), wrk sends a fixed-length load, and the
counters are dumped (`-d`); the total divided by the requests wrk counted
is the figure. Targets:
  nginx         nginx proxy_pass (same headers set as the sidecar)
  sidecar       the sidecar on a skip-auth route
  sidecar-auth  the sidecar on a protected route with a session cookie
                (logged in through the mock EMP first)
Every target is sent the same request, that cookie included, as a browser
would send it whichever proxy fronts the app.

valgrind hides SHA-NI from `cpuid`, so under callgrind the cookie HMAC
runs the portable SHA-256: the authenticated path's count is higher here
than its share of real CPU time.

Usage: python3 benches/instructions.py [--duration SECONDS] [--connections N]
           [--only TARGET,...] [--cache-sim] [--keep DIR]
Prints one line per target (instructions and allocations a request);
`--cache-sim` adds last-level cache misses.
"""

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as o  # noqa: E402  (the shared helpers: wrk, nginx, login)

ROOT = o.ROOT


def callgrind(cmd, out_dir, cache_sim):
    """Starts `cmd` under callgrind, collecting nothing until told to."""
    opts = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p",
            "--dump-line=no", "--compress-strings=no"]
    if cache_sim:
        opts += ["--cache-sim=yes", "--LL=1048576,16,64"]
    return subprocess.Popen([*opts, *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


# The C allocator's entry points, and mimalloc's (the sidecar's global
# allocator; C code in the binary, aws-lc, still calls malloc).
ALLOCATORS = ("malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc",
              "mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned")


def totals(dump):
    """Event names and totals of one callgrind dump, and `allocs`: the calls
    into the C allocator (every Rust allocation ends in one of them)."""
    text = Path(dump).read_text()
    events = re.search(r"^events:\s*(.*)$", text, re.M).group(1).split()
    summary = re.search(r"^(?:summary|totals):\s*(.*)$", text, re.M).group(1).split()
    found = dict(zip(events, (int(v) for v in summary)))
    names = "|".join(ALLOCATORS)
    found["allocs"] = sum(int(n) for n in re.findall(
        rf"^cfn=(?:\(\d+\) )?(?:{names})\n(?:cob=.*\n|cfi=.*\n)*calls=(\d+)", text, re.M))
    return found


def count(pid, out_dir, url, conns, duration, headers=()):
    """Zeroes `pid`'s counters, loads `url`, dumps: (events, requests, dump file)."""
    o.wrk(url, conns, 2, headers, threads=1)  # warm-up under valgrind
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True,
                   capture_output=True)
    before = set(Path(out_dir).glob(f"cg.{pid}.*"))
    extra = [a for h in headers for a in ("-H", h)]
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", *extra, url],
                         capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        new = set(Path(out_dir).glob(f"cg.{pid}.*")) - before
        if new:
            dump = max(new, key=lambda p: int(p.suffix[1:]))
            time.sleep(0.2)  # written in one go, but let it finish
            return totals(dump), requests, dump
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--only", default="nginx,sidecar,sidecar-auth")
    ap.add_argument("--cache-sim", action="store_true")
    ap.add_argument("--keep", metavar="DIR",
                    help="copy each target's dump here (for callgrind_annotate)")
    args = ap.parse_args()
    only = args.only.split(",")
    binary = o.prepare("nginx:nginx", "wrk:wrk", "valgrind:valgrind")
    tmp = tempfile.mkdtemp(prefix="emp-instr-")
    procs = []
    try:
        up_port, ngx_port, sc_port, emp_port = (o.free_port() for _ in range(4))
        up = o.start_nginx(o.nginx_conf(tmp, "upstream", o.upstream_block(up_port), workers="1"))
        procs.append((up, signal.SIGQUIT))
        emp = subprocess.Popen([binary, "mock-emp", "--listen", f"127.0.0.1:{emp_port}",
                                "--token-lifetime", "3600s"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        procs.append((emp, signal.SIGTERM))
        rows = []
        # The sidecar first: its login gives the cookie every target is
        # sent (the same request to each, as a browser would send it).
        conf = o.sidecar_conf(Path(tmp) / "sidecar.toml", sc_port, up_port, emp_port,
                              server="workers = 1")
        sc = callgrind([binary, "--config", str(conf)], tmp, args.cache_sim)
        procs.append((sc, signal.SIGTERM))
        o.wait_port(sc_port, 60)
        o.wait_port(emp_port)
        cookie = [f"Cookie: {o.login(f'http://127.0.0.1:{sc_port}')}"]
        if "nginx" in only:
            conf = o.nginx_conf(tmp, "proxy", o.proxy_block(ngx_port, up_port), workers="1")
            ngx = callgrind(["nginx", "-c", str(conf), "-g", "daemon off; master_process off;"],
                            tmp, args.cache_sim)
            procs.append((ngx, signal.SIGQUIT))
            o.wait_port(ngx_port, 60)
            ev, n, dump = count(ngx.pid, tmp, f"http://127.0.0.1:{ngx_port}/app/bench",
                                args.connections, args.duration, cookie)
            rows.append(("nginx", ev, n, dump))
        if "sidecar" in only:
            ev, n, dump = count(sc.pid, tmp, f"http://127.0.0.1:{sc_port}/public/bench",
                                args.connections, args.duration, cookie)
            rows.append(("sidecar", ev, n, dump))
        if "sidecar-auth" in only:
            ev, n, dump = count(sc.pid, tmp, f"http://127.0.0.1:{sc_port}/app/bench",
                                args.connections, args.duration, cookie)
            rows.append(("sidecar-auth", ev, n, dump))
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for name, _, _, dump in rows:
                shutil.copy(dump, Path(args.keep) / f"{name}.callgrind")
        for name, ev, n, _ in rows:
            line = (f"{name:<13} {ev['Ir'] / n:>9.0f} instructions a request, "
                    f"{ev['allocs'] / n:.1f} allocations ({n} requests)")
            if "DLmr" in ev:
                misses = ev.get("ILmr", 0) + ev["DLmr"] + ev.get("DLmw", 0)
                line += f", {misses / n:.1f} last-level misses a request"
            print(line)
    finally:
        o.stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

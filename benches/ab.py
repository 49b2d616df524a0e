#!/usr/bin/env python3
"""A/B of two sidecar builds: each one's own CPU per request, both loaded
at the same time.

The two binaries run side by side on CPU 0 (one worker each, the same
configuration and upstream, each logged in through one mock EMP), and each
is loaded by its own wrk on CPU 1 at the same time, so both go through the
same slow spells of a shared machine; ROUNDS rounds of 3 s per route
(authenticated `/app`, skip-auth `/public`) and connection count (32, 128),
the order swapped every round. Reported: the median of the rounds'
new/old ratio of CPU per request (each process's user and system time
over the requests it served).

Build the old binary in a worktree, e.g.
  git worktree add /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release)

Usage: python3 benches/ab.py OLD_BINARY NEW_BINARY [ROUNDS]
"""
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as o  # noqa: E402

old_bin, new_bin = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
tmp = tempfile.mkdtemp(prefix="ab-")
procs = []
try:
    up_port, emp_port, a_port, b_port = (o.free_port() for _ in range(4))
    up = o.start_nginx(o.nginx_conf(tmp, "upstream", o.upstream_block(up_port), workers="1"), cpu=0)
    procs.append((up, signal.SIGQUIT))
    emp = subprocess.Popen(["taskset", "-c", "0", new_bin, "mock-emp", "--listen", f"127.0.0.1:{emp_port}",
                            "--token-lifetime", "3600s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append((emp, signal.SIGTERM))
    scs = {}
    for name, binary, port in (("old", old_bin, a_port), ("new", new_bin, b_port)):
        conf = o.sidecar_conf(Path(tmp) / f"{name}.toml", port, up_port, emp_port, server="workers = 1")
        p = subprocess.Popen(["taskset", "-c", "0", binary, "--config", str(conf)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((p, signal.SIGTERM))
        scs[name] = (p, port)
    for p in (up_port, emp_port, a_port, b_port):
        o.wait_port(p)
    cookies = {n: o.login(f"http://127.0.0.1:{port}") for n, (_, port) in scs.items()}
    for route in ("app", "public"):
        for c in (32, 128):
            ratios = []
            for r in range(rounds):
                names = ("old", "new") if r % 2 == 0 else ("new", "old")
                runs = []
                for n in names:
                    p, port = scs[n]
                    hdr = [f"Cookie: {cookies[n]}"] if route == "app" else []
                    runs.append((f"http://127.0.0.1:{port}/{route}/bench", hdr, [p.pid]))
                res = dict(zip(names, o.wrk_together(runs, c, 3, 1)))
                ratios.append(res["new"]["cpu_us"] / res["old"]["cpu_us"])
            print(f"{route} c={c}: new/old own CPU per request, median of {rounds} rounds "
                  f"{statistics.median(ratios):.3f} (rounds {min(ratios):.2f}-{max(ratios):.2f})", flush=True)
finally:
    o.stop_all(procs)
    shutil.rmtree(tmp, ignore_errors=True)

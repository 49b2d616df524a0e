#!/usr/bin/env python3
"""Authorization rules and bearer tokens on the hot path, in one run:
authenticated requests with two authorization rules configured against
none, and requests with a bearer token (verified once, then cached)
against requests with a session cookie.

One release sidecar on loopback in front of an upstream (an nginx
answering a fixed 100-byte body), logged in through the mock EMP (profile
email bench@example.com, country KR); the targets differ in what they send
and in the configuration, switched by SIGHUP before each run:
  sidecar-plain  no [authorization]
  sidecar-rules  allowed_email_domains = ["example.com"], and a per-path
                 rule (^/admin/: group admins, country KR or US) that the
                 benchmarked path does not match, so each request runs the
                 path scan and the email check
  sidecar-bearer the plain sidecar ([bearer] on, opaque_cache 600 s), the
                 same user's EMP access token in Authorization instead of
                 the cookie (checked once through /profile, then cached)
wrk at 16 and 128 connections, ROUNDS interleaved rounds, medians.

Usage: python3 benches/authz.py [--duration SECONDS] [--rounds N]
Writes benches/results/authz.json and prints a Markdown table.
"""

import argparse
import json
import os
import time
import urllib.request
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as o  # noqa: E402  (the shared helpers: wrk, nginx, login)

ROOT = o.ROOT

RULES = "\n" + (Path(__file__).resolve().parent / "authz_rules.toml").read_text()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    conns_list = [16, 128]
    binary = o.prepare("nginx:nginx", "wrk:wrk")
    tmp = tempfile.mkdtemp(prefix="emp-bench-authz-")
    procs = []
    try:
        up_port, emp_port, plain_port = (o.free_port() for _ in range(3))
        emp = subprocess.Popen([binary, "mock-emp", "--listen", f"127.0.0.1:{emp_port}",
                                "--token-lifetime", "3600s"], stdout=subprocess.DEVNULL)
        procs.append((emp, signal.SIGTERM))
        up = o.start_nginx(o.nginx_conf(tmp, "upstream", f"""
    server {{ listen 127.0.0.1:{up_port} backlog=4096; access_log off;
        location / {{ default_type text/plain; return 200 "{o.BODY}"; }} }}"""))
        procs.append((up, signal.SIGQUIT))
        for p in (up_port, emp_port):
            o.wait_port(p)
        # One sidecar for all three targets: the rules are switched on and
        # off by SIGHUP between runs, so each comparison is within one
        # process (two processes differed by more than the rules cost).
        port = plain_port
        conf = o.sidecar_conf(Path(tmp) / "sidecar.toml", port, up_port, emp_port)
        base = conf.read_text() + '\n[bearer]\nenabled = true\nopaque_cache = "600s"\n'
        conf.write_text(base)
        log = open(Path(tmp) / "sidecar.log", "w")
        p = subprocess.Popen([binary, "--config", str(conf)], stdout=log,
                             stderr=subprocess.STDOUT)
        procs.append((p, signal.SIGTERM))
        o.wait_port(port)
        url = f"http://127.0.0.1:{port}"
        cookie = o.login(url)
        # The session's access token, as nginx would get it.
        _, h = o.http("GET", url + "/oauth2/auth", {"Cookie": cookie})
        token = {k.lower(): v for k, v in h}["x-auth-request-access-token"]
        targets = {
            "sidecar-plain": (url + "/app/bench", [f"Cookie: {cookie}"], base),
            "sidecar-rules": (url + "/app/bench", [f"Cookie: {cookie}"], base + RULES),
            "sidecar-bearer": (url + "/app/bench", [f"Authorization: Bearer {token}"], base),
        }
        pids = {t: [p.pid] for t in targets}
        state = {"text": base, "reloads": 0}

        def configure(text):
            """Rewrites the configuration and reloads it (SIGHUP), waiting
            (at most 10 s) until the sidecar says it applied it."""
            if text == state["text"]:
                return
            conf.write_text(text)
            state["text"] = text
            state["reloads"] += 1
            os.kill(p.pid, signal.SIGHUP)
            series = 'emp_sidecar_config_reloads_total{result="applied"} '
            deadline = time.time() + 10
            while time.time() < deadline:
                with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
                    body = resp.read().decode()
                line = next((x for x in body.splitlines() if x.startswith(series)), "")
                if line and float(line.split()[-1]) >= state["reloads"]:
                    return
                time.sleep(0.05)
            raise RuntimeError("the reload was not applied within 10 s")

        for t, (u, h, text) in targets.items():
            configure(text)
            status, _ = o.http("GET", u, dict(x.split(": ", 1) for x in h))
            assert status == 200, f"{t}: {status}"
            o.wrk(u, 16, 2, h)
        samples = {(t, c): [] for t in targets for c in conns_list}
        for r in range(args.rounds):
            for c in conns_list:
                for t, (u, h, text) in targets.items():
                    configure(text)
                    res = o.wrk(u, c, args.duration, h, pids[t])
                    samples[(t, c)].append(res)
                    print(f"round {r + 1} c={c:<4} {t:<14} {res['rps']:>9.0f} req/s "
                          f"p99 {res['p99_ms']:.3f} ms  CPU {res['cpu_us']:.1f} us/req",
                          file=sys.stderr)

        def med(t, c, k):
            return statistics.median(s[k] for s in samples[(t, c)])

        lines = ["| connections | target | req/s | p50 ms | p99 ms | server CPU µs/req |",
                 "|---|---|---:|---:|---:|---:|"]
        result = {"duration_s": args.duration, "rounds": args.rounds, "rows": [], "ratios": []}
        for c in conns_list:
            for t in targets:
                row = {k: med(t, c, k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us")}
                row.update(connections=c, target=t)
                result["rows"].append(row)
                lines.append(f"| {c} | {t} | {row['rps']:.0f} | {row['p50_ms']:.3f} | "
                             f"{row['p99_ms']:.3f} | {row['cpu_us']:.1f} |")
        lines += ["", "| connections | rules/none req/s | rules/none CPU per request "
                  "| bearer/cookie req/s | bearer/cookie CPU per request |",
                  "|---|---:|---:|---:|---:|"]
        for c in conns_list:
            plain = ("sidecar-plain", c)
            ratio = {"connections": c,
                     "rules_vs_none": med("sidecar-rules", c, "rps") / med(*plain, "rps"),
                     "cpu_vs_none": med("sidecar-rules", c, "cpu_us") / med(*plain, "cpu_us"),
                     "bearer_vs_cookie": med("sidecar-bearer", c, "rps") / med(*plain, "rps"),
                     "bearer_cpu_vs_cookie": med("sidecar-bearer", c, "cpu_us") / med(*plain, "cpu_us")}
            result["ratios"].append(ratio)
            lines.append(f"| {c} | {ratio['rules_vs_none']:.2f} | {ratio['cpu_vs_none']:.2f} "
                         f"| {ratio['bearer_vs_cookie']:.2f} | {ratio['bearer_cpu_vs_cookie']:.2f} |")
        for t in ("sidecar-rules", "sidecar-bearer"):
            for c in conns_list:
                per_round = [f"{a['rps'] / b['rps']:.2f}" for a, b in
                             zip(samples[(t, c)], samples[("sidecar-plain", c)])]
                lines.append(f"{t}/plain req/s by round, {c} connections: {', '.join(per_round)}")
        out = ROOT / "benches/results"
        out.mkdir(exist_ok=True)
        (out / "authz.json").write_text(json.dumps(result, indent=2))
        print("\n".join(lines))
    finally:
        o.stop_all(procs)


if __name__ == "__main__":
    main()

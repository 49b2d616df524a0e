#!/usr/bin/env python3
"""The training run of a profile-guided build (`scripts/build-pgo`): drives
an instrumented sidecar through what a deployment does, so the profile
it writes on exit says which code is hot.

One upstream (nginx, as in `overhead.py`), the mock EMP and the sidecar
(two workers, JSON access log), then: logins through the mock EMP, the
authenticated proxy path and the skip-auth path under wrk (HTTP/1.1, 32
connections), nginx's `/oauth2/auth` check, HTTP/2 (h2load, when
installed), `/oauth2/userinfo`, `/metrics`, and sign-outs. The sidecar is
stopped with SIGTERM, as a pod is, which writes the profile.

Usage: python3 benches/pgo_train.py INSTRUMENTED_BINARY [SECONDS_PER_LOAD]
"""

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead as o  # noqa: E402  (the shared helpers: nginx, login, wrk)


def main():
    binary = sys.argv[1]
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    tmp = tempfile.mkdtemp(prefix="emp-pgo-")
    procs = []
    try:
        up_port, sc_port, emp_port = o.free_port(), o.free_port(), o.free_port()
        up = o.start_nginx(o.nginx_conf(tmp, "upstream", o.upstream_block(up_port), workers="1"))
        procs.append((up, signal.SIGQUIT))
        emp = subprocess.Popen([binary, "mock-emp", "--listen", f"127.0.0.1:{emp_port}",
                                "--token-lifetime", "3600s"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((emp, signal.SIGTERM))
        conf = o.sidecar_conf(Path(tmp) / "sidecar.toml", sc_port, up_port, emp_port,
                              server="workers = 2")
        sc = subprocess.Popen([binary, "--config", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((sc, signal.SIGTERM))
        for p in (up_port, sc_port, emp_port):
            o.wait_port(p)
        base = f"http://127.0.0.1:{sc_port}"
        cookies = [o.login(base, user=f"train{i}") for i in range(20)]
        cookie = [f"Cookie: {cookies[0]}"]
        loads = [(f"{base}/app/train", cookie, seconds),
                 (f"{base}/public/train", cookie, seconds // 2),
                 (f"{base}/oauth2/auth", cookie, 1)]
        for url, headers, duration in loads:
            o.wrk(url, 32, duration, headers, threads=1)
        if shutil.which("h2load"):
            subprocess.run(["h2load", "-c8", "-m8", f"-D{max(1, seconds // 3)}",
                            "-H", f"cookie: {cookies[0]}", f"{base}/app/train"],
                           check=True, capture_output=True)
        for c in cookies:
            for path in ("/oauth2/userinfo", "/metrics"):
                status, _ = o.http("GET", base + path, {"Cookie": c})
                assert status == 200, (path, status)
        for c in cookies[10:]:
            o.http("GET", base + "/oauth2/sign_out", {"Cookie": c})
        # The profile is written as the process exits.
        sc.send_signal(signal.SIGTERM)
        if sc.wait(timeout=30) != 0:
            raise RuntimeError(f"the sidecar exited with {sc.returncode}")
        procs.remove((sc, signal.SIGTERM))
    finally:
        o.stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    print("training done")


if __name__ == "__main__":
    main()

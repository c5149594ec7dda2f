"""Deploy figures: time to deploy a release over N tenants, and failed requests under load.

Targets (issue 4): zero failed requests; deploy time per tenant close to one container
start plus its migrations. A bounded request loop (through the proxy, one tenant per
request in turn) runs for the whole deploy.

    python bench/deploy.py [--tenants 10] [--jobs 2]
"""
from __future__ import annotations

import argparse
import http.client
import json
import re
import threading
import time

from common import bench_project, cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with bench_project("tkdeploy") as root:
        proxy_port = int(re.search(r"^proxy:\n(?:  .*\n)*?  port: (\d+)", (root / "tenantkit.yaml").read_text(),
                                   re.M).group(1))
        names = [f"d{i:02d}" for i in range(args.tenants)]
        for name in names:
            cli(root, "new", name)
        cli(root, "up", "--all")
        cli(root, "release", "build", "1")
        cli(root, "deploy", "1")
        # Release 2: the same code under a new tag still goes through every deploy step.
        cli(root, "release", "build", "2")
        statuses: list = []
        stop = threading.Event()

        def load():
            i = 0
            deadline = time.monotonic() + 600
            while not stop.is_set() and len(statuses) < 200000 and time.monotonic() < deadline:
                host = f"{names[i % len(names)]}.localhost"
                i += 1
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
                    conn.request("GET", "/healthz/", headers={"Host": host})
                    response = conn.getresponse()
                    response.read()
                    statuses.append(response.status)
                except OSError as exc:
                    statuses.append(type(exc).__name__)

        thread = threading.Thread(target=load)
        thread.start()
        started = time.monotonic()
        try:
            outcomes = json.loads(cli(root, "deploy", "2", "--jobs", str(args.jobs), "--json"))
        finally:
            elapsed = time.monotonic() - started
            stop.set()
            thread.join()
        per_tenant = sorted(o["seconds"] for o in outcomes)
        # For scale: one container start plus a no-op migrate, as `tenant up` of a running tenant pays.
        cli(root, "down", names[0])
        t0 = time.monotonic()
        cli(root, "up", names[0])
        one_start = time.monotonic() - t0
    failed = [s for s in statuses if s != 200]
    print(f"deploy of a release to {args.tenants} tenants, {args.jobs} at a time: {elapsed:.1f} s in all, "
          f"median {per_tenant[len(per_tenant) // 2]:.1f} s per tenant")
    print(f"requests during the deploy: {len(statuses)}, failed: {len(failed)} (target 0)")
    print(f"for scale, `tenant up` of one stopped tenant (one container start + migration check): {one_start:.1f} s")


if __name__ == "__main__":
    main()

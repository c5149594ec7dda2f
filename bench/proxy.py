"""Apache proxy overhead: the same tenant through the proxy and at its own container's address.

Prints requests per second and median/p99 latency of each, and the throughput ratio
(target: proxy >= 0.9 of direct). Uses ApacheBench (`ab`, from apache2-utils) with a
bounded request count on loopback only; rounds alternate so drift hits both sides.

    python bench/proxy.py [--requests N] [--concurrency C] [--rounds R] [--path /]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess

import docker

from common import bench_project, cli, free_port, project_name, tenant_address


def ab(where: str, host: str, path: str, requests: int, concurrency: int) -> dict:
    out = subprocess.run(["ab", "-q", "-k", "-n", str(requests), "-c", str(concurrency), "-H", f"Host: {host}",
                          f"http://{where}{path}"], capture_output=True, text=True, check=True).stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    return {
        "rps": float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1)),
        "p50": float(re.search(r"^\s+50%\s+(\d+)", out, re.M).group(1)),
        "p99": float(re.search(r"^\s+99%\s+(\d+)", out, re.M).group(1)),
        "failed": failed + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--path", default="/")
    parser.add_argument("--workers", type=int, default=1,
                        help="gunicorn workers of the tenant (default 1, the tenant default)")
    args = parser.parse_args()
    if not shutil.which("ab"):
        raise SystemExit("ab is missing: apt-get install apache2-utils")
    proxy_port = free_port()
    with bench_project("tkproxy", proxy__port=proxy_port) as root:
        cli(root, "new", "acme", "--workers", str(args.workers))
        cli(root, "up", "acme")
        # The tenant's own container, at its address on its network (it publishes no port).
        own = f"{tenant_address(docker.from_env(), project_name(root), 'acme')}:8000"
        through = f"127.0.0.1:{proxy_port}"
        ab(own, "acme.localhost", args.path, 300, args.concurrency)  # warm up both paths
        ab(through, "acme.localhost", args.path, 300, args.concurrency)
        direct, proxied = [], []
        for _ in range(args.rounds):
            direct.append(ab(own, "acme.localhost", args.path, args.requests, args.concurrency))
            proxied.append(ab(through, "acme.localhost", args.path, args.requests, args.concurrency))

    def summary(runs):
        return {key: statistics.median(run[key] for run in runs) for key in ("rps", "p50", "p99")} | {
            "failed": sum(run["failed"] for run in runs)}

    d, p = summary(direct), summary(proxied)
    print(f"{os.cpu_count()} cores; {args.rounds} rounds x {args.requests} requests, concurrency {args.concurrency}, GET {args.path} "
          f"(tenant: {args.workers} gunicorn worker(s) x 4 threads); medians of rounds")
    for label, s in (("direct", d), ("proxy ", p)):
        print(f"  {label}  {s['rps']:8.1f} req/s   p50 {s['p50']:4.0f} ms   p99 {s['p99']:4.0f} ms   "
              f"failed {s['failed']}")
    print(f"  throughput through Apache / direct: {p['rps'] / d['rps']:.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()

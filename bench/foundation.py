"""Foundation figures: new tenant to first HTTP 200, idle memory per tenant, image size.

Targets (issue 2): new tenant to first 200 at most 5 s; idle memory at most 60 MiB per
tenant with default settings. Prints medians of RUNS runs (default 5):

    python bench/foundation.py [--runs N] [--idle SECONDS]
"""
from __future__ import annotations

import argparse
import http.client
import re
import statistics
import time

import docker

from common import bench_project, cli


def first_200(port: int, host: str, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/", headers={"Host": host})
            if conn.getresponse().status == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"no 200 from port {port} within {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=15.0, help="seconds to idle before measuring memory")
    args = parser.parse_args()
    client = docker.from_env()
    with bench_project("tkbench") as root:
        # Warm-up: build the image and start the database, as a running installation has.
        cli(root, "new", "warm")
        cli(root, "up", "warm")
        seconds = []
        for i in range(args.runs):
            name = f"t{i}"
            started = time.monotonic()
            cli(root, "new", name)
            cli(root, "up", name)
            port = int(re.search(r"^port: (\d+)$", (root / "tenants" / name / "tenant.yaml").read_text(),
                                 re.M).group(1))
            seconds.append(first_200(port, f"{name}.localhost") - started)
        time.sleep(args.idle)
        memory = []
        project = root.joinpath("tenantkit.yaml").read_text().split("name: ")[1].split()[0]
        for container in client.containers.list(filters={"label": f"com.docker.compose.project={project}"}):
            if container.labels.get("com.docker.compose.service", "").startswith("tenant-"):
                stats = container.stats(stream=False)["memory_stats"]
                used = stats["usage"] - stats.get("stats", {}).get("total_inactive_file", 0)
                memory.append(used / 2**20)
        tag = next(line.split()[-1] for line in (root / "compose" / "compose.yaml").read_text().splitlines()
                   if "image:" in line and "/app:" in line)
        size = client.images.get(tag).attrs["Size"] / 1e6
    print(f"new tenant -> first HTTP 200: median {statistics.median(seconds):.2f} s "
          f"(min {min(seconds):.2f}, max {max(seconds):.2f}, {len(seconds)} runs; target <= 5 s)")
    print(f"idle memory per tenant container: median {statistics.median(memory):.1f} MiB "
          f"(max {max(memory):.1f}, {len(memory)} containers; target <= 60 MiB)")
    print(f"shared image {tag}: {size:.0f} MB")


if __name__ == "__main__":
    main()

"""Foundation figures: new + up of a tenant to its first HTTP 200, directly and through the
proxy, beside the floors measured in the same run; idle memory per tenant; image size.

Targets: `tenant new` + `tenant up` to the first 200 at most 1.0 s median (issue 10);
idle memory at most 60 MiB per tenant with default settings (issue 2). "Directly" is the
tenant container's own address on its network, port 8000 (tenants need not publish a
port); "through the proxy" is 127.0.0.1:<proxy port> with the tenant's Host header.

Floors, measured in the same run (RUNS times each, medians):
  - bare container start -> 200: a stopped tenant container started with the Docker SDK;
  - `createdb -T` from a migrated template (a tenant database whose container is stopped);
  - running the demo's migrations on an empty database (inside a one-off container).

    python bench/foundation.py [--runs N] [--idle SECONDS]
"""
from __future__ import annotations

import argparse
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
from psycopg2 import sql

from common import (bench_project, cli, container_address, first_200, project_name, tenant_address,
                    tenant_container, timed)
from tenantkit.act.database import admin_connect
from tenantkit.model import APP_PORT, load_project, load_tenant

TARGET_FIRST_200 = 1.0  # seconds, median (issue 10)
TARGET_MEMORY = 60  # MiB per idle tenant container (issue 2)

# Runs Django's migrate in-process, so the figure is the migrations alone (no Python start).
TIMED_MIGRATE = ("import time; from django.core.management import call_command; "
                 "t = time.monotonic(); call_command('migrate', interactive=False, verbosity=0); "
                 "print('migrate-seconds', time.monotonic() - t)")


def spread(values: list[float], unit: str = "s") -> str:
    return (f"median {statistics.median(values):.2f} {unit} (min {min(values):.2f}, max {max(values):.2f}, "
            f"{len(values)} runs")


def verdict(value: float, target: float) -> str:
    return "meets target" if value <= target else "OVER target"


def new_and_up(root: Path, client, project: str, proxy_port: int, name: str) -> dict[str, float]:
    """`tenant new` + `tenant up`, then the first 200 directly and through the proxy (polled
    at once, each timed from before `new`)."""
    host = f"{name}.localhost"
    started = time.monotonic()
    cli(root, "new", name)
    created = time.monotonic()
    cli(root, "up", name)
    returned = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        direct = pool.submit(lambda: first_200(tenant_address(client, project, name), APP_PORT, host))
        proxied = pool.submit(first_200, "127.0.0.1", proxy_port, host)
        return {"new": created - started, "up": returned - started,
                "direct": direct.result() - started, "proxy": proxied.result() - started}


def createdb_from_template(root: Path, template: str, runs: int) -> list[float]:
    """CREATE DATABASE ... TEMPLATE a migrated tenant database (nobody connected), timed; then dropped."""
    conn = admin_connect(load_project(root))
    copy = sql.Identifier("tkbench_template_copy")
    seconds = []
    try:
        with conn.cursor() as cur:
            deadline = time.monotonic() + 30  # a stopped tenant's sessions may take a moment to end
            while True:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (template,))
                if cur.fetchone()[0] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            for _ in range(runs):
                started = time.monotonic()
                cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(copy, sql.Identifier(template)))
                seconds.append(time.monotonic() - started)
                cur.execute(sql.SQL("DROP DATABASE {}").format(copy))
    finally:
        conn.close()
    return seconds


def bare_starts(root: Path, client, project: str, name: str, runs: int) -> list[float]:
    """A stopped tenant container (`tenant down`) started with the Docker SDK, until it answers 200."""
    seconds = []
    for _ in range(runs):
        cli(root, "down", name)
        container = tenant_container(client, project, name)
        started = time.monotonic()
        container.start()
        container.reload()
        address = container_address(container, project, name)
        seconds.append(first_200(address, APP_PORT, f"{name}.localhost") - started)
    return seconds


def migrations_on_empty(root: Path, runs: int) -> tuple[list[float], list[float]]:
    """The demo's migrations on a new tenant's empty database: seconds inside the container,
    and seconds of the whole `tenant manage` command (provisioning and one-off container included)."""
    inside, command = [], []
    for i in range(runs):
        name = f"mig{i}"
        cli(root, "new", name)
        took, out = timed(root, "manage", name, "--", "shell", "-c", TIMED_MIGRATE)
        inside.append(float(re.search(r"^migrate-seconds (\S+)$", out, re.M).group(1)))
        command.append(took)
    return inside, command


def idle_memory(client, project: str) -> list[float]:
    """MiB used by each running tenant container (page cache that can be dropped left out)."""
    memory = []
    for container in client.containers.list(filters={"label": f"com.docker.compose.project={project}"}):
        if (container.labels.get("com.docker.compose.service", "").startswith("tenant-")
                and container.labels.get("com.docker.compose.oneoff") != "True"):
            stats = container.stats(stream=False)["memory_stats"]
            used = stats["usage"] - stats.get("stats", {}).get("total_inactive_file",
                                                               stats.get("stats", {}).get("inactive_file", 0))
            memory.append(used / 2**20)
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=15.0, help="seconds to idle before measuring memory")
    args = parser.parse_args()
    client = docker.from_env()
    with bench_project("tkbench") as root:
        project = project_name(root)
        proxy_port = load_project(root).proxy.port
        # Warm-up: build the images and start the database and proxy, as a running installation has.
        cli(root, "new", "warm")
        cli(root, "up", "warm")
        runs = [new_and_up(root, client, project, proxy_port, f"t{i}") for i in range(args.runs)]
        time.sleep(args.idle)
        memory = idle_memory(client, project)
        image = tenant_container(client, project, "warm").image
        tag = next(iter(image.tags), image.short_id)
        size = image.attrs["Size"] / 1e6

        # Floors. The warm tenant's database is migrated; with its container stopped it can be a template.
        cli(root, "down", "warm")
        createdb = createdb_from_template(root, load_tenant(load_project(root), "warm").names.database, args.runs)
        bare = bare_starts(root, client, project, "warm", args.runs)
        migrate_inside, migrate_command = migrations_on_empty(root, args.runs)

    floor = statistics.median(bare)
    for way, label in (("direct", f"direct, container address:{APP_PORT}"), ("proxy", "through the proxy")):
        seconds = [r[way] for r in runs]
        print(f"new + up -> first 200 ({label}): {spread(seconds)}; target <= {TARGET_FIRST_200} s, "
              f"{verdict(statistics.median(seconds), TARGET_FIRST_200)}; "
              f"floor: bare container start -> 200 {floor:.2f} s)")
    print(f"  of which `tenant new` took median {statistics.median(r['new'] for r in runs):.2f} s, "
          f"and `tenant up` returned at median {statistics.median(r['up'] for r in runs):.2f} s after the start")
    print(f"floor: bare container start -> 200 (docker start of a stopped tenant, direct): {spread(bare)})")
    print(f"floor: createdb -T from a migrated template: {spread(createdb)})")
    print(f"  against running the demo's migrations on an empty database (in the container): "
          f"{spread(migrate_inside)}; the whole `tenant manage NAME -- ...` command around them: "
          f"median {statistics.median(migrate_command):.2f} s)")
    print(f"idle memory per tenant container: median {statistics.median(memory):.1f} MiB "
          f"(max {max(memory):.1f}, {len(memory)} containers; target <= {TARGET_MEMORY} MiB, "
          f"{verdict(statistics.median(memory), TARGET_MEMORY)})")
    print(f"shared image {tag}: {size:.0f} MB")


if __name__ == "__main__":
    main()

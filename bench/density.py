"""Density figures: many tenants on one host, and what a command about one of them costs.

Prints, each beside its target (issue "Hundreds of tenants on one host"):
  - `tenant up --all` for N tenants;
  - a request to every tenant through the proxy, then a bounded load spread over all of
    them, with the count of failed requests (target 0);
  - memory in all and per tenant, and idle host CPU in cores over one minute (target 0.2);
  - `tenant up ONE`, `tenant set ONE`, `tenant list` and `tenant render` in the N-tenant
    project and in a 3-tenant project on the same engine, their runs interleaved so both
    meet the same host load, and the ratio (target 1.2 for single-tenant commands);
  - `tenant render` of 10,000 tenant folders, no Docker needed (target 1 s).

    python bench/density.py [--tenants 200] [--idle-seconds 60] [--render-tenants 10000]

Run it alone on the machine: the idle CPU figure is the whole host's.
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import bench_project, cli, write_project

TIMED_RUNS = 9


def timed(root: Path, *args: str) -> float:
    started = time.monotonic()
    cli(root, *args)
    return time.monotonic() - started


COMMANDS = {  # name: the arguments, given the tenant and the run's number
    "up ONE": lambda one, i: ("up", one),
    "set ONE": lambda one, i: ("set", one, f"title=Bench {i}"),
    "list": lambda one, i: ("list",),
    "render": lambda one, i: ("render",),
}


def command_costs(projects: dict[str, tuple[Path, str]]) -> dict[str, dict[str, float]]:
    """Median seconds of each command in each project, their runs interleaved, so that both
    projects meet the same host load (the running fleet's own CPU use included)."""
    times: dict[str, dict[str, list[float]]] = {p: {c: [] for c in COMMANDS} for p in projects}
    for command, argv in COMMANDS.items():
        for i in range(TIMED_RUNS):
            for label, (root, one) in projects.items():
                times[label][command].append(timed(root, *argv(one, i)))
        if command == "set ONE":
            for root, one in projects.values():
                cli(root, "up", one)  # apply the last set, so later runs start from a settled tenant
    return {label: {c: statistics.median(v) for c, v in per.items()} for label, per in times.items()}


def get(port: int, host: str, path: str = "/") -> tuple[int, bytes]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""


def every_tenant_answers(port: int, names: list[str]) -> int:
    """One request to each tenant's home page; a failure is anything but 200 naming the tenant."""
    failed = 0
    for name in names:
        status, body = get(port, f"{name}.localhost")
        if status != 200 or f'id="tenant">{name}<'.encode() not in body:
            failed += 1
    return failed


def bounded_load(port: int, names: list[str], requests: int, seconds: float, threads: int = 8) -> tuple[int, int, float]:
    """`requests` GETs spread round-robin over every tenant, `threads` at a time, for at most
    `seconds`; returns (sent, failed, seconds)."""
    lock = threading.Lock()
    counter = [0, 0]
    deadline = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if counter[0] >= requests:
                    return
                i = counter[0]
                counter[0] += 1
            status, _ = get(port, f"{names[i % len(names)]}.localhost", "/healthz/")
            if status != 200:
                with lock:
                    counter[1] += 1

    started = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return counter[0], counter[1], time.monotonic() - started


def memory_mib(project_name: str) -> dict[str, float]:
    """Memory of each of the project's containers (MiB), from one `docker stats` call."""
    ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project_name}"],
                         capture_output=True, text=True).stdout.split()
    out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *ids],
                         capture_output=True, text=True).stdout
    units = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
    result = {}
    for line in out.splitlines():
        name, usage = line.split(" ", 1)
        value, unit = re.match(r"([\d.]+)(\w+)", usage.split("/")[0].strip()).groups()
        result[name] = float(value) * units[unit]
    return result


def cpu_jiffies() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_ticks() -> dict[int, tuple[str, int]]:
    """CPU ticks of every process, its reaped children's included (short-lived PostgreSQL
    backends count towards the postmaster), by pid."""
    ticks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        ticks[int(entry)] = (name, sum(int(v) for v in fields[11:15]))
    return ticks


def idle_cores(seconds: float) -> tuple[float, list[tuple[str, float]]]:
    """Host CPU in use, in cores, averaged over `seconds` of doing nothing; and the programs
    that used it most (cores each)."""
    before = process_ticks()
    busy0, total0 = cpu_jiffies()
    time.sleep(seconds)
    busy1, total1 = cpu_jiffies()
    after = process_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    by_program: dict[str, float] = {}
    for pid, (name, ticks) in after.items():
        spent = ticks - before.get(pid, (name, 0))[1] if pid in before else ticks
        by_program[name] = by_program.get(name, 0.0) + spent / hz / seconds
    top = sorted(by_program.items(), key=lambda item: -item[1])[:6]
    return (busy1 - busy0) / (total1 - total0) * os.cpu_count(), top


def render_at_scale(count: int) -> tuple[float, float]:
    """`tenant render` of `count` tenant folders: the first (writes everything) and a repeat."""
    with tempfile.TemporaryDirectory(prefix="tkrender-") as tmp:
        root = write_project(Path(tmp), name="tkrender", networks={"pool": "10.192.0.0/12"})
        for i in range(count):
            folder = root / "tenants" / f"t{i:05d}"
            folder.mkdir(parents=True)
            (folder / "tenant.yaml").write_text(
                f"name: t{i:05d}\ntitle: Tenant {i}\nhosts: [t{i:05d}.localhost]\nport: {20000 + i}\n")
        first = timed(root, "render")
        again = statistics.median(timed(root, "render") for _ in range(3))
    return first, again


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--load-requests", type=int, default=6000)
    parser.add_argument("--render-tenants", type=int, default=10000)
    parser.add_argument("--keep", action="store_true", help="Leave the N-tenant stack running at the end.")
    args = parser.parse_args()
    lines = []

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    first, again = render_at_scale(args.render_tenants)
    say(f"tenant render, {args.render_tenants} tenant folders: {again:.2f} s unchanged (target <= 1.0 s); "
        f"{first:.1f} s the first time, writing every file")

    with bench_project("tkdensmall") as small, bench_project("tkdensity", keep=args.keep) as root:
        project_name = re.search(r"^name: (\S+)", (root / "tenantkit.yaml").read_text(), re.M).group(1)
        proxy_port = int(re.search(r"^proxy:\n(?:  .*\n)*?  port: (\d+)", (root / "tenantkit.yaml").read_text(),
                                   re.M).group(1))
        for name in ("m0", "m1", "m2"):
            cli(small, "new", name)
        cli(small, "up", "--all")
        names = [f"n{i:03d}" for i in range(args.tenants)]
        for name in names:
            cli(root, "new", name, "--title", name.upper())
        up_all = timed(root, "up", "--all")
        say(f"tenant up --all, {args.tenants} tenants: {up_all:.1f} s")
        failed = every_tenant_answers(proxy_port, names)
        say(f"one request to each of {args.tenants} tenants through the proxy: {failed} failed (target 0)")
        sent, load_failed, load_seconds = bounded_load(proxy_port, names, args.load_requests, 120)
        say(f"bounded load over all {args.tenants} tenants: {sent} requests in {load_seconds:.1f} s "
            f"({sent / load_seconds:.0f}/s), {load_failed} failed (target 0)")

        time.sleep(10)  # let the load's connections close
        memory = memory_mib(project_name)
        tenants_mib = [v for k, v in memory.items() if "-tenant-" in k]
        say(f"memory: {sum(memory.values()) / 1024:.2f} GiB in all ({len(memory)} containers); "
            f"per tenant median {statistics.median(tenants_mib):.1f} MiB, max {max(tenants_mib):.1f} MiB; "
            f"db {sum(v for k, v in memory.items() if k.endswith('-db-1')):.0f} MiB, "
            f"proxy {sum(v for k, v in memory.items() if k.endswith('-proxy-1')):.0f} MiB")
        cores, top = idle_cores(args.idle_seconds)
        say(f"idle host CPU with {args.tenants} tenants (and a 3-tenant project), over {args.idle_seconds:.0f} s: "
            f"{cores:.3f} cores (target <= 0.2); most: " + ", ".join(f"{name} {used:.3f}" for name, used in top))

        costs = command_costs({"small": (small, "m0"), "large": (root, names[0])})
        for key in COMMANDS:
            ratio = costs["large"][key] / costs["small"][key]
            target = " (target <= 1.2)" if key.endswith("ONE") else ""
            say(f"tenant {key}: {costs['large'][key]:.2f} s with {args.tenants} tenants, "
                f"{costs['small'][key]:.2f} s with 3 (same host, runs interleaved): ratio {ratio:.2f}{target}")
    print("\nsummary:\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

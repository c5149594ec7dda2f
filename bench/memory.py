"""Memory figures: what a tenant of the demo uses at rest and on a content-heavy page,
under a few memory limits, so the default limit and the guidance in docs/operations.md
come from a measurement (issue "Any Django project, any supported Python").

For each limit, a tenant with that limit (gunicorn: 1 worker, 4 threads, the defaults)
and NOTES notes (200 characters each) serves /notes/archive/, which renders all of them
on one page, ROUNDS times, 4 requests at a time. Printed per limit, from the cgroup as
`tenant status` reads it: memory at rest, peak, the page's size and median time, failed
requests and OOM kills. Target: the default limit serves the page with 0 failures and 0
kills, and leaves at least 25% of it above the peak.

    python bench/memory.py [--notes 20000] [--limits 128m,256m,384m,512m] [--rounds 3]
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import REPO, bench_project, cli

from tenantkit.model import load_project

DEFAULT = load_project(REPO).defaults.memory  # tenant_defaults.memory of tenantkit.yaml


def fetch(port: int, host: str, path: str) -> tuple[int, int, float]:
    started = time.monotonic()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        body = response.read()
        return response.status, len(body), time.monotonic() - started
    except OSError:
        return 0, 0, time.monotonic() - started


def memory_of(root, name: str) -> dict:
    row = json.loads(cli(root, "status", name, "--json"))[0]
    return row["memory"] or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notes", type=int, default=20000)
    parser.add_argument("--limits", default="128m,256m,384m,512m")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    limits = args.limits.split(",")
    with bench_project("tkmem") as root:
        names = {limit: f"m{limit}" for limit in limits}
        for limit, name in names.items():
            cli(root, "new", name, "--memory", limit)
        cli(root, "up", "--all")
        fill = (f"from notes.models import Note\nNote.objects.bulk_create("
                f"[Note(text=('note %d ' % i).ljust(200, 'x')) for i in range({args.notes})], batch_size=2000)\n")
        for name in names.values():
            subprocess.run([sys.executable, str(REPO / "tools" / "tenant"), "--project", str(root), "manage", name,
                            "--", "shell"], input=fill, text=True, capture_output=True, check=True)
        cli(root, "up", "--all")  # fresh containers: the peak counts from here
        for name in names.values():
            cli(root, "down", name)
            cli(root, "up", name)
        port = int(json.loads(cli(root, "list", "--json"))[0]["url"].rsplit(":", 1)[1].strip("/"))
        print(f"content-heavy page: /notes/archive/ with {args.notes} notes, {args.rounds} rounds of 4 "
              "concurrent requests; gunicorn 1 worker, 4 threads")
        print(f"{'LIMIT':>6} {'AT REST':>8} {'PEAK':>8} {'PAGE':>8} {'MEDIAN':>8} {'FAILED':>7} {'OOM KILLS':>9}")
        results = {}
        for limit, name in names.items():
            time.sleep(2)
            rest = memory_of(root, name).get("used_mib")
            with ThreadPoolExecutor(4) as pool:
                runs = list(pool.map(lambda _: fetch(port, f"{name}.localhost", "/notes/archive/"),
                                     range(4 * args.rounds)))
            time.sleep(1)
            after = memory_of(root, name)
            ok = [r for r in runs if r[0] == 200]
            results[limit] = (len(runs) - len(ok), after.get("oom_kills"), after.get("peak_mib"))
            size = f"{max(r[1] for r in ok) / 2**20:.1f}MiB" if ok else "-"
            median = f"{statistics.median(r[2] for r in ok):.2f}s" if ok else "-"
            print(f"{limit:>6} {rest:>6.0f}Mi {after.get('peak_mib') or 0:>6.0f}Mi {size:>8} {median:>8} "
                  f"{len(runs) - len(ok):>7} {after.get('oom_kills')!s:>9}")
        failed, kills, peak = results.get(DEFAULT, (None, None, None))
        if failed is not None:
            limit_mib = int(DEFAULT[:-1]) * (1024 if DEFAULT.endswith("g") else 1)
            headroom = 1 - (peak or 0) / limit_mib
            verdict = "met" if failed == 0 and not kills and headroom >= 0.25 else "MISSED"
            print(f"\ndefault {DEFAULT}: {failed} failed, {kills} OOM kills, {headroom:.0%} above the peak "
                  f"(target: 0, 0, >= 25%): {verdict}")


if __name__ == "__main__":
    main()

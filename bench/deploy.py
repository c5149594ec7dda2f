"""Deploy figures: deploying a release over N tenants, without and with a migration, under load.

Targets (issue 10): a deploy to 10 tenants, 2 at a time, in at most 15 s (1.5 s per
tenant for other counts), at most 3 s per tenant (median), and zero failed requests. A
bounded request loop (through the proxy, one tenant per request in turn) runs for the
whole of each deploy; any answer but 200, and any connection error, is a failure.

The project's source is a copy of the demo, so the bench can change it. Release 1 is
deployed first, unmeasured. Then two measured deploys:
  (a) release 2: the same code, no migrations;
  (b) release 3: the code with one new migration (a nullable field on notes.Note).
After each, the floor in the same run: `tenant up` of one stopped tenant.

    python bench/deploy.py [--tenants 10] [--jobs 2] [--floor-runs 3]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import re
import statistics
import threading
import time
from pathlib import Path

from common import bench_project, cli, tenant_cli, timed
from tenantkit.model import load_project

TARGET_PER_10 = 15.0  # seconds for a deploy to 10 tenants
TARGET_PER_TENANT = 3.0  # median seconds per tenant
MAX_REQUESTS, MAX_SECONDS = 200000, 600  # the request loop's bounds

FIELD = "bench_tag"


@contextlib.contextmanager
def request_loop(proxy_port: int, names: list[str]):
    """Requests through the proxy, one tenant after the other, until the block ends (or the
    bounds are reached); yields the list of their outcomes (a status, or an error's name)."""
    outcomes: list = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        deadline = time.monotonic() + MAX_SECONDS
        while not stop.is_set() and len(outcomes) < MAX_REQUESTS and time.monotonic() < deadline:
            host = f"{names[i % len(names)]}.localhost"
            i += 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
                try:
                    conn.request("GET", "/healthz/", headers={"Host": host})
                    response = conn.getresponse()
                    response.read()
                    outcomes.append(response.status)
                finally:
                    conn.close()
            except OSError as exc:
                outcomes.append(type(exc).__name__)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        thread.join()


def measured_deploy(root: Path, version: str, names: list[str], jobs: int, proxy_port: int) -> dict:
    """`tenant deploy VERSION` under the request loop; its outcomes, seconds and requests."""
    with request_loop(proxy_port, names) as requests:
        started = time.monotonic()
        run = tenant_cli(root, "deploy", version, "--jobs", str(jobs), "--json")
        elapsed = time.monotonic() - started
    try:
        outcomes = json.loads(run.out)
    except ValueError:
        raise SystemExit(f"tenant deploy {version} failed (exit {run.code}):\n{run.err}") from None
    return {"version": version, "seconds": elapsed, "outcomes": outcomes, "requests": list(requests),
            "exit": run.code, "err": run.err}


def floor_up(root: Path, name: str, runs: int) -> list[float]:
    """`tenant up` of one stopped tenant (its container start and checks), `runs` times."""
    seconds = []
    for _ in range(runs):
        cli(root, "down", name)
        seconds.append(timed(root, "up", name)[0])
    return seconds


def add_migration(source: Path) -> str:
    """Add a nullable field to notes.Note, with its migration; return the migration's name."""
    models = source / "notes" / "models.py"
    text = models.read_text()
    anchor = "    text = models.CharField(max_length=200)\n"
    if anchor not in text:
        raise SystemExit(f"cannot add a field: {models} no longer declares Note.text as expected")
    models.write_text(text.replace(anchor, anchor + f"    {FIELD} = models.CharField(max_length=40, null=True, "
                                                       "blank=True)\n", 1))
    folder = source / "notes" / "migrations"
    latest = max(p.stem for p in folder.glob("[0-9][0-9][0-9][0-9]_*.py"))
    name = f"{int(latest[:4]) + 1:04d}_note_{FIELD}"
    (folder / f"{name}.py").write_text(
        "from django.db import migrations, models\n\n\n"
        "class Migration(migrations.Migration):\n"
        f"    dependencies = [('notes', '{latest}')]\n\n"
        "    operations = [\n"
        f"        migrations.AddField(model_name='note', name='{FIELD}',\n"
        "                            field=models.CharField(max_length=40, null=True, blank=True)),\n"
        "    ]\n")
    return name


def report(label: str, result: dict, floor: list[float], tenants: int, jobs: int) -> None:
    outcomes = result["outcomes"]
    per_tenant = [o["seconds"] for o in outcomes if o["result"] != "up-to-date"] or [0.0]
    results = collections.Counter(o["result"] for o in outcomes)
    target_total = TARGET_PER_10 * tenants / 10
    requests = result["requests"]
    failed = collections.Counter(str(s) for s in requests if s != 200)
    median = statistics.median(per_tenant)

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "OVER target"

    print(f"deploy of release {result['version']} ({label}) to {tenants} tenants, {jobs} at a time: "
          f"{result['seconds']:.1f} s in all (target <= {target_total:g} s"
          f"{'' if tenants == 10 else ' (15 s for 10)'}, {verdict(result['seconds'] <= target_total)}); "
          f"results: {', '.join(f'{n} {r}' for r, n in sorted(results.items()))}")
    print(f"  per tenant: median {median:.2f} s (min {min(per_tenant):.2f}, max {max(per_tenant):.2f}; "
          f"target <= {TARGET_PER_TENANT:g} s, {verdict(median <= TARGET_PER_TENANT)}; "
          f"floor: `tenant up` of one stopped tenant median {statistics.median(floor):.2f} s, "
          f"{', '.join(f'{s:.2f}' for s in floor)} in turn)")
    print(f"  requests during the deploy: {len(requests)}, failed: {sum(failed.values())} (target 0"
          f"{', meets target' if not failed else ': ' + ', '.join(f'{n} x {s}' for s, n in failed.most_common())})")
    if result["exit"] != 0:
        print(f"  the deploy exited {result['exit']}: {result['err'].strip().splitlines()[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--floor-runs", type=int, default=3, help="times the floor is measured after each deploy")
    args = parser.parse_args()
    with bench_project("tkdeploy", demo_copy=True) as root:
        project = load_project(root)
        names = [f"d{i:02d}" for i in range(args.tenants)]
        for name in names:
            cli(root, "new", name)
        cli(root, "up", "--all")
        cli(root, "release", "build", "1")
        cli(root, "deploy", "1", "--jobs", str(args.jobs))

        # (a) The same code under a new tag: no migration to run.
        cli(root, "release", "build", "2")
        same = measured_deploy(root, "2", names, args.jobs, project.proxy.port)
        same_floor = floor_up(root, names[0], args.floor_runs)

        # (b) One new migration.
        migration = add_migration(project.source)
        cli(root, "release", "build", "3")
        migrating = measured_deploy(root, "3", names, args.jobs, project.proxy.port)
        migrating_floor = floor_up(root, names[-1], args.floor_runs)
        shown = cli(root, "manage", names[-1], "--", "showmigrations", "notes")
        applied = re.search(rf"\[X\] {migration}$", shown, re.M) is not None

    report("same code, no migrations", same, same_floor, args.tenants, args.jobs)
    report(f"one new migration, {migration}", migrating, migrating_floor, args.tenants, args.jobs)
    if not applied:
        print(f"  WARNING: {migration} is not applied in tenant {names[-1]} after the deploy:\n{shown}")


if __name__ == "__main__":
    main()

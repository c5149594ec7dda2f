"""Scheduled commands at fleet size: what a schedule costs each idle tenant, and a run.

Prints, each beside its target (issue "Production essentials per tenant"):
  - idle memory per tenant, N tenants without a schedule, then the same N with one each
    (a daily `clearsessions`, so none runs while measured); the difference, the
    scheduler's own memory shared among them included (target: at most 5 MiB more);
  - the scheduler's own memory (one container for the whole installation);
  - a seconds-level job in one tenant: how long its runs take (a one-off container made
    like the tenant's, start to exit), and that they run at the second they are due.

    python bench/schedule.py [--tenants 50] [--settle 20]

Run it alone on the machine: memory and timings are the whole engine's.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import yaml
from common import bench_project, cli, project_name
from density import memory_mib

TARGET_EXTRA_MIB = 5.0


def tenants_memory(name: str, tenants: list[str]) -> tuple[float, float]:
    """Total MiB of the tenants' web containers, and the scheduler's (0 when there is none),
    each the median of three readings a few seconds apart."""
    totals, schedulers = [], []
    for _ in range(3):
        found = memory_mib(name)
        totals.append(sum(mib for container, mib in found.items()
                          if any(container == f"{name}-tenant-{t}-1" for t in tenants)))
        schedulers.append(sum(mib for container, mib in found.items() if container == f"{name}-scheduler-1"))
        time.sleep(3)
    return statistics.median(totals), statistics.median(schedulers)


def set_defaults(root: Path, **values) -> None:
    path = root / "tenantkit.yaml"
    config = yaml.safe_load(path.read_text())
    config["tenant_defaults"].update(values)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def runs(root: Path, tenant: str) -> list[dict]:
    path = root / ".tenantkit" / "logs" / f"{tenant}.schedule.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--settle", type=float, default=20, help="seconds to wait before measuring memory")
    args = parser.parse_args()
    names = [f"t{i:03d}" for i in range(args.tenants)]
    with bench_project("tkbsched", tenant_defaults__memory="256m") as root:
        name = project_name(root)
        for tenant in names:
            cli(root, "new", tenant)
        started = time.monotonic()
        cli(root, "up", "--all")
        print(f"{args.tenants} tenants up in {time.monotonic() - started:.0f}s")
        time.sleep(args.settle)
        without, _ = tenants_memory(name, names)

        set_defaults(root, schedule=[{"cron": "0 3 * * *", "command": "clearsessions"}])
        started = time.monotonic()
        cli(root, "up", "--all")
        print(f"schedules added, `up --all` in {time.monotonic() - started:.0f}s (builds and starts the scheduler)")
        time.sleep(args.settle)
        with_schedule, scheduler = tenants_memory(name, names)
        extra = (with_schedule + scheduler - without) / args.tenants

        # One tenant with a job every 5 seconds: how long each run takes, and when it starts.
        one = names[0]
        tenant_yaml = root / "tenants" / one / "tenant.yaml"
        data = yaml.safe_load(tenant_yaml.read_text())
        data["schedule"] = [{"cron": "* * * * * */5", "command": "check"}]
        tenant_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
        cli(root, "render")  # the scheduler re-reads the schedule: no restart
        deadline = time.monotonic() + 60
        done: list[dict] = []
        while time.monotonic() < deadline and len(done) < 6:
            time.sleep(2)
            done = [r for r in runs(root, one) if r["command"] == "check" and r["status"] == "ok"]

    def seconds(record: dict) -> float:
        return (dt.datetime.fromisoformat(record["end"]) - dt.datetime.fromisoformat(record["start"])).total_seconds()

    print()
    print(f"{'measure':58} {'figure':>12} {'target':>12}")
    print(f"{'idle memory per tenant, without a schedule':58} {without / args.tenants:>9.1f}MiB {'':>12}")
    print(f"{'idle memory per tenant, with one (scheduler shared)':58} "
          f"{(with_schedule + scheduler) / args.tenants:>9.1f}MiB {'':>12}")
    print(f"{'  difference per tenant':58} {extra:>+9.2f}MiB {f'<= {TARGET_EXTRA_MIB:.0f}MiB':>12}  "
          f"{'met' if extra <= TARGET_EXTRA_MIB else 'MISSED'}")
    print(f"{'the scheduler itself, for all ' + str(args.tenants) + ' tenants':58} {scheduler:>9.1f}MiB")
    if done:
        durations = [seconds(r) for r in done]
        late = [int(r["start"][17:19]) % 5 for r in done]
        print(f"{'a job run (one-off container, `manage.py check`), median':58} {statistics.median(durations):>10.1f}s")
        print(f"{'runs started on their 5-second mark':58} {sum(1 for s in late if s <= 1):>8}/{len(done):<3}")
    else:
        print("no run of the seconds-level job was logged within 60 s")


if __name__ == "__main__":
    main()

"""Work across many tenants: migrations and management commands, in a bounded pool.

Each tenant's output is kept in .tenantkit/runs/<time>-<verb>/<tenant>.log; one tenant's
failure neither stops nor touches the others, and the result names every failure.
"""
from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from . import lifecycle
from .act import database, engine
from .act.migrations import graph_key, in_tenant, migration_graphs, needs_migrate, runs_current_image
from .act.files import locked
from .model import Project, Tenant, load_tenants

Report = lifecycle.Report


@dataclass(frozen=True)
class Outcome:
    tenant: str
    result: str  # ok, failed, up-to-date
    seconds: float
    output: str = ""
    exit_code: int = 0

    @property
    def failed(self) -> bool:
        return self.result == "failed"

    def to_dict(self) -> dict:
        return {"tenant": self.tenant, "result": self.result, "seconds": round(self.seconds, 3),
                "exit_code": self.exit_code}


def run_dir(project: Project, verb: str) -> Path:
    folder = project.state_dir / "runs" / f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}-{verb}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def across(tenants: list[Tenant], work: Callable[[Tenant], Outcome], jobs: int, folder: Path,
           report: Report) -> list[Outcome]:
    """Run `work` for each tenant, at most `jobs` at a time; report progress, keep outputs."""
    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(work, tenant): tenant for tenant in tenants}
        for future in as_completed(futures):
            tenant = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # one tenant's failure must not stop the others
                outcome = Outcome(tenant.name, "failed", 0.0, f"{type(exc).__name__}: {exc}", 1)
            (folder / f"{tenant.name}.log").write_text(outcome.output)
            outcomes.append(outcome)
            report(f"[{len(outcomes)}/{len(tenants)}] {tenant.name}: {outcome.result} ({outcome.seconds:.2f}s)")
    order = {t.name: i for i, t in enumerate(tenants)}
    return sorted(outcomes, key=lambda o: order[o.tenant])


def migrate(project: Project, names: Iterable[str] = (), all_: bool = False, jobs: int = 4,
            report: Report = lifecycle._quiet) -> tuple[list[Outcome], Path]:
    """Bring tenants' databases up to the current release; migrate only where work is pending."""
    lifecycle.select(load_tenants(project), names, all_)
    client = engine.connect()
    with locked(project):
        rendered = lifecycle._render_locked(project)
        chosen = lifecycle.select(rendered.tenants, names, all_)
        lifecycle._ensure_images(client, project, rendered, report)
        lifecycle._start_database(client, project, chosen, report)
        lifecycle._provision(project, chosen, lambda message: None)
        states = engine.service_states(client, project)
        graphs = migration_graphs(project, chosen, states, rendered.images)
        folder = run_dir(project, "migrate")

        def work(tenant: Tenant) -> Outcome:
            started = time.monotonic()
            if not needs_migrate(graphs[graph_key(tenant, rendered.images)],
                                 database.applied_migrations(project, tenant.names)):
                return Outcome(tenant.name, "up-to-date", time.monotonic() - started)
            code, output = in_tenant(project, tenant, ["python", "manage.py", "migrate", "--noinput"],
                                     runs_current_image(states, tenant, rendered.images[tenant.name]))
            return Outcome(tenant.name, "ok" if code == 0 else "failed", time.monotonic() - started, output, code)

        return across(chosen, work, jobs, folder, report), folder


def manage_all(project: Project, args: list[str], jobs: int = 4,
               report: Report = lifecycle._quiet) -> tuple[list[Outcome], Path]:
    """Run `manage.py ARGS` for every enabled tenant, at most `jobs` at a time."""
    client = engine.connect()
    with locked(project):
        rendered = lifecycle._render_locked(project)
        lifecycle._ensure_images(client, project, rendered, lambda message: None)
        lifecycle._start_database(client, project, rendered.tenants, lambda message: None)
        lifecycle._provision(project, rendered.tenants, lambda message: None)
    states = engine.service_states(client, project)
    folder = run_dir(project, "manage")

    def work(tenant: Tenant) -> Outcome:
        started = time.monotonic()
        code, output = in_tenant(project, tenant, ["python", "manage.py", *args],
                                 runs_current_image(states, tenant, rendered.images[tenant.name]))
        return Outcome(tenant.name, "ok" if code == 0 else "failed", time.monotonic() - started, output, code)

    return across(rendered.tenants, work, jobs, folder, report), folder

"""Work across many tenants: migrations and management commands, in a bounded pool.

Each tenant's output is kept in .tenantkit/runs/<time>-<verb>/<tenant>.log, readable by
the owner only (it can hold secrets: `manage --all -- diffsettings`); one tenant's failure
neither stops nor touches the others, and the result names every failure.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..act import engine, migrations
from ..act.files import locked
from ..act.migrations import MIGRATE, in_tenant, runs_current_image
from ..model import Project, Tenant, load_tenants
from ..progress import track
from . import stack

Report = stack.Report


@dataclass(frozen=True)
class Outcome:
    tenant: str
    result: str  # ok, failed, up-to-date, skipped
    seconds: float
    output: str = ""
    exit_code: int = 0
    # Failed for a reason of the tenant's own (its settings do not load) before anything
    # changed: the others go on, whatever --keep-going says.
    contained: bool = False

    @property
    def failed(self) -> bool:
        return self.result == "failed"

    def to_dict(self) -> dict:
        return {"tenant": self.tenant, "result": self.result, "seconds": round(self.seconds, 3),
                "exit_code": self.exit_code}


def bounded(tenants: list[Tenant], work: Callable[[Tenant], Any], jobs: int, keep_going: bool = True,
            done: Callable[[Tenant, Any, BaseException | None], None] = lambda t, r, e: None,
            ) -> dict[str, tuple[Any, BaseException | None]]:
    """The one pool runner: `work` for each tenant, at most `jobs` at a time.

    Returns (result, error) by tenant name; after a failure (an exception, or a result
    whose `failed` is true) no more tenants start unless keep_going, and those that did
    not start are absent from the result.
    """
    results: dict[str, tuple[Any, BaseException | None]] = {}
    queue = list(tenants)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        running: dict = {}
        while queue or running:
            stop = not keep_going and any(error or (getattr(result, "failed", False)
                                                    and not getattr(result, "contained", False))
                                          for result, error in results.values())
            while queue and len(running) < jobs and not stop:
                tenant = queue.pop(0)
                running[pool.submit(work, tenant)] = tenant
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                tenant = running.pop(future)
                try:
                    results[tenant.name] = (future.result(), None)
                except Exception as exc:  # one tenant's failure must not stop the others
                    results[tenant.name] = (None, exc)
                done(tenant, *results[tenant.name])
    return results


def run_each(tenants: list[Tenant], work: Callable[[Tenant], None], jobs: int) -> dict[Tenant, Exception]:
    """`work` for every tenant, `jobs` at a time; the tenants that raised, with their errors."""
    results = bounded(tenants, work, jobs)
    return {t: results[t.name][1] for t in tenants if results[t.name][1] is not None}


def run_dir(project: Project, verb: str) -> Path:
    """A new folder for one run's logs, private to the owner (as is runs/ above it)."""
    runs = project.state_dir / "runs"
    folder = runs / f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}-{verb}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(runs, 0o700)  # mkdir gives parents the default mode, and runs/ may predate this rule
    return folder


def keep_output(folder: Path, outcome: Outcome) -> None:
    """One tenant's output in the run's folder. Created 0600 (a fresh file in a fresh
    folder); no fsync, a log is not state."""
    fd = os.open(folder / f"{outcome.tenant}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as log:
        log.write(outcome.output)


def across(tenants: list[Tenant], work: Callable[[Tenant], Outcome], jobs: int, folder: Path | None,
           report: Report, keep_going: bool = True, verb: str = "working") -> list[Outcome]:
    """Run `work` for each tenant, at most `jobs` at a time; show progress, keep outputs."""
    with track(verb, len(tenants), report) as progress:

        def done(tenant: Tenant, outcome: Outcome | None, error: BaseException | None) -> None:
            if outcome is None:
                outcome = Outcome(tenant.name, "failed", 0.0, f"{type(error).__name__}: {error}", 1)
            if folder is not None:
                keep_output(folder, outcome)
            progress.advance(tenant.name, outcome.result, outcome.seconds, outcome.failed)

        results = bounded(tenants, work, jobs, keep_going, done)
    outcomes = []
    for tenant in tenants:
        if tenant.name not in results:
            outcomes.append(Outcome(tenant.name, "skipped", 0.0, "not started: an earlier tenant failed"))
            continue
        outcome, error = results[tenant.name]
        outcomes.append(outcome if error is None else
                        Outcome(tenant.name, "failed", 0.0, f"{type(error).__name__}: {error}", 1))
    return outcomes


def migrate(project: Project, names: Iterable[str] = (), all_: bool = False, jobs: int = 4,
            report: Report = stack.quiet) -> tuple[list[Outcome], Path | None]:
    """Bring tenants' databases up to the current release; migrate only where work is pending.

    One pass reads every chosen database's django_migrations at once and compares it with
    its image's (cached) graph. When nothing is pending, that is all: no network, container,
    provisioning or log file per tenant. The tenants with work (a missing database or table,
    a pending migration) go the full way, and the run's log folder (None when there was no
    work) holds their outputs.
    """
    stack.select(load_tenants(project), names, all_)
    client = engine.connect()
    with locked(project):
        rendered = stack.render(project, None if all_ else names, keep_going=True)
        chosen = stack.select(rendered.tenants, names, all_)
        unbuilt = stack.unbuilt(client, project, rendered, chosen)
        stack.ensure_images(client, project, rendered, report, names=[t.name for t in chosen if t.name not in unbuilt])
        found = engine.containers(client, project)
        checked = [t for t in chosen if t.name not in rendered.rejected and t.name not in unbuilt]
        candidates, broken = migrations.pending_of(project, client, checked, found, rendered.images,
                                                   migrations.applied_by_tenant(project, checked))
        broken.update(rendered.rejected)
        broken.update(unbuilt)
        pending = []
        if candidates:
            pending, later = _prepare(client, project, candidates, found, rendered, report)
            broken.update(later)
        report(work_summary(chosen, pending, broken))
        if not pending and not broken:
            return [Outcome(t.name, "up-to-date", 0.0) for t in chosen], None
        folder = run_dir(project, "migrate")
        failed = [Outcome(name, "failed", 0.0, problem, 1) for name, problem in broken.items()]
        for outcome in failed:
            report(f"{outcome.tenant}: FAILED: {outcome.output.splitlines()[0]}")
            keep_output(folder, outcome)

        def work(tenant: Tenant) -> Outcome:
            started = time.monotonic()
            code, output = in_tenant(project, tenant, MIGRATE,
                                     runs_current_image(found, tenant, rendered.images[tenant.name]))
            return Outcome(tenant.name, "ok" if code == 0 else "failed", time.monotonic() - started, output, code)

        done = {o.tenant: o for o in [*failed, *across(pending, work, jobs, folder, report, verb="migrating")]}
        return [done.get(t.name) or Outcome(t.name, "up-to-date", 0.0) for t in chosen], folder


def _prepare(client, project: Project, candidates: list[Tenant], found: dict, rendered: stack.Rendered,
             report: Report) -> tuple[list[Tenant], dict[str, str]]:
    """Start the database for the tenants that may have work and provision theirs; return
    those that still have work: asked again, since the first look cannot see into a
    database on a server that was down (a stopped compose db: every tenant looks new)."""
    stack.start_database(client, project, candidates, report)
    # A database made now is a copy of its release's template where there is one: up to date.
    stack.provision(project, candidates, report, stack.template_keys(client, project, candidates, rendered.images))
    return migrations.pending_of(project, client, candidates, found, rendered.images,
                                 migrations.applied_by_tenant(project, candidates))


def work_summary(chosen: list[Tenant], pending: list[Tenant], broken: dict[str, str] | None = None) -> str:
    """The line saying how many tenants were up to date, which ones had work, and which
    could not be checked."""
    broken = broken or {}
    line = f"{len(chosen) - len(pending) - len(broken)} of {len(chosen)} tenants up to date"
    line += f"; migrating {', '.join(t.name for t in pending)}" if pending else ""
    return line + (f"; settings do not load: {', '.join(broken)}" if broken else "")


def manage_all(project: Project, args: list[str], jobs: int = 4, report: Report = stack.quiet,
               env: dict[str, str] | None = None) -> tuple[list[Outcome], Path]:
    """Run `manage.py ARGS` for every enabled tenant, at most `jobs` at a time (`env`:
    variables added to each command's environment)."""
    client = engine.connect()
    with locked(project):
        rendered = stack.render(project, keep_going=True)
        unbuilt = stack.unbuilt(client, project, rendered, rendered.tenants)
        stack.ensure_images(client, project, rendered, names=[t.name for t in rendered.tenants if t.name not in unbuilt])
        runnable = [t for t in rendered.tenants if t.name not in rendered.rejected and t.name not in unbuilt]
        stack.start_database(client, project, runnable)
        stack.provision(project, runnable)
    found = engine.containers(client, project)
    folder = run_dir(project, "manage")
    refused = [Outcome(name, "failed", 0.0, problem if name in unbuilt else f"tenant {name}: {problem}", 1)
               for name, problem in {**rendered.rejected, **unbuilt}.items()]
    for outcome in refused:
        keep_output(folder, outcome)

    def work(tenant: Tenant) -> Outcome:
        started = time.monotonic()
        code, output = in_tenant(project, tenant, ["python", "manage.py", *args],
                                 runs_current_image(found, tenant, rendered.images[tenant.name]), env)
        return Outcome(tenant.name, "ok" if code == 0 else "failed", time.monotonic() - started, output, code)

    ran = across(runnable, work, jobs, folder, report,
                 verb=f"manage.py {args[0] if args else ''}".strip())
    return refused + ran, folder

"""Releases: build immutable images, deploy them tenant by tenant without downtime, roll back.

A deploy of one tenant: back up its database; migrate with the new image; start a
"next" container of the new release beside the running one (no published port); when it
is healthy, point the tenant's vhost at it and reload Apache gracefully; recreate the
tenant's own container on the new release; point the vhost back and remove "next".
Requests keep being answered by one container or the other throughout.
"""
from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterable

import filelock

from . import backups, lifecycle
from .act import archive, database, engine, health, migrations, proxy
from .act import build as builder
from .act.engine import OperationFailed, tail
from .act.files import locked
from .act.releases import load_state, release_image, save_state
from .act.secrets import read_env_file
from .fleet import Outcome
from .model import ConfigError, Project, Tenant, check_release, load_tenants

Report = lifecycle.Report
NEXT_HEALTH_TIMEOUT = 90.0


def _version(version: str) -> str:
    try:
        return check_release(version)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def git_revision(folder: Path) -> str | None:
    """The source's git commit (with -dirty for uncommitted changes), when it is a checkout."""
    head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "."],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def build_release(project: Project, version: str, force: bool = False, report: Report = lifecycle._quiet) -> dict:
    """Build the image of the project's current code and tag it as an immutable release."""
    version = _version(version)
    state = load_state(project)
    if version in state.releases and not force:
        raise ConfigError(f"release {version} exists and releases are immutable; choose a new version "
                          "(or pass --force to rebuild it)")
    client = engine.connect()
    with locked(project):
        context = builder.build_context(project, project.images.base)
        tag = builder.image_tag(project, context)
        if not builder.image_is_current(client, tag, context):
            report(f"building {tag}")
            builder.build_image(client, context, tag, project.images.base, {"SETTINGS_MODULE": project.settings},
                                on_step=lambda step: report(f"  {step}"))
        client.images.get(tag).tag(project.images.app, version)
        state = load_state(project)
        record = {"image": release_image(project, version), "digest": context.digest,
                  "revision": git_revision(project.source),
                  "built": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        state.releases[version] = record
        save_state(project, state)
    return {"version": version, **record}


def list_releases(project: Project) -> list[dict]:
    """Every release, whether it is current, and the tenants that run it."""
    state = load_state(project)
    tenants = [t for t in load_tenants(project) if t.enabled]
    rows = []
    for version, record in sorted(state.releases.items(), key=lambda item: item[1].get("built", "")):
        rows.append({"version": version, "current": version == state.current, **record,
                     "tenants": [t.name for t in tenants if not project.dev and state.release_of(t) == version]})
    return rows


def _deploy_lock(project: Project):
    project.state_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(project.state_dir / "deploy.lock"), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ConfigError("another deploy or rollback is running (it holds .tenantkit/deploy.lock); "
                          "wait for it to finish") from None
    return lock


def _set_tenant_release(project: Project, tenant: Tenant, entry: dict | None) -> None:
    """Record (or forget) what a tenant runs, and render the stack for it."""
    with locked(project):
        state = load_state(project)
        if entry is None:
            state.tenants.pop(tenant.name, None)
        else:
            state.tenants[tenant.name] = entry
        save_state(project, state)
        lifecycle._render_locked(project)


def _switch_with_next(client, project: Project, tenant: Tenant, report: Report) -> None:
    """Serve the tenant from a new container of its (already rendered) release without a gap."""
    # A container name Apache can use as a host name: no underscores.
    next_name = f"{project.name}-{tenant.name}-next".replace("_", "-")
    subprocess.run(["docker", "rm", "-f", next_name], capture_output=True)
    engine.compose(project, "run", "-d", "--no-deps", "--name", next_name, tenant.names.service)
    container = client.containers.get(next_name)
    try:
        deadline = time.monotonic() + NEXT_HEALTH_TIMEOUT
        while True:
            container.reload()
            if container.status != "running":
                raise OperationFailed(f"the new container stopped: {tail(container.logs(tail=15).decode(errors='replace'))}")
            code, _ = container.exec_run(["/opt/venv/bin/python", "/opt/tenantkit/healthcheck.py"])
            if code == 0:
                break
            if time.monotonic() > deadline:
                raise OperationFailed(f"the new container did not become healthy within {NEXT_HEALTH_TIMEOUT:.0f}s")
            time.sleep(0.2)
        report(f"{tenant.name}: new release healthy; switching traffic")
        with locked(project):
            lifecycle.NEXT_BACKENDS[tenant.name] = f"http://{next_name}:8000"
            rendered = lifecycle._render_locked(project)
            proxy.sync(client, project, rendered.tenants, force=True)
        health.wait_routed(project, [tenant])
        engine.compose(project, "up", "-d", "--no-deps", tenant.names.service)  # the old one stops here
        health.wait_healthy(client, project, [tenant])
        with locked(project):
            lifecycle.NEXT_BACKENDS.pop(tenant.name, None)
            rendered = lifecycle._render_locked(project)
            proxy.sync(client, project, rendered.tenants, force=True)
        health.wait_routed(project, [tenant])
    finally:
        if lifecycle.NEXT_BACKENDS.pop(tenant.name, None):  # failed while switched: route back first
            with locked(project):
                rendered = lifecycle._render_locked(project)
                proxy.sync(client, project, rendered.tenants, force=True)
        try:
            container.stop(timeout=20)  # requests still in flight on it complete
        finally:
            container.remove(force=True)


def _recreate(client, project: Project, tenant: Tenant) -> None:
    """Recreate the tenant's container on its recorded release, wait, and route to it again."""
    engine.compose(project, "up", "-d", "--no-deps", tenant.names.service)
    health.wait_healthy(client, project, [tenant])
    with locked(project):
        rendered = lifecycle._render_locked(project)
    proxy.sync(client, project, rendered.tenants, force=True)
    health.wait_routed(project, [tenant])


def _start_on_release(client, project: Project, tenant: Tenant, running: bool, report: Report) -> None:
    if running and project.proxy.mode == "compose":
        _switch_with_next(client, project, tenant, report)
    else:
        _recreate(client, project, tenant)


def _deploy_one(client, project: Project, tenant: Tenant, version: str, report: Report) -> Outcome:
    started = time.monotonic()
    state = load_state(project)
    before = state.tenants.get(tenant.name)
    previous = state.release_of(tenant)
    if previous == version:
        return Outcome(tenant.name, "up-to-date", 0.0)
    running = engine.service_states(client, project).get(tenant.names.service, engine.ABSENT).state == "running"
    report(f"{tenant.name}: backing up before migrating")
    saved = backups.write_backup(project, tenant, secrets=False)
    _set_tenant_release(project, tenant, {"release": version, "previous": previous, "backup": str(saved)})
    try:
        code, output = migrations.in_tenant(project, tenant, ["python", "manage.py", "migrate", "--noinput"], False)
        if code != 0:
            raise OperationFailed(f"migrate failed:\n{tail(output)}")
        _start_on_release(client, project, tenant, running, report)
    except Exception as exc:
        report(f"{tenant.name}: FAILED, staying on {previous or 'its previous image'}")
        _set_tenant_release(project, tenant, before)
        if not running:
            engine.compose(project, "rm", "-f", "-s", tenant.names.service, check=False)
        else:
            engine.compose(project, "up", "-d", "--no-deps", tenant.names.service, check=False)
            with locked(project):
                rendered = lifecycle._render_locked(project)
            proxy.sync(client, project, rendered.tenants, force=True)
        return Outcome(tenant.name, "failed", time.monotonic() - started, str(exc), 1)
    return Outcome(tenant.name, "ok", time.monotonic() - started, f"deployed {version} (from {previous}); backup {saved}")


def deploy(project: Project, version: str, names: Iterable[str] = (), keep_going: bool = False, jobs: int = 2,
           report: Report = lifecycle._quiet) -> list[Outcome]:
    """Deploy a release to tenants (all, except pinned ones, by default), `jobs` at a time."""
    version = _version(version)
    names = list(names)
    state = load_state(project)
    if version not in state.releases:
        known = ", ".join(sorted(state.releases)) or "none yet"
        raise ConfigError(f"unknown release {version!r} (releases: {known}); build it with `tenant release build {version}`")
    tenants = [t for t in load_tenants(project) if t.enabled]
    chosen = lifecycle.select(tenants, names, not names) if names else [t for t in tenants if not t.release]
    lock = _deploy_lock(project)
    try:
        client = engine.connect()
        if not builder.image_exists(client, release_image(project, version)):
            raise ConfigError(f"the image of release {version} is missing; rebuild it with "
                              f"`tenant release build {version} --force`")
        builder.extract_assets(client, release_image(project, version), project.assets_dir / version)
        for tenant in chosen:
            if tenant.release and tenant.release != version:  # named explicitly: move its pin
                lifecycle.write_tenant_yaml(Tenant(**{**tenant.__dict__, "release": version}))
        outcomes = _run(chosen, lambda t: _deploy_one(client, project, t, version, report), jobs, keep_going, report)
        if not names and not any(o.failed for o in outcomes):
            with locked(project):
                state = load_state(project)
                state.current = version
                save_state(project, state)
                lifecycle._render_locked(project)
        return outcomes
    finally:
        lock.release()


def _run(tenants: list[Tenant], work, jobs: int, keep_going: bool, report: Report) -> list[Outcome]:
    """Work through tenants, `jobs` at a time; after a failure start no more unless keep_going."""
    outcomes: dict[str, Outcome] = {}
    queue = list(tenants)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        running = {}
        while queue or running:
            stop = any(o.failed for o in outcomes.values()) and not keep_going
            while queue and len(running) < jobs and not stop:
                tenant = queue.pop(0)
                running[pool.submit(work, tenant)] = tenant
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                tenant = running.pop(future)
                try:
                    outcomes[tenant.name] = future.result()
                except Exception as exc:
                    outcomes[tenant.name] = Outcome(tenant.name, "failed", 0.0, f"{type(exc).__name__}: {exc}", 1)
                report(f"{tenant.name}: {outcomes[tenant.name].result}")
    for tenant in queue:
        outcomes[tenant.name] = Outcome(tenant.name, "skipped", 0.0, "not started: an earlier tenant failed", 0)
    return [outcomes[t.name] for t in tenants]


# ---------------------------------------------------------------------------
# rollback

def _graph_keys(graph: list) -> set[tuple[str, str]]:
    keys = set()
    for app, name, replaces in graph:
        keys.add((app, name))
        keys.update(tuple(r) for r in replaces)
    return keys


def _restore_database(project: Project, tenant: Tenant, source: Path) -> None:
    """Replace the tenant's database with the one in an archive (the pre-deploy backup)."""
    password = read_env_file(tenant.secrets_file)["TENANT_DB_PASSWORD"]
    with tempfile.TemporaryDirectory(dir=project.state_dir, prefix="rollback-") as tmp:
        archive.unpack(source, Path(tmp))
        conn = database.admin_connect(project)
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{tenant.names.database}" WITH (FORCE)')
            database.provision_database(conn, tenant.names, password)
        finally:
            conn.close()
        database.restore_database(project, tenant.names, Path(tmp) / archive.DUMP)


def rollback(project: Project, names: Iterable[str] = (), report: Report = lifecycle._quiet) -> list[Outcome]:
    """Return tenants to the release they ran before their last deploy.

    When that deploy applied migrations the older code does not know, the database is
    replaced by the backup taken just before those migrations (after a safety backup of
    its current state); otherwise the data is kept as it is.
    """
    names = list(names)
    state = load_state(project)
    tenants = [t for t in load_tenants(project) if t.enabled]
    chosen = lifecycle.select(tenants, names, False) if names else [
        t for t in tenants if state.tenants.get(t.name, {}).get("previous")]
    if not chosen:
        raise ConfigError("no tenant has a previous release to roll back to")
    for tenant in chosen:
        if not state.tenants.get(tenant.name, {}).get("previous"):
            raise ConfigError(f"tenant {tenant.name!r} has no previous release to roll back to")
    lock = _deploy_lock(project)
    try:
        client = engine.connect()
        outcomes = [_rollback_one(client, project, tenant, report) for tenant in chosen]
        if not names and not any(o.failed for o in outcomes):
            with locked(project):
                state = load_state(project)
                previous = {state.tenants.get(t.name, {}).get("release") for t in chosen}
                if len(previous) == 1:
                    state.current = previous.pop()
                    save_state(project, state)
                lifecycle._render_locked(project)
        return outcomes
    finally:
        lock.release()


def _rollback_one(client, project: Project, tenant: Tenant, report: Report) -> Outcome:
    started = time.monotonic()
    state = load_state(project)
    entry = dict(state.tenants[tenant.name])
    previous, pre_deploy = entry["previous"], entry.get("backup")
    _set_tenant_release(project, tenant, {"release": previous, "previous": None, "backup": None})
    try:
        rendered_images = {tenant.name: release_image(project, previous)}
        graph = migrations.migration_graphs(project, [tenant], {}, rendered_images)
        applied = database.applied_migrations(project, tenant.names) or set()
        unknown = applied - _graph_keys(next(iter(graph.values())))
        detail = "data kept"
        if unknown:
            if not pre_deploy or not Path(pre_deploy).is_file():
                raise OperationFailed(f"the database has migrations release {previous} does not know "
                                      f"({len(unknown)}), and the pre-deploy backup is missing")
            safety = backups.write_backup(project, tenant, secrets=False)
            report(f"{tenant.name}: restoring the database from before the deploy (current data saved in {safety})")
            engine.compose(project, "stop", tenant.names.service, check=False)
            _restore_database(project, tenant, Path(pre_deploy))
            detail = f"database restored from {pre_deploy}; the data it had is in {safety}"
        _recreate(client, project, tenant)
    except Exception as exc:
        _set_tenant_release(project, tenant, entry)
        engine.compose(project, "up", "-d", "--no-deps", tenant.names.service, check=False)
        return Outcome(tenant.name, "failed", time.monotonic() - started, str(exc), 1)
    report(f"{tenant.name}: back on {previous} ({detail})")
    return Outcome(tenant.name, "ok", time.monotonic() - started, f"rolled back to {previous}: {detail}")


# ---------------------------------------------------------------------------
# dev mode

def dev(project: Project, on: bool, report: Report = lifecycle._quiet) -> list[Tenant]:
    """Run every tenant on the working tree with reloading (on), or back on its release (off)."""
    flag = project.state_dir / "dev"
    project.state_dir.mkdir(parents=True, exist_ok=True)
    if on:
        flag.touch()
    else:
        flag.unlink(missing_ok=True)
    from .model import load_project
    project = load_project(project.root)
    return lifecycle.up(project, all_=True, report=report)


"""A tenant's life: new, build, up, down, set, maintenance, status, manage, logs.

Each public function is one CLI verb. A verb about named tenants reads and writes only
those tenants' files and containers; it costs the same with 3 tenants or 3,000.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets as _secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

import filelock

from ..act import certificates, database, engine, health, migrations, state
from ..act import memory as memory_of
from ..act.engine import ContainerState, OperationFailed
from ..act.failpoints import failpoint
from ..act.files import atomic_write, held_elsewhere, locked, port_is_free
from ..model import (ConfigError, Project, ProxyMode, Tenant, check_count, job_id, check_host, check_hosts_free, check_tls_mode,
                     check_memory, check_module, check_name, check_port, check_release, check_replicas, check_title,
                     check_unique, display_path, load_tenants, reserved_ports)
from ..render.apache import host_layout, render_sites
from ..render.scheduler import SCHEDULE_LOG
from ..render.settings import render_settings
from . import stack, swarm
from .stack import Report, checked, quiet, select

# ---------------------------------------------------------------------------
# new


def new(project: Project, name: str, hosts: Iterable[str] = (), title: str | None = None,
        memory: str | None = None, workers: int | None = None) -> Tenant:
    """Create tenants/NAME/ with tenant.yaml, settings.py, www/content/ and secrets.env."""
    checked(check_name, name)
    hosts = tuple(dict.fromkeys(checked(check_host, h) for h in hosts)) or (f"{name}.{project.domain}",)
    title = checked(check_title, title) if title is not None else name.replace("_", " ").title()
    memory = checked(check_memory, memory) if memory is not None else project.defaults.memory
    with locked(project):
        folder = project.tenant_dir(name)
        if folder.exists():
            raise ConfigError(f"tenant {name!r} already exists ({display_path(folder)}); "
                              f"choose another name, or change it with `tenant up {name}`")
        others = load_tenants(project)
        check_hosts_free(hosts, others)
        tenant = Tenant(
            name=name, hosts=hosts, title=title, port=stack.next_port(project, others), memory=memory,
            workers=workers or project.defaults.workers, threads=project.defaults.threads,
            path=folder,
        )
        # Build the folder under a temporary name and rename it into place, so a
        # failure never leaves a half-made tenant behind.
        project.tenants_dir.mkdir(parents=True, exist_ok=True)
        staging = project.tenants_dir / f".{name}.new-{_secrets.token_hex(4)}"
        try:
            staged = replace(tenant, path=staging)
            stack.ensure_tenant_files(staged)
            stack.write_tenant_yaml(project, staged)
            stack.write_settings(staged, render_settings(project, staged, staged.url()))
            os.rename(staging, folder)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        stack.drop_runtime(project, name)  # what an earlier tenant of that name left
        stack.render(project, [name])
        return tenant


# ---------------------------------------------------------------------------
# render / build

def render(project: Project) -> stack.Rendered:
    """Write every tenant's artifacts and compose/compose.yaml; start nothing. A running
    tenant whose new settings do not load keeps its settings.py (Rendered.rejected)."""
    return stack.render(project, keep_going=True)


def build(project: Project, report: Report = quiet, force: bool = False) -> str:
    """Build the shared image for the current code when missing or out of date; return its tag."""
    client = engine.connect()
    with locked(project):
        rendered = stack.render(project, [])
        stack.ensure_images(client, project, rendered, report, force)
    return rendered.image


# ---------------------------------------------------------------------------
# up / down

def up(project: Project, names: Iterable[str] = (), all_: bool = False,
       report: Report = quiet) -> list[Tenant]:
    """Build if needed, provision databases, migrate, start and wait until healthy.

    A new tenant's database is a copy of its release's template when there is one, so it
    starts without migrations: one container start, during which the proxy is reloaded
    once for the whole batch."""
    if project.engine == "swarm":
        return swarm.up(project, names, all_, report)
    names = list(names)
    for tenant in select(load_tenants(project), names, all_):  # bad names fail before anything else
        if names:
            refuse_removing(tenant)
    client = engine.connect()
    with locked(project):
        tenants = load_tenants(project)
        for tenant in select(tenants, names, all_) if names else []:
            if not tenant.enabled:  # `up` brings back a tenant removed with --keep-data
                stack.write_tenant_yaml(project, replace(tenant, enabled=True))
                tenants = [replace(t, enabled=True) if t.name == tenant.name else t for t in tenants]
        _finish_switches(project, select([t for t in tenants if t.enabled], names, all_))
        # Images first (rendering no tenant), so new settings can be loaded in them before
        # any file a running container reads is replaced.
        images = stack.render(project, [], tenants)
        wanted = select(images.tenants, names, all_)
        unbuilt = stack.unbuilt(client, project, images, wanted)  # a pin to a release that is not there
        if unbuilt and len(wanted) == 1:
            raise ConfigError(unbuilt[wanted[0].name])
        stack.ensure_images(client, project, images, report, names=[t.name for t in wanted if t.name not in unbuilt])
        rendered = stack.render(project, None if all_ else names, tenants, keep_going=True, keep_previous=True)
        chosen = select(rendered.tenants, names, all_)
        failures: dict[Tenant, Exception] = {t: OperationFailed(unbuilt[t.name]) for t in chosen if t.name in unbuilt}
        failures |= {
            t: OperationFailed(f"tenant {t.name}: {rendered.rejected[t.name]}\nNothing of {t.name} was changed (a "
                               f"running container keeps running, on the settings.py it has); fix "
                               f"tenants/{t.name}/tenant.yaml (or `tenant set`), then `tenant up {t.name}` again")
            for t in chosen if t.name in rendered.rejected and t.name not in unbuilt}
        refused = set(failures)
        chosen = [t for t in chosen if t not in refused]
        warning = engine.neighbour_table_warning(len(rendered.tenants))
        if warning:
            report(warning)
        only = chosen[0].names.service if len(chosen) == 1 else None
        before = engine.containers(client, project, only) if chosen else {}
        stack.ensure_database(client, project, report)
        image_ids = stack.image_ids_of(client, rendered.images, chosen)
        keys = stack.template_keys(client, project, chosen, rendered.images, image_ids)
        with ThreadPoolExecutor(max_workers=1) as pool:
            # Networks (with the database on them) and unstarted containers for tenants that
            # have none, while their databases are made.
            networks = pool.submit(stack.connect_networks, client, project, chosen) if chosen else None
            made = stack.provision(project, chosen, report, keys)
            if networks is not None:
                networks.result()
        fresh = [t for t in chosen if made.get(t.name) == "created"]
        pending, broken = migrations.pending_tenants(project, client, [t for t in chosen if made.get(t.name) is None],
                                                     before, rendered.images)
        failures.update({t: OperationFailed(f"tenant {t.name}: {broken[t.name]}") for t in chosen if t.name in broken})
        failures.update(stack.migrate_many(project, fresh + pending, before, rendered.images, report))
        for tenant in [t for t in failures if t not in refused]:
            if tenant.names.service not in before:  # a tenant that was absent stays absent
                engine.compose(project, "rm", "-f", "-s", tenant.names.service, tenant=tenant, check=False)
        # One that runs keeps running as it was, and keeps the files it reads.
        stack.restore_previous(project, rendered, [t for t in failures if t.name in rendered.previous])
        stack.make_templates(client, project, [t for t in fresh if t not in failures], keys, report)
        chosen = [t for t in chosen if t not in failures]
        if not chosen:
            raise OperationFailed("\n".join(str(error) for error in failures.values()))
        stale = [t for t in chosen if not rendered.is_current(t, before.get(t.names.service), image_ids)]
        with ThreadPoolExecutor(max_workers=1) as pool:
            # A recreated container has a new address, which Apache only learns on a reload:
            # one graceful reload for the batch, sent as the containers start (a new Apache
            # generation takes about a second to take over).
            reloaded = pool.submit(stack.reload_proxy, client, project, chosen, report, bool(stale))
            if stale:
                report(f"starting {', '.join(t.name for t in stale)}")
                stack.start_services(client, project, stale, rendered, image_ids)
            health.wait_healthy(client, project, chosen, report)
            reloaded.result()
        stack.sync_processes(client, project, chosen, report)
        stack.sync_scheduler(client, project, rendered, report)
        _deploy_checks(project, [t for t in stale if t in chosen], rendered, image_ids, report)
        health.wait_routed(project, chosen)
    if failures:  # the others are up; the command still fails, naming each failure
        raise engine.PartlyFailed("\n".join(str(error) for error in failures.values()), chosen)
    return chosen


def refuse_removing(tenant: Tenant) -> None:
    if tenant.removing:
        raise ConfigError(f"tenant {tenant.name!r} is being removed (archived to {tenant.removing}); "
                          f"finish with `tenant rm {tenant.name}`, or restore that archive")


def _finish_switches(project: Project, tenants: list[Tenant]) -> None:
    """`up` of a tenant that a deploy left between its two slots finishes the move to the new
    one (Compose keeps the container of the current definition and removes the other),
    unless that deploy still runs."""
    from .releases import deploy_running

    current = state.load(project)
    switching = [t for t in tenants if current.runtime(t.name).switching]
    if not switching:
        return
    if deploy_running(project):
        raise ConfigError(f"a deploy is moving {', '.join(t.name for t in switching)} to a new release; "
                          "wait for it to finish")
    with state.update(project) as changed:
        for tenant in switching:
            changed.set_runtime(tenant.name, route=None)


CHECK_DEPLOY = ["python", "manage.py", "check", "--deploy", "--fail-level", "CRITICAL"]


def _deploy_checks(project: Project, tenants: list[Tenant], rendered: stack.Rendered,
                   image_ids: dict[str, str | None], report: Report) -> None:
    """Django's `check --deploy` in each started tenant; its warnings shown on one line per
    tenant. Kept by what decides them (the image, the tenant's own code and apps, DEBUG,
    tenantkit's settings template), so the same kind of tenant is checked once."""
    from .fleet import run_each

    folder = project.cache_dir / "deploy-checks"
    settings_digest = stack.project_digest(project)

    def one(tenant: Tenant) -> None:
        kind = stack.schema_key(tenant, image_ids.get(rendered.images[tenant.name]) or "",
                                f"debug={tenant.debug or project.dev},tls={project.tls_of(tenant)}")
        cached = folder / f"{hashlib.sha256((kind + settings_digest).encode()).hexdigest()[:24]}.txt"
        if cached.is_file():
            found = cached.read_text().split()
        else:
            code, output = migrations.in_tenant(project, tenant, CHECK_DEPLOY, True)
            found = sorted(set(re.findall(r"\(([a-z_]+\.[WE]\d+)\)", output)))
            if code == 0:
                atomic_write(cached, " ".join(found))
        if found:
            report(f"{tenant.name}: `manage.py check --deploy` warns: {', '.join(found)} "
                   f"(see `tenant manage {tenant.name} -- check --deploy`)")

    run_each(tenants, one, stack.MIGRATE_JOBS)


def down(project: Project, names: Iterable[str] = (), all_: bool = False,
         report: Report = quiet) -> list[Tenant]:
    """Stop the named tenants' containers (with --all: the whole stack); data is kept."""
    if project.engine == "swarm":
        return swarm.down(project, names, all_, report)
    names = list(names)
    select(load_tenants(project), names, all_)
    engine.connect()
    with locked(project):
        # Stopping needs no new settings: none are checked, and any tenant stops.
        rendered = stack.render(project, None if all_ else names, check=False)
        chosen = select(rendered.tenants, names, all_)
        if all_:
            report("stopping the whole stack")
            if rendered.scheduler_image or project.scheduler_dir.is_dir():  # no new job starts meanwhile
                engine.compose(project, "stop", "scheduler", check=False)
                stack.remove_jobs(engine.connect(), project)
            engine.compose(project, "down", "--remove-orphans")
        else:
            report(f"stopping {', '.join(t.name for t in chosen)}")
            stack.compose_services(project, chosen, "stop",
                                   services=[service for t in chosen for service in stack.services_of(project, t)])
    return chosen


# ---------------------------------------------------------------------------
# set

def _hosts(value: str) -> tuple[str, ...]:
    hosts = tuple(dict.fromkeys(check_host(h) for h in value.split(",") if h.strip()))
    if not hosts:
        raise ValueError("needs at least one host name")
    return hosts


def _number(check):
    return lambda value: check(int(value)) if value.isdigit() else check(value)


SETTABLE = {
    "title": check_title,
    "hosts": _hosts,
    "apps": lambda value: tuple(check_module(a.strip()) for a in value.split(",") if a.strip()),
    "memory": check_memory,
    "workers": _number(check_count),
    "threads": _number(check_count),
    "port": _number(check_port),
    "release": lambda value: check_release(value) if value else None,  # pin (empty: unpin)
    "tls": lambda value: None if value in ("", "default") else check_tls_mode(value),  # off, auto, default
    "replicas": _number(check_replicas),  # swarm: tasks serving the tenant
}
# `tls_cert=FILE tls_key=FILE`: a certificate of the tenant's own (checked before it is written).
CERTIFICATE_KEYS = {"tls_cert", "tls_key"}


def set_values(project: Project, name: str, assignments: Iterable[str]) -> Tenant:
    """Change tenant.yaml (title, hosts, apps, memory, workers, threads, port); `tenant up` applies it."""
    changes = {}
    for assignment in assignments:
        key, found, value = assignment.partition("=")
        if not found:
            raise ConfigError(f"{assignment!r} is not key=value, such as title='ACME Inc'")
        if key in CERTIFICATE_KEYS:
            changes[key] = str(Path(value).resolve()) if value else None
            continue
        if key not in SETTABLE:
            raise ConfigError(f"{key!r} cannot be set; settable keys: {', '.join(sorted({*SETTABLE, *CERTIFICATE_KEYS}))}")
        try:
            changes[key] = SETTABLE[key](value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if bool(changes.get("tls_cert", ...)) != bool(changes.get("tls_key", ...)):
        raise ConfigError("give tls_cert=FILE and tls_key=FILE together (or both empty, to drop the certificate)")
    if changes.get("tls_cert"):
        changes["tls"] = None
    elif "tls" in changes and "tls_cert" not in changes:  # off, auto or default: its own certificate goes
        changes.update(tls_cert=None, tls_key=None)
    if not changes:
        raise ConfigError("give at least one key=value to set")
    with locked(project):
        tenants = load_tenants(project)
        tenant = select(tenants, [name], False)[0]
        changed = replace(tenant, **changes)
        check_hosts_free(changed.hosts, tenants, except_name=name)
        if "port" in changes and changed.port != tenant.port:
            _check_port_free(project, tenants, changed)
        if changes.get("release"):
            _check_release_exists(project, changed.release)
        if changed.replicas != 1 and project.engine != "swarm":
            raise ConfigError(f"replicas={changed.replicas}: a tenant runs more than one task on engine: swarm only; "
                              "on compose each tenant is one container (use workers= and threads=)")
        after = [changed if t.name == name else t for t in tenants]
        check_unique(after, project)  # whatever loading the project would refuse (tls: auto without a contact)
        if changed.tls_cert:  # exit 2 on a bad certificate, before anything is written
            stack.check_certificates(project, [changed])
        # The new settings are loaded before anything is written (when its extra apps or
        # release change what they import): a typo is refused here, not at the next restart.
        rendered = stack.render(project, [name], after,
                                keep_going=True, check_all=True, keep_previous=True)
        if name in rendered.rejected:
            stack.restore_previous(project, rendered, [changed])  # its vhost and compose file, as they were
            raise ConfigError(f"tenant {name}: with {', '.join(assignments)} "
                              f"{rendered.rejected[name].splitlines()[0]}; tenant.yaml was not changed")
        stack.write_tenant_yaml(project, changed)
    return changed


def _check_port_free(project: Project, tenants: list[Tenant], tenant: Tenant) -> None:
    """A tenant's published port: none of tenantkit's own, no other tenant's, and nothing
    else listening on it now."""
    reserved = reserved_ports(project)
    if tenant.port in reserved:
        raise ConfigError(f"port {tenant.port} is {reserved[tenant.port]} (tenantkit.yaml); choose another port")
    for other in tenants:
        if other.name != tenant.name and other.port == tenant.port:
            raise ConfigError(f"port {tenant.port} is already used by tenant {other.name!r}; choose another port")
    if not port_is_free(tenant.port):
        raise ConfigError(f"port {tenant.port} is in use by another program on 127.0.0.1 (see `ss -ltnp "
                          f"'sport = :{tenant.port}'`); choose another port")


def _check_release_exists(project: Project, version: str) -> None:
    releases = state.load(project).releases
    if version not in releases:
        raise ConfigError(f"unknown release {version!r} (releases: {state.listed(releases)}); build it first with "
                          f"`tenant release build {version}`, or pin to one of those")


# ---------------------------------------------------------------------------
# status / list

@dataclass(frozen=True)
class TenantStatus:
    name: str
    title: str
    hosts: list[str]
    state: str
    health: str
    url: str
    port: int
    database: str
    maintenance: bool = False
    memory: memory_of.Memory | None = None
    memory_limit: str = ""  # as tenant.yaml gives it
    processes: dict[str, str] = field(default_factory=dict)  # background process -> its container's state
    tasks: str = ""  # swarm: running/wanted tasks, such as 2/2

    def to_dict(self) -> dict:
        row = asdict(self)
        row["memory"] = self.memory.to_dict() if self.memory else None
        return row


def _health(project: Project, tenants: list[Tenant], found: dict) -> dict[str, str]:
    """Health of the running tenants, probed over HTTP as the proxy checks it."""
    running = [t for t in tenants if t.enabled and engine.state_of(found.get(t.names.service)) is ContainerState.RUNNING]
    return health.probe_many(project, running, found)


def _state(tenant: Tenant, found: dict) -> str:
    return (engine.state_of(found.get(tenant.names.service)) if tenant.enabled else ContainerState.DISABLED).value


def _memory(tenant: Tenant, found: dict) -> memory_of.Memory | None:
    current = found.get(tenant.names.service)
    return memory_of.read(current.id) if engine.state_of(current) is ContainerState.RUNNING else None


def status(project: Project) -> list[TenantStatus]:
    """Every tenant with its container's state (running, stopped, absent), health and memory."""
    if project.engine == "swarm":
        return [TenantStatus(name=row["name"], title=row["title"], hosts=row["hosts"], state=row["state"],
                             health=row["health"], url=row["url"], port=row["port"], database=row["database"],
                             maintenance=row["maintenance"],
                             memory=row["memory"],
                             memory_limit=row["memory_limit"], processes=row["processes"],
                             tasks=row.get("tasks_summary", ""))
                for row in swarm.status_rows(project)]
    tenants = load_tenants(project)
    found = engine.containers(engine.connect(), project)
    healths = _health(project, tenants, found)
    return [TenantStatus(name=t.name, title=t.title, hosts=list(t.hosts), state=_state(t, found),
                         health=healths.get(t.name, ""), url=project.tenant_url(t), port=t.port,
                         database=t.names.database, maintenance=t.maintenance, memory=_memory(t, found),
                         memory_limit=t.memory, processes=_processes(project, t, found))
            for t in tenants]


def _processes(project: Project, tenant: Tenant, found: dict) -> dict[str, str]:
    """Each background process of the tenant and its container's state (restarting: it
    keeps exiting)."""
    states = {}
    for name in project.processes_of(tenant):
        container = found.get(tenant.names.process_service(name))
        states[name] = ("restarting" if container is not None and container.restarting
                        else engine.state_of(container).value)
    return states


SCHEDULE_TAIL = 256 * 1024  # bytes of a schedule log read for the last runs: thousands of lines


def last_runs(project: Project, tenant: Tenant) -> list[dict]:
    """Each scheduled job of the tenant with its last run (None: none logged yet), from the
    end of .tenantkit/logs/NAME.schedule.log."""
    jobs = project.schedule_of(tenant)
    if not jobs:
        return []
    latest: dict[str, dict] = {}
    for record in _schedule_records(project, tenant.name, SCHEDULE_TAIL):
        latest[record.get("job")] = record
    return [{"id": job_id(cron, command), "cron": cron, "command": command,
             "last": latest.get(job_id(cron, command))} for cron, command in jobs]


def _schedule_records(project: Project, name: str, limit: int) -> list[dict]:
    path = project.logs_dir / SCHEDULE_LOG.format(name=name)
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines()[1 if len(text) >= limit else 0:]:  # the first may be cut
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def describe_run(record: dict) -> str:
    """One scheduled run on one line: when, what, and how it ended."""
    how = record.get("status", "?")
    if record.get("exit") is not None:
        how += f" (exit {record['exit']})"
    if record.get("message"):
        how += f": {record['message']}"
    return f"{record.get('start', '?')}  {record.get('command', '?')}  [{record.get('cron', '?')}]  {how}"


def _schedule_log(project: Project, tenant: Tenant, follow: bool, lines: int) -> int:
    """Print the tenant's scheduled runs (the last `lines`), then, following, new ones."""
    for record in _schedule_records(project, tenant.name, SCHEDULE_TAIL)[-lines:] if lines else []:
        print(describe_run(record), flush=True)
    if not follow:
        return 0
    path = project.logs_dir / SCHEDULE_LOG.format(name=tenant.name)
    position = path.stat().st_size if path.exists() else 0
    try:
        while True:
            time.sleep(0.5)
            size = path.stat().st_size if path.exists() else 0
            if size < position:  # rotated
                position = 0
            if size > position:
                with open(path, "rb") as handle:
                    handle.seek(position)
                    chunk = handle.read(size - position)
                position += len(chunk)
                for line in chunk.decode(errors="replace").splitlines():
                    try:
                        print(describe_run(json.loads(line)), flush=True)
                    except ValueError:
                        continue
    except KeyboardInterrupt:
        return 0


def certificate_of(project: Project, tenant: Tenant) -> dict | None:
    """The tenant's TLS and its certificate's expiry: the one its tenant.yaml gives (which
    the proxy serves from the next `tenant up`), or the one mod_md obtained (None while there
    is none yet)."""
    path = project.certificate_file(tenant)
    if path is None:
        return None
    mode = project.tls_of(tenant)
    found = certificates.read_certificate(path)
    return {"mode": mode, "expires": found.not_after.isoformat() if found else None,
            "days_left": found.days_left() if found else None, "issuer": found.issuer if found else None}


def status_detail(project: Project, names: Iterable[str] = ()) -> tuple[list[dict], database.Connections | None]:
    """State, health, image, memory, uptime and database size of tenants, and the database
    server's connections against its limit."""
    names = list(names)
    if project.engine == "swarm":
        rows = swarm.status_rows(project, names)
        by_name = {t.name: t for t in load_tenants(project)}
        for row in rows:
            row["memory"] = row["memory"].to_dict() if row["memory"] else None
            row["memory_mib"] = row["memory"]["used_mib"] if row["memory"] else None
            row.update({"restarts": None, "uptime_seconds": None, "database_bytes": None, "connections": None,
                        "connection_limit": stack.connection_limit(by_name[row["name"]]),
                        "tls": None, "schedule": []})
        return rows, None
    tenants = load_tenants(project)
    chosen = select(tenants, names, not names) if names else tenants
    client = engine.connect()
    found = engine.containers(client, project, tenant=chosen[0].name if len(chosen) == 1 else None)
    db = engine.container(client, project, "db") if project.database.service else None
    sizes: dict[str, int] = {}
    connections = None
    if (not project.database.service or engine.state_of(db) is ContainerState.RUNNING) and chosen:
        conn = database.admin_connect(project, retry=False)
        try:
            sizes = database.database_sizes(conn)
            connections = database.connections(conn)
        finally:
            conn.close()
    healths = _health(project, chosen, found)

    def detail(tenant: Tenant) -> dict:
        current = found.get(tenant.names.service)
        row = {"name": tenant.name, "state": _state(tenant, found), "health": healths.get(tenant.name, ""),
               "url": project.tenant_url(tenant), "image": current.image if current else None,
               "memory_mib": None, "memory": None, "memory_limit": tenant.memory, "restarts": None,
               "uptime_seconds": None, "maintenance": tenant.maintenance,
               "database": tenant.names.database, "database_bytes": sizes.get(tenant.names.database),
               "connections": connections.by_database.get(tenant.names.database, 0) if connections else None,
               "connection_limit": stack.connection_limit(tenant),
               "tls": certificate_of(project, tenant), "processes": _processes(project, tenant, found),
               "schedule": last_runs(project, tenant)}
        if engine.state_of(current) is ContainerState.RUNNING:
            used = memory_of.read(current.id)
            if used is None:  # an engine on another host: its own figures
                used = memory_of.from_stats(client.api.stats(current.id, stream=False, one_shot=True))
            row["memory"] = used.to_dict()
            row["memory_mib"] = row["memory"]["used_mib"]
            inspected = client.api.inspect_container(current.id)
            started = inspected["State"]["StartedAt"]
            since = dt.datetime.fromisoformat(started[:26].rstrip("Z") + "+00:00")
            row["uptime_seconds"] = int((dt.datetime.now(dt.timezone.utc) - since).total_seconds())
            # Restarts by the engine, after the container's first process died (of a kill, too).
            row["restarts"] = inspected.get("RestartCount", 0)
        return row

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(detail, chosen))
    return rows, connections


def memory(project: Project, name: str) -> tuple[memory_of.Memory | None, str]:
    """The memory of a tenant's running container (None: not running, or unreadable here),
    and its limit as tenant.yaml gives it."""
    tenant = select(load_tenants(project), [name], False)[0]
    if project.engine == "swarm":
        row = swarm.status_rows(project, [name])[0]
        return row["memory"], tenant.memory
    return _memory(tenant, engine.containers(engine.connect(), project, tenant.names.service)), tenant.memory


# ---------------------------------------------------------------------------
# manage

def manage(project: Project, name: str, args: list[str], interactive: bool = False,
           env: dict[str, str] | None = None) -> int:
    """Run `manage.py ARGS` in the tenant's context; return its exit code.

    Standard input goes to the command (`echo 'print(1)' | tenant manage acme -- shell`),
    and `env` adds variables to its environment (DJANGO_SUPERUSER_PASSWORD for
    `createsuperuser --noinput`): passed by name, so no value shows in a process list."""
    if project.engine == "swarm":
        return swarm.manage(project, name, args, interactive, env)
    select(load_tenants(project), [name], False)
    client = engine.connect()
    with locked(project):
        # New settings that do not load are not written (see stack.render): the command
        # then runs on the settings the tenant has, and says so.
        rendered = stack.render(project, [name], keep_going=True)
        if name in rendered.rejected:
            print(f"tenant: warning: {name}'s tenant.yaml gives settings that do not load "
                  f"({rendered.rejected[name].splitlines()[0].partition(': ')[2]}); running on its current "
                  "settings.py", file=sys.stderr)
        tenant = select(rendered.tenants, [name], False)[0]
        running = engine.state_of(engine.container(client, project, tenant.names.service)) is ContainerState.RUNNING
        if not running:
            stack.ensure_images(client, project, rendered, names=[name])
            stack.start_database(client, project, [tenant])
            stack.provision(project, [tenant])
    env = env or {}
    argv = migrations.tenant_argv(tenant, ["python", "manage.py", *args], running, interactive, list(env))
    return engine.compose(project, *argv, tenant=tenant, capture=False, check=False,
                          interactive=interactive, stdin=True, env=env).returncode


# ---------------------------------------------------------------------------
# test

TEST_DATABASE_ENV = "TENANTKIT_TEST_DATABASE"  # read by the tenant's settings.py (see the template)


def test_lock(project: Project, name: str) -> filelock.FileLock:
    """Held while `tenant test NAME` runs (its test database is then in use, not left over)."""
    return filelock.FileLock(str(project.state_dir / f"test-{name}.lock"), timeout=0)


def test_running(project: Project, name: str) -> bool:
    return (project.state_dir / f"test-{name}.lock").exists() and held_elsewhere(test_lock(project, name))


def test(project: Project, name: str, args: list[str], interactive: bool = False, report: Report = quiet) -> int:
    """Run the project's test suite (`manage.py test --keepdb ARGS`) in the tenant's
    context: a one-off container of its service (its image and Python, settings, apps,
    secrets, network and limits; the working tree in dev mode), against a test database
    tenantkit creates as admin, owned by the tenant's role, and drops afterwards. The
    suite's exit code.

    `--keepdb` makes Django use that database instead of creating one, which the tenant's
    role may not; its migrations still run on it. Media go to the container's own /tmp,
    never to the tenant's media folder. One run per tenant at a time."""
    if project.engine == "swarm":
        raise swarm.refuse("test")
    refuse_removing(select(load_tenants(project), [name], False)[0])
    client = engine.connect()
    project.state_dir.mkdir(parents=True, exist_ok=True)
    run_lock = test_lock(project, name)
    try:
        run_lock.acquire()
    except filelock.Timeout:
        raise ConfigError(f"tests of {name} are already running (another `tenant test {name}`); wait for them "
                          "to finish") from None
    try:
        with locked(project):
            rendered = stack.render(project, [name], keep_going=True)
            if name in rendered.rejected:
                raise migrations.SettingsBroken(f"tenant {name}: {rendered.rejected[name]}")
            tenant = select(rendered.tenants, [name], False)[0]
            stack.ensure_images(client, project, rendered, names=[name])
            stack.start_database(client, project, [tenant])
            stack.provision(project, [tenant])
        conn = database.admin_connect(project)
        try:
            test_database = database.create_test_database(conn, tenant.names)
            failpoint("test", "created")
            env = {TEST_DATABASE_ENV: test_database, "TENANTKIT_MEDIA_ROOT": "/tmp/test-media"}
            argv = migrations.tenant_argv(tenant, ["python", "manage.py", "test", "--keepdb", "--noinput", *args],
                                          False, interactive, list(env))
            return engine.compose(project, *argv, tenant=tenant, capture=False, check=False,
                                  interactive=interactive, stdin=True, env=env).returncode
        finally:
            try:
                database.drop_test_database(conn, tenant.names)
                report(f"dropped the test database {database.test_database_name(tenant.names)}")
            finally:
                conn.close()
    finally:
        run_lock.release()


# ---------------------------------------------------------------------------
# maintenance

def maintenance(project: Project, name: str, on: bool, report: Report = quiet) -> Tenant:
    """Make the tenant's vhost answer 503 with a maintenance page (or serve it again)."""
    tenant = select(load_tenants(project), [name], False)[0]
    if project.proxy.mode is ProxyMode.NONE:
        raise ConfigError("maintenance mode is served by the proxy; set proxy.mode in tenantkit.yaml")
    client = engine.connect() if project.proxy.mode is ProxyMode.COMPOSE else None
    with locked(project):
        tenant = replace(select(load_tenants(project), [name], False)[0], maintenance=on)
        stack.write_tenant_yaml(project, tenant)
        # Its vhost changes even when its new settings do not load (they are then not written).
        rendered = stack.render(project, [name], keep_going=True)
        if client is not None:
            stack.ensure_images(client, project, rendered, report, names=[name])
        stack.reload_proxy(client, project, [tenant], report)
    return tenant


# ---------------------------------------------------------------------------
# apache --mode proxy

def apache_proxy(project: Project, out: Path, listen_port: int, report: Report = quiet) -> list[str]:
    """Write vhosts for the host's own Apache, proxying to the tenants' loopback ports."""
    if project.proxy.mode is ProxyMode.COMPOSE:
        raise ConfigError("behind the compose proxy (proxy.mode: compose) tenants publish no port for the host's "
                          "Apache to reach; set proxy.mode: host in tenantkit.yaml, then `tenant up --all`")
    client = engine.connect()
    with locked(project):
        rendered = stack.render(project, keep_going=True)
        stack.ensure_images(client, project, rendered, report, assets=True)
        sites = render_sites(project, rendered.tenants, rendered.images, host_layout(project, listen_port))
        project.logs_dir.mkdir(parents=True, exist_ok=True)
        for name, text in sites.items():
            atomic_write(out / name, text)
    return sorted(sites)


# ---------------------------------------------------------------------------
# logs

def logs(project: Project, name: str, follow: bool = False, lines: int = 100, process: str | None = None,
         schedule: bool = False) -> int:
    """Print the tenant's container output, then its Apache access and error logs (with
    `process`: that background process's output only; `schedule`: its scheduled runs)."""
    if project.engine == "swarm":
        return swarm.logs(project, name, follow, lines, process, schedule)
    tenant = select(load_tenants(project), [name], False)[0]
    if schedule:
        return _schedule_log(project, tenant, follow, lines)
    engine.connect()
    service = tenant.names.service
    apache = [project.logs_dir / f"{name}.access.log", project.logs_dir / f"{name}.error.log"]
    if process is not None:
        processes = project.processes_of(tenant)
        if process not in processes:
            raise ConfigError(f"tenant {name} has no process {process!r}; its processes: "
                              f"{', '.join(processes) or 'none'} (tenant.yaml `processes:`)")
        service, apache = tenant.names.process_service(process), []
    apache = [str(path) for path in apache if path.exists()]
    args = ["logs", "--no-color", "--tail", str(lines)] + (["--follow"] if follow else [])
    if not follow:
        code = engine.compose(project, *args, service, tenant=tenant, capture=False,
                              check=False).returncode
        for path in apache:
            print(f"==> {path} <==", flush=True)
            subprocess.run(["tail", "-n", str(lines), path])
        return code
    tails = subprocess.Popen(["tail", "-n", str(lines), "-F", *apache]) if apache else None
    try:
        return engine.compose(project, *args, service, tenant=tenant, capture=False,
                              check=False).returncode
    finally:
        if tails:
            tails.terminate()


__all__ = ["new", "render", "build", "up", "down", "set_values", "SETTABLE", "status", "status_detail", "memory", "test",
           "TenantStatus", "manage", "maintenance", "apache_proxy", "logs", "last_runs", "describe_run",
           "certificate_of"]

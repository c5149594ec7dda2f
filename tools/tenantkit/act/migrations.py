"""Which tenants need migrations, and running commands in a tenant's context."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2

from ..model import Project, Tenant
from . import database, engine
from .engine import OperationFailed, tail
from .files import atomic_write


MIGRATE = ["python", "manage.py", "migrate", "--noinput"]  # the one migrate command line


def runs_current_image(found: dict[str, engine.Container], tenant: Tenant, image: str) -> bool:
    """True when the tenant's container runs `image` (so a command can exec in it)."""
    current = found.get(tenant.names.service)
    return engine.state_of(current) is engine.ContainerState.RUNNING and current.image == image


def tenant_argv(tenant: Tenant, command: list[str], running: bool, tty: bool = False,
                env_names: list[str] = ()) -> list[str]:
    """`docker compose` arguments that run a command in the tenant's context: in its running
    container, or in a one-off one of its service (`env_names`: variables passed on from
    Compose's environment)."""
    where = ["exec"] if running else ["run", "--rm", "--no-deps"]
    passed = [arg for name in env_names for arg in ("-e", name)]
    return [*where, *([] if tty else ["-T"]), *passed, tenant.names.service, *command]


def in_tenant(project: Project, tenant: Tenant, command: list[str], running: bool,
              env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command in the tenant's context and capture its output."""
    env = env or {}
    if project.engine == "swarm":
        from ..orchestration.swarm import run_in_tenant
        return run_in_tenant(project, tenant, command, env)
    result = engine.compose(project, *tenant_argv(tenant, command, running, env_names=list(env)), tenant=tenant,
                            check=False, env=env)
    return result.returncode, result.stdout or ""


def exec_in(client, container_id: str, command: list[str]) -> tuple[int, str]:
    """Run a command in a running container of the tenant (as its user, in /app) and
    capture its output: one engine call, no Compose and no container start."""
    run = client.api.exec_create(container_id, command)
    output = client.api.exec_start(run["Id"]).decode(errors="replace")
    return client.api.exec_inspect(run["Id"])["ExitCode"], output


class SettingsBroken(OperationFailed):
    """A tenant's settings (or its code) do not load: Django could not even start."""


def _code_digest(tenant: Tenant) -> str:
    """What a tenant adds to the code its image runs: extra apps and local_settings.py, and
    what the project adds to every tenant (tenant_defaults.apps, project.tenant_settings)."""
    local = tenant.path / "local_settings.py"
    return hashlib.sha256(f"{tenant.apps!r}\0{tenant.project_code}".encode()
                          + (local.read_bytes() if local.is_file() else b"")).hexdigest()


def graph_key(tenant: Tenant, images: dict[str, str]) -> tuple:
    """Tenants with the same key share a migration graph (and, when one fails to load,
    the failure): the image, the extra apps and local_settings.py."""
    return images[tenant.name], tenant.apps, _code_digest(tenant)[:16]


def _graph_cache(project: Project, client, tenant: Tenant, image: str) -> Path | None:
    """Where the graph of this image (by id: tags can move) and these apps is kept, if the
    image exists. A tenant's local_settings.py can change its apps, so it counts too."""
    image_id = engine.image_id(client, image)
    if image_id is None:
        return None
    return project.cache_dir / "graphs" / f"{image_id.split(':')[-1][:24]}-{_code_digest(tenant)[:16]}.json"


def migration_graphs(project: Project, client, tenants: list[Tenant], found: dict, images: dict[str, str],
                     broken: dict[tuple, str] | None = None) -> dict[tuple, list]:
    """The migration graph of each distinct (image, extra apps, local settings) among the
    tenants (usually one).

    Reading a graph runs Python in a container, so each is kept in .tenantkit/cache/graphs
    once read: an image's migrations never change. A graph that cannot be read (the
    settings do not load) raises SettingsBroken; given `broken`, it is recorded there by
    key instead, and the other keys are still read."""
    graphs: dict[tuple, list] = {}
    for tenant in tenants:
        key = graph_key(tenant, images)
        if key in graphs or (broken is not None and key in broken):
            continue
        cache = _graph_cache(project, client, tenant, images[tenant.name])
        if cache is not None and cache.is_file():
            graphs[key] = json.loads(cache.read_text())
            continue
        code, output = in_tenant(project, tenant, ["python", "/opt/tenantkit/migration_graph.py"],
                                 runs_current_image(found, tenant, images[tenant.name]))
        if code != 0:
            if "Traceback (most recent call last)" not in output:  # Compose or the engine failed, not Python
                raise OperationFailed(f"reading the migration graph (as tenant {tenant.name}) failed:\n{tail(output)}")
            problem = f"its settings do not load (reading its migrations failed, exit {code}):\n{tail(output)}"
            if broken is None:
                raise SettingsBroken(f"tenant {tenant.name}: {problem}")
            broken[key] = problem
            continue
        graphs[key] = json.loads(output.strip().splitlines()[-1])
        if cache is not None:
            atomic_write(cache, json.dumps(graphs[key]))
    return graphs


def needs_migrate(graph: list, applied: set | None) -> bool:
    """True when some migration of the graph is not recorded (a squash counts when all it replaces are)."""
    if applied is None:
        return True
    for app, name, replaces in graph:
        if (app, name) not in applied and not (replaces and all(tuple(r) in applied for r in replaces)):
            return True
    return False


READERS = 16  # databases read at a time: psycopg2 releases the GIL while it waits on the server
UNSETTLED = database.UNSETTLED_PREFIX + "%"  # the COMMENT ON DATABASE of one being made (restore, rollback, copy)


def applied_by_tenant(project: Project, tenants: list[Tenant],
                      threads: int = READERS) -> dict[str, set[tuple[str, str]] | None]:
    """The migrations recorded in each tenant's database, by tenant name, read concurrently;
    None for a tenant whose database or django_migrations table is missing.

    One look at the server's database list first: a missing database then costs no
    failed connection, and an unreachable server answers None for every tenant at once
    instead of a connect timeout per tenant. A database that tenantkit marks as still
    being made (a restore, a rollback's swap, a copy a crash interrupted) counts as
    missing: provisioning is what finishes or repairs it."""
    if not tenants:
        return {}
    try:
        conn = database.admin_connect(project, retry=False)
    except psycopg2.OperationalError:
        return {t.name: None for t in tenants}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE coalesce(shobj_description(oid, 'pg_database'), '') "
                        "NOT LIKE %s", (UNSETTLED,))
            existing = {row[0] for row in cur.fetchall()}
    finally:
        conn.close()
    present = [t for t in tenants if t.names.database in existing]
    applied: dict[str, set[tuple[str, str]] | None] = {t.name: None for t in tenants}
    if present:
        with ThreadPoolExecutor(max_workers=min(threads, len(present))) as pool:
            for tenant, rows in zip(present, pool.map(lambda t: database.applied_migrations(project, t.names), present)):
                applied[tenant.name] = rows
    return applied


def pending_of(project: Project, client, tenants: list[Tenant], found: dict, images: dict[str, str],
               applied: dict[str, set | None]) -> tuple[list[Tenant], dict[str, str]]:
    """The tenants whose recorded migrations (`applied`) lack one of their image's graph,
    and the tenants whose settings do not load (by name, with what went wrong): one broken
    tenant does not stop the others from being checked.

    A tenant with no migrations recorded needs them without asking the code; for the
    others one look at the release's graph answers for all of them at once."""
    known = [t for t in tenants if applied[t.name] is not None]
    failed: dict[tuple, str] = {}
    graphs = migration_graphs(project, client, known, found, images, failed) if known else {}
    broken = {t.name: failed[graph_key(t, images)] for t in known if graph_key(t, images) in failed}
    return [t for t in tenants if t.name not in broken and (
        applied[t.name] is None or needs_migrate(graphs[graph_key(t, images)], applied[t.name]))], broken


def pending_tenants(project: Project, client, tenants: list[Tenant], found: dict,
                    images: dict[str, str]) -> tuple[list[Tenant], dict[str, str]]:
    """The tenants whose databases lack a migration of their image's code, and the broken ones."""
    return pending_of(project, client, tenants, found, images, applied_by_tenant(project, tenants))

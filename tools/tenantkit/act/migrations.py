"""Which tenants need migrations, and running commands in a tenant's context."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..model import Project, Tenant
from . import database, engine
from .engine import OperationFailed, tail
from .files import atomic_write


MIGRATE = ["python", "manage.py", "migrate", "--noinput"]  # the one migrate command line


def runs_current_image(found: dict[str, engine.Container], tenant: Tenant, image: str) -> bool:
    """True when the tenant's container runs `image` (so a command can exec in it)."""
    current = found.get(tenant.names.service)
    return engine.state_of(current) is engine.ContainerState.RUNNING and current.image == image


def tenant_argv(tenant: Tenant, command: list[str], running: bool, tty: bool = False) -> list[str]:
    """`docker compose` arguments that run a command in the tenant's context: in its running
    container, or in a one-off one of its service."""
    where = ["exec"] if running else ["run", "--rm", "--no-deps"]
    return [*where, *([] if tty else ["-T"]), tenant.names.service, *command]


def in_tenant(project: Project, tenant: Tenant, command: list[str], running: bool) -> tuple[int, str]:
    """Run a command in the tenant's context and capture its output."""
    result = engine.compose(project, *tenant_argv(tenant, command, running), tenant=tenant, check=False)
    return result.returncode, result.stdout or ""


def graph_key(tenant: Tenant, images: dict[str, str]) -> tuple:
    return images[tenant.name], tenant.apps


def _graph_cache(project: Project, client, tenant: Tenant, image: str) -> Path | None:
    """Where the graph of this image (by id: tags can move) and these apps is kept, if the
    image exists. A tenant's local_settings.py can change its apps, so it counts too."""
    image_id = engine.image_id(client, image)
    if image_id is None:
        return None
    local = tenant.path / "local_settings.py"
    extra = hashlib.sha256(repr(tenant.apps).encode() + (local.read_bytes() if local.is_file() else b""))
    return project.cache_dir / "graphs" / f"{image_id.split(':')[-1][:24]}-{extra.hexdigest()[:16]}.json"


def migration_graphs(project: Project, client, tenants: list[Tenant], found: dict,
                     images: dict[str, str]) -> dict[tuple, list]:
    """The migration graph of each distinct (image, extra apps) among the tenants (usually one).

    Reading a graph runs Python in a container, so each is kept in .tenantkit/cache/graphs
    once read: an image's migrations never change."""
    graphs: dict[tuple, list] = {}
    for tenant in tenants:
        key = graph_key(tenant, images)
        if key in graphs:
            continue
        cache = _graph_cache(project, client, tenant, images[tenant.name])
        if cache is not None and cache.is_file():
            graphs[key] = json.loads(cache.read_text())
            continue
        code, output = in_tenant(project, tenant, ["python", "/opt/tenantkit/migration_graph.py"],
                                 runs_current_image(found, tenant, images[tenant.name]))
        if code != 0:
            raise OperationFailed(f"reading the migration graph (as tenant {tenant.name}) failed:\n{tail(output)}")
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


def pending_tenants(project: Project, client, tenants: list[Tenant], found: dict,
                    images: dict[str, str]) -> list[Tenant]:
    """The tenants whose databases lack a migration of `image`'s code.

    A tenant with no migrations recorded needs them without asking the code; for the
    others one look at the release's graph answers for all of them at once.
    """
    applied = {t.name: database.applied_migrations(project, t.names) for t in tenants}
    known = [t for t in tenants if applied[t.name] is not None]
    graphs = migration_graphs(project, client, known, found, images) if known else {}
    return [t for t in tenants
            if applied[t.name] is None or needs_migrate(graphs[graph_key(t, images)], applied[t.name])]

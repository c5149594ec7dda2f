"""A tenant's life: new, render, build, up, down, status, manage.

Each public function is one CLI verb. They load the model, call render, and act
through tenantkit.act; the CLI only parses arguments and prints what they return.
"""
from __future__ import annotations

import datetime as dt
import os
import secrets as _secrets
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import yaml


from .act import build as builder
from .act import database, engine, health, migrations, proxy, releases
from .act.engine import OperationFailed, tail
from .act.files import atomic_write, give_to_app_user, locked
from .act.secrets import ensure_db_admin_secret, new_tenant_secrets, read_env_file, write_env_file
from .model import (TENANT_FILE, ConfigError, Project, Tenant, check_host, check_hosts_free, check_memory,
                    check_name, check_title, display_path, load_tenants)
from .render.apache import host_layout, release_of, render_sites
from .render.compose import dump_compose, render_compose
from .render.settings import render_settings

Report = Callable[[str], None]

# Tenants whose traffic a deploy in this process has moved to a "next" container, and
# where to: every render keeps these, so one tenant's switch never undoes another's.
NEXT_BACKENDS: dict[str, str] = {}



def _quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------------------
# new

def _checked(check, value):
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def next_port(project: Project, tenants: Iterable[Tenant]) -> int:
    """The lowest port from ports.first that no tenant claims and nothing listens on."""
    taken = {t.port for t in tenants}
    port = project.first_port
    while port in taken or port == project.database.publish_port or not _port_is_free(port):
        port += 1
        if port > 65535:
            raise ConfigError("no free port left for a new tenant; lower ports.first in tenantkit.yaml")
    return port


def new(project: Project, name: str, hosts: Iterable[str] = (), title: str | None = None,
        memory: str | None = None, workers: int | None = None) -> Tenant:
    """Create tenants/NAME/ with tenant.yaml, settings.py, www/content/ and secrets.env."""
    _checked(check_name, name)
    hosts = tuple(dict.fromkeys(_checked(check_host, h) for h in hosts)) or (f"{name}.{project.domain}",)
    title = _checked(check_title, title) if title is not None else name.replace("_", " ").title()
    memory = _checked(check_memory, memory) if memory is not None else project.defaults.memory
    with locked(project):
        folder = project.tenant_dir(name)
        if folder.exists():
            raise ConfigError(f"tenant {name!r} already exists ({display_path(folder)}); "
                              f"choose another name, or change it with `tenant up {name}`")
        others = load_tenants(project)
        check_hosts_free(hosts, others)
        tenant = Tenant(
            name=name, hosts=hosts, title=title, port=next_port(project, others), memory=memory,
            workers=workers or project.defaults.workers, threads=project.defaults.threads,
            path=folder,
        )
        # Build the folder under a temporary name and rename it into place, so a
        # failure never leaves a half-made tenant behind.
        project.tenants_dir.mkdir(parents=True, exist_ok=True)
        staging = project.tenants_dir / f".{name}.new-{_secrets.token_hex(4)}"
        try:
            staged = Tenant(**{**tenant.__dict__, "path": staging})
            _write_tenant_files(project, staged, fresh=True)
            os.rename(staging, folder)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        _render_locked(project)
        return tenant


def write_tenant_yaml(tenant: Tenant) -> None:
    text = yaml.safe_dump(tenant.to_yaml_dict(), sort_keys=False, allow_unicode=True)
    atomic_write(tenant.path / TENANT_FILE, f"# Tenant {tenant.name}: see docs/reference.md\n{text}")


def _write_tenant_files(project: Project, tenant: Tenant, fresh: bool = False) -> None:
    """tenant.yaml (when fresh), secrets.env and media folder when missing, and settings.py."""
    tenant.media_dir.mkdir(parents=True, exist_ok=True)
    give_to_app_user(tenant.media_dir)
    if fresh:
        write_tenant_yaml(tenant)
    if not tenant.secrets_file.exists():
        write_env_file(tenant.secrets_file, new_tenant_secrets(),
                       f"Secrets of tenant {tenant.name}. Generated by tenantkit; keep private.")
    atomic_write(tenant.path / "settings.py", render_settings(project, tenant, tenant.url()))


# ---------------------------------------------------------------------------
# render

@dataclass(frozen=True)
class Rendered:
    tenants: list[Tenant]
    context: builder.BuildContext
    image: str  # the working tree's image
    proxy_context: builder.BuildContext | None
    proxy_image: str | None
    images: dict[str, str]  # the image each tenant runs (a release, or the working tree's)


def render(project: Project) -> Rendered:
    """Write every tenant's settings.py, the vhosts and compose/compose.yaml; start nothing."""
    with locked(project):
        return _render_locked(project)


def _render_locked(project: Project) -> Rendered:
    """Render the tenants that are enabled (a tenant removed with --keep-data is not)."""
    tenants = [t for t in load_tenants(project) if t.enabled]
    context = builder.build_context(project, project.images.base)
    image = builder.image_tag(project, context)
    state = releases.load_state(project)
    images = {t.name: releases.image_for(project, state, t, image) for t in tenants}
    proxy_context = proxy_image = None
    if project.proxy.mode == "compose":
        proxy_context = builder.proxy_context(project)
        proxy_image = builder.image_tag(project, proxy_context, project.images.proxy)
    for tenant in tenants:
        _write_tenant_files(project, tenant)
    if project.database.service:
        ensure_db_admin_secret(project.db_env_file)
    if project.proxy.mode != "none":
        proxy.write_sites(project, render_sites(project, tenants, images, backends=dict(NEXT_BACKENDS)))
        for folder in (project.logs_dir, project.assets_dir):
            folder.mkdir(parents=True, exist_ok=True)
    atomic_write(project.compose_file, dump_compose(render_compose(project, tenants, images, proxy_image)))
    return Rendered(tenants, context, image, proxy_context, proxy_image, images)


# ---------------------------------------------------------------------------
# build

def build(project: Project, report: Report = _quiet, force: bool = False) -> str:
    """Build the shared image for the current code when missing or out of date; return its tag."""
    client = engine.connect()
    with locked(project):
        rendered = _render_locked(project)
        _ensure_images(client, project, rendered, report, force)
    return rendered.image


def _ensure_images(client, project: Project, rendered: Rendered, report: Report,
                   force: bool = False, assets: bool = False) -> None:
    """Build the working tree's image (when a tenant runs it) and the proxy's when missing or
    out of date; a release's image must exist already."""
    in_use = set(rendered.images.values())
    builds = []
    if force or rendered.image in in_use or not in_use:
        builds.append((rendered.context, rendered.image, project.images.base, {"SETTINGS_MODULE": project.settings}))
    for tag in sorted(in_use - {rendered.image}):
        if not builder.image_exists(client, tag):
            raise ConfigError(f"the image of release {tag.rpartition(':')[2]} ({tag}) is missing on this engine; "
                              f"rebuild it with `tenant release build {tag.rpartition(':')[2]} --force`")
    if rendered.proxy_context is not None:
        builds.append((rendered.proxy_context, rendered.proxy_image, project.images.proxy_base, {}))
    for context, tag, base, args in builds:
        if force or not builder.image_is_current(client, tag, context):
            report(f"building image {tag}")
            started = time.monotonic()
            builder.build_image(client, context, tag, base, args, on_step=lambda step: report(f"  {step}"))
            report(f"built {tag} in {time.monotonic() - started:.1f}s")
    if assets or project.proxy.mode != "none":
        for tag in in_use or {rendered.image}:
            builder.extract_assets(client, tag, project.assets_dir / release_of(tag))


# ---------------------------------------------------------------------------
# up / down

def select(tenants: list[Tenant], names: Iterable[str], all_: bool) -> list[Tenant]:
    """The tenants named (or all of them), refusing unknown names."""
    names = list(names)
    if all_ and names:
        raise ConfigError("give tenant names or --all, not both")
    if not all_ and not names:
        raise ConfigError("name a tenant, or pass --all")
    if all_:
        return tenants
    by_name = {t.name: t for t in tenants}
    chosen = []
    for name in dict.fromkeys(names):
        _checked(check_name, name)
        if name not in by_name:
            raise ConfigError(f"unknown tenant {name!r}; see `tenant list`, or create it with `tenant new {name}`")
        chosen.append(by_name[name])
    return chosen


def up(project: Project, names: Iterable[str] = (), all_: bool = False,
       report: Report = _quiet) -> list[Tenant]:
    """Build if needed, provision databases, migrate, start and wait until healthy."""
    select(load_tenants(project), names, all_)  # bad names fail before anything else
    client = engine.connect()
    with locked(project):
        for tenant in select(load_tenants(project), names, all_) if names else []:
            if not tenant.enabled:  # `up` brings back a tenant removed with --keep-data
                write_tenant_yaml(Tenant(**{**tenant.__dict__, "enabled": True}))
        rendered = _render_locked(project)
        chosen = select(rendered.tenants, names, all_)
        _ensure_images(client, project, rendered, report)
        before = engine.service_states(client, project)
        _start_database(client, project, chosen, report)
        _provision(project, chosen, report)
        states = engine.service_states(client, project)
        failures = _migrate_all(project, migrations.pending_tenants(project, chosen, states, rendered.images),
                                states, rendered.images, report)
        for tenant in failures:  # a tenant that was absent stays absent: drop the container made for it
            if tenant.names.service not in before:
                engine.compose(project, "rm", "-f", "-s", tenant.names.service, check=False)
        chosen = [t for t in chosen if t not in failures]
        if chosen:
            report(f"starting {', '.join(t.name for t in chosen)}")
            engine.compose(project, "up", "-d", "--no-deps", "--remove-orphans",
                           *(t.names.service for t in chosen))
        health.wait_healthy(client, project, chosen, report)
        after = engine.service_states(client, project)
        recreated = any(_container_id(before, t) != _container_id(after, t) for t in chosen)
        proxy.sync(client, project, rendered.tenants, report, force=recreated)
        health.wait_routed(project, chosen)
    if failures:  # the others are up; the command still fails, naming each failure
        raise OperationFailed("\n".join(str(error) for error in failures.values()))
    return chosen


MIGRATE_JOBS = 4


def _migrate_all(project: Project, tenants: list[Tenant], states: dict, images: dict[str, str],
                 report: Report) -> dict[Tenant, OperationFailed]:
    """Migrate tenants, a few at a time; return the ones that failed, with their errors."""
    failures: dict[Tenant, OperationFailed] = {}

    def one(tenant: Tenant) -> None:
        report(f"migrating {tenant.name}")
        _migrate(project, tenant, migrations.runs_current_image(states, tenant, images[tenant.name]))

    with ThreadPoolExecutor(max_workers=MIGRATE_JOBS) as pool:
        futures = {pool.submit(one, tenant): tenant for tenant in tenants}
        for future, tenant in futures.items():
            try:
                future.result()
            except OperationFailed as exc:
                failures[tenant] = exc
    return failures


def _container_id(states: dict, tenant: Tenant) -> str | None:
    state = states.get(tenant.names.service)
    return state.container.id if state and state.container else None


def _start_database(client, project: Project, tenants: list[Tenant], report: Report) -> None:
    """Start the compose db service, or attach the running one to the tenants' networks."""
    if not project.database.service:
        return
    state = engine.service_states(client, project).get("db", engine.ABSENT)
    if state.state != "running":
        report("starting database")
        engine.compose(project, "up", "-d", "--wait", "db")
        return
    on = set(state.container.attrs["NetworkSettings"]["Networks"])
    missing = [t for t in tenants if f"{project.name}_{t.names.network}" not in on]
    if missing:
        # Create those tenants' networks (and absent containers, unstarted) without touching
        # db, and without recreating a running tenant: that is `up -d`'s job, after migrations.
        engine.compose(project, "up", "--no-start", "--no-deps", "--no-recreate",
                       *(t.names.service for t in missing))
        engine.attach_to_networks(client, project, "db", [t.names.network for t in missing])


def _provision(project: Project, tenants: list[Tenant], report: Report) -> None:
    if not tenants:
        return
    conn = database.admin_connect(project)
    try:
        database.harden_server(conn)
        for tenant in tenants:
            password = read_env_file(tenant.secrets_file)["TENANT_DB_PASSWORD"]
            if database.provision_database(conn, tenant.names, password):
                report(f"created database and role {tenant.names.database}")
    finally:
        conn.close()


def _migrate(project: Project, tenant: Tenant, running: bool) -> None:
    """Apply migrations (in a one-off container of the new image unless the running one is
    already on it); a settings error fails here, loudly."""
    code, output = migrations.in_tenant(project, tenant, ["python", "manage.py", "migrate", "--noinput"], running)
    if code != 0:
        raise OperationFailed(
            f"tenant {tenant.name}: migrate failed (exit {code}), so it was not started. "
            f"Last lines:\n{tail(output)}")


def down(project: Project, names: Iterable[str] = (), all_: bool = False,
         report: Report = _quiet) -> list[Tenant]:
    """Stop the named tenants' containers (with --all: the whole stack); data is kept."""
    select(load_tenants(project), names, all_)
    engine.connect()
    with locked(project):
        rendered = _render_locked(project)
        chosen = select(rendered.tenants, names, all_)
        if all_:
            report("stopping the whole stack")
            engine.compose(project, "down", "--remove-orphans")
        else:
            report(f"stopping {', '.join(t.name for t in chosen)}")
            engine.compose(project, "stop", *(t.names.service for t in chosen))
    return chosen


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

    def to_dict(self) -> dict:
        return asdict(self)


def status(project: Project) -> list[TenantStatus]:
    """Every tenant with its container's state (running, stopped, absent) and health."""
    tenants = load_tenants(project)
    states = engine.service_states(engine.connect(), project)
    result = []
    for tenant in tenants:
        state = states.get(tenant.names.service, engine.ABSENT)
        result.append(TenantStatus(
            name=tenant.name, title=tenant.title, hosts=list(tenant.hosts),
            state=state.state if tenant.enabled else "disabled",
            health=state.health, url=project.tenant_url(tenant), port=tenant.port, database=tenant.names.database,
        ))
    return result


# ---------------------------------------------------------------------------
# manage

def manage(project: Project, name: str, args: list[str], interactive: bool = False) -> int:
    """Run `manage.py ARGS` in the tenant's context; return its exit code."""
    select(load_tenants(project), [name], False)
    client = engine.connect()
    with locked(project):
        rendered = _render_locked(project)
        tenant = select(rendered.tenants, [name], False)[0]
        state = engine.service_states(client, project).get(tenant.names.service, engine.ABSENT)
        if state.state != "running":
            _ensure_images(client, project, rendered, _quiet)
            _start_database(client, project, [tenant], _quiet)
            _provision(project, [tenant], _quiet)
    argv = migrations.tenant_argv(tenant, ["python", "manage.py", *args], state.state == "running", interactive)
    return engine.compose(project, *argv, capture=False, check=False, interactive=interactive).returncode


# ---------------------------------------------------------------------------
# maintenance

def maintenance(project: Project, name: str, on: bool, report: Report = _quiet) -> Tenant:
    """Make the tenant's vhost answer 503 with a maintenance page (or serve it again)."""
    tenant = select(load_tenants(project), [name], False)[0]
    if project.proxy.mode == "none":
        raise ConfigError("maintenance mode is served by the proxy; set proxy.mode in tenantkit.yaml")
    client = engine.connect() if project.proxy.mode == "compose" else None
    with locked(project):
        tenant = select(load_tenants(project), [name], False)[0]
        tenant = Tenant(**{**tenant.__dict__, "maintenance": on})
        write_tenant_yaml(tenant)
        rendered = _render_locked(project)
        if project.proxy.mode == "compose":
            _ensure_images(client, project, rendered, report)
        proxy.sync(client, project, rendered.tenants, report)
    return tenant


# ---------------------------------------------------------------------------
# apache --mode proxy

def apache_proxy(project: Project, out: Path, listen_port: int, report: Report = _quiet) -> list[str]:
    """Write vhosts for the host's own Apache, proxying to the tenants' loopback ports."""
    client = engine.connect()
    with locked(project):
        rendered = _render_locked(project)
        _ensure_images(client, project, rendered, report, assets=True)
        sites = render_sites(project, rendered.tenants, rendered.images, host_layout(project, listen_port))
        project.logs_dir.mkdir(parents=True, exist_ok=True)
        for name, text in sites.items():
            atomic_write(out / name, text)
    return sorted(sites)


# ---------------------------------------------------------------------------
# status / logs

def status_detail(project: Project, names: Iterable[str] = ()) -> list[dict]:
    """State, health, image, memory, uptime and database size of tenants."""
    tenants = load_tenants(project)
    chosen = select(tenants, names, not names) if names else tenants
    client = engine.connect()
    states = engine.service_states(client, project)
    sizes: dict[str, int] = {}
    db_running = not project.database.service or states.get("db", engine.ABSENT).state == "running"
    if db_running and chosen:
        conn = database.admin_connect(project, retry=False)
        try:
            sizes = database.database_sizes(conn)
        finally:
            conn.close()

    def detail(tenant: Tenant) -> dict:
        state = states.get(tenant.names.service, engine.ABSENT)
        row = {"name": tenant.name, "state": state.state if tenant.enabled else "disabled",
               "health": state.health, "url": project.tenant_url(tenant), "image": None,
               "memory_mib": None, "uptime_seconds": None, "maintenance": tenant.maintenance,
               "database": tenant.names.database, "database_bytes": sizes.get(tenant.names.database)}
        if state.container is not None:
            row["image"] = state.container.attrs["Config"]["Image"]
        if state.state == "running":
            stats = state.container.stats(stream=False, one_shot=True).get("memory_stats", {})
            inactive = stats.get("stats", {}).get("total_inactive_file", stats.get("stats", {}).get("inactive_file", 0))
            row["memory_mib"] = round((stats.get("usage", 0) - inactive) / 2**20, 1)
            started = state.container.attrs["State"]["StartedAt"]
            since = dt.datetime.fromisoformat(started[:26].rstrip("Z") + "+00:00")
            row["uptime_seconds"] = int((dt.datetime.now(dt.timezone.utc) - since).total_seconds())
        return row

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(detail, chosen))


def logs(project: Project, name: str, follow: bool = False, lines: int = 100) -> int:
    """Print the tenant's container output, then its Apache access and error logs."""
    tenant = select(load_tenants(project), [name], False)[0]
    engine.connect()
    apache = [project.logs_dir / f"{name}.access.log", project.logs_dir / f"{name}.error.log"]
    apache = [str(path) for path in apache if path.exists()]
    args = ["logs", "--no-color", "--tail", str(lines)] + (["--follow"] if follow else [])
    if not follow:
        code = engine.compose(project, *args, tenant.names.service, capture=False, check=False).returncode
        for path in apache:
            print(f"==> {path} <==", flush=True)
            subprocess.run(["tail", "-n", str(lines), path])
        return code
    tails = subprocess.Popen(["tail", "-n", str(lines), "-F", *apache]) if apache else None
    try:
        return engine.compose(project, *args, tenant.names.service, capture=False, check=False).returncode
    finally:
        if tails:
            tails.terminate()

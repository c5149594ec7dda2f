"""`tenant doctor`: what an operator would otherwise find out the hard way, each problem
with the command to run or the file to edit.

It changes nothing: it renders nothing, takes no lock, and starts nothing but throwaway
containers for the settings checks (read-only, on no network). It looks at each kind of
thing once (one container list, one network list, one query per catalogue of the
database server), so its cost hardly grows with the fleet; only the settings checks run
per tenant, a few at a time. The engine and the database are looked at, never relied
on: a part that is down fails its own checks, with the fix, and the others still run.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import docker
import psycopg2
import yaml

from ..act import database, engine, migrations, state
from ..act import memory as memory_of
from ..act.engine import Container, ContainerState
from ..act.files import port_is_free
from ..act.migrations import exec_in
from ..model import (ConfigError, Project, ProxyMode, Tenant, check_name, check_unique, display_path, load_tenant,
                     load_tenants, reserved_ports, tenant_folder_names, tenant_names)
from ..render.apache import DEFAULT_SITE
from . import stack
from .tenants import test_running
from .fleet import bounded
from .stack import Report, quiet

OK, WARN, FAIL = "ok", "warn", "fail"
SETTINGS_JOBS = 8  # settings checks at a time: each is a container start and a Django import
SETTINGS_TIMEOUT = 120  # seconds one settings check may take
CHECK_COMMAND = ["python", "manage.py", "check"]
DOCTOR_LABEL = "tenantkit.doctor"  # on the throwaway containers of settings checks: the project's name
MIN_API = (1, 41)  # Docker 20.10: `tenant status` asks for one-shot stats
MIN_COMPOSE = (2, 20)  # compose/compose.yaml `include:`s the tenants' files
MIN_POSTGRES = 130000  # DROP DATABASE ... WITH (FORCE)
BUSY_SHARE = 0.8  # connections in use, of max_connections, worth a warning
POOL_SHARE = 0.1  # subnets left, of the pool, worth a warning
MEDIA_SCAN_SECONDS = 2.0  # the media estimate stops counting after this long (then it says "at least")
LISTED = 8  # names a finding lists before "and N more"


@dataclass(frozen=True)
class Finding:
    """The result of one check: ok, warn or fail, one line, and for a problem its fix."""

    check: str
    status: str
    message: str
    fix: str | None = None
    tenant: str | None = None

    def to_dict(self) -> dict:
        return {"check": self.check, "status": self.status, "message": self.message, "fix": self.fix,
                "tenant": self.tenant}


def _split(error: Exception) -> tuple[str, str | None]:
    """A tenantkit error as (problem, fix): its messages say the fix after the first "; "."""
    problem, _, fix = " ".join(str(error).split()).partition("; ")
    return problem, fix or None


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


def _size(count: int | None) -> str:
    if count is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


# ---------------------------------------------------------------------------
# What the checks share, each looked up once

@dataclass
class Facts:
    project: Project
    folders: list[str]  # every tenant folder (with a tenant.yaml), whether it loads or not
    tenants: list[Tenant]  # those that load
    chosen: list[Tenant]  # those the checks about tenants look at (NAME... on the command line)
    state: state.State | None  # None: state.json is damaged
    state_error: Finding | None
    client: object | None  # a Docker client; None: the engine is unreachable
    containers: list[Container] | None = None  # every container labelled for the project
    networks: list[str] | None = None  # every network labelled for the project
    foreign: list[ipaddress.IPv4Network] | None = None  # subnets of the engine's other networks
    published: dict[int, Container] | None = None  # loopback ports running containers publish
    server: database.Server | None = None
    databases: list[database.DatabaseInfo] | None = None
    roles: list[database.RoleInfo] | None = None
    db_error: Finding | None = None  # why the database could not be asked

    @property
    def enabled(self) -> list[Tenant]:
        return [t for t in self.tenants if t.enabled]

    @property
    def active(self) -> list[Tenant]:
        """The chosen tenants that are meant to run: enabled and not being removed."""
        return [t for t in self.chosen if t.enabled and not t.removing]

    @property
    def started(self) -> bool:
        """Whether any of the project's containers exists: none after `tenant down --all`, or
        before the first `tenant up`, when a missing database or proxy is no failure."""
        return any(c.labels.get(ONEOFF) != "True" for c in self.containers or [])

    def service(self, name: str) -> Container | None:
        """The project's own container of a service (not a one-off run), running first."""
        own = [c for c in self.containers or [] if c.service == name and c.labels.get(ONEOFF) != "True"]
        return max(own, key=lambda c: (c.state is ContainerState.RUNNING, c.created), default=None)


ONEOFF = "com.docker.compose.oneoff"
NO_ENGINE = "start the Docker engine (see the engine check)"


def doctor(project: Project, names: Iterable[str] = (), jobs: int = SETTINGS_JOBS,
           report: Report = quiet) -> list[Finding]:
    """Run every check; the findings in a fixed order (engine first, disk last). With
    names, the checks about tenants (settings, ports, vhosts, removals) look at those
    tenants only; the others look at the whole project."""
    if project.engine == "swarm":
        from .swarm import refuse
        raise refuse("doctor")
    folders = tenant_folder_names(project)
    wanted = _chosen_names(folders, names)
    findings, tenants = _load(project, folders)
    chosen = [t for t in tenants if wanted is None or t.name in wanted]
    client, engine_findings = _engine()
    known, state_error = None, None
    try:
        known = state.load(project)
    except ConfigError as exc:
        state_error = Finding("state", FAIL, *_split(exc))
    facts = Facts(project, folders, tenants, chosen, known, state_error, client)
    engine_findings += _gather_engine(facts)
    settings = _start_settings(facts, jobs, report)  # the longest part, meanwhile
    _gather_database(facts)
    ordered = engine_findings + findings
    for check in CHECKS:
        ordered += check(facts)
        if check is check_ports:  # settings after ports: they take longest, and run meanwhile
            ordered += settings()
    return ordered


def _chosen_names(folders: list[str], names: Iterable[str]) -> set[str] | None:
    """The tenants named on the command line (None: all); an unknown name is bad input."""
    names = list(names)
    if not names:
        return None
    for name in names:
        stack.checked(check_name, name)
        if name not in folders:
            raise ConfigError(f"unknown tenant {name!r}; see `tenant list`")
    return set(names)


def _load(project: Project, folders: list[str]) -> tuple[list[Finding], list[Tenant]]:
    """Every tenant that loads, and a finding for each that does not. Two tenants on one
    port are the ports check's to report, so they do not stop the others loading here."""
    try:
        tenants = load_tenants(project)
    except ConfigError:
        tenants = None
    findings = []
    if tenants is None:
        tenants = []
        for name in folders:
            try:
                tenants.append(load_tenant(project, name))
            except ConfigError as exc:
                findings.append(Finding("config", FAIL, " ".join(str(exc).split()),
                                        f"correct tenants/{name}/tenant.yaml (its keys: docs/reference.md)", name))
        try:  # hosts, databases and roles; each tenant on a port of its own, which no check refuses
            check_unique([replace(t, port=-1 - i) for i, t in enumerate(tenants)], project)
        except ConfigError as exc:
            problem, fix = _split(exc)
            findings.append(Finding("config", FAIL, problem, fix))
    if not findings:
        enabled = sum(1 for t in tenants if t.enabled)
        findings.append(Finding("config", OK, f"tenantkit.yaml and {len(tenants)} tenant.yaml files load "
                                              f"({enabled} enabled)"))
    return findings, tenants


# ---------------------------------------------------------------------------
# engine and Compose

def _engine() -> tuple[object | None, list[Finding]]:
    findings = []
    try:
        client = engine.connect(timeout=10)
        version = client.version()
        api = tuple(int(part) for part in version.get("ApiVersion", "0.0").split(".")[:2])
        line = f"Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})"
        if api < MIN_API:
            findings.append(Finding("engine", WARN, f"{line} is older than Docker 20.10 (API 1.41), which "
                                    "tenantkit expects", "upgrade the engine: `make engine`"))
        else:
            findings.append(Finding("engine", OK, line))
    except ConfigError as exc:
        client = None
        problem, fix = _split(exc)
        findings.append(Finding("engine", FAIL, problem, fix))
    try:
        version = engine.compose_version()
        number = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
        if number < MIN_COMPOSE:
            findings.append(Finding("compose", FAIL, f"Docker Compose {version} is older than 2.20, which "
                                    "compose/compose.yaml needs (it uses `include:`)",
                                    "install a newer Compose v2: `make engine`"))
        else:
            findings.append(Finding("compose", OK, f"Docker Compose {version}"))
    except ConfigError as exc:
        problem, fix = _split(exc)
        findings.append(Finding("compose", FAIL, problem, fix))
    return client, findings


def _gather_engine(facts: Facts) -> list[Finding]:
    """The engine's containers, networks and published ports: one list call each."""
    client = facts.client
    if client is None:
        return []
    try:
        facts.containers = engine.project_containers(client, facts.project)
        facts.networks = engine.project_networks(client, facts.project)
        facts.foreign = engine.foreign_subnets(client, facts.project)
        facts.published = engine.loopback_publishers(client)
    except Exception as exc:  # the engine went away after it answered: the checks that need it say so
        facts.containers = facts.networks = facts.foreign = facts.published = None
        return [Finding("engine", FAIL, f"the engine stopped answering: {type(exc).__name__}: {exc}",
                        "see the engine's log (`journalctl -u docker`, or /var/log/dockerd.log)")]
    return []


def _gather_database(facts: Facts) -> None:
    """The server's version, budget, databases and roles: three queries on one connection.
    The compose database is asked only when its container runs: otherwise whatever else
    answers on its port would be taken for it."""
    project = facts.project
    db = project.database
    where = f"{db.admin_host}:{db.admin_port}"
    if db.service and facts.containers is not None:
        found = facts.service("db")
        if engine.state_of(found) is not ContainerState.RUNNING:
            what = "is stopped" if found is not None else "does not exist"
            facts.db_error = Finding("database", FAIL if facts.started else WARN,
                                     f"the database container (service db) {what}"
                                     + ("" if facts.started else ": the stack is not started"),
                                     "start it: `tenant up --all` (with the tenants), or `docker compose -f "
                                     f"{shlex.quote(display_path(project.compose_file))} up -d --no-recreate db` (alone)")
            return
    try:
        conn = database.admin_connect(project, retry=False)
    except ConfigError as exc:
        problem, fix = _split(exc)
        facts.db_error = Finding("database", FAIL, problem, fix)
        return
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        fix = (NO_ENGINE if db.service and facts.client is None else
               "start the database: `tenant up --all`" if db.service else
               "start the server, or correct database.host, database.port and database.admin_password_file "
               "in tenantkit.yaml")
        facts.db_error = Finding("database", FAIL, f"PostgreSQL at {where} does not answer as {db.admin_user}: "
                                                   f"{reason}", fix)
        return
    try:
        facts.server = database.server(conn)
        facts.databases = database.inventory(conn)
        facts.roles = database.login_roles(conn)
    except psycopg2.Error as exc:
        facts.db_error = Finding("database", FAIL, f"PostgreSQL at {where} fails a query: "
                                 + " ".join(str(exc).split()), f"see the server's log: `docker compose -f "
                                 f"{shlex.quote(display_path(project.compose_file))} logs db`" if db.service
                                 else "see the server's log")
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# The checks, in the order they are printed. Each returns its findings.

def check_network_pool(facts: Facts) -> list[Finding]:
    """networks.pool overlaps no network of another project or tool, and has subnets left."""
    if facts.foreign is None:
        return [Finding("network pool", WARN, "not checked: the Docker engine is unreachable", NO_ENGINE)]
    pool = facts.project.networks
    findings = []
    try:
        state.check_pool(facts.project, facts.foreign)
    except ConfigError as exc:
        problem, fix = _split(exc)
        findings.append(Finding("network pool", FAIL, problem,
                                f"{fix} (or tenantkit.local.yaml, for this machine only); "
                                "`docker network ls` shows who holds that range"))
    runtimes = facts.state.tenants.values() if facts.state else []
    used = sum(1 for rt in runtimes if rt.subnet and ipaddress.IPv4Network(rt.subnet).subnet_of(pool.pool))
    owed = sum(1 for t in facts.enabled if facts.state and not facts.state.runtime(t.name).subnet)
    left = pool.capacity - used
    line = f"{pool.pool}: {used} of {pool.capacity} /{pool.prefix} subnets allocated, {left} left"
    grow = ("set a larger networks.pool (or a longer networks.prefix) in tenantkit.yaml; tenants keep the "
            "subnets they have")
    if left < owed:
        findings.append(Finding("network pool", FAIL, f"{line}, and {owed} tenants need one", grow))
    elif left < max(1, pool.capacity * POOL_SHARE):
        findings.append(Finding("network pool", WARN, f"{line}: new tenants will soon find none", grow))
    elif not findings:
        findings.append(Finding("network pool", OK, f"{line}; it overlaps no other engine network"))
    return findings


def check_kernel(facts: Facts) -> list[Finding]:
    """The kernel's neighbour (ARP) table, which every network namespace shares, holds the
    fleet: past it, connections stall for seconds (docs/operations.md)."""
    warning = engine.neighbour_table_warning(len(facts.enabled))
    if warning:
        problem, fix = _split(ValueError(warning.removeprefix("warning: ")))
        return [Finding("kernel", WARN, problem, fix)]
    try:
        room = int(engine.NEIGHBOUR_LIMIT.read_text()) // engine.NEIGHBOURS_PER_TENANT
    except (OSError, ValueError):
        return []  # not Linux, or not readable: nothing to say
    return [Finding("kernel", OK, f"the neighbour table has room for about {room} tenants "
                                  f"({len(facts.enabled)} enabled)")]


def check_database(facts: Facts) -> list[Finding]:
    """The server answers, is recent enough, and the tenants' connection limits fit its budget."""
    if facts.db_error is not None:
        return [facts.db_error]
    project, server = facts.project, facts.server
    db = project.database
    findings = []
    where = f"{db.admin_host}:{db.admin_port}"
    if server.version_num < MIN_POSTGRES:
        findings.append(Finding("database", FAIL, f"PostgreSQL {server.version} at {where} is older than 13, "
                                "which tenantkit needs", "set a newer images.db in tenantkit.yaml (such as "
                                "postgres:15) or upgrade the server"))
    else:
        findings.append(Finding("database", OK, f"PostgreSQL {server.version} at {where} answers"))
    budget = server.max_connections - server.reserved
    limits = sum(stack.connection_limit(t) for t in facts.enabled)
    raise_it = ("raise database.max_connections in tenantkit.yaml; it applies when the database restarts "
                "(`tenant down --all && tenant up --all`)" if db.service else
                "raise max_connections on the database server")
    if server.in_use >= BUSY_SHARE * server.max_connections:
        findings.append(Finding("connections", WARN, f"{server.in_use} of {server.max_connections} connections "
                                "in use: the server is close to refusing new ones", raise_it))
    if limits > budget:
        findings.append(Finding(
            "connections", WARN, f"the enabled tenants' connection limits add up to {limits}, over the {budget} the "
            f"server has for them (max_connections {server.max_connections} less {server.reserved} reserved): "
            f"overcommitted {limits / budget:.1f}x, which holds while they are not all busy at once "
            "(docs/concepts.md, Database connections)", raise_it))
    if len(findings) == 1:
        findings.append(Finding("connections", OK, f"{server.in_use} of {server.max_connections} in use; the "
                                f"enabled tenants' limits add up to {limits} of the {budget} the server allows"))
    return findings


def check_proxy(facts: Facts) -> list[Finding]:
    """Compose mode: the proxy runs and its Apache config passes `httpd -t`. Both modes with
    a proxy: every tenant that runs has its vhost, and the catch-all is there."""
    project = facts.project
    mode = project.proxy.mode
    if mode is ProxyMode.NONE:
        return [Finding("proxy", OK, "no proxy (proxy.mode: none): tenants answer on their loopback ports")]
    findings = _vhosts(facts)
    if mode is ProxyMode.HOST:
        if not findings:
            findings.append(Finding("proxy", OK, f"{len(facts.active)} tenant vhosts for the host's Apache in "
                                                 f"{display_path(project.sites_dir)}"))
        return findings
    if facts.containers is None:
        return findings + [Finding("proxy", WARN, "not checked: the Docker engine is unreachable", NO_ENGINE)]
    found = facts.service("proxy")
    if engine.state_of(found) is not ContainerState.RUNNING or found.restarting:
        what = "does not exist" if found is None else "keeps restarting" if found.restarting else "is stopped"
        fix = ("see why: `docker logs " + found.name + "`; `tenant up --all` starts it again" if found and
               found.restarting else "start it: `tenant up --all`")
        return findings + [Finding("proxy", FAIL if facts.started else WARN, f"the proxy container (service proxy) "
                                   f"{what}" + ("" if facts.started else ": the stack is not started"), fix)]
    try:
        code, output = exec_in(facts.client, found.id, ["/opt/tenantkit/run-httpd", "-t"])
    except docker.errors.APIError as exc:  # it stopped or restarted between the listing and now
        return findings + [Finding("proxy", WARN, f"Apache's config test could not run in {found.name}: "
                                   f"{' '.join(str(exc).split())[:200]}", "run `tenant doctor` again")]
    if code != 0:
        lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
        where = next((i for i, line in enumerate(lines) if "Syntax error on line" in line), len(lines) - 1)
        return findings + [Finding("proxy", FAIL, f"Apache's config test (`httpd -t`) fails in {found.name}: "
                                   + (" ".join(lines[where:where + 2]) if lines else f"exit {code}"),
                                   "the vhosts in compose/apache/sites/ are generated: remove files you added "
                                   "there and run `tenant render`; `docker exec " + found.name +
                                   " /opt/tenantkit/run-httpd -t` shows the whole error")]
    if not findings:
        findings.append(Finding("proxy", OK, f"{found.name} runs; Apache's config test passes "
                                             f"({len(facts.active)} tenant vhosts)"))
    return findings


def _vhosts(facts: Facts) -> list[Finding]:
    """Every running tenant's vhost, and the catch-all, exist (one listing of the folder)."""
    sites = facts.project.sites_dir
    present = {path.name for path in sites.glob("*.conf")} if sites.is_dir() else set()
    missing = [t.name for t in facts.active if t.names.vhost not in present]
    folder = display_path(facts.project.sites_dir)
    findings = []
    if DEFAULT_SITE not in present and facts.active:
        findings.append(Finding("proxy", FAIL, f"the catch-all vhost {folder}/{DEFAULT_SITE} is missing",
                                "write it: `tenant render`"))
    if missing:
        findings.append(Finding("proxy", FAIL, f"no vhost in {folder} for {_names(missing)}",
                                "write them: `tenant render`"))
    return findings


def check_ports(facts: Facts) -> list[Finding]:
    """Each tenant's port is its own: no other tenant's, none tenantkit keeps for itself, and
    (where tenants publish theirs: proxy.mode host or none) nothing else listens on it.
    tenantkit's own ports (the compose proxy's, the database's) are not taken by another."""
    project = facts.project
    publishing = project.proxy.mode is not ProxyMode.COMPOSE
    kept = reserved_ports(project)  # published by tenantkit's own containers
    own = dict(kept)
    if project.proxy.mode is ProxyMode.HOST:
        own[project.proxy.port] = "the host Apache's (proxy.port)"
    taken = {t.port for t in facts.tenants} | set(own)
    chosen = {t.name for t in facts.chosen}
    findings = []

    def move(tenant: Tenant) -> str:
        port = _free_port(project, taken)
        taken.add(port)
        return (f"give it another port: `tenant set {tenant.name} port={port}` (or `port:` in "
                f"tenants/{tenant.name}/tenant.yaml), then `tenant up {tenant.name}`")

    claimed: dict[int, Tenant] = {}
    for tenant in facts.tenants:
        other = claimed.setdefault(tenant.port, tenant)
        if other is not tenant and chosen & {tenant.name, other.name}:
            findings.append(Finding("ports", FAIL, f"port {tenant.port} is claimed by both {other.name} and "
                                                   f"{tenant.name}", move(tenant), tenant.name))
        if tenant.port in own and tenant.name in chosen:
            findings.append(Finding("ports", FAIL, f"tenant {tenant.name}'s port {tenant.port} is {own[tenant.port]}",
                                    move(tenant), tenant.name))
    if facts.published is None:  # without the engine, a tenant's own container cannot be told from a clash
        return findings + [Finding("ports", WARN, "who listens on the project's ports: not checked, the Docker "
                                                  "engine is unreachable", NO_ENGINE)]
    for port, whose in sorted(kept.items()):
        holder = _holder(facts, port)
        if holder is not None and holder[0] != "ours":
            findings.append(Finding("ports", FAIL, f"127.0.0.1:{port}, {whose} port, is taken by {holder[1]}",
                                    f"stop that ({holder[2]}), or choose another port in tenantkit.yaml "
                                    f"({_key_of(project, port)})"))
    for tenant in facts.active if publishing else []:
        if tenant.port in own or claimed[tenant.port] is not tenant:
            continue  # reported above
        holder = _holder(facts, tenant.port, tenant)
        if holder is not None and holder[0] != "ours":
            findings.append(Finding("ports", FAIL, f"tenant {tenant.name}'s port 127.0.0.1:{tenant.port} is taken "
                                                   f"by {holder[1]}", f"stop that ({holder[2]}), or {move(tenant)}",
                                    tenant.name))
    if not findings:
        where = (f"{len(facts.active)} tenants' loopback ports are theirs" if publishing else
                 "tenants publish no port behind the compose proxy; tenantkit's own ports are free or its own")
        findings.append(Finding("ports", OK, where))
    return findings


def _key_of(project: Project, port: int) -> str:
    return "database.publish_port" if project.database.service and port == project.database.publish_port \
        else "proxy.port"


def _holder(facts: Facts, port: int, tenant: Tenant | None = None) -> tuple[str, str, str] | None:
    """Who holds 127.0.0.1:port, when something does: ("ours", ...) for the container that
    should (the tenant's own, or tenantkit's db or proxy), else ("other", who, how to see)."""
    if port_is_free(port):
        return None
    container = (facts.published or {}).get(port)
    if container is not None:
        ours = container.labels.get("com.docker.compose.project") == facts.project.name and (
            container.service == tenant.names.service if tenant else container.service in ("db", "proxy"))
        if ours:
            return "ours", container.name, ""
        return "other", f"the container {container.name}", f"`docker stop {container.name}`"
    return "other", "another program", f"`ss -ltnp 'sport = :{port}'` shows which"


def _free_port(project: Project, taken: set[int]) -> int:
    """A port to suggest: the lowest from ports.first that no tenant claims and nothing holds."""
    port = project.first_port
    while (port in taken or not port_is_free(port)) and port < 65535:
        port += 1
    return port


def _start_settings(facts: Facts, jobs: int, report: Report):
    """Start `manage.py check` for each tenant, a few at a time, in the background; returns
    what collects their findings. The settings are checked as they are on disk, in a
    throwaway container made like the tenant's service: a running container may have older
    ones loaded, or a folder that was since replaced."""
    tenants = facts.active
    if facts.client is None:
        findings = [Finding("settings", WARN, f"not checked for {len(tenants)} tenants: the Docker engine is "
                                              "unreachable", NO_ENGINE)] if tenants else []
        return lambda: findings
    if not tenants:
        return lambda: []
    # Tenants of one kind (image, extra apps, local_settings.py) load the same code: one
    # of each kind is checked and speaks for the others, so a fleet of thousands made
    # from one release costs one check.
    kinds: dict[tuple, list[Tenant]] = {}
    for tenant in tenants:
        kinds.setdefault(_kind(facts, tenant), []).append(tenant)
    report(f"checking the settings of {len(tenants)} tenants ({len(kinds)} kinds), {jobs} at a time")
    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=1)
    running = pool.submit(bounded, [members[0] for members in kinds.values()], lambda t: _settings_of(facts, t), jobs)

    def collect() -> list[Finding]:
        checked = running.result()
        pool.shutdown()
        results = {t.name: _for_member(checked[members[0].name], members[0], t)
                   for members in kinds.values() for t in members}
        findings = []
        for tenant in tenants:
            finding, error = results[tenant.name]
            if error is not None:
                finding = Finding("settings", WARN, f"tenant {tenant.name}: not checked: "
                                  f"{type(error).__name__}: {' '.join(str(error).split())[:200]}",
                                  f"run it by hand: `tenant manage {tenant.name} -- check`", tenant.name)
            if finding is not None:
                findings.append(finding)
        if not findings:
            findings.append(Finding("settings", OK, f"the settings of {len(tenants)} tenants load "
                                                    f"(`manage.py check`, {time.monotonic() - started:.1f} s)"))
        return findings

    return collect


def _kind(facts: Facts, tenant: Tenant) -> tuple:
    """What decides whether a tenant's settings load, beyond their data (names, hosts):
    the image its compose file names, its extra apps and its local_settings.py."""
    path = facts.project.tenant_compose_file(tenant)
    try:
        image = re.search(r"^\s+image: (\S+)$", path.read_text(), re.M).group(1)
    except (OSError, AttributeError):
        return (tenant.name,)  # not rendered: a kind of its own, and _settings_of says so
    return migrations.graph_key(tenant, {tenant.name: image})


def _for_member(result: tuple, checked: Tenant, member: Tenant) -> tuple:
    """The finding of the tenant that was checked, as it reads for another of its kind."""
    finding, error = result
    if finding is None or member is checked:
        return result
    return replace(finding, message=finding.message.replace(f"tenant {checked.name}", f"tenant {member.name}"),
                   fix=(finding.fix or "").replace(checked.name, member.name) or None, tenant=member.name), error


def _settings_of(facts: Facts, tenant: Tenant) -> Finding | None:
    """One tenant's settings check; None when they load."""
    project = facts.project
    path = project.tenant_compose_file(tenant)
    try:
        service = yaml.safe_load(path.read_text())["services"][tenant.names.service]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return Finding("settings", WARN, f"tenant {tenant.name} is not rendered ({display_path(path)} is missing "
                                         "or not its own)", "render it: `tenant render`", tenant.name)
    if not (tenant.path / "settings.py").is_file():
        return Finding("settings", WARN, f"tenant {tenant.name} has no settings.py", "render it: `tenant render`",
                       tenant.name)
    current = facts.service(tenant.names.service)
    if current is not None and current.image_id and engine.image_id(facts.client, service["image"]) is None:
        service = {**service, "image": current.image_id}  # the code changed and `up` has not built it yet
    try:
        code, output = engine.run_throwaway(facts.client, service, path.parent, CHECK_COMMAND,
                                            {DOCTOR_LABEL: project.name}, SETTINGS_TIMEOUT)
    except ConfigError as exc:
        return Finding("settings", WARN, f"tenant {tenant.name}: not checked: {exc}",
                       f"build it: `tenant up {tenant.name}`", tenant.name)
    if code == 0:
        return None
    running = engine.state_of(current) is ContainerState.RUNNING
    return Finding("settings", FAIL, f"tenant {tenant.name}'s settings do not load: {error_line(output, code)}"
                   + (" (its container runs on the settings it started with; a restart would fail)" if running else ""),
                   f"correct tenants/{tenant.name}/local_settings.py, or its tenant.yaml (such as `apps`) and run "
                   f"`tenant render`; the whole error: `tenant manage {tenant.name} -- check`", tenant.name)


CHECK_ERROR_RE = re.compile(r"\(\w+\.E\d+\)")


def error_line(output: str, code: int) -> str:
    """The line of a failed `manage.py check` that says what is wrong: Django's first system
    check error, or the exception raised (the first line under the last traceback that is
    not indented, as Python prints it)."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    checks = [line.strip() for line in lines if CHECK_ERROR_RE.search(line)]
    if checks:
        return checks[0][:300]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        raised = [line for line in lines[starts[-1] + 1:] if not line[:1].isspace()]
        if raised:
            return raised[0][:300]
    return (lines[-1].strip()[:300] if lines else "no output") + f" (exit {code})"


def check_state(facts: Facts) -> list[Finding]:
    """.tenantkit/state.json reads, and remembers no tenant that no longer exists."""
    path = display_path(facts.project.state_file)
    if facts.state is None:
        return [facts.state_error]
    stale = sorted(set(facts.state.tenants) - set(facts.folders))
    if not stale:
        return [Finding("state", OK, f"{path}: {len(facts.state.tenants)} tenant entries, none stale")]
    subnets = [facts.state.tenants[name].subnet for name in stale if facts.state.tenants[name].subnet]
    held = (f"; they hold {len(subnets)} subnet{'s' if len(subnets) > 1 else ''} of the pool, which no new "
            "tenant can have" if subnets else "")
    return [Finding("state", WARN, f"{path} remembers tenants that no longer exist: {_names(stale)}{held}",
                    f"delete their entries under \"tenants\" in {path}, while no other tenant command runs")]


def check_containers(facts: Facts) -> list[Finding]:
    """Every container labelled for the project belongs to a tenant, the database or the proxy;
    no tenant is left with containers in both slots by an interrupted deploy."""
    if facts.containers is None:
        return [Finding("containers", WARN, "not checked: the Docker engine is unreachable", NO_ENGINE)]
    project = facts.project
    expected = {tenant_names(name).service: name for name in facts.folders}
    if project.database.service:
        expected["db"] = None
    if project.proxy.mode is ProxyMode.COMPOSE:
        expected["proxy"] = None
    running = [t for t in facts.enabled if not t.removing]  # all of them: a name given narrows no container
    processes = {t.names.process_service(process) for t in running for process in project.processes_of(t)}
    if any(project.schedule_of(t) for t in running):
        processes.add("scheduler")
    orphans = [c for c in facts.containers if c.service not in expected and c.service not in processes]
    findings = []
    if orphans:
        findings.append(Finding("containers", WARN, "containers of this project that belong to no tenant: "
                                + _names([f"{c.name} ({c.state.value})" for c in orphans]),
                                "remove them: `docker rm -f " + " ".join(c.name for c in orphans) + "`"))
    by_service: dict[str, list[Container]] = {}
    for container in facts.containers:
        if expected.get(container.service) and container.labels.get(ONEOFF) != "True":
            by_service.setdefault(container.service, []).append(container)
    doubled = [expected[service] for service, found in sorted(by_service.items()) if len(found) > 1]
    if doubled:
        from .releases import deploy_running
        if not deploy_running(project):
            findings.append(Finding("containers", WARN, f"containers in both slots, left by an interrupted deploy "
                                    f"or rollback: {_names(doubled)}",
                                    "finish the move: `tenant up " + " ".join(doubled) + "`"))
    if not findings:
        findings.append(Finding("containers", OK, f"{len(facts.containers)} containers, all the project's own"))
    return findings


def check_memory(facts: Facts) -> list[Finding]:
    """No running tenant had processes killed for lack of memory: a killed gunicorn worker
    fails the requests it served while the container stays up and looks healthy."""
    if facts.containers is None:
        return [Finding("memory", WARN, "not checked: the Docker engine is unreachable", NO_ENGINE)]
    findings, counted = [], 0
    for tenant in facts.active:
        current = facts.service(tenant.names.service)
        if current is None or current.state is not ContainerState.RUNNING:
            continue
        used = memory_of.read(current.id)
        if used is None or used.oom_kills is None:
            continue
        counted += 1
        found = memory_of.advice(tenant.name, used.oom_kills, tenant.memory)
        if found:
            peak = f"; its peak: {used.peak / 2**20:.0f} MiB" if used.peak is not None else ""
            findings.append(Finding("memory", WARN, found[0] + peak, found[1], tenant=tenant.name))
    if findings:
        return findings
    if not counted:
        return [Finding("memory", OK, "no running tenant's memory can be read here (an engine on another host, "
                                      "or none running)")]
    return [Finding("memory", OK, f"{counted} running tenants, none had a process killed for lack of memory")]


def check_networks(facts: Facts) -> list[Finding]:
    """Every network labelled for the project is a tenant's (or Compose's default)."""
    if facts.networks is None:
        return [Finding("networks", WARN, "not checked: the Docker engine is unreachable", NO_ENGINE)]
    project = facts.project
    expected = {project.network_name(tenant_names(name)) for name in facts.folders} | {f"{project.name}_default"}
    orphans = [name for name in facts.networks if name not in expected]
    if not orphans:
        return [Finding("networks", OK, f"{len(facts.networks)} networks, all the project's own")]
    steps = []
    for name in orphans:  # few: an inspect each
        try:
            members = engine.network_containers(facts.client, name)
        except docker.errors.APIError:  # gone meanwhile, or the engine hiccupped: remove is the step
            members = []
        steps += [f"docker network disconnect -f {name} {member}" for member in members]
        steps.append(f"docker network rm {name}")
    return [Finding("networks", WARN, f"networks of this project that belong to no tenant: {_names(orphans)}",
                    "remove them: `" + " && ".join(steps) + "`")]


def check_databases(facts: Facts) -> list[Finding]:
    """No database or role on the server looks like a tenant's without being one.

    On the compose db (the project's own server) every database and login role is the
    admin's, a template or a tenant's. On an external server, which may hold others',
    only what tenantkit's naming marks as its own counts: a database owned by a role of
    its own name, a database tenantkit was making (its comment), a rollback's scratch copy.
    """
    if facts.db_error is not None:
        return [Finding("databases", WARN, "not checked: the database does not answer",
                        "see the database check")]
    project = facts.project
    own_server = project.database.service
    known_dbs, known_roles = set(), set()
    loaded = {t.name: t for t in facts.tenants}
    for name in facts.folders:  # a folder that does not load: its database is named after it
        names = loaded[name].names if name in loaded else tenant_names(name)
        known_dbs |= {names.database, *database.swap_names(names)}
        known_roles.add(names.role)
    admin = project.database.admin_user
    system = {"postgres", "template0", "template1", admin}
    roles = {role.name: role for role in facts.roles}
    orphan_dbs = []
    for info in facts.databases:
        if info.name in system or info.name in known_dbs or info.is_template \
                or info.name.startswith(database.TEMPLATE_PREFIX):
            continue
        if info.comment.startswith(database.TEST_COMMENT) and test_running(
                project, info.comment[len(database.TEST_COMMENT):]):
            continue  # `tenant test` is using it; one a killed run left is an orphan like any other
        looks_ours = (info.owner == info.name and info.owner in roles and not roles[info.owner].powerful) \
            or info.comment.startswith(database.UNSETTLED_PREFIX) or info.name.startswith(("tk_new_", "tk_old_"))
        if own_server or looks_ours:
            orphan_dbs.append(info)
    owners = {info.owner for info in orphan_dbs}
    orphan_roles = {role.name for role in facts.roles
                    if role.name not in known_roles and role.name != admin and not role.powerful
                    and (own_server or role.name in owners)}
    findings = []
    psql = _psql_hint(project)
    if orphan_dbs:  # each with its owner when that is an orphan role too: they go together
        listed = [f"{info.name} ({_size(info.bytes)}" + (f", \"{info.comment}\"" if info.comment else "")
                  + (f", with its role {info.owner}" if info.owner in orphan_roles else "") + ")" for info in orphan_dbs]
        drops = [_sql_arg(f"DROP DATABASE {_ident(info.name)} WITH (FORCE)") + (
            " " + _sql_arg(f"DROP ROLE {_ident(info.owner)}") if info.owner in orphan_roles else "")
            for info in orphan_dbs]
        if own_server:
            fix = "if nothing needs them (keep a copy with pg_dump first): `" + psql + " " + " ".join(drops) + "`"
        else:  # a shared server: they look like tenantkit's, and may be another project's
            fix = ("they look like tenantkit's, and may belong to another project on this server: check with its "
                   "operators, and drop them by hand only if nothing needs them")
        findings.append(Finding("databases", WARN, f"databases that belong to no tenant: {_names(listed)}", fix))
    alone = sorted(orphan_roles - owners)
    if alone:
        findings.append(Finding("databases", WARN, f"login roles that belong to no tenant: {_names(alone)}",
                                "if nothing needs them: `" + psql + " "
                                + " ".join(_sql_arg(f"DROP ROLE {_ident(name)}") for name in alone) + "`"))
    if not findings:
        tenants = sum(1 for info in facts.databases if info.name in known_dbs)
        findings.append(Finding("databases", OK, f"{len(facts.databases)} databases on the server, {tenants} of "
                                                 "them tenants'; no orphan database or role"))
    return findings


def _ident(name: str) -> str:
    """A PostgreSQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def _sql_arg(statement: str) -> str:
    """`-c STATEMENT` as a shell would need it."""
    return "-c " + shlex.quote(statement)


def _psql_hint(project: Project) -> str:
    """psql as the database admin, as the operator would type it."""
    db = project.database
    if db.service:
        return f"docker compose -f {shlex.quote(display_path(project.compose_file))} exec db psql -U {db.admin_user}"
    return f"psql -h {db.host} -p {db.port} -U {db.admin_user} postgres"


def check_folders(facts: Facts) -> list[Finding]:
    """No tenant folder half-made or half-removed: staging folders of interrupted `new` and
    `restore` runs, tenants whose removal stopped midway, working folders and trash of
    killed runs (they hold secrets and dumps), media of no tenant."""
    project = facts.project
    findings = []
    leftovers = []
    if project.tenants_dir.is_dir():
        for path in sorted(project.tenants_dir.glob(".*")):
            if path.is_dir() and (".new-" in path.name or (".restore-" in path.name and not _alive(path.name))):
                leftovers.append(path)
    if project.state_dir.is_dir():
        for path in sorted(project.state_dir.iterdir()):
            if path.is_dir() and (path.name == "trash" or (re.fullmatch(r"[a-z]+-\d+-.+", path.name)
                                                          and not _alive(path.name))):
                leftovers.append(path)
    if leftovers:
        shown = [display_path(path) for path in leftovers]
        findings.append(Finding("folders", WARN, f"folders left by interrupted commands (they may hold secrets "
                                                 f"and dumps): {_names(shown)}",
                                "remove them: `rm -rf " + " ".join(map(shlex.quote, shown)) + "`"))
    for tenant in facts.chosen:
        if tenant.removing:
            findings.append(Finding("folders", WARN, f"tenant {tenant.name} was being removed (archived to "
                                                     f"{tenant.removing}) when `tenant rm` stopped",
                                    f"finish it: `tenant rm {tenant.name} --yes` (or bring it back: "
                                    f"`tenant restore {tenant.removing}` after that)", tenant.name))
    if project.media_root.is_dir():
        stray = sorted(entry.name for entry in os.scandir(project.media_root)
                       if entry.is_dir() and not entry.name.startswith(".") and entry.name not in facts.folders)
        if stray:
            shown = [f"{display_path(project.media_root)}/{name}" for name in stray]
            findings.append(Finding("folders", WARN, f"media of no tenant: {_names(shown)}; a new tenant of that "
                                                     "name would take it over", "move it away or remove it: `rm -rf "
                                    + " ".join(map(shlex.quote, shown)) + "`"))
    if not findings:
        findings.append(Finding("folders", OK, f"{len(facts.folders)} tenant folders, none half-made or half-removed"))
    return findings


def _alive(name: str) -> bool:
    """Whether the process whose id a working folder's name holds (PURPOSE-PID-...) still runs."""
    pid = next((part for part in name.split("-") if part.isdigit()), None)
    if pid is None:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


CERTIFICATE_WARN_DAYS = 21  # mod_md renews a 90-day certificate about 30 days before it ends


def check_certificates(facts: Facts) -> list[Finding]:
    """Each TLS tenant's certificate: there, and not within CERTIFICATE_WARN_DAYS of its end
    (a given one is the operator's to renew; one from the ACME CA that close means mod_md's
    renewals fail)."""
    from ..act import certificates
    from ..model import TLS_AUTO, TLS_OFF

    project = facts.project
    tls = [t for t in facts.active if project.tls_of(t) != TLS_OFF]
    if not tls:
        return []
    findings, fine = [], 0
    for tenant in tls:
        auto = project.tls_of(tenant) == TLS_AUTO
        path = project.certificate_file(tenant)
        found = certificates.read_certificate(path)
        renew = (f"mod_md gets and renews it: see why it cannot in the proxy's output (`docker logs "
                 f"{project.name}-proxy-1 2>&1 | grep md:`; with the host's Apache, its error log)" if auto else
                 f"put a renewed certificate in {display_path(path)}, then `tenant up {tenant.name}`")
        if found is None:
            findings.append(Finding("certificates", WARN if auto else FAIL,
                                    f"{tenant.name}: no certificate " + ("from the ACME CA yet" if auto else
                                                                         f"in {display_path(path)}"),
                                    renew, tenant.name))
        elif found.days_left() < 0:
            findings.append(Finding("certificates", FAIL, f"{tenant.name}: its certificate expired on "
                                    f"{found.not_after:%Y-%m-%d}", renew, tenant.name))
        elif found.days_left() < CERTIFICATE_WARN_DAYS:
            findings.append(Finding("certificates", WARN, f"{tenant.name}: its certificate expires on "
                                    f"{found.not_after:%Y-%m-%d}, in {found.days_left()} days", renew, tenant.name))
        else:
            fine += 1
    if fine:
        findings.append(Finding("certificates", OK, f"{fine} of {len(tls)} TLS tenants have a certificate valid for "
                                f"{CERTIFICATE_WARN_DAYS} days or more"))
    return findings


def check_backup_space(facts: Facts) -> list[Finding]:
    """Room for archives: free space where the backups folder is, against the size of the
    tenants' databases and media (an estimate from above: archives are compressed)."""
    project = facts.project
    folder = project.backups_dir or project.root / "backups"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    sizes = {info.name: info.bytes or 0 for info in facts.databases or []}
    databases = sum(sizes.get(t.names.database, 0) for t in facts.chosen)
    media, complete = _tree_size([t.media_dir for t in facts.chosen], time.monotonic() + MEDIA_SCAN_SECONDS)
    need = databases + media
    parts = [f"databases {_size(databases)}" if facts.databases is not None else "databases not measured",
             ("media " if complete else "media at least ") + _size(media)]
    archives = sorted(folder.glob("*.tar.gz")) if folder.is_dir() else []
    kept = f"; {len(archives)} archives there take {_size(sum(p.stat().st_size for p in archives))}" if archives else ""
    line = (f"{_size(free)} free for {display_path(folder)}; a backup of the {len(facts.chosen)} tenants needs "
            f"up to {_size(need)} ({', '.join(parts)}){kept}")
    if free < need:
        return [Finding("backups", WARN, line, "free space on that disk (remove old archives from "
                        f"{display_path(folder)}), or point `backups` in tenantkit.yaml at a larger one")]
    return [Finding("backups", OK, line)]


def _tree_size(folders: list[Path], deadline: float) -> tuple[int, bool]:
    """Bytes of the files under these folders, and whether it counted them all before the deadline."""
    total = 0
    pending = [str(folder) for folder in folders]
    while pending:
        if time.monotonic() > deadline:
            return total, False
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
    return total, True


CHECKS = (check_network_pool, check_kernel, check_database, check_proxy, check_ports, check_state, check_containers,
          check_memory, check_networks, check_databases, check_folders, check_certificates, check_backup_space)

__all__ = ["Finding", "doctor", "error_line", "CHECKS", "OK", "WARN", "FAIL"]

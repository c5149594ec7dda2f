"""`tenant import`: bring tenants of the classic mod_wsgi layout into tenantkit.

Each `shared/tenants/<name>/settings.py` is read with `ast`, never executed (it imports
the old project): ALLOWED_HOSTS, DATABASES['default'], SITE_TITLE, MEDIA_ROOT,
SECRET_KEY and `INSTALLED_APPS += [...]`. Tenants keep their existing databases and
passwords; their media is copied (or moved). Every tenant is checked before any is written.
"""
from __future__ import annotations

import ast
import os
import secrets as _secrets
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from . import stack
from ..act.files import give_tree_to_app_user, locked
from ..act.secrets import new_tenant_secrets, write_env_file
from ..model import (ConfigError, Project, Tenant, check_db_identifier, check_host, check_module, check_name,
                    check_title, display_path, load_tenants)

LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}
CLASSIC_FILES = {"settings.py", "wsgi.py", "www", "__pycache__"}


class _Unknown(Exception):
    """A settings expression this reader does not evaluate."""


def _evaluate(node: ast.AST, names: dict):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_evaluate(item, names) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {_evaluate(k, names): _evaluate(v, names) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        return left % right if isinstance(node.op, ast.Mod) else left + right
    if isinstance(node, ast.JoinedStr):
        return "".join(str(_evaluate(v.value if isinstance(v, ast.FormattedValue) else v, names))
                       for v in node.values)
    raise _Unknown


def read_classic_settings(path: Path) -> dict:
    """The literal settings of a classic tenant's settings.py."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError(f"{display_path(path)}{f':{line}' if line else ''}: cannot be read: {exc}") from None
    names: dict = {}
    for statement in tree.body:
        try:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target = statement.targets[0]
                value = _evaluate(statement.value, names)
                if isinstance(target, ast.Name):
                    names[target.id] = value
                elif (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                      and target.value.id == "DATABASES"):
                    names.setdefault("DATABASES", {})[_evaluate(target.slice, names)] = value
            elif (isinstance(statement, ast.AugAssign) and isinstance(statement.target, ast.Name)
                  and statement.target.id == "INSTALLED_APPS"):
                names["EXTRA_APPS"] = names.get("EXTRA_APPS", []) + list(_evaluate(statement.value, names))
        except (_Unknown, TypeError, ValueError, KeyError):
            continue  # not a literal: the base settings' business
    return names


@dataclass
class Plan:
    tenant: Tenant
    source: Path
    media: Path | None
    password: str
    secret_key: str


def _plan(project: Project, folder: Path, taken_hosts: dict[str, str]) -> Plan:
    path = folder / "settings.py"
    values = read_classic_settings(path)
    where = display_path(path)
    try:
        name = check_name(folder.name)
    except ValueError as exc:
        raise ConfigError(f"{where}: the folder name cannot be a tenant name: {exc}") from None
    hosts = []
    for raw in values.get("ALLOWED_HOSTS", []):
        host = str(raw).strip().strip(".")  # ".acme.example.app." allows subdomains; keep the domain
        try:
            hosts.append(check_host(host))
        except ValueError:
            continue
    hosts = list(dict.fromkeys(hosts))
    if not hosts:
        raise ConfigError(f"{where}: ALLOWED_HOSTS holds no host name to route by")
    for host in hosts:
        if host in taken_hosts:
            raise ConfigError(f"{where}: host {host!r} is already used by tenant {taken_hosts[host]!r}")
    db = (values.get("DATABASES") or {}).get("default") or {}
    if "postgresql" not in str(db.get("ENGINE", "")) or not db.get("NAME"):
        raise ConfigError(f"{where}: DATABASES['default'] is not a PostgreSQL database with a NAME")
    host = str(db.get("HOST", ""))
    server = project.database.host
    if not (host == server or (host in LOCAL_HOSTS and server in LOCAL_HOSTS)):
        raise ConfigError(f"{where}: its database is on {host or 'localhost'!r}, but tenantkit.yaml's database is "
                          f"{server!r}; point `database` in tenantkit.yaml at that server")
    try:
        database = check_db_identifier(str(db["NAME"]))
        user = check_db_identifier(str(db.get("USER") or db["NAME"]))
        title = check_title(str(values.get("SITE_TITLE") or name.replace("_", " ").title()))
        apps = tuple(check_module(str(app)) for app in values.get("EXTRA_APPS", []))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    media = None
    for candidate in (values.get("MEDIA_ROOT"), folder / "www" / "content"):
        if candidate and Path(str(candidate)).is_dir():
            media = Path(str(candidate))
            break
    tenant = Tenant(
        name=name, hosts=tuple(hosts), title=title, port=0, memory=project.defaults.memory,
        workers=project.defaults.workers, threads=project.defaults.threads, apps=apps,
        database=None if database == name else database, db_user=None if user == (database or name) else user,
        path=project.tenant_dir(name),
    )
    secret_key = str(values.get("SECRET_KEY") or new_tenant_secrets()["TENANT_SECRET_KEY"])
    return Plan(tenant, folder, media, str(db.get("PASSWORD") or ""), secret_key)


def import_classic(project: Project, path: Path, move: bool = False, report=lambda message: None) -> list[Tenant]:
    """Create a tenantkit tenant for every classic tenant under PATH (the root or shared/tenants)."""
    path = path.resolve()
    base = path / "shared" / "tenants" if (path / "shared" / "tenants").is_dir() else path
    folders = sorted(p for p in base.iterdir() if (p / "settings.py").is_file()) if base.is_dir() else []
    if not folders:
        raise ConfigError(f"no classic tenants in {path}: expected shared/tenants/<name>/settings.py")
    with locked(project):
        existing = load_tenants(project)
        taken = {host: t.name for t in existing for host in t.hosts}
        plans = []
        for folder in folders:
            if project.tenant_dir(folder.name).exists():
                raise ConfigError(f"tenant {folder.name!r} exists already; remove it or import elsewhere")
            plan = _plan(project, folder, taken)
            if not plan.password:
                raise ConfigError(f"{display_path(folder / 'settings.py')}: DATABASES['default'] has no PASSWORD")
            taken.update({host: plan.tenant.name for host in plan.tenant.hosts})
            plans.append(plan)
        imported = []
        for plan in plans:
            port = stack.next_port(project, existing + imported)
            tenant = replace(plan.tenant, port=port)
            _write(project, plan, tenant, move)
            report(f"imported {tenant.name} ({', '.join(tenant.hosts)}; database {tenant.names.database})")
            imported.append(tenant)
        stack.render(project, [t.name for t in imported])
    return imported


def _write(project: Project, plan: Plan, tenant: Tenant, move: bool) -> None:
    staging = project.tenants_dir / f".{tenant.name}.import-{_secrets.token_hex(4)}"
    try:
        staging.mkdir(parents=True)
        for entry in plan.source.iterdir():  # the tenant's own apps and files
            if entry.name not in CLASSIC_FILES and entry.name != "secrets.env":
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, staging / entry.name)
        staged = replace(tenant, path=staging)
        stack.write_tenant_yaml(project, staged)
        write_env_file(staging / "secrets.env",
                       {"TENANT_DB_PASSWORD": plan.password, "TENANT_SECRET_KEY": plan.secret_key},
                       f"Secrets of tenant {tenant.name}, imported from {plan.source}. Keep private.")
        media = staged.media_dir
        media.parent.mkdir(parents=True, exist_ok=True)
        if plan.media is not None:
            shutil.copytree(plan.media, media)
        media.mkdir(exist_ok=True)
        give_tree_to_app_user(media)
        os.rename(staging, tenant.path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if move and plan.media is not None:
        shutil.rmtree(plan.media)

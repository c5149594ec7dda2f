"""`tenant import`: bring tenants of the classic mod_wsgi layout into tenantkit.

Each `shared/tenants/<name>/settings.py` is read with `ast`, never executed (it imports
the old project): ALLOWED_HOSTS, DATABASES['default'], SITE_TITLE, MEDIA_ROOT,
SECRET_KEY and `INSTALLED_APPS += [...]`. Tenants keep their existing databases and
passwords; their media is copied (or moved) to media/NAME.

Every tenant is checked before any is written: its database and role must be its own, its
media must lie inside its own folder, and what is copied must be plain folders and files
(the old tree is another user's, and tenantkit runs as root: a symlink or hard link would
copy a file that user could not read).
"""
from __future__ import annotations

import ast
import os
import secrets as _secrets
import shutil
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from . import stack
from ..act.files import give_tree_to_app_user, locked, readable_tree
from ..act.secrets import check_env_value, new_tenant_secrets, write_env_file
from ..model import (ConfigError, Project, Tenant, check_database_identity, check_db_identifier, check_host,
                    check_module, check_name, check_title, display_path, load_tenants)

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
    media: Path | None  # resolved, inside source
    own: list[Path]  # the tenant's own apps and files, copied into its tenantkit folder
    password: str
    secret_key: str


def _refuse_unsafe(path: Path, info: os.stat_result) -> None:
    """Import reads and copies plain folders and files with one link only: a symlink, device
    file, FIFO, socket or hard link could bring in a file from outside the tenant's folder."""
    mode = info.st_mode
    if stat.S_ISDIR(mode) or (stat.S_ISREG(mode) and info.st_nlink == 1):
        return
    kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device file" if not stat.S_ISREG(mode)
            else f"a hard link (one of {info.st_nlink} names of a file)")
    raise ConfigError(f"{display_path(path)} is {kind}; tenant import copies only plain files and folders: "
                      "replace it with a copy of the file or remove it, then import again")


def _copy(source: Path, target: Path | None) -> None:
    """Copy a file or folder tree to TARGET without following any symlink, refusing whatever
    _refuse_unsafe refuses; with TARGET None only check. No setuid, setgid or sticky bit is kept."""
    info = os.lstat(source)
    _refuse_unsafe(source, info)
    if not stat.S_ISDIR(info.st_mode):
        if target is not None:
            _copy_file(source, str(source), None, target)
        return
    if target is not None:
        target.mkdir()
    # fwalk descends through folder descriptors and never into a symlink, so a folder
    # swapped for a link after the check cannot lead the copy outside.
    for folder, dirs, files, fd in os.fwalk(source, follow_symlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            _refuse_unsafe(path, info)
            if target is None:
                continue
            copy = target / path.relative_to(source)
            if stat.S_ISDIR(info.st_mode):
                copy.mkdir()
            else:
                _copy_file(path, name, fd, copy)


def _copy_file(path: Path, name: str, dir_fd: int | None, copy: Path) -> None:
    try:  # checked again on the open file: it may have changed since the plan
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise ConfigError(f"{display_path(path)} cannot be copied ({exc.strerror}); make it a plain file "
                          "and import again") from None
    with open(fd, "rb") as source:
        info = os.fstat(fd)
        _refuse_unsafe(path, info)
        with open(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            shutil.copyfileobj(source, out)
    os.chmod(copy, stat.S_IMODE(info.st_mode) & 0o777)
    os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns))


def _media(folder: Path, configured, where: str) -> Path | None:
    """The classic tenant's media folder, resolved: MEDIA_ROOT or www/content, inside its own folder."""
    own = Path(os.path.realpath(folder))
    for candidate in (configured, folder / "www" / "content"):
        if candidate and os.path.isdir(str(candidate)):
            real = Path(os.path.realpath(str(candidate)))
            if real == own or not real.is_relative_to(own):
                raise ConfigError(f"{where}: the media folder (MEDIA_ROOT) resolves to {real}, which is not inside "
                                  f"the tenant's own folder {own}; move the media into {own}/www/content, point "
                                  "MEDIA_ROOT there and import again")
            return real
    return None


def _plan(project: Project, folder: Path, taken_hosts: dict[str, str], others: list[Tenant]) -> Plan:
    path = folder / "settings.py"
    where = display_path(path)
    try:
        name = check_name(folder.name)
    except ValueError as exc:
        raise ConfigError(f"{where}: the folder name cannot be a tenant name: {exc}") from None
    if project.tenant_dir(name).exists():
        raise ConfigError(f"tenant {name!r} exists already; remove it or import elsewhere")
    if os.path.lexists(project.media_root / name):
        raise ConfigError(f"{display_path(project.media_root / name)} exists, but tenant {name!r} does not (a "
                          "leftover); move it away, then import again")
    _refuse_unsafe(path, os.lstat(path))
    values = read_classic_settings(path)
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
    tenant = Tenant(
        name=name, hosts=tuple(hosts), title=title, port=0, memory=project.defaults.memory,
        workers=project.defaults.workers, threads=project.defaults.threads, apps=apps,
        database=None if database == name else database, db_user=None if user == (database or name) else user,
        path=project.tenant_dir(name),
    )
    try:
        check_database_identity(project, tenant, others)
    except ConfigError as exc:  # the loader's own fix speaks of tenant.yaml, which is not written yet
        raise ConfigError(f"{where}: {str(exc).split('; ')[0]}; give this tenant a database and role of its own, "
                          "set them in DATABASES['default'] and import again") from None
    password = str(db.get("PASSWORD") or "")
    if not password:
        raise ConfigError(f"{where}: DATABASES['default'] has no PASSWORD")
    secret_key = str(values.get("SECRET_KEY") or new_tenant_secrets()["TENANT_SECRET_KEY"])
    for value, what, thing in ((password, "DATABASES['default'] PASSWORD", "password"),
                               (secret_key, "SECRET_KEY", "SECRET_KEY")):
        try:
            check_env_value(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {what} {exc}, which secrets.env cannot hold; change that {thing} "
                              "first, then import again") from None
    media = _media(folder, values.get("MEDIA_ROOT"), where)
    real = Path(os.path.realpath(folder))
    own = [entry for entry in sorted(folder.iterdir())
           if entry.name not in CLASSIC_FILES and entry.name != "secrets.env" and real / entry.name != media]
    for entry in [*own, *([media] if media else [])]:
        _copy(entry, None)  # refuses what cannot be copied safely, before anything is written
    return Plan(tenant, folder, media, own, password, secret_key)


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
        plans: list[Plan] = []
        for folder in folders:
            plan = _plan(project, folder, taken, existing + [p.tenant for p in plans])
            taken.update({host: plan.tenant.name for host in plan.tenant.hosts})
            plans.append(plan)
        imported = []
        for plan in plans:
            port = stack.next_port(project, existing + imported)
            tenant = replace(plan.tenant, port=port)
            _write(project, plan, tenant)
            report(f"imported {tenant.name} ({', '.join(tenant.hosts)}; database {tenant.names.database})")
            imported.append(tenant)
        if move:  # only once every tenant's copy is in place, and only each tenant's own media folder
            for plan in plans:
                if plan.media is not None:
                    shutil.rmtree(plan.media)
        stack.render(project, [t.name for t in imported])
    return imported


def _write(project: Project, plan: Plan, tenant: Tenant) -> None:
    """Copy into staging folders (tenants/.NAME.import-X, media/.NAME.import-X), then rename
    them into place: the tenant folder first, its media second."""
    token = _secrets.token_hex(4)
    staging = project.tenants_dir / f".{tenant.name}.import-{token}"
    media = project.media_root / f".{tenant.name}.import-{token}"
    placed = False
    try:
        staging.mkdir(parents=True)
        for entry in plan.own:  # the tenant's own apps and files
            _copy(entry, staging / entry.name)
        readable_tree(staging)  # the container's uid reads the tenant folder
        staged = replace(tenant, path=staging)
        stack.write_tenant_yaml(project, staged)
        write_env_file(staging / "secrets.env",
                       {"TENANT_DB_PASSWORD": plan.password, "TENANT_SECRET_KEY": plan.secret_key},
                       f"Secrets of tenant {tenant.name}, imported from {str(plan.source)!r}. Keep private.")
        project.media_root.mkdir(exist_ok=True)
        if plan.media is None:
            media.mkdir()
        else:
            _copy(plan.media, media)
        give_tree_to_app_user(media)
        os.rename(staging, tenant.path)
        placed = True
        os.rename(media, tenant.media_dir)
    except BaseException:
        if placed:
            os.rename(tenant.path, staging)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(media, ignore_errors=True)
        raise

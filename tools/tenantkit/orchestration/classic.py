"""Classic mode: the seed's own layout, for hosts that run Django under mod_wsgi.

    ROOT/releases/<version>/source/   the project's code (+ tenants -> ../../../shared/tenants)
    ROOT/releases/<version>/python/   a virtualenv made with the system Python mod_wsgi uses
    ROOT/current -> releases/<version>
    ROOT/shared/tenants/<name>/       settings.py, wsgi.py, secrets.env, www/content/
    ROOT/apache/*.conf                a WSGIDaemonProcess vhost per tenant, and a catch-all

Each tenant's daemon processes run as a system user of its own (tk-NAME, created when
missing), so no tenant's code can read another tenant's secrets or settings. Apache's own
user (--user, www-data) only passes through the tenant folders to wsgi.py and reads media.
"""
from __future__ import annotations

import grp
import os
import pwd
import secrets as _secrets
import shutil
import stat
import subprocess
from pathlib import Path

from ..act import build as builder
from ..act import database, wheels
from ..act.engine import OperationFailed, tail
from ..act.files import atomic_write, locked
from ..act.secrets import read_env_file
from ..model import ConfigError, Project, Tenant, check_release, display_path, load_tenants
from ..render.apache import ProxyLayout, apache_path, render_default_vhost
from ..render.classic import daemon_user, render_wsgi_script, render_wsgi_vhost
from ..render.settings import render_settings
from . import stack

GENERATED = {"settings.py", "wsgi.py", "secrets.env", "www"}
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _run(command: list[str], what: str, **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise OperationFailed(f"{what} failed (exit {result.returncode}):\n{tail(result.stdout + result.stderr)}")
    return result.stdout


def _ids(user: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"user {user!r} does not exist; pass the user Apache runs as with --user") from None
    return entry.pw_uid, entry.pw_gid


def ensure_daemon_user(tenant: Tenant) -> pwd.struct_passwd:
    """The tenant's own system user (tk-NAME, with a group of the same name), created when missing."""
    user = daemon_user(tenant.name)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
              "--shell", "/usr/sbin/nologin", user], f"creating the system user {user}")
        entry = pwd.getpwnam(user)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise ConfigError(f"user {user!r} has root's uid or gid; tenant {tenant.name}'s code must not run as root: "
                          f"remove that user (userdel {user}) and run the command again")
    return entry


def make_release(project: Project, root: Path, version: str, python: str, report) -> Path:
    """releases/VERSION with the project's code and a virtualenv; existing releases are kept as they are."""
    release = root / "releases" / version
    if release.is_dir():
        report(f"release {version} exists; releases are immutable, so it is used as it is")
        return release
    staging = root / "releases" / f".{version}.tmp-{_secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    try:
        source = staging / "source"
        report(f"copying {display_path(project.source)} into releases/{version}/source")
        shutil.copytree(project.source, source, ignore=shutil.ignore_patterns(
            *builder.SKIP_DIRS, "*.pyc", "*.sqlite3", "content"))
        os.symlink("../../../shared/tenants", source / "tenants")
        report(f"creating releases/{version}/python with {python}")
        _run([python, "-m", "venv", str(staging / "python")], "creating the virtualenv")
        requirements = [project.requirements, builder.runtime_requirements(project)]
        pip = [str(staging / "python" / "bin" / "python"), "-m", "pip", "install", "-q",
               "--disable-pip-version-check", *(arg for path in requirements for arg in ("-r", str(path)))]
        if project.wheelhouse is not None:  # wheels for the host's Python, which mod_wsgi embeds
            host_python = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                         capture_output=True, text=True, check=True).stdout.strip()
            folder = wheels.ensure(project, host_python, requirements, report)
            pip += ["--no-index", "--find-links", str(folder)]
        report("installing requirements")
        _run(pip, "installing requirements")
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": project.settings}
        collect = subprocess.run([str(staging / "python" / "bin" / "python"), "manage.py", "collectstatic",
                                  "--noinput", "-v0"], cwd=source, env=env, capture_output=True, text=True)
        if collect.returncode != 0:
            report(f"collectstatic skipped: {project.settings} did not load without a tenant")
        (staging / "RELEASE").write_text(f"{version}\n")
        os.rename(staging, release)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return release


def link_current(root: Path, version: str) -> None:
    """Point `current` at the release atomically: a new symlink, then os.replace."""
    temporary = root / f".current.tmp-{_secrets.token_hex(4)}"
    os.symlink(f"releases/{version}", temporary)
    os.replace(temporary, root / "current")


def _tree(path: Path) -> list[Path]:
    """PATH and everything below it, links included but never followed."""
    if path.is_symlink() or not path.is_dir():
        return [path]
    return [path, *(Path(top) / name for top, dirs, files in os.walk(path) for name in dirs + files)]


def _give_to_tenant(path: Path, gid: int) -> None:
    """root:TENANT-GROUP, files 0640 and folders 0750: the tenant's daemon reads them, no one
    else does, and the tenant's code cannot rewrite them (root owns them)."""
    for item in _tree(path):
        if not item.is_symlink():  # a link grants nothing: its target keeps its owner and mode
            os.chown(item, 0, gid)
            os.chmod(item, 0o750 if item.is_dir() else 0o640)


def write_shared_tenant(project: Project, root: Path, tenant: Tenant, account: pwd.struct_passwd,
                        apache_gid: int, db: tuple[str, int]) -> Path:
    """shared/tenants/NAME: the tenant's own files, its settings and wsgi.py, secrets and media."""
    folder = root / "shared" / "tenants" / tenant.name
    uid, gid = account.pw_uid, account.pw_gid
    folder.mkdir(parents=True, exist_ok=True)
    # Root owns the folder; the tenant's group may list and read it (Python lists a folder to
    # import from it); everyone else, Apache included, may only pass through to wsgi.py and www/.
    os.chown(folder, 0, gid)
    os.chmod(folder, 0o751)
    for entry in tenant.path.iterdir():  # the tenant's own apps and local_settings.py
        if entry.name not in GENERATED and not entry.name.startswith("."):
            target = folder / entry.name
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(entry, target, follow_symlinks=False)
            _give_to_tenant(target, gid)
    site_url = f"http://{tenant.primary_host}/"
    atomic_write(folder / "settings.py", render_settings(project, tenant, site_url, *db), mode=0o640)
    atomic_write(folder / "wsgi.py", render_wsgi_script(tenant, root), mode=0o640)
    for name in ("settings.py", "wsgi.py"):
        os.chown(folder / name, 0, gid)
    atomic_write(folder / "secrets.env", tenant.secrets_file.read_text(), mode=0o600)
    os.chown(folder / "secrets.env", uid, gid)  # the tenant's daemon, and no one else
    (folder / "www").mkdir(exist_ok=True)
    os.chown(folder / "www", 0, 0)
    os.chmod(folder / "www", 0o755)
    # The tenant's daemon writes its media; Apache's group reads it (setgid: new folders keep
    # that group); other tenants cannot list it.
    content = folder / "www" / "content"
    content.mkdir(exist_ok=True)
    if content.stat().st_uid != uid:  # new, or written by the shared user of an older layout
        for item in _tree(content):
            info = os.lstat(item)
            # Never a link: chown through a hard link would give away a file from outside.
            if stat.S_ISDIR(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_nlink == 1):
                os.chown(item, uid, apache_gid, follow_symlinks=False)
    os.chmod(content, 0o2750)
    return folder


def apache_wsgi(project: Project, root: Path, version: str, listen_port: int = 80,
                python: str = "/usr/bin/python3", user: str = "www-data",
                report=lambda message: None) -> list[Tenant]:
    """Build release VERSION, make it current, and write the seed's vhosts for every tenant."""
    stack.checked(check_release, version)
    root = root.resolve()
    apache_path(str(root))
    if not Path(python).is_file():
        raise ConfigError(f"{python} does not exist; mod_wsgi needs the Python it was built for (--python)")
    _, apache_gid = _ids(user)
    tenants = load_tenants(project)
    db = (project.database.admin_host, project.database.admin_port)
    with locked(project):
        make_release(project, root, version, python, report)
        link_current(root, version)
        accounts = {tenant.name: ensure_daemon_user(tenant) for tenant in tenants}
        for tenant in tenants:
            write_shared_tenant(project, root, tenant, accounts[tenant.name], apache_gid, db)
        (root / "logs").mkdir(exist_ok=True)
        conn = database.admin_connect(project)
        try:
            for tenant in tenants:
                password = read_env_file(tenant.secrets_file)["TENANT_DB_PASSWORD"]
                database.provision_database(conn, tenant.names, password, stack.connection_limit(tenant))
        finally:
            conn.close()
        current = root / "current"
        for tenant in tenants:
            report(f"migrating {tenant.name}")
            # As the tenant's own user, as its daemon runs: the tenant's settings and
            # local_settings.py are its code, never run as root. A clean environment: root's
            # variables are none of the tenant's business.
            _run(["runuser", "-u", accounts[tenant.name].pw_name, "--",
                  str(current / "python" / "bin" / "python"), "manage.py", "migrate", "--noinput",
                  f"--settings={tenant.names.settings_module}"], f"migrating {tenant.name}",
                 cwd=current / "source",
                 env={"PATH": CLEAN_PATH, "LANG": "C.UTF-8",
                      "PYTHONPATH": str(root / "shared" / "tenants" / tenant.name)})
        _write_vhosts(root, tenants, listen_port, accounts)
        if project.proxy.reload_command:
            _run(list(project.proxy.reload_command), "reloading Apache")
    return tenants


def _write_vhosts(root: Path, tenants: list[Tenant], listen_port: int,
                  accounts: dict[str, pwd.struct_passwd]) -> None:
    folder = root / "apache"
    folder.mkdir(exist_ok=True)
    layout = ProxyLayout(listen_port, apache_path(str(root / "logs")), "", "", False)
    sites = {"000-default.conf": render_default_vhost(layout)}
    for tenant in tenants:
        account = accounts[tenant.name]
        group = grp.getgrgid(account.pw_gid).gr_name
        sites[tenant.names.vhost] = render_wsgi_vhost(tenant, root, listen_port, account.pw_name, group)
    for name, text in sites.items():
        atomic_write(folder / name, text)
    for path in folder.glob("*.conf"):
        if path.name not in sites:
            path.unlink()

"""Tenant data without loss: set, backup, rm (archive first), restore, clone.

Every step that deletes data runs only after its archive is written and verified;
a failed restore removes what it created and leaves the rest as it was.
"""
from __future__ import annotations

import os
import secrets as _secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from dataclasses import replace

import yaml

from ..act import archive, database, engine, state
from ..act.files import give_tree_to_app_user, locked, port_is_free
from ..act.secrets import new_tenant_secrets, read_env_file, write_env_file
from ..model import (SECRETS_FILE, TENANT_FILE, ConfigError, Project, Tenant, check_host, check_hosts_free,
                     check_name, display_path, load_tenant, load_tenants, tenant_from_mapping)
from . import stack
from .stack import Report, quiet


# ---------------------------------------------------------------------------
# backup

def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(path.name.replace(".tar.gz", f"-{n}.tar.gz"))
        n += 1
    return candidate


def _ensure_database_running(client, project: Project) -> None:
    if project.database.service:
        stack.start_database(client, project, [])


def check_backups_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"the backups folder {display_path(folder)} is not a folder; fix `backups` in tenantkit.yaml")


def write_backup(project: Project, tenant: Tenant, secrets: bool, folder: Path | None = None) -> Path:
    """Dump the tenant's database and pack it with its media and folder into one archive."""
    folder = folder or project.backups_dir
    check_backups_folder(folder)
    project.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=project.state_dir, prefix="backup-") as tmp:
        dump = Path(tmp) / archive.DUMP
        database.dump_database(project, tenant.names, dump)
        files = archive.members(tenant.path, dump, secrets)
        stats = {"database_dump_bytes": dump.stat().st_size,
                 "media_files": sum(1 for name, _ in files if name.startswith("media/"))}
        target = _unique(folder / archive.archive_name(tenant.name))
        archive.write_archive(target, tenant.name, files, secrets, stats)
    return target


def backup(project: Project, names: Iterable[str] = (), all_: bool = False, secrets: bool = False,
           report: Report = quiet) -> list[Path]:
    """Archive tenants: database dump, media and folder (secrets only when asked)."""
    chosen = stack.select(load_tenants(project), names, all_)
    check_backups_folder(project.backups_dir)
    client = engine.connect() if project.database.service else None
    paths = []
    with locked(project):
        _ensure_database_running(client, project)
        for tenant in chosen:
            report(f"backing up {tenant.name}")
            paths.append(write_backup(project, tenant, secrets))
    return paths


# ---------------------------------------------------------------------------
# rm


def rm(project: Project, name: str, keep_data: bool = False, report: Report = quiet) -> Path | None:
    """Archive the tenant (with its secrets), then drop its database and role and delete its
    container, network, vhost and folder. With keep_data, only the running parts go."""
    stack.select(load_tenants(project), [name], False)
    if not keep_data:
        check_backups_folder(project.backups_dir)
    client = engine.connect()
    with locked(project):
        tenant = load_tenant(project, name)
        saved = None
        if not keep_data:
            _ensure_database_running(client, project)
            report(f"archiving {name}")
            saved = write_backup(project, tenant, secrets=True)  # raises before anything is dropped
            report(f"archived to {display_path(saved)}")
        report(f"removing {name}'s container and network")
        stack.remove_tenant_runtime(client, project, tenant)
        if keep_data:
            stack.write_tenant_yaml(project, replace(tenant, enabled=False))
        else:
            conn = database.admin_connect(project)
            try:
                report(f"dropping database and role {tenant.names.database}")
                database.drop_database(conn, tenant.names)
            finally:
                conn.close()
            shutil.rmtree(tenant.path)
            with state.update(project) as current:  # a new tenant of that name starts afresh
                current.tenants.pop(name, None)
        stack.forget(project, tenant)
        stack.render(project, [])
        stack.reload_proxy(client, project, [], report)
    return saved


# ---------------------------------------------------------------------------
# restore / clone

def _archived_tenant(project: Project, unpacked: Path, manifest: archive.Manifest, name: str,
                     hosts: tuple[str, ...], folder: Path) -> Tenant:
    path = unpacked / "tenant" / TENANT_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        raise ConfigError("the archive holds no readable tenant.yaml") from None
    data["name"] = manifest.tenant
    tenant = tenant_from_mapping(project, manifest.tenant, data, {}, path, folder)
    return replace(tenant, name=name, hosts=hosts or tenant.hosts, maintenance=False, enabled=True)


def restore(project: Project, source: Path, as_name: str | None = None, hosts: Iterable[str] = (),
            report: Report = quiet, start: bool = True) -> Tenant:
    """Bring a tenant back from an archive, under its own name or as a new tenant."""
    try:
        if as_name is not None:
            check_name(as_name)
        hosts = tuple(dict.fromkeys(check_host(h) for h in hosts))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    client = engine.connect() if project.database.service else None
    project.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=project.state_dir, prefix="restore-") as tmp:
        unpacked = Path(tmp)
        manifest = archive.unpack(source, unpacked)
        name = as_name or manifest.tenant
        renamed = name != manifest.tenant
        if renamed and not hosts:
            hosts = (f"{name}.{project.domain}",)
        with locked(project):
            folder = project.tenant_dir(name)
            if folder.exists():
                raise ConfigError(f"tenant {name!r} already exists; restore under another name with "
                                  f"--as NEW --host HOST, or remove it first with `tenant rm {name}`")
            others = load_tenants(project)
            tenant = _archived_tenant(project, unpacked, manifest, name, hosts, folder)
            check_hosts_free(tenant.hosts, others)
            if tenant.port in {o.port for o in others} or not port_is_free(tenant.port):
                tenant = replace(tenant, port=stack.next_port(project, others))
            _ensure_database_running(client, project)
            conn = database.admin_connect(project)
            try:
                if database.database_exists(conn, tenant.names):
                    raise ConfigError(f"a database {tenant.names.database!r} already exists on the server "
                                      f"(left by `tenant rm --keep-data`?); `tenant up {name}` uses it, "
                                      "or restore under another name")
                report(f"restoring {name} from {display_path(source)}")
                _restore_into(project, conn, unpacked, manifest, tenant, renamed)
            finally:
                conn.close()
            stack.render(project, [name])
    if start:
        from .tenants import up
        up(project, [name], report=report)
    return load_tenant(project, name)


def _restore_into(project: Project, conn, unpacked: Path, manifest: archive.Manifest, tenant: Tenant,
                  renamed: bool) -> None:
    """Stage the folder, create database and role, load the dump; undo all of it on failure."""
    staging = project.tenants_dir / f".{tenant.name}.restore-{_secrets.token_hex(4)}"
    created = False
    try:
        shutil.copytree(unpacked / "tenant", staging)
        archived_secrets = staging / SECRETS_FILE
        keep = manifest.secrets and not renamed and archived_secrets.is_file()
        values = read_env_file(archived_secrets) if keep else new_tenant_secrets()
        archived_secrets.unlink(missing_ok=True)
        write_env_file(staging / SECRETS_FILE, values,
                       f"Secrets of tenant {tenant.name}. Generated by tenantkit; keep private.")
        staged = replace(tenant, path=staging)
        stack.write_tenant_yaml(project, staged)
        archive.place_media(unpacked, staged.media_dir)
        give_tree_to_app_user(staged.media_dir)
        database.provision_database(conn, tenant.names, values["TENANT_DB_PASSWORD"], stack.connection_limit(tenant))
        created = True
        database.restore_database(project, tenant.names, unpacked / archive.DUMP)
        os.rename(staging, tenant.path)
    except BaseException:
        if created:
            database.drop_database(conn, tenant.names)
        shutil.rmtree(staging, ignore_errors=True)
        raise


def clone(project: Project, src: str, dst: str, hosts: Iterable[str], report: Report = quiet) -> Tenant:
    """A new tenant DST with a copy of SRC's data and media, and credentials of its own."""
    hosts = tuple(hosts)
    tenants = load_tenants(project)
    source = stack.select(tenants, [src], False)[0]
    try:
        check_name(dst)
        checked = [check_host(h) for h in hosts]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if project.tenant_dir(dst).exists():
        raise ConfigError(f"tenant {dst!r} already exists; choose another name")
    if not checked:
        raise ConfigError("a clone needs its own host: pass --host HOST")
    check_hosts_free(checked, tenants)
    client = engine.connect() if project.database.service else None
    with tempfile.TemporaryDirectory(dir=project.state_dir, prefix="clone-") as tmp:
        with locked(project):
            _ensure_database_running(client, project)
            report(f"copying {src}")
            saved = write_backup(project, source, secrets=False, folder=Path(tmp))
        return restore(project, saved, as_name=dst, hosts=checked, report=report)


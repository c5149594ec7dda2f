"""Tenant data without loss: set, backup, rm (archive first), restore, clone.

Every step that deletes data runs only after its archive is written and verified;
a failed restore removes what it created and leaves the rest as it was.
"""
from __future__ import annotations

import os
import secrets as _secrets
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

from ..act import archive, database, engine
from ..act.engine import OperationFailed, PartlyFailed
from ..act.failpoints import failpoint
from ..act.files import give_tree_to_app_user, locked, port_is_free, readable_tree
from ..act.secrets import new_tenant_secrets, read_env_file, write_env_file
from ..model import (SECRETS_FILE, TENANT_FILE, ConfigError, Project, Tenant, check_database_identity, check_host,
                     check_hosts_free, check_name, display_path, load_tenant, load_tenants, read_yaml,
                     tenant_from_mapping)
from ..progress import track
from . import housekeeping, stack
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


class NoDatabase(OperationFailed):
    """The tenant has no database on the server: nothing to dump."""


def write_backup(project: Project, tenant: Tenant, secrets: bool, folder: Path | None = None,
                 without_database: bool = False) -> Path:
    """Dump the tenant's database and pack it with its media and folder into one archive.

    A tenant without a database (one that never started) raises NoDatabase: a backup that
    silently holds no data would, kept by retention, push out the ones that do. Only
    `without_database` (tenant rm, which archives whatever exists) writes such an archive:
    its folder and media, restoring as a tenant whose database `tenant up` makes."""
    folder = folder or project.backups_dir
    check_backups_folder(folder)
    with scratch_folder(project, "backup") as tmp:
        conn = database.admin_connect(project)
        try:
            exists = database.database_exists(conn, tenant.names)
        finally:
            conn.close()
        if not exists and not without_database:
            raise NoDatabase(f"tenant {tenant.name} has no database {tenant.names.database!r} on the server, so "
                             f"there is nothing to back up (a tenant that never started gets one with "
                             f"`tenant up {tenant.name}`)")
        dump = tmp / archive.DUMP if exists else None
        if dump is not None:
            database.dump_database(project, tenant.names, dump)
        files = archive.members(tenant.path, tenant.media_dir, dump, secrets)
        stats = {"database_dump_bytes": dump.stat().st_size if dump is not None else None,
                 "media_files": sum(1 for name, _ in files if name.startswith("media/"))}
        target = _unique(folder / archive.archive_name(tenant.name))
        archive.write_archive(target, tenant.name, files, secrets, stats)
    return target


@contextmanager
def scratch_folder(project: Project, purpose: str) -> Iterator[Path]:
    """A private (0700) working folder in .tenantkit, removed afterwards. Its name holds
    this process's id, so one left by a killed run is recognised by sweep()."""
    archive.private_folder(project.state_dir)
    folder = Path(tempfile.mkdtemp(dir=project.state_dir, prefix=f"{purpose}-{os.getpid()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _dead(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


def sweep(project: Project) -> None:
    """Remove what killed runs left: working folders in .tenantkit, staged tenant folders,
    and the trash of removals (they may hold secrets and dumps)."""
    for folder, pattern in ((project.state_dir, "*-*-*"), (project.tenants_dir, ".*.*-*-*")):
        for path in folder.glob(pattern) if folder.is_dir() else []:
            parts = path.name.split("-")
            if path.is_dir() and len(parts) >= 3 and parts[-2].isdigit() and _dead(parts[-2]):
                shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(project.state_dir / "trash", ignore_errors=True)


def backup(project: Project, names: Iterable[str] = (), all_: bool = False, secrets: bool = False,
           report: Report = quiet) -> list[Path]:
    """Archive tenants: database dump, media and folder (secrets only when asked)."""
    chosen = stack.select(load_tenants(project), names, all_)
    check_backups_folder(project.backups_dir)
    client = engine.connect() if project.database.service else None
    paths = []
    failures = []
    with locked(project), track("backing up", len(chosen), report) as progress:
        _ensure_database_running(client, project)
        for tenant in chosen:  # one tenant's failure does not stop the others
            if not progress.bar:
                report(f"backing up {tenant.name}")
            try:
                paths.append(write_backup(project, tenant, secrets))
            except OperationFailed as exc:
                failures.append(str(exc))
                progress.advance(tenant.name, "failed", failed=True, line=f"{tenant.name}: FAILED: {exc}")
                continue
            progress.advance(tenant.name, "archived", line="")
    if failures:
        raise PartlyFailed("\n".join(failures), paths)
    housekeeping.retain_after_backup(project, [t.name for t in chosen], report)  # backups.keep, when set
    return paths


# ---------------------------------------------------------------------------
# rm


def rm(project: Project, name: str, keep_data: bool = False, report: Report = quiet) -> Path | None:
    """Archive the tenant (with its secrets), then drop its database and role and delete its
    container, network, vhost, folder and media. With keep_data, only the running parts go.

    Crash-safe: once archived, tenant.yaml records the removal (`removing: ARCHIVE`), which
    stops `up` from starting the tenant again; `tenant rm NAME` run again continues from
    where it stopped, with the same archive."""
    stack.select(load_tenants(project), [name], False)
    if not keep_data:
        check_backups_folder(project.backups_dir)
    client = engine.connect()
    with locked(project):
        sweep(project)
        tenant = load_tenant(project, name)
        if keep_data:
            stack.remove_tenant_runtime(client, project, tenant)
            stack.write_tenant_yaml(project, replace(tenant, enabled=False))
            _forget(client, project, tenant, report)
            return None
        saved = Path(tenant.removing) if tenant.removing else None
        if saved is None or not saved.is_file():
            _ensure_database_running(client, project)
            report(f"archiving {name}")
            saved = write_backup(project, tenant, secrets=True, without_database=True)  # raises before any drop
            failpoint("rm", "archived")
            tenant = replace(tenant, enabled=False, removing=str(saved))
            stack.write_tenant_yaml(project, tenant)
        report(f"archived to {display_path(saved)}")
        failpoint("rm", "marked")
        report(f"removing {name}'s container and network")
        stack.remove_tenant_runtime(client, project, tenant)
        _forget(client, project, tenant, report)
        failpoint("rm", "stopped")
        _ensure_database_running(client, project)
        conn = database.admin_connect(project)
        try:
            report(f"dropping database and role {tenant.names.database}")
            database.drop_database(conn, tenant.names)
        finally:
            conn.close()
        failpoint("rm", "dropped")
        # One rename takes the folder (and, inside it, the media) out of the fleet.
        if tenant.media_dir.is_dir():
            shutil.rmtree(tenant.path / STAGED_MEDIA, ignore_errors=True)
            os.rename(tenant.media_dir, tenant.path / STAGED_MEDIA)
        trash = project.state_dir / "trash"
        archive.private_folder(trash)
        os.rename(tenant.path, trash / f"{name}-{_secrets.token_hex(4)}")
        failpoint("rm", "moved")
        stack.drop_runtime(project, name)
        shutil.rmtree(trash, ignore_errors=True)
        for log in (f"{name}.access.log", f"{name}.error.log", f"{name}.schedule.log",
                    f"{name}.schedule.log.1"):  # the proxy and the scheduler no longer write them
            (project.logs_dir / log).unlink(missing_ok=True)
    return saved


def _forget(client, project: Project, tenant: Tenant, report: Report) -> None:
    """Take a tenant out of the generated files and the proxy."""
    stack.forget(project, tenant)
    if project.engine == "swarm":  # off the database's and the proxy's networks, then gone
        from . import swarm
        swarm.forget_network(client, project, tenant, report)
        return
    stack.render(project, [])
    stack.reload_proxy(client, project, [], report)


# ---------------------------------------------------------------------------
# restore / clone

STAGED_MEDIA = ".media"  # media inside a staged or removed tenant folder (see stack.ensure_tenant_files)


def _archived_tenant(project: Project, unpacked: Path, manifest: archive.Manifest, name: str,
                     hosts: tuple[str, ...], folder: Path) -> Tenant:
    """The archive's tenant.yaml, validated like any other, as tenant NAME. A renamed
    tenant gets a database and role of its own, whatever the archive says."""
    path = unpacked / "tenant" / TENANT_FILE
    try:
        data, lines = read_yaml(path)
        data["name"] = manifest.tenant
        tenant = tenant_from_mapping(project, manifest.tenant, data, lines, path, folder)
    except ConfigError as exc:  # name the archive's file, not the scratch folder it was read from
        raise ConfigError(str(exc).replace(display_path(path), "the archive's tenant/tenant.yaml")) from None
    renamed = name != manifest.tenant
    if renamed and tenant.tls_cert:  # the source's certificate names the source's hosts
        tenant = replace(tenant, tls_cert=None, tls_key=None, tls=None)
    return replace(tenant, name=name, hosts=hosts or tenant.hosts, maintenance=False, enabled=True, removing=None,
                   database=None if renamed else tenant.database, db_user=None if renamed else tenant.db_user)


def restore(project: Project, source: Path, as_name: str | None = None, hosts: Iterable[str] = (),
            report: Report = quiet, start: bool = True, trust_code: bool = False,
            step: str = "restore") -> Tenant:
    """Bring a tenant back from an archive, under its own name or as a new tenant.

    An archive is untrusted: its tenant.yaml is validated, its dump loads as the tenant's
    own role, and its code (local_settings.py, the tenant's own apps) is restored only with
    trust_code. Crash-safe: the database carries a "restore in progress" comment until the
    tenant folder is in place, so running the same restore again starts over cleanly."""
    try:
        if as_name is not None:
            check_name(as_name)
        hosts = tuple(dict.fromkeys(check_host(h) for h in hosts))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    client = engine.connect() if project.database.service else None
    sweep(project)
    with scratch_folder(project, "restore") as unpacked:
        manifest = archive.unpack(source, unpacked)
        stack.checked(check_name, manifest.tenant)
        failpoint(step, "unpacked")
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
            check_database_identity(project, tenant, others)
            if tenant.port in {o.port for o in others} or not port_is_free(tenant.port):
                tenant = replace(tenant, port=stack.next_port(project, others))
            _ensure_database_running(client, project)
            conn = database.admin_connect(project)
            try:
                if database.database_exists(conn, tenant.names):
                    if database.comment_of(conn, tenant.names.database) != database.RESTORING:
                        raise ConfigError(f"a database {tenant.names.database!r} already exists on the server "
                                          f"(left by `tenant rm --keep-data`?); `tenant up {name}` uses it, "
                                          "or restore under another name")
                    database.drop_database(conn, tenant.names)  # an earlier restore was killed midway
                report(f"restoring {name} from {display_path(source)}")
                skipped = _restore_into(project, conn, unpacked, manifest, tenant, renamed, trust_code, step)
            finally:
                conn.close()
            stack.drop_runtime(project, name)  # what an earlier tenant of that name left
            if skipped:
                report(f"not restored (code from the archive runs as the tenant; pass --trust-code to "
                       f"restore it): {', '.join(skipped)}")
            stack.render(project, [name])
    if start:
        from .tenants import up
        up(project, [name], report=report)
    return load_tenant(project, name)


def _restore_into(project: Project, conn, unpacked: Path, manifest: archive.Manifest, tenant: Tenant,
                  renamed: bool, trust_code: bool, step: str) -> list[str]:
    """Stage the folder (media inside it), create database and role, load the dump as the
    role, then move the folder into place; undo all of it on failure. Returns the archived
    files that were not restored because code was not trusted."""
    staging = project.tenants_dir / f".{tenant.name}.restore-{os.getpid()}-{_secrets.token_hex(4)}"
    created = False
    skipped = []
    try:
        shutil.copytree(unpacked / "tenant", staging)
        readable_tree(staging)
        for path in sorted(staging.rglob("*")):
            relative = path.relative_to(staging).as_posix()
            if path.is_file() and relative not in (TENANT_FILE, SECRETS_FILE) and not trust_code:
                path.unlink()
                skipped.append(relative)
        archived_secrets = staging / SECRETS_FILE
        keep = manifest.secrets and not renamed and archived_secrets.is_file()
        values = read_env_file(archived_secrets) if keep else new_tenant_secrets()
        archived_secrets.unlink(missing_ok=True)
        write_env_file(staging / SECRETS_FILE, values,
                       f"Secrets of tenant {tenant.name}. Generated by tenantkit; keep private.")
        staged = replace(tenant, path=staging)
        stack.write_tenant_yaml(project, staged)
        archive.place_media(unpacked, staging / STAGED_MEDIA)
        give_tree_to_app_user(staging / STAGED_MEDIA)
        failpoint(step, "staged")
        database.provision_database(conn, tenant.names, values["TENANT_DB_PASSWORD"], stack.connection_limit(tenant),
                                    comment=database.RESTORING)
        created = True
        failpoint(step, "provisioned")
        if archive.DUMP in manifest.files:  # none: the tenant never started; `up` migrates its empty database
            database.restore_database(project, tenant.names, unpacked / archive.DUMP, values["TENANT_DB_PASSWORD"])
        failpoint(step, "loaded")
        os.rename(staging, tenant.path)
    except BaseException:
        if created:
            database.drop_database(conn, tenant.names)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # In place: the database is the tenant's now, and its media moves to media/NAME (or, after
    # a crash here, when the tenant is next rendered).
    database.set_comment(conn, tenant.names.database, None)
    failpoint(step, "placed")
    stack.ensure_tenant_files(tenant)
    return skipped


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
    with scratch_folder(project, "clone") as tmp:
        with locked(project):
            _ensure_database_running(client, project)
            report(f"copying {src}")
            saved = write_backup(project, source, secrets=False, folder=tmp)
        failpoint("clone", "copied")
        # The source's own code comes along: it is this project's, not a stranger's archive.
        return restore(project, saved, as_name=dst, hosts=checked, report=report, trust_code=True, step="clone")


"""Tenant archives: one .tar.gz with the database dump, media and tenant folder.

    manifest.json      format, version, tenant, creation time, sha256 of every member
    database.dump      pg_dump -Fc --no-owner --no-privileges
    media/...          the tenant's www/content
    tenant/...         tenant.yaml, local_settings.py, its own apps (secrets.env only if asked)

The manifest is written last, so a truncated archive has none and is refused whole.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..model import SECRETS_FILE, ConfigError, display_path

FORMAT = "tenantkit-backup"
VERSION = 1
MANIFEST = "manifest.json"
DUMP = "database.dump"
SKIP_IN_FOLDER = {"www", "settings.py", "__pycache__"}  # media goes under media/; settings are generated


@dataclass(frozen=True)
class Manifest:
    tenant: str
    created: str
    secrets: bool
    files: dict[str, str]
    stats: dict


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def archive_name(tenant: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{tenant}-{now.strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


def members(tenant_dir: Path, dump: Path, secrets: bool) -> list[tuple[str, Path]]:
    """(name in the archive, file on disk) of everything a backup holds."""
    files = [(DUMP, dump)]
    for path in sorted(tenant_dir.rglob("*")):
        relative = path.relative_to(tenant_dir)
        if not path.is_file() or path.is_symlink() or relative.parts[0] in SKIP_IN_FOLDER:
            continue
        if relative.name == SECRETS_FILE and len(relative.parts) == 1 and not secrets:
            continue
        if relative.suffix == ".pyc":
            continue
        files.append((f"tenant/{relative.as_posix()}", path))
    media = tenant_dir / "www" / "content"
    for path in sorted(media.rglob("*")) if media.is_dir() else []:
        if path.is_file() and not path.is_symlink():
            files.append((f"media/{path.relative_to(media).as_posix()}", path))
    return files


def write_archive(target: Path, tenant: str, files: list[tuple[str, Path]], secrets: bool, stats: dict) -> Path:
    """Write the archive atomically (temp file, then rename); the manifest goes in last."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    checksums = {}
    try:
        with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
            for name, path in files:
                checksums[name] = _sha256(path)
                tar.add(path, arcname=name, recursive=False)
            manifest = json.dumps({
                "format": FORMAT, "version": VERSION, "tenant": tenant,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "secrets": secrets, "files": checksums, "stats": stats,
            }, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(manifest), int(dt.datetime.now().timestamp()), 0o600
            tar.addfile(info, io.BytesIO(manifest))
        os.chmod(partial, 0o600)  # it may hold secrets, and always holds the tenant's data
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def unpack(archive: Path, into: Path) -> Manifest:
    """Extract and verify an archive; ConfigError when it is missing, truncated, foreign or altered."""
    where = display_path(archive)
    if not archive.is_file():
        raise ConfigError(f"archive {where} does not exist; see `ls backups/`")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ConfigError(f"archive {where} is truncated or not a tenantkit archive ({exc})") from None
    try:
        data = json.loads((into / MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        raise ConfigError(f"archive {where} has no valid manifest: it is truncated or not a tenantkit archive") from None
    if data.get("format") != FORMAT:
        raise ConfigError(f"archive {where} is not a tenantkit archive")
    if data.get("version") != VERSION:
        raise ConfigError(f"archive {where} has format version {data.get('version')}; this tenantkit reads "
                          f"version {VERSION}: restore it with the tenantkit that made it")
    for name, checksum in data["files"].items():
        path = into / name
        if not path.is_file() or _sha256(path) != checksum:
            raise ConfigError(f"archive {where}: {name} does not match its checksum; the archive is damaged")
    return Manifest(tenant=data["tenant"], created=data["created"], secrets=bool(data.get("secrets")),
                    files=data["files"], stats=data.get("stats", {}))


def place_media(unpacked: Path, media_dir: Path) -> None:
    """Move the archive's media into a (new) tenant's media folder."""
    source = unpacked / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        for path in source.iterdir():
            shutil.move(str(path), media_dir / path.name)

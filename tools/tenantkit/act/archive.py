"""Tenant archives: one .tar.gz with the database dump, media and tenant folder.

    manifest.json      format, version, tenant, creation time, sha256 of every member
    database.dump      pg_dump -Fc --no-owner --no-privileges
    media/...          the tenant's media (media/NAME)
    tenant/...         tenant.yaml, local_settings.py, its own apps (secrets.env only if asked)

The manifest is written last, so a truncated archive has none and is refused whole.
Archives are created mode 0600 in a 0700 folder: they hold a tenant's data and often
its secrets.

An archive is untrusted input when it is read: only regular files with plain relative
names are unpacked, each within a size budget, and any member the manifest does not
list, or whose checksum differs, refuses the whole archive. What a restore then trusts
is decided by the caller (see orchestration/data.py).
"""
from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..model import SECRETS_FILE, TENANT_FILE, ConfigError, display_path
from .engine import OperationFailed

FORMAT = "tenantkit-backup"
VERSION = 1
MANIFEST = "manifest.json"
DUMP = "database.dump"
SKIP_IN_FOLDER = {"www", "settings.py", "__pycache__"}  # media goes under media/; settings are generated
MEMBER_NAME = re.compile(r"(manifest\.json|database\.dump|(media|tenant)/[^\x00-\x1f\\]+)")
FOLDER_MODE, FILE_MODE = 0o700, 0o600
MAX_RATIO = 100  # unpacked bytes per archive byte, beyond 256 MiB


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


def members(tenant_dir: Path, media_dir: Path, dump: Path | None, secrets: bool) -> list[tuple[str, Path]]:
    """(name in the archive, file on disk) of everything a backup holds. Symlinks are
    never followed: only regular files are archived. No dump: the tenant has no database
    yet (it never started), and its archive holds its folder and media only."""
    files = [(DUMP, dump)] if dump is not None else []
    for path in sorted(tenant_dir.rglob("*")):
        relative = path.relative_to(tenant_dir)
        if not path.is_file() or path.is_symlink() or relative.parts[0] in SKIP_IN_FOLDER:
            continue
        if relative.name == SECRETS_FILE and len(relative.parts) == 1 and not secrets:
            continue
        if relative.suffix == ".pyc" or any(part.startswith(".") for part in relative.parts):
            continue
        files.append((f"tenant/{relative.as_posix()}", path))
    for path in sorted(media_dir.rglob("*")) if media_dir.is_dir() else []:
        if path.is_file() and not path.is_symlink():
            files.append((f"media/{path.relative_to(media_dir).as_posix()}", path))
    return files


def private_folder(folder: Path) -> None:
    """A folder only its owner may enter (backups, staging): created, or tightened, 0700."""
    folder.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    if folder.stat().st_mode & 0o077:
        os.chmod(folder, FOLDER_MODE)


def write_archive(target: Path, tenant: str, files: list[tuple[str, Path]], secrets: bool, stats: dict) -> Path:
    """Write the archive atomically (temp file, then rename); the manifest goes in last.

    The file is 0600 from its first byte. A failure (a full disk included) removes the
    partial file and raises; the caller has changed nothing yet."""
    private_folder(target.parent)
    partial = target.with_name(f".{target.name}.partial")
    checksums = {}
    try:
        partial.unlink(missing_ok=True)  # left by a killed run
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb") as raw, \
                tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
            for name, path in files:
                checksums[name] = _sha256(path)
                tar.add(path, arcname=name, recursive=False)
            manifest = json.dumps({
                "format": FORMAT, "version": VERSION, "tenant": tenant,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "secrets": secrets, "files": checksums, "stats": stats,
            }, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(manifest), int(dt.datetime.now().timestamp()), FILE_MODE
            tar.addfile(info, io.BytesIO(manifest))
        with open(partial, "rb") as done:
            os.fsync(done.fileno())
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise OperationFailed(f"no space left on the device of {display_path(target.parent)} while writing "
                                  f"{target.name}; the partial archive was removed and nothing was changed: "
                                  "free some space and retry") from None
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def _refuse(where: str, problem: str) -> ConfigError:
    return ConfigError(f"archive {where} {problem}; it was not made by `tenant backup` or was altered, "
                       "so nothing was restored")


def _checked_member(member: tarfile.TarInfo, where: str, seen: set[str]) -> str:
    """The member's name, when it is a regular file with a plain relative name a tenantkit
    archive may hold; else ConfigError."""
    name = member.name
    parts = PurePosixPath(name).parts
    if (not MEMBER_NAME.fullmatch(name) or name.startswith("/") or ".." in parts or "." in parts
            or "" in name.split("/") or len(name) > 1024):
        raise _refuse(where, f"holds a member with an unsafe name ({name!r})")
    if not member.isreg():
        raise _refuse(where, f"holds {name!r}, which is not a regular file (a link or device)")
    if name in seen:
        raise _refuse(where, f"holds {name!r} twice")
    seen.add(name)
    return name


def unpack(archive: Path, into: Path, limit: int | None = None) -> Manifest:
    """Extract and verify an archive; ConfigError when it is missing, truncated, foreign,
    altered, holds anything but the files its manifest lists, or would unpack to more
    than `limit` bytes (default: the free space where it unpacks, less 1 GiB)."""
    where = display_path(archive)
    if not archive.is_file():
        raise ConfigError(f"archive {where} does not exist; see `ls backups/`")
    private_folder(into)
    if limit is None:
        # Within the free space, and within what real archives compress to: dumps (-Fc) and
        # media are compressed already, so a gzip that expands a hundredfold is a bomb.
        usage = shutil.disk_usage(into)
        limit = min(max(usage.free - (1 << 30), 0), archive.stat().st_size * MAX_RATIO + (256 << 20))
    seen: set[str] = set()
    total = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = _checked_member(member, where, seen)
                total += member.size
                if total > limit:
                    raise _refuse(where, f"would unpack to more than {limit / 2**30:.1f} GiB (a compression "
                                         "bomb, or more than the free space here)")
                target = into / name
                target.parent.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
                source = tar.extractfile(member)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                with source, open(os.open(target, flags, FILE_MODE), "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except ConfigError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ConfigError(f"archive {where} is truncated or not a tenantkit archive ({exc})") from None
    try:
        data = json.loads((into / MANIFEST).read_text())
        files = data["files"]
        if not isinstance(data, dict) or not isinstance(files, dict):
            raise ValueError
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        raise ConfigError(f"archive {where} has no valid manifest: it is truncated or not a tenantkit archive") from None
    if data.get("format") != FORMAT:
        raise ConfigError(f"archive {where} is not a tenantkit archive")
    if data.get("version") != VERSION:
        raise ConfigError(f"archive {where} has format version {data.get('version')}; this tenantkit reads "
                          f"version {VERSION}: restore it with the tenantkit that made it")
    extra = sorted(seen - set(files) - {MANIFEST})
    if extra:
        raise _refuse(where, f"holds {extra[0]!r}, which its manifest does not list")
    if f"tenant/{TENANT_FILE}" not in files:  # a dump is absent for a tenant that never started
        raise _refuse(where, f"lists no tenant/{TENANT_FILE}")
    for name, checksum in files.items():
        path = into / name
        if name not in seen or not path.is_file() or _sha256(path) != checksum:
            raise ConfigError(f"archive {where}: {name} does not match its checksum; the archive is damaged")
    tenant = data.get("tenant")
    if not isinstance(tenant, str):
        raise _refuse(where, "names no tenant")
    return Manifest(tenant=tenant, created=str(data.get("created")), secrets=bool(data.get("secrets")),
                    files=files, stats=data.get("stats") if isinstance(data.get("stats"), dict) else {})


def place_media(unpacked: Path, media_dir: Path) -> None:
    """Move the archive's media into a (new) tenant's media folder."""
    source = unpacked / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        for path in source.iterdir():
            shutil.move(str(path), media_dir / path.name)

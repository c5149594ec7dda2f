"""Atomic file writes and the project lock."""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import filelock

from ..model import ConfigError, Project

APP_UID = 10001  # the uid tenant containers run as (see the Dockerfile)
LOCK_TIMEOUT = 600


def atomic_write(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write `text` to `path` via a temp file and os.replace; False when already identical."""
    try:
        if path.read_text(encoding="utf-8") == text and (path.stat().st_mode & 0o777) == mode:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def give_to_app_user(path: Path) -> None:
    """Let the container's uid write a media folder, and Apache read it.

    Media is what a tenant publishes under /_content; no other tenant's container mounts it.
    Without root (no chown), the folder becomes world-writable instead.
    """
    try:
        os.chown(path, APP_UID, APP_UID)
        os.chmod(path, 0o755)
    except PermissionError:
        os.chmod(path, 0o777)


def give_secret_to_app_user(path: Path) -> None:
    """A secrets file the tenant's container reads (as APP_UID) and no one else: 0600."""
    os.chmod(path, 0o600)
    try:
        if path.stat().st_uid != APP_UID:
            os.chown(path, APP_UID, APP_UID)
    except PermissionError:
        pass  # not root: the containers' uid cannot read it, which `up` reports


def give_tree_to_app_user(path: Path) -> None:
    """give_to_app_user for a media folder and everything in it (restored or imported
    files): the container's uid owns them, and the proxy may read them (they are public)."""
    give_to_app_user(path)
    for item in path.rglob("*"):
        if item.is_symlink():
            continue
        try:
            os.chown(item, APP_UID, APP_UID, follow_symlinks=False)
        except PermissionError:
            pass
        os.chmod(item, 0o755 if item.is_dir() else 0o644)


def readable_tree(path: Path) -> None:
    """Files of a tenant folder readable by its container (0644, folders 0755), its
    secrets.env excepted; for files that arrived private (unpacked from an archive)."""
    for item in [path, *path.rglob("*")]:
        if item.is_symlink() or item.name == "secrets.env":
            continue
        os.chmod(item, 0o755 if item.is_dir() else 0o644)


_LOCKS: dict[str, filelock.FileLock] = {}


def project_lock(project: Project) -> filelock.FileLock:
    """The lock every state-changing command holds, so concurrent runs cannot interleave.

    One FileLock object per lock file and process: it is re-entrant in the thread that
    holds it, and excludes other threads and other processes alike.
    """
    project.state_dir.mkdir(parents=True, exist_ok=True)
    path = str(project.state_dir / "lock")
    if path not in _LOCKS:
        _LOCKS[path] = filelock.FileLock(path, timeout=LOCK_TIMEOUT)
    return _LOCKS[path]


def locked(project: Project):
    """Context manager holding the project lock, with a clear error when it cannot be had."""
    lock = project_lock(project)

    class _Held:
        def __enter__(self):
            try:
                lock.acquire()
            except filelock.Timeout:
                raise ConfigError(
                    f"another tenant command has held {lock.lock_file} for {LOCK_TIMEOUT}s; "
                    "wait for it to finish and retry") from None
            return lock

        def __exit__(self, *exc):
            lock.release()
            return False

    return _Held()


def held_elsewhere(lock: filelock.FileLock) -> bool:
    """Whether another process holds this lock now (a lock of timeout 0)."""
    try:
        lock.acquire()
    except filelock.Timeout:
        return True
    lock.release()
    return False


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

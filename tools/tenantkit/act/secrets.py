"""Generated secrets, stored as env files of mode 0600 and never printed."""
from __future__ import annotations

import secrets
from pathlib import Path

from .files import atomic_write

SECRET_MODE = 0o600


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file; comments and blank lines are skipped."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def write_env_file(path: Path, values: dict[str, str], comment: str) -> None:
    lines = [f"# {comment}", *(f"{key}={value}" for key, value in values.items())]
    atomic_write(path, "\n".join(lines) + "\n", mode=SECRET_MODE)


def new_tenant_secrets() -> dict[str, str]:
    # URL-safe tokens: no quoting, '$' or '#' to be misread by env-file parsers.
    return {
        "TENANT_DB_PASSWORD": secrets.token_urlsafe(32),
        "TENANT_SECRET_KEY": secrets.token_urlsafe(50),
    }


def ensure_db_admin_secret(path: Path) -> None:
    """Create the compose database's admin password on first use."""
    if not path.exists():
        write_env_file(path, {"POSTGRES_PASSWORD": secrets.token_urlsafe(32)},
                       "Admin password of the compose db service. Generated; keep private.")

"""Generated secrets, stored as env files of mode 0600 and never printed.

The format is our own, read by read_env_file and by the tenant's settings.py only (no
shell, no Compose env_file): `KEY=VALUE` lines, the value being everything after the
first `=` up to the end of the line, verbatim, with no quoting or escaping. So a value
may hold `$`, `#`, quotes and backslashes, but nothing a line reader could split on or
trim: write_env_file refuses those instead of writing a file that reads back otherwise.
"""
from __future__ import annotations

import re
import secrets
import unicodedata
from pathlib import Path

from ..model import ConfigError, display_path
from .files import atomic_write

SECRET_MODE = 0o600
KEY_RE = re.compile(r"[A-Z_][A-Z0-9_]*")


def check_env_value(value: str) -> str:
    """A value secrets.env can hold verbatim; the ValueError never shows the value (a secret)."""
    # Control characters (newline, CR, NUL, ESC, ...) and Unicode line separators: every
    # character str.splitlines() breaks a line at is among them.
    if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in value):
        raise ValueError("contains a control character (newline, CR, NUL, ...)")
    if value != value.strip():
        raise ValueError("starts or ends with white space")
    return value


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file, values verbatim; comments and blank lines are skipped.

    The first of two lines with the same key wins, as in the settings' own reader.
    """
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, found, value = line.partition("=")
        if found and not key.startswith("#"):
            values.setdefault(key, value)
    return values


def write_env_file(path: Path, values: dict[str, str], comment: str) -> None:
    """Write KEY=VALUE lines (mode 0600); refuse a key or value that would not read back as given."""
    where = display_path(path)
    for key, value in values.items():
        if not KEY_RE.fullmatch(key):
            raise ConfigError(f"{where}: {key!r} is not a variable name (A-Z, 0-9 and _); use one such as "
                              "TENANT_SECRET_KEY")
        try:
            check_env_value(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: the value of {key} {exc}, which secrets.env cannot hold verbatim; "
                              "choose another value") from None
    try:
        check_env_value(comment)
    except ValueError as exc:
        raise ConfigError(f"{where}: the comment {exc}; keep it to one line") from None
    lines = [f"# {comment}", *(f"{key}={value}" for key, value in values.items())]
    atomic_write(path, "\n".join(lines) + "\n", mode=SECRET_MODE)


def new_tenant_secrets() -> dict[str, str]:
    # URL-safe tokens: nothing any reader of env files could misread.
    return {
        "TENANT_DB_PASSWORD": secrets.token_urlsafe(32),
        "TENANT_SECRET_KEY": secrets.token_urlsafe(50),
    }


def ensure_db_admin_secret(path: Path) -> None:
    """Create the compose database's admin password on first use."""
    if not path.exists():
        write_env_file(path, {"POSTGRES_PASSWORD": secrets.token_urlsafe(32)},
                       "Admin password of the compose db service. Generated; keep private.")

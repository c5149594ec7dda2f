"""Helpers for benchmarks: a throwaway project on the real engine, torn down at exit."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from tests.conftest import tenant_cli, write_project  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def bench_project(name: str, keep: bool = False, **overrides):
    """A project folder with its own compose project name and ports; `down -v` at the end
    (unless `keep`: then the stack and its folder stay, and where they are is printed)."""
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        if keep:
            tmp = tempfile.mkdtemp(prefix=f"{name}-")
        root = write_project(Path(tmp), name=f"{name}{os.getpid()}", database__publish_port=free_port(),
                             ports__first=free_port(), **{"proxy__port": free_port(), **overrides})
        try:
            yield root
        finally:
            compose = root / "compose" / "compose.yaml"
            if keep:
                print(f"kept: {root} (remove with `docker compose -f {compose} down -v`)")
            elif compose.exists():
                subprocess.run(["docker", "compose", "-f", str(compose), "down", "-v", "-t", "5"],
                               capture_output=True)


def cli(root: Path, *args: str) -> str:
    run = tenant_cli(root, *args)
    if run.code != 0:
        raise SystemExit(f"tenant {' '.join(args)} failed:\n{run.err}")
    return run.out

"""Fixtures shared by unit and integration tests: a throwaway tenantkit project."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from tenantkit.model import load_project  # noqa: E402


@dataclass
class Run:
    code: int
    out: str
    err: str


_POOLS = [os.getpid() % 50]


def write_project(folder: Path, name: str = "tktest", **overrides) -> Path:
    """A project folder whose tenantkit.yaml points at the repository's demo project."""
    config = yaml.safe_load((REPO / "tenantkit.yaml").read_text())
    config["name"] = name
    config["project"]["source"] = str(REPO / "image" / "demo")
    config["project"]["requirements"] = str(REPO / "image" / "demo" / "requirements.txt")
    config["images"]["app"] = f"{name}/app"
    # The demo's background process and schedule are make demo's: a test project has them
    # when it asks (tenant_defaults__processes=...), so every other test runs one container
    # per tenant.
    config["tenant_defaults"].pop("processes", None)
    config["tenant_defaults"].pop("schedule", None)
    local = REPO / "tenantkit.local.yaml"
    if local.is_file():  # the images this machine built for itself (no registry)
        local_config = yaml.safe_load(local.read_text()) or {}
        config["images"].update(local_config.get("images", {}))
        if local_config.get("wheelhouse"):
            config["wheelhouse"] = str(REPO / local_config["wheelhouse"])
    # Every test project gets a tenant network pool of its own, so projects made by one test
    # run never overlap on the engine (a derived default could, by chance).
    _POOLS[0] += 1
    config["networks"] = {"pool": f"10.{200 + _POOLS[0] % 50}.0.0/16"}
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            config.setdefault(section, {})[field] = value
        else:
            config[section] = value
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tenantkit.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def tenant_cli(project_dir: Path, *args: str, env: dict | None = None, timeout: float = 600) -> Run:
    """Run the real CLI (tools/tenant) against a project folder."""
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "tenant"), "--project", str(project_dir), *args],
        capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` and its content, to prove a failed command wrote nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    return write_project(tmp_path / "project")


@pytest.fixture
def project(project_dir: Path):
    return load_project(project_dir)

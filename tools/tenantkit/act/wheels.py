"""The wheelhouse: Python wheels for image builds on a host whose containers cannot reach
PyPI (see docs/operations.md, "Hosts without a registry").

`wheelhouse: DIR` in tenantkit.yaml. tenantkit keeps one folder of wheels per Python
version and set of requirements in it, `DIR/cp313-<digest>/`, and fills a missing one
with `pip download` on the host (which can reach PyPI), so a project's requirements and
images.python may change without anyone fetching wheels by hand, and projects of several
Python versions share one wheelhouse. A folder made by hand, holding wheels itself, is
used as it is.

Made under a temporary name and renamed into place: a download that is killed leaves
nothing a build would use.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from ..model import ConfigError, Project, display_path
from .engine import OperationFailed, tail

MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def platforms() -> list[str]:
    """pip's platform tags for this host's machine, which its engine builds images for."""
    machine = MACHINES.get(platform.machine().lower(), platform.machine().lower())
    return [f"manylinux2014_{machine}", f"manylinux_2_17_{machine}", f"manylinux_2_28_{machine}"]


def folder_for(project: Project, python: str, files: list[Path]) -> Path:
    """The wheel folder for this Python and these requirement files (hand-made: DIR itself)."""
    assert project.wheelhouse is not None
    if any(project.wheelhouse.glob("*.whl")):
        return project.wheelhouse
    digest = hashlib.sha256(python.encode())
    for path in files:
        digest.update(b"\0" + path.read_bytes())
    return project.wheelhouse / f"cp{python.replace('.', '')}-{digest.hexdigest()[:12]}"


def identity(project: Project, python: str, files: list[Path]) -> str:
    """What names the wheels a build gets, without reading them: a fetched folder never
    changes once made, so its name; a hand-made one, its wheels' names and sizes."""
    folder = folder_for(project, python, files)
    if folder != project.wheelhouse:
        return folder.name
    return repr(sorted((path.name, path.stat().st_size) for path in folder.glob("*.whl")))


def ensure(project: Project, python: str, files: list[Path],
           report: Callable[[str], None] = lambda message: None) -> Path:
    """The folder of wheels for `python` and the requirement files, downloaded when missing."""
    folder = folder_for(project, python, files)
    if folder.is_dir():
        return folder
    report(f"downloading wheels for Python {python} into {display_path(folder)}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
               "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
               *(arg for tag in platforms() for arg in ("--platform", tag)), "-d", str(staging)]
    for path in files:
        command += ["-r", str(path)]
    # PIP_FIND_LINKS of the host's own setup has no wheels for another Python.
    env = {key: value for key, value in os.environ.items() if key != "PIP_FIND_LINKS"}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    except OSError as exc:
        raise ConfigError(f"cannot run pip to fetch wheels ({exc}); fill {display_path(project.wheelhouse)} "
                          "with wheels by hand, or remove `wheelhouse` from tenantkit.yaml") from None
    try:
        if result.returncode != 0:
            raise OperationFailed(f"fetching wheels for Python {python} failed; check the requirements and that "
                                  f"this host reaches PyPI:\n{tail(result.stderr or result.stdout)}")
        try:
            os.rename(staging, folder)
        except OSError:  # another build fetched the same folder meanwhile: theirs is as good
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder

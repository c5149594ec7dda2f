"""Build the shared Django image from the project's code.

The build context is assembled here as a deterministic tar (fixed mtimes, sorted
entries), so its digest names the code exactly: an image whose label carries the same
digest is up to date, and its tag `<app>:src-<digest>` is stable across machines.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import docker
import docker.errors

from ..model import ConfigError, Project
from .engine import OperationFailed, tail

SKIP_DIRS = frozenset({
    ".git", "__pycache__", ".venv", "venv", "node_modules", ".tenantkit", ".pytest_cache",
    ".mypy_cache", ".ruff_cache", ".tox", "tenants",
})
SKIP_SUFFIXES = (".pyc", ".pyo", ".sqlite3")
LABEL = "tenantkit.source"


@dataclass(frozen=True)
class BuildContext:
    data: bytes
    digest: str

    @property
    def short(self) -> str:
        return self.digest[:12]


def _walk(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.iterdir()):
        if path.is_dir() and not path.is_symlink():
            if path.name not in SKIP_DIRS and path.relative_to(folder).as_posix() != "www/content":
                yield from _walk(path)
        elif path.is_file() and not path.name.endswith(SKIP_SUFFIXES):
            yield path


def _source_files(source: Path) -> Iterator[tuple[str, Path]]:
    for path in _walk(source):
        relative = path.relative_to(source).as_posix()
        if not relative.startswith("www/content/"):  # a project's own dev media
            yield f"source/{relative}", path


def image_root(project: Project) -> Path:
    """The folder holding the Dockerfile and image/app: the project's, else this checkout's."""
    for folder in (project.root, Path(__file__).resolve().parents[3]):
        if (folder / "Dockerfile").is_file() and (folder / "image" / "app").is_dir():
            return folder
    raise ConfigError(f"no Dockerfile with image/app/ in {project.root}; copy them from tenantkit")


def context_files(project: Project) -> list[tuple[str, Path]]:
    """(name in the context, file on disk) for everything the Dockerfile copies."""
    tool_root = image_root(project)
    files = [("Dockerfile", tool_root / "Dockerfile")]
    files += [(f"image/app/{p.name}", p) for p in sorted((tool_root / "image" / "app").iterdir())
              if p.is_file()]
    files.append(("requirements/project.txt", project.requirements))
    files.append(("requirements/runtime.txt", tool_root / "image" / "app" / "runtime.txt"))
    if project.wheelhouse is not None:
        if not project.wheelhouse.is_dir():
            raise ConfigError(f"wheelhouse {project.wheelhouse} does not exist; run `make wheels` "
                              "or remove `wheelhouse` from tenantkit.yaml")
        files += [(f"wheelhouse/{p.name}", p) for p in sorted(project.wheelhouse.glob("*.whl"))]
    files += list(_source_files(project.source))
    return files


def make_context(files: list[tuple[str, Path]], extra: str) -> BuildContext:
    """A deterministic tar of `files` and its digest; `extra` names inputs that are not files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted({name.rsplit("/", 1)[0] for name, _ in files if "/" in name}
                                | {"wheelhouse", "requirements", "source", "image/app"}):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name, path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    digest = hashlib.sha256(data)
    digest.update(f"\0{extra}".encode())
    return BuildContext(data=data, digest=digest.hexdigest())


def build_context(project: Project, base_image: str) -> BuildContext:
    """The context of the shared Django image; the base image and settings module count too."""
    return make_context(context_files(project), f"{base_image}\0{project.settings}")


def proxy_context(project: Project) -> BuildContext:
    """The context of the Apache proxy image (image/proxy/)."""
    folder = image_root(project) / "image" / "proxy"
    return make_context([(p.name, p) for p in sorted(folder.iterdir()) if p.is_file()],
                        project.images.proxy_base)


def image_tag(project: Project, context: BuildContext, repository: str | None = None) -> str:
    return f"{repository or project.images.app}:src-{context.short}"


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def image_is_current(client: docker.DockerClient, tag: str, context: BuildContext) -> bool:
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get(LABEL) == context.digest


def ensure_base_image(client: docker.DockerClient, base: str) -> None:
    """The base image must exist locally or be pullable; say how to get one offline."""
    try:
        client.images.get(base)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(base)
    except docker.errors.APIError:
        raise ConfigError(
            f"base image {base} is not present and cannot be pulled; on a host without a registry "
            "run `make images` (builds local bases and writes tenantkit.local.yaml)") from None


def build_image(client: docker.DockerClient, context: BuildContext, tag: str, base: str,
                buildargs: dict[str, str], on_step: Callable[[str], None] = lambda line: None) -> None:
    """Build and tag an image; raise OperationFailed with the build's last lines."""
    ensure_base_image(client, base)
    log: list[str] = []
    stream = client.api.build(
        fileobj=io.BytesIO(context.data), custom_context=True, tag=tag, rm=True, forcerm=True,
        buildargs={"BASE_IMAGE": base, **buildargs}, labels={LABEL: context.digest}, decode=True,
    )
    for chunk in stream:
        if "error" in chunk:
            raise OperationFailed(f"building {tag} failed: {chunk['error'].strip()}\n{tail(''.join(log))}")
        text = chunk.get("stream", "")
        if text:
            log.append(text)
            if text.startswith("Step "):
                on_step(text.strip())
    client.images.get(tag).tag(tag.rpartition(":")[0], "latest")


def extract_assets(client: docker.DockerClient, image: str, target: Path) -> bool:
    """Copy the image's collected static files to `target` (once per release)."""
    if target.is_dir():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    container = client.containers.create(image, command=["true"])
    try:
        stream, _ = container.get_archive("/opt/tenantkit/assets/.")
        buffer = io.BytesIO(b"".join(stream))
    finally:
        container.remove(force=True)
    staging.mkdir()
    with tarfile.open(fileobj=buffer) as tar:
        tar.extractall(staging, filter="data")
    # get_archive wraps the folder's content in a folder of its own name.
    inner = staging / "assets" if (staging / "assets").is_dir() else staging
    os.chmod(inner, 0o755)
    os.rename(inner, target)
    shutil.rmtree(staging, ignore_errors=True)
    return True

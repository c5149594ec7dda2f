"""Build the shared Django image from the project's code.

The build context is assembled here as a deterministic tar (fixed mtimes, sorted
entries), so its digest names the code exactly: an image whose label carries the same
digest is up to date, and its tag `<app>:src-<digest>` is stable across machines.

Every tenant's container can read the whole image, so the project's source goes in as
`docker build` would send it (its .dockerignore honoured, symlinks never followed) and
never with tenantkit's own files, even when the source is the project root.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import docker
import docker.errors
from docker.utils.build import PatternMatcher

from ..model import LOCAL_CONFIG_FILE, ConfigError, Project, display_path
from .. import progress
from . import wheels
from .engine import OperationFailed, tail

SKIP_DIRS = frozenset({
    ".git", "__pycache__", ".venv", "venv", "node_modules", ".tenantkit", ".pytest_cache",
    ".mypy_cache", ".ruff_cache", ".tox", "tenants",
})
SKIP_SUFFIXES = (".pyc", ".pyo", ".sqlite3")
LABEL = "tenantkit.source"


@dataclass(frozen=True)
class BuildContext:
    data: bytes  # the tar of every file but the wheels
    digest: str
    files: tuple[tuple[str, Path], ...] = ()
    # The wheelhouse's wheels, fetched when missing: only when the image is built, so a
    # command that only names the image (every render) never waits on PyPI.
    wheels: Callable[[], list[tuple[str, Path]]] | None = field(default=None, compare=False)

    @property
    def short(self) -> str:
        return self.digest[:12]

    def for_build(self) -> bytes:
        """The tar the engine builds from: the files and the wheels."""
        return self.data if self.wheels is None else _tar([*self.files, *self.wheels()])


def _own_paths(project: Project) -> list[Path]:
    """tenantkit's files, which may sit inside the source: secrets, media, dumps, state."""
    paths = [project.tenants_dir, project.media_root, project.backups_dir, project.state_dir,
             project.compose_file.parent, project.database.admin_password_file, project.wheelhouse]
    return [path for path in paths if path is not None]


def _ignore_patterns(project: Project) -> list[str]:
    """The source's .dockerignore, then what never ships: caches, a project's own dev media
    (www/content) and tenantkit's files. Those come last, so no `!` line brings them back."""
    patterns = []
    ignore_file = project.source / ".dockerignore"
    if ignore_file.is_file():  # read as docker-py reads it: no blank lines, no comments
        lines = (line.strip() for line in ignore_file.read_text().splitlines())
        patterns = [line for line in lines if line and not line.startswith("#")]
    patterns += [f"**/{name}" for name in sorted(SKIP_DIRS)] + [f"**/*{suffix}" for suffix in SKIP_SUFFIXES]
    patterns += ["www/content", f"**/{LOCAL_CONFIG_FILE}"]
    for path in _own_paths(project):
        relative = os.path.relpath(path, project.source)
        if relative != ".." and not relative.startswith("../"):
            # A literal path: each glob character in a class of its own ([*] matches *).
            patterns.append(re.sub(r"[*?[]", lambda match: f"[{match.group()}]", relative))
    return patterns


def source_files(project: Project) -> Iterator[tuple[str, Path]]:
    """(path relative to the source, file) for each file of the project's code that may ship."""
    # docker-py's matcher is the one `docker build` uses: Docker's syntax (**, ! exceptions),
    # and it skips an ignored folder without reading it (tenants/, media/ can be large).
    for relative in sorted(PatternMatcher(_ignore_patterns(project)).walk(str(project.source))):
        path = project.source / relative
        mode = path.lstat().st_mode
        if not stat.S_ISREG(mode):
            continue  # folders come with their files; symlinks and devices never go in
        if not mode & stat.S_IROTH:
            raise ConfigError(f"{display_path(path)} is not world-readable, and in the image every tenant "
                              f"could read it; add {relative} to {display_path(project.source / '.dockerignore')}"
                              " (or chmod o+r it if it should ship)")
        yield relative, path


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
    files.append(("requirements/runtime.txt", runtime_requirements(project)))
    files += [(f"source/{relative}", path) for relative, path in source_files(project)]
    return files


def runtime_requirements(project: Project) -> Path:
    """What every tenant container needs besides the project's requirements."""
    return image_root(project) / "image" / "app" / "runtime.txt"


def _tar(files: list[tuple[str, Path]]) -> bytes:
    """A deterministic tar of `files`: sorted as given, fixed times and owners."""
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
            # The file's own read and execute bits; never writable by others, never setuid.
            info.mode = stat.S_IMODE(path.stat().st_mode) & 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_context(files: list[tuple[str, Path]], extra: str,
                 wheels: Callable[[], list[tuple[str, Path]]] | None = None) -> BuildContext:
    """A deterministic tar of `files` and its digest; `extra` names inputs that are not files
    (the wheels among them: `wheels` gives them when the image is built)."""
    data = _tar(files)
    digest = hashlib.sha256(data)
    digest.update(f"\0{extra}".encode())
    return BuildContext(data=data, digest=digest.hexdigest(), files=tuple(files), wheels=wheels)


def build_context(project: Project, base_image: str) -> BuildContext:
    """The context of the shared Django image; the base image, the settings module and the
    wheelhouse's folder for images.python (named by what decides its wheels) count too."""
    return _with_wheels(project, context_files(project), f"{base_image}\0{project.settings}",
                        [project.requirements, runtime_requirements(project)])


def _with_wheels(project: Project, files: list[tuple[str, Path]], extra: str,
                 requirements: list[Path]) -> BuildContext:
    """A context of these files and, with a wheelhouse, the wheels of these requirements
    (fetched only when the image is built; the wheelhouse folder's name counts)."""
    if project.wheelhouse is None:
        return make_context(files, extra)

    def fetched() -> list[tuple[str, Path]]:
        folder = wheels.ensure(project, project.images.python, requirements,
                               lambda message: progress.echo(f"· {message}"))
        return [(f"wheelhouse/{p.name}", p) for p in sorted(folder.glob("*.whl"))]

    identity = wheels.identity(project, project.images.python, requirements)
    return make_context(files, f"{extra}\0{identity}", fetched)


def proxy_context(project: Project) -> BuildContext:
    """The context of the Apache proxy image (image/proxy/)."""
    folder = image_root(project) / "image" / "proxy"
    return make_context([(p.name, p) for p in sorted(folder.iterdir()) if p.is_file()],
                        project.images.proxy_base)


def scheduler_context(project: Project) -> BuildContext:
    """The context of the scheduler's image (image/scheduler/): Python with the Docker SDK
    and croniter, on the tenants' base image, from the wheelhouse on a host without PyPI."""
    folder = image_root(project) / "image" / "scheduler"
    files = [(p.name, p) for p in sorted(folder.iterdir()) if p.is_file() and p.suffix != ".pyc"]
    return _with_wheels(project, files, project.images.base, [folder / "requirements.txt"])


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
        fileobj=io.BytesIO(context.for_build()), custom_context=True, tag=tag, rm=True, forcerm=True,
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

"""Helpers for benchmarks: a throwaway project on the real engine, torn down at exit."""
from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from tests.conftest import tenant_cli, write_project  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_pool() -> str:
    """A 10.x.0.0/16 tenant network pool that overlaps no network on the (shared) engine."""
    import docker
    taken = []
    for network in docker.from_env().networks.list():
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(KeyError, ValueError):
                taken.append(ipaddress.ip_network(config["Subnet"], strict=False))
    candidates = [ipaddress.ip_network(f"10.{second}.0.0/16") for second in range(150, 250)]
    random.shuffle(candidates)
    for pool in candidates:
        if not any(pool.overlaps(net) for net in taken):
            return str(pool)
    raise SystemExit("no free 10.x.0.0/16 network pool on this engine for a bench project")


def project_name(root: Path) -> str:
    """The compose project name of a bench project (its tenantkit.yaml `name`)."""
    return yaml.safe_load((root / "tenantkit.yaml").read_text())["name"]


@contextlib.contextmanager
def bench_project(name: str, keep: bool = False, demo_copy: bool = False, **overrides):
    """A project folder with its own compose project name and ports; `down -v` at the end
    (unless `keep`: then the stack and its folder stay, and where they are is printed).

    `demo_copy`: the project's source is a copy of the demo in the project folder
    (`src/`), so a bench can change the code and build releases of it."""
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        if keep:
            tmp = tempfile.mkdtemp(prefix=f"{name}-")
        if demo_copy:
            source = Path(tmp) / "src"
            shutil.copytree(REPO / "image" / "demo", source, ignore=shutil.ignore_patterns("__pycache__"))
            overrides = {"project__source": str(source), "project__requirements": str(source / "requirements.txt"),
                         **overrides}
        # The engine is shared: a pool of its own keeps the bench's networks off everyone else's.
        root = write_project(Path(tmp), name=f"{name}{os.getpid()}", database__publish_port=free_port(),
                             ports__first=free_port(), **{"proxy__port": free_port(), "networks__pool": free_pool(),
                                                          **overrides})
        try:
            yield root
        finally:
            compose = root / "compose" / "compose.yaml"
            if keep:
                print(f"kept: {root} (remove with `docker compose -f {compose} down -v`)")
            else:
                if compose.exists():
                    subprocess.run(["docker", "compose", "-f", str(compose), "down", "-v", "--remove-orphans",
                                    "-t", "5"], capture_output=True)
                sweep_engine(project_name(root))


def sweep_engine(project: str) -> None:
    """Remove what the compose project left on the engine: containers `down` does not know
    (one-off and "next" ones), its networks and volumes, and its image tags (`<project>/...`;
    an image other tags still name only loses the tag)."""
    import docker
    client = docker.from_env()
    label = {"label": f"com.docker.compose.project={project}"}
    for container in client.containers.list(all=True, filters=label):
        container.remove(force=True)
    # The scheduler's job containers carry labels of their own, not Compose's.
    for container in client.containers.list(all=True, filters={"label": f"tenantkit.project={project}"}):
        container.remove(force=True)
    for network in client.networks.list(filters=label):
        with contextlib.suppress(docker.errors.APIError):
            network.remove()
    for volume in client.volumes.list(filters=label):
        with contextlib.suppress(docker.errors.APIError):
            volume.remove(force=True)
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(f"{project}/"):
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag)


def cli(root: Path, *args: str) -> str:
    run = tenant_cli(root, *args)
    if run.code != 0:
        raise SystemExit(f"tenant {' '.join(args)} failed:\n{run.err}")
    return run.out


def timed(root: Path, *args: str) -> tuple[float, str]:
    """Seconds a `tenant` command took (CLI start included), and its output."""
    started = time.monotonic()
    out = cli(root, *args)
    return time.monotonic() - started, out


def answers_200(address: str, port: int, host: str, path: str = "/") -> bool:
    try:
        conn = http.client.HTTPConnection(address, port, timeout=2)
        try:
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            response.read()
            return response.status == 200
        finally:
            conn.close()
    except OSError:
        return False


def first_200(address: str, port: int, host: str, path: str = "/", timeout: float = 60) -> float:
    """The monotonic time of the first 200 from address:port (Host: `host`), polled every 20 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers_200(address, port, host, path):
            return time.monotonic()
        time.sleep(0.02)
    raise SystemExit(f"no 200 from {address}:{port} (Host: {host}) within {timeout:.0f}s")


def tenant_container(client, project: str, name: str):
    """The tenant's own container (running or not; never a one-off), or None."""
    found = client.containers.list(all=True, filters={"label": [f"com.docker.compose.project={project}",
                                                                 f"com.docker.compose.service=tenant-{name}"]})
    own = [c for c in found if c.labels.get("com.docker.compose.oneoff") != "True"]
    return own[0] if own else None


def container_address(container, project: str, name: str) -> str | None:
    """The container's IP address on the tenant's network (`<project>_tenant-<name>`)."""
    networks = container.attrs["NetworkSettings"]["Networks"] or {}
    return (networks.get(f"{project}_tenant-{name}") or {}).get("IPAddress") or None


def tenant_address(client, project: str, name: str, timeout: float = 30) -> str:
    """The IP address of the tenant's running container on its own network, waited for."""
    deadline = time.monotonic() + timeout
    while True:
        container = tenant_container(client, project, name)
        address = container_address(container, project, name) if container is not None else None
        if address:
            return address
        if time.monotonic() > deadline:
            raise SystemExit(f"tenant {name}'s container has no address on {project}_tenant-{name} "
                             f"within {timeout:.0f}s")
        time.sleep(0.05)

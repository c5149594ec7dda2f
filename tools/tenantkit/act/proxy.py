"""Run, reload and check the Apache proxy in front of the tenants."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import docker

from ..model import Project, Tenant
from . import engine
from .engine import OperationFailed, tail
from .files import atomic_write

LOADED_MARKER = "proxy-loaded"  # digest of the sites the running proxy last loaded


def write_sites(project: Project, sites: dict[str, str]) -> None:
    """Write the vhost files and delete those of tenants that are gone."""
    project.sites_dir.mkdir(parents=True, exist_ok=True)
    for name, text in sites.items():
        atomic_write(project.sites_dir / name, text)
    for path in project.sites_dir.glob("*.conf"):
        if path.name not in sites:
            path.unlink()


def sites_digest(project: Project) -> str:
    digest = hashlib.sha256()
    for path in sorted(project.sites_dir.glob("*.conf")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _marker(project: Project) -> Path:
    return project.state_dir / LOADED_MARKER


def reload_container(container) -> None:
    """Test the config, then ask Apache (PID 1) for a graceful restart: in-flight requests finish."""
    code, output = container.exec_run(["/opt/tenantkit/run-httpd", "-t"])
    if code != 0:
        raise OperationFailed(f"the proxy's Apache config fails its test, so it was not reloaded:\n"
                              f"{tail(output.decode(errors='replace'))}")
    container.kill(signal="SIGUSR1")


def reload_host(project: Project) -> None:
    command = list(project.proxy.reload_command)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise OperationFailed(f"`{' '.join(command)}` failed:\n{tail(result.stdout + result.stderr)}")


def sync(client: docker.DockerClient | None, project: Project, tenants: list[Tenant],
         report=lambda message: None, force: bool = False) -> None:
    """Start the proxy, or attach it to new tenants' networks and reload it when needed.

    It reloads when its sites changed since it last loaded them, when it joined a network,
    or when `force` says a tenant container was recreated (Apache caches backend addresses).
    """
    mode = project.proxy.mode
    if mode == "none":
        return
    digest = sites_digest(project)
    marker = _marker(project)
    changed = force or not marker.exists() or marker.read_text() != digest
    if mode == "host":
        if changed and project.proxy.reload_command:
            report("reloading the host's Apache")
            reload_host(project)
    else:
        state = engine.service_states(client, project).get("proxy", engine.ABSENT)
        if state.state != "running":
            report("starting proxy")
            engine.compose(project, "up", "-d", "--no-deps", "proxy")
        else:
            attached = engine.attach_to_networks(client, project, "proxy",
                                                 [t.names.network for t in tenants])
            if attached or changed:
                report("reloading proxy gracefully")
                reload_container(state.container)
    atomic_write(marker, digest)

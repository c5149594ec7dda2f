"""Write the proxy's vhosts, and run, reload and check the Apache proxy in front of the tenants."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import docker

from ..model import Project, ProxyMode
from . import engine
from .engine import OperationFailed, tail
from .files import atomic_write

PENDING_MARKER = "proxy-reload-pending"  # sites changed since the proxy last loaded them


def _pending(project: Project) -> Path:
    return project.state_dir / PENDING_MARKER


def write_site(project: Project, name: str, text: str) -> bool:
    """Write one vhost file; True when it changed."""
    return write_file(project, project.sites_dir / name, text)


def write_file(project: Project, path: Path, text: str, mode: int = 0o644) -> bool:
    """Write a file the proxy reads (a vhost, a certificate); True when it changed. The proxy
    is marked for a reload first, so a crash between the write and the reload still reloads
    next time."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    mark_pending(project)
    atomic_write(path, text, mode=mode)
    return True


def remove_site(project: Project, name: str) -> bool:
    path = project.sites_dir / name
    if not path.exists():
        return False
    mark_pending(project)
    path.unlink()
    return True


def site_names(project: Project) -> set[str]:
    return {path.name for path in project.sites_dir.glob("*.conf")} if project.sites_dir.is_dir() else set()


def wanted_file(project: Project) -> Path:
    """The digest of the proxy's definition as last rendered (its label, PROXY_LABEL)."""
    return project.cache_dir / "proxy-config"


def _outdated(project: Project, container) -> bool:
    """Whether the running proxy was made from another definition (HTTPS turned on, say)."""
    try:
        wanted = wanted_file(project).read_text().strip()
    except FileNotFoundError:
        return False
    return container.labels.get("tenantkit.proxy") != wanted


def mark_pending(project: Project) -> None:
    project.state_dir.mkdir(parents=True, exist_ok=True)
    _pending(project).touch()


NUDGE_AFTER = 0.1  # seconds between the graceful restart and the signal that hurries it


def reload_container(client: docker.DockerClient, container_id: str) -> None:
    """Test the config, then ask Apache (PID 1) for a graceful restart: in-flight requests finish.

    After a graceful restart Apache's parent starts the new generation's children when it
    reaps an old one, or after its one-second maintenance sleep. With requests in flight
    it usually sleeps, and the new config takes over a second late (measured: 1.03 s,
    against 0.02 s on an idle proxy). A second graceful signal a moment later, once the
    old children are gone, ends that sleep: 0.15 s either way."""
    run = client.api.exec_create(container_id, ["/opt/tenantkit/run-httpd", "-t"])
    output = client.api.exec_start(run["Id"]).decode(errors="replace")
    if client.api.exec_inspect(run["Id"])["ExitCode"] != 0:
        raise OperationFailed(f"the proxy's Apache config fails its test, so it was not reloaded:\n{tail(output)}")
    client.api.kill(container_id, signal="SIGUSR1")
    time.sleep(NUDGE_AFTER)
    client.api.kill(container_id, signal="SIGUSR1")


def reload_host(project: Project) -> None:
    command = list(project.proxy.reload_command)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise OperationFailed(f"`{' '.join(command)}` failed:\n{tail(result.stdout + result.stderr)}")


def sync(client: docker.DockerClient | None, project: Project, networks: dict[str, str],
         report=lambda message: None, force: bool = False) -> None:
    """Start the proxy, or attach it to tenant networks (name: its address there) and
    reload it when needed.

    It reloads when its sites changed since it last loaded them, when it joined a network,
    or when `force` says a tenant container was recreated (Apache caches backend addresses).
    Work is proportional to `networks`, not to the fleet.
    """
    mode = project.proxy.mode
    if mode is ProxyMode.NONE:
        return
    changed = force or _pending(project).exists()
    if mode is ProxyMode.HOST:
        if changed and project.proxy.reload_command:
            report("reloading the host's Apache")
            reload_host(project)
    else:
        found = engine.container(client, project, "proxy")
        if engine.state_of(found) is not engine.ContainerState.RUNNING:
            report("starting proxy")
            engine.compose(project, "up", "-d", "--no-deps", "--no-recreate", "proxy")
        elif _outdated(project, found):  # its ports or mounts changed: only a new container has them
            report("recreating proxy (its definition changed)")
            engine.compose(project, "up", "-d", "--no-deps", "--force-recreate", "proxy")
        else:
            attached = engine.attach_to_networks(client, project, "proxy", networks)
            if attached or changed:
                report("reloading proxy gracefully")
                reload_container(client, found.id)
    _pending(project).unlink(missing_ok=True)

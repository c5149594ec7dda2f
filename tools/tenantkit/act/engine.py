"""Talk to the Docker engine (through the Docker SDK) and to Compose (its CLI)."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

import docker
import docker.errors

from ..model import ConfigError, Project

ENGINE_HINT = ("start one with `make engine` (installs and starts Docker on Debian/Ubuntu as root), "
               "or `sudo systemctl start docker`")


class OperationFailed(Exception):
    """A step against a real system failed; the CLI prints it and exits 1."""


def connect() -> docker.DockerClient:
    """A client for a reachable Docker engine, or a ConfigError saying how to start one."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        reason = str(exc).split("(")[0].strip().rstrip(":") or type(exc).__name__
        raise ConfigError(f"no Docker engine is reachable ({reason}); {ENGINE_HINT}") from None
    return client


def compose_command(project: Project) -> list[str]:
    return ["docker", "compose", "-f", str(project.compose_file), "-p", project.name]


def compose(project: Project, *args: str, capture: bool = True, check: bool = True,
            interactive: bool = False) -> subprocess.CompletedProcess:
    """Run `docker compose ARGS` on the project's compose file."""
    command = [*compose_command(project), *args]
    try:
        result = subprocess.run(
            command, cwd=project.root, text=True,
            stdin=None if interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
        )
    except FileNotFoundError:
        raise ConfigError(f"the docker client is not installed; {ENGINE_HINT}") from None
    if check and result.returncode != 0:
        output = (result.stdout or "").strip()
        if "is not a docker command" in output:
            raise ConfigError("Docker Compose v2 is missing; run `make engine` to install it")
        raise OperationFailed(f"`docker compose {' '.join(args)}` failed:\n{tail(output)}")
    return result


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class ServiceState:
    state: str  # running, stopped or absent
    health: str  # healthy, unhealthy, starting or "" when unknown
    container: object | None = None


ABSENT = ServiceState("absent", "")


def service_states(client: docker.DockerClient, project: Project) -> dict[str, ServiceState]:
    """The state of every compose service of the project, by service name."""
    listed = client.api.containers(all=True, filters={"label": f"com.docker.compose.project={project.name}"})
    states: dict[str, ServiceState] = {}
    for entry in listed:
        if (entry.get("Labels") or {}).get("com.docker.compose.oneoff") == "True":
            continue
        try:
            container = client.containers.get(entry["Id"])
        except docker.errors.NotFound:  # removed since it was listed (a deploy's next container)
            continue
        labels = container.labels
        service = labels.get("com.docker.compose.service", "")
        running = container.status == "running"
        health = container.attrs.get("State", {}).get("Health", {}).get("Status", "")
        states[service] = ServiceState("running" if running else "stopped", health, container)
    return states


def attach_to_networks(client: docker.DockerClient, project: Project, service: str,
                       networks: list[str]) -> list[str]:
    """Connect a running service's container to compose networks it is not on yet.

    Compose recreates a container whose network list changed; for the shared database
    that would cut every tenant off, so tenantkit attaches it to a new tenant's network
    instead. Returns the networks it attached.
    """
    state = service_states(client, project).get(service, ABSENT)
    if state.container is None:
        return []
    current = set(state.container.attrs["NetworkSettings"]["Networks"])
    attached = []
    for network in networks:
        full = f"{project.name}_{network}"
        if full not in current:
            client.networks.get(full).connect(state.container, aliases=[service])
            attached.append(network)
    return attached

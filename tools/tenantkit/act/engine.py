"""Talk to the Docker engine (through the Docker SDK) and to Compose (its CLI)."""
from __future__ import annotations

import enum
import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from ..model import OWNER_LABEL, ConfigError, Project, Tenant

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


def compose_command(project: Project, tenant: Tenant | None = None) -> list[str]:
    """`docker compose` on the whole stack, or on one tenant's own file: a command about one
    tenant then costs the same however many tenants the stack has."""
    path = project.compose_file if tenant is None else project.tenant_compose_file(tenant)
    return ["docker", "compose", "-f", str(path), "-p", project.name]


def compose(project: Project, *args: str, tenant: Tenant | None = None, capture: bool = True,
            check: bool = True, interactive: bool = False) -> subprocess.CompletedProcess:
    """Run `docker compose ARGS` on the project's compose file (or on `tenant`'s own)."""
    command = [*compose_command(project, tenant), *args]
    # One tenant's file does not name the other services: they are not orphans.
    env = {**os.environ, "COMPOSE_IGNORE_ORPHANS": "1"} if tenant is not None else None
    try:
        result = subprocess.run(
            command, cwd=project.root, text=True, env=env,
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


class ContainerState(str, enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    ABSENT = "absent"
    DISABLED = "disabled"  # a tenant removed with --keep-data: nothing runs by design


@dataclass(frozen=True)
class Container:
    """The fields tenantkit reads of one container, from one list call (no inspect)."""

    id: str
    name: str
    service: str
    state: ContainerState
    image: str
    image_id: str
    restarting: bool
    labels: dict
    addresses: dict  # its IPv4 address on each network it is on, by network name
    created: int = 0

    @classmethod
    def from_list_entry(cls, entry: dict) -> "Container":
        labels = entry.get("Labels") or {}
        status = entry.get("State", "")
        networks = (entry.get("NetworkSettings") or {}).get("Networks") or {}
        return cls(
            id=entry["Id"], name=(entry.get("Names") or ["/"])[0].lstrip("/"),
            service=labels.get("com.docker.compose.service", ""),
            state=ContainerState.RUNNING if status in ("running", "restarting") else ContainerState.STOPPED,
            image=entry.get("Image", ""), image_id=entry.get("ImageID", ""), restarting=status == "restarting",
            labels=labels, addresses={name: net.get("IPAddress") for name, net in networks.items()
                                      if net.get("IPAddress")},
            created=entry.get("Created", 0),
        )


def service_containers(client: docker.DockerClient, project: Project,
                       service: str | None = None) -> list[Container]:
    """The project's service containers (one-off runs excluded), of one service or all;
    filtered by the engine. A tenant's service has two while a deploy switches slots."""
    filters = [f"com.docker.compose.project={project.name}"]
    if service:
        filters.append(f"com.docker.compose.service={service}")
    listed = [Container.from_list_entry(entry) for entry in client.api.containers(all=True, filters={"label": filters})]
    return [c for c in listed if c.labels.get("com.docker.compose.oneoff") != "True"]


def _rank(container: Container) -> tuple[bool, int]:
    return container.state is ContainerState.RUNNING, container.created


def containers(client: docker.DockerClient, project: Project, service: str | None = None) -> dict[str, Container]:
    """The project's service containers by service name; with `service`, only that one.
    Of two containers of a service (a deploy between slots), the newest running one."""
    found: dict[str, Container] = {}
    for container in service_containers(client, project, service):
        known = found.get(container.service)
        if known is None or _rank(container) > _rank(known):
            found[container.service] = container
    return found


def container(client: docker.DockerClient, project: Project, service: str) -> Container | None:
    return containers(client, project, service).get(service)


WORKDIR_LABEL = "com.docker.compose.project.working_dir"


def check_owner(client: docker.DockerClient, project: Project, db: Container | None) -> None:
    """Refuse (exit 2) to use an engine project that another checkout with the same project
    name owns: its database volume, or its database container, says where it lives."""
    owner = None
    try:
        labels = client.api.inspect_volume(f"{project.name}_db-data").get("Labels") or {}
        owner = labels.get(OWNER_LABEL)
    except docker.errors.NotFound:
        pass
    if owner is None and db is not None and db.labels.get(WORKDIR_LABEL):
        owner = str(Path(db.labels[WORKDIR_LABEL]).parent)
    if owner is not None and Path(owner) != project.root:
        raise ConfigError(f"the engine's project {project.name!r} (database and tenants) belongs to the checkout "
                          f"in {owner}; give this one a `name:` of its own in tenantkit.yaml")


def state_of(found: Container | None) -> ContainerState:
    return found.state if found is not None else ContainerState.ABSENT


def container_logs(client: docker.DockerClient, found: Container | None, lines: int = 20) -> str:
    if found is None:
        return ""
    try:
        return client.api.logs(found.id, tail=lines).decode(errors="replace")
    except docker.errors.NotFound:
        return ""


def network_members(client: docker.DockerClient, name: str) -> set[str] | None:
    """Ids of the containers on a network, or None when there is no such network.

    Asks about one network, so its cost does not grow with the fleet (a container on
    every tenant network, like the database, has an inspect as long as the fleet)."""
    try:
        return set(client.api.inspect_network(name).get("Containers") or {})
    except docker.errors.NotFound:
        return None


def attach_to_networks(client: docker.DockerClient, project: Project, service: str,
                       networks: list[str] | dict[str, str]) -> list[str]:
    """Connect a running service's container to engine networks it is not on yet (a dict
    gives its fixed address on each).

    Compose recreates a container whose network list changed; for the shared database
    that would cut every tenant off, so tenantkit attaches it to a new tenant's network
    instead. Returns the networks it attached.
    """
    found = container(client, project, service)
    if found is None:
        return []
    addresses = networks if isinstance(networks, dict) else {}
    attached = []
    for network in networks:
        members = network_members(client, network)
        if members is not None and found.id not in members:
            client.api.connect_container_to_network(found.id, network, aliases=[service],
                                                    ipv4_address=addresses.get(network))
            attached.append(network)
    return attached


def foreign_subnets(client: docker.DockerClient, project: Project) -> list[ipaddress.IPv4Network]:
    """IPv4 subnets of the engine's networks that are not this project's (one list call)."""
    subnets = []
    for network in client.api.networks():
        if (network.get("Labels") or {}).get("com.docker.compose.project") == project.name:
            continue
        for config in (network.get("IPAM") or {}).get("Config") or []:
            try:
                subnets.append(ipaddress.IPv4Network(config.get("Subnet", ""), strict=False))
            except ValueError:
                pass  # IPv6 or no subnet
    return subnets


def image_id(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return client.api.inspect_image(tag)["Id"]
    except docker.errors.ImageNotFound:
        return None


def remove_network(client: docker.DockerClient, name: str) -> None:
    """Disconnect everything from a network and remove it; a missing one is fine."""
    try:
        attrs = client.api.inspect_network(name)
    except docker.errors.NotFound:
        return
    for container_id in attrs.get("Containers") or {}:
        client.api.disconnect_container_from_network(container_id, name, force=True)
    client.api.remove_network(name)


NEIGHBOUR_LIMIT = Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
NEIGHBOURS_PER_TENANT = 6  # its container's, and the database's and the proxy's on its network, both ways


def neighbour_table_warning(tenants: int) -> str | None:
    """A warning when this many tenants would overflow the kernel's neighbour (ARP) table,
    which all network namespaces share: connections then stall for seconds."""
    try:
        limit = int(NEIGHBOUR_LIMIT.read_text())
    except (OSError, ValueError):
        return None
    if tenants * NEIGHBOURS_PER_TENANT <= limit:
        return None
    return (f"warning: {tenants} tenants need about {tenants * NEIGHBOURS_PER_TENANT} kernel neighbour entries, "
            f"more than net.ipv4.neigh.default.gc_thresh3 ({limit}); raise it (as root: sysctl -w "
            "net.ipv4.neigh.default.gc_thresh3=65536, with gc_thresh2=32768 and gc_thresh1=8192), "
            "or connections will stall")

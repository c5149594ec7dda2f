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
import requests

from ..model import OWNER_LABEL, ConfigError, Project, Tenant

ENGINE_HINT = ("start one with `make engine` (installs and starts Docker on Debian/Ubuntu as root), "
               "or `sudo systemctl start docker`")


class OperationFailed(Exception):
    """A step against a real system failed; the CLI prints it and exits 1."""


class PartlyFailed(OperationFailed):
    """Some tenants failed and the others were done (`done`: what a command returns for them)."""

    def __init__(self, message: str, done: list):
        super().__init__(message)
        self.done = done


def connect(timeout: float = 120) -> docker.DockerClient:
    """A client for a reachable Docker engine, or a ConfigError saying how to start one.
    `timeout`: for each call (builds take long; `tenant doctor` waits 10 s at the most)."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        reason = str(exc).split("(")[0].strip().rstrip(":") or type(exc).__name__
        raise ConfigError(f"no Docker engine is reachable ({reason}); {ENGINE_HINT}") from None
    except OSError as exc:  # a timeout below the SDK's own errors
        raise ConfigError(f"no Docker engine answered ({type(exc).__name__}); {ENGINE_HINT}") from None
    return client


def compose_command(project: Project, tenant: Tenant | None = None) -> list[str]:
    """`docker compose` on the whole stack, or on one tenant's own file: a command about one
    tenant then costs the same however many tenants the stack has."""
    path = project.compose_file if tenant is None else project.tenant_compose_file(tenant)
    return ["docker", "compose", "-f", str(path), "-p", project.name]


def compose(project: Project, *args: str, tenant: Tenant | None = None, capture: bool = True,
            check: bool = True, interactive: bool = False, stdin: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `docker compose ARGS` on the project's compose file (or on `tenant`'s own).

    `stdin`: Compose reads this process's standard input (interactive implies it). `env`:
    variables added to Compose's environment (where `-e NAME` takes their values from, so
    values never show in a process list)."""
    command = [*compose_command(project, tenant), *args]
    # One tenant's file does not name the other services: they are not orphans.
    extra = {"COMPOSE_IGNORE_ORPHANS": "1"} if tenant is not None else {}
    extra.update(env or {})
    try:
        result = subprocess.run(
            command, cwd=project.root, text=True, env={**os.environ, **extra} if extra else None,
            stdin=None if interactive or stdin else subprocess.DEVNULL,
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


def service_containers(client: docker.DockerClient, project: Project, service: str | None = None,
                       tenant: str | None = None) -> list[Container]:
    """The project's service containers (one-off runs excluded), of one service, of one
    tenant (its web service and its processes) or all; filtered by the engine. A tenant's
    service has two while a deploy switches slots."""
    filters = [f"com.docker.compose.project={project.name}"]
    if service:
        filters.append(f"com.docker.compose.service={service}")
    if tenant:
        filters.append(f"tenantkit.tenant={tenant}")
    listed = [Container.from_list_entry(entry) for entry in client.api.containers(all=True, filters={"label": filters})]
    return [c for c in listed if c.labels.get("com.docker.compose.oneoff") != "True"]


def _rank(container: Container) -> tuple[bool, int]:
    return container.state is ContainerState.RUNNING, container.created


def containers(client: docker.DockerClient, project: Project, service: str | None = None,
               tenant: str | None = None) -> dict[str, Container]:
    """The project's service containers by service name; with `service`, only that one;
    with `tenant`, only that tenant's. Of two containers of a service (a deploy between
    slots), the newest running one."""
    found: dict[str, Container] = {}
    for container in service_containers(client, project, service, tenant):
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


# ---------------------------------------------------------------------------
# Read-only looks for `tenant doctor`: each one list call, whatever the fleet's size.

def compose_version() -> str:
    """The version of Docker Compose v2 (`docker compose version --short`), such as 2.40.3;
    a ConfigError naming the fix when there is no docker client or no Compose v2."""
    try:
        result = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True,
                                timeout=20, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ConfigError(f"the docker client is not installed; {ENGINE_HINT}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError("`docker compose version` did not answer in 20 s; reinstall Compose v2 with "
                          "`make engine`") from None
    if result.returncode != 0:
        raise ConfigError("Docker Compose v2 is missing (`docker compose` is not a docker command); "
                          "run `make engine` to install it")
    return result.stdout.strip().lstrip("v")


def project_containers(client: docker.DockerClient, project: Project) -> list[Container]:
    """Every container labelled for the project, stopped ones and one-off runs included."""
    listed = client.api.containers(all=True, filters={"label": f"com.docker.compose.project={project.name}"})
    return [Container.from_list_entry(entry) for entry in listed]


def project_networks(client: docker.DockerClient, project: Project) -> list[str]:
    """Names of the engine networks labelled for the project."""
    listed = client.api.networks(filters={"label": f"com.docker.compose.project={project.name}"})
    return sorted(network["Name"] for network in listed)


LOOPBACK_OR_ANY = ("127.0.0.1", "0.0.0.0", "::", "")


def loopback_publishers(client: docker.DockerClient) -> dict[int, Container]:
    """The running container (of any project) that publishes each TCP port on the host's
    loopback or on every address: a port held by a container is not necessarily a clash,
    when that container is the tenant's own."""
    held: dict[int, Container] = {}
    for entry in client.api.containers():
        for port in entry.get("Ports") or []:
            if port.get("PublicPort") and port.get("Type") == "tcp" and port.get("IP") in LOOPBACK_OR_ANY:
                held.setdefault(port["PublicPort"], Container.from_list_entry(entry))
    return held


def network_containers(client: docker.DockerClient, name: str) -> list[str]:
    """Names of the containers attached to a network (empty when there is no such network)."""
    try:
        attached = client.api.inspect_network(name).get("Containers") or {}
    except docker.errors.NotFound:
        return []
    return sorted(member.get("Name", container_id[:12]) for container_id, member in attached.items())


def run_throwaway(client: docker.DockerClient, service: dict, folder: Path, command: list[str],
                  labels: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run a command in a new container made like a rendered compose service (its image,
    environment, bind mounts and limits), then remove it; its exit code and output.

    Made to change nothing: every mount is read-only, the root file system too, and it
    is on no network (no database, no other container), so whatever the command does
    stays in the container. Relative mount sources are resolved from `folder`, the
    compose file's own. A ConfigError when the service's image is not on the engine.
    """
    if image_id(client, service["image"]) is None:
        raise ConfigError(f"its image {service['image']} is not on this engine")
    mounts = [docker.types.Mount(target=volume["target"], source=str((folder / volume["source"]).resolve()),
                                 type="bind", read_only=True)
              for volume in service.get("volumes") or [] if isinstance(volume, dict) and volume.get("type") == "bind"]
    tmpfs = dict(entry.split(":", 1) if ":" in entry else (entry, "") for entry in service.get("tmpfs") or [])
    host_config = client.api.create_host_config(
        mounts=mounts, tmpfs=tmpfs, network_mode="none", read_only=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"], mem_limit=service.get("mem_limit"),
        pids_limit=service.get("pids_limit"), nano_cpus=int(float(service.get("cpus") or 1) * 1e9))
    created = client.api.create_container(service["image"], command, environment=service.get("environment"),
                                          host_config=host_config, labels=labels)
    try:
        client.api.start(created["Id"])
        try:
            code = client.api.wait(created["Id"], timeout=timeout)["StatusCode"]
        except requests.exceptions.RequestException:  # no exit in time: the command hangs
            code = -1
        output = client.api.logs(created["Id"]).decode(errors="replace")
        if code == -1:
            output += f"\n(did not finish in {timeout:.0f} s)"
        return code, output
    finally:
        client.api.remove_container(created["Id"], force=True)

"""Talk to a Docker Swarm: stack deploys, services and their tasks, the database task,
one-off containers on a tenant's overlay network, and the registry.

tenantkit runs on a manager node of the swarm, in the project's checkout (the node the
database service is placed on: its admin connection goes to the db task's address on
the node's docker_gwbridge, never to a published port).
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import docker
import docker.errors
import filelock
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from ..model import ConfigError, Project, Tenant
from ..render.swarm import TENANT_LABEL, service_name
from .engine import ENGINE_HINT, OperationFailed, tail
from .files import atomic_write

STACK_LABEL = "com.docker.stack.namespace"
CONFIG_LABEL = "tenantkit.config"  # on each service: the digest of its definition
SERVICE_LABEL = "com.docker.swarm.service.name"
ONEOFF_LABEL = "tenantkit.oneoff"
FAILED_UPDATE = ("paused", "rollback_started", "rollback_paused", "rollback_completed")
RUNNING = "running"


def check_manager(client: docker.DockerClient) -> None:
    """A ConfigError naming the fix unless this engine is a manager of an active swarm."""
    info = client.info().get("Swarm") or {}
    if info.get("LocalNodeState") != "active":
        raise ConfigError("tenantkit.yaml says engine: swarm, and this Docker engine is in no swarm; start one with "
                          "`docker swarm init` (see docs/scale-out.md), or set engine: compose")
    if not info.get("ControlAvailable"):
        raise ConfigError("this Docker engine is a swarm worker; run tenant on a manager node (where the "
                          "checkout and the database are)")


def docker_cli(*args: str, capture: bool = True, check: bool = True, cwd: Path | None = None,
               stdin=subprocess.DEVNULL, timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(["docker", *args], cwd=cwd, text=True, stdin=stdin, timeout=timeout,
                                stdout=subprocess.PIPE if capture else None,
                                stderr=subprocess.STDOUT if capture else None)
    except FileNotFoundError:
        raise ConfigError(f"the docker client is not installed; {ENGINE_HINT}") from None
    if check and result.returncode != 0:
        raise OperationFailed(f"`docker {' '.join(args[:2])}` failed:\n{tail(result.stdout or '')}")
    return result


def stack_deploy(project: Project, text: str, partial: bool) -> None:
    """`docker stack deploy` of a stack document. The whole stack is compose/stack.yaml; a
    partial one (the services of one command) is written beside it, so that its relative
    paths mean the same, and removed after. Services a partial document does not name
    are left as they are (no --prune)."""
    path = project.stack_file if not partial else project.stack_file.with_name(f".stack-{os.getpid()}.yaml")
    project.state_dir.mkdir(parents=True, exist_ok=True)
    # One deploy at a time (a deploy's parallel tenants share the proxy), and again when a
    # service changed between the CLI's read and its update (swarm's own update progress
    # does that): "update out of sequence".
    with filelock.FileLock(str(project.state_dir / "stack-deploy.lock")):
        atomic_write(path, text)
        try:
            for attempt in Retrying(retry=retry_if_exception(_out_of_sequence), stop=stop_after_attempt(6),
                                    wait=wait_fixed(0.5), reraise=True):
                with attempt:
                    docker_cli("stack", "deploy", "--resolve-image", "never", "-c", path.name, project.name,
                               cwd=path.parent, timeout=600)
        finally:
            if partial:
                path.unlink(missing_ok=True)


def _out_of_sequence(error: BaseException) -> bool:
    return isinstance(error, OperationFailed) and "out of sequence" in str(error)


def services(client: docker.DockerClient, project: Project, tenant: str | None = None) -> dict[str, dict]:
    """The stack's services by their name in the stack (db, proxy, tenant-acme...)."""
    labels = [f"{STACK_LABEL}={project.name}"] + ([f"{TENANT_LABEL}={tenant}"] if tenant else [])
    found = client.api.services(filters={"label": labels})
    prefix = f"{project.name}_"
    return {entry["Spec"]["Name"][len(prefix):]: entry for entry in found if entry["Spec"]["Name"].startswith(prefix)}


def service(client: docker.DockerClient, project: Project, name: str) -> dict | None:
    try:
        return client.api.inspect_service(service_name(project, name))
    except docker.errors.NotFound:
        return None


def tasks(client: docker.DockerClient, spec: dict) -> list[dict]:
    return client.api.tasks(filters={"service": spec["ID"]})


def desired_replicas(spec: dict) -> int | None:
    mode = spec["Spec"].get("Mode") or {}
    return (mode.get("Replicated") or {}).get("Replicas") if "Replicated" in mode else None


def _same_spec(task_spec: dict, template: dict) -> bool:
    """Whether a task was made from this task template (the engine leaves Runtime out of tasks)."""
    return ({k: v for k, v in task_spec.items() if k != "Runtime"}
            == {k: v for k, v in template.items() if k != "Runtime"})


def running_tasks(spec: dict, listed: list[dict]) -> list[dict]:
    """Of the service's tasks (`listed`), those that run (healthy: a task with a healthcheck
    is "starting" until it passes), made from the service's current definition."""
    template = spec["Spec"]["TaskTemplate"]
    return [task for task in listed
            if task["DesiredState"] == RUNNING and task["Status"]["State"] == RUNNING
            and _same_spec(task["Spec"], template)]


def _last_error(client: docker.DockerClient, spec: dict) -> str:
    failed = [t for t in tasks(client, spec) if t["Status"].get("Err") or t["Status"]["State"] in ("failed", "rejected")]
    if not failed:
        return ""
    latest = max(failed, key=lambda t: t["Status"].get("Timestamp", ""))
    return f"{latest['Status']['State']}: {latest['Status'].get('Err') or latest['Status'].get('Message', '')}"


def converged(client: docker.DockerClient, spec: dict, wanted: str | None = None) -> bool:
    """Whether every task the service wants runs (healthy), made from its current definition.

    A failed update (swarm rolled it back, or paused it) raises OperationFailed, unless the
    service is now what was `wanted` (the digest label): an earlier update of it was rolled
    back, and the definition it went back to is the one asked for now."""
    status = (spec.get("UpdateStatus") or {}).get("State")
    label = (spec["Spec"].get("Labels") or {}).get(CONFIG_LABEL)
    if wanted is not None and label == wanted and status in ("rollback_started", "rollback_completed"):
        if status == "rollback_started":  # going back to what is wanted: wait for it
            return False
        status = None
    if status in FAILED_UPDATE:
        raise OperationFailed(f"the update of service {spec['Spec']['Name']} did not succeed ({status}: "
                              f"{(spec.get('UpdateStatus') or {}).get('Message', '')}); swarm rolled it back. "
                              f"{_last_error(client, spec)}".strip())
    if status == "updating":
        return False
    wanted = desired_replicas(spec)
    listed = tasks(client, spec)
    live = running_tasks(spec, listed)
    if wanted is None:  # global: one per eligible node; at least one
        return bool(live)
    others = [t for t in listed if t["DesiredState"] == RUNNING and t not in live]
    return len(live) == wanted and not others


FAIL_FAST = 3  # failed tasks of one service during a wait: it will not start by itself


def _failures_since(client: docker.DockerClient, spec: dict, since: str) -> int:
    return sum(1 for t in tasks(client, spec) if t["Status"]["State"] in ("failed", "rejected")
               and t["Status"].get("Timestamp", "")[:19] >= since)


def wait_converged(client: docker.DockerClient, project: Project, names: list[str], timeout: float = 180,
                   report=lambda message: None, wanted: dict[str, str] | None = None) -> None:
    """Wait until each named service of the stack has converged; OperationFailed naming the
    ones that did not, with their last task error. `wanted`: each service's definition
    digest as just deployed."""
    wanted = wanted or {}
    deadline = time.monotonic() + timeout
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    waiting = list(names)
    while waiting:
        still = []
        for name in waiting:
            spec = service(client, project, name)
            if spec is None or not converged(client, spec, wanted.get(name)):
                still.append(name)
                if spec is not None and _failures_since(client, spec, since) >= FAIL_FAST:
                    raise OperationFailed(f"service {name} keeps failing: {_last_error(client, spec)}; see "
                                          f"`docker service logs {spec['Spec']['Name']}`")
        waiting = still
        if not waiting:
            return
        if time.monotonic() > deadline:
            problems = []
            for name in waiting:
                spec = service(client, project, name)
                problems.append(f"{name}: " + (_last_error(client, spec) or "its tasks are not running and healthy"
                                               if spec else "no such service"))
            raise OperationFailed(f"not running after {timeout:.0f} s: " + "; ".join(problems))
        time.sleep(0.5)


def local_containers(client: docker.DockerClient, project: Project, name: str) -> list[dict]:
    """The running containers of a stack service on this node (list entries)."""
    return client.api.containers(filters={"label": [f"{SERVICE_LABEL}={service_name(project, name)}"],
                                          "status": RUNNING})


GWBRIDGE = "docker_gwbridge"


def database_endpoint(client: docker.DockerClient, project: Project, timeout: float = 120) -> tuple[str, int, str]:
    """The db task's address on this node's docker_gwbridge, its port, and its container id:
    how tenantkit reaches the database service without publishing its port."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in local_containers(client, project, "db"):
            try:
                members = client.api.inspect_network(GWBRIDGE).get("Containers") or {}
            except docker.errors.NotFound:
                members = {}
            address = (members.get(entry["Id"]) or {}).get("IPv4Address", "").split("/")[0]
            if address:
                return address, 5432, entry["Id"]
        if time.monotonic() > deadline:
            raise OperationFailed("the database service has no running task on this node; tenant runs where the "
                                  "database is placed (database.placement in tenantkit.yaml)")
        time.sleep(0.5)


def network_name(project: Project, tenant: Tenant) -> str:
    return f"{project.name}_{tenant.names.network}"


def oneoff_argv(project: Project, tenant: Tenant, service: dict, command: list[str], tty: bool = False,
                env_names: list[str] = ()) -> list[str]:
    """`docker run` of a one-off container made like the tenant's service (rendered for the
    compose engine: image, environment, the tenant folder read-only, media, limits and
    lockdown), on its overlay network: migrations and management commands reach its database
    as its tasks do, from a manager node."""
    argv = ["run", "--rm", "-i", *(["-t"] if tty else []), "--network", network_name(project, tenant),
            "--label", f"{TENANT_LABEL}={tenant.name}", "--label", f"{ONEOFF_LABEL}=1",
            "--read-only", "--tmpfs", "/tmp:size=64m,mode=1777", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges:true", "--memory", service["mem_limit"],
            "--cpus", str(service["cpus"]), "--pids-limit", str(service["pids_limit"])]
    folder = project.tenant_compose_dir
    for volume in service["volumes"]:
        source = (folder / volume["source"]).resolve()
        argv += ["--mount", f"type=bind,source={source},target={volume['target']}"
                 + (",readonly" if volume.get("read_only") else "")]
    for key, value in service["environment"].items():
        argv += ["-e", f"{key}={value}"]
    for name in env_names:
        argv += ["-e", name]
    return ["docker", *argv, service["image"], *command]


def run_oneoff(project: Project, tenant: Tenant, service: dict, command: list[str],
               env: dict[str, str] | None = None, interactive: bool = False) -> tuple[int, str]:
    env = env or {}
    argv = oneoff_argv(project, tenant, service, command, tty=interactive, env_names=list(env))
    result = subprocess.run(argv, env={**os.environ, **env}, text=True,
                            stdin=None if interactive else subprocess.DEVNULL,
                            stdout=None if interactive else subprocess.PIPE,
                            stderr=None if interactive else subprocess.STDOUT)
    return result.returncode, result.stdout or ""


def push(client: docker.DockerClient, project: Project, tag: str, report=lambda message: None) -> str:
    """Push a local image to the project's registry; its reference by digest there
    (REGISTRY/REPOSITORY@sha256:...), which every node pulls the same bytes by."""
    registry = project.swarm.registry
    repository, _, version = tag.rpartition(":")
    remote = f"{registry}/{repository}"
    client.api.tag(tag, remote, version)
    report(f"pushing {tag} to {registry}")
    digest = None
    try:
        for line in client.api.push(remote, tag=version, stream=True, decode=True):
            if line.get("error"):
                raise OperationFailed(f"pushing {tag} to {registry} failed: {line['error']}; is the registry "
                                      f"running and reachable from this host?")
            digest = (line.get("aux") or {}).get("Digest") or digest
    except docker.errors.APIError as exc:
        raise OperationFailed(f"pushing {tag} to {registry} failed: {exc.explanation or exc}") from None
    if not digest:
        raise OperationFailed(f"pushing {tag} to {registry} gave no digest")
    return f"{remote}@{digest}"


def remove_services(client: docker.DockerClient, project: Project, names: list[str]) -> None:
    for name in names:
        try:
            client.api.remove_service(service_name(project, name))
        except docker.errors.NotFound:
            pass


def wait_gone(client: docker.DockerClient, project: Project, names: list[str], timeout: float = 60) -> None:
    """Wait until the services' containers have stopped on this node (a removed service's
    tasks stop after it is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(local_containers(client, project, name) for name in names):
            return
        time.sleep(0.3)


def remove_network(client: docker.DockerClient, name: str, timeout: float = 30) -> None:
    """Remove a network once its last task has let go of it (that takes a moment after its
    service is removed); a missing one is fine."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.api.remove_network(name)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def remove_unused(client: docker.DockerClient, project: Project, tenant: str | None = None) -> None:
    """Remove the stack's secrets and configs (of one tenant, or all) that no service uses:
    each change of one makes a new one, and the old stay until removed."""
    labels = [f"{STACK_LABEL}={project.name}"] + ([f"{TENANT_LABEL}={tenant}"] if tenant else [])
    for kind in ("secrets", "configs"):
        listing = getattr(client.api, kind)(filters={"label": labels})
        remove = client.api.remove_secret if kind == "secrets" else client.api.remove_config
        for entry in listing:
            try:
                remove(entry["ID"])
            except docker.errors.APIError:
                pass  # in use: the engine refuses


def stack_rm(client: docker.DockerClient, project: Project, timeout: float = 90) -> None:
    """`docker stack rm`, waited for: services, their containers and networks gone (volumes stay)."""
    docker_cli("stack", "rm", project.name, check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = client.api.containers(all=True, filters={"label": f"{STACK_LABEL}={project.name}"})
        nets = client.api.networks(filters={"label": f"{STACK_LABEL}={project.name}"})
        if not left and not nets:
            return
        time.sleep(0.5)
    raise OperationFailed(f"the stack {project.name} was still being removed after {timeout:.0f} s")


def service_logs(project: Project, name: str, follow: bool, lines: int) -> int:
    args = ["service", "logs", "--no-task-ids", "--tail", str(lines), *(["-f"] if follow else []),
            service_name(project, name)]
    return docker_cli(*args, capture=False, check=False).returncode


def task_rows(client: docker.DockerClient, spec: dict) -> list[dict]:
    """The service's tasks that should run, newest first: node, state, container."""
    rows = []
    for task in tasks(client, spec):
        if task["DesiredState"] != RUNNING:
            continue
        status = task["Status"]
        rows.append({"slot": task.get("Slot"), "node": task.get("NodeID", "")[:12], "state": status["State"],
                     "container": ((status.get("ContainerStatus") or {}).get("ContainerID") or "")[:12],
                     "error": status.get("Err", "")})
    return sorted(rows, key=lambda row: row["slot"] or 0)

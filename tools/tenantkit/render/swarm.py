"""Render compose/stack.yaml: the whole installation as one Docker Swarm stack.

The same tenants as the compose engine, made of the same parts (render/compose.py builds
each tenant's container; this turns it into a swarm service), with swarm's own
mechanisms where a swarm has no bind mounts or fixed containers:

- each tenant is a service on its own overlay network (attachable, so tenantkit's one-off
  commands join it), reached by the proxy through its network aliases;
- its settings.py (and any other Python file of its folder) is a Docker config, and its
  secrets.env a Docker secret, both mounted where the compose engine binds the tenant
  folder; their names carry a digest of their content, because swarm's configs and secrets
  are immutable: a change is a new one, and the service's update moves to it;
- rolling updates start the new task first, wait for its healthcheck and roll back when it
  fails; limits go in deploy.resources; `replicas` comes from tenant.yaml;
- media, and the proxy's sites, assets and logs, are named volumes of the storage driver
  that tenantkit.yaml names (swarm.storage): by default bind volumes of the checkout's
  folders, for one node; NFS for many (docs/scale-out.md);
- the database is a service with a placement constraint; the proxy publishes its ports in
  `mode: host` (no ingress mesh), with `proxy.replicas` tasks or one per node (global).

Secrets never appear in it: the document names the files secrets are read from.
"""
from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path

from ..model import OWNER_LABEL, Project, Tenant
from .compose import MEDIA_MOUNT, tenant_service

STACK_VERSION = "3.8"
TENANT_LABEL = "tenantkit.tenant"
PROCESS_LABEL = "tenantkit.process"
APP_UID = "10001"  # the uid tenant containers run as (see the Dockerfile)
# A task is "starting", and gets no traffic from a rolling update, until this passes: GET the
# health path with the tenant's Host header. bash's /dev/tcp, not Python: one exec per task
# per interval, and a fleet has hundreds of tasks.
HEALTHCHECK = ["CMD", "bash", "-c", 'exec 3<>/dev/tcp/127.0.0.1/8000 && printf "GET %s HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n" '
               '"$$TENANTKIT_HEALTH_PATH" "$$TENANTKIT_HEALTH_HOST" >&3 && read -r _ code _ <&3 && [ "$$code" = 200 ]']
DB_SECRET = "db-admin"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _from_stack(project: Project, path: Path) -> str:
    """A path as compose/stack.yaml refers to it (relative to compose/)."""
    return posixpath.relpath(path.as_posix(), project.stack_file.parent.as_posix())


def tenant_files(tenant: Tenant) -> list[Path]:
    """The files of a tenant's folder its containers read as configs: settings.py and any
    other Python file (local_settings.py, an app of its own), in a stable order."""
    return sorted(path for path in tenant.path.rglob("*.py") if not any(
        part.startswith(".") or part == "__pycache__" for part in path.relative_to(tenant.path).parts))


def config_key(tenant: Tenant, path: Path) -> str:
    """The stack's key of a config: the tenant, the file, and its content's digest."""
    relative = path.relative_to(tenant.path).as_posix()
    return f"{tenant.name}-{_digest(relative.encode())[:6]}-{_digest(path.read_bytes())}"


def secret_key(tenant: Tenant) -> str:
    return f"{tenant.name}-secrets-{_digest(tenant.secrets_file.read_bytes())}"


def volume_options(project: Project, folder: Path) -> dict:
    """A named volume of the storage driver for one of the checkout's folders."""
    storage = project.swarm.storage
    values = {"path": folder.as_posix(), "relpath": folder.relative_to(project.root).as_posix()}
    volume = {"driver": storage.driver}
    if storage.options:
        volume["driver_opts"] = {key: value.format(**values) for key, value in storage.options}
    return volume


def on_manager(project: Project) -> bool:
    """Whether services must run where the checkout is: storage is the default local bind,
    whose folders exist on that node only."""
    storage = project.swarm.storage
    return storage.driver == "local" and dict(storage.options).get("o") == "bind"


def _placement(project: Project) -> dict:
    return {"placement": {"constraints": ["node.role == manager"]}} if on_manager(project) else {}


def _memory(value: str) -> str:
    return value.upper() if value[-1] in "kmg" else value


def tenant_swarm_service(project: Project, tenant: Tenant, image: str, replicas: int) -> dict:
    """One tenant's web service: the container the compose engine runs, as a swarm service."""
    names = tenant.names
    base = tenant_service(project, tenant, image, "", None)
    mount = f"/srv/tenants/{tenant.name}"
    command = list(base["command"])
    if "--forwarded-allow-ips" in command:
        # Only the proxy, this tenant's own tasks and tenantkit's one-off runs are on its
        # network, and the proxy's address there is not fixed: believe X-Forwarded-Proto from it.
        command[command.index("--forwarded-allow-ips") + 1] = "*"
    if "--access-logfile" not in command and not project.dev:
        # Each task logs the requests it serves: `tenant logs` (docker service logs) names the
        # task of each line, so replicas show which one answered.
        command[-1:-1] = ["--access-logfile", "-"]
    service = {
        "image": image,
        "command": command,
        "environment": base["environment"],
        "configs": [{"source": config_key(tenant, path), "target": f"{mount}/{path.relative_to(tenant.path).as_posix()}",
                     "mode": 0o444} for path in tenant_files(tenant)],
        "secrets": [{"source": secret_key(tenant), "target": f"{mount}/secrets.env",
                     "uid": APP_UID, "gid": APP_UID, "mode": 0o400}],
        "volumes": [{"type": "volume", "source": f"media-{tenant.name}", "target": MEDIA_MOUNT},
                    {"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 64 * 1024 * 1024}}],
        "read_only": True,
        "cap_drop": ["ALL"],
        "networks": {names.network: {"aliases": [names.backend_host, names.slot_host("a"), names.slot_host("b")]}},
        "healthcheck": {"test": HEALTHCHECK, "interval": f"{project.swarm.health_interval}s", "timeout": "5s",
                        "retries": 3, "start_period": "30s"},
        "stop_grace_period": "25s",
        "labels": {TENANT_LABEL: tenant.name},
        "deploy": {
            "replicas": replicas,
            "endpoint_mode": project.swarm.endpoint_mode,
            "resources": {"limits": {"memory": _memory(tenant.memory), "cpus": str(tenant.cpus)}},
            "restart_policy": {"condition": "any", "delay": "2s"},
            "update_config": {"parallelism": 1, "order": "start-first", "failure_action": "rollback",
                              "monitor": f"{project.swarm.update_monitor}s", "delay": "0s"},
            "rollback_config": {"parallelism": 1, "order": "start-first"},
            "labels": {TENANT_LABEL: tenant.name},
            **_placement(project),
        },
    }
    return service


def process_swarm_service(web: dict, tenant: Tenant, name: str, command: list[str], replicas: int) -> dict:
    """A background process: the web service's definition with its own command, on its
    tenant's network without an alias, not health-checked, replaced (not overlapped) on update."""
    service = {key: value for key, value in web.items() if key not in ("healthcheck", "networks", "deploy", "labels")}
    service["command"] = command
    service["environment"] = {**web["environment"], "TENANTKIT_PROCESS": name}
    service["networks"] = [tenant.names.network]
    service["healthcheck"] = {"disable": True}
    service["labels"] = {TENANT_LABEL: tenant.name, PROCESS_LABEL: name}
    deploy = dict(web["deploy"], replicas=replicas, labels={TENANT_LABEL: tenant.name, PROCESS_LABEL: name})
    deploy["update_config"] = {"parallelism": 1, "order": "stop-first", "failure_action": "rollback"}
    deploy["rollback_config"] = {"parallelism": 1, "order": "stop-first"}
    service["deploy"] = deploy
    return service


def db_swarm_service(project: Project, networks: list[str]) -> dict:
    db = project.database
    return {
        "image": project.images.db,
        # The entrypoint initialises a new cluster with POSTGRES_PASSWORD: it is read from the
        # Docker secret, never written into the service's definition.
        "entrypoint": ["sh", "-c", 'POSTGRES_PASSWORD="$$(cat /run/secrets/db-admin)" exec docker-entrypoint.sh "$$@"',
                       "--"],
        "command": ["postgres", "-c", f"max_connections={db.max_connections}", "-c", "autovacuum_naptime=300"],
        "environment": {"POSTGRES_USER": db.admin_user},
        "secrets": [{"source": DB_SECRET, "target": DB_SECRET, "mode": 0o444}],
        "volumes": ["db-data:/var/lib/postgresql/data"],
        "networks": networks,
        "stop_grace_period": "60s",
        "healthcheck": {"test": ["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", db.admin_user],
                        "interval": "3s", "timeout": "5s", "retries": 3},
        "deploy": {
            "replicas": 1,
            "endpoint_mode": project.swarm.endpoint_mode,
            "placement": {"constraints": list(db.placement)},
            "restart_policy": {"condition": "any", "delay": "2s"},
            # One data volume: the old task stops before the new one starts.
            "update_config": {"parallelism": 1, "order": "stop-first", "failure_action": "rollback"},
        },
    }


PROXY_FOLDERS = {  # volume: (folder of the checkout, where the proxy sees it, read-only)
    "proxy-sites": (("compose", "apache", "sites"), "/etc/tenantkit/sites", True),
    "proxy-media": (("media",), MEDIA_MOUNT, True),
    "proxy-assets": (("compose", "assets"), "/srv/assets", True),
    "proxy-logs": ((".tenantkit", "logs"), "/var/log/tenantkit", False),
}
PROXY_TLS_FOLDERS = {
    "proxy-tls": ((".tenantkit", "tls"), "/etc/tenantkit/tls", True),
    "proxy-md": ((".tenantkit", "md"), "/etc/tenantkit/md", False),
}


def proxy_folders(tls: bool) -> dict:
    return {**PROXY_FOLDERS, **(PROXY_TLS_FOLDERS if tls else {})}


def proxy_swarm_service(project: Project, proxy_image: str, networks: list[str], tls: bool) -> dict:
    ports = [{"target": 80, "published": project.proxy.port, "protocol": "tcp", "mode": "host"}]
    if tls:
        ports.append({"target": 443, "published": project.proxy.tls_port, "protocol": "tcp", "mode": "host"})
    deploy: dict = {"endpoint_mode": project.swarm.endpoint_mode,
                    "restart_policy": {"condition": "any", "delay": "2s"},
                    # Its ports are the node's own (mode: host): a new task can only start
                    # where the old one stopped.
                    "update_config": {"parallelism": 1, "order": "stop-first", "failure_action": "rollback"},
                    **_placement(project)}
    if project.proxy.replicas is None:
        deploy["mode"] = "global"
    else:
        deploy["replicas"] = project.proxy.replicas
    return {
        "image": proxy_image,
        "ports": ports,
        "volumes": [{"type": "volume", "source": name, "target": target, "read_only": read_only}
                    for name, (_, target, read_only) in proxy_folders(tls).items()],
        "networks": networks or ["default"],
        "stop_grace_period": "30s",
        "healthcheck": {"test": ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/80"],
                        "interval": "3s", "timeout": "3s", "retries": 3},
        "deploy": deploy,
    }


def network_definitions(tenants: list[Tenant]) -> dict:
    """Each tenant's overlay network: attachable, so tenantkit's one-off containers join it."""
    return {t.names.network: {"driver": "overlay", "attachable": True, "labels": {TENANT_LABEL: t.name}}
            for t in tenants}


def db_parts(project: Project) -> tuple[dict, dict]:
    """The db service's volume and secret (as the stack document declares them)."""
    secret = db_secret_file(project)
    return ({"db-data": {"labels": {OWNER_LABEL: str(project.root)}}},
            {DB_SECRET: {"file": _from_stack(project, secret),
                         "name": f"{project.name}_{DB_SECRET}-{_digest(secret.read_bytes())}"}})


def render_swarm_stack(project: Project, tenants: list[Tenant], images: dict[str, str], proxy_image: str | None,
                       replicas: dict[str, int], processes: dict[str, dict[str, list[str]]],
                       tls: bool = False) -> dict:
    """The stack document: every enabled tenant, the database and the proxy.

    `images`: the image reference each tenant runs (by digest when pushed to a registry);
    `replicas`: each tenant's task count (0: down; default: tenant.yaml's); `processes`:
    each tenant's background processes (name: argv)."""
    networks = [t.names.network for t in tenants]
    doc_services: dict = {}
    volumes: dict = {}
    secrets: dict = {}
    configs: dict = {}
    if project.database.service:
        doc_services["db"] = db_swarm_service(project, networks)
        db_volumes, db_secrets = db_parts(project)
        volumes.update(db_volumes)
        secrets.update(db_secrets)
    if proxy_image:
        doc_services["proxy"] = proxy_swarm_service(project, proxy_image, networks, tls)
        for name, (parts, _, _) in proxy_folders(tls).items():
            volumes[name] = volume_options(project, project.root.joinpath(*parts))
    for tenant in tenants:
        count = replicas.get(tenant.name, tenant.replicas)
        web = tenant_swarm_service(project, tenant, images[tenant.name], count)
        doc_services[tenant.names.service] = web
        for name, argv in processes.get(tenant.name, {}).items():
            doc_services[tenant.names.process_service(name)] = process_swarm_service(web, tenant, name, argv,
                                                                                     1 if count else 0)
        volumes[f"media-{tenant.name}"] = volume_options(project, tenant.media_dir)
        secrets[secret_key(tenant)] = {"file": _from_stack(project, tenant.secrets_file),
                                       "name": f"{project.name}_{secret_key(tenant)}",
                                       "labels": {TENANT_LABEL: tenant.name}}
        for path in tenant_files(tenant):
            key = config_key(tenant, path)
            configs[key] = {"file": _from_stack(project, path), "name": f"{project.name}_{key}",
                            "labels": {TENANT_LABEL: tenant.name}}
    doc: dict = {"version": STACK_VERSION, "services": doc_services, "networks": network_definitions(tenants)}
    if not tenants and proxy_image:
        doc["networks"]["default"] = {"driver": "overlay"}
    for key, value in (("volumes", volumes), ("secrets", secrets), ("configs", configs)):
        if value:
            doc[key] = value
    return doc


def db_secret_file(project: Project) -> Path:
    """The database admin's password alone (the swarm db service's secret), mode 0600."""
    return project.state_dir / "db-admin.secret"


def service_name(project: Project, service: str) -> str:
    """A stack service's name on the engine: the stack's name, then the service's."""
    return f"{project.name}_{service}"


"""Render the compose document: the database, one service and network per tenant.

Built as data and dumped with yaml.safe_dump. Secrets never appear in it: containers
read them from env files (mode 0600) that the document only names.
"""
import os
import posixpath

import yaml

from ..model import Project, Tenant

APP_PORT = 8000
# Paths in the document are relative to compose/, so the project folder can move.
UP = ".."


def _rel(*parts: str) -> str:
    return posixpath.join(UP, *parts)


def db_service(project: Project, tenants: list[Tenant]) -> dict:
    """The PostgreSQL service every tenant's network shares (and nothing else)."""
    db = project.database
    return {
        "image": project.images.db,
        "env_file": [_rel(".tenantkit", "db.env")],
        "environment": {"POSTGRES_USER": db.admin_user},
        "volumes": ["db-data:/var/lib/postgresql/data"],
        "ports": [f"127.0.0.1:{db.publish_port}:5432"],
        "restart": "unless-stopped",
        "healthcheck": {
            "test": ["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", db.admin_user],
            "interval": "2s",
            "timeout": "5s",
            "retries": 30,
        },
        "networks": [t.names.network for t in tenants] or ["default"],
    }


def gunicorn_command(project: Project, tenant: Tenant) -> list[str]:
    """gunicorn for one tenant. With a proxy, Apache keeps the per-tenant access log, so
    gunicorn does not log each request again through Docker's log pipe.

    In dev mode: Django's own autoreloading server, which restarts on Python changes and
    watches template folders (resetting the cached template loaders) from the start.
    """
    if project.dev:
        return ["python", "manage.py", "runserver", f"0.0.0.0:{APP_PORT}"]
    command = ["gunicorn", "--bind", f"0.0.0.0:{APP_PORT}", "--workers", str(tenant.workers),
               "--threads", str(tenant.threads), "--graceful-timeout", "20", "--preload"]
    if project.proxy.mode == "none":
        command += ["--access-logfile", "-"]
    return [*command, "django.core.wsgi:get_wsgi_application()"]


def tenant_service(project: Project, tenant: Tenant, image: str) -> dict:
    """One tenant's container: the shared image, its own settings, secrets, media and network."""
    names = tenant.names
    mount = f"/srv/tenants/{tenant.name}"
    folder = _rel("tenants", tenant.name)
    service = {
        "image": image,
        "pull_policy": "never",  # built locally by `tenant build`, never in a registry
        "command": gunicorn_command(project, tenant),
        "env_file": [posixpath.join(folder, "secrets.env")],
        "environment": {
            "DJANGO_SETTINGS_MODULE": names.settings_module,
            # /srv holds the `tenants` package (tenants.NAME.settings); the tenant folder is
            # on the path too, so a tenant can carry its own apps.
            "PYTHONPATH": f"/srv:{mount}",
            "TENANT_DB_HOST": project.database.host,
            "TENANT_DB_PORT": str(project.database.port),
            "TENANTKIT_HEALTH_HOST": tenant.primary_host,
            "TENANTKIT_HEALTH_PATH": project.health_path,
        },
        "volumes": [
            {"type": "bind", "source": folder, "target": mount, "read_only": True},
            {"type": "bind", "source": posixpath.join(folder, "www", "content"),
             "target": f"{mount}/www/content"},
        ],
        "ports": [f"127.0.0.1:{tenant.port}:{APP_PORT}"],
        "mem_limit": tenant.memory,
        "restart": "unless-stopped",
        "healthcheck": {
            "test": ["CMD", "/opt/venv/bin/python", "/opt/tenantkit/healthcheck.py"],
            "interval": "10s",
            "timeout": "6s",
            "retries": 3,
            "start_period": "30s",
        },
        "networks": [names.network],
        "labels": {"tenantkit.tenant": tenant.name},
    }
    if project.dev:  # the working tree, live: edits show up without a rebuild
        source = os.path.relpath(project.source, project.compose_file.parent)
        service["volumes"].insert(0, {"type": "bind", "source": source, "target": "/app", "read_only": True})
    if project.database.service:
        service["depends_on"] = {"db": {"condition": "service_healthy"}}
    return service


def proxy_service(project: Project, tenants: list[Tenant], proxy_image: str) -> dict:
    """Apache in front: on every tenant's network, with the sites, media and assets read-only.

    Whole folders are mounted (not one per tenant), so adding a tenant never changes this
    service's definition beyond its networks, which tenantkit attaches without a restart.
    """
    def bind(source: str, target: str, read_only: bool = True) -> dict:
        mount = {"type": "bind", "source": source, "target": target}
        return {**mount, "read_only": True} if read_only else mount

    return {
        "image": proxy_image,
        "pull_policy": "never",
        "ports": [f"127.0.0.1:{project.proxy.port}:80"],
        "volumes": [
            bind(_rel("compose", "apache", "sites"), "/etc/tenantkit/sites"),
            bind(_rel("tenants"), "/srv/tenants"),
            bind(_rel("compose", "assets"), "/srv/assets"),
            bind(_rel(".tenantkit", "logs"), "/var/log/tenantkit", read_only=False),
        ],
        "restart": "unless-stopped",
        "stop_grace_period": "30s",
        "healthcheck": {
            "test": ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/80"],
            "interval": "10s",
            "timeout": "3s",
            "retries": 3,
        },
        "networks": [t.names.network for t in tenants] or ["default"],
    }


def render_compose(project: Project, tenants: list[Tenant], images: str | dict[str, str],
                   proxy_image: str | None = None) -> dict:
    """The whole stack as a Compose Specification document; `images`: one for all, or by tenant."""
    services: dict = {}
    if project.database.service:
        services["db"] = db_service(project, tenants)
    if project.proxy.mode == "compose" and proxy_image:
        services["proxy"] = proxy_service(project, tenants, proxy_image)
    for tenant in tenants:
        image = images[tenant.name] if isinstance(images, dict) else images
        services[tenant.names.service] = tenant_service(project, tenant, image)
    doc: dict = {"name": project.name, "services": services}
    doc["networks"] = {t.names.network: {} for t in tenants} or {"default": {}}
    if project.database.service:
        doc["volumes"] = {"db-data": {}}
    return doc


def dump_compose(doc: dict) -> str:
    header = "# Generated by `tenant render` from tenantkit.yaml and tenants/*/tenant.yaml.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)

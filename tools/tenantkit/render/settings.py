"""Render a tenant's settings.py in the seed's style."""
import os

from ..model import SLOTS, TLS_OFF, Project, ProxyMode, Tenant
from . import environment


def render_settings(project: Project, tenant: Tenant, site_url: str,
                    db_host: str | None = None, db_port: int | None = None) -> str:
    """The tenant's settings module: its identity, the 12-factor environment, the base
    settings, the project's settings for every tenant, then its hosts, database, media, title."""
    https = project.tls_of(tenant) != TLS_OFF
    if https:
        site_url = project.tenant_url(tenant)
    port = project.proxy.tls_port if project.proxy.tls_port != 443 else None
    origins = [f"https://{host}" + (f":{port}" if port else "") for host in tenant.hosts] if https else []
    snippet_path = ""
    if project.tenant_settings is not None:
        snippet_path = os.path.relpath(project.tenant_settings, project.root)
    return environment.get_template("settings.py.j2").render(
        tenant=tenant,
        base_settings=project.settings,
        hosts=list(tenant.hosts),
        db_host=db_host or project.database.host,
        db_port=str(db_port or project.database.port),
        site_url=site_url,
        debug=tenant.debug or project.dev,
        backend_hosts=[tenant.names.backend_host, *(tenant.names.slot_host(slot) for slot in SLOTS)]
        if project.proxy.mode is ProxyMode.COMPOSE else [],
        environment=project.environment,
        project_apps=[app for app in project.tenant_apps if app not in tenant.apps],
        snippet=project.tenant_settings_text,
        snippet_path=snippet_path,
        https=https,
        https_origins=origins,
        hsts=project.tls.hsts if https else 0,
    )

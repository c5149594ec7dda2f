"""Render Apache vhosts: a reverse proxy per tenant, and the catch-all default.

Every value that reaches Apache text is validated first (host names by the model;
paths here): a quote or newline must never become a directive.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

from ..model import APP_PORT, ConfigError, Project, ProxyMode, Tenant
from . import environment

DEFAULT_SITE = "000-default.conf"  # sorts before every tenant name (they start with a letter)
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@=,-]*")
# Apache evaluates an ErrorDocument string as an expression (%{file:...}, $1, \ escapes):
# these characters reach it only as HTML character references.
APACHE_EXPR_CHARS = str.maketrans({char: f"&#{ord(char)};" for char in "%${}\\"})
# Retry-After of a tenant's 503s, in seconds: maintenance lasts an operator's few minutes; a
# tenant that cannot be reached is most often being restarted, and back within a minute.
MAINTENANCE_RETRY_AFTER = 300
UNAVAILABLE_RETRY_AFTER = 60
# Where a tenant's vhost sends Apache's own proxy errors to become its "not available" notice:
# reserved in every tenant's URL space, like /_content/ and /_assets/.
UNAVAILABLE_PATH = "/_tenantkit/unavailable"


def apache_path(path: str) -> str:
    """A path fit for a quoted Apache argument, or a ConfigError."""
    if not SAFE_PATH.fullmatch(path) or "/../" in f"{path}/":
        raise ConfigError(f"path {path!r} cannot be written into an Apache config; "
                          "move the project to a path of letters, digits and - _ . / only")
    return path.rstrip("/") or "/"


def apache_uri(path: str) -> str:
    """A URL path for an Apache argument, kept exactly (a trailing slash matters to Django)."""
    apache_path(path)
    return path


@dataclass(frozen=True)
class ProxyLayout:
    """Where the proxy finds things: inside the proxy container, or on the host."""

    listen_port: int
    log_dir: str
    media_root: str  # every tenant's media folder, NAME below it; the proxy sees no tenant folder
    assets_dir: str
    in_compose: bool
    health_path: str = "/"
    health_interval: int = 0  # seconds between the proxy's checks of each backend; 0: none

    def backend(self, tenant: Tenant, slot: str = "a") -> str:
        """Where the tenant's container answers: the name of the slot the proxy routes to
        on its network, or its loopback port for the host's Apache."""
        if self.in_compose:
            return f"http://{tenant.names.slot_host(slot)}:{APP_PORT}"
        return f"http://127.0.0.1:{tenant.port}"


def proxy_layout(project: Project) -> ProxyLayout:
    """The layout of the project's proxy mode (compose service or host Apache)."""
    if project.proxy.mode is ProxyMode.COMPOSE:
        return ProxyLayout(80, "/var/log/tenantkit", "/srv/media", "/srv/assets", True,
                           apache_uri(project.health_path), project.proxy.health_interval)
    return host_layout(project, project.proxy.port)


def release_of(image: str) -> str:
    """The folder name of a release's assets: the tag of its image."""
    return image.rpartition(":")[2]


def render_proxy_vhost(tenant: Tenant, layout: ProxyLayout, image: str, slot: str = "a") -> str:
    """One tenant's vhost: its hosts, its media and assets, a proxy to its container only
    (the one in `slot`, in compose mode)."""
    return environment.get_template("vhost-proxy.conf.j2").render(
        tenant=tenant,
        listen_port=layout.listen_port,
        log_dir=layout.log_dir,
        log_format="combined",
        media_dir=f"{layout.media_root}/{tenant.name}",
        assets_dir=apache_path(f"{layout.assets_dir}/{release_of(image)}"),
        backend=layout.backend(tenant, slot),
        balancer=tenant.names.backend_host,
        health_path=layout.health_path,
        health_interval=layout.health_interval,
        title_html=maintenance_title(tenant.title),
        maintenance_retry_after=MAINTENANCE_RETRY_AFTER,
        unavailable_retry_after=UNAVAILABLE_RETRY_AFTER,
        unavailable_path=UNAVAILABLE_PATH,
    )


def maintenance_title(title: str) -> str:
    """The title as HTML that Apache keeps as it is: no quote ends the ErrorDocument string
    (of the maintenance page or of the "not available" notice), and no expression or
    backreference syntax survives to be evaluated."""
    return html.escape(title, quote=True).translate(APACHE_EXPR_CHARS)


def render_default_vhost(layout: ProxyLayout) -> str:
    return environment.get_template("vhost-default.conf.j2").render(
        listen_port=layout.listen_port, log_dir=layout.log_dir, log_format="combined")


def host_layout(project: Project, listen_port: int) -> ProxyLayout:
    """The host's own Apache proxying to the tenants' published loopback ports."""
    return ProxyLayout(listen_port, apache_path(str(project.logs_dir)), apache_path(str(project.media_root)),
                       apache_path(str(project.assets_dir)), False)


def render_sites(project: Project, tenants: list[Tenant], images: str | dict[str, str],
                 layout: ProxyLayout | None = None, slots: dict[str, str] | None = None) -> dict[str, str]:
    """Every vhost file of the project's proxy, by file name. `slots`: the slot each
    tenant's traffic goes to (compose mode; "a" when not given)."""
    layout = layout or proxy_layout(project)
    sites = {DEFAULT_SITE: render_default_vhost(layout)}
    for tenant in tenants:
        image = images[tenant.name] if isinstance(images, dict) else images
        sites[tenant.names.vhost] = render_proxy_vhost(tenant, layout, image, (slots or {}).get(tenant.name, "a"))
    return sites

"""Render Apache vhosts: a reverse proxy per tenant, and the catch-all default.

Every value that reaches Apache text is validated first (host names by the model;
paths here): a quote or newline must never become a directive.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

from ..model import APP_PORT, TLS_AUTO, TLS_OFF, ConfigError, Project, ProxyMode, Tenant
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
class TlsLayout:
    """HTTPS of the proxy: where Apache listens for it and finds certificates, and how it gets
    ACME certificates. Built only when some tenant has TLS."""

    listen_port: int  # where Apache listens for HTTPS
    public_port: int  # where users reach it (compose: the published port)
    listen: bool  # whether tenantkit writes the Listen directive
    modules: str  # Apache's modules folder (for LoadModule)
    runtime_dir: str  # for mod_ssl's session cache
    cert_dir: str  # given certificates: NAME.pem (key and chain); the catch-all's in _fallback/
    store: str  # mod_md's store
    acme: dict | None  # directory, email, ca_file: when some tenant has `tls: auto`
    message_cmd: str = ""  # mod_md's MDMessageCmd (compose: the proxy image's script)
    hsts: int = 0

    @property
    def port_suffix(self) -> str:
        return "" if self.public_port == 443 else f":{self.public_port}"

    @property
    def fallback_cert(self) -> str:
        return f"{self.cert_dir}/_fallback/cert.pem"

    @property
    def fallback_key(self) -> str:
        return f"{self.cert_dir}/_fallback/key.pem"


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
    tls: TlsLayout | None = None  # HTTPS, when some tenant has TLS
    # swarm: a new backend connection (and name lookup) per request, so that DNS round robin
    # (or a service VIP) spreads requests over a tenant's tasks instead of one kept connection.
    per_request: bool = False

    def backend(self, tenant: Tenant, slot: str = "a") -> str:
        """Where the tenant's container answers: the name of the slot the proxy routes to
        on its network, or its loopback port for the host's Apache."""
        if self.in_compose:
            return f"http://{tenant.names.slot_host(slot)}:{APP_PORT}"
        return f"http://127.0.0.1:{tenant.port}"


COMPOSE_TLS_DIR = "/etc/tenantkit/tls"  # the proxy container's view of .tenantkit/tls
COMPOSE_MD_STORE = "/etc/tenantkit/md/store"  # and of .tenantkit/md/store


def proxy_layout(project: Project, tenants: list[Tenant] | None = None, had: tuple[bool, bool] = (False, False)
                 ) -> ProxyLayout:
    """The layout of the project's proxy mode (compose service or host Apache); with HTTPS
    when one of `tenants` has TLS, or when the project had TLS (`had`: TLS at all, ACME)."""
    if project.proxy.mode is ProxyMode.COMPOSE:
        return ProxyLayout(80, "/var/log/tenantkit", "/srv/media", "/srv/assets", True,
                           apache_uri(project.health_path), project.proxy.health_interval,
                           tls_layout(project, tenants or [], had), per_request=project.engine == "swarm")
    return host_layout(project, project.proxy.port, tenants, had)


def tls_layout(project: Project, tenants: list[Tenant], had: tuple[bool, bool] = (False, False)
               ) -> TlsLayout | None:
    """HTTPS of the proxy, when some tenant has TLS (None: the proxy serves HTTP only).

    Once a project had TLS (`had`, from what tenantkit keeps on disk: TLS at all, and ACME)
    it keeps mod_ssl (and mod_md) loaded, its port open and the catch-all: the vhosts are
    rendered per tenant, and one still naming SSL or MDomain (written by a command about
    another tenant, or left by a kill) must never meet a proxy without them."""
    modes = {project.tls_of(t) for t in tenants} - {TLS_OFF}
    if not modes and not had[0]:
        return None
    tls = project.tls
    acme = None
    compose = project.proxy.mode is ProxyMode.COMPOSE
    if TLS_AUTO in modes or had[1]:
        ca_file = None
        if tls.acme_ca_file is not None:
            ca_file = f"{COMPOSE_TLS_DIR}/_acme/ca.pem" if compose else apache_path(str(tls.acme_ca_file))
        acme = {"directory": tls.acme_directory, "email": tls.acme_email, "ca_file": ca_file}
    if compose:
        return TlsLayout(443, project.proxy.tls_port, True, "${TK_MODULES}", "/tmp/httpd", COMPOSE_TLS_DIR,
                         COMPOSE_MD_STORE, acme, "/opt/tenantkit/md-message", tls.hsts)
    # The host's Apache: Debian's ports.conf already listens on 443 when mod_ssl is on.
    return TlsLayout(project.proxy.tls_port, project.proxy.tls_port, project.proxy.tls_port != 443,
                     "/usr/lib/apache2/modules", apache_path(str(project.state_dir / "apache")),
                     apache_path(str(project.tls_dir)), apache_path(str(project.md_dir / "store")), acme, "", tls.hsts)


def release_of(image: str) -> str:
    """The folder name of a release's assets: the tag of its image."""
    return image.rpartition(":")[2]


def render_proxy_vhost(tenant: Tenant, layout: ProxyLayout, image: str, slot: str = "a",
                       tls: str = TLS_OFF) -> str:
    """One tenant's vhost: its hosts, its media and assets, a proxy to its container only
    (the one in `slot`, in compose mode). With TLS (`tls`: auto or given; the layout must
    have HTTPS), all of that on HTTPS, and HTTP redirects there."""
    tls_vars = None
    if tls != TLS_OFF:
        assert layout.tls is not None, "a TLS tenant needs a layout with HTTPS"
        tls_vars = {"auto": tls == TLS_AUTO, "listen_port": layout.tls.listen_port,
                    "port_suffix": layout.tls.port_suffix, "hsts": layout.tls.hsts,
                    "cert": f"{layout.tls.cert_dir}/{tenant.name}.pem"}
    return environment.get_template("vhost-proxy.conf.j2").render(
        tls=tls_vars,
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
        per_request=layout.per_request,
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
        listen_port=layout.listen_port, log_dir=layout.log_dir, log_format="combined", tls=layout.tls)


def host_layout(project: Project, listen_port: int, tenants: list[Tenant] | None = None,
                had: tuple[bool, bool] = (False, False)) -> ProxyLayout:
    """The host's own Apache proxying to the tenants' published loopback ports."""
    return ProxyLayout(listen_port, apache_path(str(project.logs_dir)), apache_path(str(project.media_root)),
                       apache_path(str(project.assets_dir)), False, tls=tls_layout(project, tenants or [], had))


def render_sites(project: Project, tenants: list[Tenant], images: str | dict[str, str],
                 layout: ProxyLayout | None = None, slots: dict[str, str] | None = None) -> dict[str, str]:
    """Every vhost file of the project's proxy, by file name. `slots`: the slot each
    tenant's traffic goes to (compose mode; "a" when not given)."""
    layout = layout or proxy_layout(project, tenants)
    sites = {DEFAULT_SITE: render_default_vhost(layout)}
    for tenant in tenants:
        image = images[tenant.name] if isinstance(images, dict) else images
        sites[tenant.names.vhost] = render_proxy_vhost(tenant, layout, image, (slots or {}).get(tenant.name, "a"),
                                                       project.tls_of(tenant) if layout.tls else TLS_OFF)
    return sites

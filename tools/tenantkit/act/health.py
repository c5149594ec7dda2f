"""Wait until tenants answer: at their containers' own addresses, then through the proxy.

Behind the compose proxy a tenant's container publishes no port: tenantkit reaches it at
its address on the tenant's network (the host routes to every bridge network). The host's
Apache, and users without a proxy, reach it on its published loopback port.
"""
from __future__ import annotations

import http.client
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from ..model import APP_PORT, TLS_AUTO, TLS_OFF, Project, ProxyMode, Tenant
from . import engine
from ..progress import track
from .engine import Container, OperationFailed, tail

HEALTH_TIMEOUT = 90.0
PROBE_THREADS = 16
POLL = 0.02  # seconds between polls of a starting container: it answers about 0.4 s after its start
INSPECT_EVERY = 0.5  # seconds between looks at the containers themselves (stopped? new address?)

Address = tuple[str, int]


def address(project: Project, tenant: Tenant, container: Container | None) -> Address | None:
    """Where tenantkit reaches the tenant's container: its address on the tenant's network
    (compose proxy mode), else its published loopback port. None: not on its network (yet)."""
    if project.proxy.mode is ProxyMode.COMPOSE:
        ip = container.addresses.get(project.network_name(tenant.names)) if container is not None else None
        return (ip, APP_PORT) if ip else None
    return "127.0.0.1", tenant.port


class _HTTPSByName(http.client.HTTPSConnection):
    """HTTPS to an address, naming `server_name` in the handshake (SNI), as a browser that
    resolved it would. The certificate is not verified: this asks whether the proxy routes
    the tenant (an ACME certificate may not be there yet), not whether clients trust it."""

    def __init__(self, host: str, port: int, server_name: str, timeout: float):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        super().__init__(host, port, timeout=timeout, context=context)
        self.server_name = server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.server_name)


def status_of(where: Address | None, host: str, path: str, timeout: float = 2, tls: bool = False) -> int:
    """The status of GET path at `where` with this Host header (over HTTPS, with it as the
    server name, when `tls`), or 0 when unreachable."""
    if where is None:
        return 0
    try:
        conn = (_HTTPSByName(where[0], where[1], host, timeout) if tls
                else http.client.HTTPConnection(where[0], where[1], timeout=timeout))
        conn.request("GET", path, headers={"Host": host})
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


def probe(project: Project, tenant: Tenant, container: Container | None) -> str:
    """A running tenant's health, as the proxy's checks see it: GET the health path with the
    tenant's own Host header. "healthy", or "unhealthy: <why>"."""
    status = status_of(address(project, tenant, container), tenant.primary_host, project.health_path)
    if status == 200:
        return "healthy"
    return f"unhealthy: {project.health_path} " + (f"answered {status}" if status else "did not answer")


def probe_many(project: Project, tenants: list[Tenant], found: dict[str, Container]) -> dict[str, str]:
    """probe() for many tenants at once, by name (`found`: their containers by service)."""
    if not tenants:
        return {}
    with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(tenants))) as pool:
        results = pool.map(lambda t: probe(project, t, found.get(t.names.service)), tenants)
        return dict(zip((t.name for t in tenants), results, strict=True))


def wait_healthy(client, project: Project, tenants: list[Tenant], report=lambda message: None,
                 timeout: float = HEALTH_TIMEOUT) -> None:
    """Poll each tenant's health path at its container every POLL seconds until it answers
    200; fail fast when its container stops."""
    with track("starting", len(tenants), report) as progress:
        _wait_healthy(client, project, tenants, progress, timeout)


def _wait_healthy(client, project: Project, tenants: list[Tenant], progress, timeout: float) -> None:
    pending = {t.name: t for t in tenants}
    deadline = time.monotonic() + timeout
    next_inspect = 0.0
    found: dict[str, Container] = {}
    while pending:
        now = time.monotonic()
        if now >= next_inspect:
            next_inspect = now + INSPECT_EVERY
            only = next(iter(pending.values())).names.service if len(pending) == 1 else None
            found = engine.containers(client, project, only)
            for name, tenant in pending.items():
                current = found.get(tenant.names.service)
                if engine.state_of(current) is not engine.ContainerState.RUNNING or current.restarting:
                    raise OperationFailed(f"tenant {name}: its container stopped while starting. "
                                          f"Last lines:\n{tail(engine.container_logs(client, current))}")
        for name, tenant in list(pending.items()):
            where = address(project, tenant, found.get(tenant.names.service))
            if status_of(where, tenant.primary_host, project.health_path) == 200:
                progress.advance(name, "healthy", line=f"{name} is healthy")
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise OperationFailed(f"tenants {', '.join(pending)} did not answer {project.health_path} "
                                  f"within {timeout:.0f}s; see `tenant logs NAME`")
        time.sleep(POLL)


def wait_container(client, project: Project, tenant: Tenant, container: Container,
                   timeout: float = HEALTH_TIMEOUT) -> None:
    """Wait until one given container of the tenant (a deploy's new one) answers 200."""
    deadline = time.monotonic() + timeout
    next_inspect = time.monotonic() + INSPECT_EVERY
    where = address(project, tenant, container)
    while status_of(where, tenant.primary_host, project.health_path) != 200:
        now = time.monotonic()
        if now >= next_inspect:
            next_inspect = now + INSPECT_EVERY
            state = client.api.inspect_container(container.id)["State"]
            if state["Status"] != "running" or state.get("Restarting"):
                logs = client.api.logs(container.id, tail=15).decode(errors="replace")
                raise OperationFailed(f"the new container stopped: {tail(logs)}")
        if now > deadline:
            raise OperationFailed(f"the new container did not answer {project.health_path} within {timeout:.0f}s")
        time.sleep(POLL)


def _readable(path) -> bool:
    """A file tenantkit can read (mod_md's store is root's: not, for another user)."""
    try:
        return path.is_file()
    except OSError:
        return False


def wait_routed(project: Project, tenants: list[Tenant], timeout: float = 30) -> None:
    """Wait until the proxy routes each tenant's health path to it (tenants in maintenance: skipped)."""
    mode = project.proxy.mode
    if mode is ProxyMode.NONE or (mode is ProxyMode.HOST and not project.proxy.reload_command):
        return
    pending = [t for t in tenants if not t.maintenance]
    deadline = time.monotonic() + timeout
    address = "127.0.0.1" if project.proxy.address == "0.0.0.0" else project.proxy.address
    plain, secure = (address, project.proxy.port), (address, project.proxy.tls_port)

    def routed(tenant: Tenant) -> bool:
        mode = project.tls_of(tenant)
        if mode == TLS_AUTO and not _readable(project.acme_certificate(tenant)):
            # mod_md answers 503 over HTTPS until the CA has issued its certificate: the
            # vhost is there when HTTP redirects.
            return status_of(plain, tenant.primary_host, project.health_path) == 301
        if mode != TLS_OFF:  # HTTP redirects: asked over HTTPS
            return status_of(secure, tenant.primary_host, project.health_path, tls=True) == 200
        return status_of(plain, tenant.primary_host, project.health_path) == 200

    while pending:
        pending = [t for t in pending if not routed(t)]
        if pending and time.monotonic() > deadline:
            raise OperationFailed(f"the proxy does not route {', '.join(t.name for t in pending)} "
                                  f"within {timeout:.0f}s; see .tenantkit/logs/NAME.error.log")
        if pending:
            time.sleep(POLL)

"""Wait until tenants answer: on their own published ports, then through the proxy."""
from __future__ import annotations

import http.client
import time
from concurrent.futures import ThreadPoolExecutor

from ..model import Project, ProxyMode, Tenant
from . import engine
from .engine import OperationFailed, tail

HEALTH_TIMEOUT = 90.0
PROBE_THREADS = 16


def status_of(port: int, host: str, path: str, timeout: float = 2) -> int:
    """The status of GET path on 127.0.0.1:port with this Host header, or 0 when unreachable."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path, headers={"Host": host})
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


def probe(project: Project, tenant: Tenant) -> str:
    """A running tenant's health, as the proxy's checks see it: GET the health path with the
    tenant's own Host header. "healthy", or "unhealthy: <why>"."""
    status = status_of(tenant.port, tenant.primary_host, project.health_path)
    if status == 200:
        return "healthy"
    return f"unhealthy: {project.health_path} " + (f"answered {status}" if status else "did not answer")


def probe_many(project: Project, tenants: list[Tenant]) -> dict[str, str]:
    """probe() for many tenants at once, by name."""
    if not tenants:
        return {}
    with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(tenants))) as pool:
        return dict(zip((t.name for t in tenants), pool.map(lambda t: probe(project, t), tenants), strict=True))


def wait_healthy(client, project: Project, tenants: list[Tenant], report=lambda message: None,
                 timeout: float = HEALTH_TIMEOUT) -> None:
    """Poll each tenant's health path on its own port; fail fast when its container stops."""
    pending = {t.name: t for t in tenants}
    deadline = time.monotonic() + timeout
    next_inspect = 0.0
    while pending:
        for name, tenant in list(pending.items()):
            if status_of(tenant.port, tenant.primary_host, project.health_path) == 200:
                report(f"{name} is healthy")
                del pending[name]
        if not pending:
            return
        now = time.monotonic()
        if now >= next_inspect:
            next_inspect = now + 1.0
            only = next(iter(pending.values())).names.service if len(pending) == 1 else None
            found = engine.containers(client, project, only)
            for name, tenant in pending.items():
                current = found.get(tenant.names.service)
                if engine.state_of(current) is not engine.ContainerState.RUNNING or current.restarting:
                    raise OperationFailed(f"tenant {name}: its container stopped while starting. "
                                          f"Last lines:\n{tail(engine.container_logs(client, current))}")
        if now > deadline:
            raise OperationFailed(f"tenants {', '.join(pending)} did not answer {project.health_path} "
                                  f"within {timeout:.0f}s; see `docker compose logs`")
        time.sleep(0.1)


def wait_routed(project: Project, tenants: list[Tenant], timeout: float = 30) -> None:
    """Wait until the proxy routes each tenant's health path to it (tenants in maintenance: skipped)."""
    mode = project.proxy.mode
    if mode is ProxyMode.NONE or (mode is ProxyMode.HOST and not project.proxy.reload_command):
        return
    pending = [t for t in tenants if not t.maintenance]
    deadline = time.monotonic() + timeout
    while pending:
        pending = [t for t in pending
                   if status_of(project.proxy.port, t.primary_host, project.health_path) != 200]
        if pending and time.monotonic() > deadline:
            raise OperationFailed(f"the proxy does not route {', '.join(t.name for t in pending)} "
                                  f"within {timeout:.0f}s; see .tenantkit/logs/NAME.error.log")
        if pending:
            time.sleep(0.1)

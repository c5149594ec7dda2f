"""Render the classic mod_wsgi setup of the seed: a wsgi.py and a daemon-process vhost per tenant."""
from __future__ import annotations

from pathlib import Path

from ..model import Tenant
from . import environment
from .apache import apache_path


def render_wsgi_script(tenant: Tenant, root: Path) -> str:
    return environment.get_template("wsgi.py.j2").render(
        tenant=tenant, source=str(root / "current" / "source"))


def render_wsgi_vhost(tenant: Tenant, root: Path, listen_port: int, user: str, group: str) -> str:
    """The seed's vhost: WSGIDaemonProcess with python-home, python-path, script alias, aliases."""
    root_text = apache_path(str(root))
    return environment.get_template("vhost-wsgi.conf.j2").render(
        tenant=tenant, root=root_text, tenant_dir=f"{root_text}/shared/tenants/{tenant.name}",
        log_dir=f"{root_text}/logs", listen_port=listen_port, user=user, group=group)

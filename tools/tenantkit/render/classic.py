"""Render the classic mod_wsgi setup of the seed: a wsgi.py and a daemon-process vhost per tenant."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..model import Tenant
from . import environment
from .apache import apache_path

USER_MAX = 32  # the longest user name useradd accepts


def daemon_user(name: str) -> str:
    """The system user and group a classic tenant's daemon processes run as: tk-NAME, with
    '-' for '_'; a long name is cut and ends with a hash of the whole, so it stays unique."""
    user = f"tk-{name.replace('_', '-')}"
    if len(user) > USER_MAX:
        user = f"{user[:USER_MAX - 7]}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"
    return user


def render_wsgi_script(tenant: Tenant, root: Path) -> str:
    return environment.get_template("wsgi.py.j2").render(
        tenant=tenant, source=str(root / "current" / "source"))


def render_wsgi_vhost(tenant: Tenant, root: Path, listen_port: int, user: str, group: str) -> str:
    """The seed's vhost: WSGIDaemonProcess with python-home, python-path, script alias, aliases.

    USER and GROUP: the tenant's own (daemon_user), which its daemon processes run as.
    """
    root_text = apache_path(str(root))
    return environment.get_template("vhost-wsgi.conf.j2").render(
        tenant=tenant, root=root_text, tenant_dir=f"{root_text}/shared/tenants/{tenant.name}",
        log_dir=f"{root_text}/logs", listen_port=listen_port, user=user, group=group)

"""Orchestration: the verbs themselves, between act/ and the CLI.

    model -> render -> act -> orchestration -> CLI

Each function below is one verb (`tenant up` -> `up()`); the CLI calls only these. They
combine the model, render and act under the project lock, and read and write runtime
state through act/state.py. The modules of this package call each other only through
public functions: `stack` holds the steps the verbs share (render, images, database,
provisioning, migrations, proxy), and no module reaches into another's `_private` names.
"""
from .classic import apache_wsgi
from .data import backup, clone, restore, rm, write_backup
from .doctor import Finding, doctor
from .fleet import Outcome, manage_all, migrate
from .housekeeping import prune_backups
from .importer import import_classic
from .releases import build_release, deploy, dev, list_releases, prune_releases, remove_releases, rollback
from .stack import Rendered, Report, quiet
from .swarm import push_release
from .tenants import (SETTABLE, TenantStatus, apache_proxy, build, describe_run, down, logs, maintenance, manage,
                      memory, new, render, set_values, status, status_detail, test, up)

__all__ = [
    "apache_wsgi", "backup", "clone", "restore", "rm", "write_backup", "Outcome", "manage_all", "migrate",
    "import_classic", "build_release", "deploy", "dev", "list_releases", "rollback", "Rendered", "Report",
    "prune_backups", "prune_releases", "remove_releases",
    "quiet", "SETTABLE", "TenantStatus", "apache_proxy", "build", "down", "logs", "maintenance", "manage",
    "new", "render", "set_values", "status", "status_detail", "up", "Finding", "doctor", "memory", "test",
    "describe_run", "push_release",
]

"""Render what the scheduler runs: compose/scheduler/schedule.json, and its compose service.

The scheduler (image/scheduler/scheduler.py) is one container for the whole installation.
It is on no network at all, so no tenant can reach it, and it holds no tenant's secret: a
due job runs in a one-off container that the engine makes like the tenant's own web
container (image, settings, secrets, network, limits). See docs/concepts.md, "Scheduled
commands".
"""
from __future__ import annotations

import hashlib
import json
import shlex

from ..model import Project, Tenant, job_id

SCHEDULE_FILE = "schedule.json"
SCHEDULER_MOUNT = "/etc/tenantkit/scheduler"  # compose/scheduler/, read-only: the file is replaced, not edited
SCHEDULER_LABEL = "tenantkit.scheduler"  # on the scheduler's container: the digest of its definition
SCHEDULE_LOG = "{name}.schedule.log"  # in .tenantkit/logs: one JSON line per run


def render_schedule(project: Project, tenants: list[Tenant]) -> dict:
    """Every enabled tenant's jobs (the project's, then its own), with ids that stay the same
    while the cron expression and the command do."""
    entries = {}
    for tenant in tenants:
        jobs = [{"id": job_id(cron, command), "cron": cron, "command": shlex.split(command)}
                for cron, command in project.schedule_of(tenant)]
        if jobs:
            entries[tenant.name] = {"service": tenant.names.service, "jobs": jobs}
    return {"project": project.name, "log_dir": "/var/log/tenantkit", "tenants": entries}


def dump_schedule(doc: dict) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def scheduler_service(project: Project, image: str, user: str = "0:0") -> dict:
    """The scheduler: no network, the engine's socket, the schedule read-only, and the logs
    folder where it writes each tenant's runs. `user` ("UID:GID"): the owner of the logs
    folder, in the group of the engine's socket, so it needs no capability at all."""
    service = {
        "image": image,
        "pull_policy": "never",
        "user": user,
        "command": ["python", "/opt/tenantkit/scheduler.py", f"{SCHEDULER_MOUNT}/{SCHEDULE_FILE}"],
        "network_mode": "none",
        "volumes": [
            {"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock"},
            {"type": "bind", "source": "./scheduler", "target": SCHEDULER_MOUNT, "read_only": True},
            {"type": "bind", "source": "../.tenantkit/logs", "target": "/var/log/tenantkit"},
        ],
        "mem_limit": "96m",
        "pids_limit": 128,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": ["/tmp:size=16m"],
        "restart": "unless-stopped",
        "stop_grace_period": "15s",
    }
    # What it is made from, as a label: a running scheduler whose label differs (a new
    # image, user or mount) is recreated by `tenant up`.
    made_of = json.dumps(service, sort_keys=True).encode()
    service["labels"] = {SCHEDULER_LABEL: hashlib.sha256(made_of).hexdigest()[:16]}
    return service

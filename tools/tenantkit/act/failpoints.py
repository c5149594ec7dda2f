"""Failpoints: named steps where a test makes the CLI die as a kill -9 would.

`TENANTKIT_FAILPOINT=rm:dropped tenant rm acme` exits at once (status 137, no cleanup, no
`finally`, no atexit) when `rm` reaches the step "dropped". Tests run every command once
per step and check that what is left is the old state, the new one, or one that running
the same command again completes. Without the variable a failpoint costs one dict lookup.
"""
from __future__ import annotations

import os

VARIABLE = "TENANTKIT_FAILPOINT"
KILLED = 137  # what a shell reports for a process killed by SIGKILL

# Every failpoint, by command: the tests iterate over these.
STEPS = {
    "rm": ("archived", "marked", "stopped", "dropped", "moved"),
    "restore": ("unpacked", "staged", "provisioned", "loaded", "placed"),
    "clone": ("copied", "provisioned", "loaded", "placed"),
    "deploy": ("recorded", "backed-up", "migrated", "next-started", "switched", "done"),
    "rollback": ("stopped", "restored", "swapped", "recorded"),
    "up": ("template-copied", "copied",  # a template cut from a fresh database; a copy of a template
           "stack-deployed"),  # swarm: the services' new definitions given to the swarm, not yet running
    "render": ("certificate-installed",),  # a given certificate written for the proxy, its vhost not yet
    "release-rm": ("untagged", "assets-removed"),  # `release rm` and `release prune`, per release
    "backup-prune": ("removed-one",),  # after each archive retention removes
    "test": ("created",),  # `tenant test`: its test database made, the suite not run yet
}


def failpoint(command: str, step: str) -> None:
    """Die here when TENANTKIT_FAILPOINT names this command's step."""
    wanted = os.environ.get(VARIABLE)
    if wanted and wanted == f"{command}:{step}":
        assert step in STEPS[command], f"unknown failpoint {command}:{step}"
        os._exit(KILLED)

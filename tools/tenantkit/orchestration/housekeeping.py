"""Backup retention: which archives in the backups folder may go, and removing them.

Nothing else deletes archives, so without a retention the backups folder only grows
(every deploy that changes a schema adds one per tenant). `backups.keep: N` in
tenantkit.yaml keeps the newest N archives of each tenant; it is applied after every
`tenant backup` and every deploy, and on demand by `tenant backup prune`. Without it,
every archive is kept.

Whatever the number, an archive is never removed when it is:

- the newest of its tenant (a tenant always has its latest archive);
- the pre-deploy backup recorded for a tenant in .tenantkit/state.json: `tenant rollback`
  restores the database from it;
- the archive a `tenant rm` under way made (tenant.yaml `removing:`): running `rm` again
  finishes with it;
- an archive of a tenant that no longer exists (removed by `tenant rm`), unless asked
  (`tenant backup prune --removed`); even then the newest, the one `tenant rm` made, stays.

Release removal (`tenant release rm` and `prune`) lives in releases.py, beside the deploy
lock it shares with deploys and rollbacks.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..act import state
from ..act.failpoints import failpoint
from ..act.files import locked
from ..model import ConfigError, Project, Tenant, display_path, load_tenants
from .stack import Report, quiet

# archive.archive_name(), and data._unique()'s "-N" for a second archive in the same second.
ARCHIVE_RE = re.compile(r"(?P<tenant>[a-z][a-z0-9_]*)-(?P<time>[0-9]{8}T[0-9]{6}Z)(?:-(?P<n>[0-9]+))?\.tar\.gz")


@dataclass(frozen=True)
class Archive:
    path: Path
    tenant: str
    time: str  # YYYYmmddTHHMMSSZ: sorts as it reads
    n: int = 0

    @property
    def order(self) -> tuple[str, int]:
        return self.time, self.n


@dataclass(frozen=True)
class Decision:
    """What retention does with one archive, and why."""

    archive: Archive
    keep: bool
    why: str

    def to_dict(self, dry_run: bool = False) -> dict:
        action = "keep" if self.keep else ("would remove" if dry_run else "remove")
        return {"path": str(self.archive.path), "tenant": self.archive.tenant, "action": action, "why": self.why}


def archives(folder: Path) -> list[Archive]:
    """The archives in the backups folder, by the names tenantkit gives them. Anything else
    (a partial archive, a file someone put there, a symlink) is not an archive of ours and
    is never touched."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = ARCHIVE_RE.fullmatch(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            found.append(Archive(Path(entry.path), match["tenant"], match["time"], int(match["n"] or 0)))
    return found


def plan(found: list[Archive], keep: int, tenants: list[Tenant], current: state.State,
         removed: bool = False, names: Iterable[str] | None = None) -> list[Decision]:
    """Decide, for each archive (of the named tenants only, when `names` is given), whether
    retention keeps it. Pure: the tests call it without Docker or a backups folder."""
    if keep < 1:
        raise ConfigError(f"--keep {keep} would remove a tenant's newest archive; keep at least 1")
    existing = {t.name for t in tenants}
    wanted = None if names is None else set(names)
    rollback = {os.path.realpath(rt.backup): name for name, rt in current.tenants.items() if rt.backup}
    removing = {os.path.realpath(t.removing): t.name for t in tenants if t.removing}
    by_tenant: dict[str, list[Archive]] = {}
    for item in found:
        if wanted is None or item.tenant in wanted:
            by_tenant.setdefault(item.tenant, []).append(item)
    decisions = []
    for tenant, items in sorted(by_tenant.items()):
        items.sort(key=lambda a: a.order, reverse=True)
        gone = tenant not in existing
        for rank, item in enumerate(items):
            real = os.path.realpath(item.path)
            if rank == 0:
                why = "the newest of a removed tenant (the one `tenant rm` made)" if gone else "newest"
            elif real in rollback:
                why = f"pre-deploy backup of {rollback[real]}: `tenant rollback` restores it"
            elif real in removing:
                why = f"`tenant rm {removing[real]}` is under way with it"
            elif gone and not removed:
                why = "its tenant was removed (pass --removed to prune these too)"
            elif rank < keep:
                why = f"among the newest {keep}"
            else:
                decisions.append(Decision(item, False, f"older than the newest {keep}"))
                continue
            decisions.append(Decision(item, True, why))
    return decisions


def _apply(decisions: list[Decision], report: Report) -> None:
    """Remove the archives retention does not keep. Each unlink is atomic and a missing file
    counts as removed, so a run killed halfway is completed by the next one."""
    for decision in decisions:
        if decision.keep:
            continue
        decision.archive.path.unlink(missing_ok=True)
        report(f"removed {display_path(decision.archive.path)} ({decision.why})")
        failpoint("backup-prune", "removed-one")


def _decide(project: Project, keep: int, removed: bool, names: Iterable[str] | None) -> list[Decision]:
    return plan(archives(project.backups_dir), keep, load_tenants(project), state.load(project), removed, names)


def prune_backups(project: Project, keep: int | None = None, removed: bool = False, dry_run: bool = False,
                  report: Report = quiet) -> list[Decision]:
    """`tenant backup prune`: apply a retention (--keep, else backups.keep) to every
    tenant's archives now. Holds the deploy lock, so no deploy records a pre-deploy backup
    or rollback reads one meanwhile."""
    keep = keep if keep is not None else project.backups_keep
    if keep is None:
        raise ConfigError("no retention is set: pass --keep N, or set backups.keep in tenantkit.yaml "
                          "(see docs/reference.md)")
    from .releases import deploy_locked
    with deploy_locked(project), locked(project):
        decisions = _decide(project, keep, removed, None)
        if not dry_run:
            _apply(decisions, report)
    return decisions


def retain_backups(project: Project, names: Iterable[str], report: Report = quiet) -> list[Decision]:
    """Apply backups.keep to the named tenants' archives, after a deploy or a backup wrote
    new ones; nothing when no retention is set. The caller holds the deploy lock.

    A retention that cannot be applied (an unreadable folder) is reported, never raised:
    the deploy or backup it follows succeeded, and the next run applies it."""
    names = list(names)
    if project.backups_keep is None or not names:
        return []
    try:
        with locked(project):
            decisions = _decide(project, project.backups_keep, False, names)
            _apply(decisions, report)
    except (OSError, ConfigError) as exc:
        report(f"backups.keep was not applied: {exc}")
        return []
    return decisions


def retain_after_backup(project: Project, names: Iterable[str], report: Report = quiet) -> list[Decision]:
    """backups.keep after `tenant backup`: skipped while a deploy or rollback runs (it may be
    between writing a pre-deploy backup and recording it); the next backup or deploy applies it."""
    if project.backups_keep is None:
        return []
    from .releases import DeployRunning, deploy_locked
    try:
        with deploy_locked(project):
            return retain_backups(project, names, report)  # never raises DeployRunning
    except DeployRunning:
        report("a deploy or rollback is running, so backups.keep is applied after it, not now")
        return []

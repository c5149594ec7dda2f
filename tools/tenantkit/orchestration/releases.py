"""Releases: build immutable images, deploy them tenant by tenant without downtime, roll back.

A deploy of one tenant: record the release and the slot it goes to; when the release has
migrations the tenant's database lacks, back the database up and migrate; start the new
release's container in the tenant's idle slot, beside the running one (behind the compose
proxy a tenant publishes no port, so two can run); when it answers, point the tenant's
vhost at that slot and reload Apache gracefully; stop the old container. One container
start per tenant, and requests are answered by one container or the other throughout.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import docker.errors
import filelock

from ..act import archive, database, engine, health, migrations, state
from ..act import build as builder
from ..act.engine import ContainerState, OperationFailed, tail
from ..act.failpoints import failpoint
from ..act.files import held_elsewhere, locked
from ..act.secrets import read_env_file
from ..act.state import Release, TenantRuntime, other_slot, release_image
from ..model import ConfigError, Project, ProxyMode, Tenant, check_release, display_path, load_tenants
from ..render.compose import SLOT_LABEL
from . import data, housekeeping, stack, swarm
from .fleet import Outcome, across
from .stack import Report, quiet

NEXT_HEALTH_TIMEOUT = 90.0


def _version(version: str) -> str:
    return stack.checked(check_release, version)


def git_revision(folder: Path) -> str | None:
    """The source's git commit (with -dirty for uncommitted changes), when it is a checkout."""
    head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "."],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def build_release(project: Project, version: str, force: bool = False, report: Report = quiet) -> dict:
    """Build the image of the project's current code and tag it as an immutable release."""
    version = _version(version)
    if version in state.load(project).releases and not force:
        raise ConfigError(f"release {version} exists and releases are immutable; choose a new version "
                          "(or pass --force to rebuild it)")
    client = engine.connect()
    with locked(project):
        context = builder.build_context(project, project.images.base)
        tag = builder.image_tag(project, context)
        if not builder.image_is_current(client, tag, context):
            report(f"building {tag}")
            builder.build_image(client, context, tag, project.images.base, {"SETTINGS_MODULE": project.settings},
                                on_step=lambda step: report(f"  {step}"))
        client.images.get(tag).tag(project.images.app, version)
        record = Release(version=version, image=release_image(project, version), digest=context.digest,
                         revision=git_revision(project.source),
                         built=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        with state.update(project) as current:
            current.releases[version] = record
    return asdict(record)


def _by_age(releases: Iterable[Release]) -> list[Release]:
    """Oldest first; releases built in the same second by version."""
    return sorted(releases, key=lambda r: (r.built, r.version))


def _rollback_images(project: Project, current: state.State) -> dict[str, list[str]]:
    """The image each tenant would return to with `tenant rollback`, as image -> tenants."""
    targets: dict[str, list[str]] = {}
    for name, runtime in sorted(current.tenants.items()):
        image = release_image(project, runtime.previous) if runtime.previous else runtime.previous_image
        if image:
            targets.setdefault(image, []).append(name)
    return targets


def list_releases(project: Project) -> list[dict]:
    """Every release (oldest first), then the working tree, then any other image a tenant
    runs or may roll back to (one rolled back past its first deploy): each enabled tenant is
    in exactly one row's `tenants`, the row of the image it runs (in dev mode, the working
    tree's). Exactly one row is `current`: the release new tenants start on, or the working
    tree before the first deploy to all tenants. `rollback`: the tenants `tenant rollback`
    would return to that row."""
    current = state.load(project)
    tenants = [t for t in load_tenants(project) if t.enabled]
    context = builder.build_context(project, project.images.base)
    tree = builder.image_tag(project, context)
    runs = {t.name: state.image_for(project, current, t, tree) for t in tenants}
    rollback = _rollback_images(project, current)

    def row(record: dict, kind: str, is_current: bool) -> dict:
        image = record["image"]
        return {**record, "kind": kind, "current": is_current,
                "tenants": [t.name for t in tenants if runs[t.name] == image], "rollback": rollback.get(image, [])}

    rows = [row(asdict(r), "release", r.version == current.current) for r in _by_age(current.releases.values())]
    rows.append(row({"version": None, "image": tree, "digest": context.digest,
                     "revision": git_revision(project.source), "built": None},
                    "working-tree", current.current is None))
    listed = {r["image"] for r in rows}
    prefix = f"{project.images.app}:"
    for image in sorted((set(runs.values()) | set(rollback)) - listed):
        # A pinned release that is not recorded (built elsewhere), or an older working tree.
        tag = image[len(prefix):] if image.startswith(prefix) else None
        version = tag if tag and not tag.startswith("src-") else None
        rows.append(row({"version": version, "image": image, "digest": None, "revision": None, "built": None},
                        "release" if version else "image", False))
    return rows


# ---------------------------------------------------------------------------
# removing releases

def release_users(project: Project, current: state.State, tenants: list[Tenant]) -> dict[str, list[str]]:
    """Why each release must stay, as phrases naming tenants: a tenant is pinned to it, runs
    it (a deploy in flight records its new release before anything starts), or may roll back
    to it; and the current release, which new tenants start on (and unpinned tenants without
    a deploy of their own run). Disabled tenants count: `tenant up` brings them back."""
    tags = {release_image(project, v): v for v in current.releases}
    roles: dict[str, dict[str, list[str]]] = {}

    def note(version: str | None, name: str, role: str) -> None:
        if version and role not in roles.setdefault(version, {}).setdefault(name, []):
            roles[version][name].append(role)

    pinned = {t.name: t.release for t in tenants}
    for name in sorted(set(pinned) | set(current.tenants)):
        runtime = current.runtime(name)
        note(pinned.get(name), name, "is pinned to it")
        note(runtime.release or tags.get(runtime.image or ""), name, "runs it")
        note(runtime.previous or tags.get(runtime.previous_image or ""), name, "may roll back to it")
    users = {version: [f"{name} {' and '.join(what)}" for name, what in names.items()]
             for version, names in roles.items()}
    if current.current:
        users.setdefault(current.current, []).insert(0, "it is current (new tenants start on it)")
    return users


def _working_tree_image(project: Project) -> str:
    return builder.image_tag(project, builder.build_context(project, project.images.base))


def _container_names(found: list[dict]) -> str:
    names = []
    for entry in found:
        labels = entry.get("Labels") or {}
        name = (entry.get("Names") or ["?"])[0].lstrip("/")
        service = labels.get("com.docker.compose.service", "")
        names.append(f"{name} (tenant {service.removeprefix('tenant-')})" if service.startswith("tenant-") else name)
    return ", ".join(sorted(names))


def _image_plans(client, project: Project, current: state.State, versions: list[str]) -> dict[str, dict]:
    """What removing each release does to the engine: the tags it removes (the release's
    own, last) and whether the image goes with them. The image is deleted only when no tag
    that something needs remains: another release's, the working tree's, one a tenant runs
    or may roll back to. Working-tree tags nothing needs (`<app>:src-...` of older code) on
    the same image go with it, or removing a release would free no space. An image a
    container uses (any container on the engine, running or not) is never deleted: then
    only the release's tag goes, or, if it is the image's last tag, the plan is `blocked`."""
    referenced = {_working_tree_image(project)}
    referenced |= {image for rt in current.tenants.values() for image in (rt.image, rt.previous_image) if image}
    leaving = {release_image(project, v) for v in versions}
    plans: dict[str, dict] = {}
    by_image: dict[str, list[str]] = {}
    for version in versions:
        tag = release_image(project, version)
        plans[version] = {"version": version, "image": tag, "image_id": None, "untag": [], "image_deleted": False,
                          "blocked": None}
        try:
            image = client.images.get(tag)
        except docker.errors.ImageNotFound:
            continue  # gone already (a removal killed after untagging): nothing to do on the engine
        plans[version]["image_id"] = image.id
        by_image.setdefault(image.id, []).append(version)
    for image_id, sharing in by_image.items():
        image = client.images.get(image_id)
        others = set(image.tags) - leaving
        stale = {t for t in others if t.startswith(f"{project.images.app}:src-") and t not in referenced}
        used = client.api.containers(all=True, filters={"ancestor": image_id})
        deletes = not (others - stale)
        for version in sharing:
            plans[version]["untag"] = [release_image(project, version)]
        last = plans[sharing[-1]]
        if deletes and used:
            if not others:
                for version in sharing:
                    plans[version]["blocked"] = (f"its image is the image of container {_container_names(used)}, "
                                                 "which still exists")
        elif deletes:
            last["untag"] = sorted(stale) + last["untag"]
            last["image_deleted"] = True
    return plans


def _remove_assets(project: Project, version: str) -> Path | None:
    """Remove compose/assets/VERSION whole or not at all: renamed aside first, so a kill
    never leaves a half-deleted folder that a later `extract_assets` would take as done."""
    folder, aside = project.assets_dir / version, project.assets_dir / f".{version}.removed"
    had = folder.is_dir()
    if had:
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(project.assets_dir / f".{version}.tmp", ignore_errors=True)  # extract_assets' staging
    return folder if had else None


def _remove_release(client, project: Project, plan: dict, report: Report) -> dict:
    """Untag (and maybe delete) the image, remove the assets, then drop the record.

    Crash-safe by order: the record goes last, so a kill at any step leaves the release
    listed, and `tenant release rm VERSION` (or the same prune) run again finds it and
    completes; every step before is idempotent (a tag or folder already gone is skipped).
    Meanwhile a deploy of it is refused (its image is missing) and the tenants that could
    use it were refused before anything started."""
    version = plan["version"]
    for tag in plan["untag"]:
        try:
            client.images.remove(tag)  # a tag of an image with other tags: only the tag goes
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise OperationFailed(f"could not remove the image tag {tag}: {exc.explanation or exc}") from None
        failpoint("release-rm", "untagged")
    assets = _remove_assets(project, version)
    failpoint("release-rm", "assets-removed")
    with state.update(project) as changed:
        changed.releases.pop(version, None)
    deleted = " (image deleted)" if plan["image_deleted"] else ""
    report(f"removed release {version}: {', '.join(plan['untag']) or 'no image left'}{deleted}"
           + (f"; {display_path(assets)}" if assets else ""))
    return {**plan, "assets": str(assets) if assets else None}


def _in_use(busy: dict[str, list[str]]) -> ConfigError:
    what = "; ".join(f"{version}: {', '.join(why)}" for version, why in busy.items())
    return ConfigError(f"release{'s' if len(busy) > 1 else ''} in use, nothing removed ({what}); "
                       "deploy another release to those tenants first (`tenant deploy VERSION NAME...`; "
                       "to all tenants, it also becomes current), or keep it")


def _removal(client, project: Project, plans: dict[str, dict], dry_run: bool, report: Report,
             kept: list[dict]) -> dict:
    """Carry out the plans (oldest first), or only show them: {removed, kept, dry_run}."""
    removed = []
    for version, plan in plans.items():
        if plan["blocked"]:
            kept.append({"version": version, "why": plan["blocked"]})
        elif dry_run:
            folder = project.assets_dir / version
            removed.append({**plan, "assets": str(folder) if folder.is_dir() else None})
        else:
            removed.append(_remove_release(client, project, plan, report))
    return {"removed": removed, "kept": kept, "dry_run": dry_run}


def _check_removable(project: Project, current: state.State, versions: list[str]) -> None:
    unknown = [v for v in versions if v not in current.releases]
    if unknown:
        known = ", ".join(r.version for r in _by_age(current.releases.values())) or "none"
        raise ConfigError(f"unknown release {unknown[0]!r} (releases: {known}); see `tenant releases`")
    users = release_users(project, current, load_tenants(project))
    busy = {v: users[v] for v in versions if users.get(v)}
    if busy:
        raise _in_use(busy)


def remove_releases(project: Project, versions: Iterable[str], dry_run: bool = False,
                    report: Report = quiet) -> dict:
    """`tenant release rm`: remove releases, each with its image tag (the image too when
    nothing else needs it), its assets folder and its record. Refused whole (nothing
    removed) when one is unknown or in use (see release_users), or its image is the last
    tag of an image a container uses. Holds the deploy lock and the project lock."""
    versions = list(dict.fromkeys(_version(v) for v in versions))
    if not versions:
        raise ConfigError("name the releases to remove, such as: tenant release rm 1.0.0 (see `tenant releases`)")
    _check_removable(project, state.load(project), versions)  # bad input: refused before any lock or engine
    with deploy_locked(project), locked(project):
        current = state.load(project)
        _check_removable(project, current, versions)  # again, now that nothing can change it
        client = engine.connect()
        plans = _image_plans(client, project, current, versions)
        blocked = {v: p["blocked"] for v, p in plans.items() if p["blocked"]}
        if blocked:
            raise ConfigError(f"cannot remove release {', '.join(blocked)}, nothing removed "
                              f"({'; '.join(f'{v}: {why}' for v, why in blocked.items())}); remove that container "
                              "first (`tenant up NAME` replaces a tenant's leftover containers), or keep the release")
        return _removal(client, project, plans, dry_run, report, [])


def prune_releases(project: Project, keep: int, dry_run: bool = False, report: Report = quiet) -> dict:
    """`tenant release prune --keep N`: keep the N newest releases (by build time) and every
    release in use (see release_users); remove the others, oldest first. A release whose
    image a leftover container still uses is kept, and says so. A prune killed halfway is
    completed by the same prune run again: what it kept is still kept, and a half-removed
    release is still recorded, and still beyond the newest N."""
    if keep < 0:
        raise ConfigError(f"--keep {keep}: give the number of newest releases to keep (0 or more)")
    with deploy_locked(project), locked(project):
        current = state.load(project)
        users = release_users(project, current, load_tenants(project))
        newest_first = list(reversed(_by_age(current.releases.values())))
        kept, doomed = [], []
        for rank, record in enumerate(newest_first):
            if rank < keep:
                kept.append({"version": record.version, "why": f"among the newest {keep}"})
            elif users.get(record.version):
                kept.append({"version": record.version, "why": ", ".join(users[record.version])})
            else:
                doomed.append(record.version)
        client = engine.connect()
        return _removal(client, project, _image_plans(client, project, current, list(reversed(doomed))),
                        dry_run, report, kept)


def _deploy_file_lock(project: Project) -> filelock.FileLock:
    """.tenantkit/deploy.lock, taken without waiting: one deploy or rollback at a time."""
    return filelock.FileLock(str(project.state_dir / "deploy.lock"), timeout=0)


class DeployRunning(ConfigError):
    """The deploy lock is held: a deploy or rollback runs (or a release or backup removal)."""


def _deploy_lock(project: Project):
    project.state_dir.mkdir(parents=True, exist_ok=True)
    lock = _deploy_file_lock(project)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise DeployRunning("another deploy, rollback, release removal or backup prune is running (it holds "
                            ".tenantkit/deploy.lock); wait for it to finish") from None
    return lock


@contextmanager
def deploy_locked(project: Project) -> Iterator[None]:
    """Hold the deploy lock (refused at once when held) around a change a deploy or rollback
    must not meet halfway: removing releases, pruning backups."""
    lock = _deploy_lock(project)
    try:
        yield
    finally:
        lock.release()


def deploy_running(project: Project) -> bool:
    """Whether a deploy or rollback holds the deploy lock now."""
    return held_elsewhere(_deploy_file_lock(project))


def _set_runtime(project: Project, tenant: Tenant, runtime: TenantRuntime) -> stack.Rendered:
    """Record what a tenant runs (its subnet is kept), and render that tenant for it."""
    with locked(project):
        with state.update(project) as current:
            current.tenants[tenant.name] = replace(runtime, subnet=current.runtime(tenant.name).subnet)
        return stack.render(project, [tenant.name])


def _route_to_live_slot(client, project: Project, tenant: Tenant) -> None:
    """Point the tenant's vhost at its live slot, reload the proxy gracefully and wait until
    the proxy answers from it. The route is stored state: any `tenant` process that renders
    the tenant in the meantime keeps it."""
    with locked(project):
        with state.update(project) as current:
            current.set_runtime(tenant.name, route=None)
        stack.render(project, [tenant.name])
        stack.reload_proxy(client, project, [tenant], force=True)
    health.wait_routed(project, [tenant])


def _retire(client, container: engine.Container) -> None:
    """Stop a container the proxy no longer sends requests to (those in flight on it
    complete: gunicorn's graceful stop) and remove it."""
    try:
        client.api.stop(container.id, timeout=20)
        client.api.remove_container(container.id, force=True)
    except docker.errors.APIError:
        pass  # gone already; or left over, and the tenant's next `up` or deploy removes it


def _now(work) -> None:
    work()


def _switch_slots(client, project: Project, tenant: Tenant, slot: str, report: Report,
                  retire: Callable[[Callable[[], None]], object] = _now,
                  prepare: Callable[[engine.Container], None] | None = None) -> None:
    """Serve the tenant from a container of its (already rendered) new definition, started
    in `slot` beside the running one: when it answers, the proxy moves to it and the old
    container stops (finishing the requests it has). One container start, no gap.

    Every step looks at what is there, so a deploy run again after a kill goes on from
    where it stopped. `prepare` runs in the new container before it is waited for (a
    deploy's migrations). `retire` runs the old container's stop (a deploy runs it beside
    the next tenants: a graceful stop takes a second or two, and nothing waits on it)."""
    service = tenant.names.service

    def in_slot() -> tuple[list[engine.Container], list[engine.Container]]:
        found = engine.service_containers(client, project, service)
        return ([c for c in found if c.labels.get(SLOT_LABEL) == slot],
                [c for c in found if c.labels.get(SLOT_LABEL) != slot])

    new, old = in_slot()
    for leftover in new:  # of an earlier definition (a deploy that failed and was not undone)
        if leftover.labels.get(stack.CONFIG_LABEL) != stack.current_config(project, tenant):
            client.api.remove_container(leftover.id, force=True)
            new = []
    if not new:
        # --no-recreate: the running container stays; Compose adds one of the new definition.
        engine.compose(project, "up", "-d", "--no-deps", "--no-recreate", "--scale", f"{service}=2", service,
                       tenant=tenant)
        new, old = in_slot()
    if not new:
        raise OperationFailed("Compose did not start a container of the new release")
    if new[0].state is not ContainerState.RUNNING:
        client.api.start(new[0].id)
        new, old = in_slot()
    if prepare is not None:
        prepare(new[0])
    health.wait_container(client, project, tenant, new[0], NEXT_HEALTH_TIMEOUT)
    report(f"{tenant.name}: new release answers; switching traffic")
    failpoint("deploy", "next-started")
    _route_to_live_slot(client, project, tenant)
    failpoint("deploy", "switched")
    for container in old:
        retire(lambda c=container: _retire(client, c))


def _recreate(client, project: Project, tenant: Tenant) -> None:
    """Bring the tenant's container to its rendered definition (Compose keeps a container
    that already matches it and removes any other), wait, and route to it again.
    On swarm: the service's rolling update (start-first, health-checked)."""
    if project.engine == "swarm":
        return swarm.apply_tenants(client, project, [tenant])
    engine.compose(project, "up", "-d", "--no-deps", tenant.names.service, tenant=tenant)
    health.wait_healthy(client, project, [tenant])
    _route_to_live_slot(client, project, tenant)


def _uses_slots(project: Project, running: bool) -> bool:
    """Whether the tenant moves between slots (a running tenant behind the compose proxy)
    or is recreated in place (host or no proxy: its published port cannot be shared)."""
    return running and project.proxy.mode is ProxyMode.COMPOSE and project.engine != "swarm"


def _deploy_one(client, project: Project, tenant: Tenant, version: str, rendered_image: str,
                report: Report, retire: Callable[[Callable[[], None]], object] = _now,
                broken: dict[tuple, str] | None = None) -> Outcome:
    """Deploy one tenant: record the release, back up and migrate only when the release has
    migrations this database lacks, then start the new container beside the old one and
    switch (or recreate in place, without the compose proxy).

    Crash-safe: the state records the release, the slot it goes to and what the tenant ran
    before, ahead of any change; a tenant counts as up to date only when one container runs
    the release's image with nothing switched. So a deploy run again after a kill
    completes the one that was interrupted."""
    started = time.monotonic()
    broken = {} if broken is None else broken  # settings that do not load on this release, by kind
    kind = migrations.graph_key(tenant, {tenant.name: release_image(project, version)})
    if kind in broken:  # another tenant of the same kind found it: nothing to change here
        report(f"{tenant.name}: FAILED, its settings do not load on {version}; not deployed")
        return Outcome(tenant.name, "failed", 0.0, f"tenant {tenant.name}: {broken[kind]}", 1, contained=True)
    current = state.load(project)
    before = current.runtime(tenant.name)
    found = engine.service_containers(client, project, tenant.names.service)
    running = any(c.state is ContainerState.RUNNING for c in found)
    live_image = swarm.live_image(client, project, tenant) if project.engine == "swarm" else None
    image_id = engine.image_id(client, release_image(project, version))
    # A killed deploy of this version (which may have moved the tenant's pin to it already).
    resumed = before.release == version and tenant.release in (None, version)
    if (current.release_of(tenant) == version and not before.switching and len(found) == 1
            and found[0].image_id == image_id):
        stack.sync_processes(client, project, [tenant], report)  # a deploy killed before it moved them
        return Outcome(tenant.name, "up-to-date", 0.0)
    if resumed:
        previous, previous_image = before.previous, before.previous_image
    else:
        previous = current.release_of(tenant)
        # A first deploy remembers the image the tenant ran, so it can be rolled back too.
        newest = max(found, key=lambda c: c.created, default=None)
        previous_image = None if previous else (newest.image if newest is not None else live_image or rendered_image)
    slots = _uses_slots(project, running)
    # The idle slot: the one the proxy does not use (a resumed deploy keeps the one it chose).
    slot = (before.live_slot if resumed else other_slot(before.routed_slot)) if slots else before.live_slot
    route = before.routed_slot if slots else None
    record = TenantRuntime(release=version, previous=previous, previous_image=previous_image,
                           backup=before.backup if resumed else None, slot=slot,
                           route=route if route != slot else None)
    rendered = _set_runtime(project, tenant, record)
    failpoint("deploy", "recorded")
    try:
        graph = migrations.migration_graphs(project, client, [tenant], {}, rendered.images)
        schema_changes = migrations.needs_migrate(next(iter(graph.values())),
                                                  database.applied_migrations(project, tenant.names))
        saved = record.backup
        if schema_changes:
            if not saved:
                report(f"{tenant.name}: the release has migrations; backing up first")
                saved = str(data.write_backup(project, tenant, secrets=False))
                with state.update(project) as changed:
                    changed.set_runtime(tenant.name, backup=saved)
                failpoint("deploy", "backed-up")
        else:
            report(f"{tenant.name}: no migrations to apply, so no backup is needed")

        def migrate(container: engine.Container | None) -> None:
            """In the new release's container, before anything is routed to it (no second
            container start); in a one-off container when the tenant is recreated in place."""
            if container is not None:
                code, output = migrations.exec_in(client, container.id, migrations.MIGRATE)
            else:
                code, output = migrations.in_tenant(project, tenant, migrations.MIGRATE, False)
            if code != 0:
                raise OperationFailed(f"migrate failed:\n{tail(output)}")
            failpoint("deploy", "migrated")

        if slots:
            _switch_slots(client, project, tenant, slot, report, retire, migrate if schema_changes else None)
        else:
            if schema_changes:
                migrate(None)
            _recreate(client, project, tenant)
        stack.sync_processes(client, project, [tenant], report)  # on the new release too
    except Exception as exc:
        report(f"{tenant.name}: FAILED, staying on {previous or 'its previous image'}")
        _set_runtime(project, tenant, before if not resumed else TenantRuntime(
            release=previous, image=previous_image, previous=None, slot=before.routed_slot))
        if not running and project.engine != "swarm":
            engine.compose(project, "rm", "-f", "-s", tenant.names.service, tenant=tenant, check=False)
        else:
            try:  # back on its recorded release (still running, in the slot the proxy uses)
                _recreate(client, project, tenant)
            except (OperationFailed, ConfigError) as again:
                report(f"{tenant.name}: could not be brought back on its previous release: {again}")
        if isinstance(exc, migrations.SettingsBroken):  # before any change: the rollout goes on
            broken[kind] = str(exc).partition(": ")[2]
        return Outcome(tenant.name, "failed", time.monotonic() - started, str(exc), 1,
                       contained=isinstance(exc, migrations.SettingsBroken))
    failpoint("deploy", "done")
    how = f"backup {saved}" if saved else "no migrations, no backup needed"
    return Outcome(tenant.name, "ok", time.monotonic() - started,
                   f"deployed {version} (from {previous or previous_image}); {how}")


def deploy(project: Project, version: str, names: Iterable[str] = (), keep_going: bool = False, jobs: int = 2,
           report: Report = quiet) -> list[Outcome]:
    """Deploy a release to tenants (all, except pinned ones, by default), `jobs` at a time."""
    version = _version(version)
    names = list(names)
    releases = state.load(project).releases
    if version not in releases:
        raise ConfigError(f"unknown release {version!r} (releases: {state.listed(releases)}); build it with "
                          f"`tenant release build {version}`")
    tenants = [t for t in load_tenants(project) if t.enabled]
    chosen = stack.select(tenants, names, not names) if names else [t for t in tenants if not t.release]
    with deploy_locked(project):
        client = engine.connect()
        if not builder.image_exists(client, release_image(project, version)):
            raise ConfigError(f"the image of release {version} is missing; rebuild it with "
                              f"`tenant release build {version} --force`")
        builder.extract_assets(client, release_image(project, version), project.assets_dir / version)
        with locked(project):
            for tenant in chosen:
                if tenant.release and tenant.release != version:  # named explicitly: move its pin
                    stack.write_tenant_yaml(project, replace(tenant, release=version))
        rendered = stack.render(project, [t.name for t in chosen], keep_going=True)
        refused = [Outcome(name, "failed", 0.0, f"tenant {name}: {problem}", 1, contained=True)
                   for name, problem in rendered.rejected.items()]
        for outcome in refused:
            report(f"{outcome.tenant}: FAILED, its new settings do not load; not deployed")
        chosen = [t for t in chosen if t.name not in rendered.rejected]
        broken: dict[tuple, str] = {}
        with ThreadPoolExecutor(max_workers=jobs) as retiring:  # old containers stop while others deploy
            outcomes = across(chosen, lambda t: _deploy_one(client, project, t, version, rendered.images[t.name],
                                                            report, retiring.submit, broken),
                              jobs, None, report, keep_going, verb=f"deploying {version}")
        outcomes = refused + outcomes
        if not names and not any(o.failed for o in outcomes):
            with state.update(project) as current:
                current.current = version
        # backups.keep, now that these tenants' pre-deploy backups are recorded (or not needed).
        housekeeping.retain_backups(project, [o.tenant for o in outcomes if o.result == "ok"], report)
        return outcomes


# ---------------------------------------------------------------------------
# rollback

def _graph_keys(graph: list) -> set[tuple[str, str]]:
    keys = set()
    for app, name, replaces in graph:
        keys.add((app, name))
        keys.update(tuple(r) for r in replaces)
    return keys


def _restore_database(project: Project, tenant: Tenant, source: Path) -> None:
    """Replace the tenant's database with the one in an archive (the pre-deploy backup),
    through a scratch copy: a crash never leaves the tenant without a database."""
    password = read_env_file(tenant.secrets_file)["TENANT_DB_PASSWORD"]
    with data.scratch_folder(project, "rollback") as tmp:
        archive.unpack(source, tmp)
        conn = database.admin_connect(project)
        try:
            database.replace_database(project, conn, tenant.names, password, tmp / archive.DUMP,
                                      on_step=lambda step: failpoint("rollback", step))
        finally:
            conn.close()


def rollback(project: Project, names: Iterable[str] = (), report: Report = quiet) -> list[Outcome]:
    """Return tenants to what they ran before their last deploy: the previous release, or,
    after a first deploy, the image they ran before it.

    When that deploy applied migrations the older code does not know, the database is
    replaced by the backup taken just before those migrations (after a safety backup of
    its current state); a deploy that migrated nothing took no backup, and the data is
    kept as it is: in both cases the tenant is back where it was before the deploy.
    """
    names = list(names)
    known = state.load(project)
    tenants = [t for t in load_tenants(project) if t.enabled]

    def has_previous(tenant: Tenant) -> bool:
        runtime = known.runtime(tenant.name)
        return bool(runtime.previous or runtime.previous_image)

    chosen = stack.select(tenants, names, False) if names else [t for t in tenants if has_previous(t)]
    if not chosen:
        raise ConfigError("no tenant has a previous release to roll back to")
    for tenant in chosen:
        if not has_previous(tenant):
            raise ConfigError(f"tenant {tenant.name!r} has no previous release to roll back to")
    with deploy_locked(project):
        client = engine.connect()
        outcomes = [_rollback_one(client, project, tenant, report) for tenant in chosen]
        if not names and not any(o.failed for o in outcomes):
            with state.update(project) as current:
                previous = {current.runtime(t.name).release for t in chosen}
                if len(previous) == 1:
                    current.current = previous.pop()
        return outcomes


def _rollback_one(client, project: Project, tenant: Tenant, report: Report) -> Outcome:
    """Crash-safe: until the database is what the older code needs, the state keeps the
    deploy's record (previous release, pre-deploy backup) beside the release it returns to,
    so a rollback run again after a kill finds them and completes."""
    started = time.monotonic()
    entry = state.load(project).runtime(tenant.name)
    previous, pre_deploy = entry.previous, entry.backup
    target = release_image(project, previous) if previous else entry.previous_image
    label = previous or target
    pinned = bool(tenant.release)
    running = engine.state_of(engine.container(client, project, tenant.names.service)) is ContainerState.RUNNING
    slots = _uses_slots(project, running)
    # Like a deploy, the older release starts in the idle slot (kept when a killed rollback
    # already chose it), unless the tenant is recreated in place.
    slot = (entry.live_slot if entry.switching else other_slot(entry.live_slot)) if slots else entry.live_slot
    back = TenantRuntime(release=previous, image=None if previous else target, slot=slot)
    try:
        if not builder.image_exists(client, target):
            raise OperationFailed(f"the image {target} it ran before is gone from this engine")
        if pinned and tenant.release != previous:  # the deploy moved its pin: it moves back
            with locked(project):
                stack.write_tenant_yaml(project, replace(tenant, release=previous))
        # The tenant's service now names the older image (its migration graph is read with
        # it); the deploy's record stays until the end.
        _set_runtime(project, tenant, replace(
            back, previous=entry.previous, previous_image=entry.previous_image, backup=entry.backup,
            route=entry.routed_slot if entry.routed_slot != slot else None))
        conn = database.admin_connect(project)
        try:
            database.finish_swap(conn, tenant.names)  # a rollback killed while trading databases
        finally:
            conn.close()
        graph = migrations.migration_graphs(project, client, [tenant], {}, {tenant.name: target})
        applied = database.applied_migrations(project, tenant.names) or set()
        unknown = applied - _graph_keys(next(iter(graph.values())))
        detail = "data kept"
        restore = bool(unknown and pre_deploy)
        if unknown and not pre_deploy:
            # The deploy migrated nothing (it backs up exactly when it does): these
            # migrations were there before it, under the same older code.
            detail = f"data kept, with {len(unknown)} newer migrations it had before that deploy"
        if restore:
            if not Path(pre_deploy).is_file():
                raise OperationFailed(f"the database has migrations {label} does not know "
                                      f"({len(unknown)}), and the pre-deploy backup {pre_deploy} is missing")
            safety = data.write_backup(project, tenant, secrets=False)
            report(f"{tenant.name}: restoring the database from before the deploy (current data saved in {safety})")
            if project.engine == "swarm":
                swarm.stop(client, project, [tenant], report)
            else:
                stack.compose_services(project, [tenant], "stop", services=stack.services_of(project, tenant),
                                       check=False)
            stack.remove_jobs(client, project, [tenant.name])  # none writes to the database being replaced
            failpoint("rollback", "stopped")
            _restore_database(project, tenant, Path(pre_deploy))
            failpoint("rollback", "swapped")
            detail = f"database restored from {pre_deploy}; the data it had is in {safety}"
        if slots and not restore:  # a switch without a gap, as a deploy's
            _switch_slots(client, project, tenant, slot, report)
        else:
            _recreate(client, project, tenant)
        stack.sync_processes(client, project, [tenant], report)
        _set_runtime(project, tenant, back)  # done: the deploy's record goes
        failpoint("rollback", "recorded")
    except Exception as exc:
        if pinned:
            with locked(project):
                stack.write_tenant_yaml(project, tenant)
        _set_runtime(project, tenant, entry)
        if project.engine == "swarm":
            try:
                swarm.apply_tenants(client, project, [tenant])
            except (OperationFailed, ConfigError) as again:
                report(f"{tenant.name}: could not be brought back: {again}")
        else:
            engine.compose(project, "up", "-d", "--no-deps", tenant.names.service, tenant=tenant, check=False)
        return Outcome(tenant.name, "failed", time.monotonic() - started, str(exc), 1)
    report(f"{tenant.name}: back on {label} ({detail})")
    return Outcome(tenant.name, "ok", time.monotonic() - started, f"rolled back to {label}: {detail}")


# ---------------------------------------------------------------------------
# dev mode

def dev(project: Project, on: bool, report: Report = quiet) -> list[Tenant]:
    """Run every tenant on the working tree with reloading (on), or back on its release (off)."""
    if project.engine == "swarm":
        raise swarm.refuse("dev")
    flag = project.state_dir / "dev"
    project.state_dir.mkdir(parents=True, exist_ok=True)
    if on:
        flag.touch()
    else:
        flag.unlink(missing_ok=True)
    from ..model import load_project
    from .tenants import up
    return up(load_project(project.root), all_=True, report=report)


"""Housekeeping without an engine: which archives retention keeps, the backups setting,
`tenant backup prune`, the `backup` command's subcommand, refused release removals, and
the working tree's row in `tenant releases`."""
import json
import os
from dataclasses import replace
from pathlib import Path

import filelock
import pytest

from tenantkit.act import state
from tenantkit.model import load_project, load_tenants
from tenantkit.orchestration import housekeeping
from tenantkit.orchestration.releases import release_users
from tests.conftest import snapshot, tenant_cli, write_project
from tests.unit.test_cli import assert_refused

NO_ENGINE = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def archive(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"not really an archive")
    return path


def names(decisions, keep):
    return sorted(d.archive.path.name for d in decisions if d.keep == keep)


@pytest.fixture
def fleet(project_dir):
    """acme and beta exist; ghost was removed. Archives of all three, and a few files that are
    not archives of ours."""
    for name in ("acme", "beta"):
        assert tenant_cli(project_dir, "new", name, "--host", f"{name}.localhost").code == 0
    backups = project_dir / "backups"
    for name in ("acme-20240101T000000Z.tar.gz", "acme-20240102T000000Z.tar.gz", "acme-20240102T000000Z-1.tar.gz",
                 "acme-20240103T000000Z.tar.gz", "acme-20240104T000000Z.tar.gz",
                 "beta-20240101T000000Z.tar.gz",
                 "ghost-20230101T000000Z.tar.gz", "ghost-20230102T000000Z.tar.gz",
                 ".acme-20240105T000000Z.tar.gz.partial", "notes.txt", "acme-latest.tar.gz"):
        archive(backups, name)
    os.symlink(backups / "beta-20240101T000000Z.tar.gz", backups / "beta-20200101T000000Z.tar.gz")
    return project_dir


def test_retention_keeps_the_newest_n_and_never_what_a_rollback_or_a_removal_needs(fleet):
    project = load_project(fleet)
    tenants = load_tenants(project)
    current = state.State()
    current.set_runtime("acme", release="2", previous="1",
                        backup=str(project.backups_dir / "acme-20240101T000000Z.tar.gz"))
    found = housekeeping.archives(project.backups_dir)
    assert len(found) == 8  # the partial archive, notes.txt, acme-latest and the symlink are not ours

    decisions = housekeeping.plan(found, 2, tenants, current)
    assert names(decisions, False) == ["acme-20240102T000000Z-1.tar.gz", "acme-20240102T000000Z.tar.gz"]
    why = {d.archive.path.name: d.why for d in decisions}
    assert why["acme-20240104T000000Z.tar.gz"] == "newest"
    assert why["acme-20240103T000000Z.tar.gz"] == "among the newest 2"
    assert "pre-deploy backup of acme" in why["acme-20240101T000000Z.tar.gz"]
    assert why["beta-20240101T000000Z.tar.gz"] == "newest"
    assert "removed" in why["ghost-20230101T000000Z.tar.gz"] and "`tenant rm`" in why["ghost-20230102T000000Z.tar.gz"]

    # --removed: a removed tenant's older archives go, never the newest (the one `rm` made).
    decisions = housekeeping.plan(found, 1, tenants, current, removed=True)
    assert "ghost-20230101T000000Z.tar.gz" in names(decisions, False)
    assert "ghost-20230102T000000Z.tar.gz" in names(decisions, True)
    assert names(decisions, True) == ["acme-20240101T000000Z.tar.gz", "acme-20240104T000000Z.tar.gz",
                                      "beta-20240101T000000Z.tar.gz", "ghost-20230102T000000Z.tar.gz"]

    # The same-second "-1" archive is the newer of the two; and a `tenant rm` under way keeps its archive.
    acme = next(t for t in tenants if t.name == "acme")
    removing = replace(acme, removing=str(project.backups_dir / "acme-20240102T000000Z.tar.gz"))
    decisions = housekeeping.plan(found, 1, [removing, *[t for t in tenants if t.name != "acme"]], state.State(),
                                  names=["acme"])
    assert {d.archive.tenant for d in decisions} == {"acme"}
    assert names(decisions, True) == ["acme-20240102T000000Z.tar.gz", "acme-20240104T000000Z.tar.gz"]


def test_backup_prune_dry_run_shows_and_prune_removes(fleet):
    backups = fleet / "backups"
    before = sorted(p.name for p in backups.iterdir())
    run = tenant_cli(fleet, "backup", "prune", "--keep", "1", "--dry-run", "--json")
    assert run.code == 0, run.err
    planned = {Path(d["path"]).name: d["action"] for d in json.loads(run.out)}
    assert planned["acme-20240101T000000Z.tar.gz"] == "would remove"
    assert planned["acme-20240104T000000Z.tar.gz"] == "keep" and planned["ghost-20230101T000000Z.tar.gz"] == "keep"
    assert sorted(p.name for p in backups.iterdir()) == before

    run = tenant_cli(fleet, "backup", "prune", "--keep", "1")
    assert run.code == 0, run.err
    assert "removed 4 of 8 archive(s)" in run.out and "older than the newest 1" in run.out
    left = sorted(p.name for p in backups.iterdir())
    assert left == sorted([".acme-20240105T000000Z.tar.gz.partial", "acme-20240104T000000Z.tar.gz",
                           "acme-latest.tar.gz", "beta-20200101T000000Z.tar.gz", "beta-20240101T000000Z.tar.gz",
                           "ghost-20230101T000000Z.tar.gz", "ghost-20230102T000000Z.tar.gz", "notes.txt"])


def test_backups_keep_in_tenantkit_yaml_is_the_default_retention(fleet):
    write_project(fleet, backups={"folder": "backups", "keep": 3})
    assert load_project(fleet).backups_keep == 3 and load_project(fleet).backups_dir == fleet / "backups"
    run = tenant_cli(fleet, "backup", "prune", "--json")
    assert run.code == 0, run.err
    assert sum(1 for d in json.loads(run.out) if d["action"] == "remove") == 2  # acme's two oldest


@pytest.mark.parametrize("setting, words", [
    ({"keep": 0}, ["backups.keep", "from 1"]),
    ({"keep": "all"}, ["backups.keep", "whole number"]),
    ({"kep": 3}, ["backups.kep", "unknown key"]),
    ({"folder": ""}, ["backups.folder"]),
])
def test_a_bad_backups_setting_is_refused_with_its_line(project_dir, setting, words):
    write_project(project_dir, backups=setting)
    assert_refused(tenant_cli(project_dir, "list", env=NO_ENGINE), "tenantkit.yaml:", *words)


def test_backups_as_a_folder_name_still_works(project_dir):
    write_project(project_dir, backups="archive-store")
    project = load_project(project_dir)
    assert project.backups_dir == project_dir / "archive-store" and project.backups_keep is None


def test_backup_prune_without_a_retention_or_during_a_deploy_is_refused(fleet):
    before = snapshot(fleet)
    assert_refused(tenant_cli(fleet, "backup", "prune", env=NO_ENGINE), "no retention is set", "--keep N",
                   "backups.keep")
    assert snapshot(fleet) == before
    with filelock.FileLock(str(fleet / ".tenantkit" / "deploy.lock")):
        assert_refused(tenant_cli(fleet, "backup", "prune", "--keep", "1"), "another deploy")
    assert set(snapshot(fleet)) == set(before) | {".tenantkit/deploy.lock"}  # the test's own lock file


def test_backup_still_takes_tenant_names_and_all_beside_prune(fleet):
    for args, words in ((["backup"], ["name a tenant, or pass --all"]),
                        (["backup", "nobody"], ["unknown tenant 'nobody'"]),
                        (["backup", "acme", "--all"], ["names or --all, not both"]),
                        (["backup", "--", "prune"], ["unknown tenant 'prune'"]),  # a tenant named prune
                        (["backup", "acme", "prune"], ["unknown tenant 'prune'"]),
                        (["backup", "prune", "acme"], ["unexpected extra argument"])):
        assert_refused(tenant_cli(fleet, *args, env=NO_ENGINE), *words)
    run = tenant_cli(fleet, "backup", "--help")
    assert run.code == 0 and "[NAMES]... | COMMAND" in run.out and "prune" in run.out and "--all" in run.out
    run = tenant_cli(fleet, "backup", "prune", "--help")
    assert run.code == 0 and "Usage: tenant backup prune [OPTIONS]" in run.out and "--keep N" in run.out


def write_state(project_dir: Path, **runtimes) -> None:
    """Releases 1, 2 and 3 (2 current) and the tenants' runtime records, as deploys leave them."""
    project = load_project(project_dir)
    current = state.State(current="2")
    for n, version in enumerate(("1", "2", "3")):
        current.releases[version] = state.Release(version, state.release_image(project, version), "d" * 64, None,
                                                  f"2024-01-0{n + 1}T00:00:00+00:00")
    for name, fields in runtimes.items():
        current.set_runtime(name, **fields)
    project.state_dir.mkdir(parents=True, exist_ok=True)
    project.state_file.write_text(current.to_json())


def test_a_release_in_use_is_refused_naming_the_tenants_and_nothing_changes(fleet):
    write_state(fleet, acme={"release": "2", "previous": "1"}, beta={"release": "3", "previous": "2"})
    assert tenant_cli(fleet, "set", "beta", "release=3").code == 0
    tenant_cli(fleet, "render")  # brings the tenants' cache up to date (.tenantkit/cache: not state)
    before = snapshot(fleet)
    for args, words in ((["1"], ["1: acme may roll back to it", "deploy another release"]),
                        (["3"], ["3: beta is pinned to it and runs it"]),
                        (["2"], ["it is current", "beta may roll back to it", "acme runs it"]),
                        (["1", "3"], ["releases in use", "1: acme", "3: beta"]),
                        (["9"], ["unknown release '9'", "releases: 1, 2, 3"]),
                        (["bad/version"], ["not a release version"])):
        assert_refused(tenant_cli(fleet, "release", "rm", *args, env=NO_ENGINE), *words)
    assert snapshot(fleet) == before
    assert_refused(tenant_cli(fleet, "release", "prune", env=NO_ENGINE), "Missing option '--keep'")


def test_a_deploy_in_flight_keeps_both_its_releases(project):
    """A deploy records the new release and the previous one before it starts anything."""
    current = state.State(current="1", releases={})
    current.set_runtime("acme", release="3", previous="1", slot="b", route="a")  # switching to 3
    current.set_runtime("beta", image="tktest/app:1", previous=None)  # an image a rollback left it on
    current.set_runtime("zed", previous_image="tktest/app:2")  # a first deploy's record
    users = release_users(project, current, [])
    assert users["3"] == ["acme runs it"]
    assert users["1"] == ["it is current (new tenants start on it)", "acme may roll back to it"]
    current.releases = {v: state.Release(v, f"tktest/app:{v}", "", None, "") for v in ("1", "2", "3")}
    users = release_users(project, current, [])
    assert "beta runs it" in users["1"] and users["2"] == ["zed may roll back to it"]


def test_releases_lists_the_working_tree_with_every_tenant_before_the_first_release(fleet):
    run = tenant_cli(fleet, "releases", "--json")
    assert run.code == 0, run.err
    rows = json.loads(run.out)
    assert len(rows) == 1
    row = rows[0]
    assert row["kind"] == "working-tree" and row["version"] is None and row["current"]
    assert row["tenants"] == ["acme", "beta"] and row["image"].startswith("tktest/app:src-")
    table = tenant_cli(fleet, "releases").out
    assert "(working tree)" in table and "* current" in table

    write_state(fleet, acme={"release": "1", "previous_image": row["image"]})
    rows = json.loads(tenant_cli(fleet, "releases", "--json").out)
    assert [(r["version"], r["kind"], r["current"], r["tenants"], r["rollback"]) for r in rows] == [
        ("1", "release", False, ["acme"], []),
        ("2", "release", True, ["beta"], []),  # current: what beta, without a deploy of its own, runs
        ("3", "release", False, [], []),
        (None, "working-tree", False, [], ["acme"]),
    ]
    assert set(rows[0]) >= {"version", "image", "digest", "revision", "built", "current", "tenants"}

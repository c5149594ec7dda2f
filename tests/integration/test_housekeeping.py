"""Housekeeping on a real engine: `tenant releases` with the working tree, backup retention
after backups and deploys, removing releases (refused while in use, a rollback target, or
the image of a container), and kills in the middle of a removal.

Runs on a project of its own whose source is a copy of the demo, so it can build releases
that differ: 1 is the working tree as the tenants first ran it, 2 adds a migration, 3, 4
and 5 change the page only. The tests run in order and share the project.
"""
import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import docker
import docker.errors
import filelock
import pytest
import yaml

from tenantkit.orchestration import housekeeping
from tests.integration.conftest import demo_copy_project
from tests.integration.test_crash import Crash
from tests.integration.test_releases import TAG_MIGRATION, TAG_MODEL
from tests.unit.test_cli import assert_refused


class Housekeeping(Crash):
    """The crash tests' project helper (cli with failpoints, ok, killed, get), plus releases."""

    def __init__(self, root: Path, ports: dict):
        super().__init__(root, ports)
        self.name = yaml.safe_load((root / "tenantkit.yaml").read_text())["name"]
        self.engine = docker.from_env()

    def releases(self):
        return json.loads(self.ok("releases", "--json").out)

    def versions(self):
        return [r["version"] for r in self.releases() if r["kind"] == "release"]

    def archives(self, tenant):
        """The tenant's archive names, oldest first (a second one in the same second ends in -1)."""
        found = [a for a in housekeeping.archives(self.root / "backups") if a.tenant == tenant]
        return [a.path.name for a in sorted(found, key=lambda a: a.order)]

    def image_id(self, reference):
        try:
            return self.engine.images.get(reference).id
        except docker.errors.ImageNotFound:
            return None

    def change_page(self, words):
        template = self.root / "src" / "notes" / "templates" / "notes" / "home.html"
        template.write_text(re.sub(r"<h2>Notes[^<]*</h2>", f"<h2>Notes, {words}</h2>", template.read_text()))


def free_pool() -> str:
    """A /16 for this project's tenant networks that no engine network overlaps now (other
    test runs share the engine, and write_project's pool is only derived from the pid)."""
    taken = [ipaddress.IPv4Network(config["Subnet"]) for network in docker.from_env().api.networks()
             for config in (network.get("IPAM") or {}).get("Config") or [] if ":" not in config.get("Subnet", ":")]
    for n in range(60):
        pool = ipaddress.IPv4Network(f"10.{140 + (os.getpid() + n) % 60}.0.0/16")
        if not any(pool.overlaps(net) for net in taken):
            return str(pool)
    raise AssertionError("no free /16 in 10.140.0.0-10.199.255.255 for the test's tenant networks")


@pytest.fixture(scope="module")
def hk():
    root, ports = demo_copy_project("tkhk")
    config = yaml.safe_load((root / "tenantkit.yaml").read_text())
    config["backups"] = {"folder": "backups", "keep": 2}
    config["networks"] = {"pool": free_pool()}
    (root / "tenantkit.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    h = Housekeeping(root, ports)
    # Code of its own: an image built from the demo as it is may be another project's too
    # (same content, same id), and then removing a release rightly only untags it.
    (root / "src" / "housekeeping_test.txt").write_text(f"{h.name}\n")
    for name in ("hka", "hkb"):
        h.ok("new", name, "--host", f"{name}.localhost")
    h.ok("up", "--all")
    yield h
    subprocess.run(["docker", "compose", "-f", str(root / "compose" / "compose.yaml"), "down", "-v", "-t", "5"],
                   capture_output=True)
    for container in h.engine.api.containers(all=True, filters={"name": f"{h.name}-holder"}):
        h.engine.api.remove_container(container["Id"], force=True)
    for image in h.engine.images.list():  # this test's tags only; others share the engine
        for tag in image.tags:
            if tag.startswith(f"{h.name}/"):
                subprocess.run(["docker", "rmi", tag], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def one_row_each(rows, tenants=("hka", "hkb")):
    """Every tenant in exactly one row, and exactly one row current."""
    listed = [name for row in rows for name in row["tenants"]]
    assert sorted(listed) == sorted(tenants), rows
    assert sum(1 for row in rows if row["current"]) == 1, rows


def test_releases_lists_the_working_tree_and_every_tenant_once(hk):
    rows = hk.releases()
    assert [(r["kind"], r["current"], r["tenants"]) for r in rows] == [("working-tree", True, ["hka", "hkb"])]
    tree = rows[0]["image"]
    assert tree.startswith(f"{hk.name}/app:src-") and hk.image_id(tree)

    hk.ok("release", "build", "1")  # the working tree's code: the same image, tagged again
    rows = hk.releases()
    one_row_each(rows)
    assert [(r["version"], r["current"], r["tenants"]) for r in rows] == [
        ("1", False, []), (None, True, ["hka", "hkb"])]
    assert hk.image_id(f"{hk.name}/app:1") == hk.image_id(tree)

    hk.ok("deploy", "1")
    rows = hk.releases()
    one_row_each(rows)
    assert [(r["version"], r["current"], r["tenants"], r["rollback"]) for r in rows] == [
        ("1", True, ["hka", "hkb"], []), (None, False, [], ["hka", "hkb"])]  # a rollback returns there
    table = hk.ok("releases").out
    assert re.search(r"^\*\s+1\s", table, re.M) and "(working tree)" in table, table


def test_backups_keep_applies_after_backups_and_deploys_but_keeps_what_a_rollback_needs(hk):
    models = hk.root / "src" / "notes" / "models.py"
    models.write_text(models.read_text() + TAG_MODEL)
    (hk.root / "src" / "notes" / "migrations" / "0002_tag.py").write_text(TAG_MIGRATION)
    hk.change_page("release two")
    hk.ok("release", "build", "2")
    run = hk.ok("deploy", "2", "hka")
    assert "backing up first" in run.err
    [pre_deploy] = hk.archives("hka")

    for _ in range(3):
        hk.ok("backup", "hka")
    kept = hk.archives("hka")
    assert len(kept) == 3 and pre_deploy in kept  # the newest 2, and the one `tenant rollback hka` restores
    run = hk.ok("backup", "prune", "--keep", "1", "--dry-run", "--json")
    decisions = {Path(d["path"]).name: d for d in json.loads(run.out)}
    assert decisions[pre_deploy]["action"] == "keep" and "pre-deploy backup of hka" in decisions[pre_deploy]["why"]
    assert [n for n, d in decisions.items() if d["action"] == "would remove"] == [kept[1]]
    assert hk.archives("hka") == kept

    hk.change_page("release three")
    hk.ok("release", "build", "3")
    hk.change_page("release four")
    hk.ok("release", "build", "4")
    run = hk.ok("deploy", "4")  # hka: no schema change, so no backup, and nothing to roll back to needs one
    assert f"removed backups/{pre_deploy}" in run.err.replace(str(hk.root) + "/", "")
    assert hk.archives("hka") == kept[1:]
    assert len(hk.archives("hkb")) == 1  # its pre-deploy backup (1 -> 4 migrates), its newest
    assert "release four" in hk.get("hka").text and "release four" in hk.get("hkb").text
    one_row_each(hk.releases())


def test_a_release_in_use_or_that_a_rollback_needs_is_refused_and_nothing_changes(hk):
    rows = hk.releases()
    images = {v: hk.image_id(f"{hk.name}/app:{v}") for v in ("1", "2", "3", "4")}
    for versions, words in ((["4"], ["it is current", "hka runs it", "hkb runs it"]),
                            (["1"], ["hkb may roll back to it"]),
                            (["3", "2"], ["2: hka may roll back to it"])):
        assert_refused(hk.cli("release", "rm", *versions), *words, "deploy another release")
    with filelock.FileLock(str(hk.root / ".tenantkit" / "deploy.lock")):
        assert_refused(hk.cli("release", "rm", "3"), "another deploy")
        assert_refused(hk.cli("release", "prune", "--keep", "0"), "another deploy")
    assert hk.releases() == rows
    assert {v: hk.image_id(f"{hk.name}/app:{v}") for v in images} == images

    run = hk.ok("release", "prune", "--keep", "0", "--dry-run", "--json")
    outcome = json.loads(run.out)
    assert outcome["dry_run"] and [r["version"] for r in outcome["removed"]] == ["3"]
    assert {k["version"]: k["why"] for k in outcome["kept"]} == {
        "4": "it is current (new tenants start on it), hka runs it, hkb runs it",
        "2": "hka may roll back to it", "1": "hkb may roll back to it"}
    assert hk.releases() == rows


def test_a_release_whose_image_a_container_uses_is_kept_until_that_container_goes(hk):
    tag = f"{hk.name}/app:3"
    image = hk.image_id(tag)
    stale = [t for t in hk.engine.images.get(tag).tags if ":src-" in t]
    assert stale  # the working tree it was built from, since changed: nothing needs that tag
    holder = hk.engine.api.create_container(tag, command=["true"], name=f"{hk.name}-holder")
    try:
        # Another tag keeps the image the container uses: only the release's own tag would go.
        [plan] = json.loads(hk.ok("release", "rm", "3", "--dry-run", "--json").out)["removed"]
        assert plan["untag"] == [tag] and not plan["image_deleted"]
        hk.engine.images.remove(stale[0])  # now the release's tag is the image's last
        assert_refused(hk.cli("release", "rm", "3"), f"{hk.name}-holder", "still exists", "nothing removed")
        outcome = json.loads(hk.ok("release", "prune", "--keep", "0", "--json").out)
        assert outcome["removed"] == [] and f"{hk.name}-holder" in {k["version"]: k["why"]
                                                                   for k in outcome["kept"]}["3"]
        assert hk.image_id(tag) == image and "3" in hk.versions()
    finally:
        hk.engine.api.remove_container(holder["Id"], force=True)

    run = hk.ok("release", "rm", "3")
    assert "removed 1 release(s)" in run.out and "(image deleted)" in run.out
    assert hk.image_id(image) is None and hk.image_id(tag) is None  # the image itself is gone
    assert "3" not in hk.versions()
    assert hk.image_id(f"{hk.name}/app:4") and "release four" in hk.get("hka").text


def test_a_removal_killed_at_any_step_is_completed_by_running_it_again(hk):
    hk.change_page("release five")
    hk.ok("release", "build", "5")
    hk.ok("deploy", "5")  # 1 and 2 are no one's now: 4 is what a rollback returns to
    one_row_each(hk.releases())
    assets = hk.root / "compose" / "assets"
    assert (assets / "1").is_dir() and (assets / "2").is_dir()
    image_1 = hk.image_id(f"{hk.name}/app:1")
    [plan] = json.loads(hk.ok("release", "rm", "1", "--dry-run", "--json").out)["removed"]
    # The working tree the tenants first ran, tagged 1: its src- tag, which nothing needs now, goes too.
    assert plan["image_deleted"] and len(plan["untag"]) == 2 and ":src-" in plan["untag"][0]

    hk.killed("release", "rm", "1", failpoint="release-rm:untagged")  # after the first tag
    assert "1" in hk.versions()  # the record goes last
    run = hk.ok("release", "rm", "1", "--json")
    assert json.loads(run.out)["removed"][0]["version"] == "1"
    assert "1" not in hk.versions() and not (assets / "1").exists() and hk.image_id(image_1) is None

    hk.killed("release", "prune", "--keep", "1", failpoint="release-rm:assets-removed")
    assert "2" in hk.versions() and not (assets / "2").exists() and hk.image_id(f"{hk.name}/app:2") is None
    outcome = json.loads(hk.ok("release", "prune", "--keep", "1", "--json").out)
    assert [r["version"] for r in outcome["removed"]] == ["2"]
    assert {k["version"] for k in outcome["kept"]} == {"5", "4"}
    assert hk.versions() == ["4", "5"] and not list(assets.glob(".2.*"))
    for name in ("hka", "hkb"):
        assert "release five" in hk.get(name).text
    hk.ok("rollback", "hka")  # what it may roll back to is still there
    assert "release four" in hk.get("hka").text


def test_backup_prune_keeps_a_removed_tenants_archive_and_survives_a_kill(hk):
    hk.ok("new", "hkc", "--host", "hkc.localhost")
    hk.ok("up", "hkc")
    hk.ok("backup", "hkc")
    hk.ok("backup", "hkc")
    hk.ok("rm", "hkc", "--yes")
    made_by_rm = hk.archives("hkc")[-1]
    assert made_by_rm in hk.archives("hkc") and len(hk.archives("hkc")) == 3

    run = hk.ok("backup", "prune", "--json")  # backups.keep: 2, and removed tenants' archives are left alone
    assert all(d["action"] == "keep" for d in json.loads(run.out) if d["tenant"] == "hkc")
    assert len(hk.archives("hkc")) == 3

    hk.killed("backup", "prune", "--keep", "1", "--removed", failpoint="backup-prune:removed-one")
    hk.ok("backup", "prune", "--keep", "1", "--removed")
    assert hk.archives("hkc") == [made_by_rm]  # the newest of a removed tenant: the one `tenant rm` made
    assert len(hk.archives("hka")) == 1 and len(hk.archives("hkb")) == 1
    hk.ok("restore", str(hk.root / "backups" / made_by_rm))  # and it still brings the tenant back
    assert hk.get("hkc").status_code == 200

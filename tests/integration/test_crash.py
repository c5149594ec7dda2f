"""Every state survives a crash: a kill -9 at each step of rm, restore, clone, deploy and
rollback leaves the old state, the new one, or one that running the command again completes.

The kill is a failpoint (act/failpoints.py): TENANTKIT_FAILPOINT=COMMAND:STEP makes the CLI
exit at once with status 137, skipping every cleanup, as SIGKILL would.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from tenantkit.act.failpoints import KILLED, STEPS
from tests.conftest import tenant_cli
from tests.integration.conftest import admin_sql, demo_copy_project
from tests.integration.test_releases import TAG_MIGRATION, TAG_MODEL


def host(name):
    return f"{name.replace('_', '-')}.localhost"


class Crash:
    def __init__(self, root: Path, ports: dict):
        self.root, self.ports = root, ports

    def cli(self, *args, failpoint=None):
        env = {**os.environ, "TENANTKIT_FAILPOINT": failpoint} if failpoint else None
        return tenant_cli(self.root, *args, env=env)

    def ok(self, *args):
        run = self.cli(*args)
        assert run.code == 0, f"tenant {' '.join(args)}: {run.err}"
        return run

    def killed(self, *args, failpoint):
        run = self.cli(*args, failpoint=failpoint)
        assert run.code == KILLED, f"{failpoint} was not reached: {run.code} {run.err}"
        return run

    def get(self, name, path="/"):
        return requests.get(f"http://127.0.0.1:{self.ports['proxy']}{path}", headers={"Host": host(name)},
                            timeout=10)

    def add_note(self, name, text):
        session = requests.Session()
        session.headers["Host"] = host(name)
        url = f"http://127.0.0.1:{self.ports['proxy']}"
        session.get(url + "/", timeout=10)
        response = session.post(url + "/notes/", data={"text": text, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                                timeout=10, allow_redirects=False)
        assert response.status_code == 302

    def sql(self, query, dbname="postgres"):
        return admin_sql(self.root, self.ports["db"], query, dbname)

    def databases(self):
        return {row[0] for row in self.sql("SELECT datname FROM pg_database")}

    def roles(self):
        return {row[0] for row in self.sql("SELECT rolname FROM pg_roles")}

    def new_up(self, name, note=None):
        self.ok("new", name, "--host", host(name))
        self.ok("up", name)
        if note:
            self.add_note(name, note)


@pytest.fixture(scope="module")
def crash():
    root, ports = demo_copy_project("tkcrash")
    c = Crash(root, ports)
    c.new_up("base", "a note of base")
    yield c
    subprocess.run(["docker", "compose", "-f", str(root / "compose" / "compose.yaml"), "down", "-v", "-t", "5"],
                   capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("step", STEPS["rm"])
def test_rm_killed_at_any_step_never_restarts_on_an_empty_database(crash, step):
    name = f"rm_{step.replace('-', '_')}"
    crash.new_up(name, f"kept by {name}")
    crash.killed("rm", name, "--yes", failpoint=f"rm:{step}")
    if name in crash.databases():
        assert crash.cli("up", name).code in (0, 2)  # old state (or a refusal): never data-less
    else:  # dropped: the tenant must not come back on an empty database
        refused = crash.cli("up", name)
        assert refused.code == 2 and ("being removed" in refused.err or "unknown tenant" in refused.err), refused
    again = crash.cli("rm", name, "--yes")
    assert again.code == 0 or (step == "moved" and "unknown tenant" in again.err), again.err
    assert not (crash.root / "tenants" / name).exists() and not (crash.root / "media" / name).exists()
    assert name not in crash.databases() and name not in crash.roles()
    assert not (crash.root / ".tenantkit" / "trash").exists() or step == "moved"
    archives = sorted((crash.root / "backups").glob(f"{name}-*.tar.gz"))
    assert archives, "the archive was made before anything was dropped"
    if step == "dropped":  # ...and it restores
        crash.ok("restore", str(archives[-1]))
        assert f"kept by {name}" in crash.get(name).text


@pytest.fixture(scope="module")
def base_archive(crash):
    run = crash.ok("backup", "base", "--json")
    return json.loads(run.out)[0]


@pytest.mark.parametrize("step", STEPS["restore"])
def test_restore_killed_at_any_step_completes_when_run_again(crash, base_archive, step):
    name = f"rs_{step}"
    args = ("restore", base_archive, "--as", name, "--host", host(name))
    crash.killed(*args, failpoint=f"restore:{step}")
    assert not list((crash.root / "tenants").glob(f".{name}.*")) or step != "placed"
    again = crash.cli(*args)
    if step == "placed":  # the tenant was in place: the new state, and `up` starts it
        assert again.code == 2 and "already exists" in again.err
        crash.ok("up", name)
    else:
        assert again.code == 0, again.err
    assert "a note of base" in crash.get(name).text
    assert not list((crash.root / "tenants").glob(f".{name}.*"))  # no staging folder (with secrets) left
    assert not list((crash.root / ".tenantkit").glob("restore-*"))
    crash.ok("down", name)


@pytest.mark.parametrize("step", STEPS["clone"])
def test_clone_killed_at_any_step_completes_when_run_again(crash, step):
    name = f"cl_{step}"
    args = ("clone", "base", name, "--host", host(name))
    crash.killed(*args, failpoint=f"clone:{step}")
    again = crash.cli(*args)
    if step == "placed":
        assert again.code == 2 and "already exists" in again.err
        crash.ok("up", name)
    else:
        assert again.code == 0, again.err
    assert "a note of base" in crash.get(name).text
    crash.ok("down", name)


DEPLOYED = {step: f"dk_{step.replace('-', '_')}" for step in STEPS["deploy"]}  # a tenant per deploy step
ROLLED = {step: f"rb_{step}" for step in STEPS["rollback"]}  # ...and per rollback step


@pytest.fixture(scope="module")
def releases(crash):
    crash.ok("release", "build", "1")
    for name in [*DEPLOYED.values(), *ROLLED.values()]:  # on release 1's schema: release 2 migrates them
        crash.new_up(name, f"a note of {name}")
    models = crash.root / "src" / "notes" / "models.py"
    models.write_text(models.read_text() + TAG_MODEL)
    (crash.root / "src" / "notes" / "migrations" / "0002_tag.py").write_text(TAG_MIGRATION)
    crash.ok("release", "build", "2")
    crash.new_up("dep", "a note before any release")
    return crash


def _image_in_compose_file(crash, name):
    doc = yaml.safe_load((crash.root / "compose" / "tenants" / f"{name}.yaml").read_text())
    return doc["services"][f"tenant-{name}"]["image"]


def test_a_first_deploy_can_be_rolled_back_to_the_image_it_ran_before(releases):
    crash = releases
    first = _image_in_compose_file(crash, "dep")
    assert ":src-" in first  # the working tree's image: no release yet
    crash.ok("deploy", "1", "dep")
    assert _image_in_compose_file(crash, "dep").endswith(":1")
    crash.ok("rollback", "dep")
    assert _image_in_compose_file(crash, "dep") == first
    assert "a note before any release" in crash.get("dep").text


@pytest.mark.parametrize("step", STEPS["deploy"])
def test_deploy_killed_at_any_step_completes_when_run_again(releases, step):
    crash, name = releases, DEPLOYED[step]
    crash.killed("deploy", "2", name, failpoint=f"deploy:{step}")
    assert crash.get(name, "/healthz/").status_code == 200  # served throughout, by one slot or the other
    run = crash.ok("deploy", "2", name, "--json")
    # Killed when done, it may have left the old container stopping: the run again removes it.
    assert json.loads(run.out)[0]["result"] in (("ok", "up-to-date") if step == "done" else ("ok",))
    assert crash.get(name, "/healthz/").status_code == 200
    project = yaml.safe_load((crash.root / "tenantkit.yaml").read_text())["name"]
    mine = [line for line in subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}} {{.Image}}"],
                                            capture_output=True, text=True).stdout.splitlines()
            if line.startswith(f"{project}-tenant-{name}-")]
    assert len(mine) == 1 and mine[0].endswith("/app:2"), mine  # one container: the old slot's is gone
    assert ("notes_tag",) in crash.sql("SELECT tablename FROM pg_tables", dbname=name)
    assert f"a note of {name}" in crash.get(name).text
    # The pre-deploy backup was recorded whatever the step: the rollback restores the old schema.
    crash.ok("rollback", name)
    assert ("notes_tag",) not in crash.sql("SELECT tablename FROM pg_tables", dbname=name)
    assert f"a note of {name}" in crash.get(name).text
    crash.ok("down", name)


@pytest.mark.parametrize("step", STEPS["rollback"])
def test_rollback_killed_at_any_step_completes_when_run_again(releases, step):
    crash, name = releases, ROLLED[step]
    crash.ok("deploy", "2", name)  # migrates: the rollback restores the database from before it
    crash.add_note(name, f"on release 2, lost by the rollback at {step}")
    crash.killed("rollback", name, failpoint=f"rollback:{step}")
    assert name in crash.databases()  # a database is in place at every step
    again = crash.cli("rollback", name)
    assert again.code == 0 or (step == "recorded" and "no previous release" in again.err), again.err
    page = crash.get(name).text
    assert f"a note of {name}" in page and "lost by the rollback" not in page
    assert not {db for db in crash.databases() if db.startswith(("tk_new_", "tk_old_"))}
    crash.ok("down", name)


def test_a_release_whose_app_does_not_start_leaves_the_tenant_on_its_release(releases):
    crash = releases
    crash.ok("deploy", "2", "dep")
    urls = crash.root / "src" / "main" / "urls.py"
    good = urls.read_text()
    urls.write_text(good + "\nraise RuntimeError('release 3 does not start')\n")
    try:
        crash.ok("release", "build", "3")
    finally:
        urls.write_text(good)
    run = crash.cli("deploy", "3", "dep", "--json")
    assert run.code == 1 and json.loads(run.out)[0]["result"] == "failed"
    assert crash.get("dep", "/healthz/").status_code == 200
    assert json.loads(crash.ok("releases", "--json").out)[1]["tenants"] == ["dep"]  # still on 2
    assert crash.get("base", "/healthz/").status_code == 200  # the others never noticed

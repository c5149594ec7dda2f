"""The mistakes a new operator makes, met as that operator would meet them, on a real stack:
caught before they bite, failures that say why, one broken tenant never blocking the rest.

Runs on a project of its own (tenants op1..op3 up, behind the compose proxy), torn down at
the end of the module.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import docker
import pytest
import yaml

from tests.conftest import REPO
from tests.integration.conftest import Stack, own_stack

BROKEN_LOCAL = "raise ImportError('this local_settings.py is broken on purpose')\n"


@pytest.fixture(scope="module")
def ops():
    with own_stack("tkop", ("op1", "op2", "op3")) as s:
        yield s


def project_name(s: Stack) -> str:
    return yaml.safe_load((s.root / "tenantkit.yaml").read_text())["name"]


def container_id(s: Stack, name: str) -> str:
    listed = docker.from_env().api.containers(filters={"label": [
        f"com.docker.compose.project={project_name(s)}", f"com.docker.compose.service=tenant-{name}"]})
    assert len(listed) == 1, listed
    return listed[0]["Id"]


def files(s: Stack, name: str) -> dict[str, bytes]:
    folder = s.root / "tenants" / name
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def refused(run, *words):
    assert run.code == 2, run
    assert run.err.count("\n") == 1 and all(w in run.err for w in words), run.err


# 1. Ports -----------------------------------------------------------------------------

def test_a_port_typo_is_refused_at_set_time(ops):
    before = files(ops, "op1")
    refused(ops.cli("set", "op1", f"port={ops.proxy_port()}"), "the proxy's", "choose another port")
    refused(ops.cli("set", "op1", f"port={ops.db_port()}"), "the database's", "choose another port")
    with socket.socket() as listener:  # another program on the host
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        refused(ops.cli("set", "op1", f"port={taken}"), f"port {taken} is in use", "choose another port")
    refused(ops.cli("set", "op1", f"port={ops.port('op2')}"), "tenant 'op2'")
    assert files(ops, "op1") == before
    assert ops.get("op1", "/healthz/").status_code == 200


def test_up_of_one_tenant_touches_no_other_tenants_network(ops):
    ops.ok("new", "idle")
    try:
        ops.ok("up", "op1")
        networks = [n.name for n in docker.from_env().networks.list(names=[f"{project_name(ops)}_tenant-idle"])]
        assert networks == []
    finally:
        ops.ok("rm", "idle", "--yes")


# 2. A failed up leaves what runs as it was -------------------------------------------------

def test_set_refuses_apps_that_do_not_load(ops):
    before = files(ops, "op2")
    run = ops.cli("set", "op2", "apps=nosuchapp")
    refused(run, "nosuchapp", "tenant.yaml was not changed")
    assert "ModuleNotFoundError" in run.err
    assert files(ops, "op2") == before


def test_a_failed_up_keeps_the_running_container_and_its_files(ops):
    running = container_id(ops, "op2")
    before = files(ops, "op2")
    ops.edit_tenant_yaml("op2", apps=["nosuchapp"])  # by hand: `set` would have refused it
    try:
        run = ops.cli("up", "op2")
        assert run.code == 1 and "No module named 'nosuchapp'" in run.err, run
        assert "Nothing of op2 was changed" in run.err
        after = files(ops, "op2")
        assert after["settings.py"] == before["settings.py"]
        assert container_id(ops, "op2") == running
        assert ops.get("op2", "/healthz/").status_code == 200
        # A command on it still works, on the settings it has, and says so.
        check = ops.cli("manage", "op2", "--", "check")
        assert check.code == 0 and "do not load" in check.err, check
        rendered = ops.cli("render")
        assert rendered.code == 1 and "tenant op2" in rendered.err and "nosuchapp" in rendered.err, rendered
        ops.ok("maintenance", "op2", "on")  # its vhost follows tenant.yaml all the same
        try:
            assert ops.via_proxy("op2.localhost").status_code == 503
        finally:
            ops.ok("maintenance", "op2", "off")
        assert files(ops, "op2")["settings.py"] == before["settings.py"]
        # So does a restart: the files the container reads are the ones it started with.
        docker.from_env().containers.get(running).restart(timeout=5)
        ops.ok("up", "op1")  # waits for nothing of op2; give op2's restart time below
        for _ in range(100):
            if ops.get("op2", "/healthz/").status_code == 200:
                break
            time.sleep(0.1)
        assert ops.get("op2", "/healthz/").status_code == 200
        assert yaml.safe_load(files(ops, "op2")["tenant.yaml"])["apps"] == ["nosuchapp"]  # the change is kept
    finally:
        ops.edit_tenant_yaml("op2", apps=[])
        ops.ok("up", "op2")


def test_a_failed_migrate_puts_the_old_files_back(ops):
    """Settings that load, but a migration that fails: the running container keeps the
    settings.py it read, and tenant.yaml keeps the operator's change."""
    running = container_id(ops, "op3")
    before = files(ops, "op3")["settings.py"]
    blocker = ("from django.db import connection; "
               "connection.cursor().execute('CREATE TABLE auth_blocker (id integer)')")
    ops.ok("manage", "op3", "--", "shell", "-c", blocker)
    app = ops.root / "tenants" / "op3" / "failing"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "migrations" / "0001_initial.py").write_text(
        "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n"
        "    operations = [migrations.RunSQL('CREATE TABLE auth_blocker (id integer)')]\n")
    try:
        ops.edit_tenant_yaml("op3", apps=["failing"], title="Op Three")
        run = ops.cli("up", "op3")
        assert run.code == 1 and "auth_blocker" in run.err, run
        assert files(ops, "op3")["settings.py"] == before
        assert container_id(ops, "op3") == running
        assert ops.get("op3", "/healthz/").status_code == 200
    finally:
        shutil.rmtree(app)
        ops.edit_tenant_yaml("op3", apps=[], title="Op3")
        ops.ok("up", "op3")
        ops.ok("manage", "op3", "--", "shell", "-c", blocker.replace("CREATE TABLE auth_blocker (id integer)",
                                                                      "DROP TABLE auth_blocker"))


# 3. One broken tenant never blocks the rest -------------------------------------------------

@pytest.fixture
def broken_op1(ops):
    """op1 whose own code no longer loads (its running container loaded it before)."""
    local = ops.root / "tenants" / "op1" / "local_settings.py"
    local.write_text(BROKEN_LOCAL)
    try:
        yield "op1"
    finally:
        local.unlink()


def test_migrate_all_reports_the_broken_tenant_and_checks_the_others(ops, broken_op1):
    run = ops.cli("migrate", "--all", "--json")
    assert run.code == 1, run
    outcomes = {o["tenant"]: o["result"] for o in json.loads(run.out)}
    assert outcomes == {"op1": "failed", "op2": "up-to-date", "op3": "up-to-date"}
    assert "broken on purpose" in run.err and "settings do not load: op1" in run.err


def test_up_all_starts_the_others_past_a_broken_tenant(ops, broken_op1):
    ops.ok("down", "op2")
    run = ops.cli("up", "--all")
    assert run.code == 1 and "broken on purpose" in run.err, run
    assert re.search(r"^op2\t", run.out, re.M) and re.search(r"^op3\t", run.out, re.M)
    assert ops.get("op2", "/healthz/").status_code == 200


def test_deploy_goes_on_past_a_broken_tenant(ops, broken_op1):
    ops.ok("release", "build", "1.0")
    run = ops.cli("deploy", "1.0", "--json")  # no --keep-going: only a tenant of its own is passed over
    assert run.code == 1, run
    outcomes = {o["tenant"]: o["result"] for o in json.loads(run.out)}
    assert outcomes == {"op1": "failed", "op2": "ok", "op3": "ok"}
    status = {row["name"]: row["image"] for row in json.loads(ops.ok("status", "--json").out)}
    assert status["op2"].endswith(":1.0") and status["op3"].endswith(":1.0")
    assert not status["op1"].endswith(":1.0")
    assert ops.get("op1", "/healthz/").status_code == 200


# 4, 5. rm in every state ---------------------------------------------------------------

def test_rm_of_a_tenant_that_never_started_archives_what_exists(ops):
    ops.ok("new", "never", "--title", "Never Started")
    nothing = ops.cli("backup", "never", "op1", "--json")  # no data to back up: said, and the others go on
    assert nothing.code == 1 and "has no database" in nothing.err and "tenant up never" in nothing.err, nothing
    made = json.loads(nothing.out)
    assert len(made) == 1 and Path(made[0]).name.startswith("op1-")
    run = ops.ok("rm", "never", "--yes")
    archive = Path(re.search(r"archive: (\S+)", run.out).group(1))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "tenant/tenant.yaml" in names and "database.dump" not in names
    assert not (ops.root / "tenants" / "never").exists()
    ops.ok("restore", str(archive))  # and it restores, as a tenant whose database `up` made
    assert ops.get("never", "/healthz/").status_code == 200
    ops.ok("rm", "never", "--yes")


def test_a_tenant_made_anew_after_rm_forgets_the_old_release(ops):
    ops.ok("new", "again")
    ops.ok("up", "again")
    if "1.0" not in ops.ok("releases").out:
        ops.ok("release", "build", "1.0")
    ops.ok("deploy", "1.0", "again")
    ops.ok("rm", "again", "--yes")
    assert not list((ops.root / ".tenantkit" / "logs").glob("again.*"))  # its proxy logs went too
    ops.ok("new", "again")
    ops.ok("up", "again")
    row = json.loads(ops.ok("status", "again", "--json").out)[0]
    assert not row["image"].endswith(":1.0"), row
    ops.ok("rm", "again", "--yes")


# 6. Failures are visible -----------------------------------------------------------------

def test_a_500_leaves_its_traceback_in_tenant_logs(ops):
    hide = ("from django.db import connection; "
            "connection.cursor().execute('ALTER TABLE notes_note RENAME TO notes_hidden')")
    ops.ok("manage", "op3", "--", "shell", "-c", hide)
    try:
        assert ops.get("op3", "/").status_code == 500
        logs = ops.ok("logs", "op3", "--tail", "300").out
        assert "Traceback" in logs and 'relation "notes_note" does not exist' in logs
    finally:
        ops.ok("manage", "op3", "--", "shell", "-c", hide.replace("notes_note RENAME TO notes_hidden",
                                                                   "notes_hidden RENAME TO notes_note"))


def test_list_and_status_show_why_a_tenant_is_unhealthy(ops):
    db = docker.from_env().containers.get(f"{project_name(ops)}-db-1")

    def login(allowed: bool) -> None:  # the database refuses op3's role, as after a bad restore
        db.exec_run(["psql", "-U", "postgres", "-c", f"ALTER ROLE op3 {'LOGIN' if allowed else 'NOLOGIN'}"])

    login(False)
    try:
        rows = {r["name"]: r for r in json.loads(ops.ok("list", "--json").out)}
        assert rows["op3"]["health"] == "unhealthy: /healthz/ answered 503", rows["op3"]
        assert "unhealthy: /healthz/ answered 503" in ops.ok("status", "op3").out
    finally:
        login(True)
    assert json.loads(ops.ok("status", "op3", "--json").out)[0]["health"] == "healthy"


# 7. Pins --------------------------------------------------------------------------------

def test_a_pin_to_a_release_that_does_not_exist(ops):
    refused(ops.cli("set", "op3", "release=nope"), "unknown release 'nope'", "tenant release build nope")
    ops.edit_tenant_yaml("op3", release="nope")  # by hand
    try:
        refused(ops.cli("up", "op3"), "pinned to release 'nope', which does not exist", "tenant set op3 release=")
        run = ops.cli("up", "--all")  # the others are not held back by it
        assert run.code == 1 and "pinned to release 'nope'" in run.err, run
        assert re.search(r"^op1\t", run.out, re.M) and re.search(r"^op2\t", run.out, re.M)
        outcomes = {o["tenant"]: o["result"] for o in json.loads(ops.cli("migrate", "--all", "--json").out)}
        assert outcomes["op3"] == "failed" and outcomes["op1"] == "up-to-date"
    finally:
        ops.edit_tenant_yaml("op3", release=None)


# 9. manage: stdin and environment ----------------------------------------------------------

def test_manage_passes_stdin_and_environment(ops):
    run = subprocess.run([sys.executable, str(REPO / "tools" / "tenant"), "--project", str(ops.root),
                          "manage", "op1", "--", "shell"], input="print(6 * 7)\n", capture_output=True, text=True)
    assert run.returncode == 0 and "42" in run.stdout, run
    env = {**os.environ, "DJANGO_SUPERUSER_PASSWORD": "a-long-Passw0rd"}
    run = ops.cli("manage", "op1", "-e", "DJANGO_SUPERUSER_PASSWORD", "-e", "DJANGO_SUPERUSER_EMAIL=ops@example.com",
                  "--", "createsuperuser", "--noinput", "--username", "ops", env=env)
    assert run.code == 0, run
    login = ("from django.contrib.auth import authenticate; "
             "u = authenticate(username='ops', password='a-long-Passw0rd'); print('found', u.email)")
    assert "found ops@example.com" in ops.ok("manage", "op1", "--", "shell", "-c", login).out


# 8, 10. States and wording --------------------------------------------------------------

def test_states_and_wording(ops):
    run = ops.ok("up", "op1")
    assert "starting" not in run.err and "op1 is healthy" in run.err  # nothing to change: nothing started
    assert json.loads(ops.ok("list", "--json").out)[0]["health"] == "healthy"
    for verb in (["rm", "op1x", "--yes"], ["rollback", "op1x"], ["up", "op1x"]):
        refusal = ops.cli(*verb)
        assert refusal.code == 2 and "did you mean 'op1'" in refusal.err and "tenant new" not in refusal.err
    hint = ops.ok("new", "hinted").out
    assert f"start it with: {REPO}/tools/tenant up hinted" in hint
    refused(ops.cli("set", "hinted", "hosts=op1.localhost"), "already used by tenant 'op1'", "choose another host name")
    ops.ok("rm", "hinted", "--yes")
    ops.ok("maintenance", "op2", "on")
    try:
        assert re.search(r"^op2\s+running \(maintenance\)", ops.ok("list").out, re.M)
        assert json.loads(ops.ok("list", "--json").out)[1]["maintenance"] is True
    finally:
        ops.ok("maintenance", "op2", "off")
    table = ops.ok("status", "op1").out.splitlines()
    uptime = table[1].split()[table[0].split().index("UPTIME") - 1]  # the header "OOM KILLS" is two words
    assert re.fullmatch(r"\d+s|\d+m\d\ds|\d+h\d\dm|\d+d\d+h", uptime), uptime

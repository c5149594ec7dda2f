"""Releases: build, deploy without downtime, survive a broken release, roll back; dev mode.

Runs on a project of its own whose source is a copy of the demo, so releases can change
code: release 2 adds a migration and changes the page, release 3's migration fails.
"""
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import filelock
import psycopg2
import pytest
import requests

from tests.conftest import tenant_cli
from tests.integration.conftest import demo_copy_project

TAG_MODEL = '''

class Tag(models.Model):
    name = models.CharField(max_length=50)
'''
TAG_MIGRATION = '''from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("notes", "0001_initial")]
    operations = [migrations.CreateModel("Tag", fields=[
        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
        ("name", models.CharField(max_length=50)),
    ])]
'''
BROKEN_MIGRATION = '''from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("release 3 is broken on purpose")


class Migration(migrations.Migration):
    dependencies = [("notes", "0002_tag")]
    operations = [migrations.RunPython(fail)]
'''


class Releases:
    def __init__(self, root: Path):
        self.root, self.source = root, root / "src"

    def cli(self, *args):
        return tenant_cli(self.root, *args)

    def ok(self, *args):
        run = self.cli(*args)
        assert run.code == 0, f"tenant {' '.join(args)}: {run.err}"
        return run

    def proxy_port(self):
        return int(self.root.joinpath("proxy-port").read_text())

    def get(self, name, path="/"):
        return requests.get(f"http://127.0.0.1:{self.proxy_port()}{path}", headers={"Host": f"{name}.localhost"},
                            timeout=10)

    def add_note(self, name, text):
        session = requests.Session()
        session.headers["Host"] = f"{name}.localhost"
        url = f"http://127.0.0.1:{self.proxy_port()}"
        session.get(url + "/", timeout=10)
        response = session.post(url + "/notes/", data={"text": text, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                                timeout=10, allow_redirects=False)
        assert response.status_code == 302

    def tables(self, name):
        env = (self.root / ".tenantkit" / "db.env").read_text()
        password = env.split("POSTGRES_PASSWORD=")[1].split()[0]
        port = json.loads(self.root.joinpath("ports.json").read_text())["db"]
        with psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=password, dbname=name) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                return {row[0] for row in cur.fetchall()}

    def notes(self, name):
        page = self.get(name).text
        return sorted(line.split(">")[1].split("<")[0] for line in page.splitlines() if 'class="note"' in line)


@pytest.fixture(scope="module")
def rel():
    root, ports = demo_copy_project("tkrel")
    (root / "ports.json").write_text(json.dumps(ports))
    (root / "proxy-port").write_text(str(ports["proxy"]))
    r = Releases(root)
    for name in ("rela", "relb"):
        r.ok("new", name, "--host", f"{name}.localhost")
    r.ok("up", "--all")
    yield r
    subprocess.run(["docker", "compose", "-f", str(root / "compose" / "compose.yaml"), "down", "-v", "-t", "5"],
                   capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_a_release_is_built_once_and_listed(rel):
    record = json.loads(rel.ok("release", "build", "1", "--json").out)
    assert record["version"] == "1" and record["image"].endswith(":1") and len(record["digest"]) == 64
    refused = rel.cli("release", "build", "1")
    assert refused.code == 2 and "immutable" in refused.err
    rel.ok("deploy", "1")
    rows = json.loads(rel.ok("releases", "--json").out)
    assert rows[0]["version"] == "1" and rows[0]["current"] and rows[0]["tenants"] == ["rela", "relb"]
    for name in ("rela", "relb"):
        rel.add_note(name, f"written under release 1 in {name}")


def test_deploying_release_2_changes_pages_and_schemas_without_a_failed_request(rel):
    """...while other `tenant` processes change tenants: the deploy's routes are stored state,
    so a concurrent `set` of a deploying tenant and `maintenance` of another keep them."""
    models = rel.source / "notes" / "models.py"
    models.write_text(models.read_text() + TAG_MODEL)
    (rel.source / "notes" / "migrations" / "0002_tag.py").write_text(TAG_MIGRATION)
    template = rel.source / "notes" / "templates" / "notes" / "home.html"
    template.write_text(template.read_text().replace("<h2>Notes</h2>", "<h2>Notes, release two</h2>"))
    rel.ok("release", "build", "2")
    rel.ok("new", "relc", "--host", "relc.localhost")
    rel.ok("set", "relc", "release=1")  # pinned: this deploy leaves it alone
    rel.ok("up", "relc")

    results, stop = {"rela": [], "relb": []}, threading.Event()
    side_runs = []

    def load(name):
        deadline = time.monotonic() + 180
        while not stop.is_set() and len(results[name]) < 20000 and time.monotonic() < deadline:
            try:
                results[name].append(rel.get(name, "/healthz/").status_code)
            except requests.RequestException as exc:
                results[name].append(repr(exc))

    def side(*commands):
        deadline = time.monotonic() + 180
        i = 0
        while not stop.is_set() and time.monotonic() < deadline:
            side_runs.append(rel.cli(*[word.format(i=i) for word in commands[i % len(commands)]]))
            i += 1

    threads = [threading.Thread(target=load, args=(name,)) for name in results]
    threads.append(threading.Thread(target=side, args=(("maintenance", "relc", "on"), ("maintenance", "relc", "off"))))
    threads.append(threading.Thread(target=side, args=(("set", "relb", "title=Rel B {i}"),)))
    for thread in threads:
        thread.start()
    try:
        run = rel.ok("deploy", "2", "--json")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert {o["tenant"]: o["result"] for o in json.loads(run.out)} == {"rela": "ok", "relb": "ok"}
    for name, statuses in results.items():
        assert len(statuses) > 50 and [r for r in statuses if r != 200] == [], name
    assert len(side_runs) >= 4 and all(r.code == 0 for r in side_runs), [r.err for r in side_runs if r.code]
    rel.ok("maintenance", "relc", "off")
    assert rel.get("relc").status_code == 200 and "Notes, release two" not in rel.get("relc").text
    rel.ok("rm", "relc", "--yes")
    for name in ("rela", "relb"):
        assert "Notes, release two" in rel.get(name).text
        assert "notes_tag" in rel.tables(name)
        assert f"written under release 1 in {name}" in rel.notes(name)
        rel.add_note(name, f"written under release 2 in {name}")


def test_a_broken_release_leaves_every_tenant_serving_the_previous_one(rel):
    (rel.source / "notes" / "migrations" / "0003_broken.py").write_text(BROKEN_MIGRATION)
    rel.ok("release", "build", "3")
    before = {name: rel.notes(name) for name in ("rela", "relb")}
    run = rel.cli("deploy", "3", "--jobs", "1", "--json")
    assert run.code == 1 and "deploy failed for rela" in run.err
    outcomes = {o["tenant"]: o["result"] for o in json.loads(run.out)}
    assert outcomes == {"rela": "failed", "relb": "skipped"}  # stops at the first failure
    run = rel.cli("deploy", "3", "--keep-going", "--json")
    assert {o["result"] for o in json.loads(run.out)} == {"failed"}
    for name in ("rela", "relb"):
        assert "Notes, release two" in rel.get(name).text
        assert rel.notes(name) == before[name]
    rows = {r["version"]: r for r in json.loads(rel.ok("releases", "--json").out)}
    assert rows["2"]["current"] and rows["2"]["tenants"] == ["rela", "relb"]


def test_rolling_back_across_a_schema_change_restores_consistent_data(rel):
    rel.ok("rollback", "rela")
    page = rel.get("rela").text
    assert "Notes, release two" not in page and "<h2>Notes</h2>" in page
    assert "notes_tag" not in rel.tables("rela")
    assert rel.notes("rela") == ["written under release 1 in rela"]  # as it was before deploy 2
    assert "Notes, release two" in rel.get("relb").text  # the other tenant stays on 2
    refused = rel.cli("rollback", "rela")
    assert refused.code == 2 and "no previous release" in refused.err


def test_bad_deploys_are_refused_with_one_line(rel):
    run = rel.cli("deploy", "9.9")
    assert run.code == 2 and "unknown release '9.9'" in run.err and len(run.err.strip().splitlines()) == 1
    lock = filelock.FileLock(str(rel.root / ".tenantkit" / "deploy.lock"))
    with lock:
        run = rel.cli("deploy", "2")
    assert run.code == 2 and "another deploy" in run.err
    run = rel.cli("rollback", "nobody")
    assert run.code == 2 and "unknown tenant" in run.err


def test_dev_mode_serves_edits_to_the_working_tree_in_every_tenant(rel):
    (rel.source / "notes" / "migrations" / "0003_broken.py").unlink()  # the developer fixes the tree
    rel.ok("dev", "on")
    try:
        for name in ("rela", "relb"):
            assert rel.get(name).status_code == 200
        time.sleep(2)  # as a developer would: the reloader has seen the files it serves
        template = rel.source / "notes" / "templates" / "notes" / "home.html"
        template.write_text(template.read_text().replace("<h2>Files</h2>", "<h2>Files, edited live</h2>"))
        views = rel.source / "notes" / "views.py"
        views.write_text(views.read_text().replace('"status": "ok"', '"status": "ok", "edited": True'))
        def edited(name):  # the server restarts on the Python edit: retry through the gap
            try:
                return rel.get(name, "/healthz/").json().get("edited") is True and \
                    "Files, edited live" in rel.get(name).text
            except (ValueError, requests.RequestException):
                return False

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(edited(n) for n in ("rela", "relb")):
            time.sleep(0.5)
        for name in ("rela", "relb"):
            assert edited(name)
            assert f"<code id=\"database\">{name}</code>" in rel.get(name).text  # own settings and database
    finally:
        rel.ok("dev", "off")
    assert "Files, edited live" not in rel.get("relb").text  # back on its release


def test_a_pinned_tenant_is_skipped_unless_named_and_naming_it_moves_the_pin(rel):
    rel.ok("set", "relb", "release=2")
    outcomes = {o["tenant"]: o["result"] for o in json.loads(rel.ok("deploy", "1", "--json").out)}
    assert "relb" not in outcomes
    rows = {r["version"]: r for r in json.loads(rel.ok("releases", "--json").out)}
    assert "relb" in rows["2"]["tenants"] and rows["1"]["current"]
    outcomes = {o["tenant"]: o["result"] for o in json.loads(rel.ok("deploy", "1", "relb", "--json").out)}
    assert outcomes == {"relb": "ok"}
    assert "release: '1'" in (rel.root / "tenants" / "relb" / "tenant.yaml").read_text()
    assert "Notes, release two" not in rel.get("relb").text


def test_a_release_without_migrations_takes_no_backup_and_rolls_back_exactly(rel):
    """relb runs release 1 on a database that already has release 2's schema (it kept it
    when it went back to 1 by a deploy): release 4, whose migrations are release 2's,
    changes no schema, so the deploy takes no backup, and the rollback keeps the data."""
    archives = set((rel.root / "backups").glob("relb-*"))
    template = rel.source / "notes" / "templates" / "notes" / "home.html"
    template.write_text(template.read_text().replace("<h2>Notes", "<h2>Notes, release four"))
    rel.ok("release", "build", "4")
    run = rel.ok("deploy", "4", "relb", "--json")
    assert json.loads(run.out)[0]["result"] == "ok"
    assert "relb: no migrations to apply, so no backup is needed" in run.err
    assert set((rel.root / "backups").glob("relb-*")) == archives
    assert "Notes, release four" in rel.get("relb").text
    rel.add_note("relb", "written under release 4 in relb")
    run = rel.ok("rollback", "relb")
    assert "data kept" in run.err
    page = rel.get("relb").text
    assert "release four" not in page and "release two" not in page  # release 1's code again
    assert "written under release 4 in relb" in rel.notes("relb")  # and nothing lost
    assert "notes_tag" in rel.tables("relb")

"""Tenant lifecycle without data loss: set, backup, rm, restore, clone, fleet commands, import."""
import hashlib
import io
import json
import re
import subprocess
import tarfile
import threading

import psycopg2
import pytest

from tests.conftest import snapshot


def admin(stack, dbname="postgres"):
    password = re.search(r"POSTGRES_PASSWORD=(.*)", (stack.root / ".tenantkit" / "db.env").read_text()).group(1)
    conn = psycopg2.connect(host="127.0.0.1", port=stack.db_port(), user="postgres", password=password,
                            dbname=dbname, connect_timeout=5)
    conn.autocommit = True
    return conn


def databases(stack) -> set:
    with admin(stack) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        return {row[0] for row in cur.fetchall()}


def fingerprint(stack, name, database=None) -> dict:
    """Row counts of the demo's tables and a checksum of every media file."""
    conn = admin(stack, database or name)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), string_agg(text, '|' ORDER BY id) FROM notes_note")
        notes = cur.fetchone()
        cur.execute("SELECT count(*) FROM notes_upload")
        uploads = cur.fetchone()[0]
    conn.close()
    media = stack.root / "media" / name
    files = {str(p.relative_to(media)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(media.rglob("*")) if p.is_file()}
    return {"notes": notes, "uploads": uploads, "files": files}


def container_id(stack, name):
    return subprocess.run(["docker", "compose", "-f", str(stack.root / "compose" / "compose.yaml"), "ps", "-q",
                           f"tenant-{name}"], capture_output=True, text=True).stdout.strip()


def refused(run, *words):
    assert run.code == 2, run
    assert len(run.err.strip().splitlines()) == 1, run.err
    for word in words:
        assert word in run.err, run.err


@pytest.fixture(scope="module")
def keep(stack):
    """A tenant with real data written through its own pages: notes and uploads."""
    stack.ok("new", "keep", "--title", "Keep Ltd")
    stack.ok("up", "keep")
    for text in ("first note", "second note", "third note"):
        assert stack.post("keep", "/notes/", {"text": text}).status_code == 302
    for name, content in (("a.bin", bytes(range(256)) * 40), ("b.txt", b"keep's second file\n")):
        assert stack.post("keep", "/uploads/", files={"file": (name, content)}).status_code == 302
    return fingerprint(stack, "keep")


def test_set_then_up_recreates_only_the_changed_tenant(stack, keep):
    stack.ok("new", "setme")
    stack.ok("up", "setme")
    before_keep, before_setme = container_id(stack, "keep"), container_id(stack, "setme")
    stack.ok("set", "setme", "title=Set Me Renamed", "memory=300m", "hosts=setme.localhost,www.setme.test")
    stack.ok("up", "setme", "keep")
    assert container_id(stack, "keep") == before_keep
    assert container_id(stack, "setme") != before_setme
    assert "Set Me Renamed" in stack.via_proxy("www.setme.test").text
    inspect = json.loads(subprocess.run(["docker", "inspect", container_id(stack, "setme")],
                                        capture_output=True, text=True).stdout)[0]
    assert inspect["HostConfig"]["Memory"] == 300 * 2**20


def test_set_refuses_bad_values_and_changes_nothing(stack, keep):
    before = (stack.root / "tenants" / "keep" / "tenant.yaml").read_text()
    refused(stack.cli("set", "keep", "memory=lots"), "not a size")
    refused(stack.cli("set", "keep", "colour=blue"), "cannot be set")
    refused(stack.cli("set", "keep", "hosts=alpha.localhost"), "already used by tenant 'alpha'")
    assert (stack.root / "tenants" / "keep" / "tenant.yaml").read_text() == before


def test_rm_then_restore_keeps_rows_and_media_exactly(stack, keep):
    archive = stack.ok("backup", "keep").out.strip()
    assert oct(__import__("os").stat(archive).st_mode & 0o777) == "0o600"
    run = stack.ok("rm", "keep", "--yes")
    removed_archive = re.search(r"archive: (\S+)", run.out).group(1)
    assert "keep" not in databases(stack)
    assert not (stack.root / "tenants" / "keep").exists()
    assert stack.via_proxy("keep.localhost").status_code == 421  # vhost gone
    assert container_id(stack, "keep") == ""
    stack.ok("restore", removed_archive)
    assert fingerprint(stack, "keep") == keep
    page = stack.via_proxy("keep.localhost").text
    assert "third note" in page and "Keep Ltd" in page


def test_a_clone_copies_data_and_media_with_credentials_of_its_own(stack, keep):
    stack.ok("clone", "keep", "kept", "--host", "kept.localhost")
    assert fingerprint(stack, "kept") == keep
    assert stack.secret("kept", "TENANT_DB_PASSWORD") != stack.secret("keep", "TENANT_DB_PASSWORD")
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host="127.0.0.1", port=stack.db_port(), dbname="keep", user="kept",
                         password=stack.secret("kept", "TENANT_DB_PASSWORD"), connect_timeout=5)
    stack.post("kept", "/notes/", {"text": "only in the clone"})
    assert "only in the clone" not in stack.via_proxy("keep.localhost").text
    assert "only in the clone" in stack.via_proxy("kept.localhost").text


def test_restore_under_a_new_name_gets_new_credentials(stack, keep):
    archive = stack.ok("backup", "keep", "--with-secrets").out.strip()
    stack.ok("restore", archive, "--as", "keep_copy", "--host", "copy.keep.localhost")
    assert fingerprint(stack, "keep_copy") == keep
    assert stack.secret("keep_copy", "TENANT_DB_PASSWORD") != stack.secret("keep", "TENANT_DB_PASSWORD")
    assert stack.secret("keep_copy", "TENANT_SECRET_KEY") != stack.secret("keep", "TENANT_SECRET_KEY")


def _repack(source, target, change):
    with tarfile.open(source) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    with tarfile.open(target, "w:gz") as tar:
        for member, data in members:
            data = change(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_bad_archives_and_names_are_refused_and_change_nothing(stack, keep, tmp_path):
    archive = stack.ok("backup", "keep").out.strip()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(open(archive, "rb").read()[:600])
    future = tmp_path / "future.tar.gz"
    _repack(archive, future, lambda name, data: data.replace(b'"version": 1', b'"version": 9')
            if name == "manifest.json" else data)
    tampered = tmp_path / "tampered.tar.gz"
    _repack(archive, tampered, lambda name, data: data + b"x" if name == "database.dump" else data)
    before_files, before_dbs = snapshot(stack.root / "tenants"), databases(stack)
    refused(stack.cli("restore", str(tmp_path / "missing.tar.gz")), "does not exist")
    refused(stack.cli("restore", str(truncated)), "truncated")
    refused(stack.cli("restore", str(future)), "format version 9")
    refused(stack.cli("restore", str(tampered)), "database.dump does not match its checksum")
    refused(stack.cli("restore", archive), "'keep' already exists")
    refused(stack.cli("restore", archive, "--as", "other", "--host", "alpha.localhost"), "already used by tenant 'alpha'")
    refused(stack.cli("clone", "keep", "another", "--host", "beta.localhost"), "already used by tenant 'beta'")
    refused(stack.cli("clone", "nobody", "another", "--host", "x.localhost"), "unknown tenant 'nobody'")
    refused(stack.cli("rm", "nobody", "--yes"), "unknown tenant 'nobody'")
    refused(stack.cli("backup", "nobody"), "unknown tenant 'nobody'")
    assert snapshot(stack.root / "tenants") == before_files and databases(stack) == before_dbs


def test_rm_drops_nothing_when_the_archive_cannot_be_written(stack, keep):
    config = stack.root / "tenantkit.yaml"
    original = config.read_text()
    (stack.root / "not-a-folder").write_text("")
    config.write_text(original + "backups: not-a-folder\n")
    try:
        refused(stack.cli("rm", "keep", "--yes"), "not a folder")
    finally:
        config.write_text(original)
    assert "keep" in databases(stack)
    assert fingerprint(stack, "keep") == keep
    assert stack.via_proxy("keep.localhost").status_code == 200


def test_rm_keep_data_removes_only_the_running_parts(stack):
    stack.ok("new", "parked")
    stack.ok("up", "parked")
    stack.post("parked", "/notes/", {"text": "still here later"})
    stack.ok("rm", "parked", "--keep-data", "--yes")
    rows = {row["name"]: row for row in json.loads(stack.ok("list", "--json").out)}
    assert rows["parked"]["state"] == "disabled"
    assert container_id(stack, "parked") == "" and "parked" in databases(stack)
    assert stack.via_proxy("parked.localhost").status_code == 421
    stack.ok("up", "parked")
    assert "still here later" in stack.via_proxy("parked.localhost").text


def test_four_concurrent_new_and_up_runs_leave_a_consistent_stack(stack):
    results = {}

    def make(name):
        first = stack.cli("new", name)
        results[name] = first if first.code else stack.cli("up", name)

    threads = [threading.Thread(target=make, args=(f"conc{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(run.code == 0 for run in results.values()), results
    compose = (stack.root / "compose" / "compose.yaml").read_text()
    ports = set()
    for name in results:
        assert f"- tenants/{name}.yaml" in compose  # the stack includes each tenant's own file
        assert f"tenant-{name}:" in (stack.root / "compose" / "tenants" / f"{name}.yaml").read_text()
        assert stack.via_proxy(f"{name}.localhost").status_code == 200
        ports.add(stack.port(name))
    assert len(ports) == 4


def test_migrate_all_checks_every_tenant_and_reports_each(stack):
    outcomes = json.loads(stack.ok("migrate", "--all", "--json").out)
    assert {o["tenant"] for o in outcomes} >= {"alpha", "beta"}
    assert all(o["result"] in ("up-to-date", "ok") for o in outcomes)


def test_manage_all_keeps_going_and_names_the_tenants_that_failed(stack):
    script = ("import sys; from django.conf import settings; "
              "print('tenant', settings.TENANT_NAME); sys.exit(3 if settings.TENANT_NAME == 'beta' else 0)")
    run = stack.cli("manage", "--all", "--json", "--", "shell", "-c", script)
    assert run.code == 1
    outcomes = {o["tenant"]: o for o in json.loads(run.out)}
    assert outcomes["beta"]["result"] == "failed" and outcomes["beta"]["exit_code"] == 3
    assert outcomes["alpha"]["result"] == "ok"
    assert "manage failed for beta" in run.err
    folder = re.search(r"output is in (\S+)", run.err).group(1)
    assert "tenant alpha" in open(f"{folder}/alpha.log").read()


def test_status_reports_memory_uptime_image_and_database_size(stack):
    row = json.loads(stack.ok("status", "alpha", "--json").out)[0]
    assert row["state"] == "running" and 10 < row["memory_mib"] < 256
    assert row["uptime_seconds"] >= 0 and row["database_bytes"] > 1_000_000
    assert re.match(r".*/app:src-[0-9a-f]{12}$", row["image"])
    assert row["health"] == "healthy"
    # Connections: a request's own, at most; against the role's budget (1 worker x 4 threads + 3).
    assert row["connection_limit"] == 7 and 0 <= row["connections"] <= 7
    table = stack.ok("status").out
    assert re.search(r"database server: \d+ of 1000 connections in use", table)


def test_a_tenant_role_cannot_exceed_its_connection_budget(stack):
    import psycopg2
    password = stack.secret("alpha", "TENANT_DB_PASSWORD")
    held = []
    try:
        with pytest.raises(psycopg2.OperationalError, match="too many connections for role"):
            for _ in range(8):
                held.append(psycopg2.connect(host="127.0.0.1", port=stack.db_port(), user="alpha",
                                             password=password, dbname="alpha", connect_timeout=5))
        assert len(held) == 7
    finally:
        for conn in held:
            conn.close()


def test_logs_show_the_container_and_its_apache_logs(stack):
    stack.via_proxy("alpha.localhost", "/?logs-marker")
    out = stack.ok("logs", "alpha", "--tail", "200").out
    assert "Booting worker" in out or "Listening at" in out
    assert "logs-marker" in out


def test_import_keeps_a_classic_tenant_on_its_existing_database(stack, tmp_path):
    from tenantkit.act import database
    from tenantkit.model import load_project, tenant_names
    project = load_project(stack.root)
    legacy = tenant_names("legacy", "shopdb_legacy")
    conn = admin(stack)
    database.provision_database(conn, legacy, "legacy password 1")
    conn.close()
    stack.post("alpha", "/notes/", {"text": "carried into the legacy database"})
    dump = tmp_path / "alpha.dump"
    database.dump_database(project, tenant_names("alpha"), dump)
    database.restore_database(project, legacy, dump, "legacy password 1")  # the old site's data, as its role
    folder = tmp_path / "example_app" / "shared" / "tenants" / "legacy"
    (folder / "www" / "content").mkdir(parents=True)
    (folder / "www" / "content" / "old.txt").write_text("legacy media\n")
    (folder / "settings.py").write_text(f'''from main.settings import *
ALLOWED_HOSTS = ["legacy.example.app", ".legacy.example.app."]
TENANT_ROOT = "{folder}"
DATABASES['default'] = {{
    'ENGINE': 'django.db.backends.postgresql',
    'NAME': 'shopdb_legacy', 'USER': 'shopdb_legacy',
    'PASSWORD': 'legacy password 1', 'HOST': 'db',
}}
MEDIA_ROOT = "%s/www/content" % TENANT_ROOT
SITE_TITLE = "Legacy Shop"
''')
    stack.ok("import", str(tmp_path / "example_app"))
    stack.ok("up", "legacy")
    page = stack.via_proxy("legacy.example.app").text
    assert "Legacy Shop" in page and 'database <code id="database">shopdb_legacy</code>' in page
    assert "carried into the legacy database" in page  # the rows that were already there
    assert stack.via_proxy("legacy.example.app", "/_content/old.txt").text == "legacy media\n"
    assert (folder / "www" / "content" / "old.txt").exists()  # copied, not moved
    refused(stack.cli("import", str(tmp_path / "example_app")), "'legacy' exists already")

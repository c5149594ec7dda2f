"""What a user sees of tenants on a real engine, through real HTTP by Host header."""
import hashlib
import json
import stat
import subprocess

import psycopg2
import pytest


def states(stack) -> dict:
    return {row["name"]: row for row in json.loads(stack.ok("list", "--json").out)}


def container_id(stack, name: str) -> str:
    service = "db" if name == "db_service" else f"tenant-{name}"
    out = subprocess.run(["docker", "compose", "-f", str(stack.root / "compose" / "compose.yaml"),
                          "ps", "-q", service], capture_output=True, text=True, check=True).stdout
    return out.strip()


def test_each_tenant_answers_on_its_own_host_with_its_own_title(stack):
    alpha, beta = stack.get("alpha"), stack.get("beta")
    assert alpha.status_code == 200 and beta.status_code == 200
    assert '<h1 id="title">Alpha Corp</h1>' in alpha.text
    assert '<h1 id="title">Beta &amp; Sons</h1>' in beta.text
    assert '<code id="database">alpha</code>' in alpha.text
    assert '<code id="database">beta</code>' in beta.text


def test_a_tenant_refuses_another_tenants_host(stack):
    assert stack.get("alpha", host="beta.localhost").status_code == 400
    assert stack.get("alpha", host="unknown.localhost").status_code == 400


def test_a_note_added_through_one_tenant_is_absent_from_the_other(stack):
    response = stack.post("alpha", "/notes/", {"text": "alpha-only note 7f3a"})
    assert response.status_code == 302, response.text
    assert "alpha-only note 7f3a" in stack.get("alpha").text
    assert "alpha-only note 7f3a" not in stack.get("beta").text


def test_an_upload_to_one_tenant_is_not_visible_in_the_others_media(stack):
    content = b"alpha's private file\n" * 100
    response = stack.post("alpha", "/uploads/", files={"file": ("private.txt", content)})
    assert response.status_code == 302, response.text
    path = response.headers["Location"]  # /_content/uploads/private[_xyz].txt
    assert stack.get("alpha", path).content == content
    assert stack.get("beta", path).status_code == 404
    name = path.removeprefix("/_content/")
    on_disk = stack.root / "media" / "alpha" / name
    assert hashlib.sha256(on_disk.read_bytes()).digest() == hashlib.sha256(content).digest()
    assert not (stack.root / "media" / "beta" / name).exists()


def test_a_tenants_database_credentials_are_refused_by_another_tenants_database(stack):
    password = stack.secret("alpha", "TENANT_DB_PASSWORD")
    connect = dict(host="127.0.0.1", port=stack.db_port(), user="alpha", password=password,
                   connect_timeout=5)
    with psycopg2.connect(dbname="alpha", **connect) as own:
        with own.cursor() as cur:
            cur.execute("SELECT count(*) FROM notes_note")
            assert cur.fetchone()[0] >= 0
            cur.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = 'alpha'")
            assert cur.fetchone() == (False, False, False)
    own.close()
    for other in ("beta", "postgres", "template1"):
        with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
            psycopg2.connect(dbname=other, **connect)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(dbname="beta", **{**connect, "user": "beta"})


def test_secrets_are_private_and_absent_from_the_compose_file_and_logs(stack):
    compose = (stack.root / "compose" / "compose.yaml").read_text()
    logs = subprocess.run(["docker", "compose", "-f", str(stack.root / "compose" / "compose.yaml"),
                           "logs", "--no-color"], capture_output=True, text=True).stdout
    for name in ("alpha", "beta"):
        path = stack.root / "tenants" / name / "secrets.env"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for key in ("TENANT_DB_PASSWORD", "TENANT_SECRET_KEY"):
            value = stack.secret(name, key)
            assert value not in compose and value not in logs
    assert stat.S_IMODE((stack.root / ".tenantkit" / "db.env").stat().st_mode) == 0o600


def test_the_compose_file_is_valid_for_plain_docker_compose(stack):
    result = subprocess.run(["docker", "compose", "-f", str(stack.root / "compose" / "compose.yaml"),
                             "config", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_list_reports_state_url_and_database(stack):
    rows = states(stack)
    assert rows["alpha"]["state"] == "running"
    assert rows["alpha"]["hosts"] == ["alpha.localhost"]
    assert rows["alpha"]["database"] == "alpha"
    assert rows["alpha"]["url"] == f"http://alpha.localhost:{stack.proxy_port()}/"
    assert rows["alpha"]["port"] == stack.port("alpha")


def test_manage_runs_a_command_in_the_tenants_context(stack):
    run = stack.ok("manage", "alpha", "--", "showmigrations", "notes")
    assert "[X] 0001_initial" in run.out
    run = stack.ok("manage", "beta", "--", "shell", "-c",
                   "from django.conf import settings; print(settings.SITE_TITLE, settings.MEDIA_ROOT)")
    assert "Beta & Sons /srv/media" in run.out
    assert stack.cli("manage", "alpha", "--", "nosuchcommand").code != 0


def test_up_twice_is_harmless(stack):
    before = container_id(stack, "alpha")
    stack.post("alpha", "/notes/", {"text": "kept across up"})
    compose_before = (stack.root / "compose" / "compose.yaml").read_text()
    stack.ok("up", "alpha")
    assert container_id(stack, "alpha") == before
    assert (stack.root / "compose" / "compose.yaml").read_text() == compose_before
    assert "kept across up" in stack.get("alpha").text


def test_a_tenant_whose_settings_fail_to_import_fails_loudly(stack):
    stack.ok("new", "broken")
    (stack.root / "tenants" / "broken" / "local_settings.py").write_text(
        "raise RuntimeError('broken on purpose 41')\n")
    run = stack.cli("up", "broken")
    assert run.code == 1
    assert "RuntimeError: broken on purpose 41" in run.err
    assert states(stack)["broken"]["state"] == "absent"
    assert stack.get("alpha").status_code == 200  # the others keep serving
    stack.ok("down", "beta")
    run = stack.cli("up", "--all")  # one broken tenant does not hold back the others
    assert run.code == 1 and "tenant broken: migrate failed" in run.err
    assert states(stack)["beta"]["state"] == "running" and stack.get("beta").status_code == 200
    assert states(stack)["broken"]["state"] == "absent"
    stack.ok("rm", "broken", "--yes")  # leave no broken tenant for tests that run after this one


def test_a_new_tenant_is_absent_until_it_is_up(stack):
    stack.ok("new", "gamma")
    assert states(stack)["gamma"]["state"] == "absent"


def test_down_stops_only_that_tenant(stack):
    stack.ok("down", "beta")
    rows = states(stack)
    assert rows["beta"]["state"] == "stopped"
    assert rows["alpha"]["state"] == "running"
    assert stack.get("alpha").status_code == 200
    stack.ok("up", "beta")
    assert stack.get("beta").status_code == 200


def test_adding_a_tenant_restarts_neither_the_database_nor_other_tenants(stack):
    db, alpha = container_id(stack, "db_service"), container_id(stack, "alpha")
    stack.ok("new", "delta")
    stack.ok("up", "delta")
    assert stack.get("delta").status_code == 200
    assert (container_id(stack, "db_service"), container_id(stack, "alpha")) == (db, alpha)
    assert stack.get("alpha").status_code == 200

"""Any Django project, any supported Python: a second project, unlike the demo in every
way tenantkit must adapt to, runs unchanged (tests/fixtures/twelve).

- Python 3.13 and Django 6 (the demo: 3.11 and Django 5.2), built offline on this host
  beside the demo's images: its own Debian base and a wheelhouse for its Python.
- 12-factor settings: DATABASE_URL (dj-database-url) and a required DJANGO_SECRET_KEY,
  and django.contrib.postgres only when DATABASE_URL names PostgreSQL.
- A project-wide app (tenant_defaults.apps) and a project-wide settings snippet that
  builds a URL from each tenant's own host.
- `tenant test` runs its suite on a throwaway database; the exit code is the suite's.
- A view that allocates past a small memory limit: the kernel kills the worker, and
  `status`, `list`, `logs` and `doctor` say so.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import docker
import pytest
import requests
import yaml

from tests.conftest import REPO, write_project
from tenantkit.model import load_project
from tests.integration.conftest import Stack, admin_sql, free_port, remove_project

FIXTURE = REPO / "tests" / "fixtures" / "twelve"
PREFIX = f"tk12x{os.getpid()}"


@pytest.fixture(scope="module")
def twelve():
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    os.chmod(root, 0o755)
    (root / "tenant_settings.py").write_text(
        "# Settings of every tenant: built from each one's own primary host.\n"
        "SITE_BASE_URL = f'https://{TENANT_HOSTS[0]}'\n")
    write_project(root, name=PREFIX, database__publish_port=free_port(), ports__first=free_port(),
                  proxy__port=free_port(), images__python="3.13",
                  project={"source": str(FIXTURE), "settings": "twelve.settings",
                           "requirements": str(FIXTURE / "requirements.txt"), "health_path": "/healthz/",
                           "tenant_settings": "tenant_settings.py"},
                  tenant_defaults={"memory": "256m", "apps": ["extras"]})
    stack = Stack(root)
    try:
        stack.ok("new", "north")
        stack.ok("new", "south", "--memory", "96m")
        stack.ok("up", "--all")
        yield stack
    finally:
        remove_project(root)


def health(stack: Stack, name: str) -> dict:
    response = stack.via_proxy(f"{name}.localhost", "/healthz/")
    assert response.status_code == 200, response.text
    return response.json()


def test_it_runs_on_python_3_13_and_django_6_built_offline(twelve):
    north = health(twelve, "north")
    assert north["python"] == "3.13" and north["django"].startswith("6.0")
    image = json.loads(twelve.ok("status", "north", "--json").out)[0]["image"]
    labels = docker.from_env().images.get(image).labels
    assert labels.get("tenantkit.debian") == "trixie"  # its own base, beside the demo's bookworm one
    # The wheels came for its Python, into a folder of their own.
    wheelhouse = Path(yaml.safe_load((twelve.root / "tenantkit.yaml").read_text()).get("wheelhouse") or "/nonexistent")
    if wheelhouse.is_dir():  # an offline host (no registry): this one
        assert any(folder.name.startswith("cp313-") for folder in wheelhouse.iterdir())


def test_twelve_factor_settings_get_each_tenants_own_database(twelve):
    north, south = health(twelve, "north"), health(twelve, "south")
    assert (north["database"], north["user"]) == ("north", "north")
    assert (south["database"], south["user"]) == ("south", "south")
    # The project's own DATABASE_URL parsing found each tenant's own database and role.
    assert north["from_url"] == {"ENGINE": "django.db.backends.postgresql", "NAME": "north", "USER": "north",
                                 "HOST": "db"}
    assert south["from_url"]["NAME"] == south["from_url"]["USER"] == "south"
    # Without django.contrib.postgres, migrate fails with postgres.E005 (its ArrayField).
    assert north["postgres_app"] is True
    books = requests.post(f"http://127.0.0.1:{twelve.proxy_port()}/", headers={"Host": "north.localhost"},
                          data={"title": "Dune", "tag": ["sf", "classic"]}, timeout=10)
    assert books.status_code == 403  # CSRF still guards it: the project's own middleware, unchanged
    # The project's required DJANGO_SECRET_KEY was the tenant's own; once the settings are
    # loaded, neither variable is left in the process's environment.
    shell = twelve.ok("manage", "north", "--", "shell", "-c",
                      "import os; from django.conf import settings; "
                      "print(settings.SECRET_KEY_FROM_ENVIRONMENT == settings.SECRET_KEY, "
                      "'DATABASE_URL' in os.environ, 'DJANGO_SECRET_KEY' in os.environ)")
    assert shell.out.split()[-3:] == ["True", "False", "False"]  # after Django 6's "N objects imported"
    # Neither the URL nor the key is in the container's definition, or in the compose files.
    client = docker.from_env()
    for name in ("north", "south"):
        container = client.containers.list(filters={"label": f"tenantkit.tenant={name}"})[0]
        environment = "\n".join(container.attrs["Config"]["Env"])
        assert "DATABASE_URL" not in environment and twelve.secret(name, "TENANT_DB_PASSWORD") not in environment
    for path in (twelve.root / "compose").rglob("*.yaml"):
        text = path.read_text()
        assert twelve.secret("north", "TENANT_DB_PASSWORD") not in text
        assert twelve.secret("north", "TENANT_SECRET_KEY") not in text


def test_project_wide_app_and_settings_reach_every_tenant(twelve):
    for name in ("north", "south"):
        assert health(twelve, name)["extras_app"] is True
        assert health(twelve, name)["base_url"] == f"https://{name}.localhost"
        first = twelve.via_proxy(f"{name}.localhost", "/extras/")
        assert first.status_code == 200, first.text  # its table was migrated in each database
    assert twelve.via_proxy("north.localhost", "/extras/").json() == {"visits": 2}
    assert twelve.via_proxy("south.localhost", "/extras/").json() == {"visits": 2}  # its own count


def test_tenant_test_runs_the_suite_on_a_throwaway_database(twelve):
    run = twelve.cli("test", "north")
    assert run.code == 0, run.err + run.out
    assert "Ran 4 tests" in run.err and "OK" in run.err
    assert "Normally Django will use a connection" not in run.err
    # The suite's exit code: a label that names no test fails it.
    failed = twelve.cli("test", "north", "--", "shelf.tests.NoSuchTest")
    assert failed.code != 0
    # The test database is gone, and no tenant's data was touched.
    assert admin_sql(twelve.root, twelve.db_port(), "SELECT datname FROM pg_database WHERE datname LIKE '%%.test'") == []
    assert twelve.via_proxy("north.localhost", "/").json() == {"books": []}


def test_a_worker_killed_for_lack_of_memory_shows(twelve):
    assert twelve.via_proxy("south.localhost", "/hog/?mib=8").json() == {"held_mib": 8}
    killed = requests.get(f"http://127.0.0.1:{twelve.proxy_port()}/hog/?mib=300",
                          headers={"Host": "south.localhost"}, timeout=30)
    assert killed.status_code >= 500
    row = json.loads(twelve.ok("status", "south", "--json").out)[0]
    assert row["memory"]["oom_kills"] >= 1, row
    assert row["memory"]["limit_mib"] == 96 and row["memory"]["peak_mib"] >= 90
    assert row["state"] == "running"  # the container itself lives on: only the kills tell
    listed = twelve.ok("list")
    assert "OOM kill" in listed.out and "tenant set south memory=192m" in listed.err
    north = json.loads(twelve.ok("list", "--json").out)
    assert {r["name"]: r["memory"]["oom_kills"] for r in north}["north"] == 0
    logs = twelve.ok("logs", "south", "--tail", "20")
    assert "lack of memory" in logs.err
    doctor = json.loads(twelve.cli("doctor", "--json").out)["checks"]
    memory = [f for f in doctor if f["check"] == "memory" and f["status"] == "warn"]
    assert [f["tenant"] for f in memory] == ["south"] and "memory=192m" in memory[0]["fix"]


def test_tenant_test_in_dev_mode_runs_the_working_tree():
    """With `tenant dev on`, the suite is the working tree's as it is now: a test just
    written runs without a build, in the tenant's context; the demo's own suite passes."""
    from tests.integration.conftest import demo_copy_project
    root, _ = demo_copy_project(f"tk12d{os.getpid()}")
    stack = Stack(root)
    try:
        stack.ok("new", "devt", "--title", "Dev Tenant")
        stack.ok("up", "devt")
        run = stack.cli("test", "devt")
        assert run.code == 0 and "Ran 3 tests" in run.err, run.err
        stack.ok("dev", "on")
        live = root / "src" / "notes" / "tests_live.py"
        live.write_text("from django.conf import settings\nfrom django.test import SimpleTestCase\n\n\n"
                        "class Live(SimpleTestCase):\n    def test_title(self):\n"
                        "        self.assertEqual(settings.SITE_TITLE, 'Dev Tenant')\n")
        run = stack.cli("test", "devt", "--", "notes.tests_live")
        assert run.code == 0 and "Ran 1 test" in run.err, run.err
        live.write_text(live.read_text().replace("'Dev Tenant'", "'Another'"))
        run = stack.cli("test", "devt", "--", "notes.tests_live")
        assert run.code == 1 and "FAILED (failures=1)" in run.err
    finally:
        remove_project(root)


def test_a_test_database_a_killed_run_left_is_found_and_cleared(twelve):
    """kill -9 once the test database exists: `doctor` names it with its DROP (not while a
    run holds it), and the next `tenant test` drops it first and passes."""
    from tenantkit.orchestration.tenants import test_lock
    killed = twelve.cli("test", "north", env={**os.environ, "TENANTKIT_FAILPOINT": "test:created"})
    assert killed.code == 137
    with test_lock(load_project(twelve.root), "north"):  # as while a run is under way
        doctor = json.loads(twelve.cli("doctor", "--json").out)["checks"]
        assert not [f for f in doctor if f["check"] == "databases" and "north.test" in f["message"]]
    doctor = json.loads(twelve.cli("doctor", "--json").out)["checks"]
    left = [f for f in doctor if f["check"] == "databases" and "north.test" in f["message"]]
    assert left and 'DROP DATABASE "north.test"' in left[0]["fix"]
    run = twelve.cli("test", "north", "--", "shelf")
    assert run.code == 0 and "Ran 3 tests" in run.err, run.err
    doctor = json.loads(twelve.cli("doctor", "--json").out)["checks"]
    assert not [f for f in doctor if "north.test" in f["message"]]
    # A test database left behind never blocks removing the tenant: its role owns it.
    killed = twelve.cli("test", "south", env={**os.environ, "TENANTKIT_FAILPOINT": "test:created"})
    assert killed.code == 137
    twelve.ok("rm", "south", "--yes")
    assert admin_sql(twelve.root, twelve.db_port(), "SELECT datname FROM pg_database WHERE datname LIKE 'south%%'") == []
    assert admin_sql(twelve.root, twelve.db_port(), "SELECT rolname FROM pg_roles WHERE rolname = 'south'") == []

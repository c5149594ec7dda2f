"""`tenant migrate --all` with nothing to do is one look at every tenant's database: it
starts no container and writes no log; only the tenants with work are migrated, by name.

Runs on a project of its own (two tenants up), torn down at the end of the module.
"""
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, own_stack

DROP_NOTES = ("from django.db import connection; "
              "connection.cursor().execute('DROP TABLE IF EXISTS notes_note')")
BLOCK_NOTES = ("from django.db import connection; "
               "connection.cursor().execute('CREATE TABLE notes_note (id integer)')")


@pytest.fixture(scope="module")
def fleet():
    with own_stack("tkmig", ("mfa", "mfb")) as s:
        yield s


def project_name(s: Stack) -> str:
    return (s.root / "tenantkit.yaml").read_text().split("name: ")[1].split()[0]


def container_events(s: Stack, since: float, until: float) -> list[str]:
    """The containers the engine created or started for this project between two times."""
    out = subprocess.run(["docker", "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
                          "--filter", "type=container", "--filter", f"label=com.docker.compose.project="
                          f"{project_name(s)}", "--filter", "event=create", "--filter", "event=start",
                          "--format", "{{.Action}} {{.Actor.Attributes.name}}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\n")[:-1]


def runs(s: Stack) -> set[str]:
    folder = s.root / ".tenantkit" / "runs"
    return set(os.listdir(folder)) if folder.is_dir() else set()


def migrate_all(s: Stack, code: int = 0) -> tuple[dict[str, str], str]:
    """`migrate --all --json`: each tenant's result, and the progress printed on stderr."""
    run = s.cli("migrate", "--all", "--json")
    assert run.code == code, f"migrate --all exited {run.code}:\n{run.err}"
    return {o["tenant"]: o["result"] for o in json.loads(run.out)}, run.err


def summary(err: str) -> re.Match:
    found = re.search(r"^· (\d+) of (\d+) tenants up to date(?:; migrating (.+))?$", err, re.M)
    assert found, f"no summary line in:\n{err}"
    return found


def test_a_no_op_migrate_all_reports_every_tenant_up_to_date_and_starts_nothing(fleet):
    migrate_all(fleet)  # whatever another test left, settled first
    before = runs(fleet)
    since = time.time()
    results, err = migrate_all(fleet)
    until = time.time() + 1
    assert results and set(results.values()) == {"up-to-date"}
    line = summary(err)
    assert line.group(1) == line.group(2) == str(len(results)) and line.group(3) is None
    assert container_events(fleet, since, until) == []
    assert runs(fleet) == before  # no log folder, no log file per tenant


def test_only_the_tenant_with_a_pending_migration_is_migrated_and_named(fleet):
    fleet.ok("manage", "mfb", "--", "migrate", "notes", "zero")
    assert fleet.cli("manage", "mfb", "--", "migrate", "--check").code != 0  # work is pending
    results, err = migrate_all(fleet)
    assert results["mfb"] == "ok"
    assert {r for name, r in results.items() if name != "mfb"} == {"up-to-date"}
    line = summary(err)
    assert line.group(3) == "mfb" and int(line.group(1)) == len(results) - 1
    assert fleet.cli("manage", "mfb", "--", "migrate", "--check").code == 0  # the notes table is back


def test_a_tenant_whose_database_does_not_exist_yet_is_provisioned_from_the_template(fleet):
    fleet.ok("new", "mfnew")
    results, err = migrate_all(fleet)
    # Its database is a copy of the release's migrated template: nothing left to migrate.
    assert "created database and role mfnew (from its release's template)" in err
    assert set(results.values()) == {"up-to-date"}
    assert summary(err).group(3) is None
    assert fleet.cli("manage", "mfnew", "--", "migrate", "--check").code == 0
    assert migrate_all(fleet)[0]["mfnew"] == "up-to-date"


def test_with_the_database_server_stopped_it_is_started_and_nobody_is_migrated(fleet):
    migrate_all(fleet)  # whatever another test left, settled first
    subprocess.run(["docker", "compose", "-f", str(fleet.root / "compose" / "compose.yaml"), "stop", "db"],
                   capture_output=True, check=True)
    results, err = migrate_all(fleet)
    assert "starting database" in err
    assert results and set(results.values()) == {"up-to-date"}
    assert summary(err).group(3) is None


def test_a_failing_migrate_is_reported_as_failed_and_exits_1(fleet):
    fleet.ok("manage", "mfb", "--", "migrate", "notes", "zero")
    fleet.ok("manage", "mfb", "--", "shell", "-c", BLOCK_NOTES)  # the table migrate will try to create
    try:
        results, err = migrate_all(fleet, code=1)
        assert results["mfb"] == "failed"
        assert {r for name, r in results.items() if name != "mfb"} == {"up-to-date"}
        assert "migrate failed for mfb" in err
        folder = re.search(r"output is in (\S+)", err).group(1)
        assert "notes_note" in (Path(folder) / "mfb.log").read_text()
    finally:
        fleet.ok("manage", "mfb", "--", "shell", "-c", DROP_NOTES)
        fleet.ok("migrate", "mfb")

"""New tenants' databases are copies of a migrated template (issue 10), on the real stack.

A template is cut from a tenant's database right after its first migrate; a new tenant's
database is then CREATE DATABASE ... TEMPLATE, with every object handed to its own role.
These tests look inside PostgreSQL to prove the hand-over, the template's isolation, the
fall-backs, and that a kill at either step leaves something the next `up` completes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest
import yaml

from tenantkit.act.failpoints import KILLED
from tests.conftest import write_project
from tests.integration.test_crash import Crash
from tests.integration.conftest import free_port

# Every object in a database that has an owner (schemas excepted: public belongs to
# pg_database_owner, which is whoever owns the database).
OWNERS = """
SELECT 'relation', relname, pg_get_userbyid(relowner) FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')
  AND nspname NOT LIKE 'pg_toast%'
UNION ALL SELECT 'type', typname, pg_get_userbyid(typowner) FROM pg_type t
  JOIN pg_namespace n ON n.oid = t.typnamespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')
  AND nspname NOT LIKE 'pg_toast%'
UNION ALL SELECT 'function', proname, pg_get_userbyid(proowner) FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')
"""


class Project(Crash):
    """A project whose commands can be killed at a failpoint (test_crash's helper)."""

    def __init__(self, root: Path, db_port: int):
        super().__init__(root, {"db": db_port})
        self.db_port = db_port

    def new_up(self, name):
        self.ok("new", name, "--host", f"{name}.localhost")
        return self.ok("up", name)

    def sql(self, query, dbname="postgres", args=None):
        env = (self.root / ".tenantkit" / "db.env").read_text()
        password = env.split("POSTGRES_PASSWORD=")[1].split()[0]
        conn = psycopg2.connect(host="127.0.0.1", port=self.db_port, user="postgres", password=password,
                                dbname=dbname)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(query, args)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def templates(self) -> dict[str, str | None]:
        """This server's template databases and their comments (None: not complete)."""
        return dict(self.sql("SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                             "WHERE datname LIKE 'tk_tpl_%'"))

    def drop_templates(self):
        for name in self.templates():
            self.sql(f'ALTER DATABASE "{name}" IS_TEMPLATE false')
            self.sql(f'DROP DATABASE "{name}"')


@pytest.fixture(scope="module")
def tpl():
    root = Path(tempfile.mkdtemp(prefix="tktpl-"))
    os.chmod(root, 0o755)
    db_port = free_port()
    write_project(root, name=f"tktpl{os.getpid()}", database__publish_port=db_port, ports__first=free_port(),
                  proxy__port=free_port())
    project = Project(root, db_port)
    first = project.new_up("first")
    assert "(empty)" in first.err and "migrating first" in first.err
    assert "as the template for new tenants" in first.err
    yield project
    subprocess.run(["docker", "compose", "-f", str(root / "compose" / "compose.yaml"), "down", "-v", "-t", "5"],
                   capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_a_new_tenant_is_a_copy_of_the_template_and_owns_every_object_in_it(tpl):
    run = tpl.new_up("second")
    assert "created database and role second (from its release's template)" in run.err
    assert "migrating second" not in run.err  # no migrate: one container start
    owners = tpl.sql(OWNERS, dbname="second")
    assert len(owners) > 20 and {owner for _, _, owner in owners} == {"second"}, \
        sorted({(kind, owner) for kind, _, owner in owners})
    assert tpl.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'second'") == [("second",)]
    # The copy carries the migrations' records, so the tenant is up to date, and its role can
    # migrate later: unapplying an app drops its tables, which only their owner may do.
    assert ("notes", "0001_initial") in tpl.sql("SELECT app, name FROM django_migrations", dbname="second")
    tpl.ok("manage", "second", "--", "migrate", "notes", "zero")
    assert not tpl.sql("SELECT 1 FROM pg_tables WHERE tablename = 'notes_note'", dbname="second")
    tpl.ok("manage", "second", "--", "migrate")
    assert tpl.sql("SELECT 1 FROM pg_tables WHERE tablename = 'notes_note'", dbname="second")


def test_the_template_belongs_to_the_admin_holds_no_tenant_data_and_no_tenant_can_open_it(tpl):
    templates = tpl.templates()
    assert len(templates) == 1
    name, comment = next(iter(templates.items()))
    assert comment.startswith("tenantkit template: project=tktpl")
    row = tpl.sql("SELECT pg_get_userbyid(datdba), datistemplate FROM pg_database WHERE datname = %s", args=(name,))
    assert row == [("postgres", True)]
    for role in ("first", "second"):
        assert tpl.sql("SELECT has_database_privilege(%s, %s, 'CONNECT')", args=(role, name)) == [(False,)]
    assert {owner for _, _, owner in tpl.sql(OWNERS, dbname=name)} == {"tenantkit_template"}
    assert tpl.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'tenantkit_template'") == [(False,)]
    assert tpl.sql("SELECT count(*) FROM notes_note", dbname=name) == [(0,)]
    # The tenant it was cut from still owns its own database and everything in it.
    assert {owner for _, _, owner in tpl.sql(OWNERS, dbname="first")} == {"first"}
    assert tpl.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'first'") == [("first",)]


def test_without_a_complete_template_a_new_tenant_is_migrated_and_the_template_cut_again(tpl):
    tpl.drop_templates()
    run = tpl.new_up("third")
    assert "(empty)" in run.err and "migrating third" in run.err
    assert "kept third's freshly migrated database as the template" in run.err
    name = next(iter(tpl.templates()))
    tpl.sql(f'COMMENT ON DATABASE "{name}" IS NULL')  # as a crash before the template was complete
    run = tpl.new_up("fourth")
    assert "migrating fourth" in run.err and "kept fourth's" in run.err
    assert all(comment for comment in tpl.templates().values())


def test_a_project_can_opt_out_of_templates(tpl):
    config_path = tpl.root / "tenantkit.yaml"
    saved = config_path.read_text()
    config = yaml.safe_load(saved)
    config["database"]["templates"] = False
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        before = tpl.templates()
        run = tpl.new_up("fifth")
        assert "(empty)" in run.err and "migrating fifth" in run.err and "template" not in run.err
        assert tpl.templates() == before
    finally:
        config_path.write_text(saved)


def test_a_kill_while_copying_a_template_leaves_a_copy_the_next_up_redoes(tpl):
    tpl.ok("new", "sixth", "--host", "sixth.localhost")
    run = tpl.cli("up", "sixth", failpoint="up:copied")
    assert run.code == KILLED
    assert tpl.sql("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'sixth'") == \
        [("tenantkit: copy from a template in progress",)]
    run = tpl.ok("up", "sixth")
    assert "from its release's template" in run.err
    assert {owner for _, _, owner in tpl.sql(OWNERS, dbname="sixth")} == {"sixth"}


def test_a_kill_while_cutting_a_template_leaves_the_tenant_whole_and_no_template_in_use(tpl):
    tpl.drop_templates()
    tpl.ok("new", "seventh", "--host", "seventh.localhost")
    run = tpl.cli("up", "seventh", failpoint="up:template-copied")
    assert run.code == KILLED
    assert list(tpl.templates().values()) == [None]  # half made: never used
    assert {owner for _, _, owner in tpl.sql(OWNERS, dbname="seventh")} == {"seventh"}
    tpl.ok("up", "seventh")
    run = tpl.new_up("eighth")  # the half-made template is replaced, not copied
    assert "migrating eighth" in run.err and "kept eighth's" in run.err
    assert all(comment for comment in tpl.templates().values()) and len(tpl.templates()) == 1

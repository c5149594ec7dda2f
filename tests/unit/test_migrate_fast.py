"""A no-op `migrate --all` is one concurrent read of every tenant's django_migrations:
which tenants have work, and what is done for them, decided without a daemon (the
database server and the steps around it are fakes here)."""
import json
import os
import threading
from types import SimpleNamespace

import psycopg2
import psycopg2.errors
import pytest

from tenantkit.act import migrations
from tenantkit.model import Tenant
from tenantkit.orchestration import fleet
from tenantkit.orchestration.fleet import work_summary

GRAPH = [["notes", "0001_initial", []], ["notes", "0002_tags", []]]


def tenant(project, name: str, port: int = 8101) -> Tenant:
    return Tenant(name=name, hosts=(f"{name}.localhost",), title=name, port=port, memory="256m",
                  workers=1, threads=4, path=project.tenant_dir(name))


class FakeServer:
    """The databases a fake admin_connect knows: name -> django_migrations rows (None: no
    table); `up` False refuses every connection, as a stopped server does."""

    def __init__(self, databases: dict, up: bool = True, unsettled: tuple = (), barrier=None):
        self.databases, self.up, self.unsettled, self.barrier = databases, up, set(unsettled), barrier
        self.opened: list[str] = []
        self.lock = threading.Lock()

    def connect(self, project, dbname: str = "postgres", retry: bool = True):
        assert retry is False, "a read must not wait for a server that is not there"
        with self.lock:
            self.opened.append(dbname)
        if not self.up or (dbname != "postgres" and dbname not in self.databases):
            raise psycopg2.OperationalError(f'database "{dbname}" does not exist')
        if self.barrier is not None and dbname != "postgres":
            self.barrier.wait()  # passes only when enough reads are open at once
        return FakeConnection(self, dbname)


class FakeConnection:
    def __init__(self, server: FakeServer, dbname: str):
        self.server, self.dbname, self.rows = server, dbname, []

    def cursor(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, query: str, params=()):
        if "pg_database" in query:
            assert params == (migrations.UNSETTLED,)
            self.rows = [(name,) for name in self.server.databases if name not in self.server.unsettled]
        elif self.server.databases[self.dbname] is None:
            raise psycopg2.errors.UndefinedTable('relation "django_migrations" does not exist')
        else:
            self.rows = list(self.server.databases[self.dbname])

    def fetchall(self):
        return self.rows

    def close(self):
        pass


@pytest.fixture
def server(monkeypatch):
    def install(*args, **kwargs) -> FakeServer:
        fake = FakeServer(*args, **kwargs)
        monkeypatch.setattr(migrations.database, "admin_connect", fake.connect)
        return fake
    return install


def test_each_tenant_gets_its_rows_or_none_when_its_database_or_table_is_missing(project, server):
    fake = server({"acme": [("notes", "0001_initial")], "bare": None})
    tenants = [tenant(project, name, 8101 + i) for i, name in enumerate(("acme", "bare", "newco"))]
    applied = migrations.applied_by_tenant(project, tenants)
    assert applied == {"acme": {("notes", "0001_initial")}, "bare": None, "newco": None}
    assert "newco" not in fake.opened  # a database the server does not list costs no connection


def test_a_stopped_server_answers_none_for_every_tenant_after_one_attempt(project, server):
    fake = server({"acme": [("notes", "0001_initial")]}, up=False)
    applied = migrations.applied_by_tenant(project, [tenant(project, "acme")])
    assert applied == {"acme": None}
    assert fake.opened == ["postgres"]


def test_a_database_still_being_made_counts_as_missing(project, server):
    server({"acme": [("notes", "0001_initial")], "zed": [("notes", "0001_initial")]}, unsettled=("zed",))
    applied = migrations.applied_by_tenant(project, [tenant(project, "acme"), tenant(project, "zed", 8102)])
    assert applied["acme"] == {("notes", "0001_initial")} and applied["zed"] is None


def test_databases_are_read_concurrently(project, server):
    names = [f"t{i:02d}" for i in range(8)]
    # Each read waits until four are open at once: read one after another, they would time out.
    server({name: [] for name in names}, barrier=threading.Barrier(4, timeout=5))
    applied = migrations.applied_by_tenant(project, [tenant(project, n, 8101 + i) for i, n in enumerate(names)])
    assert applied == {name: set() for name in names}


def test_only_tenants_missing_a_migration_of_their_graph_are_pending(project, monkeypatch):
    tenants = [tenant(project, name, 8101 + i) for i, name in enumerate(("done", "behind", "empty"))]
    images = {t.name: "app:1" for t in tenants}
    asked = []

    def graphs(project_, client, chosen, found, images_, broken=None):
        asked.append([t.name for t in chosen])
        return {migrations.graph_key(t, images_): GRAPH for t in chosen}

    monkeypatch.setattr(migrations, "migration_graphs", graphs)
    applied = {"done": {("notes", "0001_initial"), ("notes", "0002_tags")},
               "behind": {("notes", "0001_initial")}, "empty": None}
    pending, broken = migrations.pending_of(project, None, tenants, {}, images, applied)
    assert [t.name for t in pending] == ["behind", "empty"] and broken == {}
    assert asked == [["done", "behind"]]  # a database with nothing recorded needs no graph


def test_no_graph_is_read_when_no_tenant_has_migrations_recorded(project, monkeypatch):
    monkeypatch.setattr(migrations, "migration_graphs", lambda *a: pytest.fail("graph read"))
    pending, _ = migrations.pending_of(project, None, [tenant(project, "new")], {}, {"new": "app:1"}, {"new": None})
    assert [t.name for t in pending] == ["new"]


def test_a_tenant_whose_graph_cannot_be_read_is_broken_and_the_others_are_still_checked(project, monkeypatch):
    tenants = [tenant(project, name, 8101 + i) for i, name in enumerate(("ok", "bad"))]
    images = {t.name: "app:1" for t in tenants}
    tenants[1].path.mkdir(parents=True)
    (tenants[1].path / "local_settings.py").write_text("raise ImportError('no')\n")  # a kind of its own

    def read(project_, tenant_, command, running, env=None):
        if tenant_.name == "bad":
            return 1, "Traceback (most recent call last):\n  File \"settings.py\"\nImportError: no\n"
        return 0, json.dumps(GRAPH) + "\n"

    monkeypatch.setattr(migrations, "in_tenant", read)
    monkeypatch.setattr(migrations, "_graph_cache", lambda *a: None)
    applied = {"ok": {("notes", "0001_initial")}, "bad": {("notes", "0001_initial")}}
    pending, broken = migrations.pending_of(project, None, tenants, {}, images, applied)
    assert [t.name for t in pending] == ["ok"]
    assert list(broken) == ["bad"] and "ImportError: no" in broken["bad"]
    with pytest.raises(migrations.SettingsBroken, match="tenant bad: its settings do not load"):
        migrations.migration_graphs(project, None, tenants, {}, images)
    # A failure that is not Python's (Compose, the engine) is not a broken tenant: it stops the run.
    monkeypatch.setattr(migrations, "in_tenant", lambda *a: (1, "Error response from daemon: no such image\n"))
    with pytest.raises(migrations.OperationFailed, match="no such image") as raised:
        migrations.pending_of(project, None, tenants, {}, images, applied)
    assert not isinstance(raised.value, migrations.SettingsBroken)


def test_a_squashed_migration_counts_as_applied_when_all_it_replaces_are():
    graph = [["notes", "0001_squashed_0002", [["notes", "0001_initial"], ["notes", "0002_tags"]]]]
    assert not migrations.needs_migrate(graph, {("notes", "0001_initial"), ("notes", "0002_tags")})
    assert migrations.needs_migrate(graph, {("notes", "0001_initial")})


def test_the_summary_names_the_tenants_with_work(project):
    chosen = [tenant(project, name, 8101 + i) for i, name in enumerate(("a", "b", "c"))]
    assert work_summary(chosen, [chosen[1], chosen[2]]) == "1 of 3 tenants up to date; migrating b, c"
    assert work_summary(chosen, []) == "3 of 3 tenants up to date"


class FakeFleet:
    """fleet.migrate's collaborators, recorded: what the database reads answer (a list of
    answers, one per read), and which tenants each step was asked about."""

    def __init__(self, monkeypatch, project, tenants, reads, codes=None):
        self.calls: list[tuple[str, list[str]]] = []
        self.reads = list(reads)
        self.codes = codes or {}
        rendered = SimpleNamespace(tenants=tenants, images={t.name: "app:1" for t in tenants}, rejected={})

        def record(step):
            def call(*args, **kw):
                tenants_asked = next(a for a in args if isinstance(a, list))
                self.calls.append((step, [t.name for t in tenants_asked]))
            return call

        monkeypatch.setattr(fleet.engine, "connect", lambda: None)
        monkeypatch.setattr(fleet.engine, "containers", lambda *a, **kw: {})
        monkeypatch.setattr(fleet.stack, "render", lambda *a, **kw: rendered)
        monkeypatch.setattr(fleet.stack, "ensure_images", lambda *a, **kw: None)
        monkeypatch.setattr(fleet.stack, "unbuilt", lambda *a, **kw: {})
        monkeypatch.setattr(fleet.stack, "start_database", record("start_database"))
        monkeypatch.setattr(fleet.stack, "provision", record("provision"))
        monkeypatch.setattr(fleet.stack, "template_keys", lambda *a, **kw: {})
        monkeypatch.setattr(fleet.migrations, "migration_graphs",
                            lambda p, c, chosen, f, images, broken=None: {
                                migrations.graph_key(t, images): GRAPH for t in chosen})
        monkeypatch.setattr(fleet.migrations, "applied_by_tenant", self.read)
        monkeypatch.setattr(fleet, "in_tenant", self.run)

    def read(self, project, tenants):
        self.calls.append(("read", [t.name for t in tenants]))
        answer = self.reads.pop(0)
        return {t.name: answer.get(t.name) for t in tenants}

    def run(self, project, tenant, command, running, env=None):
        self.calls.append(("migrate", [tenant.name]))
        return self.codes.get(tenant.name, 0), f"migrated {tenant.name}\n"


DONE = {("notes", "0001_initial"), ("notes", "0002_tags")}


def test_a_no_op_migrate_reads_the_databases_once_and_does_nothing_else(project, monkeypatch):
    tenants = [tenant(project, name, 8101 + i) for i, name in enumerate(("a", "b"))]
    fake = FakeFleet(monkeypatch, project, tenants, [{"a": DONE, "b": DONE}])
    said = []
    outcomes, folder = fleet.migrate(project, all_=True, report=said.append)
    assert [(o.tenant, o.result) for o in outcomes] == [("a", "up-to-date"), ("b", "up-to-date")]
    assert folder is None and not (project.state_dir / "runs").exists()
    assert fake.calls == [("read", ["a", "b"])]  # no database start, no provisioning, no container
    assert said == ["2 of 2 tenants up to date"]


def test_only_tenants_with_work_are_provisioned_and_migrated(project, monkeypatch):
    tenants = [tenant(project, name, 8101 + i) for i, name in enumerate(("a", "b", "c"))]
    behind = {("notes", "0001_initial")}
    fake = FakeFleet(monkeypatch, project, tenants, [{"a": DONE, "b": behind}, {"b": behind}])
    said = []
    outcomes, folder = fleet.migrate(project, all_=True, report=said.append)
    assert [(o.tenant, o.result) for o in outcomes] == [("a", "up-to-date"), ("b", "ok"), ("c", "ok")]
    assert fake.calls[:4] == [("read", ["a", "b", "c"]), ("start_database", ["b", "c"]),
                              ("provision", ["b", "c"]), ("read", ["b", "c"])]
    assert sorted(fake.calls[4:]) == [("migrate", ["b"]), ("migrate", ["c"])]
    assert "1 of 3 tenants up to date; migrating b, c" in said
    assert sorted(os.listdir(folder)) == ["b.log", "c.log"]


def test_a_server_that_was_down_is_looked_at_again_before_anyone_is_migrated(project, monkeypatch):
    tenants = [tenant(project, name, 8101 + i) for i, name in enumerate(("a", "b"))]
    fake = FakeFleet(monkeypatch, project, tenants, [{}, {"a": DONE, "b": DONE}])
    outcomes, folder = fleet.migrate(project, all_=True)
    assert [o.result for o in outcomes] == ["up-to-date", "up-to-date"] and folder is None
    assert [step for step, _ in fake.calls] == ["read", "start_database", "provision", "read"]


def test_a_failing_migrate_is_an_outcome_that_failed(project, monkeypatch):
    tenants = [tenant(project, name, 8101 + i) for i, name in enumerate(("a", "b"))]
    FakeFleet(monkeypatch, project, tenants, [{"a": DONE}, {}], codes={"b": 3})
    outcomes, folder = fleet.migrate(project, all_=True)
    assert [(o.tenant, o.result, o.exit_code) for o in outcomes] == [("a", "up-to-date", 0), ("b", "failed", 3)]
    assert (folder / "b.log").read_text() == "migrated b\n"


def test_every_mark_of_a_database_being_made_is_one_the_fast_read_skips():
    from tenantkit.act import database
    for mark in (database.RESTORING, database.LOADED, database.CLONING):
        assert mark.startswith(database.UNSETTLED_PREFIX)
    assert migrations.UNSETTLED == database.UNSETTLED_PREFIX + "%"
    assert not database._template_comment(SimpleNamespace(name="p"), "x").startswith(database.UNSETTLED_PREFIX)

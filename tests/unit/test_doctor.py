"""`tenant doctor`'s judgements, on facts made by hand (no engine, no database)."""
import ipaddress
import socket
from dataclasses import replace

from tenantkit.act import state
from tenantkit.act.database import DatabaseInfo, RoleInfo, Server
from tenantkit.act.engine import Container, ContainerState
from tenantkit.model import ConfigError, ProxyMode, Tenant
from tenantkit.orchestration.doctor import (FAIL, OK, WARN, Facts, _split, check_containers, check_database,
                                            check_databases, check_folders, check_network_pool, check_ports,
                                            check_state, error_line)


def tenant(project, name, port, **changes):
    return replace(Tenant(name=name, hosts=(f"{name}.localhost",), title=name, port=port, memory="256m", workers=1,
                          threads=4, path=project.tenants_dir / name), **changes)


def facts(project, tenants, **values):
    made = Facts(project, [t.name for t in tenants], tenants, tenants, state.State(), None, None)
    for key, value in values.items():
        setattr(made, key, value)
    return made


def container(name, service, project="p", running=True, oneoff=False):
    return Container(id=name, name=name, service=service, state=ContainerState.RUNNING if running else
                     ContainerState.STOPPED, image="i", image_id="sha256:i", restarting=False,
                     labels={"com.docker.compose.project": project, "com.docker.compose.service": service,
                             "com.docker.compose.oneoff": str(oneoff)}, addresses={})


TRACEBACK = """Traceback (most recent call last):
  File "/app/manage.py", line 22, in <module>
    main()
  File "/opt/venv/lib/python3.11/site-packages/django/apps/config.py", line 193, in create
    import_module(entry)
           ^^^^^^^^^^^^^
ModuleNotFoundError: No module named 'nosuchapp'
"""


def test_the_line_that_says_what_is_wrong_is_picked_from_a_failed_check():
    assert error_line(TRACEBACK, 1) == "ModuleNotFoundError: No module named 'nosuchapp'"
    chained = TRACEBACK + "\nDuring handling of the above exception, another exception occurred:\n\n" + \
        TRACEBACK.replace("ModuleNotFoundError: No module named 'nosuchapp'",
                          "django.core.exceptions.ImproperlyConfigured: SECRET_KEY must not be empty")
    assert error_line(chained, 1) == "django.core.exceptions.ImproperlyConfigured: SECRET_KEY must not be empty"
    checks = ("SystemCheckError: System check identified some issues:\n\nERRORS:\n"
              "?: (admin.E403) A 'django.template.backends.django.DjangoTemplates' instance must be configured.\n"
              "\nSystem check identified 1 issue (0 silenced).\n")
    assert error_line(checks, 1).startswith("?: (admin.E403) A 'django.template")
    assert error_line("", 137) == "no output (exit 137)"


def test_an_error_message_splits_into_the_problem_and_its_fix():
    problem, fix = _split(ConfigError("networks.pool 10.1.0.0/16 overlaps 10.1.2.0/24; set another range"))
    assert (problem, fix) == ("networks.pool 10.1.0.0/16 overlaps 10.1.2.0/24", "set another range")
    assert _split(ConfigError("no fix here")) == ("no fix here", None)


def test_the_pool_check_names_an_overlap_and_counts_what_is_left(project):
    known = state.State()
    state.allocate_subnets(project, known, ["a", "b"])
    pool = project.networks.pool
    clean = facts(project, [], state=known, foreign=[ipaddress.IPv4Network("172.17.0.0/16")])
    [finding] = check_network_pool(clean)
    assert finding.status == OK and f"2 of {project.networks.capacity}" in finding.message
    inside = ipaddress.IPv4Network((int(pool.network_address) + 4096, 24))
    overlapping = check_network_pool(facts(project, [], state=known, foreign=[inside]))
    assert overlapping[0].status == FAIL and str(inside) in overlapping[0].message
    assert "networks.pool" in overlapping[0].fix
    small = replace(project, networks=replace(project.networks, pool=ipaddress.IPv4Network("10.99.0.0/26")))
    full = state.State()
    state.allocate_subnets(small, full, ["a", "b", "c", "d"])
    t = tenant(small, "e", 9000)
    [exhausted] = check_network_pool(facts(small, [t], state=full, foreign=[]))
    assert exhausted.status == FAIL and "1 tenants need one" in exhausted.message


def test_stale_state_entries_are_named_with_the_subnet_they_hold(project):
    known = state.State()
    state.allocate_subnets(project, known, ["acme", "gone"])
    [finding] = check_state(facts(project, [tenant(project, "acme", 9000)], state=known))
    assert finding.status == WARN and "gone" in finding.message and "1 subnet" in finding.message
    assert "state.json" in finding.fix


def test_containers_of_no_tenant_are_orphans_and_the_projects_own_are_not(project):
    name = project.name
    listed = [container("db-1", "db", name), container("proxy-1", "proxy", name),
              container("acme-1", "tenant-acme", name), container("acme-run", "tenant-acme", name, oneoff=True),
              container("ghost-1", "tenant-ghost", name, running=False), container("odd", "", name)]
    [finding] = check_containers(facts(project, [tenant(project, "acme", 9000)], containers=listed))
    assert finding.status == WARN and "ghost-1 (stopped)" in finding.message and "odd" in finding.message
    assert finding.fix.endswith("`docker rm -f ghost-1 odd`") and "acme" not in finding.message
    host_mode = replace(project, proxy=replace(project.proxy, mode=ProxyMode.HOST))
    [finding] = check_containers(facts(host_mode, [tenant(project, "acme", 9000)], containers=listed[:3]))
    assert "proxy-1" in finding.message  # no proxy service in host mode: a leftover


def test_orphan_databases_on_the_projects_own_server_and_on_an_external_one(project):
    databases = [DatabaseInfo(name, owner, comment, template, 1024) for name, owner, comment, template in (
        ("postgres", "postgres", "", False), ("template1", "postgres", "", True), ("acme", "acme", "", False),
        ("tk_tpl_0123", "postgres", "tenantkit template: project=x", True), ("ghost", "ghost", "", False),
        ("other_app", "app_owner", "", False), ("half", "postgres", "tenantkit: restore in progress", False))]
    roles = [RoleInfo("postgres", True, True), RoleInfo("acme", True, False), RoleInfo("ghost", True, False),
             RoleInfo("app_owner", True, False), RoleInfo("monitor", True, False)]
    server = Server("15.8", 150008, 1000, 3, 4)
    acme = tenant(project, "acme", 9000)
    own = check_databases(facts(project, [acme], databases=databases, roles=roles, server=server))
    assert [f.status for f in own] == [WARN, WARN]
    assert all(word in own[0].message for word in ("ghost (1.0 KiB, with its role ghost)",
                                                   "other_app (1.0 KiB, with its role app_owner)", "half"))
    assert "acme" not in own[0].message and "tk_tpl" not in own[0].message and "postgres" not in own[0].message
    assert own[1].message == "login roles that belong to no tenant: monitor"
    assert "DROP DATABASE \"ghost\" WITH (FORCE)' -c 'DROP ROLE \"ghost\"'" in own[0].fix

    external = replace(project, database=replace(project.database, service=False, host="db1.example.app"))
    theirs = check_databases(facts(external, [acme], databases=databases, roles=roles, server=server))
    assert len(theirs) == 1 and "ghost" in theirs[0].message and "half" in theirs[0].message
    assert "other_app" not in theirs[0].message and "monitor" not in theirs[0].message  # not tenantkit's naming
    # A shared server: no ready-made DROP for what only looks like tenantkit's.
    assert "another project" in theirs[0].fix and "DROP" not in theirs[0].fix


def test_fixes_quote_names_for_the_shell_and_for_sql(project):
    databases = [DatabaseInfo('we"ird', 'we"ird', "", False, 1024), DatabaseInfo("it's", "postgres", "", False, 1)]
    roles = [RoleInfo("postgres", True, True), RoleInfo('we"ird', True, False)]
    found = check_databases(facts(project, [], databases=databases, roles=roles, server=Server("15.8", 150008, 100, 3, 1)))
    assert """-c 'DROP DATABASE "we""ird" WITH (FORCE)' -c 'DROP ROLE "we""ird"'""" in found[0].fix
    assert """-c 'DROP DATABASE "it'"'"'s" WITH (FORCE)'""" in found[0].fix


def test_the_connection_budget_warns_when_overcommitted_or_busy(project):
    fleet = [tenant(project, f"t{i}", 9000 + i) for i in range(10)]  # 7 each: 70
    roomy = check_database(facts(project, fleet, server=Server("15.8", 150008, 100, 3, 10)))
    assert [f.status for f in roomy] == [OK, OK] and "add up to 70 of the 97" in roomy[1].message
    tight = check_database(facts(project, fleet, server=Server("15.8", 150008, 60, 3, 50)))
    assert [f.status for f in tight] == [OK, WARN, WARN]
    assert "50 of 60 connections in use" in tight[1].message and "overcommitted 1.2x" in tight[2].message
    assert "database.max_connections" in tight[2].fix
    old = check_database(facts(project, fleet, server=Server("12.3", 120003, 100, 3, 1)))
    assert old[0].status == FAIL and "older than 13" in old[0].message


def test_ports_claimed_twice_or_reserved_or_held_by_another_program_are_clashes(project_dir):
    from tenantkit.model import load_project
    from tests.conftest import write_project
    project = load_project(write_project(project_dir, proxy={"mode": "host", "port": 8081}))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        tenants = [tenant(project, "a", busy), tenant(project, "b", busy + 1), tenant(project, "c", busy + 1),
                   tenant(project, "d", project.database.publish_port), tenant(project, "e", 8081)]
        findings = check_ports(facts(project, tenants, published={}))
    messages = " | ".join(f.message for f in findings)
    assert all(f.status == FAIL and f.fix for f in findings), findings
    assert f"tenant a's port 127.0.0.1:{busy} is taken by another program" in messages
    assert f"port {busy + 1} is claimed by both b and c" in messages
    assert "tenant d's port" in messages and "the database's" in messages
    assert "tenant e's port 8081 is the host Apache's" in messages
    suggested = [f.fix.split("port=")[1].split("`")[0] for f in findings if "port=" in f.fix]
    assert len(set(suggested)) == len(suggested)  # each clash gets a port of its own


def test_half_made_and_half_removed_tenant_folders_are_named(project):
    staging = project.tenants_dir / ".acme.new-0badc0de"
    staging.mkdir(parents=True)
    (project.state_dir / "backup-999999999-x1").mkdir(parents=True)  # no such process
    (project.media_root / "gone").mkdir(parents=True)
    removing = tenant(project, "zed", 9001, enabled=False, removing="backups/zed-1.tar.gz")
    findings = check_folders(facts(project, [tenant(project, "acme", 9000), removing]))
    messages = " | ".join(f.message for f in findings)
    assert ".acme.new-0badc0de" in messages and "backup-999999999-x1" in messages
    assert "media/gone" in messages
    assert any(f.tenant == "zed" and f.fix.startswith("finish it: `tenant rm zed --yes`") for f in findings)
    assert all(f.status == WARN for f in findings)

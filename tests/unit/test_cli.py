"""Bad input gets one line on stderr, exit code 2, and nothing written."""
import os
import stat

import pytest

from tests.conftest import snapshot, tenant_cli


def assert_refused(run, *words):
    assert run.code == 2, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in run.err


def test_new_creates_the_tenant_folder_in_the_seed_layout(project_dir):
    run = tenant_cli(project_dir, "new", "acme", "--host", "acme.localhost", "--title", "ACME Inc")
    assert run.code == 0, run.err
    folder = project_dir / "tenants" / "acme"
    assert (folder / "tenant.yaml").is_file() and (folder / "settings.py").is_file()
    assert (project_dir / "media" / "acme").is_dir()  # apart from the secrets: the proxy mounts media/
    assert stat.S_IMODE((folder / "secrets.env").stat().st_mode) == 0o600
    assert (folder / "secrets.env").stat().st_uid == 10001  # the container's uid reads it, no one else
    secrets = (folder / "secrets.env").read_text()
    assert "TENANT_DB_PASSWORD=" in secrets and "TENANT_SECRET_KEY=" in secrets
    password = secrets.split("TENANT_DB_PASSWORD=")[1].split()[0]
    assert password not in run.out + run.err
    compose = (project_dir / "compose" / "compose.yaml").read_text()
    assert "tenant-acme" in compose and password not in compose


def test_new_chooses_stable_distinct_ports(project_dir):
    tenant_cli(project_dir, "new", "acme")
    tenant_cli(project_dir, "new", "zed")
    ports = [int(line.split(":")[1]) for name in ("acme", "zed")
             for line in (project_dir / "tenants" / name / "tenant.yaml").read_text().splitlines()
             if line.startswith("port:")]
    assert len(set(ports)) == 2
    tenant_cli(project_dir, "render")
    assert f"port: {ports[0]}" in (project_dir / "tenants" / "acme" / "tenant.yaml").read_text()


@pytest.mark.parametrize("args, words", [
    (["new", "Acme"], ["'Acme'", "lowercase identifier"]),
    (["new", "../x"], ["path"]),
    (["new", "x" * 41], ["longer than 40"]),
    (["new", "postgres"], ["reserved"]),
    (["new", "template1"], ["reserved"]),
    (["new", "all"], ["reserved"]),
    (["new", "db"], ["reserved"]),
    (["new", "ok", "--host", "bad host"], ["not a valid host name"]),
    (["new", "ok", "--host", "a\nServerAlias x.com"], ["not a valid host name"]),
    (["new", "ok", "--memory", "lots"], ["not a size"]),
    (["new", "acme"], ["already exists"]),
    (["new", "other", "--host", "acme.localhost"], ["'acme.localhost' is already used by tenant 'acme'"]),
    (["up", "nobody"], ["unknown tenant 'nobody'"]),
    (["up", "../acme"], ["path"]),
    (["up"], ["name a tenant, or pass --all"]),
    (["manage", "nobody", "--", "check"], ["unknown tenant 'nobody'"]),
    (["manage", "acme"], ["give the manage.py command"]),
    (["frobnicate"], ["No such command"]),
])
def test_bad_input_is_refused_and_writes_nothing(project_dir, args, words):
    assert tenant_cli(project_dir, "new", "acme", "--host", "acme.localhost").code == 0
    before = snapshot(project_dir)
    # No engine at all: validation must come first, and never need Docker.
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    assert_refused(tenant_cli(project_dir, *args, env=env), *words)
    assert snapshot(project_dir) == before


def test_a_malformed_tenant_yaml_is_named_with_its_line(project_dir):
    tenant_cli(project_dir, "new", "acme")
    path = project_dir / "tenants" / "acme" / "tenant.yaml"
    path.write_text(path.read_text().replace("port:", "port: [", 1))
    before = snapshot(project_dir)
    assert_refused(tenant_cli(project_dir, "render"), "tenants/acme/tenant.yaml:", "malformed YAML")
    assert snapshot(project_dir) == before


def test_no_reachable_engine_says_how_to_start_one(project_dir):
    tenant_cli(project_dir, "new", "acme")
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    for args in (["up", "acme"], ["list"], ["down", "acme"]):
        assert_refused(tenant_cli(project_dir, *args, env=env), "no Docker engine is reachable", "make engine")


def test_no_project_says_where_it_looked(tmp_path):
    run = tenant_cli(tmp_path, "list")
    assert_refused(run, "tenantkit.yaml does not exist")


def test_help_works_everywhere(project_dir):
    for command in ([], ["new"], ["up"], ["down"], ["list"], ["manage"], ["render"], ["build"]):
        run = tenant_cli(project_dir, *command, "--help")
        assert run.code == 0 and "Usage:" in run.out, command


def test_render_writes_a_compose_file_without_docker(project_dir):
    tenant_cli(project_dir, "new", "acme")
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    run = tenant_cli(project_dir, "render", env=env)
    assert run.code == 0, run.err
    assert "tenant-acme" in (project_dir / "compose" / "compose.yaml").read_text()

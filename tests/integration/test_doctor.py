"""`tenant doctor` on a real engine and database: every problem it looks for is made for
real (by hand, the way a crash or another tool would leave it), found, and named with a
fix that works; a healthy project passes; a dead engine fails cleanly."""
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import docker
import psycopg2
import pytest
import yaml

from tests.conftest import write_project
from tests.integration.conftest import Stack, free_port

PREFIX = f"tkdoc{os.getpid()}"


@contextmanager
def throwaway_stack(suffix: str, **overrides) -> Iterator[Stack]:
    """A project of its own named PREFIX+suffix, on free ports, with alpha and beta up;
    removed afterwards, also when it did not come up."""
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{suffix}-"))
    os.chmod(folder, 0o755)
    stack = Stack(write_project(folder, name=f"{PREFIX}{suffix}", database__publish_port=free_port(),
                                ports__first=free_port(), proxy__port=free_port(), **overrides))
    try:
        stack.ok("new", "alpha")
        stack.ok("new", "beta")
        stack.ok("up", "--all")
        yield stack
    finally:
        remove_stack(stack)


def remove_stack(stack: Stack) -> None:
    subprocess.run(["docker", "compose", "-f", str(stack.root / "compose" / "compose.yaml"), "down", "-v",
                    "--remove-orphans", "-t", "5"], capture_output=True)
    client = docker.from_env()
    name = config(stack)["name"]
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(f"{name}/"):  # this test's tags only; the layers stay for everyone
                untag(client, image.id, tag)
    shutil.rmtree(stack.root, ignore_errors=True)  # the folder make_stack made, and only that


def untag(client, image_id: str, tag: str) -> None:
    """Remove one of this test's tags and nothing else. Projects built from the same code
    share an image id, so the last tag may name an image another project's container runs:
    the engine then wants force, which only untags while those containers run (a running
    container's image is never deleted). Used by a stopped one, the tag stays."""
    try:
        client.images.remove(tag)
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
        users = client.api.containers(all=True, filters={"ancestor": image_id})
        if users and all(user["State"] == "running" for user in users):
            client.images.remove(tag, force=True)


def config(stack: Stack) -> dict:
    return yaml.safe_load((stack.root / "tenantkit.yaml").read_text())


@pytest.fixture(scope="module")
def compose_stack():
    with throwaway_stack("c") as stack:
        yield stack


@pytest.fixture(scope="module")
def host_stack():
    with throwaway_stack("h", proxy__mode="host") as stack:
        yield stack


def doctor(stack: Stack, *args: str, env: dict | None = None) -> tuple[int, dict, float]:
    """Run `tenant doctor --json`; its exit code, its report and how long it took."""
    started = time.monotonic()
    run = stack.cli("doctor", "--json", *args, env=env)
    seconds = time.monotonic() - started
    assert "Traceback" not in run.err, run.err
    return run.code, json.loads(run.out), seconds


def found(report: dict, check: str, status: str | None = None) -> list[dict]:
    return [f for f in report["checks"] if f["check"] == check and (status is None or f["status"] == status)]


def one(report: dict, check: str, status: str, *words: str) -> dict:
    """The finding of `check` with `status` whose message holds every word; it must name a fix."""
    hits = [f for f in found(report, check, status) if all(word in f["message"] for word in words)]
    assert hits, f"no {status} {check} finding with {words}:\n{json.dumps(report['checks'], indent=1)}"
    assert hits[0]["fix"], hits[0]
    return hits[0]


def admin(stack: Stack):
    password = (stack.root / ".tenantkit" / "db.env").read_text().split("POSTGRES_PASSWORD=")[1].split("\n")[0]
    conn = psycopg2.connect(host="127.0.0.1", port=stack.db_port(), user="postgres", password=password,
                            dbname="postgres", connect_timeout=5)
    conn.autocommit = True
    return conn


def sh(stack: Stack, command: str) -> None:
    """Run a fix the way an operator would paste it."""
    result = subprocess.run(command, shell=True, cwd=stack.root, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"


def fix_command(finding: dict) -> str:
    """The command between backticks in a finding's fix."""
    return finding["fix"].split("`")[1]


def test_a_healthy_project_passes_quickly_and_its_json_parses(compose_stack):
    code, report, seconds = doctor(compose_stack)
    assert code == 0 and report["ok"] is True, report
    assert {f["status"] for f in report["checks"]} == {"ok"}, json.dumps(report["checks"], indent=1)
    checks = {f["check"] for f in report["checks"]}
    assert checks >= {"engine", "compose", "config", "network pool", "database", "connections", "proxy", "ports",
                      "settings", "state", "containers", "networks", "databases", "folders", "backups"}
    assert "config test passes" in found(report, "proxy")[0]["message"]
    assert "2 tenants load" in found(report, "settings")[0]["message"]
    print(f"\ntenant doctor on a healthy 2-tenant project: {seconds:.2f} s")
    assert seconds < 10
    text = compose_stack.cli("doctor")
    assert text.code == 0 and "0 failed" in text.out and "fix:" not in text.out


def test_doctor_changes_nothing(compose_stack):
    def files():
        return {str(p.relative_to(compose_stack.root)): p.read_bytes() for p in sorted(compose_stack.root.rglob("*"))
                if p.is_file() and not {"logs", "cache"} & set(p.relative_to(compose_stack.root).parts)}

    def engine_and_server():
        client = docker.from_env()
        label = {"label": f"com.docker.compose.project={config(compose_stack)['name']}"}
        containers = sorted((c["Id"], c["State"]) for c in client.api.containers(all=True, filters=label))
        networks = sorted(n["Id"] for n in client.api.networks(filters=label))
        everyone = len(client.api.containers(all=True, filters={"label": "tenantkit.doctor"}))
        conn = admin(compose_stack)
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database UNION ALL SELECT rolname FROM pg_roles ORDER BY 1")
            catalogue = cur.fetchall()
        conn.close()
        return containers, networks, everyone, catalogue

    before = files(), engine_and_server()
    assert doctor(compose_stack)[0] == 0
    assert (files(), engine_and_server()) == before


def test_doctor_finds_each_problem_names_the_fix_and_the_fixes_work(compose_stack):
    stack = compose_stack
    name = config(stack)["name"]
    pool = ipaddress.IPv4Network(config(stack)["networks"]["pool"])
    client = docker.from_env()
    conn = admin(stack)
    cleanups = []
    try:
        # Settings that do not load, on disk only: the running container does not notice.
        local = stack.root / "tenants" / "alpha" / "local_settings.py"
        local.write_text('INSTALLED_APPS = [*INSTALLED_APPS, "nosuchapp"]\n')
        cleanups.append(lambda: local.unlink(missing_ok=True))
        # A container, a network, a database and role with the project's labels and naming, of no tenant.
        image = client.api.inspect_container(f"{name}-tenant-beta-1")["Image"]
        ghost = client.containers.run(image, ["sleep", "300"], detach=True, name=f"{name}-tenant-ghost-1",
                                      labels={"com.docker.compose.project": name,
                                              "com.docker.compose.service": "tenant-ghost"})
        cleanups.append(lambda: ghost.remove(force=True))
        spare = list(pool.subnets(new_prefix=28))[-1]  # far from the tenants' subnets, which come first
        network = client.networks.create(f"{name}_tenant-ghost", labels={"com.docker.compose.project": name},
                                         ipam=docker.types.IPAMConfig(pool_configs=[
                                             docker.types.IPAMPool(subnet=str(spare))]))
        cleanups.append(network.remove)
        with conn.cursor() as cur:
            cur.execute("CREATE ROLE ghost LOGIN")
            cur.execute("CREATE DATABASE ghost OWNER ghost")
        cleanups.append(lambda: [conn.cursor().execute(statement) for statement in (
            "DROP DATABASE IF EXISTS ghost WITH (FORCE)", "DROP ROLE IF EXISTS ghost")])
        # Another tool's network inside the pool.
        taken = str(list(pool.subnets(new_prefix=24))[200])
        foreign = client.networks.create(f"{PREFIX}-foreign", ipam=docker.types.IPAMConfig(pool_configs=[
            docker.types.IPAMPool(subnet=taken)]))
        cleanups.append(foreign.remove)
        # A state entry of a tenant that no longer exists, a half-made tenant folder, a vhost Apache refuses.
        state_file = stack.root / ".tenantkit" / "state.json"
        known = json.loads(state_file.read_text())
        state_file.write_text(json.dumps({**known, "tenants": {**known["tenants"], "ghost": {
            "subnet": str(list(pool.subnets(new_prefix=28))[-2])}}}))
        cleanups.append(lambda: state_file.write_text(json.dumps(known)))
        staging = stack.root / "tenants" / ".gamma.new-0badc0de"
        staging.mkdir()
        cleanups.append(lambda: shutil.rmtree(staging, ignore_errors=True))
        broken = stack.root / "compose" / "apache" / "sites" / "zz-broken.conf"
        broken.write_text("NotADirective on\n")
        cleanups.append(lambda: broken.unlink(missing_ok=True))

        code, report, _ = doctor(stack)
        assert code == 1 and report["ok"] is False
        settings = one(report, "settings", "fail", "alpha", "nosuchapp")
        assert settings["tenant"] == "alpha" and "local_settings.py" in settings["fix"]
        assert not [f for f in found(report, "settings") if f["tenant"] == "beta"]
        containers = one(report, "containers", "warn", f"{name}-tenant-ghost-1")
        networks = one(report, "networks", "warn", f"{name}_tenant-ghost")
        databases = one(report, "databases", "warn", "ghost", "with its role ghost")
        one(report, "state", "warn", "ghost")
        folders = one(report, "folders", "warn", ".gamma.new-0badc0de")
        assert "networks.pool" in one(report, "network pool", "fail", str(pool), taken)["fix"]
        assert "tenant render" in one(report, "proxy", "fail", "httpd -t")["fix"]
        assert not found(report, "engine", "fail") and not found(report, "database", "fail")

        # Only beta: alpha's settings are not looked at, the project-wide checks still are.
        code, only_beta, _ = doctor(stack, "beta")
        assert code == 1 and not found(only_beta, "settings", "fail") and found(only_beta, "containers", "warn")
        assert stack.cli("doctor", "nosuch").code == 2

        # The fixes it names work, pasted as they are; with the rest undone, all is well again.
        for finding in (containers, networks, databases, folders):
            sh(stack, fix_command(finding))
        undo_all(cleanups)
        code, report, _ = doctor(stack)
        assert code == 0 and {f["status"] for f in report["checks"]} == {"ok"}, json.dumps(report["checks"], indent=1)
    finally:
        undo_all(cleanups)
        conn.close()


def undo_all(cleanups: list) -> None:
    """Undo what a test made, last first; what a fix removed already is gone."""
    for undo in reversed(cleanups):
        try:
            undo()
        except docker.errors.NotFound:
            pass


def test_a_stopped_database_fails_its_check_and_the_fix_brings_it_back(compose_stack):
    stack = compose_stack
    docker.from_env().containers.get(f"{config(stack)['name']}-db-1").stop(timeout=5)
    code, report, _ = doctor(stack)
    assert code == 1
    assert "tenant up --all" in one(report, "database", "fail", "is stopped")["fix"]
    assert found(report, "databases", "warn") and found(report, "settings", "ok") and found(report, "proxy", "ok")
    stack.ok(*fix_command(one(report, "database", "fail"))[len("tenant "):].split())
    code, report, _ = doctor(stack)
    assert code == 0, json.dumps(report["checks"], indent=1)


def test_a_dead_engine_fails_its_check_cleanly_and_the_others_still_run(compose_stack):
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    code, report, _ = doctor(compose_stack, env=env)
    assert code == 1 and report["ok"] is False
    engine = one(report, "engine", "fail", "no Docker engine")
    assert "make engine" in engine["fix"]
    for check in ("config", "state", "folders", "backups"):
        assert found(report, check, "ok"), check
    assert found(report, "settings", "warn") and found(report, "containers", "warn")
    text = compose_stack.cli("doctor", env=env)
    assert text.code == 1 and "Traceback" not in text.err and "fix: start one with `make engine`" in text.out


def test_a_port_held_by_another_program_is_a_clash_but_the_tenants_own_is_not(host_stack):
    stack = host_stack
    stack.ok("down", "beta")
    port = stack.port("beta")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        code, report, _ = doctor(stack)
        assert code == 1
        clash = one(report, "ports", "fail", "beta", str(port), "another program")
        assert clash["tenant"] == "beta" and "tenant set beta port=" in clash["fix"] and f":{port}" in clash["fix"]
        assert not [f for f in found(report, "ports") if f["tenant"] == "alpha"]  # its own container holds it
    code, report, _ = doctor(stack)
    assert code == 0 and found(report, "ports", "ok"), json.dumps(report["checks"], indent=1)


def test_a_missing_vhost_for_the_hosts_apache_is_named_and_render_writes_it(host_stack):
    stack = host_stack
    (stack.root / "compose" / "apache" / "sites" / "alpha.conf").unlink()
    code, report, _ = doctor(stack)
    assert code == 1
    assert "tenant render" in one(report, "proxy", "fail", "alpha")["fix"]
    stack.ok("render")
    assert doctor(stack)[0] == 0

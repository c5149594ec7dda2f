"""Past the limits a handful of tenants never reaches: 40 tenants on one engine.

A default engine hands out about 30 networks from its address pools; tenantkit gives each
tenant network an explicit subnet from its own pool, so the 40th tenant starts like the
first. Each answers its own page through the proxy, and no tenant's container can open a
connection to another's.
"""
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from tests.conftest import tenant_cli, write_project
from tests.integration.conftest import free_port

COUNT = 40


def ok(root: Path, *args: str):
    run = tenant_cli(root, *args)
    assert run.code == 0, f"tenant {' '.join(args)}: {run.err[-3000:]}"
    return run


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def can_connect(container: str, ip: str, port: int = 8000) -> bool:
    """Whether `container` can open a TCP connection to ip:port (2 s timeout)."""
    probe = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=2).close()"
    return subprocess.run(["docker", "exec", container, "python", "-c", probe],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def fleet():
    root = Path(tempfile.mkdtemp(prefix="tkscale-"))
    proxy_port = free_port()
    name = f"tkscale{os.getpid()}"
    # Health checks every 2 s, so that taking a tenant out of rotation is quick to see.
    write_project(root, name=name, database__publish_port=free_port(), ports__first=free_port(),
                  proxy__port=proxy_port, proxy__health_interval=2)
    names = [f"s{i:02d}" for i in range(COUNT)]
    try:
        for tenant in names:
            ok(root, "new", tenant, "--title", f"Scale {tenant.upper()}")
        ok(root, "up", "--all")
        yield root, name, names, proxy_port
    finally:
        subprocess.run(["docker", "compose", "-f", str(root / "compose" / "compose.yaml"), "down", "-v", "-t", "2"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_forty_tenants_each_get_a_network_of_their_own_past_the_default_pools(fleet):
    root, name, names, _ = fleet
    networks = docker("network", "ls", "--filter", f"label=com.docker.compose.project={name}",
                      "--format", "{{.Name}}").split()
    assert sorted(networks) == sorted(f"{name}_tenant-{t}" for t in names)
    assert len(docker("network", "ls", "-q").split()) > 31  # more than the default pools hold
    subnets = {json.loads(docker("network", "inspect", n, "--format", "{{json .IPAM.Config}}"))[0]["Subnet"]
               for n in networks}
    assert len(subnets) == COUNT and all(s.endswith("/28") for s in subnets)
    state = json.loads((root / ".tenantkit" / "state.json").read_text())
    assert {state["tenants"][t]["subnet"] for t in names} == subnets  # allocations are stored, and stable


def test_every_tenant_answers_its_own_page_through_the_proxy(fleet):
    _, _, names, proxy_port = fleet
    for tenant in names:
        page = requests.get(f"http://127.0.0.1:{proxy_port}/", headers={"Host": f"{tenant}.localhost"}, timeout=10)
        assert page.status_code == 200, tenant
        assert f"Scale {tenant.upper()}" in page.text
        others = [t for t in names if t != tenant]
        assert not any(f"Scale {o.upper()}<" in page.text for o in others)


def test_no_tenant_container_can_connect_to_another_tenants_container(fleet):
    _, name, names, _ = fleet
    first, second, last = (f"{name}-tenant-{t}-1" for t in (names[0], names[1], names[-1]))

    def ip(container: str) -> str:
        nets = json.loads(docker("inspect", container, "--format", "{{json .NetworkSettings.Networks}}"))
        (address,) = [n["IPAddress"] for n in nets.values()]
        return address

    assert can_connect(first, ip(first))  # the probe itself works
    assert can_connect(first, "db", 5432)  # and the tenant reaches its database
    assert not can_connect(first, ip(second))
    assert not can_connect(first, ip(last))
    assert not can_connect(last, ip(first))


def test_a_command_about_one_tenant_touches_only_that_tenant(fleet):
    root, name, names, _ = fleet
    ids = {t: docker("ps", "-q", "--filter", f"name={name}-tenant-{t}-1").strip() for t in names}
    assert all(ids.values())
    before = {p: p.stat().st_mtime_ns for p in (root / "compose" / "tenants").glob("*.yaml")}
    ok(root, "set", names[5], "title=Changed Five")
    ok(root, "up", names[5])
    after = {p: p.stat().st_mtime_ns for p in (root / "compose" / "tenants").glob("*.yaml")}
    assert [p.stem for p in before if before[p] != after[p]] == [names[5]]
    now = {t: docker("ps", "-q", "--filter", f"name={name}-tenant-{t}-1").strip() for t in names}
    assert [t for t in names if now[t] != ids[t]] == [names[5]]
    assert "Changed Five" in requests.get(
        f"http://127.0.0.1:{fleet[3]}/", headers={"Host": f"{names[5]}.localhost"}, timeout=10).text


def wait_for(check, seconds: float = 20) -> bool:
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return False


def test_an_unhealthy_tenant_is_taken_out_of_rotation_and_reported_alike(fleet):
    import psycopg2
    root, _, names, proxy_port = fleet
    sick, well = names[3], names[4]
    env = (root / ".tenantkit" / "db.env").read_text()
    admin = dict(host="127.0.0.1", user="postgres", password=env.split("POSTGRES_PASSWORD=")[1].split()[0],
                 port=int(__import__("re").search(r"publish_port: (\d+)", (root / "tenantkit.yaml").read_text()).group(1)))

    def status(name):
        return requests.get(f"http://127.0.0.1:{proxy_port}/", headers={"Host": f"{name}.localhost"}, timeout=10)

    conn = psycopg2.connect(dbname="postgres", **admin)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:  # the sick tenant's health path now fails: its database refuses it
            cur.execute(f'ALTER ROLE "{sick}" NOLOGIN')
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (sick,))
        assert wait_for(lambda: status(sick).status_code == 503)
        assert "is not available right now" in status(sick).text  # Apache's notice: no request reached Django
        assert status(well).status_code == 200
        rows = {r["name"]: r for r in json.loads(ok(root, "list", "--json").out)}
        assert rows[sick]["health"] == "unhealthy: /healthz/ answered 503"
        assert rows[well]["health"] == "healthy"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'ALTER ROLE "{sick}" LOGIN')
        conn.close()
    assert wait_for(lambda: status(sick).status_code == 200)  # back in rotation by itself


def test_a_pool_that_overlaps_an_engine_network_is_refused(tmp_path):
    network = f"tkforeign{os.getpid()}"
    docker("network", "create", "--subnet", "10.251.7.0/24", network)
    try:
        root = write_project(tmp_path / "p", name=f"tkpool{os.getpid()}", database__publish_port=free_port(),
                             ports__first=free_port(), proxy__port=free_port(), networks={"pool": "10.251.0.0/16"})
        ok(root, "new", "one")
        run = tenant_cli(root, "up", "one")
        assert run.code == 2
        assert "overlaps the engine network 10.251.7.0/24" in run.err and "networks.pool" in run.err
        assert docker("ps", "-aq", "--filter", f"label=com.docker.compose.project=tkpool{os.getpid()}") == ""
    finally:
        docker("network", "rm", network)

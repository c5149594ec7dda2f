"""A real stack for integration tests: a throwaway project, two tenants, real Docker.

pytest-docker tears the stack down (`docker compose down -v`) at the end of the
session; tenantkit itself brings it up, since bringing it up is what is under test.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import psycopg2
import pytest
import requests
import yaml

from tests.conftest import Run, tenant_cli, write_project


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session", autouse=True)
def require_engine():
    if engine_answers():
        return
    if os.environ.get("CI"):
        pytest.fail("no Docker engine answers, and CI never skips Docker tests: run `make engine`")
    pytest.skip("no Docker engine answers: run `make engine` to install and start one")


def tenant_address(root: Path, name: str) -> str:
    """Where a tenant's own container answers, as HOST:PORT: behind the compose proxy it
    publishes no port, so its address on its network (the host routes there); otherwise
    its published loopback port."""
    config = yaml.safe_load((root / "tenantkit.yaml").read_text())
    if (config.get("proxy") or {}).get("mode", "compose") != "compose":
        return f"127.0.0.1:{yaml.safe_load((root / 'tenants' / name / 'tenant.yaml').read_text())['port']}"
    project = config["name"]
    listed = docker.from_env().api.containers(filters={"label": [
        f"com.docker.compose.project={project}", f"com.docker.compose.service=tenant-{name}",
        "com.docker.compose.oneoff=False"]})
    assert listed, f"tenant {name} has no running container"
    newest = max(listed, key=lambda entry: entry["Created"])
    return f"{newest['NetworkSettings']['Networks'][f'{project}_tenant-{name}']['IPAddress']}:8000"


_GIVEN: set[int] = set()


def admin_sql(root: Path, port: int, query: str, dbname: str = "postgres") -> list[tuple]:
    """Rows of a query on a project's compose database server (on 127.0.0.1:port), as its admin."""
    password = (root / ".tenantkit" / "db.env").read_text().split("POSTGRES_PASSWORD=")[1].split()[0]
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=password, dbname=dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall()
    finally:
        conn.close()


def wait_for(check, timeout: float = 30, every: float = 0.5, shown=lambda: ""):
    """The first true value of check(), polled every `every` s; AssertionError (with what
    `shown` says) when there is none within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s\n{shown()}")
        time.sleep(every)


def remove_stack(client, name: str) -> None:
    """Take a swarm stack away: `docker stack rm`, waited for, then its volumes and image tags."""
    subprocess.run(["docker", "stack", "rm", name], capture_output=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (
            client.api.containers(all=True, filters={"label": f"com.docker.stack.namespace={name}"})
            or client.api.networks(filters={"label": f"com.docker.stack.namespace={name}"})):
        time.sleep(0.5)
    for volume in client.api.volumes(filters={"name": f"{name}_"}).get("Volumes") or []:
        subprocess.run(["docker", "volume", "rm", "-f", volume["Name"]], capture_output=True)
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(f"{name}/") or f"/{name}/" in tag:
                subprocess.run(["docker", "rmi", tag], capture_output=True)


def free_port() -> int:
    """A free loopback port, never one this process gave out before: the kernel may offer a
    port again once its socket is closed, and a project given the same port for its proxy
    and its database is refused."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


@dataclass
class Stack:
    """The project under test, and helpers that act as a user would."""

    root: Path

    def cli(self, *args: str, **kwargs) -> Run:
        return tenant_cli(self.root, *args, **kwargs)

    def ok(self, *args: str) -> Run:
        run = self.cli(*args)
        assert run.code == 0, f"tenant {' '.join(args)} failed ({run.code}):\n{run.err}"
        return run

    def port(self, name: str) -> int:
        text = (self.root / "tenants" / name / "tenant.yaml").read_text()
        return int(re.search(r"^port: (\d+)$", text, re.M).group(1))

    def url(self, name: str, path: str = "/") -> str:
        return f"http://{tenant_address(self.root, name)}{path}"

    def get(self, name: str, path: str = "/", host: str | None = None) -> requests.Response:
        return requests.get(self.url(name, path), headers={"Host": host or f"{name}.localhost"},
                            timeout=10, allow_redirects=False)

    def session(self, name: str) -> requests.Session:
        """A browser-like session on the tenant's own host, holding its CSRF cookie."""
        session = requests.Session()
        session.headers["Host"] = f"{name}.localhost"
        session.get(self.url(name), timeout=10)
        return session

    def post(self, name: str, path: str, data=None, files=None) -> requests.Response:
        session = self.session(name)
        data = {**(data or {}), "csrfmiddlewaretoken": session.cookies["csrftoken"]}
        return session.post(self.url(name, path), data=data, files=files, timeout=10,
                            allow_redirects=False)

    def secret(self, name: str, key: str) -> str:
        text = (self.root / "tenants" / name / "secrets.env").read_text()
        return re.search(rf"^{key}=(.*)$", text, re.M).group(1)

    def proxy_port(self) -> int:
        text = (self.root / "tenantkit.yaml").read_text()
        return int(re.search(r"^proxy:\n(?:  .*\n)*?  port: (\d+)", text, re.M).group(1))

    def tls_port(self) -> int:
        return yaml.safe_load((self.root / "tenantkit.yaml").read_text())["proxy"]["tls_port"]

    def https(self, host: str, cafile: Path, path: str = "/", method: str = "GET",
              **kwargs) -> subprocess.CompletedProcess:
        """curl over HTTPS to the proxy, resolving `host` to 127.0.0.1 (SNI and Host: `host`),
        trusting `cafile`; stdout is the status code."""
        port = self.tls_port()
        return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(cafile),
                               "--resolve", f"{host}:{port}:127.0.0.1", "-X", method, f"https://{host}:{port}{path}"],
                              capture_output=True, text=True, timeout=30, **kwargs)

    def edit_tenant_yaml(self, name: str, **changes) -> None:
        """What an operator does by hand in tenants/NAME/tenant.yaml."""
        path = self.root / "tenants" / name / "tenant.yaml"
        data = yaml.safe_load(path.read_text())
        data.update(changes)
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def via_proxy(self, host: str, path: str = "/", **headers) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.proxy_port()}{path}",
                            headers={"Host": host, **headers}, timeout=10, allow_redirects=False)

    def db_port(self) -> int:
        text = (self.root / "tenantkit.yaml").read_text()
        return int(re.search(r"publish_port: (\d+)", text).group(1))


@contextlib.contextmanager
def own_stack(prefix: str, tenants: tuple[str, ...]):
    """A project of a test module's own (compose project PREFIX<pid>, free ports), with
    these tenants up; torn down at the end with its volumes and its own image tags
    (projects built from the demo share image ids: other projects' tags stay)."""
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    os.chmod(root, 0o755)
    name = f"{prefix}{os.getpid()}"
    write_project(root, name=name, database__publish_port=free_port(), ports__first=free_port(),
                  proxy__port=free_port())
    s = Stack(root)
    try:
        for tenant in tenants:
            s.ok("new", tenant)
        s.ok("up", "--all")
        yield s
    finally:
        remove_project(root)


def remove_project(root: Path) -> None:
    """Take a test's own project away: its stack with its volumes, its own image tags
    (projects built from the same code share image ids: other projects' tags stay) and
    its folder."""
    name = yaml.safe_load((root / "tenantkit.yaml").read_text())["name"]
    compose = ["docker", "compose", "-f", str(root / "compose" / "compose.yaml")]
    # The scheduler's job containers carry no Compose label, and a running one keeps its
    # tenant's network in use: the scheduler stops first, then they go, then the stack.
    subprocess.run([*compose, "stop", "scheduler"], capture_output=True)
    for job in docker.from_env().containers.list(all=True, filters={"label": f"tenantkit.project={name}"}):
        job.remove(force=True)
    subprocess.run([*compose, "down", "-v", "-t", "2"], capture_output=True)
    for image in docker.from_env().images.list(name=f"{name}/*"):
        for tag in [t for t in image.tags if t.startswith(f"{name}/")]:
            subprocess.run(["docker", "rmi", tag], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def demo_copy_project(prefix: str) -> tuple[Path, dict[str, int]]:
    """A project of its own whose source is a copy of the demo (so a test can change the
    code and build releases of it), on free ports; returns its root and its db/proxy ports."""
    from tests.conftest import REPO
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    os.chmod(root, 0o755)
    shutil.copytree(REPO / "image" / "demo", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    ports = {"db": free_port(), "proxy": free_port()}
    write_project(root, name=f"{prefix}{os.getpid()}", database__publish_port=ports["db"], ports__first=free_port(),
                  proxy__port=ports["proxy"], project__source=str(root / "src"),
                  project__requirements=str(root / "src" / "requirements.txt"))
    return root, ports


@pytest.fixture(scope="session")
def stack_root():
    # Not under pytest's private tmp folder: the host's Apache (www-data) must reach media.
    folder = Path(tempfile.mkdtemp(prefix="tkstack-"))
    os.chmod(folder, 0o755)
    yield write_project(folder, name=f"tkit{os.getpid()}", database__publish_port=free_port(),
                        ports__first=free_port(), proxy__port=free_port())
    shutil.rmtree(folder, ignore_errors=True)


# pytest-docker: our project's compose file, torn down (with its volumes) at the end.
@pytest.fixture(scope="session")
def docker_compose_file(stack_root):
    return str(stack_root / "compose" / "compose.yaml")


@pytest.fixture(scope="session")
def docker_compose_project_name(stack_root):
    return stack_root.joinpath("tenantkit.yaml").read_text().split("name: ")[1].split()[0]


@pytest.fixture(scope="session")
def docker_setup():
    return False  # `tenant up` is what brings the stack up, and is under test


@pytest.fixture(scope="session")
def docker_cleanup():
    return ["down -v --remove-orphans --timeout 5"]


@pytest.fixture(scope="session")
def stack(stack_root, docker_services) -> Stack:
    """Two tenants, alpha and beta, up and answering."""
    s = Stack(stack_root)
    s.ok("new", "alpha", "--host", "alpha.localhost", "--title", "Alpha Corp")
    s.ok("new", "beta", "--host", "beta.localhost", "--title", "Beta & Sons")
    s.ok("up", "--all")
    for name in ("alpha", "beta"):
        docker_services.wait_until_responsive(
            check=lambda n=name: s.get(n, "/healthz/").status_code == 200, timeout=30, pause=0.2)
    return s

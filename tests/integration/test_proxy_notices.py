"""What visitors get from the proxy when a tenant is not serving: the maintenance page, and
the notice of a stopped tenant (503, never "500 Proxy Error"), both UTF-8 with a
Retry-After; and tenant containers that start without a false ERROR in their logs.

A project of its own (its tenants are stopped and started here), through the real proxy
container, by Host header.
"""
import html
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import pytest
import requests

from tenantkit.render.apache import MAINTENANCE_RETRY_AFTER, UNAVAILABLE_RETRY_AFTER
from tests.conftest import write_project
from tests.integration.conftest import Stack, free_port

PREFIX = "tknotice"
TITLE = "Café Crème & Co"


@pytest.fixture(scope="module")
def notices():
    """Tenants cafe (a non-ASCII title) and other, up behind the compose proxy."""
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    os.chmod(folder, 0o755)
    name = f"{PREFIX}{os.getpid()}"
    root = write_project(folder, name=name, database__publish_port=free_port(), ports__first=free_port(),
                         proxy__port=free_port())
    stack = Stack(root)
    stack.ok("new", "cafe", "--host", "cafe.localhost", "--title", TITLE)
    stack.ok("new", "other", "--host", "other.localhost", "--title", "Other")
    stack.ok("up", "--all")
    yield stack
    subprocess.run(["docker", "compose", "-f", str(root / "compose" / "compose.yaml"), "down", "-v", "-t", "5"],
                   capture_output=True)
    tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                           f"reference={name}/*"], capture_output=True, text=True).stdout.split()
    if tags:
        subprocess.run(["docker", "image", "rm", *tags], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def container_logs(stack: Stack, tenant: str) -> str:
    """The output of the tenant's newest container, once gunicorn has booted its worker
    (the control socket, when there is one, starts right after)."""
    project = re.search(r"^name: (\S+)", (stack.root / "tenantkit.yaml").read_text(), re.M).group(1)
    listed = docker.from_env().containers.list(filters={"label": [
        f"com.docker.compose.project={project}", f"com.docker.compose.service=tenant-{tenant}"]})
    assert listed, f"tenant {tenant} has no running container"
    container = max(listed, key=lambda c: c.attrs["Created"])
    deadline = time.monotonic() + 10
    while b"Booting worker" not in container.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    return container.logs().decode()


def assert_utf8_page(response: requests.Response, retry_after: int, text: str) -> str:
    """A 503 whose header declares UTF-8, with a Retry-After, whose bytes say `text` as UTF-8."""
    assert response.status_code == 503, response.status_code
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Retry-After"] == str(retry_after)
    body = response.content.decode("utf-8")
    assert text in html.unescape(body), body
    return body


def test_a_fresh_tenant_container_logs_no_control_server_error(notices):
    logs = container_logs(notices, "cafe")
    assert "Listening at" in logs
    assert "Control server error" not in logs and "[ERROR]" not in logs, logs


def test_the_maintenance_page_is_utf8_with_a_retry_after(notices):
    notices.ok("maintenance", "cafe", "on")
    try:
        response = notices.via_proxy("cafe.localhost", "/notes/")
        body = assert_utf8_page(response, MAINTENANCE_RETRY_AFTER, f"{TITLE} is down for maintenance")
        assert "Café Crème" in body and "CafÃ©" not in body
    finally:
        notices.ok("maintenance", "cafe", "off")
    assert notices.via_proxy("cafe.localhost").status_code == 200


def test_a_stopped_tenant_answers_503_with_a_notice_until_it_is_up_again(notices):
    for _ in range(20):  # the proxy's processes have the container's address in hand
        assert notices.via_proxy("cafe.localhost").status_code == 200
    notices.ok("down", "cafe")
    try:
        url = f"http://127.0.0.1:{notices.proxy_port()}/notes/"
        answers = [notices.via_proxy("cafe.localhost", "/notes/") for _ in range(10)]
        answers.append(requests.post(url, data={"text": "x"}, headers={"Host": "cafe.localhost"}, timeout=10))
        for response in answers:
            body = assert_utf8_page(response, UNAVAILABLE_RETRY_AFTER, f"{TITLE} is not available right now")
            assert "Proxy Error" not in body and "tk-cafe" not in body and "8000" not in body
            assert not re.search(r"\d+\.\d+\.\d+\.\d+", body), body
        assert notices.via_proxy("other.localhost").status_code == 200
    finally:
        notices.ok("up", "cafe")
    response = notices.via_proxy("cafe.localhost")
    assert response.status_code == 200 and "Retry-After" not in response.headers
    assert "Control server error" not in container_logs(notices, "cafe")

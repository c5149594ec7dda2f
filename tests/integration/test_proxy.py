"""Apache in front: routing by Host, media from the right folder, reloads without failures."""
import http.client
import subprocess
import threading
import time

import pytest


def raw_get(port: int, host: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (no client-side normalisation of ..)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": host})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def compose(stack, *args):
    return subprocess.run(["docker", "compose", "-f", str(stack.root / "compose" / "compose.yaml"), *args],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def alpha_file(stack):
    """A file uploaded through alpha's own pages: (its /_content path, its bytes)."""
    content = b"only alpha may serve this\n" * 50
    response = stack.post("alpha", "/uploads/", files={"file": ("proxied.txt", content)})
    assert response.status_code == 302
    return response.headers["Location"], content


def test_the_proxy_routes_each_host_to_its_own_tenant(stack):
    alpha, beta = stack.via_proxy("alpha.localhost"), stack.via_proxy("beta.localhost")
    assert alpha.status_code == 200 and '<h1 id="title">Alpha Corp</h1>' in alpha.text
    assert beta.status_code == 200 and '<h1 id="title">Beta &amp; Sons</h1>' in beta.text


def test_a_host_no_tenant_claims_is_refused_by_the_catch_all(stack):
    for host in ("unknown.localhost", "127.0.0.1", "alpha.localhost.evil.example"):
        response = stack.via_proxy(host)
        assert response.status_code == 421, host
        assert "Alpha" not in response.text and "Beta" not in response.text


def test_media_is_served_by_apache_from_the_right_tenants_folder(stack, alpha_file):
    path, content = alpha_file
    response = stack.via_proxy("alpha.localhost", path)
    assert response.status_code == 200 and response.content == content
    assert response.headers["Server"] == "Apache"  # not proxied to gunicorn
    assert stack.via_proxy("alpha.localhost", "/").headers["Server"].startswith("gunicorn")
    assert stack.via_proxy("beta.localhost", path).status_code == 404


def test_a_content_path_never_escapes_the_tenants_media_folder(stack, alpha_file):
    path, content = alpha_file
    name = path.removeprefix("/_content/")
    for attempt in (f"/_content/../alpha/{name}", f"/_content/%2e%2e/alpha/{name}",
                    f"/_content/../../alpha/www/content/{name}",
                    f"/_content/%2e%2e/%2e%2e/alpha/www/content/{name}",
                    f"/_content/..%2f..%2falpha/www/content/{name}",
                    "/_content/../../alpha/secrets.env",
                    "/_content/../../../../etc/passwd"):
        status, body = raw_get(stack.proxy_port(), "beta.localhost", attempt)
        assert content not in body and b"TENANT_DB_PASSWORD" not in body and b"root:" not in body, attempt
        assert status in (400, 403, 404), (attempt, status)


def test_static_assets_of_the_release_are_served_by_apache(stack):
    response = stack.via_proxy("alpha.localhost", "/_assets/admin/css/base.css")
    assert response.status_code == 200 and response.headers["Server"] == "Apache"
    assert "body" in response.text


def test_apache_sets_x_forwarded_proto_rather_than_trusting_the_client(stack):
    response = stack.via_proxy("alpha.localhost", "/healthz/", **{"X-Forwarded-Proto": "https"})
    assert response.json()["scheme"] == "http"


def test_each_tenant_has_its_own_access_log(stack):
    stack.via_proxy("beta.localhost", "/?beta-log-marker")
    time.sleep(0.5)
    logs = stack.root / ".tenantkit" / "logs"
    assert "beta-log-marker" in (logs / "beta.access.log").read_text()
    assert "beta-log-marker" not in (logs / "alpha.access.log").read_text()


def test_the_generated_apache_config_passes_apaches_own_test(stack):
    result = compose(stack, "exec", "-T", "proxy", "/opt/tenantkit/run-httpd", "-t")
    assert result.returncode == 0 and "Syntax OK" in result.stdout + result.stderr


def test_maintenance_mode_answers_503_for_that_tenant_only(stack):
    stack.ok("maintenance", "beta", "on")
    try:
        response = stack.via_proxy("beta.localhost")
        assert response.status_code == 503
        assert "Beta &amp; Sons is down for maintenance" in response.text
        assert stack.via_proxy("alpha.localhost").status_code == 200
        assert stack.get("beta").status_code == 200  # the tenant itself still runs
    finally:
        stack.ok("maintenance", "beta", "off")
    assert stack.via_proxy("beta.localhost").status_code == 200


def test_reloads_for_new_and_changed_tenants_fail_no_request_in_flight(stack):
    results: list = []
    stop = threading.Event()

    def load():
        deadline = time.monotonic() + 120
        while not stop.is_set() and len(results) < 20000 and time.monotonic() < deadline:
            try:
                status, body = raw_get(stack.proxy_port(), "alpha.localhost", "/healthz/")
                results.append(status)
            except OSError as exc:
                results.append(repr(exc))

    thread = threading.Thread(target=load)
    thread.start()
    try:
        stack.ok("new", "epsilon")
        stack.ok("up", "epsilon")          # attaches the proxy to a network and reloads
        stack.ok("maintenance", "epsilon", "on")   # reload
        stack.ok("maintenance", "epsilon", "off")  # reload
    finally:
        stop.set()
        thread.join()
    failures = [r for r in results if r != 200]
    assert len(results) > 50
    assert failures == []
    assert stack.via_proxy("epsilon.localhost").status_code == 200

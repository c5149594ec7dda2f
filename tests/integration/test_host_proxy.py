"""Host mode: the host's own Apache proxies to the tenants' loopback ports."""
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
import trustme

from tests.conftest import write_project
from tests.integration.conftest import Stack, free_port
from tests.integration.host_apache import APACHE, HostApache


@pytest.fixture(scope="module")
def host_stack():
    """A project in proxy.mode host: its tenants publish loopback ports, and tenantkit
    writes vhosts for the host's own Apache, which listens on proxy.port."""
    if not Path(APACHE).exists():
        pytest.fail("apache2 is needed on the host: run `make host-services`")
    # Not under pytest's private tmp folder: the host's Apache (www-data) must reach media.
    folder = Path(tempfile.mkdtemp(prefix="tkhost-"))
    os.chmod(folder, 0o755)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "private-ca.pem"))
    leaf = ca.issue_cert("alpha.localhost")
    leaf.cert_chain_pems[0].write_to_path(str(folder / "alpha.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "alpha.key"))
    root = write_project(folder, name=f"tkhost{os.getpid()}", database__publish_port=free_port(),
                         ports__first=free_port(), proxy__port=free_port(), proxy__mode="host",
                         proxy__tls_port=free_port(), tls={"trusted_roots": "private-ca.pem"})
    s = Stack(root)
    s.ok("new", "alpha", "--host", "alpha.localhost", "--title", "Alpha Corp")
    s.ok("new", "beta", "--host", "beta.localhost", "--title", "Beta & Sons")
    s.ok("up", "--all")
    yield s
    subprocess.run(["docker", "compose", "-f", str(root / "compose" / "compose.yaml"), "down", "-v", "-t", "5"],
                   capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def host_proxy(host_stack):
    stack = host_stack
    port = stack.proxy_port()
    apache = HostApache(stack.root / "host-apache", port, f"{stack.root}/compose/apache/sites/*.conf")
    apache.start()
    yield port, apache, stack.root / "compose" / "apache" / "sites"
    apache.stop()


def test_apache_for_the_host_is_refused_behind_the_compose_proxy(stack):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = stack.root / "compose" / "apache" / "host"
    run = stack.cli("apache", "--mode", "proxy", "--out", str(out), "--port", str(port))
    assert run.code == 2 and "set proxy.mode: host" in run.err and len(run.err.strip().splitlines()) == 1
    assert not out.exists()


def get(port, host, path="/"):
    return requests.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}, timeout=10,
                        allow_redirects=False)


def test_the_hosts_apache_routes_by_host_to_the_published_ports(host_stack, host_proxy):
    stack = host_stack
    port, apache, out = host_proxy
    assert "Syntax OK" in apache.check()
    assert '<h1 id="title">Alpha Corp</h1>' in get(port, "alpha.localhost").text
    assert '<h1 id="title">Beta &amp; Sons</h1>' in get(port, "beta.localhost").text
    assert get(port, "nobody.localhost").status_code == 421
    vhost = (out / "alpha.conf").read_text()
    assert f'ProxyPass "/" "http://127.0.0.1:{stack.port("alpha")}/"' in vhost


def test_the_hosts_apache_serves_media_from_the_tenants_folder(host_stack, host_proxy):
    stack = host_stack
    port, *_ = host_proxy
    response = stack.post("beta", "/uploads/", files={"file": ("host.txt", b"beta via host apache")})
    path = response.headers["Location"]
    served = get(port, "beta.localhost", path)
    assert served.status_code == 200 and served.content == b"beta via host apache"
    assert not served.headers["Server"].startswith("gunicorn")
    assert get(port, "alpha.localhost", path).status_code == 404
    assert get(port, "alpha.localhost", "/_assets/admin/css/base.css").status_code == 200


def test_the_hosts_apache_serves_a_given_certificate_by_sni(host_stack, host_proxy):
    """Host mode with TLS: the generated default vhost loads mod_ssl for the host's Apache
    and listens on proxy.tls_port; the tenant's vhost serves its own certificate, and HTTP
    redirects there. Last in the module: it turns TLS off again."""
    stack = host_stack
    port, apache, out = host_proxy
    tls_port = stack.tls_port()
    folder = stack.root
    stack.ok("set", "alpha", f"tls_cert={folder / 'alpha.pem'}", f"tls_key={folder / 'alpha.key'}")
    stack.ok("render")
    try:
        apache.check()
        apache.graceful()
        run = None
        for _ in range(50):
            run = stack.https("alpha.localhost", folder / "private-ca.pem", "/healthz/")
            if run.stdout == "200":
                break
            time.sleep(0.2)
        assert run.stdout == "200", run.stderr
        redirect = get(port, "alpha.localhost", "/x")
        assert redirect.status_code == 301 and redirect.headers["Location"] == f"https://alpha.localhost:{tls_port}/x"
        assert get(port, "beta.localhost").status_code == 200  # a tenant without TLS stays on HTTP
    finally:
        stack.ok("set", "alpha", "tls=off")
        stack.ok("render")
        apache.graceful()

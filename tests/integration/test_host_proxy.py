"""Host mode: the host's own Apache proxies to the tenants' loopback ports."""
import socket

import pytest
import requests

from tests.integration.host_apache import APACHE, HostApache


@pytest.fixture(scope="module")
def host_proxy(stack):
    from pathlib import Path
    if not Path(APACHE).exists():
        pytest.fail("apache2 is needed on the host: run `make host-services`")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = stack.root / "compose" / "apache" / "host"
    stack.ok("apache", "--mode", "proxy", "--out", str(out), "--port", str(port))
    apache = HostApache(stack.root / "host-apache", port, f"{out}/*.conf")
    apache.start()
    yield port, apache, out
    apache.stop()


def get(port, host, path="/"):
    return requests.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}, timeout=10,
                        allow_redirects=False)


def test_the_hosts_apache_routes_by_host_to_the_published_ports(stack, host_proxy):
    port, apache, out = host_proxy
    assert "Syntax OK" in apache.check()
    assert '<h1 id="title">Alpha Corp</h1>' in get(port, "alpha.localhost").text
    assert '<h1 id="title">Beta &amp; Sons</h1>' in get(port, "beta.localhost").text
    assert get(port, "nobody.localhost").status_code == 421
    vhost = (out / "alpha.conf").read_text()
    assert f'ProxyPass "/" "http://127.0.0.1:{stack.port("alpha")}/"' in vhost


def test_the_hosts_apache_serves_media_from_the_tenants_folder(stack, host_proxy):
    port, *_ = host_proxy
    response = stack.post("beta", "/uploads/", files={"file": ("host.txt", b"beta via host apache")})
    path = response.headers["Location"]
    served = get(port, "beta.localhost", path)
    assert served.status_code == 200 and served.content == b"beta via host apache"
    assert not served.headers["Server"].startswith("gunicorn")
    assert get(port, "alpha.localhost", path).status_code == 404
    assert get(port, "alpha.localhost", "/_assets/admin/css/base.css").status_code == 200

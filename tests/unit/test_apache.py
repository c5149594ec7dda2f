"""Vhosts: one per tenant proxying only to it, a catch-all first, nothing injectable."""
import dataclasses
import html
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tenantkit.model import ConfigError, Tenant, load_project
from tenantkit.render.apache import (DEFAULT_SITE, MAINTENANCE_RETRY_AFTER, UNAVAILABLE_PATH, UNAVAILABLE_RETRY_AFTER,
                                     apache_path, host_layout, proxy_layout, render_proxy_vhost, render_sites)
from tests.conftest import write_project
from tests.integration.host_apache import APACHE, HostApache

IMAGE = "tktest/app:src-0123456789ab"


def tenant(project, name, port, **extra):
    return Tenant(name=name, hosts=extra.pop("hosts", (f"{name}.localhost",)), title=extra.pop("title", name),
                  port=port, memory="256m", workers=1, threads=4, path=project.tenant_dir(name), **extra)


def test_the_catch_all_sorts_first_and_refuses_every_request(project):
    sites = render_sites(project, [tenant(project, "acme", 8101)], IMAGE)
    assert sorted(sites)[0] == DEFAULT_SITE
    assert "RewriteRule ^ - [R=421,L]" in sites[DEFAULT_SITE]
    assert "ProxyPass" not in sites[DEFAULT_SITE]


def test_each_vhost_proxies_to_its_own_container_only(project):
    tenants = [tenant(project, "acme", 8101), tenant(project, "zed", 8102)]
    sites = render_sites(project, tenants, IMAGE)
    for t in tenants:
        backends = set(re.findall(r'BalancerMember "([^"]+)"', sites[t.names.vhost]))
        assert backends == {f"http://a.tk-{t.name}:8000"}
        assert re.search(r'ProxyPass "/" "balancer://tk-%s/"' % t.name, sites[t.names.vhost])
        assert "hcmethod=GET hcuri=/healthz/ hcinterval=60" in sites[t.names.vhost]
        assert f'<Directory "/srv/media/{t.name}">' in sites[t.names.vhost]
        other = ({"acme", "zed"} - {t.name}).pop()
        assert other not in sites[t.names.vhost]


def test_a_vhost_names_hosts_media_assets_logs_and_forwarded_proto(project):
    t = tenant(project, "acme", 8101, hosts=("acme.localhost", "www.acme.example.com"))
    text = render_proxy_vhost(t, proxy_layout(project), IMAGE)
    assert "ServerName acme.localhost" in text
    assert "ServerAlias www.acme.example.com" in text
    assert "ProxyPreserveHost On" in text
    assert 'RequestHeader set X-Forwarded-Proto "expr=%{REQUEST_SCHEME}"' in text
    assert 'Alias "/_content/" "/srv/media/acme/"' in text
    assert "/srv/tenants" not in text  # the proxy sees media, never a tenant folder
    assert 'Alias "/_assets/" "/srv/assets/src-0123456789ab/"' in text
    assert 'ErrorLog "/var/log/tenantkit/acme.error.log"' in text
    assert 'CustomLog "/var/log/tenantkit/acme.access.log"' in text


def test_maintenance_mode_answers_503_and_proxies_nothing(project):
    t = tenant(project, "acme", 8101, maintenance=True, title='Ac"me\\ <Inc>')
    text = render_proxy_vhost(t, proxy_layout(project), IMAGE)
    assert "RewriteRule ^ - [R=503,L]" in text
    assert "ProxyPass" not in text
    error_document = next(line for line in text.splitlines() if "ErrorDocument" in line)
    assert error_document.count('"') == 2  # the title cannot close the quoted string
    assert "Ac&quot;me&#92; &lt;Inc&gt;" in error_document


def test_host_mode_proxies_to_published_loopback_ports(project_dir, tmp_path):
    write_project(project_dir, proxy={"mode": "host", "port": 8088})
    project = load_project(project_dir)
    text = render_sites(project, [tenant(project, "acme", 8101)], IMAGE)["acme.conf"]
    assert "<VirtualHost *:8088>" in text
    assert 'ProxyPass "/" "http://127.0.0.1:8101/"' in text
    assert f'Alias "/_content/" "{project_dir}/media/acme/"' in text
    assert f"{project_dir}/tenants" not in text


@pytest.mark.parametrize("path", ['/srv/a"b', "/srv/a b", "/srv/a\nInclude /etc", "relative", "/srv/../etc"])
def test_paths_that_could_break_apache_text_are_refused(path):
    with pytest.raises(ConfigError, match="cannot be written into an Apache config"):
        apache_path(path)


# A private Apache on the host (tests/integration/host_apache.py) proves that what we
# render parses and behaves; `tools/setup-host-services` installs apache2.

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def host_apache(folder: Path, port: int, sites: dict[str, str]) -> HostApache:
    """A private Apache config including `sites`, listening on `port`."""
    assert Path(APACHE).is_file(), "no apache2 on this host; run tools/setup-host-services"
    (folder / "sites").mkdir(parents=True)
    for name, text in sites.items():
        (folder / "sites" / name).write_text(text)
    apache = HostApache(folder, port, f"{folder}/sites/*.conf")
    apache.write()
    return apache


def get(port: int, host: str, path: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


HOSTILE_TITLES = ["%{file:/etc/passwd}", "100%{", "a$1b", 'x\\"y']


def test_a_maintenance_title_reaches_the_page_as_text_never_as_an_apache_expression(project, tmp_path):
    tenants = [tenant(project, f"t{i}", 8101 + i, maintenance=True, title=title)
               for i, title in enumerate(HOSTILE_TITLES)]
    port = free_port()
    sites = render_sites(project, tenants, IMAGE, host_layout(project, port))
    for t in tenants:
        assert "%{" not in sites[t.names.vhost]
        error_document = next(line for line in sites[t.names.vhost].splitlines() if "ErrorDocument" in line)
        assert not set("%${}\\") & set(error_document.removeprefix("    ErrorDocument 503 ")), error_document
    project.logs_dir.mkdir(parents=True)
    apache = host_apache(tmp_path / "apache", port, sites)
    apache.check()  # a title like 100%{ used to break the config test, and every reload after it
    apache.start()
    try:
        for t in tenants:
            code, _, body = get(apache.port, t.primary_host, "/")
            assert code == 503
            assert f"<h1>{t.title} is down for maintenance</h1>" in html.unescape(body.decode())
            assert b"root:" not in body
    finally:
        apache.stop()


ACTIVE = ("page.html", "PAGE.HTM", "doc.xhtml", "logo.svg", "logo.SVGZ", "feed.xml", "style.xsl", "app.js",
          "mod.mjs", "movie.swf", "paper.pdf", "evil.html.zzz")


def test_uploads_are_never_sniffed_and_always_sandboxed_and_active_types_are_downloaded(project):
    for layout in (proxy_layout(project), host_layout(project, 8088)):
        text = render_proxy_vhost(tenant(project, "acme", 8101), layout, IMAGE)
        media = re.search(r'<Directory "[^"]+/acme">(.*?)</Directory>', text, re.S).group(1)
        assert 'Header set X-Content-Type-Options "nosniff"' in media
        assert 'Header set Content-Security-Policy "sandbox"' in media
        assert 'Header set Content-Disposition "attachment"' in media


def test_apache_serves_an_uploaded_page_as_a_sandboxed_download(project, tmp_path):
    # Apache reads media as www-data, so the media folder lives outside pytest's private tmp_path.
    with tempfile.TemporaryDirectory() as served:
        os.chmod(served, 0o755)
        port = free_port()
        layout = dataclasses.replace(host_layout(project, port), media_root=served)
        media = Path(served) / "acme"
        media.mkdir(mode=0o755)
        for name in (*ACTIVE, "note.txt", "photo.png"):
            (media / name).write_text("<html><script>alert(document.cookie)</script></html>\n")
            os.chmod(media / name, 0o644)
        project.logs_dir.mkdir(parents=True)
        sites = render_sites(project, [tenant(project, "acme", 8101)], IMAGE, layout)
        apache = host_apache(tmp_path / "apache", port, sites)
        apache.start()
        try:
            for name in (*ACTIVE, "note.txt", "photo.png"):
                code, headers, _ = get(apache.port, "acme.localhost", f"/_content/{name}")
                assert code == 200, name
                assert headers.get("X-Content-Type-Options") == "nosniff", name
                assert headers.get("Content-Security-Policy") == "sandbox", name
                expected = None if name in ("note.txt", "photo.png") else "attachment"
                assert headers.get("Content-Disposition") == expected, (name, headers.get("Content-Type"))
        finally:
            apache.stop()


def test_the_maintenance_page_and_the_unavailable_notice_declare_utf8_and_a_retry_after(project):
    for maintenance, retry_after in ((True, MAINTENANCE_RETRY_AFTER), (False, UNAVAILABLE_RETRY_AFTER)):
        text = render_proxy_vhost(tenant(project, "acme", 8101, maintenance=maintenance, title="Café"),
                                  proxy_layout(project), IMAGE)
        assert 'Header always set Content-Type "text/html; charset=utf-8"' in text
        assert f'Header always set Retry-After "{retry_after}"' in text
        page = next(line for line in text.splitlines() if 'ErrorDocument 503 "' in line)
        assert "<meta charset=utf-8>" in page and "Café" in page


def test_proxy_errors_become_the_notice_and_the_containers_own_errors_pass(project):
    for layout in (proxy_layout(project), host_layout(project, 8088)):
        text = render_proxy_vhost(tenant(project, "acme", 8101, title="Acme & Co"), layout, IMAGE)
        for status in (500, 502, 503):
            assert f"ErrorDocument {status} {UNAVAILABLE_PATH}" in text
        assert not re.search(r"^\s*ProxyErrorOverride", text, re.M)  # Django's own error pages stay its own
        notice = re.search(r'<Location "%s">(.*?)</Location>' % UNAVAILABLE_PATH, text, re.S).group(1)
        assert "<h1>Acme &amp; Co is not available right now</h1>" in notice
        assert 'ProxyPass "/_tenantkit/" "!"' in text


def test_the_compose_proxy_follows_the_slot_name_so_a_stopped_container_fails_fast(project):
    text = render_proxy_vhost(tenant(project, "acme", 8101), proxy_layout(project), IMAGE)
    member = next(line for line in text.splitlines() if "BalancerMember" in line)
    assert "addressttl=1" in member and "connectiontimeout=2" in member


def test_a_tenant_that_cannot_be_reached_answers_503_with_its_notice_in_utf8(project, tmp_path):
    """The host's Apache proxying to loopback ports where nothing listens (connection refused,
    Apache's own 503), beside a tenant in maintenance: real requests, real headers."""
    port = free_port()
    titles = ["Café Crème", *HOSTILE_TITLES]
    tenants = [tenant(project, f"t{i}", free_port(), title=title) for i, title in enumerate(titles)]
    tenants.append(tenant(project, "maint", free_port(), title="Café Crème", maintenance=True))
    project.logs_dir.mkdir(parents=True)
    apache = host_apache(tmp_path / "apache", port, render_sites(project, tenants, IMAGE, host_layout(project, port)))
    apache.start()
    try:
        for t in tenants:
            code, headers, body = get(apache.port, t.primary_host, "/some/page")
            assert code == 503, t.name
            assert headers["Content-Type"] == "text/html; charset=utf-8", t.name
            text = html.unescape(body.decode("utf-8"))
            if t.maintenance:
                assert headers["Retry-After"] == str(MAINTENANCE_RETRY_AFTER)
                assert f"<h1>{t.title} is down for maintenance</h1>" in text
            else:
                assert headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER)
                assert f"<h1>{t.title} is not available right now</h1>" in text
            assert "Proxy Error" not in text and "127.0.0.1" not in text and str(t.port) not in text
            assert b"root:" not in body
    finally:
        apache.stop()

"""Vhosts: one per tenant proxying only to it, a catch-all first, nothing injectable."""
import re

import pytest

from tenantkit.model import ConfigError, Tenant, load_project
from tenantkit.render.apache import (DEFAULT_SITE, apache_path, proxy_layout, render_proxy_vhost,
                                     render_sites)
from tests.conftest import write_project

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
        assert backends == {f"http://tk-{t.name}:8000"}
        assert re.search(r'ProxyPass "/" "balancer://tk-%s/"' % t.name, sites[t.names.vhost])
        assert "hcmethod=GET hcuri=/healthz/ hcinterval=60" in sites[t.names.vhost]
        assert f"/srv/tenants/{t.name}/www/content" in sites[t.names.vhost]
        other = ({"acme", "zed"} - {t.name}).pop()
        assert other not in sites[t.names.vhost]


def test_a_vhost_names_hosts_media_assets_logs_and_forwarded_proto(project):
    t = tenant(project, "acme", 8101, hosts=("acme.localhost", "www.acme.example.com"))
    text = render_proxy_vhost(t, proxy_layout(project), IMAGE)
    assert "ServerName acme.localhost" in text
    assert "ServerAlias www.acme.example.com" in text
    assert "ProxyPreserveHost On" in text
    assert 'RequestHeader set X-Forwarded-Proto "expr=%{REQUEST_SCHEME}"' in text
    assert 'Alias "/_content/" "/srv/tenants/acme/www/content/"' in text
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
    assert f'Alias "/_content/" "{project_dir}/tenants/acme/www/content/"' in text


@pytest.mark.parametrize("path", ['/srv/a"b', "/srv/a b", "/srv/a\nInclude /etc", "relative", "/srv/../etc"])
def test_paths_that_could_break_apache_text_are_refused(path):
    with pytest.raises(ConfigError, match="cannot be written into an Apache config"):
        apache_path(path)

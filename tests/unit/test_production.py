"""Production features without an engine: TLS, background processes and scheduled commands,
from tenantkit.yaml and tenant.yaml through the vhosts, compose services, schedule and settings."""
import dataclasses
import json
import re

import pytest
import yaml

from tests.conftest import tenant_cli, write_project
from tests.unit.test_render import load_settings, tenant
from tests.unit.test_scheduler import sched

from tenantkit import model
from tenantkit.model import (TLS_AUTO, TLS_GIVEN, TLS_OFF, ConfigError, ProxyMode, Tls, job_id,
                             load_project, load_tenant, load_tenants)
from tenantkit.render.apache import DEFAULT_SITE, host_layout, proxy_layout, render_default_vhost, render_sites
from tenantkit.render.compose import (CONFIG_LABEL, PROCESS_LABEL, PROXY_LABEL, add_processes, dump_compose, process_config,
                                      proxy_service, render_stack, render_tenant_compose)
from tenantkit.render.scheduler import dump_schedule, render_schedule
from tenantkit.render.settings import render_settings

IMAGE = "tktest/app:src-0123456789ab"
EMAIL = "ops@example.com"


def tenant_yaml(project, name, text):
    folder = project.tenant_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tenant.yaml").write_text(text)


def line_of(text, needle):
    """The 1-based line of the first line of `text` holding `needle`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def with_tls(project, **tls):
    """The project with a tls: section (an ACME contact unless told otherwise)."""
    return dataclasses.replace(project, tls=Tls(**{"acme_email": EMAIL, **tls}))


def with_proxy(project, **proxy):
    return dataclasses.replace(project, proxy=dataclasses.replace(project.proxy, **proxy))


def vhosts(text):
    """[(port, body)] of every <VirtualHost> block, in order."""
    return re.findall(r"<VirtualHost \*:(\d+)>\n(.*?)</VirtualHost>", text, re.S)


def directives(body):
    """The directive names of a block, comments and blank lines left out."""
    return [line.split()[0] for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


# --- tenant.yaml: tls, processes, schedule ---------------------------------------------------

BASE = "hosts: [acme.localhost]\nport: 8101\n"


@pytest.mark.parametrize("extra, key, words", [
    ("tls: on\n", "tls", "on is not a TLS mode: write auto"),
    ("tls: https\n", "tls", "'https' is not off, auto"),
    ("tls: [auto]\n", "tls", "is not off, auto"),
    ("processes:\n  Worker: python manage.py qcluster\n", "processes", "'Worker' is not a process name"),
    ("processes:\n  two words: python x\n", "processes", "is not a process name"),
    ("processes:\n  " + "w" * 31 + ": python x\n", "processes", "is not a process name"),
    ("processes:\n  web: gunicorn\n", "processes", "'web' is reserved"),
    ("processes:\n  migrate: python manage.py migrate\n", "processes", "'migrate' is reserved"),
    ("processes:\n  worker: \"python 'x\"\n", "processes", "cannot be split into words"),
    ("processes:\n  worker: 5\n", "processes", "is not a command"),
    ("processes: [worker]\n", "processes", "expected a mapping of process names"),
    ("schedule:\n  - {cron: '61 * * * *', command: clearsessions}\n", "schedule",
     "entry 1: '61 \\* \\* \\* \\*' is not a cron expression"),
    ("schedule:\n  - {cron: '* * * *', command: clearsessions}\n", "schedule", "is not a cron expression"),
    ("schedule:\n  - {cron: '@daily', command: clearsessions}\n", "schedule", "is not a cron expression"),
    ("schedule:\n  - {cron: '0 3 * * *', command: ''}\n", "schedule", "entry 1: '' is not a command"),
    ("schedule:\n  - {cron: '0 3 * * *', command: x, user: root}\n", "schedule",
     "entry 1 must have exactly `cron` and `command`"),
    ("schedule:\n  - {cron: '0 3 * * *', command: x}\n  - {cron: '0  3 * * *', command: ' x'}\n", "schedule",
     "entry 2 repeats an earlier one"),
    ("schedule: {cron: '0 3 * * *', command: x}\n", "schedule", "expected a list"),
])
def test_a_bad_tls_process_or_schedule_names_file_line_and_fix(project, extra, key, words):
    text = BASE + extra
    tenant_yaml(project, "acme", text)
    line = line_of(text, f"{key}:")
    with pytest.raises(ConfigError, match=rf"tenants/acme/tenant\.yaml:{line}: {key}: .*{words}"):
        load_tenant(project, "acme")


def test_a_tls_mapping_needs_both_files_and_no_other_key(project):
    for text, words in (("tls:\n  cert: acme.pem\n", "tls.key is required"),
                        ("tls:\n  key: acme.key\n", "tls.cert is required"),
                        ("tls: {}\n", "tls.cert is required"),
                        ("tls: {cert: a.pem, key: a.key, chain: c.pem}\n", r"tls\.chain: unknown key")):
        tenant_yaml(project, "acme", BASE + text)
        with pytest.raises(ConfigError, match=rf"tenants/acme/tenant\.yaml.*{words}"):
            load_tenant(project, "acme")


def test_tls_modes_of_tenant_yaml(project):
    # YAML reads a bare `off` (and `false`) as False: it is off, never an error.
    for text, mode in (("tls: off\n", TLS_OFF), ("tls: 'off'\n", TLS_OFF), ("tls: false\n", TLS_OFF),
                       ("tls: auto\n", TLS_AUTO), ("tls:\n", None), ("", None)):
        tenant_yaml(project, "acme", BASE + text)
        loaded = load_tenant(project, "acme")
        assert loaded.tls == mode, text
        assert loaded.tls_cert is None and loaded.tls_paths() is None
    tenant_yaml(project, "acme", BASE + "tls:\n  cert: certs/acme.pem\n  key: certs/acme.key\n")
    given = load_tenant(project, "acme")
    assert (given.tls, given.tls_cert, given.tls_key) == (None, "certs/acme.pem", "certs/acme.key")
    assert given.tls_paths() == (project.tenant_dir("acme") / "certs/acme.pem",
                                 project.tenant_dir("acme") / "certs/acme.key")
    assert with_tls(project).tls_of(given) == TLS_GIVEN


def test_a_tenants_tls_wins_over_the_projects_default_and_no_proxy_means_no_tls(project_dir):
    write_project(project_dir, tenant_defaults__tls="auto", tls={"acme": {"email": EMAIL}})
    project = load_project(project_dir)
    assert project.defaults.tls == TLS_AUTO
    tenant_yaml(project, "acme", BASE)
    tenant_yaml(project, "zed", "hosts: [zed.localhost]\nport: 8102\ntls: off\n")
    acme, zed = load_tenants(project)
    assert (project.tls_of(acme), project.tls_of(zed)) == (TLS_AUTO, TLS_OFF)
    assert project.tenant_url(acme) == "https://acme.localhost:8443/"
    assert project.tenant_url(zed) == "http://zed.localhost:8080/"
    none = with_proxy(project, mode=ProxyMode.NONE)
    assert none.tls_of(acme) == TLS_OFF and none.tenant_url(acme) == "http://acme.localhost:8101/"
    given = dataclasses.replace(zed, tls=None, tls_cert="c.pem", tls_key="k.pem")
    assert none.tls_of(given) == TLS_OFF and project.tls_of(given) == TLS_GIVEN


def test_an_unquoted_off_is_accepted_as_the_projects_default_too(project_dir):
    path = write_project(project_dir) / "tenantkit.yaml"
    path.write_text(path.read_text().replace("tenant_defaults:\n", "tenant_defaults:\n  tls: off\n", 1))
    assert load_project(project_dir).defaults.tls == TLS_OFF


def test_tls_auto_without_an_acme_contact_is_refused_when_tenants_load(project_dir):
    write_project(project_dir)
    project = load_project(project_dir)
    tenant_yaml(project, "acme", BASE + "tls: auto\n")
    assert load_tenant(project, "acme").tls == TLS_AUTO  # the tenant alone is fine: the project lacks
    with pytest.raises(ConfigError, match=r"tenant 'acme' has tls: auto.*set tls\.acme\.email in tenantkit\.yaml"):
        load_tenants(project)
    # The project's default counts too; without a proxy there is no TLS, so nothing is missing.
    tenant_yaml(project, "acme", BASE)
    write_project(project_dir, tenant_defaults__tls="auto")
    with pytest.raises(ConfigError, match="tls.acme.email"):
        load_tenants(load_project(project_dir))
    write_project(project_dir, tenant_defaults__tls="auto", proxy={"mode": "none"})
    assert [t.name for t in load_tenants(load_project(project_dir))] == ["acme"]
    write_project(project_dir, tenant_defaults__tls="auto", tls={"acme": {"email": EMAIL}})
    assert [t.name for t in load_tenants(load_project(project_dir))] == ["acme"]


def test_set_refuses_tls_auto_without_an_acme_contact_and_writes_nothing(project_dir):
    write_project(project_dir)
    assert tenant_cli(project_dir, "new", "acme").code == 0
    path = project_dir / "tenants" / "acme" / "tenant.yaml"
    before = path.read_text()
    run = tenant_cli(project_dir, "set", "acme", "tls=auto")
    assert run.code == 2 and "set tls.acme.email in tenantkit.yaml" in run.err and len(run.err.splitlines()) == 1
    assert path.read_text() == before
    assert tenant_cli(project_dir, "status", "acme", "--json").code != 2  # the project still loads


def test_a_tenant_cannot_take_the_proxys_https_port(project):
    tenant_yaml(project, "acme", "hosts: [acme.localhost]\nport: 8443\n")
    with pytest.raises(ConfigError, match="port 8443 is the proxy's HTTPS"):
        load_tenants(project)


# --- tenantkit.yaml: proxy and tls sections ----------------------------------------------------

def test_the_https_port_must_differ_from_the_http_port(project_dir):
    path = write_project(project_dir, proxy={"port": 8443, "tls_port": 8443}) / "tenantkit.yaml"
    line = line_of(path.read_text(), "tls_port:")
    with pytest.raises(ConfigError, match=rf"tenantkit\.yaml:{line}: proxy\.tls_port: 8443 is also proxy\.port; "
                                          "HTTPS needs a port of its own"):
        load_project(project_dir)


def test_the_https_port_must_differ_from_the_databases(project_dir):
    write_project(project_dir, proxy={"tls_port": 54329}, database={"service": True, "publish_port": 54329})
    with pytest.raises(ConfigError, match="database.publish_port"):
        load_project(project_dir)


def test_the_tls_section_is_read(project_dir):
    (project_dir / "ca.pem").parent.mkdir(parents=True, exist_ok=True)
    (project_dir / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    write_project(project_dir, proxy={"tls_port": 443, "address": "0.0.0.0"},
                  tls={"acme": {"directory": "https://acme.internal:14000/dir", "email": EMAIL, "ca_file": "ca.pem"},
                       "trusted_roots": "ca.pem", "hsts": 31536000})
    project = load_project(project_dir)
    assert (project.proxy.tls_port, project.proxy.address) == (443, "0.0.0.0")
    assert project.tls == Tls(acme_directory="https://acme.internal:14000/dir", acme_email=EMAIL,
                              acme_ca_file=project.root / "ca.pem", trusted_roots=project.root / "ca.pem",
                              hsts=31536000)
    plain = load_project(write_project(project_dir))
    assert plain.tls == Tls() and plain.tls.hsts == 0 and plain.tls.acme_email is None
    assert (plain.proxy.tls_port, plain.proxy.address) == (8443, "127.0.0.1")


@pytest.mark.parametrize("overrides, words", [
    ({"tls": {"acme": {"email": "not-an-address"}}}, r"tls\.acme\.email: 'not-an-address' is not an e-mail"),
    ({"tls": {"acme": {"directory": "ftp://x"}}}, r"tls\.acme\.directory: 'ftp://x' is not a URL"),
    ({"tls": {"acme": {"ca_file": "missing.pem"}}}, r"tls\.acme\.ca_file: \S*/missing\.pem does not exist; name a PEM file"),
    ({"tls": {"trusted_roots": "missing.pem"}}, r"tls\.trusted_roots: \S*/missing\.pem does not exist"),
    ({"tls": {"hsts": -1}}, r"tls\.hsts: -1 is not a whole number"),
    ({"tls": {"hsts": True}}, r"tls\.hsts: True is not a whole number"),
    ({"tls": {"ocsp": True}}, r"tls\.ocsp: unknown key"),
    ({"tls": {"acme": {"eab": "x"}}}, r"tls\.acme\.eab: unknown key"),
    ({"proxy": {"address": "localhost"}}, r"proxy\.address: 'localhost' is not an IPv4 address"),
    ({"proxy": {"tls_port": 0}}, r"proxy\.tls_port: 0 is not a port"),
    ({"tenant_defaults__tls": "on"}, r"tenant_defaults\.tls: 'on' is not off, auto"),
    ({"tenant_defaults__processes": {"web": "gunicorn"}}, r"tenant_defaults\.processes: 'web' is reserved"),
    ({"tenant_defaults__schedule": [{"cron": "every day", "command": "x"}]},
     r"tenant_defaults\.schedule: entry 1: 'every day' is not a cron expression"),
])
def test_bad_tls_proxy_and_default_values_in_the_project_name_file_and_line(project_dir, overrides, words):
    path = write_project(project_dir, **overrides) / "tenantkit.yaml"
    assert path.is_file()
    with pytest.raises(ConfigError, match=rf"tenantkit\.yaml:\d+: {words}"):
        load_project(project_dir)


# --- processes_of and schedule_of ----------------------------------------------------------------

def test_processes_merge_the_projects_with_the_tenants_own(project_dir):
    write_project(project_dir, tenant_defaults__processes={
        "worker": "python manage.py qcluster", "notes": "python manage.py process_notes --loop", "off": ""})
    project = load_project(project_dir)
    # An empty command in the project's defaults is no process at all.
    assert project.defaults.processes == (("worker", "python manage.py qcluster"),
                                          ("notes", "python manage.py process_notes --loop"))
    tenant_yaml(project, "acme", BASE + "processes:\n  notes:\n  beat: python manage.py beat\n"
                                        "  worker: python manage.py qcluster --fast\n")
    tenant_yaml(project, "zed", "hosts: [zed.localhost]\nport: 8102\nprocesses:\n  worker: ''\n  notes: ''\n")
    tenant_yaml(project, "plain", "hosts: [plain.localhost]\nport: 8103\n")
    acme, plain, zed = load_tenants(project)
    assert acme.processes == (("notes", ""), ("beat", "python manage.py beat"),
                              ("worker", "python manage.py qcluster --fast"))
    # The project's order, then the tenant's new ones; the tenant's command wins; "" turns one off.
    assert list(project.processes_of(acme).items()) == [("worker", "python manage.py qcluster --fast"),
                                                        ("beat", "python manage.py beat")]
    assert project.processes_of(plain) == {"worker": "python manage.py qcluster",
                                           "notes": "python manage.py process_notes --loop"}
    assert project.processes_of(zed) == {}


def test_the_schedule_is_the_projects_then_the_tenants_without_repeats(project_dir):
    write_project(project_dir, tenant_defaults__schedule=[
        {"cron": "17 3 * * *", "command": "clearsessions"}, {"cron": "*/5 * * * *", "command": "send_queued_mail"}])
    project = load_project(project_dir)
    tenant_yaml(project, "acme", BASE + "schedule:\n  - {cron: '0 * * * *', command: 'report --all'}\n"
                                        "  - {cron: '17  3 * * *', command: ' clearsessions '}\n"
                                        "  - {cron: '* * * * * */2', command: ping}\n")
    acme = load_tenant(project, "acme")
    assert acme.schedule[1] == ("17 3 * * *", "clearsessions")  # spaces normalised
    assert project.schedule_of(acme) == [("17 3 * * *", "clearsessions"), ("*/5 * * * *", "send_queued_mail"),
                                         ("0 * * * *", "report --all"), ("* * * * * */2", "ping")]
    assert project.schedule_of(tenant(project, "zed", 8102)) == list(project.defaults.schedule)


def test_tenants_come_back_equal_from_the_load_cache(project_dir, monkeypatch):
    write_project(project_dir, tenant_defaults__processes={"worker": "python manage.py qcluster"},
                  tls={"acme": {"email": EMAIL}})
    project = load_project(project_dir)
    tenant_yaml(project, "acme", BASE + "tls: auto\nprocesses:\n  worker:\n  beat: python manage.py beat\n"
                                        "schedule:\n  - {cron: '0 3 * * *', command: clearsessions --all}\n")
    tenant_yaml(project, "zed", "hosts: [zed.localhost]\nport: 8102\ntls: {cert: c.pem, key: k.pem}\n")
    tenant_yaml(project, "off", "hosts: [off.localhost]\nport: 8103\ntls: off\n")
    first = load_tenants(project)
    assert (project.cache_dir / "tenants.json").is_file()

    def parsed_again(*args):
        raise AssertionError("an unchanged tenant.yaml was parsed again instead of taken from the cache")

    monkeypatch.setattr(model, "load_tenant", parsed_again)
    second = load_tenants(project)
    assert second == first and len(second) == 3
    acme = second[0]
    assert acme.processes == (("worker", ""), ("beat", "python manage.py beat"))
    assert isinstance(acme.processes[0], tuple) and isinstance(acme.schedule[0], tuple)
    assert acme.schedule == (("0 3 * * *", "clearsessions --all"),)
    assert [project.tls_of(t) for t in second] == [TLS_AUTO, TLS_OFF, TLS_GIVEN]
    assert project.processes_of(acme) == {"beat": "python manage.py beat"}


def test_tls_processes_and_schedule_survive_writing_tenant_yaml(project):
    """What `tenant set` writes (Tenant.to_yaml_dict, as stack.write_tenant_yaml dumps it) loads
    back as the same tenant."""
    for extra in ({"tls": TLS_OFF}, {"tls": TLS_AUTO}, {"tls_cert": "c.pem", "tls_key": "k.pem"},
                  {"processes": (("worker", "python manage.py qcluster --name 'a b'"), ("notes", ""))},
                  {"schedule": (("*/5 * * * *", "clearsessions"), ("* * * * * */2", "ping --v 2"))}):
        written = dataclasses.replace(tenant(project, "acme", 8101), project_code=project.tenant_code, **extra)
        tenant_yaml(project, "acme", yaml.safe_dump(written.to_yaml_dict(), sort_keys=False))
        assert load_tenant(project, "acme") == written, extra


def test_job_ids_are_stable_and_differ_by_cron_and_command():
    first = job_id("0 3 * * *", "clearsessions")
    assert re.fullmatch(r"[0-9a-f]{10}", first)
    assert job_id("0 3 * * *", "clearsessions") == first
    assert len({first, job_id("0 4 * * *", "clearsessions"), job_id("0 3 * * *", "clearsessions --all")}) == 3


# --- vhosts --------------------------------------------------------------------------------------

def tls_sites(project, *tenants, layout=None):
    return render_sites(project, list(tenants), IMAGE, layout)


def test_an_auto_tls_tenant_gets_mdomain_a_redirect_and_its_site_on_https(project):
    project = with_tls(project)
    acme = tenant(project, "acme", 8101, hosts=("acme.localhost", "www.acme.localhost"), tls=TLS_AUTO)
    text = tls_sites(project, acme)["acme.conf"]
    assert re.search(r"^MDomain acme\.localhost www\.acme\.localhost$", text, re.M)
    (http_port, http), (https_port, https) = vhosts(text)
    assert (http_port, https_port) == ("80", "443")
    # HTTP only redirects (the ACME CA's challenges excepted): no page, no proxy, no media.
    assert directives(http) == ["ServerName", "ServerAlias", "ErrorLog", "CustomLog", "RewriteEngine",
                                "RewriteCond", "RewriteRule"]
    assert 'RewriteCond "%{REQUEST_URI}" "!^/\\.well-known/acme-challenge/"' in http
    assert 'RewriteRule ^ "https://%{SERVER_NAME}:8443%{REQUEST_URI}" [R=301,L]' in http
    assert "SSLEngine on" in https and "SSLCertificateFile" not in https
    assert 'ProxyPass "/" "balancer://tk-acme/"' in https and 'Alias "/_content/" "/srv/media/acme/"' in https
    assert "ServerAlias www.acme.localhost" in https
    assert "Strict-Transport-Security" not in text  # tls.hsts is 0


def test_a_given_certificate_is_named_and_no_acme_is_involved(project):
    project = with_tls(project, acme_email=None)
    zed = tenant(project, "zed", 8102, tls_cert="certs/zed.pem", tls_key="certs/zed.key")
    sites = tls_sites(project, zed)
    text = sites["zed.conf"]
    assert "MDomain" not in text
    (_, http), (_, https) = vhosts(text)
    assert "ProxyPass" not in http and "Alias" not in http
    assert 'SSLCertificateFile "/etc/tenantkit/tls/zed.pem"' in https
    assert "certs/zed" not in text  # the proxy reads the checked copy, never the tenant folder
    assert "md_module" not in sites[DEFAULT_SITE] and "MDCertificateAuthority" not in sites[DEFAULT_SITE]


def test_hsts_is_sent_on_https_only_when_asked(project):
    project = with_tls(project, hsts=31536000)
    for t in (tenant(project, "acme", 8101, tls=TLS_AUTO), tenant(project, "zed", 8102, tls_cert="c", tls_key="k")):
        (_, http), (_, https) = vhosts(tls_sites(project, t)[t.names.vhost])
        assert 'Header always set Strict-Transport-Security "max-age=31536000"' in https
        assert "Strict-Transport-Security" not in http
    plain = tenant(project, "plain", 8103)
    assert "Strict-Transport-Security" not in tls_sites(project, plain)["plain.conf"]


def test_https_on_port_443_redirects_without_a_port(project):
    project = with_proxy(with_tls(project), tls_port=443)
    text = tls_sites(project, tenant(project, "acme", 8101, tls=TLS_AUTO))["acme.conf"]
    assert 'RewriteRule ^ "https://%{SERVER_NAME}%{REQUEST_URI}" [R=301,L]' in text


def test_the_default_vhost_loads_ssl_listens_and_answers_unknown_names_421_over_tls(project):
    project = with_tls(project, acme_directory="https://acme.internal:14000/dir",
                       acme_ca_file=project.root / "ca.pem")
    text = tls_sites(project, tenant(project, "acme", 8101, tls=TLS_AUTO))[DEFAULT_SITE]
    assert "LoadModule ssl_module ${TK_MODULES}/mod_ssl.so" in text
    assert "LoadModule md_module ${TK_MODULES}/mod_md.so" in text
    assert re.search(r"^Listen 443$", text, re.M)
    assert 'MDStoreDir "/etc/tenantkit/md/store"' in text
    assert "MDCertificateAuthority https://acme.internal:14000/dir" in text
    assert f"MDContactEmail {EMAIL}" in text and "MDCertificateAgreement accepted" in text
    assert 'MDCACertificateFile "/etc/tenantkit/tls/_acme/ca.pem"' in text  # the copy the proxy mounts
    assert "MDMessageCmd /opt/tenantkit/md-message" in text
    blocks = dict(vhosts(text))
    assert set(blocks) == {"80", "443"}
    for body in blocks.values():
        assert "RewriteRule ^ - [R=421,L]" in body and "ServerName unknown-host.invalid" in body
        assert "ProxyPass" not in body
    assert 'SSLCertificateFile "/etc/tenantkit/tls/_fallback/cert.pem"' in blocks["443"]
    assert 'SSLCertificateKeyFile "/etc/tenantkit/tls/_fallback/key.pem"' in blocks["443"]


def test_the_hosts_apache_gets_https_on_the_tls_port_with_files_in_the_project(project_dir):
    write_project(project_dir, proxy={"mode": "host", "port": 8088, "tls_port": 8453}, tls={"acme": {"email": EMAIL}})
    project = load_project(project_dir)
    tenants = [tenant(project, "acme", 8101, tls=TLS_AUTO), tenant(project, "zed", 8102, tls_cert="c", tls_key="k")]
    sites = tls_sites(project, *tenants)
    assert [port for port, _ in vhosts(sites["zed.conf"])] == ["8088", "8453"]
    assert f'SSLCertificateFile "{project.tls_dir}/zed.pem"' in sites["zed.conf"]
    assert 'ProxyPass "/" "http://127.0.0.1:8102/"' in sites["zed.conf"]
    assert '"https://%{SERVER_NAME}:8453%{REQUEST_URI}"' in sites["acme.conf"]
    default = sites[DEFAULT_SITE]
    assert re.search(r"^Listen 8453$", default, re.M)
    assert "LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so" in default
    assert f'MDStoreDir "{project.md_dir}/store"' in default
    # On 443 the host's Apache (Debian's ports.conf) already listens: a second Listen would fail.
    on_443 = with_proxy(project, tls_port=443)
    default = render_default_vhost(host_layout(on_443, 8088, tenants))
    assert "<VirtualHost *:443>" in default and "Listen" not in default


def test_each_tenant_gets_its_own_mode_and_a_plain_one_stays_plain(project):
    project = dataclasses.replace(with_tls(project), defaults=dataclasses.replace(project.defaults, tls=TLS_AUTO))
    acme, plain = tenant(project, "acme", 8101), tenant(project, "plain", 8102, tls=TLS_OFF)
    sites = tls_sites(project, acme, plain)
    assert "MDomain acme.localhost" in sites["acme.conf"]
    assert [port for port, _ in vhosts(sites["plain.conf"])] == ["80"]
    assert "https://" not in sites["plain.conf"] and "SSL" not in sites["plain.conf"]
    # The plain tenant's vhost is the same as in a project without any TLS.
    assert sites["plain.conf"] == render_sites(dataclasses.replace(project, tls=Tls(), defaults=dataclasses.replace(
        project.defaults, tls=TLS_OFF)), [plain], IMAGE)["plain.conf"]


def test_without_a_tls_tenant_the_proxy_is_as_it_was(project):
    """TLS settings alone (an ACME contact, HSTS, an HTTPS port and address) change nothing
    while no tenant has TLS: no Listen, no mod_ssl, no 443."""
    configured = with_proxy(with_tls(project, hsts=600), tls_port=9443)
    tenants = [tenant(project, "acme", 8101), tenant(project, "zed", 8102, tls=TLS_OFF)]
    assert proxy_layout(configured, tenants).tls is None and proxy_layout(configured).tls is None
    sites = render_sites(configured, tenants, IMAGE)
    assert sites == render_sites(project, tenants, IMAGE)
    default = sites[DEFAULT_SITE]
    assert "Listen" not in default and "SSL" not in default and "443" not in default and "MD" not in default
    assert [port for port, _ in vhosts(default)] == ["80"]
    stack = render_stack(configured, tenants, "proxy:1", {"acme": "10.213.0.0/28", "zed": "10.213.0.16/28"})
    assert stack == render_stack(project, tenants, "proxy:1", {"acme": "10.213.0.0/28", "zed": "10.213.0.16/28"})
    assert stack["services"]["proxy"]["ports"] == ["127.0.0.1:8080:80"]
    assert "443" not in dump_compose(stack)


# --- compose: the proxy, processes, the scheduler -----------------------------------------------

def test_the_proxy_publishes_https_and_mounts_certificates_only_with_tls(project):
    project = with_proxy(project, address="0.0.0.0", tls_port=8444)
    tenants = [tenant(project, "acme", 8101)]
    plain = proxy_service(project, tenants, "proxy:1")
    assert plain["ports"] == ["0.0.0.0:8080:80"]
    assert not any(".tenantkit/tls" in v["source"] or ".tenantkit/md" in v["source"] for v in plain["volumes"])
    secure = proxy_service(project, tenants, "proxy:1", tls=True)
    assert secure["ports"] == ["0.0.0.0:8080:80", "0.0.0.0:8444:443"]
    mounts = {v["target"]: v for v in secure["volumes"]}
    assert mounts["/etc/tenantkit/tls"] == {"type": "bind", "source": "../.tenantkit/tls",
                                            "target": "/etc/tenantkit/tls", "read_only": True}
    assert mounts["/etc/tenantkit/md"] == {"type": "bind", "source": "../.tenantkit/md",
                                           "target": "/etc/tenantkit/md"}  # mod_md writes its store
    assert plain["volumes"] == secure["volumes"][:len(plain["volumes"])]


def test_the_proxy_label_follows_ports_and_mounts_but_not_networks(project):
    one = [tenant(project, "acme", 8101)]
    two = [*one, tenant(project, "zed", 8102)]
    label = proxy_service(project, one, "proxy:1", {"acme": "10.213.0.0/28"})["labels"][PROXY_LABEL]
    assert re.fullmatch(r"[0-9a-f]{16}", label)
    more = proxy_service(project, two, "proxy:1", {"acme": "10.213.0.0/28", "zed": "10.213.0.16/28"})
    assert set(more["networks"]) == {"tenant-acme", "tenant-zed"}
    assert more["labels"][PROXY_LABEL] == label  # tenantkit attaches networks without a restart
    changed = {proxy_service(project, one, "proxy:1", tls=True)["labels"][PROXY_LABEL],
               proxy_service(with_proxy(project, tls_port=9443), one, "proxy:1", tls=True)["labels"][PROXY_LABEL],
               proxy_service(with_proxy(project, address="0.0.0.0"), one, "proxy:1")["labels"][PROXY_LABEL],
               proxy_service(with_proxy(project, port=8081), one, "proxy:1")["labels"][PROXY_LABEL],
               proxy_service(project, one, "proxy:2")["labels"][PROXY_LABEL]}
    assert label not in changed and len(changed) == 5


def test_a_process_runs_like_the_web_container_but_is_reached_by_nothing(project):
    for proj in (project, with_proxy(project, mode=ProxyMode.HOST)):
        acme = tenant(proj, "acme", 8101, memory="512m", cpus=0.5)
        doc = render_tenant_compose(proj, acme, IMAGE, "10.213.0.0/28", "digest-1", slot="b")
        web_before = yaml.safe_load(dump_compose(doc))["services"]["tenant-acme"]
        command = "python manage.py qcluster --name 'a b'"
        add_processes(doc, acme, {"worker": command, "beat": "celery beat"}, "0123456789abcdef")
        assert list(doc["services"]) == ["tenant-acme", "tenant-acme-worker", "tenant-acme-beat"]
        web, worker = doc["services"]["tenant-acme"], doc["services"]["tenant-acme-worker"]
        assert web == web_before  # the web service is left as it was
        assert worker["command"] == ["python", "manage.py", "qcluster", "--name", "a b"]
        assert doc["services"]["tenant-acme-beat"]["command"] == ["celery", "beat"]
        for key in ("image", "volumes", "mem_limit", "cpus", "pids_limit", "cap_drop", "security_opt", "read_only",
                    "tmpfs", "restart", "pull_policy"):
            assert worker[key] == web[key], key
        assert (worker["image"], worker["mem_limit"], worker["cpus"]) == (IMAGE, "512m", 0.5)
        assert worker["environment"] == {**web["environment"], "TENANTKIT_PROCESS": "worker"}
        assert "ports" not in worker
        assert worker["networks"] == ["tenant-acme"]  # no alias: the proxy never routes to it
        assert worker["labels"] == {"tenantkit.tenant": "acme", PROCESS_LABEL: "worker",
                                    "tenantkit.settings": "digest-1",
                                    CONFIG_LABEL: process_config("0123456789abcdef", "worker", command)}
        # What it is made of, and only that, names it: `up` leaves a running one that matches.
        configs = {process_config(web, name, text) for web in ("0123456789abcdef", "fedcba9876543210")
                   for name in ("worker", "beat") for text in (command, "celery beat")}
        assert len(configs) == 8 and process_config(None, "worker", command) is None
        assert "tenantkit.slot" not in worker["labels"]
        assert yaml.safe_load(dump_compose(doc)) == doc
    assert "ports" in web  # host mode: the web container publishes, its processes do not


def test_the_scheduler_service_is_on_no_network_and_reads_its_schedule_only(project):
    tenants = [tenant(project, "acme", 8101)]
    assert "scheduler" not in render_stack(project, tenants, "proxy:1")["services"]
    doc = render_stack(project, tenants, "proxy:1", scheduler_image="tktest/scheduler:abc", scheduler_user="1000:998")
    service = doc["services"]["scheduler"]
    assert service["image"] == "tktest/scheduler:abc" and service["user"] == "1000:998"
    assert service["network_mode"] == "none" and "networks" not in service and "ports" not in service
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    mounts = {v["target"]: v for v in service["volumes"]}
    assert mounts["/var/run/docker.sock"]["source"] == "/var/run/docker.sock"
    assert mounts["/etc/tenantkit/scheduler"] == {"type": "bind", "source": "./scheduler",
                                                  "target": "/etc/tenantkit/scheduler", "read_only": True}
    assert service["command"][-1] == "/etc/tenantkit/scheduler/schedule.json"
    assert not any("tenants" in v["source"] for v in service["volumes"])  # no tenant's secrets
    # Its label is a digest of its definition: a new user (or image, or mount) changes it.
    other = render_stack(project, tenants, "proxy:1", scheduler_image="tktest/scheduler:abc", scheduler_user="0:0")
    assert service["labels"]["tenantkit.scheduler"] != other["services"]["scheduler"]["labels"]["tenantkit.scheduler"]


def test_the_schedule_holds_only_tenants_with_jobs_project_wide_first(project):
    project = dataclasses.replace(project, defaults=dataclasses.replace(
        project.defaults, schedule=(("17 3 * * *", "clearsessions"),)))
    acme = tenant(project, "acme", 8101, schedule=(("*/5 * * * *", "send_mail --limit 10"),
                                                   ("17 3 * * *", "clearsessions")))
    zed = tenant(project, "zed", 8102)
    doc = render_schedule(project, [acme, zed])
    assert doc["project"] == "tktest" and doc["log_dir"] == "/var/log/tenantkit"
    assert doc["tenants"]["acme"] == {"service": "tenant-acme", "jobs": [
        {"id": job_id("17 3 * * *", "clearsessions"), "cron": "17 3 * * *", "command": ["clearsessions"]},
        {"id": job_id("*/5 * * * *", "send_mail --limit 10"), "cron": "*/5 * * * *",
         "command": ["send_mail", "--limit", "10"]}]}
    assert doc["tenants"]["zed"]["jobs"] == [doc["tenants"]["acme"]["jobs"][0]]  # the same job, the same id
    assert render_schedule(project, [acme, zed]) == doc  # ids stay across renders
    alone = render_schedule(dataclasses.replace(project, defaults=dataclasses.replace(project.defaults, schedule=())),
                            [acme, zed])
    assert list(alone["tenants"]) == ["acme"]  # no jobs, no entry
    assert render_schedule(dataclasses.replace(project, defaults=dataclasses.replace(project.defaults, schedule=())),
                           [zed])["tenants"] == {}


def test_the_schedule_file_is_json_the_scheduler_loads(project, tmp_path):
    acme = tenant(project, "acme", 8101, schedule=(("* * * * * */2", "ping"), ("0 3 * * *", "report 'a b'")))
    text = dump_schedule(render_schedule(project, [acme]))
    assert json.loads(text) == render_schedule(project, [acme]) and text.endswith("\n")
    path = tmp_path / "schedule.json"
    path.write_text(text)
    loaded = sched.load_schedule(path)
    assert loaded.project == "tktest"
    assert [(j.tenant, j.service, j.id, j.command) for j in loaded.jobs] == [
        ("acme", "tenant-acme", job_id("* * * * * */2", "ping"), ("ping",)),
        ("acme", "tenant-acme", job_id("0 3 * * *", "report 'a b'"), ("report", "a b"))]


# --- settings over HTTPS -----------------------------------------------------------------------

BASE_SETTINGS = ("CSRF_TRUSTED_ORIGINS = ['https://partner.example.com']\n"
                 "SILENCED_SYSTEM_CHECKS = ['fields.W342']\n")


def test_a_tls_tenants_settings_are_https_only(project, tmp_path):
    project = with_tls(project, hsts=600)
    acme = tenant(project, "acme", 8101, hosts=("acme.localhost", "www.acme.localhost"), tls=TLS_AUTO)
    text = render_settings(project, acme, "http://acme.localhost:8101/")
    settings, _ = load_settings(tmp_path, text, BASE_SETTINGS)
    assert settings["SESSION_COOKIE_SECURE"] is True and settings["CSRF_COOKIE_SECURE"] is True
    assert settings["CSRF_TRUSTED_ORIGINS"] == ["https://partner.example.com", "https://acme.localhost:8443",
                                                "https://www.acme.localhost:8443"]
    assert settings["SITE_URL"] == "https://acme.localhost:8443/"  # whatever URL the caller passed
    assert settings["SECURE_SSL_REDIRECT"] is False  # the proxy redirects; its health checks are HTTP
    assert settings["SILENCED_SYSTEM_CHECKS"] == ["fields.W342", "security.W008"]
    assert settings["SECURE_HSTS_SECONDS"] == 600
    assert settings["SECURE_PROXY_SSL_HEADER"] is None


def test_a_given_certificate_on_443_gives_origins_without_a_port_and_no_hsts(project, tmp_path):
    project = with_proxy(with_tls(project, acme_email=None), tls_port=443)
    zed = tenant(project, "zed", 8102, tls_cert="c.pem", tls_key="k.pem")
    settings, _ = load_settings(tmp_path, render_settings(project, zed, "http://zed.localhost/"))
    assert settings["CSRF_TRUSTED_ORIGINS"] == ["https://zed.localhost"]
    assert settings["SITE_URL"] == "https://zed.localhost/"
    assert settings["SESSION_COOKIE_SECURE"] is True and settings["CSRF_COOKIE_SECURE"] is True
    assert "SECURE_HSTS_SECONDS" not in settings


def test_a_plain_tenants_settings_set_nothing_of_https(project, tmp_path):
    project = with_tls(project, hsts=600)
    for proj, t in ((project, tenant(project, "acme", 8101)),
                    (project, tenant(project, "acme", 8101, tls=TLS_OFF)),
                    (with_proxy(project, mode=ProxyMode.NONE), tenant(project, "acme", 8101, tls=TLS_AUTO))):
        text = render_settings(proj, t, "http://acme.localhost:8080/")
        settings, _ = load_settings(tmp_path, text, BASE_SETTINGS)
        for name in ("SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT"):
            assert name not in settings, name
        assert settings["CSRF_TRUSTED_ORIGINS"] == ["https://partner.example.com"]
        assert settings["SILENCED_SYSTEM_CHECKS"] == ["fields.W342"]
        assert settings["SITE_URL"] == "http://acme.localhost:8080/"

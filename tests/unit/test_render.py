"""Rendering is pure: the model in, a compose document and settings modules out."""
import dataclasses

import yaml

from tenantkit.model import ProxyMode, Tenant
from tenantkit.render.compose import dump_compose, render_stack, render_tenant_compose, tenant_service
from tenantkit.render.settings import render_settings


def tenant(project, name, port, **extra):
    return Tenant(name=name, hosts=(f"{name}.localhost",), title=name.title(), port=port,
                  memory=extra.pop("memory", "256m"), workers=1, threads=4,
                  path=project.tenant_dir(name), **extra)


def render_compose(project, tenants, image, proxy_image=None):
    """The whole stack as one document: the stack file with its includes merged in, as Compose sees it."""
    subnets = {t.name: f"10.213.0.{16 * i}/28" for i, t in enumerate(tenants)}
    doc = render_stack(project, tenants, proxy_image, subnets)
    for t in tenants:
        part = render_tenant_compose(project, t, image, subnets[t.name])
        doc["services"].update(part["services"])
        doc.setdefault("networks", {}).update(part["networks"])
    return doc


def test_each_tenant_gets_a_service_with_restart_memory_and_its_own_network(project):
    doc = render_compose(project, [tenant(project, "acme", 8101, memory="512m"),
                                   tenant(project, "zed", 8102)], "tktest/app:src-1")
    acme = doc["services"]["tenant-acme"]
    assert acme["image"] == "tktest/app:src-1"
    assert "healthcheck" not in acme  # the proxy checks health over HTTP: no exec per interval
    assert acme["restart"] == "unless-stopped"
    assert acme["mem_limit"] == "512m"
    assert doc["services"]["tenant-zed"]["mem_limit"] == "256m"
    assert acme["networks"] == {"tenant-acme": {"aliases": ["tk-acme", "a.tk-acme"]}}
    assert list(doc["services"]["tenant-zed"]["networks"]) == ["tenant-zed"]
    assert sorted(doc["services"]["db"]["networks"]) == ["tenant-acme", "tenant-zed"]
    assert set(doc["networks"]) == {"tenant-acme", "tenant-zed"}


def test_each_tenant_network_has_its_own_explicit_subnet(project):
    part = render_tenant_compose(project, tenant(project, "acme", 8101), "img", "10.213.0.32/28")
    assert part["networks"] == {"tenant-acme": {"ipam": {"config": [{"subnet": "10.213.0.32/28"}]}}}
    assert list(part["services"]) == ["tenant-acme"]


def test_the_stack_file_includes_every_tenant_file(project):
    doc = render_stack(project, [tenant(project, "acme", 8101), tenant(project, "zed", 8102)], "proxy:1")
    assert doc["include"] == ["tenants/acme.yaml", "tenants/zed.yaml"]
    assert set(doc["services"]) == {"db", "proxy"}
    assert doc["services"]["db"]["command"][:3] == ["postgres", "-c", "max_connections=1000"]


def test_tenants_publish_on_loopback_only_and_not_at_all_behind_the_compose_proxy(project):
    doc = render_compose(project, [tenant(project, "acme", 8101)], "img")
    for service in doc["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:")
    assert "ports" not in doc["services"]["tenant-acme"]  # two slots may run at once
    host = dataclasses.replace(project, proxy=dataclasses.replace(project.proxy, mode=ProxyMode.HOST))
    doc = render_compose(host, [tenant(host, "acme", 8101)], "img")
    assert doc["services"]["tenant-acme"]["ports"] == ["127.0.0.1:8101:8000"]


def test_a_slot_names_the_container_on_its_network_and_never_another_tenant(project):
    service = tenant_service(project, tenant(project, "foo", 8101), "img", slot="b")
    assert service["networks"]["tenant-foo"]["aliases"] == ["tk-foo", "b.tk-foo"]
    names = {tenant(project, n, 8101).names.slot_host(s) for n in ("foo", "foo_a", "foo_b", "a") for s in "ab"}
    names |= {tenant(project, n, 8101).names.backend_host for n in ("foo", "foo_a", "foo_b", "a")}
    assert len(names) == 12


def test_the_settings_module_is_mounted_read_only_and_media_writable(project):
    service = render_compose(project, [tenant(project, "acme", 8101)], "img")["services"]["tenant-acme"]
    folder, media = service["volumes"]
    assert folder == {"type": "bind", "source": "../../tenants/acme", "target": "/srv/tenants/acme",
                      "read_only": True}
    assert media == {"type": "bind", "source": "../../media/acme", "target": "/srv/media"}
    assert service["environment"]["TENANTKIT_MEDIA_ROOT"] == "/srv/media"
    assert service["environment"]["DJANGO_SETTINGS_MODULE"] == "tenants.acme.settings"
    assert service["environment"]["PYTHONPATH"] == "/srv:/srv/tenants/acme"


def test_secrets_reach_containers_through_the_mounted_file_only(project):
    doc = render_compose(project, [tenant(project, "acme", 8101)], "img")
    service = doc["services"]["tenant-acme"]
    assert "env_file" not in service  # not in the environment, nor in `docker inspect`
    assert not any("secret" in key.lower() or "password" in key.lower() for key in service["environment"])
    assert doc["services"]["db"]["env_file"] == ["../.tenantkit/db.env"]
    text = dump_compose(doc)
    assert "PASSWORD=" not in text and "SECRET_KEY" not in text


def test_tenant_containers_are_locked_down(project):
    service = render_compose(project, [tenant(project, "acme", 8101)], "img")["services"]["tenant-acme"]
    assert service["cap_drop"] == ["ALL"]
    assert service["security_opt"] == ["no-new-privileges:true"]
    assert service["read_only"] is True and service["tmpfs"] == ["/tmp:size=64m,mode=1777"]
    assert service["pids_limit"] > 0 and service["cpus"] == 1.0 and service["mem_limit"] == "256m"


def test_the_proxy_sees_media_and_assets_but_no_tenant_folder(project):
    doc = render_compose(project, [tenant(project, "acme", 8101)], "img", "proxy-img")
    sources = {volume["source"] for volume in doc["services"]["proxy"]["volumes"]}
    assert "../media" in sources and not any("tenants" in source for source in sources)


def test_tenants_believe_x_forwarded_proto_from_the_proxy_address_only(project):
    doc = render_compose(project, [tenant(project, "acme", 8101)], "img", "proxy-img")
    assert doc["services"]["proxy"]["networks"] == {"tenant-acme": {"ipv4_address": "10.213.0.14"}}
    command = doc["services"]["tenant-acme"]["command"]
    assert command[command.index("--forwarded-allow-ips") + 1] == "10.213.0.14"


def test_an_external_database_has_no_db_service(project_dir):
    from tests.conftest import write_project
    from tenantkit.model import load_project
    write_project(project_dir, database={"service": False, "host": "db1.example.app",
                                         "admin_password_file": "pw"})
    project = load_project(project_dir)
    doc = render_compose(project, [tenant(project, "acme", 8101)], "img")
    assert "db" not in doc["services"] and "depends_on" not in doc["services"]["tenant-acme"]
    assert doc["services"]["tenant-acme"]["environment"]["TENANT_DB_HOST"] == "db1.example.app"


def test_the_compose_document_round_trips_through_yaml(project):
    doc = render_compose(project, [tenant(project, "acme", 8101)], "img")
    assert yaml.safe_load(dump_compose(doc)) == doc


def test_settings_follow_the_seed_and_compile(project):
    text = render_settings(project, tenant(project, "acme", 8101), "http://acme.localhost:8101/")
    compile(text, "settings.py", "exec")
    assert "from main.settings import *" in text
    assert "ALLOWED_HOSTS = ['acme.localhost']" in text
    assert "ALLOWED_HOSTS += ['tk-acme', 'a.tk-acme', 'b.tk-acme']" in text  # the proxy's health checks
    assert "TENANT_ROOT = os.path.dirname(os.path.abspath(__file__))" in text
    assert '"NAME": \'acme\'' in text and '"USER": \'acme\'' in text
    assert 'MEDIA_ROOT = os.environ.get("TENANTKIT_MEDIA_ROOT") or os.path.join(TENANT_ROOT, "www", "content")' in text
    assert "DEBUG = False" in text and "SECURE_PROXY_SSL_HEADER = None" in text
    assert "SITE_TITLE = 'Acme'" in text
    assert "INSTALLED_APPS" not in text


def test_a_title_with_quotes_stays_a_string_literal(project):
    nasty = 'Zed\'s "Co"\\ """; import os'
    t = Tenant(name="zed", hosts=("zed.localhost",), title=nasty, port=8101, memory="256m",
               workers=1, threads=4, path=project.tenant_dir("zed"))
    namespace: dict = {}
    text = render_settings(project, t, "http://zed.localhost/")
    line = next(line for line in text.splitlines() if line.startswith("SITE_TITLE"))
    exec(line, namespace)
    assert namespace["SITE_TITLE"] == nasty


def test_extra_apps_are_added_to_installed_apps(project):
    t = tenant(project, "acme", 8101, apps=("acme_reports",))
    text = render_settings(project, t, "http://acme.localhost/")
    assert "INSTALLED_APPS = [*INSTALLED_APPS, *['acme_reports']]" in text

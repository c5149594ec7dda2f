"""Rendering is pure: the model in, a compose document and settings modules out."""
import dataclasses

import yaml

from tenantkit.model import ProxyMode, Tenant
from tenantkit.render.compose import dump_compose, render_stack, render_tenant_compose, tenant_service
from tenantkit.render.settings import render_settings


def tenant(project, name, port, **extra):
    return Tenant(name=name, hosts=extra.pop("hosts", (f"{name}.localhost",)), title=name.title(), port=port,
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


def load_settings(tmp_path, text, base="", environ=None):
    """Execute a rendered settings.py as Django would import it: with a real base settings
    module (main/settings.py holding `base`, run at import) and the tenant's secrets.env
    next to it; its globals, and the process environment it left."""
    import os
    import sys
    from unittest import mock

    folder = tmp_path / "tenant"
    (tmp_path / "main").mkdir(exist_ok=True)
    (tmp_path / "main" / "__init__.py").write_text("")
    (tmp_path / "main" / "settings.py").write_text(
        "import os\nINSTALLED_APPS = ['django.contrib.contenttypes']\nDATABASES = {'default': {}}\n"
        # Names a project's base settings may define too (the demo's do): the tenant's win.
        "TENANT_NAME = ''\nTENANT_HOSTS = []\nTENANT_TITLE = ''\nSITE_URL = 'http://localhost'\nSITE_TITLE = 'x'\n"
        "TENANT_ROOT = '/'\n" + base)
    folder.mkdir(exist_ok=True)
    (folder / "secrets.env").write_text("# test\nTENANT_DB_PASSWORD=p/w d\nTENANT_SECRET_KEY=sk-1\n")
    for name in ("main", "main.settings"):
        sys.modules.pop(name, None)
    with mock.patch.dict(os.environ, dict(environ or {}), clear=True), mock.patch.object(sys, "path", [str(tmp_path), *sys.path]):
        namespace = {"__file__": str(folder / "settings.py"), "__name__": "tenants.acme.settings"}
        try:
            exec(compile(text, str(folder / "settings.py"), "exec"), namespace)
        finally:
            for name in ("main", "main.settings"):
                sys.modules.pop(name, None)
        left = dict(os.environ)
    return namespace, left


def test_settings_follow_the_seed_and_compile(project, tmp_path):
    text = render_settings(project, tenant(project, "acme", 8101), "http://acme.localhost:8101/")
    assert "from main.settings import *" in text
    settings, _ = load_settings(tmp_path, text)
    assert settings["ALLOWED_HOSTS"] == ["acme.localhost", "tk-acme", "a.tk-acme", "b.tk-acme"]  # + health checks
    assert settings["TENANT_ROOT"] == str(tmp_path / "tenant")
    database = settings["DATABASES"]["default"]
    assert (database["NAME"], database["USER"], database["PASSWORD"]) == ("acme", "acme", "p/w d")
    assert "TEST" not in database
    assert settings["MEDIA_ROOT"] == str(tmp_path / "tenant" / "www" / "content")
    assert settings["STATIC_URL"] == "/_assets/"  # where the proxy serves the release's collected files
    cdn, _ = load_settings(tmp_path, render_settings(project, tenant(project, "acme", 8101), "http://acme/"),
                           "STATIC_URL = 'https://cdn.example.com/s/'\n")
    assert cdn["STATIC_URL"] == "https://cdn.example.com/s/"
    assert settings["DEBUG"] is False and settings["SECURE_PROXY_SSL_HEADER"] is None
    assert settings["SITE_TITLE"] == "Acme" and settings["SECRET_KEY"] == "sk-1"
    assert (settings["TENANT_NAME"], settings["TENANT_HOSTS"], settings["TENANT_TITLE"]) == ("acme", ["acme.localhost"], "Acme")
    assert settings["SITE_URL"] == "http://acme.localhost:8101/"
    assert settings["INSTALLED_APPS"] == ["django.contrib.contenttypes", "django.contrib.postgres"]
    # A project that wants its INSTALLED_APPS as they are says database.postgres_app: false.
    project = dataclasses.replace(project, database=dataclasses.replace(project.database, postgres_app=False))
    settings, _ = load_settings(tmp_path, render_settings(project, tenant(project, "acme", 8101), "http://acme/"))
    assert settings["INSTALLED_APPS"] == ["django.contrib.contenttypes"]


def test_base_settings_read_the_tenants_own_database_url_and_secret_key(project, tmp_path):
    """12-factor base settings (dj-database-url, django-environ) see the tenant's own
    database, role and secret key in the environment, whatever the container was given."""
    base = ("SEEN_URL = os.environ.get('DATABASE_URL', 'sqlite://')\n"
            "SEEN_KEY = os.environ['DJANGO_SECRET_KEY']\nSEEN_OTHER_KEY = os.environ['SECRET_KEY']\n"
            "if SEEN_URL.startswith('postgres'):\n    INSTALLED_APPS.append('django.contrib.postgres')\n")
    project = dataclasses.replace(project, database=dataclasses.replace(project.database, postgres_app=False))

    text = render_settings(project, tenant(project, "acme", 8101), "http://acme.localhost/")
    settings, left = load_settings(tmp_path, text, base, {"TENANT_DB_HOST": "db", "DATABASE_URL": "x://other"})
    # The password's "/" and " " are quoted, so a URL parser gives them back intact.
    assert settings["SEEN_URL"] == "postgres://acme:p%2Fw%20d@db:5432/acme"
    from urllib.parse import unquote, urlsplit
    assert unquote(urlsplit(settings["SEEN_URL"]).password) == "p/w d"
    assert settings["SEEN_KEY"] == settings["SEEN_OTHER_KEY"] == "sk-1"
    assert "django.contrib.postgres" in settings["INSTALLED_APPS"]
    # Gone once the settings are loaded: no subprocess, and no debug page's request data
    # (runserver copies the environment into each request), shows them.
    assert not {"DATABASE_URL", "DJANGO_SECRET_KEY", "SECRET_KEY"} & set(left)
    # Nothing of it is in the file: the secrets stay in secrets.env.
    assert "p/w d" not in text and "sk-1" not in text


def test_the_environment_variable_names_are_settings(project, tmp_path):
    project = dataclasses.replace(project, environment=dataclasses.replace(
        project.environment, database_url="DB_URL", secret_key=("APP_KEY",)))
    text = render_settings(project, tenant(project, "acme", 8101), "http://acme.localhost/")
    settings, left = load_settings(tmp_path, text, "SEEN = (os.environ['DB_URL'], os.environ['APP_KEY'])\n")
    assert settings["SEEN"][0].startswith("postgres://acme:") and settings["SEEN"][1] == "sk-1"
    assert "DATABASE_URL" not in left and "DJANGO_SECRET_KEY" not in left


def test_project_wide_apps_and_settings_come_before_the_tenants_own(project, tmp_path):
    """tenant_defaults.apps and project.tenant_settings apply to every tenant; the
    snippet sees the tenant's name and hosts; what tenantkit sets per tenant wins."""
    snippet = project.root / "tenant_settings.py"
    snippet.write_text("BASE_URL = f'https://{TENANT_HOSTS[0]}'\nCACHE_PREFIX = TENANT_NAME\n"
                       "ALLOWED_HOSTS = ['*']\nSITE_TITLE = 'everyone'\n")
    project = dataclasses.replace(
        project, defaults=dataclasses.replace(project.defaults, apps=("shared_app", "acme_reports")),
        tenant_settings=snippet, tenant_settings_text=snippet.read_text())
    text = render_settings(project, tenant(project, "acme", 8101, apps=("acme_reports",)), "http://acme.localhost/")
    settings, _ = load_settings(tmp_path, text)
    assert settings["BASE_URL"] == "https://acme.localhost" and settings["CACHE_PREFIX"] == "acme"
    assert settings["INSTALLED_APPS"] == ["django.contrib.contenttypes", "django.contrib.postgres", "shared_app",
                                          "acme_reports"]
    assert settings["ALLOWED_HOSTS"][0] == "acme.localhost" and settings["SITE_TITLE"] == "Acme"
    # A mistake in the snippet is reported with its own file name and line.
    snippet.write_text("X = 1\nraise RuntimeError('boom')\n")
    broken = dataclasses.replace(project, tenant_settings_text=snippet.read_text())
    try:
        load_settings(tmp_path, render_settings(broken, tenant(broken, "acme", 8101), "http://acme.localhost/"))
    except RuntimeError as exc:
        import traceback
        frames = traceback.extract_tb(exc.__traceback__)
        assert (frames[-1].filename, frames[-1].lineno) == ("tenant_settings.py", 2)
    else:
        raise AssertionError("the snippet's error did not surface")


def test_tenant_test_names_a_test_database(project, tmp_path):
    text = render_settings(project, tenant(project, "acme", 8101), "http://acme.localhost/")
    settings, _ = load_settings(tmp_path, text, environ={"TENANTKIT_TEST_DATABASE": "acme.test"})
    assert settings["DATABASES"]["default"]["TEST"] == {"NAME": "acme.test"}


def test_a_title_with_quotes_stays_a_string_literal(project):
    nasty = 'Zed\'s "Co"\\ """; import os'
    t = Tenant(name="zed", hosts=("zed.localhost",), title=nasty, port=8101, memory="256m",
               workers=1, threads=4, path=project.tenant_dir("zed"))
    namespace: dict = {}
    text = render_settings(project, t, "http://zed.localhost/")
    line = next(line for line in text.splitlines() if line.startswith("SITE_TITLE"))
    exec(line, namespace)
    assert namespace["SITE_TITLE"] == nasty


def test_extra_apps_are_added_to_installed_apps(project, tmp_path):
    t = tenant(project, "acme", 8101, apps=("acme_reports", "django.contrib.contenttypes"))
    settings, _ = load_settings(tmp_path, render_settings(project, t, "http://acme.localhost/"))
    assert settings["INSTALLED_APPS"] == ["django.contrib.contenttypes", "django.contrib.postgres",
                                          "acme_reports"]  # no app twice

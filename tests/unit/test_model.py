"""The loader accepts good config, and names the file, line and fix for bad config."""
import pytest

from tests.conftest import write_project

from tenantkit.model import (ConfigError, check_host, check_memory, check_name, load_project,
                             load_tenant, load_tenants, tenant_names)


@pytest.mark.parametrize("name", ["acme", "liberty", "zed", "a", "acme_2", "x" * 40])
def test_lowercase_identifiers_are_tenant_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name, words", [
    ("Acme", "lowercase identifier"),
    ("acme-inc", "lowercase identifier"),
    ("2acme", "lowercase identifier"),
    ("x" * 41, "longer than 40"),
    ("../x", "path"),
    ("a/b", "path"),
    (".hidden", "path"),
    ("postgres", "reserved"),
    ("template0", "reserved"),
    ("template1", "reserved"),
    ("db", "reserved"),
    ("proxy", "reserved"),
    ("all", "reserved"),
    ("pg_acme", "reserved"),
    ("", "required"),
])
def test_bad_tenant_names_are_refused_with_the_reason(name, words):
    with pytest.raises(ValueError, match=words):
        check_name(name)


@pytest.mark.parametrize("host", ["acme.localhost", "a-b.example.com", "localhost", "ACME.Example.COM"])
def test_host_names_are_accepted_and_lowercased(host):
    assert check_host(host) == host.lower()


@pytest.mark.parametrize("host", [
    "acme example.com", 'acme".example.com', "acme.example.com\nServerAlias evil", "-acme.com",
    "acme..com", "acme_x.com", "*.acme.com", "acme", "a" * 64 + ".com", "acme.com/x", "",
])
def test_host_names_that_could_inject_config_are_refused(host):
    with pytest.raises(ValueError, match="host name"):
        check_host(host)


@pytest.mark.parametrize("value, expected", [("256m", "256m"), ("1G", "1g"), ("64m", "64m")])
def test_memory_limits(value, expected):
    assert check_memory(value) == expected


@pytest.mark.parametrize("value", ["lots", "32m", "0m", "256", "-1g"])
def test_bad_memory_limits_are_refused(value):
    with pytest.raises(ValueError):
        check_memory(value)


def test_every_name_derives_from_the_tenant_name():
    names = tenant_names("acme")
    assert (names.service, names.network, names.database, names.role, names.vhost) == (
        "tenant-acme", "tenant-acme", "acme", "acme", "acme.conf")
    assert names.settings_module == "tenants.acme.settings"


def test_project_defaults(project):
    assert project.name == "tktest"
    assert project.settings == "main.settings"
    assert project.database.service and project.database.host == "db"
    assert project.defaults.memory == "384m"


def test_local_config_overrides_the_committed_one(project_dir):
    (project_dir / "tenantkit.local.yaml").write_text("images:\n  db: local/pg:15\n")
    project = load_project(project_dir)
    assert project.images.db == "local/pg:15"
    assert project.images.app == "tktest/app"


def test_an_unknown_key_in_the_config_names_file_and_line(project_dir):
    path = project_dir / "tenantkit.yaml"
    path.write_text(path.read_text() + "colour: blue\n")
    line = len(path.read_text().splitlines())
    with pytest.raises(ConfigError, match=rf"tenantkit.yaml:{line}: colour: unknown key"):
        load_project(project_dir)


def test_a_source_folder_without_manage_py_is_refused(project_dir, tmp_path):
    write_project(project_dir, project__source=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="nowhere holds no manage.py"):
        load_project(project_dir)


def _tenant_yaml(project, name, text):
    folder = project.tenant_dir(name)
    folder.mkdir(parents=True)
    (folder / "tenant.yaml").write_text(text)


def test_a_malformed_tenant_yaml_names_the_file_and_line(project):
    _tenant_yaml(project, "acme", "name: acme\nhosts: [acme.localhost\nport: 8101\n")
    with pytest.raises(ConfigError, match=r"tenants/acme/tenant.yaml:\d+: malformed YAML"):
        load_tenant(project, "acme")


def test_a_bad_value_in_tenant_yaml_names_its_line(project):
    _tenant_yaml(project, "acme", "name: acme\nhosts: [acme.localhost]\nport: 8101\nmemory: lots\n")
    with pytest.raises(ConfigError, match=r"tenant.yaml:4: memory: 'lots' is not a size"):
        load_tenant(project, "acme")


def test_a_tenant_yaml_whose_name_differs_from_its_folder_is_refused(project):
    _tenant_yaml(project, "acme", "name: zed\nhosts: [acme.localhost]\nport: 8101\n")
    with pytest.raises(ConfigError, match="does not match its folder"):
        load_tenant(project, "acme")


def test_two_tenants_claiming_one_host_are_refused(project):
    _tenant_yaml(project, "acme", "hosts: [shared.localhost]\nport: 8101\n")
    _tenant_yaml(project, "zed", "hosts: [shared.localhost]\nport: 8102\n")
    with pytest.raises(ConfigError, match="'shared.localhost' is claimed by both 'acme' and 'zed'"):
        load_tenants(project)


def test_an_unknown_tenant_says_how_to_list_them(project):
    with pytest.raises(ConfigError, match="unknown tenant 'nobody'.*tenant list"):
        load_tenant(project, "nobody")


def test_a_config_in_a_parent_folder_owned_by_another_user_is_refused(tmp_path):
    import os

    from tenantkit.model import find_root
    planted = write_project(tmp_path / "shared")
    inside = planted / "work" / "deeper"
    inside.mkdir(parents=True)
    assert find_root(inside) == planted.resolve()  # ours: used
    os.chown(planted / "tenantkit.yaml", 4242, 4242)
    with pytest.raises(ConfigError, match="belongs to another user"):
        find_root(inside)
    assert find_root(planted) == planted.resolve()  # named directly (the working folder): used


def test_tenants_cannot_share_or_borrow_a_database_or_role(project):
    from dataclasses import replace

    from tenantkit.model import Tenant, check_database_identity, check_unique
    acme = Tenant(name="acme", hosts=("acme.localhost",), title="A", port=8101, memory="256m", workers=1,
                  threads=4, path=project.tenant_dir("acme"))
    admin = replace(acme, name="evil", hosts=("evil.localhost",), port=8102, db_user="postgres")
    with pytest.raises(ConfigError, match="server's own"):
        check_database_identity(project, admin)
    borrower = replace(acme, name="evil", hosts=("evil.localhost",), port=8102, database="evil", db_user="acme")
    with pytest.raises(ConfigError, match="already tenant 'acme'"):
        check_unique([acme, borrower], project)
    reserved = replace(acme, name="evil", hosts=("evil.localhost",), port=8102, database="template1")
    with pytest.raises(ConfigError, match="server's own"):
        check_unique([acme, reserved], project)

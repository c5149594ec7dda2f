"""engine: swarm without an engine: tenantkit.yaml's settings and the stack document."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tenantkit.model import ConfigError, Project, load_project, load_tenants
from tenantkit.orchestration import stack
from tenantkit.orchestration.swarm import subset
from tenantkit.render.swarm import db_secret_file, render_swarm_stack
from tests.conftest import tenant_cli, write_project


def swarm_project(tmp_path: Path, **overrides) -> Project:
    return load_project(write_project(tmp_path / "p", engine="swarm", **overrides))


def tenants_of(project: Project, *names: str):
    for name in names:
        assert tenant_cli(project.root, "new", name).code == 0
    tenants = load_tenants(project)
    for tenant in tenants:
        stack.ensure_tenant_files(tenant)
        (tenant.path / "settings.py").write_text(f"# settings of {tenant.name}\n")
    db_secret_file(project).parent.mkdir(parents=True, exist_ok=True)
    db_secret_file(project).write_text("admin-password-never-in-the-stack")
    return tenants


def render(project: Project, tenants, **kwargs) -> dict:
    images = {t.name: f"reg:5000/app@sha256:{'a' * 64}" for t in tenants}
    return render_swarm_stack(project, tenants, images, "tk/proxy:1", {}, {}, **kwargs)


def test_engine_and_swarm_settings_load_with_their_defaults(tmp_path):
    project = swarm_project(tmp_path)
    assert project.engine == "swarm" and project.swarm.endpoint_mode == "vip" and project.swarm.registry is None
    assert project.proxy.replicas == 1
    assert project.stack_file == project.root / "compose" / "stack.yaml"
    assert load_project(write_project(tmp_path / "c")).engine == "compose"
    glob = swarm_project(tmp_path / "g", proxy__replicas="global", swarm={"endpoint_mode": "dnsrr",
                                                                            "registry": "127.0.0.1:5055"})
    assert glob.proxy.replicas is None and glob.swarm.endpoint_mode == "dnsrr"
    assert glob.swarm.registry == "127.0.0.1:5055"


@pytest.mark.parametrize("overrides, words", [
    ({"engine": "kubernetes"}, "engine"),
    ({"swarm": {"endpoint_mode": "ipvs"}}, "endpoint_mode"),
    ({"swarm": {"registry": "http://registry"}}, "registry"),
    ({"swarm": {"storage": {"driver": "local", "options": ["nfs"]}}}, "options"),
    ({"proxy": {"mode": "host", "replicas": 1}}, "swarm"),
    ({"proxy": {"replicas": "everywhere"}}, "global"),
    ({"swarm": {"replicas": 2}}, "replicas"),
])
def test_bad_swarm_settings_are_refused_with_the_line(tmp_path, overrides, words):
    config = {"engine": "swarm", **overrides}
    with pytest.raises(ConfigError) as error:
        load_project(write_project(tmp_path / "p", **config))
    assert "tenantkit.yaml" in str(error.value) and words in str(error.value)


def test_each_tenant_is_a_service_with_its_own_network_secret_and_config(tmp_path):
    project = swarm_project(tmp_path, swarm={"endpoint_mode": "dnsrr"})
    tenants = tenants_of(project, "acme", "liberty")
    doc = render(project, tenants)
    acme = doc["services"]["tenant-acme"]
    assert acme["networks"] == {"tenant-acme": {"aliases": ["tk-acme", "a.tk-acme", "b.tk-acme"]}}
    assert doc["networks"]["tenant-acme"] == {"driver": "overlay", "attachable": True,
                                              "labels": {"tenantkit.tenant": "acme"}}
    assert [s["target"] for s in acme["secrets"]] == ["/srv/tenants/acme/secrets.env"]
    assert [c["target"] for c in acme["configs"]] == ["/srv/tenants/acme/settings.py"]
    assert acme["secrets"][0]["mode"] == 0o400 and acme["secrets"][0]["uid"] == "10001"
    assert all(v["type"] != "bind" for v in acme["volumes"])
    deploy = acme["deploy"]
    assert deploy["update_config"]["order"] == "start-first" and deploy["update_config"]["failure_action"] == "rollback"
    assert deploy["resources"]["limits"] == {"memory": "384M", "cpus": "1.0"}
    assert deploy["endpoint_mode"] == "dnsrr" and deploy["replicas"] == 1
    assert acme["healthcheck"]["test"][0] == "CMD"
    # The database and the proxy are on every tenant's network, and nothing else is.
    assert doc["services"]["db"]["networks"] == ["tenant-acme", "tenant-liberty"]
    assert doc["services"]["db"]["deploy"]["placement"] == {"constraints": ["node.role == manager"]}
    assert doc["services"]["proxy"]["ports"] == [
        {"target": 80, "published": project.proxy.port, "protocol": "tcp", "mode": "host"}]
    assert doc["services"]["tenant-liberty"]["networks"].keys() == {"tenant-liberty"}


def test_the_stack_names_secret_files_and_never_holds_a_secret(tmp_path):
    project = swarm_project(tmp_path)
    tenants = tenants_of(project, "acme")
    text = yaml.safe_dump(render(project, tenants))
    for line in tenants[0].secrets_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            assert line.split("=", 1)[1] not in text
    assert "admin-password-never-in-the-stack" not in text
    assert "file: ../tenants/acme/secrets.env" in text


def test_a_changed_settings_file_is_a_new_config_name(tmp_path):
    project = swarm_project(tmp_path)
    tenants = tenants_of(project, "acme")
    before = render(project, tenants)["services"]["tenant-acme"]["configs"][0]["source"]
    (tenants[0].path / "settings.py").write_text("# changed\n")
    after = render(project, tenants)["services"]["tenant-acme"]["configs"][0]["source"]
    assert before != after


def test_storage_driver_options_name_each_folder(tmp_path):
    nfs = {"driver": "local", "options": {"type": "nfs", "o": "addr=10.0.0.5,rw", "device": ":/export/tk/{relpath}"}}
    project = swarm_project(tmp_path, swarm={"storage": nfs})
    tenants = tenants_of(project, "acme")
    doc = render(project, tenants)
    assert doc["volumes"]["media-acme"] == {"driver": "local", "driver_opts": {
        "type": "nfs", "o": "addr=10.0.0.5,rw", "device": ":/export/tk/media/acme"}}
    assert doc["volumes"]["proxy-sites"]["driver_opts"]["device"] == ":/export/tk/compose/apache/sites"
    # Shared storage: services may run on any node.
    assert "placement" not in doc["services"]["tenant-acme"]["deploy"]
    local = swarm_project(tmp_path / "l")
    doc = render(local, tenants_of(local, "zed"))
    assert doc["volumes"]["media-zed"]["driver_opts"] == {"type": "none", "o": "bind",
                                                          "device": str(local.root / "media" / "zed")}
    assert doc["services"]["tenant-zed"]["deploy"]["placement"] == {"constraints": ["node.role == manager"]}


def test_replicas_processes_and_a_global_proxy(tmp_path):
    project = swarm_project(tmp_path, proxy__replicas="global")
    tenants = tenants_of(project, "acme")
    images = {"acme": "app:1"}
    doc = render_swarm_stack(project, tenants, images, "proxy:1", {"acme": 3},
                             {"acme": {"worker": ["python", "manage.py", "work"]}})
    assert doc["services"]["tenant-acme"]["deploy"]["replicas"] == 3
    worker = doc["services"]["tenant-acme-worker"]
    assert worker["command"] == ["python", "manage.py", "work"] and worker["networks"] == ["tenant-acme"]
    assert worker["deploy"]["replicas"] == 1 and worker["healthcheck"] == {"disable": True}
    assert doc["services"]["proxy"]["deploy"]["mode"] == "global"
    down = render_swarm_stack(project, tenants, images, "proxy:1", {"acme": 0},
                              {"acme": {"worker": ["python", "manage.py", "work"]}})
    assert down["services"]["tenant-acme"]["deploy"]["replicas"] == 0
    assert down["services"]["tenant-acme-worker"]["deploy"]["replicas"] == 0


def test_a_partial_document_carries_only_what_its_services_use(tmp_path):
    project = swarm_project(tmp_path)
    tenants = tenants_of(project, "acme", "liberty")
    part = subset(render(project, tenants), ["tenant-acme"])
    assert list(part["services"]) == ["tenant-acme"]
    assert list(part["networks"]) == ["tenant-acme"]
    assert list(part["volumes"]) == ["media-acme"]
    assert all(name.startswith("acme-") for name in [*part["secrets"], *part["configs"]])


def test_replicas_need_the_swarm_engine(tmp_path):
    compose = write_project(tmp_path / "c")
    assert tenant_cli(compose, "new", "acme").code == 0
    before = (compose / "tenants" / "acme" / "tenant.yaml").read_text()
    run = tenant_cli(compose, "set", "acme", "replicas=2")
    assert run.code == 2 and "engine: swarm" in run.err and len(run.err.strip().splitlines()) == 1
    assert (compose / "tenants" / "acme" / "tenant.yaml").read_text() == before

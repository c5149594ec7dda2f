"""The shared runtime state and the engine's answers, without an engine."""
import ipaddress
import json
from pathlib import Path

import pytest

from tenantkit.act import engine, state
from tenantkit.model import ConfigError, load_project
from tests.conftest import write_project

FIXTURES = Path(__file__).parent / "fixtures"


def test_subnets_are_allocated_once_lowest_first_and_kept(project):
    current = state.State()
    state.allocate_subnets(project, current, ["acme", "zed"])
    pool = project.networks.pool
    assert current.runtime("acme").subnet == str(ipaddress.IPv4Network((int(pool.network_address), 28)))
    assert current.runtime("zed").subnet == str(ipaddress.IPv4Network((int(pool.network_address) + 16, 28)))
    current.tenants.pop("acme")
    state.allocate_subnets(project, current, ["zed", "liberty"])
    assert current.runtime("zed").subnet.endswith(".16/28")  # kept
    assert current.runtime("liberty").subnet == str(ipaddress.IPv4Network((int(pool.network_address), 28)))


def test_an_exhausted_pool_says_how_to_grow_it(project_dir):
    project = load_project(write_project(project_dir, networks={"pool": "10.99.0.0/26", "prefix": 28}))
    current = state.State()
    state.allocate_subnets(project, current, ["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="no free /28 left for tenant 'e'.*larger networks.pool"):
        state.allocate_subnets(project, current, ["e"])


def test_a_pool_overlapping_a_foreign_engine_network_is_refused(project_dir):
    project = load_project(write_project(project_dir, networks={"pool": "10.99.0.0/16"}))
    state.check_pool(project, [ipaddress.IPv4Network("172.17.0.0/16")])
    with pytest.raises(ConfigError, match="overlaps the engine network 10.99.3.0/24"):
        state.check_pool(project, [ipaddress.IPv4Network("10.99.3.0/24")])


@pytest.mark.parametrize("pool, words", [("8.8.0.0/16", "not a private range"), ("10.1.2.3/16", "not an IPv4"),
                                         ("nonsense", "not an IPv4")])
def test_bad_pools_are_refused_with_the_line(project_dir, pool, words):
    write_project(project_dir, networks={"pool": pool})
    with pytest.raises(ConfigError, match=words):
        load_project(project_dir)


def test_the_default_pool_is_derived_from_the_project_name(project_dir):
    import yaml
    path = write_project(project_dir, name="one") / "tenantkit.yaml"
    config = yaml.safe_load(path.read_text())
    del config["networks"]
    path.write_text(yaml.safe_dump(config))
    first = load_project(project_dir).networks.pool
    path.write_text(yaml.safe_dump({**config, "name": "two"}))
    second = load_project(project_dir).networks.pool
    assert first.prefixlen == 16 and first.subnet_of(ipaddress.IPv4Network("10.128.0.0/9"))
    path.write_text(yaml.safe_dump({**config, "name": "one"}))
    assert load_project(project_dir).networks.pool == first  # stable for a name
    assert first != second


def test_state_round_trips_and_update_writes_only_changes(project):
    with state.update(project) as current:
        current.current = "2"
        current.releases["2"] = state.Release("2", "img:2", "d" * 64, None, "2026-11-28T00:00:00+00:00")
        current.set_runtime("acme", release="2", previous="1", slot="b", route="a")
    loaded = state.load(project)
    assert loaded.runtime("acme").switching and loaded.runtime("acme").live_slot == "b"
    assert loaded.releases["2"].image == "img:2" and loaded.current == "2"
    stamp = project.state_file.stat().st_mtime_ns
    with state.update(project) as current:
        pass
    assert project.state_file.stat().st_mtime_ns == stamp


def test_a_damaged_state_file_is_named(project):
    project.state_dir.mkdir(parents=True, exist_ok=True)
    project.state_file.write_text("{not json")
    with pytest.raises(ConfigError, match="state.json is damaged"):
        state.load(project)


def test_containers_are_read_from_one_list_answer():
    listed = json.loads((FIXTURES / "containers-list.json").read_text())
    found = [engine.Container.from_list_entry(entry) for entry in listed]
    acme, zed, liberty, oneoff = found
    assert (acme.service, acme.state, acme.image) == ("tenant-acme", engine.ContainerState.RUNNING,
                                                      "tkdemo/app:src-22c4ee7bc6bb")
    assert zed.state is engine.ContainerState.STOPPED and not zed.restarting
    assert liberty.state is engine.ContainerState.RUNNING and liberty.restarting
    assert oneoff.labels["com.docker.compose.oneoff"] == "True"
    assert engine.state_of(None) is engine.ContainerState.ABSENT


def test_a_state_written_with_a_dropped_field_still_loads(project):
    project.state_file.parent.mkdir(parents=True, exist_ok=True)
    project.state_file.write_text('{"tenants": {"acme": {"release": "1", "next_backend": "http://x:8000"}}}')
    runtime = state.load(project).runtime("acme")
    assert runtime.release == "1" and runtime.live_slot == "a" and not runtime.switching

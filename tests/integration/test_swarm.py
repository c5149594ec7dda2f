"""engine: swarm on a real single-node swarm, with a real registry (Debian's docker-registry)
on loopback: the same tenants and verbs as compose, run as a stack.

The swarm is made for this module (`docker swarm init --advertise-addr 127.0.0.1`) and left
at its end. Joining or leaving a swarm breaks name resolution on bridge networks that
existed before (moby 45144): the teardown restarts every running container on a
user-defined bridge network, so the modules after this one find their stacks working.

This machine's kernel has no IPVS: services are reached by DNS round robin
(swarm.endpoint_mode: dnsrr), as the environment notes say.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import docker
import pytest
import requests
import yaml

from tests.conftest import REPO, tenant_cli, write_project
from tests.integration.conftest import free_port, remove_stack, wait_for

TENANTS = ("acme", "liberty", "zed")


def restart_bridge_containers(client: docker.DockerClient) -> None:
    """moby 45144: after a swarm join or leave, containers on bridge networks made before it
    resolve no names until restarted."""
    for entry in client.api.containers(filters={"status": "running"}):
        networks = (entry.get("NetworkSettings") or {}).get("Networks") or {}
        if any(name not in ("bridge", "host", "none", "docker_gwbridge") and net.get("NetworkID")
               for name, net in networks.items()) and "com.docker.swarm.task" not in (entry.get("Labels") or {}):
            subprocess.run(["docker", "restart", "-t", "5", entry["Id"]], capture_output=True)


@pytest.fixture(scope="module")
def swarm_engine():
    client = docker.from_env()
    joined = (client.info().get("Swarm") or {}).get("LocalNodeState") == "active"
    if not joined:
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True)
    try:
        yield client
    finally:
        if not joined:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True)
            restart_bridge_containers(client)


@pytest.fixture(scope="module")
def registry():
    """Debian's Distribution registry on a free loopback port, its storage in a scratch folder."""
    folder = Path(tempfile.mkdtemp(prefix="tkregistry-"))
    port = free_port()
    config = folder / "config.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"}}))
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/v2/"), 30, shown=lambda: "the registry")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


class Swarm:
    def __init__(self, root: Path, name: str, port: int):
        self.root, self.name, self.port = root, name, port
        self.client = docker.from_env()

    def cli(self, *args: str):
        return tenant_cli(self.root, *args)

    def ok(self, *args: str):
        run = self.cli(*args)
        assert run.code == 0, f"tenant {' '.join(args)} failed ({run.code}):\n{run.out}\n{run.err}"
        return run

    def get(self, host: str, path: str = "/") -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.port}{path}", headers={"Host": host}, timeout=10,
                            allow_redirects=False)

    def service(self, name: str) -> dict:
        return self.client.api.inspect_service(f"{self.name}_{name}")

    def tasks(self, name: str) -> list[dict]:
        spec = self.service(name)
        return [t for t in self.client.api.tasks(filters={"service": spec["ID"]})
                if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]

    def containers(self, name: str) -> list[str]:
        return [t["Status"]["ContainerStatus"]["ContainerID"] for t in self.tasks(name)]

    def exec(self, container: str, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "exec", container, *command], capture_output=True, text=True, timeout=60)


def remove_swarm_project(client: docker.DockerClient, root: Path, name: str) -> None:
    remove_stack(client, name)
    subprocess.run(["docker", "compose", "-f", str(root / "compose" / "compose.yaml"), "down", "-v", "-t", "2"],
                   capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sw(swarm_engine, registry) -> Swarm:
    root = Path(tempfile.mkdtemp(prefix="tkswarm-"))
    os.chmod(root, 0o755)
    name = f"tkswarm{os.getpid()}"
    port = free_port()
    # A copy of the demo's code: the deploy test changes it and builds a release of its own.
    shutil.copytree(REPO / "image" / "demo", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    write_project(root, name=name, engine="swarm", proxy__port=port, database__publish_port=free_port(),
                  ports__first=free_port(), project__source=str(root / "src"),
                  project__requirements=str(root / "src" / "requirements.txt"),
                  swarm={"endpoint_mode": "dnsrr", "registry": registry, "update_monitor": 3})
    s = Swarm(root, name, port)
    try:
        for tenant in TENANTS:
            s.ok("new", tenant, "--title", f"{tenant.title()} on swarm")
        s.ok("up", "--all")
        yield s
    finally:
        remove_swarm_project(swarm_engine, root, name)


@contextlib.contextmanager
def load(sw: Swarm, host: str, limit: int = 2000, pause: float = 0.02):
    """Requests to one tenant through the proxy for as long as the block runs (bounded: at
    most `limit`); yields their statuses (0: no answer)."""
    results: list[int] = []
    stop = threading.Event()

    def run():
        while not stop.is_set() and len(results) < limit:
            try:
                results.append(sw.get(host, "/").status_code)
            except requests.RequestException:
                results.append(0)
            time.sleep(pause)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        yield results
    finally:
        stop.set()
        worker.join()


def test_three_tenants_answer_through_the_proxy_by_host(sw):
    for tenant in TENANTS:
        page = sw.get(f"{tenant}.localhost")
        assert page.status_code == 200 and f"{tenant.title()} on swarm" in page.text
        for other in TENANTS:
            if other != tenant:
                assert f"{other.title()} on swarm" not in page.text
    assert sw.get("nobody.localhost").status_code in (404, 421)
    listed = json.loads(sw.ok("list", "--json").out)
    assert {(row["name"], row["state"], row["health"], row["tasks"]) for row in listed} == {
        (t, "running", "healthy", "1/1") for t in TENANTS}


def test_the_stack_uses_swarm_objects_and_holds_no_secret(sw):
    stack_text = (sw.root / "compose" / "stack.yaml").read_text()
    spec = sw.service("tenant-acme")["Spec"]
    template = spec["TaskTemplate"]
    container = template["ContainerSpec"]
    # Settings as a config, secrets as a secret, where the compose engine binds the folder.
    assert {c["File"]["Name"] for c in container["Configs"]} == {"/srv/tenants/acme/settings.py"}
    assert [s["File"]["Name"] for s in container["Secrets"]] == ["/srv/tenants/acme/secrets.env"]
    assert not [m for m in container.get("Mounts", []) if m["Type"] == "bind"]
    # Images by digest, from the registry.
    assert re.fullmatch(r"127\.0\.0\.1:\d+/tkswarm\d+/app(:[\w.-]+)?@sha256:[0-9a-f]{64}", container["Image"])
    # Rolling updates: start first, health-checked, rolled back on failure; limits in resources.
    assert spec["UpdateConfig"]["Order"] == "start-first" and spec["UpdateConfig"]["FailureAction"] == "rollback"
    assert container["Healthcheck"]["Test"][0] == "CMD"
    assert template["Resources"]["Limits"]["MemoryBytes"] == 384 * 2**20
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    db = sw.service("db")["Spec"]
    assert "node.role == manager" in db["TaskTemplate"]["Placement"]["Constraints"]
    ports = sw.service("proxy")["Spec"]["EndpointSpec"]["Ports"]
    assert ports == [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": sw.port, "PublishMode": "host"}]
    for tenant in TENANTS:
        for key, value in _secrets(sw.root, tenant).items():
            assert value not in stack_text, key
            assert value not in json.dumps(sw.service(f"tenant-{tenant}")), key
    admin = (sw.root / ".tenantkit" / "db-admin.secret").read_text()
    assert admin not in stack_text and admin not in json.dumps(sw.service("db"))
    assert oct((sw.root / ".tenantkit" / "db-admin.secret").stat().st_mode & 0o777) == "0o600"


def _secrets(root: Path, tenant: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (root / "tenants" / tenant / "secrets.env").read_text().splitlines()
             if "=" in line and not line.startswith("#")]
    return {key: value for key, value in pairs if len(value) >= 16}


def test_one_tenant_cannot_reach_another(sw):
    acme = sw.containers("tenant-acme")[0]
    liberty = sw.containers("tenant-liberty")[0]
    liberty_ip = next(iter(sw.client.api.inspect_container(liberty)["NetworkSettings"]["Networks"].values()))[
        "IPAddress"]
    # "served": its gunicorn answered the health path as that tenant (this sandbox's upstream
    # gateway accepts any connection to 10.0.0.0/8, so a connection alone proves nothing).
    probe = ("import socket,sys\n"
             "def reach(address, host):\n"
             "    try:\n"
             "        s = socket.create_connection((address, 8000), timeout=3)\n"
             "        s.sendall(f'GET /healthz/ HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n'.encode())\n"
             "        return 'served' if b' 200 ' in s.recv(100)[:16] else 'other'\n"
             "    except OSError as exc: return type(exc).__name__\n"
             "print(reach('tk-liberty', 'liberty.localhost'), reach(sys.argv[1], 'liberty.localhost'),"
             " reach('tk-acme', 'acme.localhost'))\n")
    result = sw.exec(acme, "python", "-c", probe, liberty_ip)
    theirs_by_name, theirs_by_address, own = result.stdout.split()
    assert own == "served", result  # the probe works: its own service answers
    assert theirs_by_name == "gaierror"  # another tenant's name does not resolve on its network
    assert theirs_by_address != "served"
    # Its own secrets only, and no other tenant's media.
    listing = sw.exec(acme, "sh", "-c", "ls /srv/tenants; ls /srv/media; cat /srv/tenants/acme/secrets.env")
    assert listing.stdout.split()[0] == "acme" and "liberty" not in listing.stdout
    assert _secrets(sw.root, "acme")["TENANT_DB_PASSWORD"] in listing.stdout
    # And its role cannot open another tenant's database.
    code = sw.cli("manage", "acme", "--", "shell", "-c",
                  "import psycopg2, os\n"
                  "from django.conf import settings\n"
                  "d = settings.DATABASES['default']\n"
                  "try:\n"
                  "    psycopg2.connect(host=d['HOST'], dbname='liberty', user=d['USER'], password=d['PASSWORD'])\n"
                  "    print('CONNECTED')\n"
                  "except psycopg2.OperationalError:\n"
                  "    print('REFUSED')\n")
    assert "REFUSED" in code.out and "CONNECTED" not in code.out


def test_replicas_two_serve_from_two_tasks(sw):
    sw.ok("set", "liberty", "replicas=2")
    sw.ok("up", "liberty")
    assert len(sw.tasks("tenant-liberty")) == 2
    for _ in range(40):  # over 4 s: the proxy looks the name up again each second
        assert sw.get("liberty.localhost", "/?n=replicas").status_code == 200
        time.sleep(0.1)
    logs = subprocess.run(["docker", "service", "logs", f"{sw.name}_tenant-liberty"], capture_output=True,
                          text=True).stdout
    served = {line.split("|")[0].strip() for line in logs.splitlines() if "/?n=replicas" in line}
    assert len(served) == 2, served
    status = json.loads(sw.ok("status", "liberty", "--json").out)[0]
    assert len(status["tasks"]) == 2 and {t["state"] for t in status["tasks"]} == {"running"}


def test_a_killed_task_is_replaced_with_no_command(sw):
    before = sw.containers("tenant-zed")
    sw.client.api.kill(before[0])
    wait_for(lambda: (ids := sw.containers("tenant-zed")) and ids[0] not in before, 90, shown=lambda: "a new zed task")
    wait_for(lambda: sw.get("zed.localhost").status_code == 200, 60, shown=lambda: "zed answering")


def test_deploy_under_load_has_no_failed_request_and_rolls_back(sw):
    views = sw.root / "src" / "notes" / "views.py"
    views.write_text(views.read_text() + "\n# release 2\n")
    sw.ok("release", "build", "2")
    pushed = json.loads(sw.ok("release", "push", "2", "--json").out)
    assert re.fullmatch(r"127\.0\.0\.1:\d+/tkswarm\d+/app@sha256:[0-9a-f]{64}", pushed["pushed"])
    catalog = requests.get(f"http://{pushed['pushed'].split('/')[0]}/v2/_catalog", timeout=5).json()
    assert f"{sw.name}/app" in catalog["repositories"]
    with load(sw, "acme.localhost") as results:
        outcome = json.loads(sw.ok("deploy", "2", "acme", "--json").out)
        time.sleep(1)
    assert [o["result"] for o in outcome] == ["ok"]
    assert len(results) > 50 and results.count(200) == len(results), {c: results.count(c) for c in set(results)}
    assert sw.service("tenant-acme")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == pushed["pushed"]
    back = json.loads(sw.ok("rollback", "acme", "--json").out)
    assert [o["result"] for o in back] == ["ok"]
    assert sw.service("tenant-acme")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] != pushed["pushed"]
    assert sw.get("acme.localhost").status_code == 200


def test_a_release_that_fails_its_healthcheck_is_rolled_back_by_swarm_with_no_failed_request(sw):
    views = sw.root / "src" / "notes" / "views.py"
    good = views.read_text()
    views.write_text(good + "\n\ndef healthz(request):  # release 3 is broken\n"
                            "    from django.http import HttpResponse\n"
                            "    return HttpResponse('broken', status=500)\n")
    try:
        sw.ok("release", "build", "3")
    finally:
        views.write_text(good)
    before = sw.service("tenant-acme")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    with load(sw, "acme.localhost", limit=3000, pause=0.03) as results:
        run = sw.cli("deploy", "3", "acme", "--json")
    assert run.code == 1 and json.loads(run.out)[0]["result"] == "failed", run.out + run.err
    assert "rolled it back" in run.out + run.err
    # Swarm put the running release back; the old task served every request meanwhile.
    assert sw.service("tenant-acme")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == before
    assert len(results) > 50 and results.count(200) == len(results), {c: results.count(c) for c in set(results)}
    runtime = json.loads((sw.root / ".tenantkit" / "state.json").read_text())["tenants"]["acme"]
    assert runtime.get("release") != "3"
    sw.ok("up", "acme")  # and the tenant is usable afterwards (no failed update left in the way)
    assert sw.get("acme.localhost").status_code == 200


def test_data_verbs_on_swarm(sw):
    note = "written on the swarm"
    sw.ok("manage", "zed", "--", "shell", "-c", f"from notes.models import Note; Note.objects.create(text={note!r})")
    (sw.root / "media" / "zed" / "upload.txt").write_text("zed's upload")
    assert note in sw.get("zed.localhost").text
    assert sw.get("zed.localhost", "/_content/upload.txt").text == "zed's upload"
    outcomes = json.loads(sw.ok("migrate", "--all", "--json").out)
    assert {o["result"] for o in outcomes} == {"up-to-date"}
    archive = json.loads(sw.ok("backup", "zed", "--json").out)[0]
    assert Path(archive).is_file()
    removed = sw.ok("rm", "zed", "-y")
    assert "removed zed" in removed.out
    with pytest.raises(docker.errors.NotFound):
        sw.service("tenant-zed")
    assert not (sw.root / "tenants" / "zed").exists()
    assert sw.get("zed.localhost").status_code in (404, 421)
    sw.ok("restore", archive)
    assert note in sw.get("zed.localhost").text
    assert sw.get("zed.localhost", "/_content/upload.txt").text == "zed's upload"
    sw.ok("maintenance", "zed", "on")
    assert sw.get("zed.localhost").status_code == 503
    sw.ok("maintenance", "zed", "off")
    wait_for(lambda: sw.get("zed.localhost").status_code == 200, 20, shown=lambda: "zed back")
    sw.ok("down", "zed")
    assert sw.tasks("tenant-zed") == []
    assert sw.get("zed.localhost").status_code == 503
    sw.ok("up", "zed")
    assert sw.get("zed.localhost").status_code == 200
    logs = sw.ok("logs", "zed", "--tail", "50")
    assert "GET /" in logs.out


def test_a_kill_at_any_step_of_up_or_rm_is_completed_by_running_it_again(sw):
    env = {**os.environ, "TENANTKIT_FAILPOINT": "up:stack-deployed"}
    sw.ok("set", "acme", "memory=320m")
    killed = tenant_cli(sw.root, "up", "acme", env=env)
    assert killed.code == 137
    sw.ok("up", "acme")
    assert sw.service("tenant-acme")["Spec"]["TaskTemplate"]["Resources"]["Limits"]["MemoryBytes"] == 320 * 2**20
    assert len(sw.tasks("tenant-acme")) == 1 and sw.get("acme.localhost").status_code == 200
    sw.ok("new", "gone")
    sw.ok("up", "gone")
    for step in ("archived", "stopped", "dropped"):
        killed = tenant_cli(sw.root, "rm", "gone", "-y", env={**os.environ, "TENANTKIT_FAILPOINT": f"rm:{step}"})
        assert killed.code == 137, killed.err
    sw.ok("rm", "gone", "-y")
    with pytest.raises(docker.errors.NotFound):
        sw.service("tenant-gone")
    assert not (sw.root / "tenants" / "gone").exists()
    assert not sw.client.api.networks(names=[f"{sw.name}_tenant-gone"])
    assert sw.get("acme.localhost").status_code == 200


def test_bad_input_on_swarm_exits_2_and_changes_nothing(sw):
    before = (sw.root / "tenants" / "acme" / "tenant.yaml").read_text()
    for args, words in ((("set", "acme", "replicas=500"), "replicas"), (("test", "acme"), "swarm"),
                        (("dev", "on"), "swarm"), (("doctor",), "swarm"), (("logs", "acme", "--schedule"), "swarm")):
        run = sw.cli(*args)
        assert run.code == 2 and words in run.err and len(run.err.strip().splitlines()) == 1, run.err
    assert (sw.root / "tenants" / "acme" / "tenant.yaml").read_text() == before


def test_moving_a_compose_installation_to_swarm_and_back(swarm_engine):
    """docs/scale-out.md's move: data, media and secrets carried over; every tenant answers."""
    root = Path(tempfile.mkdtemp(prefix="tkmove-"))
    os.chmod(root, 0o755)
    name = f"tkmove{os.getpid()}"
    port = free_port()
    write_project(root, name=name, proxy__port=port, database__publish_port=free_port(), ports__first=free_port(),
                  swarm={"endpoint_mode": "dnsrr"})
    s = Swarm(root, name, port)
    try:
        for tenant in ("north", "south"):
            s.ok("new", tenant)
        s.ok("up", "--all")
        s.ok("manage", "north", "--", "shell", "-c", "from notes.models import Note; Note.objects.create(text='kept')")
        (root / "media" / "south" / "logo.txt").write_text("south's logo")
        secrets = {t: (root / "tenants" / t / "secrets.env").read_text() for t in ("north", "south")}

        def answers(expect_note: bool = True) -> None:
            wait_for(lambda: s.get("north.localhost").status_code == 200, 60, shown=lambda: "north")
            assert ("kept" in s.get("north.localhost").text) is expect_note
            assert s.get("south.localhost", "/_content/logo.txt").text == "south's logo"
            for tenant in ("north", "south"):
                assert (root / "tenants" / tenant / "secrets.env").read_text() == secrets[tenant]

        answers()
        for engine_name in ("swarm", "compose"):
            s.ok("down", "--all")
            config = yaml.safe_load((root / "tenantkit.yaml").read_text())
            config["engine"] = engine_name
            (root / "tenantkit.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            s.ok("up", "--all")
            answers()
            running = {e["Labels"].get("com.docker.stack.namespace") for e in swarm_engine.api.containers(
                filters={"label": "tenantkit.tenant"}) if e["Labels"].get("tenantkit.tenant") in ("north", "south")}
            assert running == ({name} if engine_name == "swarm" else {None})
    finally:
        remove_swarm_project(swarm_engine, root, name)

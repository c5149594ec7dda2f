"""Production essentials per tenant, on real Apache, pebble and Docker: TLS (a certificate
the operator gives, and one Apache's mod_md obtains from an ACME CA), background processes
and scheduled commands.

One project of its own, three tenants:
- acme: its own certificate (a trustme CA, through an intermediate), and a background
  process that turns queued notes into notes;
- liberty: `tls: auto`, its certificate issued by pebble (Debian's ACME test server) on this
  host, with PEBBLE_VA_ALWAYS_VALID=1 so that no challenge has to reach it;
- zed: plain HTTP, and scheduled commands on a seconds-level cron (no test waits for a
  minute boundary).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import pytest
import requests
import trustme

from tests.conftest import write_project
from tests.integration.conftest import Stack, admin_sql, free_port, remove_project, wait_for

PREFIX = f"tkprod{os.getpid()}"
PROCESS = "python manage.py process_notes --loop --every 0.5"


def gateway() -> str:
    """The host's address on Docker's default bridge: containers reach the host there."""
    return docker.from_env().networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]


@pytest.fixture(scope="module")
def pebble():
    """pebble on this host, its HTTPS listener's certificate from a trustme CA; yields
    (directory URL as the proxy reaches it, management URL on loopback, the CA's file)."""
    if shutil.which("pebble") is None:
        pytest.fail("pebble is not installed (apt-get install pebble; make host-services does it)")
    folder = Path(tempfile.mkdtemp(prefix="tkpebble-"))
    ca = trustme.CA()
    where = gateway()
    listener = ca.issue_cert("localhost", "127.0.0.1", where)
    listener.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    listener.private_key_pem.write_to_path(str(folder / "key.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    port, management = free_port(), free_port()
    (folder / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"0.0.0.0:{port}", "managementListenAddress": f"0.0.0.0:{management}",
        "certificate": str(folder / "cert.pem"), "privateKey": str(folder / "key.pem"),
        "httpPort": free_port(), "tlsPort": free_port(), "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}))
    env = {**os.environ, "PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    server = subprocess.Popen(["pebble", "-config", str(folder / "pebble.json")], env=env,
                              stdout=open(folder / "pebble.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"https://127.0.0.1:{port}/dir", verify=str(folder / "ca.pem"), timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield f"https://{where}:{port}/dir", f"https://127.0.0.1:{management}", folder / "ca.pem"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def prod(pebble):
    directory, _, pebble_ca = pebble
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    os.chmod(root, 0o755)
    shutil.copy(pebble_ca, root / "acme-ca.pem")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(root / "private-ca.pem"))
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("acme.localhost", "www.acme.localhost")
    (root / "certs").mkdir()
    with open(root / "certs" / "acme.pem", "wb") as chain:
        for pem in leaf.cert_chain_pems:
            chain.write(pem.bytes())
    leaf.private_key_pem.write_to_path(str(root / "certs" / "acme.key"))
    other = intermediate.issue_cert("acme.localhost")  # a certificate whose key we do not give
    other.cert_chain_pems[0].write_to_path(str(root / "certs" / "other.pem"))
    write_project(root, name=PREFIX, database__publish_port=free_port(), ports__first=free_port(),
                  proxy__port=free_port(), proxy__tls_port=free_port(),
                  tls={"trusted_roots": "private-ca.pem",
                       "acme": {"directory": directory, "email": "ops@example.com", "ca_file": "acme-ca.pem"}})
    stack = Stack(root)
    stack.ca = root / "private-ca.pem"
    stack.intermediate = intermediate
    try:
        for name in ("acme", "liberty", "zed"):
            stack.ok("new", name)
        stack.edit_tenant_yaml("acme", processes={"notes": PROCESS})
        stack.edit_tenant_yaml("zed", schedule=[
            {"cron": "* * * * * */2", "command": "process_notes"},
            {"cron": "* * * * * *", "command": "shell -c 'import time; time.sleep(2.5)'"},
            {"cron": "* * * * * */3", "command": "no_such_command"},
            {"cron": "* * * * * */3", "command": "shell -c \"print(open('/sys/fs/cgroup/memory/"
                                                 "memory.limit_in_bytes').read())\""},
        ])
        stack.ok("up", "--all")
        yield stack
    finally:
        remove_project(root)


def handshake(stack: Stack, server_name: str, cafile: Path | None = None) -> dict:
    """The certificate the proxy presents for this server name (verified against `cafile`)."""
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", stack.tls_port()), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=server_name) as wrapped:
            return wrapped.getpeercert() if cafile else {"der": wrapped.getpeercert(binary_form=True)}


def https(stack: Stack, host: str, path: str = "/", method: str = "GET", **kwargs) -> subprocess.CompletedProcess:
    return stack.https(host, stack.ca, path, method, **kwargs)


# ---------------------------------------------------------------------------
# TLS: a given certificate

def test_a_bad_certificate_exits_2_and_changes_nothing(prod):
    before = (prod.root / "tenants" / "acme" / "tenant.yaml").read_text()
    run = prod.cli("set", "acme", f"tls_cert={prod.root / 'certs' / 'other.pem'}",
                   f"tls_key={prod.root / 'certs' / 'acme.key'}")
    assert run.code == 2, run.err
    assert "does not match" in run.err and len(run.err.strip().splitlines()) == 1, run.err
    assert (prod.root / "tenants" / "acme" / "tenant.yaml").read_text() == before
    assert not (prod.root / ".tenantkit" / "tls" / "acme.pem").exists()
    run = prod.cli("set", "zed", f"tls_cert={prod.root / 'certs' / 'acme.pem'}",
                   f"tls_key={prod.root / 'certs' / 'acme.key'}")
    assert run.code == 2 and "zed.localhost" in run.err, run.err  # a host it does not cover


def test_a_given_certificate_serves_its_tenant_by_sni(prod):
    prod.ok("set", "acme", "hosts=acme.localhost,www.acme.localhost", f"tls_cert={prod.root / 'certs' / 'acme.pem'}", f"tls_key={prod.root / 'certs' / 'acme.key'}")
    prod.ok("up", "acme")
    key = prod.root / ".tenantkit" / "tls" / "acme.pem"  # its key and chain, for the proxy only
    assert key.stat().st_mode & 0o777 == 0o600
    cert = handshake(prod, "acme.localhost", prod.ca)
    assert ("DNS", "acme.localhost") in cert["subjectAltName"]
    assert https(prod, "acme.localhost").stdout == "200"
    assert https(prod, "www.acme.localhost", "/healthz/").stdout == "200"
    # The compose file never holds the key; the proxy reads the copy, read-only.
    assert "BEGIN" not in (prod.root / "compose" / "compose.yaml").read_text()


def test_a_renewed_certificate_survives_a_kill_while_it_is_installed(prod):
    renewed = prod.intermediate.issue_cert("acme.localhost", "www.acme.localhost")
    with open(prod.root / "certs" / "renewed.pem", "wb") as chain:
        for pem in renewed.cert_chain_pems:
            chain.write(pem.bytes())
    renewed.private_key_pem.write_to_path(str(prod.root / "certs" / "renewed.key"))
    args = ("set", "acme", f"tls_cert={prod.root / 'certs' / 'renewed.pem'}",
            f"tls_key={prod.root / 'certs' / 'renewed.key'}")
    killed = prod.cli(*args, env={"TENANTKIT_FAILPOINT": "render:certificate-installed"})
    assert killed.code == 137, killed.err
    prod.ok("up", "acme")  # whatever the kill left, the proxy serves acme with a valid certificate
    assert https(prod, "acme.localhost", "/healthz/").stdout == "200"
    prod.ok(*args)  # the command run again completes
    prod.ok("up", "acme")
    served = handshake(prod, "acme.localhost")["der"]
    assert served == _der(renewed)


def _der(issued) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    return x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)


def test_an_unknown_server_name_gets_no_tenant(prod):
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(prod, "unknown.localhost", prod.ca)
    port = prod.tls_port()
    run = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--resolve",
                          f"unknown.localhost:{port}:127.0.0.1", f"https://unknown.localhost:{port}/"],
                         capture_output=True, text=True, timeout=30)
    assert run.stdout == "421"
    # zed has no TLS: its name gets the catch-all's certificate, not a tenant's.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(prod, "zed.localhost", prod.ca)


def test_http_redirects_to_https_except_acme_challenges(prod):
    response = prod.via_proxy("acme.localhost", "/notes/archive/?a=1")
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://acme.localhost:{prod.tls_port()}/notes/archive/?a=1"
    challenge = prod.via_proxy("acme.localhost", "/.well-known/acme-challenge/token")
    assert challenge.status_code != 301
    assert prod.via_proxy("zed.localhost", "/healthz/").status_code == 200  # a tenant without TLS


class Browser:
    """curl with a cookie jar, over HTTPS to the proxy, resolving the tenant's host to
    127.0.0.1: SNI, the certificate check and the Host header all name the tenant."""

    def __init__(self, stack: Stack, host: str):
        self.stack, self.host, self.port = stack, host, stack.tls_port()
        self.jar = stack.root / f"cookies-{host}-{time.monotonic_ns()}.txt"
        self.base = f"https://{host}:{self.port}"

    def request(self, path: str, *args: str) -> tuple[str, str]:
        run = subprocess.run(["curl", "-sS", "--cacert", str(self.stack.ca), "-b", str(self.jar), "-c", str(self.jar),
                              "--resolve", f"{self.host}:{self.port}:127.0.0.1", "-w", "\n%{http_code}", *args,
                              f"{self.base}{path}"], capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        body, _, code = run.stdout.rpartition("\n")
        return code, body

    def cookie(self, name: str) -> tuple[str, bool]:
        """The cookie's value, and whether it is sent over HTTPS only."""
        for line in self.jar.read_text().splitlines():
            fields = line.removeprefix("#HttpOnly_").split("\t")
            if len(fields) == 7 and fields[5] == name:
                return fields[6], fields[3] == "TRUE"
        raise AssertionError(f"no cookie {name}")

    def post(self, path: str, data: dict) -> tuple[str, str]:
        self.request("/")
        token, _ = self.cookie("csrftoken")
        fields = [arg for key, value in {**data, "csrfmiddlewaretoken": token}.items()
                  for arg in ("--data-urlencode", f"{key}={value}")]
        return self.request(path, *fields, "-H", f"Referer: {self.base}/", "-H", f"Origin: {self.base}")


def test_a_post_with_csrf_over_https(prod):
    browser = Browser(prod, "acme.localhost")
    code, _ = browser.request("/")
    assert code == "200"
    _, secure = browser.cookie("csrftoken")
    assert secure, "CSRF_COOKIE_SECURE: the cookie never goes over HTTP"
    code, body = browser.post("/notes/", {"text": "sent over https"})
    assert code == "302", body[:500]
    assert "sent over https" in browser.request("/")[1]
    # Without the token, Django refuses it: the check is on.
    code, _ = browser.request("/notes/", "--data-urlencode", "text=no token", "-H", f"Referer: {browser.base}/")
    assert code == "403"


# ---------------------------------------------------------------------------
# TLS: automatic, from the ACME CA

def test_auto_tls_gets_a_certificate_from_the_acme_ca(prod, pebble):
    _, management, pebble_ca = pebble
    prod.ok("set", "liberty", "tls=auto")
    prod.ok("up", "liberty")
    # pebble's roots change at each start; it serves the one it issues from.
    root = requests.get(f"{management}/roots/0", verify=str(pebble_ca), timeout=10).text
    issuer = prod.root / "pebble-root.pem"
    issuer.write_text(root)
    deadline = time.monotonic() + 120
    while True:
        try:
            cert = handshake(prod, "liberty.localhost", issuer)
            break
        except (ssl.SSLError, OSError):
            if time.monotonic() > deadline:
                log = (prod.root / ".tenantkit" / "logs" / "liberty.error.log")
                raise AssertionError("no certificate from pebble within 120 s; proxy log:\n"
                                     + subprocess.run(["docker", "logs", "--tail", "30", f"{PREFIX}-proxy-1"],
                                                      capture_output=True, text=True).stderr
                                     + (log.read_text()[-2000:] if log.exists() else ""))
            time.sleep(2)
    assert ("DNS", "liberty.localhost") in cert["subjectAltName"]
    run = prod.https("liberty.localhost", issuer, "/healthz/")
    assert run.stdout == "200", run.stderr
    status = json.loads(prod.ok("status", "liberty", "acme", "--json").out)
    by_name = {row["name"]: row for row in status}
    assert by_name["liberty"]["tls"]["mode"] == "auto" and by_name["liberty"]["tls"]["days_left"] > 0
    assert by_name["acme"]["tls"]["mode"] == "given" and by_name["acme"]["tls"]["days_left"] > 300


# ---------------------------------------------------------------------------
# background processes

def process_container(prod, name: str = "acme", process: str = "notes"):
    found = docker.from_env().containers.list(all=True, filters={"label": [
        f"com.docker.compose.project={PREFIX}", f"com.docker.compose.service=tenant-{name}-{process}"]})
    assert len(found) == 1, found
    return found[0]


def count_notes(prod, database: str, text: str) -> int:
    return admin_sql(prod.root, prod.db_port(), f"SELECT count(*) FROM notes_note WHERE text = '{text}'",
                     database)[0][0]


def queue(prod, name: str, text: str) -> None:
    """Queue a note through the tenant's own pages (over HTTPS for acme)."""
    if name == "acme":
        code, body = Browser(prod, "acme.localhost").post("/inbox/", {"text": text})
    else:
        response = prod.post(name, "/inbox/", {"text": text})
        code, body = str(response.status_code), response.text
    assert code == "202", body[:300]


def test_a_process_writes_to_its_own_tenants_database_only(prod):
    rows = {row["name"]: row for row in json.loads(prod.ok("list", "--json").out)}
    assert rows["acme"]["processes"] == {"notes": "running"}
    assert rows["liberty"]["processes"] == {}
    one = json.loads(prod.ok("status", "acme", "--json").out)  # one tenant: its processes are looked up too
    assert one[0]["processes"] == {"notes": "running"}
    config = process_container(prod).attrs
    assert config["HostConfig"]["Memory"] == 384 * 2 ** 20 and config["HostConfig"]["ReadonlyRootfs"]
    assert list(config["NetworkSettings"]["Networks"]) == [f"{PREFIX}_tenant-acme"]
    queue(prod, "acme", "queued for acme")
    wait_for(lambda: count_notes(prod, "acme", "queued for acme") == 1)
    assert count_notes(prod, "liberty", "queued for acme") == 0
    assert count_notes(prod, "zed", "queued for acme") == 0
    logs = prod.ok("logs", "acme", "--process", "notes", "--tail", "20").out
    assert "processed 1 queued notes" in logs
    bad = prod.cli("logs", "acme", "--process", "nope")
    assert bad.code == 2 and "notes" in bad.err


def test_a_process_that_exits_restarts(prod):
    container = process_container(prod)
    before = container.attrs["RestartCount"]
    container.exec_run(["python", "-c", "import os, signal; os.kill(1, signal.SIGTERM)"])
    wait_for(lambda: process_container(prod).attrs["RestartCount"] > before
             and process_container(prod).status == "running", 60)


def test_processes_stop_and_start_with_their_tenant(prod):
    prod.ok("down", "acme")
    assert process_container(prod).status == "exited"
    run = prod.ok("up", "acme")
    assert process_container(prod).status == "running" and "starting processes" in run.err
    # Up to date: the running process is left as it is, and Compose is not asked.
    started = process_container(prod).attrs["State"]["StartedAt"]
    run = prod.ok("up", "acme")
    assert "starting processes" not in run.err and process_container(prod).attrs["State"]["StartedAt"] == started


def test_processes_deploy_and_roll_back_with_their_tenant(prod):
    before = process_container(prod).attrs["Config"]["Image"]
    prod.ok("release", "build", "p2")
    prod.ok("deploy", "p2", "acme")
    # The same code as the working tree (the same image id): the release is told by its tag.
    assert process_container(prod).attrs["Config"]["Image"] == f"{PREFIX}/app:p2"
    prod.ok("rollback", "acme")
    assert process_container(prod).attrs["Config"]["Image"] == before
    assert process_container(prod).status == "running"
    queue(prod, "acme", "after the rollback")
    wait_for(lambda: count_notes(prod, "acme", "after the rollback") == 1)


# ---------------------------------------------------------------------------
# scheduled commands

def runs(prod, name: str) -> list[dict]:
    path = prod.root / ".tenantkit" / "logs" / f"{name}.schedule.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_scheduled_command_runs_in_its_tenants_context(prod):
    queue(prod, "zed", "queued for zed")
    wait_for(lambda: count_notes(prod, "zed", "queued for zed") == 1, 30)
    assert count_notes(prod, "acme", "queued for zed") == 0
    done = wait_for(lambda: [r for r in runs(prod, "zed") if r["command"] == "process_notes" and r["status"] == "ok"])
    assert done[-1]["exit"] == 0 and done[-1]["end"] >= done[-1]["start"]
    # Its memory limit is the tenant's (384m, the default).
    limits = wait_for(lambda: [r for r in runs(prod, "zed") if "limit_in_bytes" in r["command"] and r["exit"] == 0])
    assert str(384 * 2 ** 20) in "".join(limits[-1]["output"])


def test_a_failing_job_is_logged_with_its_exit_code(prod):
    failed = wait_for(lambda: [r for r in runs(prod, "zed") if r["command"] == "no_such_command"])
    assert failed[-1]["status"] == "failed" and failed[-1]["exit"] not in (0, None)


def test_overlapping_runs_are_skipped_and_logged(prod):
    slow = "shell -c 'import time; time.sleep(2.5)'"
    skipped = wait_for(lambda: [r for r in runs(prod, "zed") if r["command"] == slow and r["status"] == "skipped"],
                       shown=lambda: "\n".join(map(json.dumps, runs(prod, "zed")[-30:])))
    assert skipped
    # Never two at a time: every completed run's interval overlaps no other's.
    done = sorted((r["start"], r["end"]) for r in runs(prod, "zed") if r["command"] == slow and r["status"] == "ok")
    assert all(earlier[1] <= later[0] for earlier, later in zip(done, done[1:]))


def test_status_and_logs_show_the_last_runs(prod):
    wait_for(lambda: runs(prod, "zed"))
    rows = json.loads(prod.ok("status", "zed", "--json").out)
    jobs = {job["command"]: job for job in rows[0]["schedule"]}
    assert jobs["process_notes"]["last"]["status"] in ("ok", "skipped")
    text = prod.ok("status", "zed").out
    assert "scheduled commands" in text and "process_notes" in text
    logged = prod.ok("logs", "zed", "--schedule", "--tail", "50").out
    assert "no_such_command" in logged and "failed (exit" in logged


def test_the_scheduler_is_on_no_network_and_holds_no_secret(prod):
    client = docker.from_env()
    scheduler = client.containers.list(filters={"label": [f"com.docker.compose.project={PREFIX}",
                                                          "com.docker.compose.service=scheduler"]})[0]
    assert scheduler.attrs["HostConfig"]["NetworkMode"] == "none"
    mounts = {m["Destination"] for m in scheduler.attrs["Mounts"]}
    assert mounts == {"/var/run/docker.sock", "/etc/tenantkit/scheduler", "/var/log/tenantkit"}
    secrets = [prod.secret(name, "TENANT_DB_PASSWORD") for name in ("acme", "liberty", "zed")]
    environment = "\n".join(scheduler.attrs["Config"]["Env"])
    schedule = (prod.root / "compose" / "scheduler" / "schedule.json").read_text()
    assert not any(secret in environment or secret in schedule for secret in secrets)
    # No tenant network has the scheduler or the Docker socket on it.
    for name in ("acme", "liberty", "zed"):
        members = client.networks.get(f"{PREFIX}_tenant-{name}").attrs["Containers"] or {}
        assert scheduler.id not in members

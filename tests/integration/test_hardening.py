"""Hardening (issue 9), on the real stack: what a tenant's container, the proxy, an
archive and a second checkout can and cannot reach."""
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker
import psycopg2

from tests.conftest import tenant_cli, write_project


def _inspect(stack, service):
    client = docker.from_env()
    name = stack.root.joinpath("tenantkit.yaml").read_text().split("name: ")[1].split()[0]
    found = client.containers.list(filters={"label": [f"com.docker.compose.project={name}",
                                                      f"com.docker.compose.service={service}"]})
    assert found, service
    return found[0]


def test_tenant_containers_are_locked_down_and_hold_no_secret_in_their_environment(stack):
    container = _inspect(stack, "tenant-alpha")
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges:true" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True and host["PidsLimit"] == 256 and host["NanoCpus"] == 10**9
    inspected = json.dumps(container.attrs)
    for key in ("TENANT_DB_PASSWORD", "TENANT_SECRET_KEY"):
        assert stack.secret("alpha", key) not in inspected  # neither env nor labels nor command
    code, output = container.exec_run(["sh", "-c", "touch /app/x || echo refused; id -u"])
    assert b"refused" in output and output.split()[-1] == b"10001"
    # The settings read the secrets from the mounted file; nothing else in the container can.
    code, output = container.exec_run(["python", "-c", "import os; print(sorted(os.environ))"])
    assert b"TENANT_DB_PASSWORD" not in output


def test_the_proxy_sees_media_and_assets_but_no_tenant_folder(stack):
    proxy = _inspect(stack, "proxy")
    sources = {mount["Destination"]: mount["Source"] for mount in proxy.attrs["Mounts"]}
    assert "/srv/tenants" not in sources and sources["/srv/media"] == str(stack.root / "media")
    code, output = proxy.exec_run(["sh", "-c", "grep -rl TENANT_DB_PASSWORD /srv /etc/tenantkit || echo none"])
    assert output.strip() == b"none"


def test_a_maintenance_title_is_text_not_an_apache_expression(stack):
    stack.ok("set", "alpha", "title=100%{file:/etc/passwd} $1 {x}")
    try:
        stack.ok("maintenance", "alpha", "on")  # the config test passes, so the reload happens
        page = stack.via_proxy("alpha.localhost")
        assert page.status_code == 503 and "root:" not in page.text
        assert "&#37;&#123;file:/etc/passwd&#125; &#36;1 &#123;x&#125;" in page.text
        assert stack.via_proxy("beta.localhost").status_code == 200
    finally:
        stack.ok("maintenance", "alpha", "off")
        stack.ok("set", "alpha", "title=Alpha Corp")
    assert stack.via_proxy("alpha.localhost").status_code == 200


def test_an_uploaded_page_is_served_as_a_sandboxed_download(stack):
    response = stack.post("alpha", "/uploads/", files={"file": ("evil.html", b"<script>alert(1)</script>")})
    assert response.status_code == 302
    served = stack.via_proxy("alpha.localhost", response.headers["Location"])
    assert served.status_code == 200 and served.headers["Server"] == "Apache"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.headers["Content-Security-Policy"] == "sandbox"
    assert served.headers["Content-Disposition"] == "attachment"


def _scheme(container, target):
    script = (f"exec 3<>/dev/tcp/{target}/8000; printf 'GET /healthz/ HTTP/1.0\\r\\nHost: alpha.localhost\\r\\n"
              f"X-Forwarded-Proto: https\\r\\n\\r\\n' >&3; cat <&3")
    code, output = container.exec_run(["bash", "-c", script])
    return json.loads(output.split(b"\r\n\r\n", 1)[1])["scheme"]


def test_x_forwarded_proto_is_believed_from_the_proxy_only(stack):
    assert _scheme(_inspect(stack, "proxy"), "tk-alpha") == "https"  # the proxy's fixed address
    assert _scheme(_inspect(stack, "db"), "tk-alpha") == "http"  # another member of the network
    direct = stack.get("alpha", "/healthz/")
    spoofed = __import__("requests").get(stack.url("alpha", "/healthz/"), timeout=10,
                                         headers={"Host": "alpha.localhost", "X-Forwarded-Proto": "https"})
    assert direct.json()["scheme"] == spoofed.json()["scheme"] == "http"  # from the host: ignored
    assert stack.via_proxy("alpha.localhost", "/healthz/", **{"X-Forwarded-Proto": "https"}).json()["scheme"] == "http"


def _admin(stack, dbname="postgres"):
    env = (stack.root / ".tenantkit" / "db.env").read_text()
    password = env.split("POSTGRES_PASSWORD=")[1].split()[0]
    conn = psycopg2.connect(host="127.0.0.1", port=stack.db_port(), user="postgres", password=password, dbname=dbname)
    conn.autocommit = True
    return conn


def _retarget(source: Path, target: Path, replace: dict[str, bytes], drop=()):
    """A copy of a real archive with some members replaced (the manifest's checksums
    recomputed, as a careful attacker would)."""
    import hashlib
    with tarfile.open(source) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    manifest = json.loads(members.pop("manifest.json"))
    members.update(replace)
    for name in drop:
        members.pop(name, None)
    manifest["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    with tarfile.open(target, "w:gz") as tar:
        for name, data in [*members.items(), ("manifest.json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


PLACEHOLDER = "P" * 160


def test_a_restore_loads_the_dump_as_the_tenants_role_so_a_crafted_dump_gains_nothing(stack, tmp_path):
    """A dump is a list of SQL statements. This one's function definition is edited (same
    length, so the archive stays valid) to end the function and run `RESET ROLE; ALTER ROLE
    evil SUPERUSER`: in a superuser's session (even with --role) that makes the restored
    tenant a superuser; as the tenant's own role it fails, and the restore is undone."""
    conn = _admin(stack)
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS crafted")
        cur.execute("CREATE DATABASE crafted")
    crafted = _admin(stack, "crafted")
    with crafted.cursor() as cur:
        cur.execute(f"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$SELECT 1 /*{PLACEHOLDER}*/$$")
    crafted.close()
    dump = subprocess.run(["docker", "compose", "-f", str(stack.root / "compose" / "compose.yaml"), "exec", "-T", "db",
                           "pg_dump", "-U", "postgres", "-Fc", "-Z0", "crafted"], capture_output=True, check=True).stdout
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE crafted")
    payload = "*/$$; RESET ROLE; ALTER ROLE evil SUPERUSER; CREATE FUNCTION g() RETURNS int LANGUAGE sql AS $$ /*"
    assert dump.count(PLACEHOLDER.encode()) == 1
    dump = dump.replace(PLACEHOLDER.encode(), payload.ljust(len(PLACEHOLDER)).encode())
    archive = json.loads(stack.ok("backup", "beta", "--json").out)[0]
    evil = _retarget(Path(archive), tmp_path / "evil.tar.gz", {"database.dump": dump})
    run = stack.cli("restore", str(evil), "--as", "evil", "--host", "evil.localhost")
    assert run.code == 1 and "must be superuser" in run.err, run.err
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'evil' AND rolsuper")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT count(*) FROM pg_database WHERE datname = 'evil'")
        assert cur.fetchone()[0] == 0
    conn.close()
    assert not (stack.root / "tenants" / "evil").exists()


def test_code_in_an_archive_is_restored_only_when_trusted(stack, tmp_path):
    archive = json.loads(stack.ok("backup", "beta", "--json").out)[0]
    planted = b"TENANT_TITLE_FROM_ARCHIVE = 'ran'\nSITE_TITLE = 'Planted by the archive'\n"
    crafted = _retarget(Path(archive), tmp_path / "code.tar.gz", {"tenant/local_settings.py": planted})
    run = stack.ok("restore", str(crafted), "--as", "untrusted", "--host", "untrusted.localhost")
    assert "local_settings.py" in run.err and "--trust-code" in run.err
    assert not (stack.root / "tenants" / "untrusted" / "local_settings.py").exists()
    assert "Planted by the archive" not in stack.via_proxy("untrusted.localhost").text
    stack.ok("restore", str(crafted), "--as", "trusted", "--host", "trusted.localhost", "--trust-code")
    assert "Planted by the archive" in stack.via_proxy("trusted.localhost").text
    for name in ("untrusted", "trusted"):
        stack.ok("rm", name, "--yes")


def test_a_second_checkout_with_the_same_project_name_is_refused(stack):
    name = stack.root.joinpath("tenantkit.yaml").read_text().split("name: ")[1].split()[0]
    with tempfile.TemporaryDirectory(prefix="tksecond-") as folder:
        other = write_project(Path(folder), name=name)
        assert tenant_cli(other, "new", "gamma").code == 0  # files only
        before = subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True).stdout
        run = tenant_cli(other, "up", "gamma")
        assert run.code == 2 and "belongs to the checkout" in run.err and str(stack.root) in run.err, run.err
        assert len(run.err.strip().splitlines()) == 1
        assert subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True).stdout == before


def test_a_full_disk_while_archiving_removes_the_partial_file_and_drops_nothing(stack):
    backups = stack.root / "backups"
    backups.mkdir(exist_ok=True)
    saved = list(backups.iterdir())
    held = Path(tempfile.mkdtemp(prefix="tkheld-"))
    for path in saved:  # keep the archives made so far out of the small file system
        path.rename(held / path.name)
    big = stack.root / "media" / "alpha" / "incompressible.bin"
    big.write_bytes(os.urandom(2 << 20))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tkfull", str(backups)], check=True)
    try:
        for args in (("backup", "alpha"), ("rm", "alpha", "--yes")):
            run = stack.cli(*args)
            errors = [line for line in run.err.splitlines() if line.startswith("tenant: ")]
            assert run.code == 1 and len(errors) == 1 and "no space left" in errors[0], run.err
            assert list(backups.iterdir()) == []  # no partial archive
            assert stack.get("alpha", "/healthz/").status_code == 200  # nothing dropped or stopped
            assert (stack.root / "tenants" / "alpha" / "tenant.yaml").is_file()
    finally:
        subprocess.run(["umount", str(backups)], check=True)
        big.unlink()
        for path in held.iterdir():
            path.rename(backups / path.name)
        held.rmdir()
    assert "removing" not in (stack.root / "tenants" / "alpha" / "tenant.yaml").read_text()

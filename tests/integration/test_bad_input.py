"""Bad input, as a table: every command refuses it with one line on stderr and exit 2, and
changes nothing: not the project's files, the databases and roles, the containers or the
networks.

The cases are in badinput_cases.py. A project of this module's own (two tenants up, a
backup of alpha) is snapshotted before and after each case. When a case did change
something, what it changed is undone as far as possible, so the next case starts from
the same stack.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import docker
import psycopg2
import pytest
from psycopg2 import sql

from tests.conftest import tenant_cli, write_project
from tests.integration.badinput_cases import CASES, Case, build_archives, build_classic
from tests.integration.conftest import free_port

# What tenantkit may write during a refused command: caches, locks and log files.
IGNORED_DIRS = {".tenantkit/cache"}
IGNORED_FILES = {".tenantkit/lock", ".tenantkit/deploy.lock"}
KEEP_BYTES = 8 << 20  # files up to this size are kept by a snapshot, to be put back

# pg_authid rather than pg_roles: a changed password (point 1 of issue 9) shows only there.
DB_QUERY = """
SELECT 'database', datname, pg_get_userbyid(datdba) || ' ' || datconnlimit || ' ' || coalesce(datacl::text, '')
  FROM pg_database
UNION ALL
SELECT 'role', rolname, concat_ws(' ', rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolconnlimit, rolpassword)
  FROM pg_authid
"""


def _ignored(relative: str) -> bool:
    return (relative in IGNORED_FILES or any(relative == d or relative.startswith(d + "/") for d in IGNORED_DIRS)
            or relative.startswith(".tenantkit/logs/") and relative.endswith(".log"))


def tree(root: Path, keep: bool = False) -> dict[str, tuple]:
    """relative path -> (mode, uid, gid, size, sha256 or link target[, bytes when kept])."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            if _ignored(relative):
                continue
            info = os.lstat(path)
            entry = (info.st_mode, info.st_uid, info.st_gid)
            if stat.S_ISLNK(info.st_mode):
                entry += (0, os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    entry += (info.st_size, hashlib.file_digest(handle, "sha256").hexdigest())
                if keep and info.st_size <= KEEP_BYTES:
                    entry += (Path(path).read_bytes(),)
            found[relative] = entry
        dirs[:] = [d for d in dirs if not _ignored(os.path.relpath(os.path.join(folder, d), root))]
    return found


class BadStack:
    """The module's project, and the snapshots and undo around each case."""

    def __init__(self, root: Path, name: str, values: dict):
        self.root, self.name, self.values = root, name, values
        self.client = docker.from_env()
        self.label = {"label": f"com.docker.compose.project={name}"}

    def cli(self, *args: str):
        return tenant_cli(self.root, *args, timeout=900)

    def admin(self):
        env = dict(line.split("=", 1) for line in (self.root / ".tenantkit" / "db.env").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
        conn = psycopg2.connect(host="127.0.0.1", port=self.values["db_port"], user="postgres", dbname="postgres",
                                password=env["POSTGRES_PASSWORD"], connect_timeout=5)
        conn.autocommit = True
        return conn

    def snapshot(self, keep: bool = False) -> dict:
        """Tree, databases and roles, containers and networks: one walk, one query, two lists."""
        try:
            conn = self.admin()
            try:
                with conn.cursor() as cur:
                    cur.execute(DB_QUERY)
                    db = {(kind, name): detail for kind, name, detail in cur.fetchall()}
            finally:
                conn.close()
        except psycopg2.Error as exc:
            db = {("error", ""): str(exc).strip()}
        containers = {c.attrs["Names"][0].lstrip("/"): (c.id, c.attrs["State"], c.attrs["ImageID"])
                      for c in self.client.containers.list(all=True, sparse=True, filters=self.label)}
        networks = {n.name: n.id for n in self.client.networks.list(filters=self.label)}
        return {"tree": tree(self.root, keep), "db": db, "containers": containers, "networks": networks}

    def undo(self, before: dict, after: dict) -> None:
        """Put back what a case changed: new containers, networks, databases and files go,
        changed roles get their passwords back, changed and deleted files return."""
        for name, (cid, *_) in after["containers"].items():
            if before["containers"].get(name, (None,))[0] != cid:
                self.client.containers.get(cid).remove(force=True, v=True)
        for name, nid in after["networks"].items():
            if name not in before["networks"]:
                network = self.client.networks.get(nid)
                for container in network.containers:
                    network.disconnect(container, force=True)
                network.remove()
        self._undo_database(before, after)
        self._undo_tree(before["tree"], after["tree"])
        now = self.snapshot()["containers"]
        if any(now.get(name, (None, ""))[1] != state for name, (_, state, _) in before["containers"].items()):
            self.cli("up", "--all")  # a stopped or removed container: bring the stack back

    def _undo_database(self, before: dict, after: dict) -> None:
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                for kind, name in after["db"]:
                    if kind == "database" and (kind, name) not in before["db"]:
                        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                for kind, name in after["db"]:
                    if kind == "role" and (kind, name) not in before["db"]:
                        cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
                for tenant in ("alpha", "beta"):
                    was, now = before["db"].get(("role", tenant)), after["db"].get(("role", tenant))
                    if was is not None and now is not None and was != now:
                        secrets = before["tree"][f"tenants/{tenant}/secrets.env"][-1].decode()
                        password = next(line.split("=", 1)[1] for line in secrets.splitlines()
                                        if line.startswith("TENANT_DB_PASSWORD="))
                        limit = int(was.split()[4])
                        cur.execute(sql.SQL("ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                                            "CONNECTION LIMIT %s PASSWORD %s").format(sql.Identifier(tenant)),
                                    (limit, password))
        finally:
            conn.close()

    def _undo_tree(self, before: dict, after: dict) -> None:
        for relative in sorted(set(after) - set(before), reverse=True):  # children first
            path = self.root / relative
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for relative, entry in sorted(before.items()):  # parents first
            if after.get(relative) == entry[:5]:  # the kept bytes are not part of the comparison
                continue
            path, (mode, uid, gid) = self.root / relative, entry[:3]
            if stat.S_ISDIR(mode):
                path.mkdir(exist_ok=True)
            elif stat.S_ISLNK(mode):
                path.unlink(missing_ok=True)
                path.symlink_to(entry[4])
                continue
            elif len(entry) > 5:
                path.unlink(missing_ok=True)
                path.write_bytes(entry[5])
            else:
                continue  # too large to have been kept
            os.chown(path, uid, gid)
            os.chmod(path, stat.S_IMODE(mode))


def differences(before: dict, after: dict) -> list[str]:
    """What changed between two snapshots, one line each."""
    lines = []
    for part in ("tree", "db", "containers", "networks"):
        old, new = before[part], after[part]
        for key in sorted(set(old) | set(new), key=str):
            was, now = old.get(key), new.get(key)
            if part == "tree" and was is not None:
                was = was[:5]  # without the kept bytes
            if was != now:
                what = "added" if was is None else "removed" if now is None else "changed"
                lines.append(f"{part}: {what} {key}")
    return lines


@pytest.fixture(scope="module")
def bad():
    """A project with tenants alpha and beta up, a backup of alpha, and the cases' archives
    and classic layouts in a folder beside it."""
    folder = Path(tempfile.mkdtemp(prefix="tkbad-"))
    os.chmod(folder, 0o755)
    name = f"tkbad{os.getpid()}"
    values = {"db_port": free_port(), "proxy_port": free_port(), "root": str(folder / "project"),
              "archives": str(folder / "archives"), "classic": str(folder / "classic"),
              "outside": str(folder / "outside")}
    root = write_project(folder / "project", name=name, database__publish_port=values["db_port"],
                         ports__first=free_port(), proxy__port=values["proxy_port"])
    stack = BadStack(root, name, values)
    try:
        for tenant in ("alpha", "beta"):
            assert stack.cli("new", tenant, "--host", f"{tenant}.localhost").code == 0
        run = stack.cli("up", "--all")
        assert run.code == 0, run.err
        run = stack.cli("backup", "alpha")
        assert run.code == 0, run.err
        values["archive"] = run.out.strip()
        for tenant in ("alpha", "beta"):
            text = (root / "tenants" / tenant / "tenant.yaml").read_text()
            values[f"{tenant}_port"] = int(re.search(r"^port: (\d+)$", text, re.MULTILINE).group(1))
        values["spare_port"] = free_port()
        Path(values["outside"]).mkdir()
        build_archives(Path(values["archive"]), Path(values["archives"]), Path(values["outside"]))
        build_classic(Path(values["classic"]), root, Path(values["outside"]))
        yield stack
    finally:
        compose = ["docker", "compose", "-p", name]
        if (root / "compose" / "compose.yaml").is_file():
            compose += ["-f", str(root / "compose" / "compose.yaml")]
        subprocess.run([*compose, "down", "-v", "--remove-orphans", "--timeout", "5"], capture_output=True, check=False)
        subprocess.run(["docker", "compose", "-p", name, "down", "-v", "--remove-orphans", "--timeout", "5"],
                       capture_output=True, check=False)  # anything the files no longer name
        for image in stack.client.images.list(name=f"{name}/*"):
            for tag in [t for t in image.tags if t.startswith(f"{name}/")]:  # other projects share the image
                try:
                    stack.client.images.remove(tag)
                except docker.errors.APIError:
                    pass  # still used: left for `docker image prune`
        shutil.rmtree(folder, ignore_errors=True)


def _write_case_files(stack: BadStack, case: Case) -> dict[Path, bytes | None]:
    """Write the case's project files; return what was there before (None: nothing)."""
    saved = {}
    for relative, content in case.files.items():
        path = stack.root / relative
        old = path.read_bytes() if path.exists() else None
        text = content(old.decode(), stack.values) if callable(content) else content.format(**stack.values)
        assert text.encode() != old, f"the edit of {relative} changed nothing"
        saved[path] = old
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return saved


def _put_back(saved: dict[Path, bytes | None], root: Path) -> None:
    for path, old in saved.items():
        if old is not None:
            path.write_bytes(old)
            continue
        path.unlink(missing_ok=True)
        while path.parent != root and not any(path.parent.iterdir()):
            path = path.parent
            path.rmdir()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(bad: BadStack, case: Case):
    saved = _write_case_files(bad, case)
    outside = [Path(p.format(**bad.values)) for p in case.outside]
    try:
        before = bad.snapshot(keep=True)
        run = bad.cli(*(arg.format(**bad.values) for arg in case.args))
        after = bad.snapshot()
        changed = differences(before, after) + [f"outside: added {p}" for p in outside if p.exists()]
        if changed:
            bad.undo(before, after)
    finally:
        for path in outside:
            path.unlink(missing_ok=True)
        _put_back(saved, bad.root)
    lines = run.err.splitlines()
    report = f"exit {run.code}, stderr:\n{run.err}" + "".join(f"\n  {line}" for line in changed)
    assert "Traceback" not in run.err, report
    assert run.code == 2, report
    assert len(lines) == 1 and lines[0].startswith("tenant: "), report
    assert not changed, report


def test_count_of_bad_inputs():
    print(f"\nbad-input cases: {len(CASES)}")
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"

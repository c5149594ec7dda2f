"""The bad inputs of test_bad_input.py: every command line here must be refused (exit 2).

A case's arguments and files are templates filled with the stack's values ({root},
{archives}, {classic}, {db_port}, ...). The archives and classic layouts the cases name
are built by build_archives and build_classic, from a real backup of tenant alpha.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    # Project files written before the case and put back after it: a template, or a
    # function of the file's current text and the stack's values.
    files: dict[str, str | Callable[[str, dict], str]] = field(default_factory=dict)
    outside: tuple[str, ...] = ()  # paths outside the project that must not appear


def case(id: str, *args: str, files: dict | None = None, outside: tuple[str, ...] = ()) -> Case:
    return Case(id, args, files or {}, outside)


def config(**changes) -> dict[str, Callable[[str, dict], str]]:
    """An edit of tenantkit.yaml: section__key="yaml" sets config[section][key] (a template)."""
    def edit(text: str, values: dict) -> str:
        data = yaml.safe_load(text)
        for key, value in changes.items():
            section, _, name = key.partition("__")
            value = yaml.safe_load(value.format(**values))  # "{db_port}" becomes a number
            if name:
                data.setdefault(section, {})[name] = value
            else:
                data[section] = value
        return yaml.safe_dump(data, sort_keys=False)
    return {"tenantkit.yaml": edit}


def gamma(extra: str = "", name: str = "gamma", host: str = "gamma.localhost", port: str = "{spare_port}",
          hosts: str | None = None) -> dict[str, str]:
    """A third tenant folder, tenants/gamma, whose tenant.yaml is valid but for what is given."""
    hosts = hosts if hosts is not None else f"hosts:\n- {host}\n"
    return {"tenants/gamma/tenant.yaml": f"name: {name}\n{hosts}port: {port}\n{extra}"}


RESTORE = ("restore", "{archives}/{name}.tar.gz", "--as", "gamma")

CASES = [
    # tenant names
    case("new-name-empty", "new", ""),
    case("new-name-uppercase", "new", "Acme"),
    case("new-name-trailing-newline", "new", "acme\n"),
    case("new-name-path", "new", "../x"),
    case("new-name-reserved-postgres", "new", "postgres"),
    case("new-name-reserved-all", "new", "all"),
    case("new-name-pg-prefix", "new", "pg_acme"),
    case("new-name-too-long", "new", "a" * 41),
    case("new-name-leading-digit", "new", "1acme"),
    case("new-name-existing", "new", "alpha"),
    # hosts
    case("new-host-space", "new", "gamma", "--host", "gam ma.example.com"),
    case("new-host-double-dot", "new", "gamma", "--host", "a..b"),
    case("new-host-newline", "new", "gamma", "--host", "gamma.example.com\nServerAlias evil.com"),
    case("new-host-underscore", "new", "gamma", "--host", "a_b.example.com"),
    case("new-host-300-chars", "new", "gamma", "--host", ".".join(["a" * 59] * 5)),
    case("new-host-ipv6-literal", "new", "gamma", "--host", "[::1]"),
    case("new-host-ipv4-literal", "new", "gamma", "--host", "127.0.0.1"),
    case("new-host-ipv4-hex", "new", "gamma", "--host", "0x7f.0.0.1"),
    case("new-host-wildcard", "new", "gamma", "--host", "*.example.com"),
    case("new-host-with-port", "new", "gamma", "--host", "gamma.example.com:80"),
    case("new-host-of-alpha", "new", "gamma", "--host", "alpha.localhost"),
    # titles, memory, workers
    case("new-title-newline", "new", "gamma", "--title", "Gamma\nInc"),
    case("new-title-empty", "new", "gamma", "--title", ""),
    case("new-memory-0m", "new", "gamma", "--memory", "0m"),
    case("new-memory-1k", "new", "gamma", "--memory", "1k"),
    case("new-workers-0", "new", "gamma", "--workers", "0"),
    case("set-memory-lots", "set", "alpha", "memory=lots"),
    case("set-memory-negative", "set", "alpha", "memory=-5m"),
    # ports
    case("set-port-0", "set", "alpha", "port=0"),
    case("set-port-80", "set", "alpha", "port=80"),
    case("set-port-70000", "set", "alpha", "port=70000"),
    case("set-port-of-database", "set", "alpha", "port={db_port}"),
    case("set-port-of-proxy", "set", "alpha", "port={proxy_port}"),
    case("set-port-of-beta", "set", "alpha", "port={beta_port}"),
    case("set-port-not-a-number", "set", "alpha", "port=eighty"),
    # set: other keys
    case("set-hosts-underscore", "set", "alpha", "hosts=a_b.example.com"),
    case("set-hosts-of-alpha", "set", "beta", "hosts=alpha.localhost"),
    case("set-hosts-empty", "set", "alpha", "hosts="),
    case("set-title-newline", "set", "alpha", "title=Alpha\nCorp"),
    case("set-workers-0", "set", "alpha", "workers=0"),
    case("set-unknown-key", "set", "alpha", "colour=red"),
    case("set-not-key-value", "set", "alpha", "title"),
    case("set-name", "set", "alpha", "name=beta"),
    case("set-unknown-tenant", "set", "../x", "title=X"),
    # versions
    case("set-release-path", "set", "alpha", "release=../1"),
    case("set-release-space", "set", "alpha", "release=1 2"),
    case("release-build-path", "release", "build", "../1"),
    case("release-build-empty", "release", "build", ""),
    case("release-build-space", "release", "build", "1 2"),
    case("release-build-newline", "release", "build", "1\n"),
    case("deploy-version-path", "deploy", "../1"),
    case("deploy-version-empty", "deploy", ""),
    case("deploy-version-space", "deploy", "1 2"),
    case("deploy-version-unknown", "deploy", "9.9.9"),
    case("rollback-no-previous", "rollback", "alpha"),
    case("rollback-nothing-to-roll-back", "rollback"),
    # verbs naming tenants
    *[case(f"{verb}-name-path", verb, "../x")
      for verb in ("up", "down", "backup", "migrate", "status", "logs", "rollback")],
    *[case(f"{verb}-nothing", verb) for verb in ("up", "down", "backup", "migrate")],
    *[case(f"{verb}-names-and-all", verb, "alpha", "--all") for verb in ("up", "down", "backup", "migrate")],
    case("up-name-uppercase", "up", "Alpha"),
    case("up-unknown", "up", "gamma"),
    case("rm-name-path", "rm", "../x", "--yes"),
    case("rm-name-trailing-newline", "rm", "alpha\n", "--yes"),
    case("rm-name-uppercase", "rm", "ALPHA", "--yes"),
    case("rm-unknown", "rm", "gamma", "--yes"),
    case("rm-without-yes", "rm", "alpha"),
    case("backup-folder-is-a-file", "backup", "alpha", files=config(backups="tenantkit.yaml")),
    case("maintenance-name-path", "maintenance", "../x", "on"),
    case("maintenance-bad-switch", "maintenance", "alpha", "maybe"),
    case("manage-name-path", "manage", "../x", "--", "check"),
    case("manage-no-command", "manage", "alpha"),
    case("manage-no-name", "manage", "--", "check"),
    case("logs-negative-tail", "logs", "alpha", "--tail", "-1"),
    case("migrate-jobs-0", "migrate", "--all", "--jobs", "0"),
    case("status-name-uppercase", "status", "Alpha"),
    # apache
    case("apache-port-0", "apache", "--mode", "proxy", "--port", "0"),
    case("apache-unknown-mode", "apache", "--mode", "nginx"),
    case("apache-wsgi-no-root", "apache", "--mode", "wsgi", "--release", "1"),
    case("apache-wsgi-release-path", "apache", "--mode", "wsgi", "--root", "{outside}/wsgi", "--release", "../1"),
    case("apache-wsgi-root-newline", "apache", "--mode", "wsgi", "--root", "{outside}/ws\ngi", "--release", "1"),
    case("apache-wsgi-unknown-user", "apache", "--mode", "wsgi", "--root", "{outside}/wsgi", "--release", "1",
         "--user", "no_such_user"),
    case("apache-wsgi-missing-python", "apache", "--mode", "wsgi", "--root", "{outside}/wsgi", "--release", "1",
         "--python", "/nonexistent/python3"),
    # clone
    case("clone-to-path", "clone", "alpha", "../x", "--host", "gamma.localhost"),
    case("clone-to-name-newline", "clone", "alpha", "gamma\n", "--host", "gamma.localhost"),
    case("clone-to-reserved", "clone", "alpha", "postgres", "--host", "gamma.localhost"),
    case("clone-to-existing", "clone", "alpha", "beta", "--host", "gamma.localhost"),
    case("clone-from-path", "clone", "../x", "gamma", "--host", "gamma.localhost"),
    case("clone-no-host", "clone", "alpha", "gamma"),
    case("clone-host-of-beta", "clone", "alpha", "gamma", "--host", "beta.localhost"),
    case("clone-host-space", "clone", "alpha", "gamma", "--host", "gam ma.localhost"),
    # restore: arguments
    case("restore-as-path", "restore", "{archive}", "--as", "../x"),
    case("restore-as-newline", "restore", "{archive}", "--as", "gamma\n"),
    case("restore-over-existing", "restore", "{archive}"),
    case("restore-host-of-alpha", "restore", "{archive}", "--as", "gamma", "--host", "alpha.localhost"),
    case("restore-host-double-dot", "restore", "{archive}", "--as", "gamma", "--host", "a..b"),
    # restore: archives
    case("archive-missing", *RESTORE[:1], "{archives}/missing.tar.gz", *RESTORE[2:]),
    *[case(f"archive-{name}", *(arg.replace("{name}", name) for arg in RESTORE),
           outside=("{outside}/absolute.txt",) if name == "absolute-member" else ())
      for name in ("truncated", "plain-text", "wrong-checksum", "no-manifest", "extra-member",
                   "path-traversal", "absolute-member", "symlink-absolute", "symlink-inside",
                   "gzip-bomb", "other-format", "other-version", "tenant-yaml-unknown-key")],
    # Archives of a tenant named gamma, restored under their own name: --as would give the
    # tenant a database and role of its own, whatever the archive says.
    *[case(f"archive-{name}", "restore", f"{{archives}}/{name}.tar.gz")
      for name in ("tenant-name-path", "database-user-of-alpha", "database-user-postgres")],
    # tenant.yaml
    case("tenant-yaml-unknown-key", "up", "gamma", files=gamma("colour: red\n")),
    case("tenant-yaml-wrong-type", "up", "--all", files=gamma("workers: many\n")),
    case("tenant-yaml-tab-indent", "status", files=gamma(hosts="hosts:\n\t- gamma.localhost\n")),
    case("tenant-yaml-database-user-postgres", "up", "gamma", files=gamma("database:\n  user: postgres\n")),
    case("tenant-yaml-database-user-of-alpha", "up", "--all", files=gamma("database:\n  user: alpha\n")),
    case("tenant-yaml-database-name-of-beta", "migrate", "gamma", files=gamma("database:\n  name: beta\n")),
    case("tenant-yaml-name-not-its-folder", "up", "gamma", files=gamma(name="alpha")),
    case("tenant-yaml-port-80", "up", "gamma", files=gamma(port="80")),
    case("tenant-yaml-port-of-alpha", "list", files=gamma(port="{alpha_port}")),
    case("tenant-yaml-port-of-database", "up", "gamma", files=gamma(port="{db_port}")),
    case("tenant-yaml-host-of-beta", "up", "gamma", files=gamma(host="beta.localhost")),
    case("tenant-yaml-memory-lots", "backup", "gamma", files=gamma("memory: lots\n")),
    case("tenant-yaml-release-path", "up", "gamma", files=gamma("release: ../1\n")),
    # tenantkit.yaml
    case("config-unknown-key", "up", "--all", files={"tenantkit.yaml": lambda text, _: text + "colour: red\n"}),
    case("config-tab-indent", "down", "--all",
         files={"tenantkit.yaml": lambda text, _: text.replace("\n  first:", "\n\tfirst:")}),
    case("config-wrong-type", "backup", "--all", files=config(ports__first="lots")),
    case("config-name-uppercase", "status", files=config(name="TKBad")),
    case("config-proxy-port-of-database", "status", files=config(proxy__port="{db_port}")),
    case("config-public-network-pool", "migrate", "--all", files=config(networks__pool="8.8.0.0/16")),
    case("config-default-memory-1k", "new", "gamma", files=config(tenant_defaults__memory="1k")),
    case("config-not-a-mapping", "list", files={"tenantkit.yaml": "- name: tkbad\n"}),
    # classic settings files for `tenant import`
    case("import-missing-folder", "import", "{classic}/missing"),
    *[case(f"import-{name}", "import", f"{{classic}}/{name}")
      for name in ("user-postgres", "user-of-alpha", "media-root-outside", "media-symlink", "no-allowed-hosts",
                   "syntax-error", "password-newline", "host-of-alpha", "database-elsewhere", "folder-name")],
]


# ---------------------------------------------------------------------------
# Archives, from a real backup of alpha

BOMB_MIB = 1088  # a member of more than 1 GiB that compresses to about 1 MiB


class _Zeros(io.RawIOBase):
    """A stream of `size` zero bytes, so a gzip bomb is written without holding it."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mode, info.mtime = size, kind, link, 0o644, 1700000000
    return info


def _pack(path: Path, files: dict[str, bytes], manifest: dict | None, extra=()) -> None:
    """A .tar.gz of `files`, then `extra` (TarInfo, stream) members, then the manifest."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
        for info, stream in extra:
            tar.addfile(info, stream)
        if manifest is not None:
            text = json.dumps(manifest).encode()
            tar.addfile(_info("manifest.json", len(text)), io.BytesIO(text))


def build_archives(real: Path, into: Path, outside: Path) -> None:
    """Tampered copies of the real archive `real`, one per archive case, in `into`."""
    with tarfile.open(real, "r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    manifest = json.loads(files.pop("manifest.json"))

    def signed(changed: dict[str, bytes], **fields) -> tuple[dict, dict]:
        """The archive's files with `changed` ones, and a manifest whose checksums match them."""
        merged = {**files, **changed}
        return merged, {**manifest, **fields, "files": {n: _sha256(d) for n, d in merged.items()}}

    def as_gamma(**changes) -> tuple[dict, dict]:
        """The archive as one of tenant gamma (on its own host), with `changes` to its tenant.yaml."""
        tenant_yaml = {**yaml.safe_load(files["tenant/tenant.yaml"]), "name": "gamma",
                       "hosts": ["gamma.localhost"], **changes}
        return signed({"tenant/tenant.yaml": yaml.safe_dump(tenant_yaml).encode()}, tenant="gamma")

    data = real.read_bytes()
    into.mkdir(parents=True, exist_ok=True)
    (into / "truncated.tar.gz").write_bytes(data[: len(data) // 2])
    (into / "plain-text.tar.gz").write_text("this is not an archive\n")
    _pack(into / "wrong-checksum.tar.gz", files,
          {**manifest, "files": {**manifest["files"], "tenant/tenant.yaml": "0" * 64}})
    _pack(into / "no-manifest.tar.gz", files, None)
    evil = b"import os\nos.system('touch /tmp/pwned')\n"
    _pack(into / "extra-member.tar.gz", files, manifest,
          [(_info("tenant/evil_settings.py", len(evil)), io.BytesIO(evil))])
    _pack(into / "path-traversal.tar.gz", *signed({"../escape.txt": b"escaped\n"}))
    _pack(into / "absolute-member.tar.gz", files, manifest,
          [(_info(str(outside / "absolute.txt"), 4), io.BytesIO(b"abs\n"))])
    _pack(into / "symlink-absolute.tar.gz", files, manifest,
          [(_info("media/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd"), None)])
    # A link that stays inside the archive passes tarfile's data filter, and its checksum
    # (of the file it points at) matches.
    inside = dict(manifest, files={**manifest["files"], "media/dump": manifest["files"]["database.dump"]})
    _pack(into / "symlink-inside.tar.gz", files, inside,
          [(_info("media/dump", kind=tarfile.SYMTYPE, link="../database.dump"), None)])
    digest, block = hashlib.sha256(), bytes(1 << 20)
    for _ in range(BOMB_MIB):
        digest.update(block)
    bomb = dict(manifest, files={**manifest["files"], "media/zeros": digest.hexdigest()})
    _pack(into / "gzip-bomb.tar.gz", files, bomb, [(_info("media/zeros", BOMB_MIB << 20), _Zeros(BOMB_MIB << 20))])
    _pack(into / "other-format.tar.gz", *signed({}, format="another-backup"))
    _pack(into / "other-version.tar.gz", *signed({}, version=99))
    _pack(into / "tenant-name-path.tar.gz", *signed({}, tenant="../x"))
    _pack(into / "database-user-of-alpha.tar.gz", *as_gamma(database={"name": "gamma", "user": "alpha"}))
    _pack(into / "database-user-postgres.tar.gz", *as_gamma(database={"name": "gamma", "user": "postgres"}))
    _pack(into / "tenant-yaml-unknown-key.tar.gz", *as_gamma(colour="red"))


# ---------------------------------------------------------------------------
# Classic layouts for `tenant import`, one root per case


def classic_settings(hosts=("classic.example.com",), user="classic", password="classic-pw", host="db",
                     media: str | None = None) -> str:
    lines = [f"ALLOWED_HOSTS = {list(hosts)!r}"] if hosts is not None else []
    lines.append("DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'classic', "
                 f"'USER': {user!r}, 'PASSWORD': {password!r}, 'HOST': {host!r}}}}}")
    lines.append("SITE_TITLE = 'Classic'")
    if media is not None:
        lines.append(f"MEDIA_ROOT = {media!r}")
    return "\n".join(lines) + "\n"


def build_classic(into: Path, root: Path, outside: Path) -> None:
    """into/<case>/shared/tenants/<tenant>/settings.py for every import case."""
    secret = outside / "root-only.txt"
    secret.write_text("root's secret\n")
    os.chmod(secret, 0o600)
    layouts = {
        "user-postgres": ("classic_pg", classic_settings(user="postgres")),
        "user-of-alpha": ("classic_ua", classic_settings(user="alpha")),
        "media-root-outside": ("classic_mo", classic_settings(media=str(root / "tenants" / "alpha"))),
        "media-symlink": ("classic_ms", classic_settings()),
        "no-allowed-hosts": ("classic_nh", classic_settings(hosts=None)),
        "syntax-error": ("classic_se", "ALLOWED_HOSTS = [\n"),
        "password-newline": ("classic_pn", classic_settings(password="pw\nLD_PRELOAD=/tmp/evil.so")),
        "host-of-alpha": ("classic_ha", classic_settings(hosts=("alpha.localhost",))),
        "database-elsewhere": ("classic_de", classic_settings(host="10.9.9.9")),
        "folder-name": ("Classic-X", classic_settings()),
    }
    for name, (tenant, text) in layouts.items():
        folder = into / name / "shared" / "tenants" / tenant
        (folder / "www" / "content").mkdir(parents=True)
        (folder / "settings.py").write_text(text)
        (folder / "www" / "content" / "hello.txt").write_text("hello\n")
    (into / "media-symlink" / "shared" / "tenants" / "classic_ms" / "www" / "content" / "secret.txt").symlink_to(secret)

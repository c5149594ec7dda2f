"""The model: the project config and its tenants as plain dataclasses.

One loader builds them and validates everything; nothing else in tenantkit parses YAML.
Every problem a user can fix is raised as ConfigError with a message naming the file,
the line and the fix.
"""
from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import os
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import yaml

# libyaml's C loader when present: tenant.yaml files are read by the thousand.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

CONFIG_FILE = "tenantkit.yaml"
LOCAL_CONFIG_FILE = "tenantkit.local.yaml"  # machine-specific overrides, not committed
TENANT_FILE = "tenant.yaml"
SECRETS_FILE = "secrets.env"
OWNER_LABEL = "tenantkit.root"  # on the compose db volume: the checkout whose data it holds
MEDIA_DIR = "media"  # the project's folder of tenants' media: media/NAME

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
NAME_MAX = 40
# Names that would collide with PostgreSQL's own databases and roles, with compose
# services tenantkit owns, or with CLI words.
RESERVED_NAMES = frozenset({
    "all", "db", "proxy", "postgres", "template0", "template1", "public", "default",
    "none", "root", "admin", "tenant", "tenants", "compose", "current", "releases",
    "shared", "main", "information_schema",
})
HOST_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MEMORY_RE = re.compile(r"^([1-9][0-9]*)([kmg])$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")

# Python versions a tenant image can run: python:X-slim exists for each in public registries.
PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
# An air-gapped host builds its base from Debian, which ships one Python per release; the
# same table is in image/offline/build-bases.sh.
DEBIAN_PYTHONS = {"3.11": "bookworm", "3.13": "trixie"}
OFFLINE_BASE = "tenantkit/python-base:"  # the bases build-bases.sh makes, tagged by version
PYTHON_PLACEHOLDER = "{python}"  # in images.base: replaced by images.python

APP_PORT = 8000  # where gunicorn listens inside every tenant container


class ConfigError(Exception):
    """Bad input that the user can fix; the CLI prints it on one line and exits 2."""


SLOTS = ("a", "b")  # a tenant's two container slots: a deploy starts the new release in the idle one


@dataclass(frozen=True)
class TenantNames:
    """Every name derived from a tenant's name, in one place so they never drift apart."""

    tenant: str
    service: str
    network: str
    database: str
    role: str
    vhost: str
    settings_module: str
    backend_host: str  # the container's name on its network: a valid Host header (no "_")
    compose_file: str  # compose/tenants/<file>: the tenant's own part of the stack

    def process_service(self, process: str) -> str:
        """The compose service of one of the tenant's background processes: tenant-NAME-PROCESS.
        A tenant's name has no "-", so no tenant's service is another's."""
        return f"{self.service}-{process}"

    def slot_host(self, slot: str) -> str:
        """The name of the tenant's container in one slot ("a" or "b"), as the proxy reaches
        it. A dot never occurs in backend_host, so no tenant's slot name is another's name."""
        return f"{slot}.{self.backend_host}"


def tenant_names(name: str, database: str | None = None, role: str | None = None) -> TenantNames:
    """Derive the compose service, network, database, role and file names of a tenant.

    Database and role default to the name; a tenant imported from the classic layout
    keeps the ones it had (tenant.yaml `database: {name, user}`).
    """
    return TenantNames(
        tenant=name,
        service=f"tenant-{name}",
        network=f"tenant-{name}",
        database=database or name,
        role=role or database or name,
        vhost=f"{name}.conf",
        settings_module=f"tenants.{name}.settings",
        backend_host=f"tk-{name.replace('_', '-')}",
        compose_file=f"{name}.yaml",
    )


@dataclass(frozen=True)
class Images:
    base: str  # with images.python filled in
    app: str
    db: str
    proxy: str = "tenantkit/proxy"
    scheduler: str = "tenantkit/scheduler"  # runs tenants' scheduled commands (image/scheduler)
    proxy_base: str = "httpd:2.4"
    python: str = "3.11"  # the Python of tenant images: picks the base and the wheels


class ProxyMode(str, enum.Enum):
    """Where Apache runs: a compose service, the host's own Apache, or nowhere."""

    COMPOSE = "compose"
    HOST = "host"
    NONE = "none"


@dataclass(frozen=True)
class Proxy:
    """Apache in front of the tenants: a compose service, the host's own Apache, or none."""

    mode: ProxyMode = ProxyMode.COMPOSE
    port: int = 8080  # compose: published on 127.0.0.1; host: the port the host's Apache listens on
    reload_command: tuple[str, ...] = ()  # host mode: how to reload the host's Apache
    health_interval: int = 60  # seconds between the proxy's health checks of each tenant
    tls_port: int = 8443  # compose: the HTTPS port published on proxy.address; host: the host's Apache's
    address: str = "127.0.0.1"  # compose: the address the proxy publishes its ports on (0.0.0.0: every one)
    replicas: int | None = 1  # swarm: proxy tasks (None: global mode, one on every node)


@dataclass(frozen=True)
class NetworkPool:
    """Where tenant networks get their subnets: explicit ones, so the engine's default
    address pools (about 30 networks) never limit the fleet."""

    pool: ipaddress.IPv4Network = ipaddress.IPv4Network("10.213.0.0/16")
    prefix: int = 28

    @property
    def capacity(self) -> int:
        return 2 ** (self.prefix - self.pool.prefixlen)

    def subnet(self, index: int) -> ipaddress.IPv4Network:
        """The index-th subnet of the pool."""
        size = 2 ** (32 - self.prefix)
        return ipaddress.IPv4Network((int(self.pool.network_address) + index * size, self.prefix))


@dataclass(frozen=True)
class DatabaseServer:
    """The PostgreSQL server tenants live on: the compose `db` service or an external one."""

    service: bool
    host: str
    port: int
    admin_user: str
    publish_port: int  # where the compose service answers on 127.0.0.1
    admin_password_file: Path | None = None  # external servers only
    max_connections: int = 1000  # the compose db service's max_connections
    templates: bool = True  # new tenants' databases are copies of a migrated template (see docs)
    # django.contrib.postgres in every tenant's INSTALLED_APPS: its database is PostgreSQL,
    # and apps that use PostgreSQL's features there (Wagtail's search) need it.
    postgres_app: bool = True
    # swarm: where the db service may run (its volume lives there; tenantkit runs there too)
    placement: tuple[str, ...] = ("node.role == manager",)

    @property
    def admin_host(self) -> str:
        """Host the tenantkit CLI itself connects to."""
        return "127.0.0.1" if self.service else self.host

    @property
    def admin_port(self) -> int:
        return self.publish_port if self.service else self.port


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
TLS_OFF, TLS_AUTO, TLS_GIVEN = "off", "auto", "given"


@dataclass(frozen=True)
class Tls:
    """tenantkit.yaml `tls:`: how the proxy gets certificates (see docs/reference.md, "TLS")."""

    acme_directory: str = LETS_ENCRYPT  # the ACME CA's directory URL (mod_md's MDCertificateAuthority)
    acme_email: str | None = None  # the ACME account's contact (required by mod_md for `tls: auto`)
    acme_ca_file: Path | None = None  # a CA that signs the ACME server's own HTTPS (a private or test CA)
    trusted_roots: Path | None = None  # extra roots a given certificate's chain may end at (a private CA)
    hsts: int = 0  # Strict-Transport-Security max-age in seconds on HTTPS answers; 0: no header


ENGINES = ("compose", "swarm")


@dataclass(frozen=True)
class Storage:
    """swarm: how every node reaches the checkout's shared folders (tenants' media, the
    proxy's sites, assets and logs): a volume driver and its options, where {path} is the
    folder's path (absolute, on the manager's checkout) and {relpath} the same relative to
    the checkout. The default, local with a bind, serves one node."""

    driver: str = "local"
    options: tuple[tuple[str, str], ...] = (("type", "none"), ("o", "bind"), ("device", "{path}"))


@dataclass(frozen=True)
class Swarm:
    """tenantkit.yaml `swarm:` (see docs/scale-out.md)."""

    endpoint_mode: str = "vip"  # vip (the swarm default, needs IPVS) or dnsrr
    registry: str | None = None  # HOST:PORT of the registry release images are pushed to
    storage: Storage = Storage()
    update_monitor: int = 10  # seconds a new task must stay healthy before the update goes on
    health_interval: int = 5  # seconds between a tenant task's healthchecks (a new task waits one)


@dataclass(frozen=True)
class TenantDefaults:
    memory: str = "384m"  # bench/memory.py: a 5 MiB page, 4 at a time, peaks at 205 MiB
    workers: int = 1
    threads: int = 4
    cpus: float = 1.0
    apps: tuple[str, ...] = ()  # installed in every tenant, before the tenant's own
    tls: str = TLS_OFF  # off or auto: tenants that say nothing
    processes: tuple[tuple[str, str], ...] = ()  # (name, command) every tenant runs
    schedule: tuple[tuple[str, str], ...] = ()  # (cron, manage.py command) every tenant runs


DEFAULT_SECRET_KEY_ENV = ("DJANGO_SECRET_KEY", "SECRET_KEY")


@dataclass(frozen=True)
class Environment:
    """The 12-factor variables every tenant process gets, for projects that read their
    configuration from the environment (see docs/reference.md)."""

    database_url: str = "DATABASE_URL"  # the tenant's own database and role, as a URL
    secret_key: tuple[str, ...] = DEFAULT_SECRET_KEY_ENV  # the tenant's SECRET_KEY, under each name


@dataclass(frozen=True)
class Project:
    root: Path
    name: str
    source: Path
    settings: str
    requirements: Path
    health_path: str
    domain: str
    images: Images
    database: DatabaseServer
    wheelhouse: Path | None
    first_port: int
    defaults: TenantDefaults
    proxy: Proxy = Proxy()
    networks: NetworkPool = NetworkPool()
    backups_dir: Path | None = None
    backups_keep: int | None = None  # `backups.keep`: archives kept per tenant (None: all of them)
    dev: bool = False  # `tenant dev on`: tenants run the working tree with reloading
    environment: Environment = Environment()
    # project.tenant_settings: Python run in every tenant's settings after the base settings
    # (its file, and its text, read once at load).
    tenant_settings: Path | None = None
    tenant_settings_text: str = field(default="", repr=False)
    tls: Tls = Tls()
    engine: str = "compose"  # compose (one host) or swarm (docs/scale-out.md)
    swarm: Swarm = Swarm()

    @property
    def stack_file(self) -> Path:
        """swarm: compose/stack.yaml, what `docker stack deploy` runs."""
        return self.root / "compose" / "stack.yaml"

    @property
    def tenant_apps(self) -> tuple[str, ...]:
        """The apps every tenant gets: django.contrib.postgres (database.postgres_app), then
        tenant_defaults.apps."""
        apps = ("django.contrib.postgres",) if self.database.postgres_app else ()
        return tuple(dict.fromkeys(apps + self.defaults.apps))

    @property
    def tenant_code(self) -> str:
        """A digest of what the project adds to every tenant's code (its apps and the tenant
        settings snippet): part of the key of whatever depends on it."""
        text = f"{self.tenant_apps!r}\0{self.tenant_settings_text}"
        return hashlib.sha256(text.encode()).hexdigest()[:16] if self.tenant_apps or self.tenant_settings_text else ""

    @property
    def state_file(self) -> Path:
        """The runtime state every tenant process shares (see act/state.py)."""
        return self.state_dir / "state.json"

    @property
    def cache_dir(self) -> Path:
        """Caches that only save work: deleting them is always safe."""
        return self.state_dir / "cache"

    @property
    def tenant_compose_dir(self) -> Path:
        """One compose file per tenant, included by compose/compose.yaml."""
        return self.root / "compose" / "tenants"

    def tenant_compose_file(self, tenant: "Tenant") -> Path:
        return self.tenant_compose_dir / tenant.names.compose_file

    def network_name(self, names: TenantNames) -> str:
        """The engine's name of a tenant's network (Compose prefixes the project name)."""
        return f"{self.name}_{names.network}"

    @property
    def tenants_dir(self) -> Path:
        return self.root / "tenants"

    @property
    def media_root(self) -> Path:
        """Every tenant's media (uploads), one folder each: media/NAME. Kept apart from the
        tenant folders, which hold secrets, so the proxy mounts media and nothing else."""
        return self.root / MEDIA_DIR

    @property
    def compose_file(self) -> Path:
        return self.root / "compose" / "compose.yaml"

    @property
    def state_dir(self) -> Path:
        """Machine-local state: lock, database admin secret. Never committed."""
        return self.root / ".tenantkit"

    @property
    def db_env_file(self) -> Path:
        return self.state_dir / "db.env"

    @property
    def sites_dir(self) -> Path:
        """Generated Apache vhosts, one per tenant plus the catch-all default."""
        return self.root / "compose" / "apache" / "sites"

    @property
    def assets_dir(self) -> Path:
        """Each release's collected static files, extracted from its image."""
        return self.root / "compose" / "assets"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def tenant_dir(self, name: str) -> Path:
        return self.tenants_dir / name

    def tenant_url(self, tenant: "Tenant") -> str:
        """Where users reach a tenant: through the proxy when there is one (over HTTPS when
        the tenant has TLS)."""
        if self.proxy.mode is ProxyMode.NONE:
            return tenant.url()
        if self.tls_of(tenant) != TLS_OFF:
            return f"https://{tenant.primary_host}{'' if self.proxy.tls_port == 443 else f':{self.proxy.tls_port}'}/"
        port = "" if self.proxy.port == 80 else f":{self.proxy.port}"
        return f"http://{tenant.primary_host}{port}/"

    def tls_of(self, tenant: "Tenant") -> str:
        """The tenant's TLS: off, auto (ACME) or given (its own certificate); only the proxy
        serves HTTPS, so none without one."""
        if self.proxy.mode is ProxyMode.NONE:
            return TLS_OFF
        if tenant.tls_cert:
            return TLS_GIVEN
        return tenant.tls or self.defaults.tls

    def processes_of(self, tenant: "Tenant") -> dict[str, str]:
        """The tenant's background processes, name -> command: the project's, then its own
        (which win; an empty command turns a project's process off)."""
        merged = dict(self.defaults.processes)
        merged.update(tenant.processes)
        return {name: command for name, command in merged.items() if command}

    def schedule_of(self, tenant: "Tenant") -> list[tuple[str, str]]:
        """The tenant's scheduled commands, (cron, command): the project's, then its own."""
        return list(dict.fromkeys((*self.defaults.schedule, *tenant.schedule)))

    @property
    def scheduler_dir(self) -> Path:
        """compose/scheduler/: schedule.json, what the scheduler runs (mounted read-only)."""
        return self.root / "compose" / "scheduler"

    @property
    def md_dir(self) -> Path:
        """Holds mod_md's store (md_dir/store): ACME accounts, and the certificates it obtained
        (keys included). The store itself is made by mod_md, which gives its folders to
        Apache's user where its unprivileged renewals write."""
        return self.state_dir / "md"

    def acme_certificate(self, tenant: "Tenant") -> Path:
        """Where mod_md keeps the certificate it obtained for a tenant (its first host)."""
        return self.md_dir / "store" / "domains" / tenant.primary_host / "pubcert.pem"

    def certificate_file(self, tenant: "Tenant") -> Path | None:
        """The certificate a TLS tenant is served with: the one its tenant.yaml gives (which
        the proxy serves from the next `tenant up`), or the one mod_md obtained; None without TLS."""
        mode = self.tls_of(tenant)
        if mode == TLS_OFF:
            return None
        return tenant.tls_paths()[0] if mode == TLS_GIVEN else self.acme_certificate(tenant)

    @property
    def tls_dir(self) -> Path:
        """Given certificates, checked and copied here (TENANT/cert.pem, key.pem), and the
        catch-all's own."""
        return self.state_dir / "tls"


@dataclass(frozen=True)
class Tenant:
    name: str
    hosts: tuple[str, ...]
    title: str
    port: int
    memory: str
    workers: int
    threads: int
    apps: tuple[str, ...] = ()
    maintenance: bool = False
    enabled: bool = True  # false after `tenant rm --keep-data`: data kept, nothing runs
    release: str | None = None  # a pinned release: `tenant deploy` skips it unless named
    database: str | None = None  # an existing database's name (imported tenants)
    db_user: str | None = None
    cpus: float = 1.0  # the container's CPU limit
    debug: bool = False  # Django's DEBUG: never on for a tenant unless asked (or in dev mode)
    removing: str | None = None  # `tenant rm` under way: the archive it made; only `rm` continues
    tls: str | None = None  # off or auto (None: the project's tenant_defaults.tls); see Project.tls_of
    tls_cert: str | None = None  # a given certificate (chain) and key: paths as tenant.yaml gives them
    tls_key: str | None = None
    processes: tuple[tuple[str, str], ...] = ()  # (name, command): background processes, Procfile style
    schedule: tuple[tuple[str, str], ...] = ()  # (cron, manage.py command)
    replicas: int = 1  # swarm: tasks serving the tenant
    # What the project adds to every tenant's code (Project.tenant_code); not in tenant.yaml.
    project_code: str = ""
    path: Path = field(default=Path("."), compare=False)

    @property
    def names(self) -> TenantNames:
        return tenant_names(self.name, self.database, self.db_user)

    @property
    def primary_host(self) -> str:
        return self.hosts[0]

    @property
    def media_dir(self) -> Path:
        """media/NAME under the project root (tenants/NAME's grandparent), also while the
        tenant folder is being staged under another name."""
        return self.path.parent.parent / MEDIA_DIR / self.name

    @property
    def secrets_file(self) -> Path:
        return self.path / SECRETS_FILE

    def url(self) -> str:
        return f"http://{self.primary_host}:{self.port}/"

    def to_yaml_dict(self) -> dict[str, Any]:
        """The tenant.yaml document for this tenant."""
        return {
            "name": self.name,
            "title": self.title,
            "hosts": list(self.hosts),
            "port": self.port,
            "memory": self.memory,
            "workers": self.workers,
            "threads": self.threads,
            "cpus": self.cpus,
            "apps": list(self.apps),
            "maintenance": self.maintenance,
            "enabled": self.enabled,
            **({"release": self.release} if self.release else {}),
            **({"database": {"name": self.names.database, "user": self.names.role}}
               if self.database or self.db_user else {}),
            **({"debug": True} if self.debug else {}),
            **({"tls": {"cert": self.tls_cert, "key": self.tls_key}} if self.tls_cert
               else {"tls": self.tls} if self.tls else {}),
            **({"processes": dict(self.processes)} if self.processes else {}),
            **({"schedule": [{"cron": cron, "command": command} for cron, command in self.schedule]}
               if self.schedule else {}),
            **({"replicas": self.replicas} if self.replicas != 1 else {}),
            **({"removing": self.removing} if self.removing else {}),
        }

    def tls_paths(self) -> tuple[Path, Path] | None:
        """The given certificate and key files (relative paths: from the tenant folder)."""
        if not self.tls_cert or not self.tls_key:
            return None
        return self.path / self.tls_cert, self.path / self.tls_key


# ---------------------------------------------------------------------------
# Validation of single values. Each returns the normalised value or raises ValueError
# with the part of the message after "<file>:<line>: <key>: ".

def check_name(value: Any) -> str:
    """A tenant name: a lowercase identifier usable as a database, role and DNS label."""
    if not isinstance(value, str) or not value:
        raise ValueError("a tenant name is required")
    if "/" in value or "\\" in value or value.startswith("."):
        raise ValueError(f"{value!r} is a path, not a tenant name; use a lowercase identifier such as acme")
    if len(value) > NAME_MAX:
        raise ValueError(f"{value!r} is longer than {NAME_MAX} characters")
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a lowercase identifier: use a-z, 0-9 and _, starting with a letter")
    if value in RESERVED_NAMES or value.startswith("pg_"):
        raise ValueError(f"{value!r} is reserved; choose another tenant name")
    return value


def check_host(value: Any) -> str:
    """A DNS host name, lowercased; anything that could inject config text is refused."""
    if not isinstance(value, str) or not value:
        raise ValueError("a host name is required")
    host = value.strip().lower().rstrip(".")
    if host != value.lower().rstrip(".") or len(host) > 253 or "." not in host and host != "localhost":
        raise ValueError(f"{value!r} is not a valid host name; use a name such as acme.example.com")
    if not all(HOST_LABEL_RE.fullmatch(label) for label in host.split(".")):
        raise ValueError(
            f"{value!r} is not a valid host name: use letters, digits, '-' and '.', such as acme.example.com")
    if host.rsplit(".", 1)[-1].isdigit() or host.startswith("0x"):
        # An address (127.0.0.1, or a quirk such as 0x7f.0.0.1) answers for every tenant's
        # server, so a vhost named by it would catch requests meant for the catch-all.
        raise ValueError(f"{value!r} is an IP address, not a host name; use a name such as acme.example.com")
    return host


def check_memory(value: Any) -> str:
    """A container memory limit such as 256m or 1g, at least 64m."""
    text = str(value).strip().lower()
    match = MEMORY_RE.fullmatch(text)
    if not match:
        raise ValueError(f"{value!r} is not a size such as 256m or 1g")
    number, unit = int(match.group(1)), match.group(2)
    mib = {"k": number / 1024, "m": number, "g": number * 1024}[unit]
    if mib < 64:
        raise ValueError(f"{value!r} is below the 64m a Django container needs")
    return text


def check_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port number from 1024 to 65535")
    return value


def check_count(value: Any, low: int = 1, high: int = 64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{value!r} is not a whole number from {low} to {high}")
    return value


def check_cpus(value: Any) -> float:
    """A container CPU limit such as 0.5 or 2."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.05 <= value <= 256:
        raise ValueError(f"{value!r} is not a number of CPUs from 0.05 to 256, such as 0.5 or 2")
    return float(value)


def check_title(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a title is required")
    if len(value) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} must be one line of at most 200 characters")
    return value


def check_module(value: Any) -> str:
    if not isinstance(value, str) or not MODULE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a dotted Python module name such as main.settings")
    return value


def check_image(value: Any) -> str:
    if not isinstance(value, str) or not IMAGE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not an image reference such as postgres:15")
    return value


def check_base_image(value: Any) -> str:
    """An image reference that may hold {python} (filled in from images.python)."""
    if not isinstance(value, str) or not IMAGE_RE.fullmatch(value.replace(PYTHON_PLACEHOLDER, "3.11")):
        raise ValueError(f"{value!r} is not an image reference such as python:{{python}}-slim")
    return value


def check_python(value: Any) -> str:
    """A Python version of tenant images, such as "3.13"."""
    if isinstance(value, float):  # YAML reads 3.13 as a number, and 3.10 as 3.1
        value = f"{value}"
        if value not in PYTHON_VERSIONS:
            raise ValueError(f"{value!r} is not a Python version tenantkit knows; write it in quotes, such as "
                             f'"3.10"; known: {", ".join(PYTHON_VERSIONS)}')
    if value not in PYTHON_VERSIONS:
        raise ValueError(f"{value!r} is not a Python version tenantkit knows: use one of {', '.join(PYTHON_VERSIONS)}")
    return value


def check_env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", value):
        raise ValueError(f"{value!r} is not an environment variable name such as DJANGO_SECRET_KEY")
    return value


def check_text(value: Any) -> str:
    if not isinstance(value, str) or not value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{value!r} must be non-empty text on one line")
    return value


PROCESS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,29}$")
RESERVED_PROCESSES = frozenset({"web", "job", "test", "migrate"})  # names of tenantkit's own containers


def check_tls_mode(value: Any) -> str:
    """off or auto. YAML reads a bare `off` as false."""
    if value is False or value == TLS_OFF:
        return TLS_OFF
    if value == TLS_AUTO:
        return TLS_AUTO
    if value is True:  # YAML reads a bare `on` or `yes` as true
        raise ValueError("on is not a TLS mode: write auto (a certificate from the ACME CA) or {cert: FILE, key: FILE}")
    raise ValueError(f"{value!r} is not off, auto or {{cert: FILE, key: FILE}}")


def check_command(value: Any) -> str:
    """A command line, split into words as a shell would (no pipes, variables or globs)."""
    if not isinstance(value, str) or not value.strip() or any(ord(c) < 32 for c in value):
        raise ValueError(f"{value!r} is not a command on one line")
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} cannot be split into words ({exc}); check its quotes") from None
    if not words:
        raise ValueError("the command is empty")
    return value.strip()


def check_processes(value: Any) -> tuple[tuple[str, str], ...]:
    """`processes: {NAME: COMMAND}`, as in a Procfile; an empty COMMAND (null or "") turns a
    project-wide process off for one tenant."""
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of process names to commands, such as {worker: python manage.py qcluster}")
    found = []
    for name, command in value.items():
        if not isinstance(name, str) or not PROCESS_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a process name: a-z, 0-9, - and _, starting with a letter, "
                             "at most 30 characters")
        if name in RESERVED_PROCESSES:
            raise ValueError(f"{name!r} is reserved; name the process otherwise, such as worker")
        found.append((name, "" if command in (None, "") else check_command(command)))
    return tuple(found)


def check_cron(value: Any) -> str:
    """A cron expression: five fields, or six with seconds last (croniter's form)."""
    from croniter import croniter

    if not isinstance(value, str) or len(value.split()) not in (5, 6) or not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a cron expression such as \"*/5 * * * *\" (minute hour day month "
                         "weekday, and optionally seconds)")
    return " ".join(value.split())


def check_schedule(value: Any) -> tuple[tuple[str, str], ...]:
    """`schedule: [{cron: "*/5 * * * *", command: clearsessions}, ...]`: manage.py commands."""
    if not isinstance(value, list):
        raise ValueError('expected a list of {cron: "*/5 * * * *", command: clearsessions}')
    found = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"cron", "command"}:
            raise ValueError(f"entry {index + 1} must have exactly `cron` and `command`, such as "
                             '{cron: "0 3 * * *", command: clearsessions}')
        try:
            job = (check_cron(entry["cron"]), check_command(entry["command"]))
        except ValueError as exc:
            raise ValueError(f"entry {index + 1}: {exc}") from None
        if job in found:
            raise ValueError(f"entry {index + 1} repeats an earlier one")
        found.append(job)
    return tuple(found)


def job_id(cron: str, command: str) -> str:
    """A scheduled command's identity: the same job across renders, restarts and status."""
    return hashlib.sha256(f"{cron}\0{command}".encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------
# Reading YAML with line numbers, so errors can point at the line to fix.

def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a YAML mapping; return it and the line of every key (dotted for nested keys)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{display_path(path)} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{display_path(path)} cannot be read: {exc}") from None
    loader = SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = (exc.problem or exc.context or "malformed YAML").strip()
        raise ConfigError(f"{display_path(path)}:{line}: malformed YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{display_path(path)}: malformed YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{display_path(path)}:1: expected a mapping of keys to values")
    lines: dict[str, int] = {}

    def walk(mapping: yaml.Node, prefix: str) -> None:
        for key_node, value_node in mapping.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.MappingNode):
                walk(value_node, key + ".")

    if isinstance(node, yaml.MappingNode):
        walk(node, "")
    return data, lines


class Fields:
    """Takes validated values out of a parsed mapping, reporting errors with file and line."""

    def __init__(self, path: Path, data: dict[str, Any], lines: dict[str, int], prefix: str = ""):
        self.path, self.data, self.lines, self.prefix = path, data, lines, prefix
        self.seen: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        full = self.prefix + key
        line = self.lines.get(full)
        where = f"{display_path(self.path)}:{line}" if line else display_path(self.path)
        return ConfigError(f"{where}: {full}: {message}")

    def get(self, key: str, check, default: Any = ..., required: bool = False) -> Any:
        """The checked value of `key`; `default` when absent (no default: required)."""
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if required or default is ...:
                if key in self.data:
                    raise self.error(key, "needs a value")
                raise ConfigError(f"{display_path(self.path)}: {self.prefix}{key} is required")
            return default
        try:
            return check(self.data[key])
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def section(self, key: str) -> "Fields":
        self.seen.add(key)
        value = self.data.get(key) or {}
        if not isinstance(value, dict):
            raise self.error(key, "expected a mapping of keys to values")
        return Fields(self.path, value, self.lines, f"{self.prefix}{key}.")

    def done(self) -> None:
        """Refuse unknown keys: a typo must not be silently ignored."""
        for key in self.data:
            if key not in self.seen:
                raise self.error(str(key), "unknown key; check the spelling against docs/reference.md")


def _list_of(check):
    def checked(value: Any) -> tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError("expected a list")
        return tuple(check(item) for item in value)
    return checked


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------------------
# Loaders

def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding tenantkit.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            owner = (folder / CONFIG_FILE).stat().st_uid
            if folder != here and owner != os.geteuid():
                # Like git's safe.directory: a config planted above someone's working folder
                # (in /tmp, say) must not run as them, let alone as root.
                raise ConfigError(f"{folder / CONFIG_FILE} belongs to another user (uid {owner}), so it is not "
                                  f"used; pass --project {folder} if you trust it")
            return folder
    raise ConfigError(
        f"no {CONFIG_FILE} in {here} or above; run tenant from a tenantkit project or pass --project DIR")


def load_project(root: Path) -> Project:
    """Load and validate tenantkit.yaml (plus tenantkit.local.yaml when present)."""
    root = root.resolve()
    path = root / CONFIG_FILE
    data, lines = read_yaml(path)
    local = root / LOCAL_CONFIG_FILE
    if local.is_file():
        override, _ = read_yaml(local)
        data = _merge(data, override)
    top = Fields(path, data, lines)
    name = top.get("name", check_name_like, "tenantkit")

    proj = top.section("project")
    source = root / proj.get("source", check_text, required=True)
    settings = proj.get("settings", check_module, required=True)
    requirements = root / proj.get("requirements", check_text, required=True)
    health_path = proj.get("health_path", check_text, "/healthz/")
    snippet = proj.get("tenant_settings", check_text, None)
    environment = Environment(
        database_url=proj.get("database_url_env", check_env_name, Environment.database_url),
        secret_key=proj.get("secret_key_env", _list_of(check_env_name), DEFAULT_SECRET_KEY_ENV),
    )
    proj.done()
    tenant_settings, tenant_settings_text = None, ""
    if snippet:
        tenant_settings = root / snippet
        try:
            tenant_settings_text = tenant_settings.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise proj.error("tenant_settings", f"{display_path(tenant_settings)} cannot be read "
                             f"({exc.strerror if isinstance(exc, OSError) else exc}); name a Python file "
                             "of settings for every tenant") from None
        try:
            compile(tenant_settings_text, str(tenant_settings), "exec")
        except SyntaxError as exc:
            raise ConfigError(f"{display_path(tenant_settings)}:{exc.lineno}: {exc.msg}; fix the tenant "
                              "settings file named by project.tenant_settings") from None
    if not (source / "manage.py").is_file():
        raise proj.error("source", f"{display_path(source)} holds no manage.py; name the Django project folder")
    if not requirements.is_file():
        raise proj.error("requirements", f"{display_path(requirements)} does not exist")
    if not health_path.startswith("/"):
        raise proj.error("health_path", f"{health_path!r} must start with /")

    domain = top.get("domain", check_host, "localhost")

    img = top.section("images")
    python = img.get("python", check_python, Images.python)
    base = img.get("base", check_base_image, f"python:{PYTHON_PLACEHOLDER}-slim")
    images = Images(
        base=base.replace(PYTHON_PLACEHOLDER, python),
        app=img.get("app", check_image, f"{name}/app"),
        db=img.get("db", check_image, "postgres:15"),
        proxy=img.get("proxy", check_image, f"{name}/proxy"),
        scheduler=img.get("scheduler", check_image, f"{name}/scheduler"),
        proxy_base=img.get("proxy_base", check_image, "httpd:2.4"),
        python=python,
    )
    img.done()
    if images.base.startswith(OFFLINE_BASE) and PYTHON_PLACEHOLDER in base and python not in DEBIAN_PYTHONS:
        offline = ", ".join(f"{version} ({release})" for version, release in DEBIAN_PYTHONS.items())
        raise (img.error("python", f"{python!r} has no base image on this host, which builds its bases from "
                         f"Debian: Python {offline}; choose one of those, or set images.base to an image with Python {python}"))

    db = top.section("database")
    service = db.get("service", _bool, True)
    password_file = db.get("admin_password_file", check_text, None)
    database = DatabaseServer(
        service=service,
        host=db.get("host", check_host_or_service, "db" if service else ...),
        port=db.get("port", check_port_any, 5432),
        admin_user=db.get("admin_user", check_text, "postgres"),
        publish_port=db.get("publish_port", check_port, 54329),
        admin_password_file=(root / password_file) if password_file else None,
        max_connections=db.get("max_connections", lambda v: check_count(v, 20, 100000), 1000),
        templates=db.get("templates", _bool, True),
        postgres_app=db.get("postgres_app", _bool, True),
        placement=db.get("placement", _list_of(check_text), DatabaseServer.placement),
    )
    db.done()
    if not service and database.admin_password_file is None:
        raise db.error("admin_password_file", "an external database server needs an admin_password_file")

    wheelhouse = top.get("wheelhouse", check_text, None)
    backups, backups_keep = _backups_config(top)
    ports = top.section("ports")
    first_port = ports.get("first", check_port, 8101)
    ports.done()

    px = top.section("proxy")
    proxy = Proxy(
        mode=ProxyMode(px.get("mode", _one_of([m.value for m in ProxyMode]), "compose")),
        port=px.get("port", check_port_any, 8080),
        reload_command=px.get("reload_command", _list_of(check_text), ()),
        health_interval=px.get("health_interval", lambda v: check_count(v, 1, 3600), Proxy.health_interval),
        tls_port=px.get("tls_port", check_port_any, Proxy.tls_port),
        address=px.get("address", check_ip, Proxy.address),
        replicas=px.get("replicas", check_proxy_replicas, Proxy.replicas),
    )
    px.done()
    if proxy.tls_port == proxy.port:
        raise px.error("tls_port", f"{proxy.tls_port} is also proxy.port; HTTPS needs a port of its own, such as 8443")
    if database.service and proxy.mode is ProxyMode.COMPOSE and proxy.tls_port == database.publish_port:
        raise px.error("tls_port", f"{proxy.tls_port} is also database.publish_port; give HTTPS a port of its own")

    section = top.section("tls")
    acme = section.section("acme")
    tls = Tls(
        acme_directory=acme.get("directory", check_url, LETS_ENCRYPT),
        acme_email=acme.get("email", check_email, None),
        acme_ca_file=_existing_file(root, acme, "ca_file"),
        trusted_roots=_existing_file(root, section, "trusted_roots"),
        hsts=section.get("hsts", lambda v: check_count(v, 0, 10 ** 9), 0),
    )
    acme.done()
    section.done()

    net = top.section("networks")
    networks = NetworkPool(pool=net.get("pool", check_pool, default_pool(name)),
                           prefix=net.get("prefix", lambda v: check_count(v, 16, 29), NetworkPool.prefix))
    net.done()
    if networks.prefix <= networks.pool.prefixlen:
        raise net.error("prefix", f"/{networks.prefix} is not smaller than the pool {networks.pool}; "
                                  "use a longer prefix such as 28")

    if database.service and proxy.mode is ProxyMode.COMPOSE and proxy.port == database.publish_port:
        raise px.error("port", f"{proxy.port} is also database.publish_port; give the proxy a port of its own")

    engine = top.get("engine", _one_of(ENGINES), "compose")
    swarm = _swarm_config(top)
    if engine == "swarm" and proxy.mode is ProxyMode.HOST:
        raise px.error("mode", "host is not available with engine: swarm (the host's Apache cannot reach "
                               "swarm services); use compose (an Apache service in the stack) or none")

    dflt = top.section("tenant_defaults")
    defaults = TenantDefaults(
        memory=dflt.get("memory", check_memory, TenantDefaults.memory),
        workers=dflt.get("workers", check_count, TenantDefaults.workers),
        threads=dflt.get("threads", check_count, TenantDefaults.threads),
        cpus=dflt.get("cpus", check_cpus, TenantDefaults.cpus),
        apps=tuple(dict.fromkeys(dflt.get("apps", _list_of(check_module), ()))),
        tls=dflt.get("tls", check_tls_mode, TLS_OFF),
        processes=tuple(p for p in dflt.get("processes", check_processes, ()) if p[1]),
        schedule=dflt.get("schedule", check_schedule, ()),
    )
    dflt.done()
    top.done()
    return Project(
        root=root, name=name, source=source, settings=settings, requirements=requirements,
        health_path=health_path, domain=domain, images=images, database=database,
        wheelhouse=(root / wheelhouse) if wheelhouse else None, first_port=first_port,
        defaults=defaults, proxy=proxy, networks=networks, backups_dir=root / backups, backups_keep=backups_keep,
        dev=(root / ".tenantkit" / "dev").exists(), environment=environment,
        tenant_settings=tenant_settings, tenant_settings_text=tenant_settings_text, tls=tls,
        engine=engine, swarm=swarm,
    )


def check_replicas(value: Any) -> int:
    return check_count(value, 0, 100)


def check_proxy_replicas(value: Any) -> int | None:
    """A number of proxy tasks, or `global`: one on every node (returned as None)."""
    if value == "global":
        return None
    try:
        return check_count(value, 1, 100)
    except ValueError:
        raise ValueError(f"{value!r} is neither a number of tasks from 1 to 100 nor `global`") from None


REGISTRY_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9._-]+)*$")


def check_registry(value: Any) -> str:
    if not isinstance(value, str) or not REGISTRY_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a registry such as registry.example.com:5000 or 127.0.0.1:5055")
    return value


def _swarm_config(top: "Fields") -> Swarm:
    section = top.section("swarm")
    storage = section.section("storage")
    options = storage.get("options", _options, None)
    driver = storage.get("driver", check_name_like_driver, "local")
    storage.done()
    swarm = Swarm(
        endpoint_mode=section.get("endpoint_mode", _one_of(["vip", "dnsrr"]), Swarm.endpoint_mode),
        registry=section.get("registry", check_registry, None),
        storage=Storage(driver, Storage.options if options is None and driver == "local" else (options or ())),
        update_monitor=section.get("update_monitor", lambda v: check_count(v, 1, 600), Swarm.update_monitor),
        health_interval=section.get("health_interval", lambda v: check_count(v, 1, 600), Swarm.health_interval),
    )
    section.done()
    return swarm


def check_name_like_driver(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:-]*", value):
        raise ValueError(f"{value!r} is not a volume driver name such as local")
    return value


def _options(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in value.items()):
        raise ValueError("give a mapping of driver option names to values, such as {type: nfs, o: 'addr=10.0.0.5,rw'}")
    return tuple((k, str(v)) for k, v in value.items())


def check_ip(value: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address such as 127.0.0.1 (or 0.0.0.0 for every address)") from None


def check_url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/%-]*)?", value):
        raise ValueError(f"{value!r} is not a URL such as {LETS_ENCRYPT}")
    return value


def check_email(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+", value):
        raise ValueError(f"{value!r} is not an e-mail address such as ops@example.com")
    return value


def _existing_file(root: Path, section: Fields, key: str) -> Path | None:
    value = section.get(key, check_text, None)
    if value is None:
        return None
    path = root / value
    if not path.is_file():
        raise section.error(key, f"{display_path(path)} does not exist; name a PEM file of certificates")
    return path


def _backups_config(top: Fields) -> tuple[str, int | None]:
    """`backups: FOLDER` (as it always was), or `backups: {folder: FOLDER, keep: N}`: the
    folder, and how many archives of each tenant retention keeps (None: every one)."""
    if not isinstance(top.data.get("backups"), dict):
        return top.get("backups", check_text, "backups"), None
    section = top.section("backups")
    folder = section.get("folder", check_text, "backups")
    keep = section.get("keep", lambda v: check_count(v, 1, 100000), None)
    section.done()
    return folder, keep


def _one_of(choices):
    def checked(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return checked


def check_name_like(value: Any) -> str:
    """A compose project name: lowercase letters, digits, '-' and '_'."""
    if not isinstance(value, str) or not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", value):
        raise ValueError(f"{value!r} is not a lowercase name such as tenantkit")
    return value


def default_pool(project_name: str) -> ipaddress.IPv4Network:
    """A /16 of 10.128.0.0/9 derived from the project's name, so that two projects on one
    engine rarely start out overlapping (and are refused, with the fix, when they do)."""
    second = 128 + int(hashlib.sha256(project_name.encode()).hexdigest(), 16) % 112
    return ipaddress.IPv4Network(f"10.{second}.0.0/16")


def check_pool(value: Any) -> ipaddress.IPv4Network:
    """A private IPv4 range for tenant networks, such as 10.213.0.0/16."""
    try:
        network = ipaddress.IPv4Network(str(value), strict=True)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 network such as 10.213.0.0/16") from None
    if not network.is_private:
        raise ValueError(f"{value!r} is not a private range; use one of 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16")
    return network


def check_host_or_service(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[a-z0-9][a-z0-9.-]*", value):
        return value
    raise ValueError(f"{value!r} is not a host name")


def check_port_any(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port number")
    return value


def load_tenant(project: Project, name: str) -> Tenant:
    """Load and validate tenants/NAME/tenant.yaml."""
    try:
        check_name(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    folder = project.tenant_dir(name)
    path = folder / TENANT_FILE
    if not path.is_file():
        raise ConfigError(f"unknown tenant {name!r}: {display_path(path)} does not exist; see `tenant list`")
    data, lines = read_yaml(path)
    return tenant_from_mapping(project, name, data, lines, path, folder)


def tenant_from_mapping(project: Project, name: str, data: dict, lines: dict[str, int], path: Path,
                        folder: Path) -> Tenant:
    """Validate a parsed tenant.yaml (from the tenant folder, or from an archive)."""
    f = Fields(path, data, lines)
    declared = f.get("name", check_name, name)
    if declared != name:
        raise f.error("name", f"{declared!r} does not match its folder {name!r}")
    hosts = f.get("hosts", _list_of(check_host), required=True)
    if not hosts:
        raise f.error("hosts", "needs at least one host name")
    tenant = Tenant(
        name=name,
        hosts=hosts,
        title=f.get("title", check_title, name.title()),
        port=f.get("port", check_port, required=True),
        memory=f.get("memory", check_memory, project.defaults.memory),
        workers=f.get("workers", check_count, project.defaults.workers),
        threads=f.get("threads", check_count, project.defaults.threads),
        apps=f.get("apps", _list_of(check_module), ()),
        maintenance=f.get("maintenance", _bool, False),
        enabled=f.get("enabled", _bool, True),
        release=f.get("release", check_release, None),
        cpus=f.get("cpus", check_cpus, project.defaults.cpus),
        debug=f.get("debug", _bool, False),
        removing=f.get("removing", check_text, None),
        processes=f.get("processes", check_processes, ()),
        schedule=f.get("schedule", check_schedule, ()),
        replicas=f.get("replicas", check_replicas, 1),
        project_code=project.tenant_code,
        path=folder,
    )
    tenant = _tenant_tls(f, tenant)
    db = f.section("database")
    tenant = replace(tenant, database=db.get("name", check_db_identifier, None),
                     db_user=db.get("user", check_db_identifier, None))
    db.done()
    f.done()
    return tenant


def _tenant_tls(f: Fields, tenant: Tenant) -> Tenant:
    """tenant.yaml `tls: off | auto | {cert: FILE, key: FILE}` (files relative to the tenant
    folder; act/certificates.py checks them before the proxy uses them)."""
    if isinstance(f.data.get("tls"), dict):
        section = f.section("tls")
        cert, key = section.get("cert", check_text, required=True), section.get("key", check_text, required=True)
        section.done()
        return replace(tenant, tls=None, tls_cert=cert, tls_key=key)
    f.seen.add("tls")
    if "tls" in f.data and f.data["tls"] is not None:
        try:
            return replace(tenant, tls=check_tls_mode(f.data["tls"]))
        except ValueError as exc:
            raise f.error("tls", str(exc)) from None
    return tenant


RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_release(value: Any) -> str:
    """A release version: it becomes an image tag, so letters, digits, '.', '_' and '-'."""
    value = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(value, str) or not RELEASE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a release version such as 1.2.0 (letters, digits, . _ -)")
    return value


def check_db_identifier(value: Any) -> str:
    """An existing PostgreSQL database or role name (imported tenants)."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}", value):
        raise ValueError(f"{value!r} is not a PostgreSQL identifier")
    return value


def _tenant_files(project: Project) -> list[tuple[str, os.stat_result]]:
    """(name, stat of its tenant.yaml) of every folder under tenants/ that holds one, sorted."""
    try:
        entries = sorted(os.scandir(project.tenants_dir), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            found.append((entry.name, os.stat(os.path.join(entry.path, TENANT_FILE))))
        except (FileNotFoundError, NotADirectoryError):
            pass
    return found


def tenant_folder_names(project: Project) -> list[str]:
    """Names of the folders under tenants/ that hold a tenant.yaml, sorted."""
    return [name for name, _ in _tenant_files(project)]


TENANT_FIELDS = ("name", "hosts", "title", "port", "memory", "workers", "threads", "apps", "maintenance",
                 "enabled", "release", "database", "db_user", "cpus", "debug", "removing", "project_code",
                 "tls", "tls_cert", "tls_key", "processes", "schedule", "replicas")


def _tenant_record(tenant: Tenant) -> dict:
    return {key: getattr(tenant, key) for key in TENANT_FIELDS}


def _tenant_from_record(project: Project, record: dict, tenants_dir: Path) -> Tenant:
    record = dict(record, hosts=tuple(record["hosts"]), apps=tuple(record["apps"]),
                  processes=tuple(map(tuple, record["processes"])), schedule=tuple(map(tuple, record["schedule"])))
    return Tenant(**record, path=tenants_dir.joinpath(record["name"]))


def load_tenants(project: Project) -> list[Tenant]:
    """Load every tenant and check that no two claim the same host or port.

    A tenant.yaml unchanged since the last load (same size and mtime) is taken from
    .tenantkit/cache/tenants.json instead of being parsed and validated again, so a fleet
    of thousands loads in milliseconds. The cache only saves work: it is keyed by the
    project's defaults too, and deleting it is always safe.
    """
    cache_path = project.cache_dir / "tenants.json"
    key = hashlib.sha256(f"{project.defaults!r}\0{project.tenant_code}".encode()).hexdigest()[:16]
    try:
        cache = json.loads(cache_path.read_text())
        entries = cache["tenants"] if cache.get("key") == key else {}
    except (OSError, ValueError, KeyError, TypeError):
        entries = {}
    fresh: dict[str, dict] = {}
    tenants = []
    for name, stat in _tenant_files(project):
        stamp = [stat.st_mtime_ns, stat.st_size]
        entry = entries.get(name)
        if entry is not None and entry["stamp"] == stamp:
            tenant = _tenant_from_record(project, entry["tenant"], project.tenants_dir)
        else:
            tenant = load_tenant(project, name)
        fresh[name] = {"stamp": stamp, "tenant": _tenant_record(tenant)}
        tenants.append(tenant)
    check_unique(tenants, project)
    if fresh != entries:
        _write_cache(cache_path, {"key": key, "tenants": fresh})
    return tenants


def _write_cache(path: Path, data: dict) -> None:
    """Write a cache file atomically; a cache that cannot be written is only a lost saving."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        pass


# PostgreSQL's own databases and roles, and role names it refuses: no tenant may use one.
RESERVED_DB_NAMES = frozenset({"postgres", "template0", "template1", "public", "none", "current_user",
                               "session_user", "current_role", "all"})


def check_database_identity(project: Project | None, tenant: Tenant, others: Iterable[Tenant] = ()) -> None:
    """Refuse a tenant whose database or role is the server's admin, one of PostgreSQL's own,
    or another tenant's: tenantkit changes that role's password and privileges."""
    names = tenant.names
    where = f"tenant {tenant.name!r}: database {{kind}} {{value!r}}"
    for kind, value in (("name", names.database), ("user", names.role)):
        lowered = value.lower()
        admin = project.database.admin_user.lower() if project is not None else None
        if lowered == admin or lowered in RESERVED_DB_NAMES or lowered.startswith("pg_"):
            raise ConfigError(where.format(kind=kind, value=value) + " is the server's own (admin or reserved); "
                              "a tenant needs a database and role of its own: remove `database:` from its "
                              "tenant.yaml, or name ones no one else uses")
    for other in others:
        if other.name == tenant.name:
            continue
        theirs = other.names
        for kind, value, taken in (("name", names.database, theirs.database), ("user", names.role, theirs.role)):
            if value == taken:
                raise ConfigError(where.format(kind=kind, value=value) + f" is already tenant {other.name!r}'s; "
                                  "every tenant needs a database and role of its own")


def reserved_ports(project: Project) -> dict[int, str]:
    """Ports tenantkit publishes for itself on 127.0.0.1: no tenant may take one."""
    ports = ({project.proxy.port: "the proxy's", project.proxy.tls_port: "the proxy's HTTPS"}
             if project.proxy.mode is ProxyMode.COMPOSE else {})
    if project.database.service:
        ports[project.database.publish_port] = "the database's"
    return ports


def check_unique(tenants: list[Tenant], project: Project | None = None) -> None:
    """Refuse two tenants that share a host, a published port, a database or a role (and,
    given the project, a tenant on one of the project's own ports, or whose database or
    role is the server's own)."""
    hosts: dict[str, str] = {}
    ports: dict[int, str] = {}
    reserved = reserved_ports(project) if project is not None else {}
    databases: dict[str, Tenant] = {}
    roles: dict[str, Tenant] = {}
    for tenant in tenants:
        if project is not None and project.tls_of(tenant) == TLS_AUTO and not project.tls.acme_email:
            raise ConfigError(f"tenant {tenant.name!r} has tls: auto, and an ACME account needs a contact: set "
                              "tls.acme.email in tenantkit.yaml")
        if tenant.port in reserved:
            raise ConfigError(f"tenant {tenant.name!r}: port {tenant.port} is {reserved[tenant.port]} (tenantkit.yaml); "
                              f"change `port` in tenants/{tenant.name}/tenant.yaml")
        names = tenant.names
        clash = databases.get(names.database) or roles.get(names.role)
        if clash is not None:
            check_database_identity(None, tenant, [clash])
        databases[names.database] = roles[names.role] = tenant
        if project is not None and (tenant.database or tenant.db_user):
            check_database_identity(project, tenant)
        for host in tenant.hosts:
            if host in hosts and hosts[host] != tenant.name:
                raise ConfigError(
                    f"host {host!r} is claimed by both {hosts[host]!r} and {tenant.name!r}; "
                    f"remove it from one tenant.yaml")
            hosts[host] = tenant.name
        if tenant.port in ports:
            raise ConfigError(
                f"port {tenant.port} is claimed by both {ports[tenant.port]!r} and {tenant.name!r}; "
                f"change it in one tenant.yaml")
        ports[tenant.port] = tenant.name


def check_hosts_free(hosts: Iterable[str], others: Iterable[Tenant], except_name: str | None = None) -> None:
    """Refuse a host another tenant already answers on."""
    wanted = set(hosts)
    for other in others:
        clash = wanted & set(other.hosts) if other.name != except_name else set()
        if clash:
            raise ConfigError(f"host {sorted(clash)[0]!r} is already used by tenant {other.name!r}; "
                              "choose another host name")

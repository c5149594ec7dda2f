"""The runtime state every tenant process shares, as typed dataclasses in one file.

.tenantkit/state.json holds what tenant.yaml does not: the releases and which is
current, what each tenant runs and ran before, where the proxy routes it (its own
container, or a deploy's "next" one), and each tenant network's subnet. It is written
atomically, and only by `update()`, which holds the project lock while it reads,
changes and writes, so two `tenant` processes never lose each other's changes.
"""
from __future__ import annotations

import ipaddress
import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator

from ..model import SLOTS, ConfigError, Project, Tenant, display_path
from .files import atomic_write, locked

VERSION = 1


@dataclass(frozen=True)
class Release:
    version: str
    image: str
    digest: str
    revision: str | None
    built: str


@dataclass(frozen=True)
class TenantRuntime:
    """What one tenant runs and how it is reached."""

    release: str | None = None     # deployed to it (a pin in tenant.yaml wins)
    previous: str | None = None    # what it ran before its last deploy: `rollback` returns there
    previous_image: str | None = None  # the image it ran before a first deploy (no release yet)
    image: str | None = None       # an image it runs instead of a release: rolled back past its first deploy
    backup: str | None = None      # the archive taken just before its last deploy (None: no schema change)
    slot: str | None = None        # the slot ("a" or "b") its service's container runs in (None: "a")
    route: str | None = None       # the slot the proxy sends its traffic to, when not `slot` (a deploy's switch)
    subnet: str | None = None      # its network's subnet, allocated once and kept

    @property
    def live_slot(self) -> str:
        return self.slot or SLOTS[0]

    @property
    def routed_slot(self) -> str:
        return self.route or self.live_slot

    @property
    def switching(self) -> bool:
        """A deploy started a container in the other slot and has not finished moving to it."""
        return self.routed_slot != self.live_slot


def other_slot(slot: str) -> str:
    return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]


@dataclass
class State:
    current: str | None = None
    releases: dict[str, Release] = field(default_factory=dict)
    tenants: dict[str, TenantRuntime] = field(default_factory=dict)

    def runtime(self, name: str) -> TenantRuntime:
        return self.tenants.get(name, TenantRuntime())

    def set_runtime(self, name: str, **changes) -> TenantRuntime:
        self.tenants[name] = replace(self.runtime(name), **changes)
        return self.tenants[name]

    def release_of(self, tenant: Tenant) -> str | None:
        """The release a tenant runs: its pin, else what was deployed to it, else current."""
        return tenant.release or self.runtime(tenant.name).release or self.current

    def to_json(self) -> str:
        # vars(), not asdict(): the fields are flat, and a fleet has thousands of them.
        data = {"version": VERSION, "current": self.current,
                "releases": {k: vars(v) for k, v in sorted(self.releases.items())},
                "tenants": {k: vars(v) for k, v in sorted(self.tenants.items())}}
        # Compact: json's C encoder only serves documents without indentation.
        return json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "State":
        data = json.loads(text)
        return cls(current=data.get("current"),
                   releases={k: Release(**v) for k, v in data.get("releases", {}).items()},
                   tenants={k: _runtime(v) for k, v in data.get("tenants", {}).items()})


_RUNTIME_FIELDS = set(TenantRuntime.__dataclass_fields__)


def _runtime(record: dict) -> TenantRuntime:
    """A tenant's runtime record; fields an older tenantkit wrote and this one dropped
    (a deploy's `next_backend`) are ignored."""
    return TenantRuntime(**{k: v for k, v in record.items() if k in _RUNTIME_FIELDS})


def load(project: Project) -> State:
    """The stored state (empty when none was written yet). Reading needs no lock."""
    path = project.state_file
    try:
        return State.from_json(path.read_text())
    except FileNotFoundError:
        return State()
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{display_path(path)} is damaged ({exc}); restore it from a backup") from None


@contextmanager
def update(project: Project) -> Iterator[State]:
    """Read, change and write the state under the project lock (re-entrant)."""
    with locked(project):
        state = load(project)
        before = state.to_json()
        yield state
        text = state.to_json()
        if text != before:
            atomic_write(project.state_file, text)


def release_image(project: Project, version: str) -> str:
    return f"{project.images.app}:{version}"


def listed(releases) -> str:
    """The release versions, for a message: "1.0, 1.1", or "none yet"."""
    return ", ".join(sorted(releases)) or "none yet"


def image_for(project: Project, state: State, tenant: Tenant, source_image: str) -> str:
    """The image a tenant's container runs. Dev mode and projects without releases run the
    working tree's image."""
    if project.dev:
        return source_image
    runtime = state.runtime(tenant.name)
    if runtime.image and not tenant.release and not runtime.release:
        return runtime.image
    version = state.release_of(tenant)
    return release_image(project, version) if version else source_image


# ---------------------------------------------------------------------------
# Network allocations

def check_pool(project: Project, foreign: list[ipaddress.IPv4Network]) -> None:
    """Refuse a pool that overlaps `foreign`: the subnets of engine networks that are not
    this project's. Checked before any network is created."""
    pool = project.networks.pool
    clash = [net for net in foreign if net.overlaps(pool)]
    if clash:
        raise ConfigError(f"networks.pool {pool} overlaps the engine network {clash[0]} that tenantkit "
                          "does not own; set another private range as networks.pool in tenantkit.yaml")


def allocate_subnets(project: Project, state: State, names: list[str]) -> None:
    """Give each named tenant that has none the lowest free subnet of the pool; a tenant
    keeps its subnet for as long as it exists."""
    missing = [name for name in names if not state.runtime(name).subnet]
    if not missing:
        return
    pool = project.networks
    taken = {rt.subnet for rt in state.tenants.values() if rt.subnet}
    index = 0
    for name in missing:
        while index < pool.capacity and str(pool.subnet(index)) in taken:
            index += 1
        if index >= pool.capacity:
            raise ConfigError(f"networks.pool {pool.pool} has no free /{pool.prefix} left for tenant {name!r}; "
                              "set a larger networks.pool (or a longer networks.prefix) in tenantkit.yaml")
        subnet = str(pool.subnet(index))
        state.set_runtime(name, subnet=subnet)
        taken.add(subnet)

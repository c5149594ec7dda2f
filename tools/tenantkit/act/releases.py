"""The release state: which releases exist, which is current, which tenant runs which.

Kept in .tenantkit/releases.json, written atomically under the project lock.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..model import ConfigError, Project, Tenant, display_path
from .files import atomic_write


@dataclass
class ReleaseState:
    current: str | None = None
    releases: dict[str, dict] = field(default_factory=dict)  # version -> image, digest, revision, built
    tenants: dict[str, dict] = field(default_factory=dict)   # name -> release, previous, backup

    def release_of(self, tenant: Tenant) -> str | None:
        """The release a tenant runs: its pin, else what was deployed to it, else current."""
        return tenant.release or self.tenants.get(tenant.name, {}).get("release") or self.current


def load_state(project: Project) -> ReleaseState:
    path = project.releases_file
    if not path.exists():
        return ReleaseState()
    try:
        return ReleaseState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{display_path(path)} is damaged ({exc}); restore it from a backup") from None


def save_state(project: Project, state: ReleaseState) -> None:
    atomic_write(project.releases_file, json.dumps(asdict(state), indent=2, sort_keys=True) + "\n")


def release_image(project: Project, version: str) -> str:
    return f"{project.images.app}:{version}"


def image_for(project: Project, state: ReleaseState, tenant: Tenant, source_image: str) -> str:
    """The image a tenant's container runs. Dev mode and projects without releases run the
    working tree's image."""
    if project.dev:
        return source_image
    version = state.release_of(tenant)
    return release_image(project, version) if version else source_image

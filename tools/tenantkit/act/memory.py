"""Memory of tenant containers, from the kernel's own accounting (the container's cgroup):
what is in use, its peak, the limit, and how many processes the kernel killed for lack
of memory since the container started, workers included.

The engine only reports a kill of the container's first process (State.OOMKilled); a
gunicorn worker that the kernel kills is restarted by gunicorn, the container stays up
and healthy, and the only trace is a line in its output. The cgroup counts every kill.

Read from /sys/fs/cgroup on the engine's host: a few small files per container, so
`tenant list` can show it for a whole fleet. Both cgroup versions, and Docker's two
cgroup drivers (cgroupfs and systemd), are handled; where none can be read (an engine on
another host) the figures are None and the caller falls back to the engine's stats.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
UNLIMITED = 2**62  # cgroup v1 reports "no limit" as a huge number


@dataclass(frozen=True)
class Memory:
    used: int | None  # bytes in use, without the page cache the kernel can drop (as `docker stats`)
    peak: int | None  # the most it used since it started, page cache included
    limit: int | None
    oom_kills: int | None  # processes the kernel killed for lack of memory since it started

    def to_dict(self) -> dict:
        mib = {key: None if value is None else round(value / 2**20, 1)
               for key, value in asdict(self).items() if key != "oom_kills"}
        return {"used_mib": mib["used"], "peak_mib": mib["peak"], "limit_mib": mib["limit"],
                "oom_kills": self.oom_kills}


def _folder(container_id: str) -> tuple[Path, int] | None:
    """The container's memory cgroup folder and the cgroup version."""
    for folder, version in ((CGROUP / "memory" / "docker" / container_id, 1),
                            (CGROUP / "memory" / "system.slice" / f"docker-{container_id}.scope", 1),
                            (CGROUP / "system.slice" / f"docker-{container_id}.scope", 2),
                            (CGROUP / "docker" / container_id, 2)):
        if folder.is_dir():
            return folder, version
    return None


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


def _fields(path: Path) -> dict[str, int]:
    """`key value` lines (memory.stat, memory.events, memory.oom_control)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value) for key, _, value in (line.partition(" ") for line in lines) if value.isdigit()}


def read(container_id: str) -> Memory | None:
    """The container's memory, or None when its cgroup cannot be read here."""
    found = _folder(container_id)
    if found is None:
        return None
    folder, version = found
    stat = _fields(folder / "memory.stat")
    if version == 1:
        usage = _number(folder / "memory.usage_in_bytes")
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        peak = _number(folder / "memory.max_usage_in_bytes")
        limit = _number(folder / "memory.limit_in_bytes")
        kills = _fields(folder / "memory.oom_control").get("oom_kill")
    else:
        usage = _number(folder / "memory.current")
        inactive = stat.get("inactive_file", 0)
        peak = _number(folder / "memory.peak")
        limit = _number(folder / "memory.max")
        kills = _fields(folder / "memory.events").get("oom_kill")
    if usage is None:  # the container stopped meanwhile
        return None
    return Memory(used=max(usage - inactive, 0), peak=peak,
                  limit=None if limit is None or limit >= UNLIMITED else limit, oom_kills=kills)


def from_stats(stats: dict) -> Memory:
    """The engine's figures (`docker stats`), for an engine whose cgroups are elsewhere:
    no peak on cgroup v2, and no count of kills."""
    memory = stats.get("memory_stats", {})
    inner = memory.get("stats", {})
    inactive = inner.get("total_inactive_file", inner.get("inactive_file", 0))
    usage = memory.get("usage")
    return Memory(used=None if usage is None else max(usage - inactive, 0), peak=memory.get("max_usage"),
                  limit=memory.get("limit"), oom_kills=None)


def summary(memory: Memory | None) -> str:
    """`47/256MiB, peak 80`, and the kills when there were any: `50/256MiB, peak 256, 3 OOM kills`."""
    if memory is None or memory.used is None:
        return "-"
    used = f"{memory.used / 2**20:.0f}"
    text = f"{used}/{memory.limit / 2**20:.0f}MiB" if memory.limit else f"{used}MiB"
    if memory.peak is not None:
        text += f", peak {memory.peak / 2**20:.0f}"
    if memory.oom_kills:
        text += f", {memory.oom_kills} OOM kill{'s' if memory.oom_kills > 1 else ''}"
    return text


def advice(name: str, oom_kills: int | None, limit: str, tool: str = "tenant") -> tuple[str, str] | None:
    """What to say about kills: the problem, naming the tenant and the count, and the fix."""
    if not oom_kills:
        return None
    return (f"{name}: the kernel killed {oom_kills} process{'es' if oom_kills > 1 else ''} of it for lack of memory "
            f"since it started (limit {limit}); the requests they served failed",
            f"give it more: {tool} set {name} memory={_double(limit)}, then {tool} up {name}")


def _double(limit: str) -> str:
    number, unit = int(limit[:-1]), limit[-1]
    return f"{number * 2}{unit}"

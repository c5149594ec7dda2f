"""Run each tenant's scheduled manage.py commands, each in a one-off copy of its web container.

One scheduler per installation: `python scheduler.py /etc/tenantkit/schedule.json`. It has
no network and holds no tenant secret. For a due job it asks the engine (through the
mounted Docker socket) for a new container cloned from the tenant's running web
container: the same image, environment, user, mounts, limits, lock-down and network. So
a job runs in exactly its tenant's context, with its tenant's limits, and nothing else;
the engine does the mounts, the scheduler only names them.

schedule.json (written by tenantkit, re-read when it changes):

    {"project": "tenantkit", "log_dir": "/var/log/tenantkit", "max_parallel": 10,
     "tenants": {"acme": {"service": "tenant-acme",
       "jobs": [{"id": "3f2a9c1b0d", "cron": "*/5 * * * *", "command": ["clearsessions"]}]}}}

Times are UTC. A cron has five fields, or six with seconds last (croniter's form).

Each run, skip or failure appends one JSON line to `<log_dir>/<tenant>.schedule.log`.
A job never runs twice at once, also across scheduler restarts: job containers carry the
label tenantkit.job=<tenant>/<id>, and a starting scheduler adopts the ones it finds.

Standalone on purpose (stdlib, docker, croniter): it runs in its own small image, not in
the tenants' one. The pure parts (loading the schedule, due times, records, the clone of
a container's settings) are plain functions, unit-tested without an engine.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import docker
import requests
from croniter import croniter

PROJECT_LABEL = "tenantkit.project"  # a job container's installation
TENANT_LABEL = "tenantkit.tenant"
JOB_LABEL = "tenantkit.job"  # <tenant>/<id>: what "the same job" means, also across restarts
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"

TICK = 1.0  # the loop wakes at least this often (seconds)
STOP_WAIT = 10.0  # on SIGTERM, how long running jobs' threads get to report their end
OUTPUT_LINES = 20  # the end of a run's output kept in its record
DEFAULT_PARALLEL = 10  # job containers at once: 1,000 tenants' */5 jobs would otherwise start together
ADOPT_RETRY = 10.0  # seconds between attempts to find running jobs while the engine does not answer

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # tenant names and job ids: they reach file and container names


class ScheduleError(ValueError):
    """schedule.json cannot be used; the message says what to fix."""


class Status(str, Enum):
    OK = "ok"
    FAILED = "failed"  # the command ran and exited non-zero
    SKIPPED = "skipped"  # due while its previous run was still running
    NOT_RUNNING = "not-running"  # the tenant has no running web container to clone
    ERROR = "error"  # the engine refused something; the message says what


@dataclass(frozen=True)
class Job:
    tenant: str
    service: str
    id: str
    cron: str
    command: tuple[str, ...]

    @property
    def key(self) -> str:
        """The job's identity: also its containers' tenantkit.job label."""
        return f"{self.tenant}/{self.id}"


@dataclass(frozen=True)
class Schedule:
    project: str
    log_dir: Path
    jobs: tuple[Job, ...] = ()
    max_parallel: int = DEFAULT_PARALLEL


# ---------------------------------------------------------------------------
# Pure parts: the schedule, due times, records, and the clone of a container's settings.

def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ScheduleError(message)


def _job(tenant: str, service: str, index: int, entry: Any) -> Job:
    where = f"tenants.{tenant}.jobs[{index}]"
    _require(isinstance(entry, dict), f"{where} must be an object with id, cron and command")
    job_id, cron, command = entry.get("id"), entry.get("cron"), entry.get("command")
    _require(isinstance(job_id, str) and bool(NAME.match(job_id)), f"{where}.id must be letters, digits, '_.-'")
    # croniter also takes seven fields (a year); tenantkit writes five or six.
    _require(isinstance(cron, str) and len(cron.split()) in (5, 6) and croniter.is_valid(cron),
             f"{where}.cron {cron!r} is not a cron expression of 5 fields (or 6, seconds last)")
    _require(isinstance(command, list) and bool(command) and all(isinstance(a, str) and a for a in command),
             f"{where}.command must be a non-empty list of manage.py arguments")
    return Job(tenant, service, job_id, " ".join(cron.split()), tuple(command))


def parse_schedule(data: Any) -> Schedule:
    """Validate schedule.json's content; raise ScheduleError on the first problem."""
    _require(isinstance(data, dict), "the schedule must be a JSON object")
    project, log_dir, tenants = data.get("project"), data.get("log_dir"), data.get("tenants", {})
    parallel = data.get("max_parallel", DEFAULT_PARALLEL)
    _require(isinstance(project, str) and bool(project), "project must be the compose project's name")
    _require(isinstance(log_dir, str) and log_dir.startswith("/"), "log_dir must be an absolute path")
    _require(isinstance(tenants, dict), "tenants must be an object of tenant name: {service, jobs}")
    _require(type(parallel) is int and parallel > 0, "max_parallel must be a positive integer")
    jobs: list[Job] = []
    for tenant, spec in tenants.items():
        _require(bool(NAME.match(tenant)), f"tenant name {tenant!r} must be letters, digits, '_.-'")
        _require(isinstance(spec, dict) and isinstance(spec.get("service"), str) and bool(spec["service"]),
                 f"tenants.{tenant} must name its compose service")
        entries = spec.get("jobs", [])
        _require(isinstance(entries, list), f"tenants.{tenant}.jobs must be a list")
        jobs += [_job(tenant, spec["service"], index, entry) for index, entry in enumerate(entries)]
    keys = [job.key for job in jobs]
    _require(len(set(keys)) == len(keys), "a job id appears twice for one tenant")
    return Schedule(project, Path(log_dir), tuple(jobs), parallel)


def load_schedule(path: Path) -> Schedule:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ScheduleError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ScheduleError(f"{path} is not valid JSON: {exc}") from None
    return parse_schedule(data)


def next_time(cron: str, after: float) -> float:
    """The first time strictly after `after` (a Unix time) that `cron` matches, in UTC."""
    return croniter(cron, datetime.fromtimestamp(after, timezone.utc)).get_next(datetime).timestamp()


def advance(jobs: Iterable[Job], next_due: Mapping[str, float], now: float) -> tuple[list[Job], dict[str, float]]:
    """The jobs due at `now`, and every job's next due time after this tick.

    A job keeps its due time across reloads while its key is unchanged; a new one is first
    due at its next match after now, not at once. The next time is computed from the
    previous due time (so a late wake does not shift the series), but a backlog is never
    caught up: if that time has passed too, the job runs once and continues from now.
    Jobs no longer in the schedule drop out.
    """
    due: list[Job] = []
    updated: dict[str, float] = {}
    for job in jobs:
        when = next_due.get(job.key)
        if when is None:
            updated[job.key] = next_time(job.cron, now)
            continue
        if when <= now:
            due.append(job)
            when = next_time(job.cron, when)
            if when <= now:
                when = next_time(job.cron, now)
        updated[job.key] = when
    return due, updated


PER_TENANT = 4  # runs of one tenant's jobs at a time: one tenant's slow jobs never hold every slot


def plan(due: Iterable[Job], running: Iterable[str], per_tenant: int = PER_TENANT) -> tuple[list[Job], list[Job]]:
    """(to start, to skip): a job whose previous run (key) is still running is skipped, and
    so is one of a tenant that has `per_tenant` runs going already."""
    busy = set(running)
    counts: dict[str, int] = {}
    for key in busy:
        tenant = key.partition("/")[0]
        counts[tenant] = counts.get(tenant, 0) + 1
    start: list[Job] = []
    skip: list[Job] = []
    for job in due:
        if job.key in busy or counts.get(job.tenant, 0) >= per_tenant:
            skip.append(job)
            continue
        start.append(job)
        busy.add(job.key)
        counts[job.tenant] = counts.get(job.tenant, 0) + 1
    return start, skip


def iso(moment: float | None) -> str | None:
    """ISO-8601 in UTC, to the millisecond: what Python's datetime.fromisoformat reads back."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="milliseconds")


def record(job_id: str, cron: str | None, command: Iterable[str], status: Status, start: float,
           end: float | None = None, exit_code: int | None = None, output: Iterable[str] = (),
           message: str | None = None) -> dict:
    """One line of <tenant>.schedule.log, as a dict (`message` only when there is one)."""
    entry = {"job": job_id, "cron": cron, "command": shlex.join(command), "start": iso(start),
             "end": iso(end), "exit": exit_code, "status": Status(status).value, "output": list(output)}
    if message:
        entry["message"] = message
    return entry


def record_line(entry: dict) -> bytes:
    """The record as one line of bytes, written with a single os.write."""
    return (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")


def tail_lines(output: bytes | str, count: int = OUTPUT_LINES) -> list[str]:
    text = output.decode("utf-8", errors="replace") if isinstance(output, bytes) else output
    return [line.rstrip("\r") for line in text.splitlines()][-count:]


def started_key(started_at: str) -> str:
    """An engine timestamp ("2026-01-01T10:00:00.5Z") as a string that sorts by time: the
    engine trims trailing zeros of the fraction, so raw strings do not compare."""
    whole, _, fraction = started_at.rstrip("Z").partition(".")
    return f"{whole}.{fraction.ljust(9, '0')}"


def engine_time(started_at: str) -> float:
    """An engine timestamp as a Unix time (to the microsecond)."""
    whole, _, fraction = started_at.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(whole).replace(tzinfo=timezone.utc)
    return moment.timestamp() + float(f"0.{fraction or 0}"[:8])


def _mount(entry: Mapping[str, Any]) -> docker.types.Mount:
    """A HostConfig.Mounts entry of `docker inspect` as docker-py's Mount: each type takes
    only its own options (docker-py refuses the others)."""
    kind = entry.get("Type") or "volume"
    options: dict[str, Any] = {}
    if kind == "bind":
        options["propagation"] = (entry.get("BindOptions") or {}).get("Propagation")
    elif kind == "volume":
        options["no_copy"] = bool((entry.get("VolumeOptions") or {}).get("NoCopy"))
    elif kind == "tmpfs":
        tmpfs = entry.get("TmpfsOptions") or {}
        options.update(tmpfs_size=tmpfs.get("SizeBytes"), tmpfs_mode=tmpfs.get("Mode"))
    return docker.types.Mount(target=entry["Target"], source=entry.get("Source") or None, type=kind,
                              read_only=bool(entry.get("ReadOnly")), **options)


def pick_network(networks: Mapping[str, Any], project: str, service: str) -> str | None:
    """The tenant's network: <project>_<service> when the container is on it, else its first."""
    preferred = f"{project}_{service}"
    if preferred in networks:
        return preferred
    return next(iter(networks), None)


@dataclass(frozen=True)
class Clone:
    """What a job container takes from its tenant's web container (`docker inspect`)."""
    image: str
    environment: list[str]
    user: str | None
    working_dir: str | None
    network: str | None
    host_config: dict = field(default_factory=dict)  # keyword arguments of create_host_config


def clone_settings(web: Mapping[str, Any], project: str, service: str) -> Clone:
    """The settings of a job container from its tenant's web container: the image by id (a
    rebuilt tag does not move a running tenant's jobs), environment, user, mounts, limits
    and lock-down. Not its restart policy, published ports, network aliases or labels: a
    job is not a second web container, and the proxy must never route to it."""
    config, host = web.get("Config") or {}, web.get("HostConfig") or {}
    network = pick_network((web.get("NetworkSettings") or {}).get("Networks") or {}, project, service)
    settings: dict[str, Any] = {
        "mounts": [_mount(entry) for entry in host.get("Mounts") or []] or None,
        "binds": list(host.get("Binds") or []) or None,
        "mem_limit": host.get("Memory") or None,
        "memswap_limit": host.get("MemorySwap") or None,
        "nano_cpus": host.get("NanoCpus") or None,
        "pids_limit": host.get("PidsLimit") or None,
        "cap_drop": host.get("CapDrop") or None,
        "cap_add": host.get("CapAdd") or None,
        "security_opt": host.get("SecurityOpt") or None,
        "read_only": bool(host.get("ReadonlyRootfs")),
        "tmpfs": dict(host.get("Tmpfs") or {}) or None,
        "network_mode": network,
    }
    return Clone(image=web["Image"], environment=list(config.get("Env") or []), user=config.get("User") or None,
                 working_dir=config.get("WorkingDir") or None, network=network,
                 host_config={key: value for key, value in settings.items() if value is not None})


def job_labels(project: str, job: Job) -> dict[str, str]:
    """Labels of a job container: the scheduler's own, never Compose's (Compose must not
    count it as a replica of the web service)."""
    return {PROJECT_LABEL: project, TENANT_LABEL: job.tenant, JOB_LABEL: job.key}


def job_container_name(project: str, job: Job, now: float) -> str:
    return f"{project}-job-{job.tenant}-{job.id}-{int(now)}"


def job_argv(job: Job) -> list[str]:
    return ["python", "manage.py", *job.command]


# ---------------------------------------------------------------------------
# Output: the per-tenant log and one short line on stdout per event.

LOG_LIMIT = 4 * 2**20  # bytes of a tenant's schedule log before it is rotated


def append_line(path: Path, data: bytes) -> None:
    """Append one whole line with a single write to a file opened O_APPEND, so concurrent
    writers never interleave; a file is created 0600 (the output of runs may hold what only the operator should read) whatever the umask. The file is opened
    per record, so a log rotated by renaming it is simply started anew. Past LOG_LIMIT bytes
    the log moves to NAME.1 (replacing the one before): a log never grows without end."""
    try:
        if path.stat().st_size > LOG_LIMIT:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)
    except FileExistsError:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def say(text: str) -> None:
    print(f"{iso(time.time())} {text}", flush=True)


def report(log_dir: Path, tenant: str, entry: dict) -> None:
    """Write a record to the tenant's log, and say it on stdout (`docker logs`)."""
    summary = f"{tenant}/{entry['job']} `{entry['command']}`: {entry['status']}"
    if entry["exit"] is not None:
        summary += f" (exit {entry['exit']})"
    if entry.get("message"):
        summary += f": {entry['message']}"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        append_line(log_dir / f"{tenant}.schedule.log", record_line(entry))
    except OSError as exc:
        summary += f" [not logged: {exc}]"
    say(summary)


# ---------------------------------------------------------------------------
# The engine: find the web container, run a job container, collect one that ran.

def find_web(client: docker.DockerClient, project: str, service: str) -> dict | None:
    """`docker inspect` of the service's running container; while a deploy runs two (slots
    a and b), the one started first: the one serving requests until the switch, whose code
    the schema is for (the new one may be migrating)."""
    found = client.api.containers(filters={"status": "running",
                                           "label": [f"{COMPOSE_PROJECT}={project}", f"{COMPOSE_SERVICE}={service}"]})
    inspected = [client.api.inspect_container(entry["Id"]) for entry in found]
    running = [web for web in inspected if (web.get("State") or {}).get("Running")]
    return min(running, key=lambda web: started_key(web["State"].get("StartedAt", "")), default=None)


def create_job_container(client: docker.DockerClient, clone: Clone, project: str, job: Job, now: float) -> str:
    api = client.api
    networking = None
    if clone.network and clone.network not in ("host", "none"):
        networking = api.create_networking_config({clone.network: api.create_endpoint_config()})
    created = api.create_container(
        clone.image, command=job_argv(job), environment=clone.environment, user=clone.user,
        working_dir=clone.working_dir, labels=job_labels(project, job), name=job_container_name(project, job, now),
        host_config=api.create_host_config(**clone.host_config), networking_config=networking,
        healthcheck={"Test": ["NONE"]},  # an image's health check would exec into every job for nothing
        use_config_proxy=False)
    return created["Id"]


JOB_TIMEOUT = 3600  # seconds a run may take; then it is stopped and logged as failed
WAIT_RETRIES = 3  # the engine dropping the connection while a run goes on: ask again


class TimedOut(Exception):
    """A run that went past JOB_TIMEOUT (and was stopped)."""


def collect(client: docker.DockerClient, container: str, limit: float = JOB_TIMEOUT) -> tuple[int, list[str]]:
    """Wait for a job container to end: its exit code and the end of its output. Past
    `limit` seconds it is stopped (TimedOut); a dropped connection is retried, so a run
    is never left going while it counts as ended."""
    deadline = time.monotonic() + limit
    for attempt in range(WAIT_RETRIES + 1):
        left = deadline - time.monotonic()
        try:
            exit_code = client.api.wait(container, timeout=max(1, left))["StatusCode"]
            break
        except requests.exceptions.RequestException:
            if time.monotonic() >= deadline:
                client.api.kill(container)
                raise TimedOut(f"stopped after {limit:.0f} s, its time limit") from None
            if attempt == WAIT_RETRIES:
                raise
            time.sleep(2 ** attempt)
    return exit_code, tail_lines(client.api.logs(container, stdout=True, stderr=True, tail=OUTPUT_LINES))


def remove(client: docker.DockerClient, container: str) -> None:
    try:
        client.api.remove_container(container, v=True, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.DockerException as exc:
        say(f"could not remove job container {container[:12]}: {exc}")


def describe(exc: Exception) -> str:
    """An error as one line for the log: the engine's own explanation when it gave one
    (not the request URL around it)."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return f"the engine refused: {exc.explanation}"
    return f"{type(exc).__name__}: {exc}"


def run_job(client: docker.DockerClient, project: str, job: Job) -> dict:
    """Run one job to its end in a clone of its tenant's web container; its record."""
    start = time.time()
    web = find_web(client, project, job.service)
    if web is None:
        return record(job.id, job.cron, job.command, Status.NOT_RUNNING, start,
                      message=f"no running container of service {job.service}")
    container = None
    try:
        container = create_job_container(client, clone_settings(web, project, job.service), project, job, start)
        client.api.start(container)
        start = time.time()
        try:
            exit_code, output = collect(client, container)
        except TimedOut as exc:
            output = tail_lines(client.api.logs(container, stdout=True, stderr=True, tail=OUTPUT_LINES))
            return record(job.id, job.cron, job.command, Status.FAILED, start, time.time(), None, output,
                          message=str(exc))
    finally:
        if container:
            remove(client, container)
    status = Status.OK if exit_code == 0 else Status.FAILED
    return record(job.id, job.cron, job.command, status, start, time.time(), exit_code, output)


def job_containers(client: docker.DockerClient, project: str) -> list[dict]:
    """This installation's job containers, running or not: `docker inspect` of each."""
    found = client.api.containers(all=True, filters={"label": [f"{PROJECT_LABEL}={project}", JOB_LABEL]})
    return [client.api.inspect_container(entry["Id"]) for entry in found]


def finish_adopted(client: docker.DockerClient, container: dict, cron: str | None) -> tuple[str, dict]:
    """Wait for a job container that an earlier scheduler started, remove it: (tenant, record)."""
    labels = container["Config"].get("Labels") or {}
    tenant, _, job_id = labels[JOB_LABEL].partition("/")
    argv = container["Config"].get("Cmd") or []
    command = argv[2:] if argv[:2] == ["python", "manage.py"] else argv
    state = container["State"]
    start = engine_time(state["StartedAt"]) if state.get("StartedAt") else time.time()
    try:
        exit_code, output = collect(client, container["Id"])
    finally:
        remove(client, container["Id"])
    # One that ended while no scheduler ran ended when the engine says, not now.
    end = time.time() if state.get("Running") or not state.get("FinishedAt") else engine_time(state["FinishedAt"])
    status = Status.OK if exit_code == 0 else Status.FAILED
    return tenant, record(job_id, cron, command, status, start, end, exit_code, output,
                          message="started by an earlier scheduler")


# ---------------------------------------------------------------------------
# The loop.

def engine_clients() -> Callable[[], docker.DockerClient]:
    """A maker of engine clients that asks the engine its API version once, not once per client."""
    version = None

    def connect() -> docker.DockerClient:
        nonlocal version
        client = docker.from_env(version=version)  # None: ask the engine
        version = client.api.api_version
        return client
    return connect


class Scheduler:
    """Reads the schedule, hands due jobs to threads, and tracks which jobs are busy.

    Each run has a thread of its own, and at most max_parallel of them exist: a due job
    beyond that waits in a queue (and counts as busy, so it is skipped, not queued twice),
    and a thread that ends takes the next one. Thread counts are bounded because threads
    are processes to the kernel: the scheduler's container has a pids limit.
    """

    def __init__(self, path: Path, connect: Callable[[], docker.DockerClient] | None = None):
        self.path = Path(path)
        self.connect = connect or engine_clients()  # a client per run: each waits on its own connection
        self.schedule: Schedule | None = None
        self.stamp: tuple | None = None
        self.next_due: dict[str, float] = {}
        self.busy: set[str] = set()  # job keys running or queued
        self.pending: deque[tuple[str, Callable, tuple]] = deque()
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.adopted_for: str | None = None
        self.adopt_after = 0.0

    @property
    def max_parallel(self) -> int:
        return self.schedule.max_parallel if self.schedule else DEFAULT_PARALLEL

    def reload(self) -> None:
        """Re-read the schedule when the file changed; keep the previous one if it is broken.
        Its identity includes the inode: tenantkit replaces the file atomically."""
        try:
            info = os.stat(self.path)
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        except OSError as exc:
            stamp = ("missing", str(exc))
        if stamp == self.stamp:
            return
        self.stamp = stamp
        try:
            schedule = load_schedule(self.path)
        except ScheduleError as exc:
            say(f"schedule not loaded, {'keeping the previous one' if self.schedule else 'nothing to run'}: {exc}")
            return
        self.schedule = schedule
        tenants = len({job.tenant for job in schedule.jobs})
        say(f"schedule loaded: {len(schedule.jobs)} jobs of {tenants} tenants, project {schedule.project}")

    def adopt(self, now: float) -> None:
        """Once per project: take over the job containers an earlier scheduler left. Running
        ones are busy (a thread waits for their end); ended ones are logged and removed."""
        schedule = self.schedule
        if schedule is None or self.adopted_for == schedule.project or now < self.adopt_after:
            return
        crons = {job.key: job.cron for job in schedule.jobs}
        try:
            client = self.connect()
            try:
                found = job_containers(client, schedule.project)
                for container in [c for c in found if c["State"].get("Status") == "created"]:
                    remove(client, container["Id"])  # created but never started: nothing ran, nothing to log
            finally:
                client.close()
        except docker.errors.DockerException as exc:
            say(f"cannot list job containers (retrying in {ADOPT_RETRY:.0f} s): {describe(exc)}")
            self.adopt_after = now + ADOPT_RETRY
            return
        self.adopted_for = schedule.project
        for container in [c for c in found if c["State"].get("Status") != "created"]:
            key = (container["Config"].get("Labels") or {}).get(JOB_LABEL, "")
            say(f"adopting job container {container['Name'].lstrip('/')} ({key})")
            # Never queued: the container runs already, and its end must be seen.
            self._submit(key, self._finish_adopted, (container, crons.get(key), schedule.log_dir), queue=False)

    def tick(self, now: float) -> None:
        schedule = self.schedule
        if schedule is None:
            return
        due, self.next_due = advance(schedule.jobs, self.next_due, now)
        with self.lock:
            busy = set(self.busy)  # as plan saw it: a run ending meanwhile does not change the reason
            start, skip = plan(due, busy)
        for job in skip:
            why = ("its previous run has not ended" if job.key in busy else
                   f"{PER_TENANT} of this tenant's runs have not ended")
            report(schedule.log_dir, job.tenant, record(job.id, job.cron, job.command, Status.SKIPPED, now,
                                                        message=why))
        for job in start:
            self._submit(job.key, self._run, (job, schedule))

    def _submit(self, key: str, target: Callable, args: tuple, queue: bool = True) -> None:
        with self.lock:
            self.busy.add(key)
            if queue and len(self.threads) >= self.max_parallel:
                self.pending.append((key, target, args))
                return
            # Daemon threads: a stopping scheduler leaves long jobs running; the next one adopts them.
            thread = threading.Thread(target=self._work, args=(key, target, args), name=key, daemon=True)
            self.threads.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: this run is dropped, the next due time retries
            with self.lock:
                self.threads.discard(thread)
                self.busy.discard(key)
            say(f"{key}: not started: {exc}")

    def _work(self, key: str, target: Callable, args: tuple) -> None:
        """Run `target`, then whatever waits in the queue, until it is empty or we stop."""
        while True:
            try:
                target(*args)
            except Exception as exc:  # noqa: BLE001 - targets report their own errors; this is a last resort
                say(f"{key}: {describe(exc)}")
            with self.lock:
                self.busy.discard(key)
                if not self.pending or self.stopping.is_set():
                    self.threads.discard(threading.current_thread())
                    return
                key, target, args = self.pending.popleft()

    def _run(self, job: Job, schedule: Schedule) -> None:
        start = time.time()
        try:
            client = self.connect()
            try:
                entry = run_job(client, schedule.project, job)
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 - one job's failure never ends the loop
            entry = record(job.id, job.cron, job.command, Status.ERROR, start, time.time(), message=describe(exc))
        report(schedule.log_dir, job.tenant, entry)

    def _finish_adopted(self, container: dict, cron: str | None, log_dir: Path) -> None:
        tenant, _, job_id = (container["Config"].get("Labels") or {}).get(JOB_LABEL, "").partition("/")
        try:
            client = self.connect()
            try:
                tenant, entry = finish_adopted(client, container, cron)
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001
            entry = record(job_id, cron, [], Status.ERROR, time.time(), time.time(), message=describe(exc))
        report(log_dir, tenant, entry)

    def sleep_time(self, now: float) -> float:
        """Until the next due time, and never more than TICK."""
        soonest = min(self.next_due.values(), default=now + TICK)
        return max(0.0, min(TICK, soonest - now + 0.005))

    def loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.reload()
                now = time.time()
                self.adopt(now)
                self.tick(now)
            except Exception as exc:  # noqa: BLE001 - e.g. a log folder gone: say so, keep scheduling
                say(f"scheduler: {describe(exc)}")
            self.stopping.wait(self.sleep_time(time.time()))

    def stop(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        """Stop scheduling; queued runs never start."""
        self.stopping.set()

    def wait_for_threads(self, timeout: float = STOP_WAIT) -> int:
        """Give running jobs' threads up to `timeout` to end; the number still running."""
        deadline = time.monotonic() + timeout
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in threads)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: scheduler.py /etc/tenantkit/schedule.json", file=sys.stderr)
        return 2
    scheduler = Scheduler(Path(argv[1]))
    signal.signal(signal.SIGTERM, scheduler.stop)
    signal.signal(signal.SIGINT, scheduler.stop)
    say(f"scheduler started, schedule {argv[1]}")
    scheduler.loop()
    say("stopping: no new runs")
    left = scheduler.wait_for_threads()
    say(f"stopped; {left} job(s) still running, adopted by the next start" if left else "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

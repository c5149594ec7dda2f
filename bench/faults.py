"""Fault figures: what tenants behind the compose proxy see when a part of the stack fails.

Three tenants answer a steady load through the proxy (GET / with each tenant's Host
header, --rate requests per second each), while this script, with no `tenant` command
in between (issue "Hardening", "Faults the stack must survive"):
  1. restarts the database container: failed requests that started more than 5 s after
     the database answered again (target 0), and those during the outage (informative);
  2. kills the gunicorn master of one tenant (kill -9 of the container's pid 1, from the
     host): seconds until that tenant answers 200 again by itself, and failed requests on
     the other tenants meanwhile (target 0);
  3. restarts the proxy container: seconds until every tenant answers through it again;
  4. only with --engine-restart, since it disrupts every other user of the engine: stops
     and starts dockerd the way tools/setup-docker starts it, then seconds until every
     tenant answers through the proxy again.
Then a table: FAULT, FIGURE, TARGET, MET. It exits 0 when a target is missed: the
figures are the result.

    python bench/faults.py [--rate 20] [--observe 20] [--engine-restart]
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from common import REPO, bench_project, cli
from tenantkit.act.database import admin_connect
from tenantkit.model import load_project

TENANTS = ["fa", "fb", "fc"]
BACK_TIMEOUT = 180  # seconds a tenant may take to come back before the fault counts as missed
GRACE = 5  # seconds after the database answers again from which no request may fail


@dataclass
class Sample:
    started: float
    ended: float
    tenant: str
    outcome: str  # "200", another status, or the exception's name

    @property
    def ok(self) -> bool:
        return self.outcome == "200"


def get(port: int, host: str) -> str:
    """One GET / through the proxy: the status, or the name of what went wrong."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        conn.close()
        return str(response.status)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__


class Load:
    """Threads sending GET / to each tenant through the proxy at a steady rate, recording
    every request's start, tenant and outcome. A few threads per tenant, so one hung request
    does not stop that tenant's samples. A tenant in `quiet` is sent nothing for a while."""

    def __init__(self, port: int, names: list[str], rate: float, threads_per_tenant: int = 4):
        self.port, self.samples, self.lock = port, [], threading.Lock()
        self.stopping, self.quiet = threading.Event(), set()
        period = threads_per_tenant / rate  # each thread's; the tenant's threads start staggered
        self.threads = [threading.Thread(target=self._run, args=(name, period, i / rate), daemon=True)
                        for name in names for i in range(threads_per_tenant)]

    def _run(self, name: str, period: float, offset: float) -> None:
        next_at = time.monotonic() + offset
        while not self.stopping.wait(max(0.0, next_at - time.monotonic())):
            next_at = max(next_at + period, time.monotonic())
            if name in self.quiet:
                continue
            started = time.monotonic()
            outcome = get(self.port, f"{name}.localhost")
            with self.lock:
                self.samples.append(Sample(started, time.monotonic(), name, outcome))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def sent(self, since: float, until: float, tenants: list[str]) -> list[Sample]:
        """Requests that started in [since, until) to the given tenants."""
        with self.lock:
            return [s for s in self.samples if since <= s.started < until and s.tenant in tenants]

    def failed(self, since: float, until: float, tenants: list[str]) -> list[Sample]:
        return [s for s in self.sent(since, until, tenants) if not s.ok]


def describe(failures: list[Sample]) -> str:
    """'3 (2 x 502, 1 x ConnectionResetError)', or '0'."""
    counts: dict[str, int] = {}
    for sample in failures:
        counts[sample.outcome] = counts.get(sample.outcome, 0) + 1
    detail = ", ".join(f"{n} x {outcome}" for outcome, n in sorted(counts.items()))
    return f"{len(failures)} ({detail})" if failures else "0"


def wait_for(check, timeout: float = BACK_TIMEOUT, every: float = 0.2) -> float | None:
    """The moment (time.monotonic()) `check()` is first true, or None when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(every)
    return None


def since(started: float, moment: float | None) -> float | None:
    return moment - started if moment is not None else None


def container_id(project_name: str, service: str) -> str:
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project_name}",
                          "--filter", f"label=com.docker.compose.service={service}"],
                         capture_output=True, text=True).stdout.split()
    if len(ids) != 1:
        raise SystemExit(f"expected one container for service {service}, found {len(ids)}")
    return ids[0]


def inspect(container: str, template: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", template, container], capture_output=True, text=True,
                          check=True).stdout.strip()


def database_answers(project) -> bool:
    try:
        admin_connect(project, retry=False).close()
        return True
    except psycopg2.OperationalError:  # refused, or "the database system is starting up"
        return False


def every_tenant_answers(port: int, names: list[str]) -> bool:
    return all(get(port, f"{name}.localhost") == "200" for name in names)


def seconds(value: float | None) -> str:
    return f"{value:.1f} s" if value is not None else f"not back after {BACK_TIMEOUT} s"


def database_restart(project, load: Load, observe: float) -> list[tuple]:
    """One tenant is sent nothing from the restart until 5 s after the database answers: a
    quiet tenant is where stale persistent connections fail (a loaded one drops them during
    the outage already)."""
    db, quiet = container_id(project.name, "db"), TENANTS[-1]
    load.quiet.add(quiet)
    started = time.monotonic()
    subprocess.run(["docker", "restart", db], capture_output=True, check=True)
    back = wait_for(lambda: database_answers(project))
    if back is None:
        return [("database restart", "database never answered again", "0", "no")]
    time.sleep(max(0.0, back + GRACE - time.monotonic()))
    load.quiet.discard(quiet)
    time.sleep(observe)
    end = time.monotonic()
    during = load.failed(started, back + GRACE, TENANTS)
    after, watched = load.failed(back + GRACE, end, TENANTS), len(load.sent(back + GRACE, end, TENANTS))
    last = f"; the last started {max(s.started for s in during) - back:+.1f} s from then" if during else ""
    print(f"database restart: answered again {back - started:.1f} s after `docker restart`; failed requests "
          f"until 5 s after: {describe(during)} (informative{last}); in the {observe:.0f} s after that: "
          f"{describe(after)} of {watched}, {len([s for s in after if s.tenant == quiet])} of them on {quiet}, "
          f"quiet during the outage (target 0)", flush=True)
    return [("database restart", f"{len(after)} failed from 5 s after it answers", "0", "yes" if not after else "no"),
            ("  (during the outage)", f"{len(during)} failed", "-", "-")]


def tenant_kill(project, load: Load, port: int) -> list[tuple]:
    victim, others = TENANTS[0], TENANTS[1:]
    container = container_id(project.name, f"tenant-{victim}")
    pid = int(inspect(container, "{{.State.Pid}}"))
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    back = since(started, wait_for(lambda: get(port, f"{victim}.localhost") == "200"))
    time.sleep(GRACE)  # the other tenants are watched a little past the victim's return
    end = time.monotonic()
    elsewhere, watched = load.failed(started, end, others), len(load.sent(started, end, others))
    victim_failed = load.failed(started, end, [victim])
    restarts = inspect(container, "{{.RestartCount}}")
    print(f"tenant kill: kill -9 of {victim}'s pid 1 ({command.strip()}, host pid {pid}); back by itself "
          f"after {seconds(back)} (restart count {restarts}), {describe(victim_failed)} failed on it; "
          f"failed on the other tenants: {describe(elsewhere)} of {watched} (target 0)", flush=True)
    return [("tenant kill: victim back", seconds(back), "back by itself", "yes" if back is not None else "no"),
            ("tenant kill: others failed", str(len(elsewhere)), "0", "yes" if not elsewhere else "no")]


def proxy_restart(project, load: Load, port: int) -> list[tuple]:
    started = time.monotonic()
    subprocess.run(["docker", "restart", container_id(project.name, "proxy")], capture_output=True, check=True)
    back = since(started, wait_for(lambda: every_tenant_answers(port, TENANTS)))
    # Apache's stop signal is its graceful stop: requests already in flight should complete.
    with load.lock:
        in_flight = [s for s in load.samples if s.started < started < s.ended and not s.ok]
    print(f"proxy restart: every tenant answers through it again after {seconds(back)} "
          f"(failed meanwhile: {describe(load.failed(started, time.monotonic(), TENANTS))}; "
          f"in flight at the restart and failed: {describe(in_flight)})", flush=True)
    return [("proxy restart", seconds(back), "every tenant back", "yes" if back is not None else "no")]


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie not yet reaped counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start_engine() -> None:
    """tools/setup-docker starts dockerd when no engine answers (in its own session, so a
    Ctrl-C here does not reach the daemon)."""
    subprocess.run([str(REPO / "tools" / "setup-docker")], capture_output=True, start_new_session=True)


def engine_restart(load: Load, port: int) -> list[tuple]:
    pid = int(Path("/var/run/docker.pid").read_text())
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)  # dockerd stops its containers first, as at a shutdown
    if wait_for(lambda: process_gone(pid), timeout=120) is None:
        return [("engine restart", "dockerd did not stop within 120 s", "every tenant back", "no")]
    stopped = time.monotonic() - started
    restarted = time.monotonic()
    start_engine()
    moment = wait_for(lambda: every_tenant_answers(port, TENANTS))
    back, total = since(restarted, moment), since(started, moment)
    print(f"engine restart: dockerd stopped in {stopped:.1f} s; every tenant answers through the proxy "
          f"{seconds(back)} after starting it again, {seconds(total)} after the stop began "
          f"(failed meanwhile: {describe(load.failed(started, time.monotonic(), TENANTS))})", flush=True)
    return [("engine restart", seconds(back), "every tenant back", "yes" if back is not None else "no")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20, help="requests per second to each tenant (default 20)")
    parser.add_argument("--observe", type=float, default=20,
                        help="seconds watched after the database's 5 s grace (default 20)")
    parser.add_argument("--engine-restart", action="store_true",
                        help="also stop and start dockerd (disrupts every other user of the engine)")
    args = parser.parse_args()
    rows = []
    with bench_project("tkfault") as root:
        project = load_project(root)
        try:
            for name in TENANTS:
                cli(root, "new", name)
            cli(root, "up", "--all")
            port = project.proxy.port
            if not every_tenant_answers(port, TENANTS):
                raise SystemExit("the tenants do not answer through the proxy before any fault")
            with Load(port, TENANTS, args.rate) as load:
                time.sleep(3)
                warm = load.failed(0, time.monotonic(), TENANTS)
                print(f"{len(TENANTS)} tenants, {args.rate:.0f} req/s each through the proxy; "
                      f"failed before any fault: {describe(warm)}", flush=True)
                rows += database_restart(project, load, args.observe)
                rows += tenant_kill(project, load, port)
                rows += proxy_restart(project, load, port)
                if args.engine_restart:
                    rows += engine_restart(load, port)
                print(f"{len(load.samples)} requests sent in all", flush=True)
        finally:
            if not engine_answers():  # an engine restart that went wrong: bring it back to tear down
                start_engine()
            subprocess.run(["docker", "compose", "-p", project.name, "down", "-v", "-t", "5"], capture_output=True)
    width = max(len(row[0]) for row in rows)
    print(f"\n{'FAULT':<{width}}  {'FIGURE':<40}  {'TARGET':<24}  MET")
    for fault, figure, target, met in rows:
        print(f"{fault:<{width}}  {figure:<40}  {target:<24}  {met}")


if __name__ == "__main__":
    main()

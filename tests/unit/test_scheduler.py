"""The scheduler's pure parts: its schedule, due times, records and container clone, without an engine.

image/scheduler/scheduler.py is a standalone script (it runs in its own image), so it is
imported from its path.
"""
import importlib.util
import json
import os
import stat
import sys
import threading
import time
from datetime import datetime, timezone

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "image" / "scheduler" / "scheduler.py"


def _import_script():
    spec = importlib.util.spec_from_file_location("tenantkit_scheduler", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


sched = _import_script()


def at(text: str) -> float:
    """A Unix time from "2026-03-01 10:04:59.5" (UTC)."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def job(cron="*/5 * * * *", job_id="3f2a9c1b0d", tenant="acme", command=("clearsessions",)):
    return sched.Job(tenant, f"tenant-{tenant}", job_id, cron, tuple(command))


SCHEDULE = {"project": "tenantkit", "log_dir": "/var/log/tenantkit",
            "tenants": {"acme": {"service": "tenant-acme",
                                 "jobs": [{"id": "3f2a9c1b0d", "cron": "*/5  * * * *", "command": ["clearsessions"]},
                                          {"id": "77aa", "cron": "* * * * * */2",
                                           "command": ["send_mail", "--limit", "10"]}]},
                        "zed": {"service": "tenant-zed", "jobs": []}}}


def write(tmp_path, data) -> str:
    path = tmp_path / "schedule.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# --- loading the schedule ---------------------------------------------------------------

def test_a_schedule_file_gives_every_tenants_jobs_with_their_service(tmp_path):
    schedule = sched.load_schedule(write(tmp_path, SCHEDULE))
    assert schedule.project == "tenantkit"
    assert str(schedule.log_dir) == "/var/log/tenantkit"
    assert schedule.max_parallel == sched.DEFAULT_PARALLEL
    assert schedule.jobs == (
        sched.Job("acme", "tenant-acme", "3f2a9c1b0d", "*/5 * * * *", ("clearsessions",)),
        sched.Job("acme", "tenant-acme", "77aa", "* * * * * */2", ("send_mail", "--limit", "10")),
    )
    assert [j.key for j in schedule.jobs] == ["acme/3f2a9c1b0d", "acme/77aa"]


@pytest.mark.parametrize("change, words", [
    (lambda d: d.pop("project"), "project"),
    (lambda d: d.update(log_dir="relative/logs"), "log_dir"),
    (lambda d: d.update(max_parallel=0), "max_parallel"),
    (lambda d: d["tenants"].update({"../etc": {"service": "x", "jobs": []}}), "tenant name"),
    (lambda d: d["tenants"]["acme"].pop("service"), "service"),
    (lambda d: d["tenants"]["acme"]["jobs"][0].update(cron="*/5 * * *"), "cron"),
    (lambda d: d["tenants"]["acme"]["jobs"][0].update(cron="* * * * * * 2030"), "cron"),
    (lambda d: d["tenants"]["acme"]["jobs"][0].update(cron="every minute"), "cron"),
    (lambda d: d["tenants"]["acme"]["jobs"][0].update(command="clearsessions"), "command"),
    (lambda d: d["tenants"]["acme"]["jobs"][0].update(command=[]), "command"),
    (lambda d: d["tenants"]["acme"]["jobs"][0].update(id="a/b"), ".id"),
    (lambda d: d["tenants"]["acme"]["jobs"][1].update(id="3f2a9c1b0d"), "twice"),
])
def test_a_broken_schedule_is_refused_with_a_message_naming_the_problem(tmp_path, change, words):
    data = json.loads(json.dumps(SCHEDULE))
    change(data)
    with pytest.raises(sched.ScheduleError, match=words.replace(".", r"\.")):
        sched.load_schedule(write(tmp_path, data))


def test_a_schedule_that_is_not_json_is_refused(tmp_path):
    with pytest.raises(sched.ScheduleError, match="not valid JSON"):
        sched.load_schedule(write(tmp_path, '{"project": '))
    with pytest.raises(sched.ScheduleError, match="cannot read"):
        sched.load_schedule(tmp_path / "missing.json")


def test_a_broken_schedule_file_keeps_the_previous_schedule_and_a_fixed_one_replaces_it(tmp_path, capsys):
    path = write(tmp_path, SCHEDULE)
    scheduler = sched.Scheduler(path, connect=None)
    scheduler.reload()
    assert len(scheduler.schedule.jobs) == 2
    path.write_text("{ not json")
    scheduler.reload()
    assert len(scheduler.schedule.jobs) == 2
    assert "keeping the previous one" in capsys.readouterr().out
    fixed = json.loads(json.dumps(SCHEDULE))
    fixed["tenants"]["acme"]["jobs"].pop()
    path.write_text(json.dumps(fixed))
    scheduler.reload()
    assert [j.id for j in scheduler.schedule.jobs] == ["3f2a9c1b0d"]


# --- due times --------------------------------------------------------------------------

def test_a_five_field_cron_is_due_at_its_minutes_in_utc():
    assert sched.next_time("*/5 * * * *", at("2026-03-01 10:04:59.5")) == at("2026-03-01 10:05:00")
    assert sched.next_time("*/5 * * * *", at("2026-03-01 10:05:00")) == at("2026-03-01 10:10:00")
    assert sched.next_time("0 3 * * *", at("2026-03-01 10:05:00")) == at("2026-03-02 03:00:00")


def test_a_six_field_cron_counts_seconds_last():
    assert sched.next_time("* * * * * */2", at("2026-03-01 10:00:01.2")) == at("2026-03-01 10:00:02")
    assert sched.next_time("* * * * * */2", at("2026-03-01 10:00:02")) == at("2026-03-01 10:00:04")


def test_a_new_job_is_first_due_at_its_next_time_not_at_once():
    due, next_due = sched.advance([job()], {}, at("2026-03-01 10:04:30"))
    assert due == []
    assert next_due == {"acme/3f2a9c1b0d": at("2026-03-01 10:05:00")}


def test_a_job_is_due_once_its_time_has_come_and_then_at_its_next_time():
    j = job()
    due, next_due = sched.advance([j], {j.key: at("2026-03-01 10:05:00")}, at("2026-03-01 10:04:59.9"))
    assert due == [] and next_due[j.key] == at("2026-03-01 10:05:00")
    # The loop woke a little late: the series keeps its times.
    due, next_due = sched.advance([j], next_due, at("2026-03-01 10:05:00.7"))
    assert due == [j]
    assert next_due[j.key] == at("2026-03-01 10:10:00")


def test_a_missed_backlog_runs_once_and_continues_from_now():
    j = job(cron="* * * * * */2")
    # Due at 10:00:00; the scheduler was away for a minute (30 runs missed).
    due, next_due = sched.advance([j], {j.key: at("2026-03-01 10:00:00")}, at("2026-03-01 10:01:00.5"))
    assert due == [j]
    assert next_due[j.key] == at("2026-03-01 10:01:02")
    due, _ = sched.advance([j], next_due, at("2026-03-01 10:01:01"))
    assert due == []


def test_a_reload_keeps_the_due_time_of_unchanged_jobs_and_drops_removed_ones():
    kept, gone, new = job(), job(job_id="gone"), job(cron="0 * * * *", job_id="new")
    now = at("2026-03-01 10:04:00")
    _, next_due = sched.advance([kept, gone], {kept.key: at("2026-03-01 10:05:00"),
                                               gone.key: at("2026-03-01 10:05:00")}, now)
    _, next_due = sched.advance([kept, new], next_due, now)
    assert next_due == {kept.key: at("2026-03-01 10:05:00"), new.key: at("2026-03-01 11:00:00")}


def test_the_loop_sleeps_until_the_next_due_time_and_never_more_than_a_second():
    scheduler = sched.Scheduler("unused.json", connect=None)
    assert scheduler.sleep_time(100.0) == sched.TICK
    scheduler.next_due = {"a/1": 100.25, "a/2": 500.0}
    assert 0.25 <= scheduler.sleep_time(100.0) < 0.3
    scheduler.next_due = {"a/1": 99.0}
    assert scheduler.sleep_time(100.0) == 0.0


# --- overlap ----------------------------------------------------------------------------

def test_a_job_still_running_is_skipped_and_other_jobs_start():
    busy, free, other_tenant = job(), job(job_id="free"), job(tenant="zed")
    start, skip = sched.plan([busy, free, other_tenant], running={"acme/3f2a9c1b0d"})
    assert start == [free, other_tenant]
    assert skip == [busy]


def test_a_job_due_twice_in_one_tick_starts_once():
    start, skip = sched.plan([job(), job()], running=set())
    assert (len(start), len(skip)) == (1, 1)


def test_a_due_job_still_running_is_logged_as_skipped_and_not_started(tmp_path):
    scheduler = sched.Scheduler("unused.json", connect=None)
    j = job(cron="* * * * * */2")
    scheduler.schedule = sched.Schedule("tk", tmp_path, (j,))
    scheduler.next_due = {j.key: at("2026-03-01 10:00:00")}
    scheduler.busy.add(j.key)  # e.g. adopted from an earlier start
    scheduler.tick(at("2026-03-01 10:00:00.1"))
    lines = (tmp_path / "acme.schedule.log").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["skipped"]
    assert scheduler.busy == {j.key} and not scheduler.threads


class HeldRuns(sched.Scheduler):
    """A scheduler whose runs block until released, instead of talking to an engine."""

    def __init__(self, schedule):
        super().__init__("unused.json", connect=None)
        self.schedule = schedule
        self.release = threading.Event()
        self.ran: list[str] = []

    def _run(self, job, schedule):
        self.release.wait(5)
        self.ran.append(job.key)


def test_runs_beyond_max_parallel_wait_in_a_queue_and_count_as_busy(tmp_path):
    jobs = tuple(job(cron="* * * * * */2", job_id=f"j{n}", tenant=f"t{n}") for n in range(5))
    scheduler = HeldRuns(sched.Schedule("tk", tmp_path, jobs, max_parallel=2))
    scheduler.next_due = {j.key: at("2026-03-01 10:00:00") for j in jobs}
    scheduler.tick(at("2026-03-01 10:00:00.1"))
    assert len(scheduler.threads) == 2 and len(scheduler.pending) == 3
    assert scheduler.busy == {j.key for j in jobs}
    scheduler.tick(at("2026-03-01 10:00:02.1"))  # due again: all five are skipped, none queued twice
    assert len(scheduler.pending) == 3
    assert sum(len((tmp_path / f"t{n}.schedule.log").read_text().splitlines()) for n in range(5)) == 5
    scheduler.release.set()
    assert scheduler.wait_for_threads(5) == 0
    assert sorted(scheduler.ran) == sorted(j.key for j in jobs)
    assert not scheduler.busy and not scheduler.pending and not scheduler.threads


def test_a_stopping_scheduler_starts_no_queued_run(tmp_path):
    jobs = tuple(job(cron="* * * * * */2", job_id=f"j{n}") for n in range(3))
    scheduler = HeldRuns(sched.Schedule("tk", tmp_path, jobs, max_parallel=1))
    scheduler.next_due = {j.key: at("2026-03-01 10:00:00") for j in jobs}
    scheduler.tick(at("2026-03-01 10:00:00.1"))
    scheduler.stop()
    scheduler.release.set()
    assert scheduler.wait_for_threads(5) == 0
    assert scheduler.ran == ["acme/j0"]


# --- records ----------------------------------------------------------------------------

def test_a_record_is_one_json_line_of_the_agreed_shape():
    entry = sched.record("3f2a9c1b0d", "*/5 * * * *", ["send_mail", "--limit", "10"], sched.Status.FAILED,
                         at("2026-03-01 10:05:00.4"), at("2026-03-01 10:05:02.9"), 3, ["boom"])
    line = sched.record_line(entry)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "job": "3f2a9c1b0d", "cron": "*/5 * * * *", "command": "send_mail --limit 10",
        "start": "2026-03-01T10:05:00.400+00:00", "end": "2026-03-01T10:05:02.900+00:00",
        "exit": 3, "status": "failed", "output": ["boom"],
    }
    assert datetime.fromisoformat(json.loads(line)["start"]).tzinfo is not None


def test_a_skip_has_no_end_or_exit_and_says_why():
    entry = sched.record("j", "* * * * *", ["x"], sched.Status.SKIPPED, 0, message="still running")
    assert (entry["end"], entry["exit"], entry["output"], entry["status"]) == (None, None, [], "skipped")
    assert entry["message"] == "still running"
    assert [s.value for s in sched.Status] == ["ok", "failed", "skipped", "not-running", "error"]


def test_records_are_appended_whole_to_a_file_created_0600(tmp_path):
    old = os.umask(0o077)
    try:
        path = tmp_path / "acme.schedule.log"
        threads = [threading.Thread(target=lambda n=n: [sched.append_line(path, sched.record_line(
            sched.record(f"job{n}", None, ["x" * 5000], sched.Status.OK, 0))) for _ in range(50)])
            for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        os.umask(old)
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    assert all(json.loads(line)["command"] == "x" * 5000 for line in lines)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_output_keeps_the_last_lines():
    assert sched.tail_lines(b"".join(b"line %d\r\n" % n for n in range(30))) == [f"line {n}" for n in range(10, 30)]
    assert sched.tail_lines(b"\xff ok\n") == ["\ufffd ok"]


# --- the web container and its clone ----------------------------------------------------

def test_engine_timestamps_sort_by_time_although_the_engine_trims_zeros():
    earlier, later = "2026-03-01T10:00:00.5Z", "2026-03-01T10:00:00.50001Z"
    assert earlier > later  # as raw strings: the wrong order
    assert sched.started_key(earlier) < sched.started_key(later)
    assert sched.engine_time("2026-03-01T10:00:00.25Z") == at("2026-03-01 10:00:00.25")
    assert sched.engine_time("2026-03-01T10:00:00Z") == at("2026-03-01 10:00:00")


# A trimmed `docker inspect` of a tenant's web container, as Compose v2 creates it.
WEB = {
    "Id": "c0ffee", "Image": "sha256:1234abcd",
    "Config": {"Env": ["DJANGO_SETTINGS_MODULE=tenants.acme.settings", "HOME=/tmp", "PATH=/opt/venv/bin:/usr/bin"],
               "User": "10001:10001", "WorkingDir": "/app", "Cmd": ["gunicorn"],
               "Labels": {"com.docker.compose.project": "tenantkit", "com.docker.compose.service": "tenant-acme"}},
    "HostConfig": {
        "Binds": None, "NetworkMode": "tenantkit_tenant-acme", "RestartPolicy": {"Name": "unless-stopped"},
        "Memory": 268435456, "MemorySwap": 536870912, "NanoCpus": 500000000, "PidsLimit": 256,
        "CapAdd": None, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges:true"], "ReadonlyRootfs": True,
        "Tmpfs": {"/tmp": "size=64m,mode=1777"},
        "Mounts": [{"Type": "bind", "Source": "/srv/tk/tenants/acme", "Target": "/srv/tenants/acme", "ReadOnly": True,
                    "BindOptions": {"CreateMountpoint": True}},
                   {"Type": "bind", "Source": "/srv/tk/media/acme", "Target": "/srv/media"},
                   {"Type": "volume", "Source": "tenantkit_cache", "Target": "/cache", "VolumeOptions": {}}],
    },
    "NetworkSettings": {"Networks": {"tenantkit_tenant-acme": {"Aliases": ["tk-acme", "a.tk-acme"]}}},
    "State": {"Running": True, "StartedAt": "2026-03-01T10:00:00.5Z"},
}


def test_a_job_container_clones_its_tenants_image_environment_mounts_limits_and_network():
    clone = sched.clone_settings(WEB, "tenantkit", "tenant-acme")
    assert clone.image == "sha256:1234abcd"
    assert clone.environment == WEB["Config"]["Env"]
    assert (clone.user, clone.working_dir, clone.network) == ("10001:10001", "/app", "tenantkit_tenant-acme")
    host = clone.host_config
    assert host["mounts"] == [
        {"Target": "/srv/tenants/acme", "Source": "/srv/tk/tenants/acme", "Type": "bind", "ReadOnly": True},
        {"Target": "/srv/media", "Source": "/srv/tk/media/acme", "Type": "bind", "ReadOnly": False},
        {"Target": "/cache", "Source": "tenantkit_cache", "Type": "volume", "ReadOnly": False},
    ]
    assert {key: value for key, value in host.items() if key != "mounts"} == {
        "mem_limit": 268435456, "memswap_limit": 536870912, "nano_cpus": 500000000, "pids_limit": 256,
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"], "read_only": True,
        "tmpfs": {"/tmp": "size=64m,mode=1777"}, "network_mode": "tenantkit_tenant-acme",
    }


def test_a_job_container_takes_binds_and_its_tenants_own_network_among_several():
    web = json.loads(json.dumps(WEB))
    web["HostConfig"].update(Mounts=None, Binds=["/srv/tk/media/acme:/srv/media:rw"], Memory=0, PidsLimit=None)
    web["NetworkSettings"]["Networks"] = {"other": {}, "tenantkit_tenant-acme": {}}
    clone = sched.clone_settings(web, "tenantkit", "tenant-acme")
    assert clone.host_config["binds"] == ["/srv/tk/media/acme:/srv/media:rw"]
    assert not {"mounts", "mem_limit", "pids_limit"} & set(clone.host_config)
    assert clone.network == "tenantkit_tenant-acme"
    web["NetworkSettings"]["Networks"] = {"first": {}, "second": {}}
    assert sched.clone_settings(web, "tenantkit", "tenant-acme").network == "first"


def test_a_job_container_is_labelled_and_named_as_the_schedulers_not_as_composes():
    j = job()
    assert sched.job_labels("tenantkit", j) == {
        "tenantkit.project": "tenantkit", "tenantkit.tenant": "acme", "tenantkit.job": "acme/3f2a9c1b0d"}
    assert sched.job_container_name("tenantkit", j, 1772359500.7) == "tenantkit-job-acme-3f2a9c1b0d-1772359500"
    assert sched.job_argv(job(command=("send_mail", "--limit", "10"))) == [
        "python", "manage.py", "send_mail", "--limit", "10"]


def test_an_engine_error_is_logged_as_the_engines_explanation_without_the_request_url():
    refused = sched.docker.errors.APIError("400 Client Error for http+docker://localhost/v1.41/containers/create",
                                           explanation="bind source path does not exist: /srv/gone")
    assert sched.describe(refused) == "the engine refused: bind source path does not exist: /srv/gone"
    assert sched.describe(TimeoutError("read timed out")) == "TimeoutError: read timed out"


class FakeApi:
    """The three calls that collecting an ended job container makes."""

    def __init__(self, exit_code, output):
        self.exit_code, self.output, self.removed = exit_code, output, []

    def wait(self, container, timeout=None):
        return {"StatusCode": self.exit_code}

    def logs(self, container, **options):
        return self.output

    def remove_container(self, container, **options):
        self.removed.append(container)


def test_a_job_container_that_ended_while_no_scheduler_ran_is_logged_with_its_own_times_and_removed():
    api = FakeApi(2, b"one\ntwo\n")
    container = {"Id": "abc", "Name": "/tk-job-acme-77aa-1",
                 "Config": {"Labels": {"tenantkit.job": "acme/77aa"}, "Cmd": ["python", "manage.py", "send_mail"]},
                 "State": {"Running": False, "StartedAt": "2026-03-01T10:00:00.5Z",
                           "FinishedAt": "2026-03-01T10:00:07.25Z"}}
    tenant, entry = sched.finish_adopted(type("Client", (), {"api": api})(), container, "* * * * *")
    assert tenant == "acme" and api.removed == ["abc"]
    assert entry == {"job": "77aa", "cron": "* * * * *", "command": "send_mail", "start": "2026-03-01T10:00:00.500+00:00",
                     "end": "2026-03-01T10:00:07.250+00:00", "exit": 2, "status": "failed", "output": ["one", "two"],
                     "message": "started by an earlier scheduler"}


def test_one_tenant_runs_at_most_per_tenant_jobs_at_once():
    """A tenant whose jobs never end cannot take every slot: its runs beyond the cap are skipped."""
    cap = sched.PER_TENANT
    mine = [job(job_id=f"m{n}") for n in range(cap + 1)]
    theirs = job(job_id="o1", tenant="other")
    start, skip = sched.plan([*mine, theirs], [])
    assert [j.key for j in start] == [f"acme/m{n}" for n in range(cap)] + ["other/o1"]
    assert [j.key for j in skip] == [f"acme/m{cap}"]
    start, skip = sched.plan([mine[cap]], [f"acme/m{n}" for n in range(cap)])
    assert not start and skip == [mine[cap]]


class SlowApi:
    """An engine whose wait times out as requests does, then which kill was asked for."""

    def __init__(self):
        self.killed = []

    def wait(self, container, timeout=None):
        import requests
        time.sleep(min(timeout, 0.05))
        raise requests.exceptions.ReadTimeout("read timed out")

    def kill(self, container):
        self.killed.append(container)


def test_a_run_past_its_time_limit_is_stopped():
    api = SlowApi()
    with pytest.raises(sched.TimedOut, match="time limit"):
        sched.collect(type("Client", (), {"api": api})(), "abc", limit=0.1)
    assert api.killed == ["abc"]

"""The `tenant` command: parse, call one orchestration function, print.

Exit codes: 0 success; 1 an operation failed (a migration, a container); 2 bad input
(one line on stderr naming the problem and the fix; nothing was changed).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from . import orchestration as orch
from . import progress
from .act import memory as memory_of
from .act.engine import OperationFailed, PartlyFailed
from .model import ConfigError, Project, display_path, find_root, load_project

EXIT_FAILED, EXIT_USAGE = 1, 2


def invoked_as() -> str:
    """How the user ran this tool, for the commands a hint suggests: `tenant` when that is
    what PATH finds, else the path they typed (tools/tenant from a checkout)."""
    typed = sys.argv[0] if sys.argv and sys.argv[0] else "tenant"
    if os.path.basename(typed) != "tenant" or not os.path.dirname(typed):
        return "tenant"
    on_path = shutil.which("tenant")
    if on_path and os.path.realpath(on_path) == os.path.realpath(typed):
        return "tenant"
    return typed


def report(message: str) -> None:
    """Progress goes to stderr, so stdout stays clean for data (--json)."""
    progress.echo(f"· {message}")



@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--project", "project_dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="TENANTKIT_PROJECT", help="Project folder holding tenantkit.yaml (default: "
              "the nearest one at or above the working directory).")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, project_dir: Path | None, debug: bool) -> None:
    """Run one Django codebase for many tenants: one container, database and settings each."""
    # Loaded lazily: `tenant --help` must work anywhere.
    ctx.obj = {"load": lambda: load_project(project_dir or find_root())}


def print_table(rows: list[tuple]) -> None:
    """Columns padded to their widest cell, like `docker ps`."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _project(ctx: click.Context) -> Project:
    obj = ctx.find_root().obj
    if "project" not in obj:
        obj["project"] = obj["load"]()
    return obj["project"]


@cli.command()
@click.argument("name")
@click.option("--host", "hosts", multiple=True, metavar="HOST",
              help="Host name the tenant answers on (repeatable; default NAME.<domain>).")
@click.option("--title", help="Site title (default: the name, capitalised).")
@click.option("--memory", help="Container memory limit, such as 256m (default from tenantkit.yaml).")
@click.option("--workers", type=click.IntRange(1, 64), help="gunicorn worker processes.")
@click.pass_context
def new(ctx, name, hosts, title, memory, workers):
    """Create tenant NAME: tenant.yaml, settings.py, secrets and media folder."""
    tenant = orch.new(_project(ctx), name, hosts, title, memory, workers)
    click.echo(f"created tenant {tenant.name} in tenants/{tenant.name}/ "
               f"(hosts: {', '.join(tenant.hosts)}; port {tenant.port})")
    click.echo(f"start it with: {invoked_as()} up {tenant.name}")


@cli.command()
@click.pass_context
def render(ctx):
    """Write compose/compose.yaml and every tenant's settings.py; start nothing."""
    rendered = orch.render(_project(ctx))
    click.echo(f"rendered {len(rendered.tenants)} tenant(s) into compose/compose.yaml "
               f"(image {rendered.image})")
    if rendered.rejected:
        raise OperationFailed("\n".join(
            f"tenant {name}: {problem.splitlines()[0]}; its running container keeps the settings.py it has "
            f"(fix tenants/{name}/tenant.yaml)" for name, problem in rendered.rejected.items()))


@cli.command()
@click.option("--force", is_flag=True, help="Rebuild even when the image is up to date.")
@click.pass_context
def build(ctx, force):
    """Build the shared Django image from the project's code."""
    click.echo(orch.build(_project(ctx), report, force))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every tenant.")
@click.pass_context
def up(ctx, names, all_):
    """Start tenants: build, create databases, migrate, run, wait until healthy."""
    project = _project(ctx)
    try:
        started = orch.up(project, names, all_, report)
    except PartlyFailed as partly:  # the ones that are up are listed all the same
        for tenant in partly.done:
            click.echo(f"{tenant.name}\t{project.tenant_url(tenant)}")
        raise
    for tenant in started:
        click.echo(f"{tenant.name}\t{project.tenant_url(tenant)}")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every tenant and the database.")
@click.pass_context
def down(ctx, names, all_):
    """Stop tenants' containers; their data, media and settings are kept."""
    for tenant in orch.down(_project(ctx), names, all_, report):
        click.echo(f"{tenant.name}\tstopped")


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def list_(ctx, as_json):
    """List tenants with their state, health, memory, URL and database.

    MEMORY is in use/limit, the peak since the container started, and the processes the
    kernel killed for lack of memory (gunicorn workers too)."""
    project = _project(ctx)
    rows = orch.status(project)
    if as_json:
        click.echo(json.dumps([row.to_dict() for row in rows], indent=2))
        return
    table = [("NAME", "STATE", "HEALTH", "MEMORY", "URL", "DATABASE", "HOSTS")]
    table += [(r.name, r.state + (" (maintenance)" if r.maintenance else ""), r.health or "-",
               memory_of.summary(r.memory), r.url, r.database, ",".join(r.hosts)) for r in rows]
    if any(r.processes for r in rows):  # a column only for fleets that have background processes
        table = [(*line, "PROCESSES") for line in table[:1]] + [
            (*line, processes_summary(r.processes)) for line, r in zip(table[1:], rows)]
    if project.engine == "swarm":  # running/wanted tasks of each tenant's service
        table = [(*line[:2], "TASKS", *line[2:]) for line in table[:1]] + [
            (*line[:2], r.tasks or "-", *line[2:]) for line, r in zip(table[1:], rows)]
    print_table(table)
    memory_advice([(r.name, r.memory.oom_kills if r.memory else None, r.memory_limit) for r in rows])


def processes_summary(processes: dict[str, str]) -> str:
    return ", ".join(f"{name}: {state}" for name, state in processes.items()) or "-"


def certificate_summary(tls: dict | None) -> str:
    if not tls:
        return "-"
    if not tls["expires"]:
        return f"{tls['mode']}: none yet" if tls["mode"] == "auto" else f"{tls['mode']}: missing"
    return f"{tls['mode']}: expires {tls['expires'][:10]} ({tls['days_left']}d)"


def memory_advice(rows: list[tuple[str, int | None, str]], extra: str = "") -> None:
    """A line on stderr for each tenant (name, OOM kills, limit) the kernel killed processes
    of: they look healthy otherwise."""
    for name, kills, limit in rows:
        found = memory_of.advice(name, kills, limit, invoked_as())
        if found:
            click.echo(f"warning: {found[0]}; {found[1]}{extra}", err=True)


def duration(seconds: int | None) -> str:
    """An uptime as people read it: 45s, 11m26s, 3h05m, 2d4h."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def print_outcomes(outcomes, folder: Path | None, verb: str, as_json: bool) -> None:
    """The summary table (or JSON) of a fleet run; exit 1 naming the tenants that failed."""
    if as_json:
        click.echo(json.dumps([o.to_dict() for o in outcomes], indent=2))
    else:
        rows = [("TENANT", "RESULT", "SECONDS")] + [(o.tenant, o.result, f"{o.seconds:.2f}") for o in outcomes]
        print_table(rows)
    failed = [o for o in outcomes if o.failed]
    for outcome in failed:
        click.echo(f"--- {outcome.tenant} (exit {outcome.exit_code}):", err=True)
        click.echo("\n".join(outcome.output.rstrip().splitlines()[-10:]), err=True)
    if failed:
        raise OperationFailed(f"{verb} failed for {', '.join(o.tenant for o in failed)}"
                              + (f"; every tenant's output is in {folder}" if folder else ""))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--all", "all_", is_flag=True, help="Every tenant, in parallel.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="With --all: tenants at a time.")
@click.option("--json", "as_json", is_flag=True, help="With --all: print the outcomes as JSON.")
@click.argument("words", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@click.option("--env", "-e", "env_vars", multiple=True, metavar="NAME[=VALUE]",
              help="Set a variable in the command's environment (NAME alone: its value here), like "
                   "`docker run -e`; repeatable. Also accepted after the tenant's name.")
def manage(ctx, all_, jobs, as_json, env_vars, words):
    """Run a manage.py command: tenant manage acme -- migrate --plan | tenant manage --all -- check

    Standard input reaches the command: echo 'print(42)' | tenant manage acme -- shell"""
    words = list(words)
    env_vars = list(env_vars)
    # `tenant manage acme -e NAME=VALUE -- command`: options between the name and `--`.
    while len(words) >= 3 and words[1] in ("-e", "--env") and "--" in words:
        env_vars.append(words[2])
        del words[1:3]
    env = environment(env_vars)
    if all_:
        command = words[1:] if words[:1] == ["--"] else words
        if not command:
            raise click.UsageError("give the manage.py command after --, such as: tenant manage --all -- check")
        outcomes, folder = orch.manage_all(_project(ctx), command, jobs, report, env)
        print_outcomes(outcomes, folder, "manage", as_json)
        return
    if not words or words[0] == "--":
        raise click.UsageError("name a tenant (or pass --all), then the command: tenant manage acme -- check")
    name, command = words[0], words[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise click.UsageError("give the manage.py command after --, such as: tenant manage acme -- check")
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    ctx.exit(orch.manage(_project(ctx), name, command, interactive, env))


@cli.command("test", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def test_(ctx, name, args):
    """Run the project's tests in a tenant's context: tenant test acme [-- ARGS]

    `manage.py test --keepdb ARGS` in a one-off container of the tenant (its release's
    image and Python, its settings, apps and network; the working tree in dev mode), on a
    test database tenantkit makes for it and drops afterwards. Exits with the suite's code."""
    args = list(args)
    if args[:1] == ["--"]:
        args = args[1:]
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    ctx.exit(orch.test(_project(ctx), name, args, interactive, report))


def environment(assignments: list[str]) -> dict[str, str]:
    """-e NAME=VALUE / -e NAME (its value in this environment; unset: not passed, as
    `docker run` does) as a mapping."""
    env = {}
    for assignment in assignments:
        name, found, value = assignment.partition("=")
        if not name.isidentifier():
            raise click.UsageError(f"-e {assignment!r}: give NAME=VALUE or NAME, such as -e DJANGO_SUPERUSER_EMAIL")
        if name in ("PATH", "HOME") or name.startswith(("DOCKER_", "COMPOSE_", "LD_")):
            # Compose itself reads them (they reach the command through its environment).
            raise click.UsageError(f"-e {name}: variables named PATH, HOME, DOCKER_*, COMPOSE_* or LD_* cannot be "
                                   "passed; give the command another name for it")
        if found:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every tenant.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Tenants migrated at a time.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
@click.pass_context
def migrate(ctx, names, all_, jobs, as_json):
    """Apply migrations; checks every tenant against the release at once and migrates only where needed."""
    outcomes, folder = orch.migrate(_project(ctx), names, all_, jobs, report)
    print_outcomes(outcomes, folder, "migrate", as_json)


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def status(ctx, names, as_json):
    """State, health, memory, uptime, database size and image of tenants.

    MEMORY is in use of the limit; PEAK the most since the container started; OOM KILLS the
    processes the kernel killed for lack of memory since then (gunicorn workers too: the
    container stays up, and the requests they served failed)."""
    project = _project(ctx)
    rows, server = orch.status_detail(project, names)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return

    def size(value):
        return "-" if value is None else f"{value / 2**20:.1f}MiB"

    table = [("NAME", "STATE", "HEALTH", "MEMORY", "PEAK", "OOM KILLS", "UPTIME", "DB SIZE", "DB CONN", "TLS",
              "PROCESSES", "IMAGE")]
    for r in rows:
        used = r["memory"] or {}
        table.append((r["name"], r["state"] + (" (maintenance)" if r["maintenance"] else ""), r["health"] or "-",
                      "-" if used.get("used_mib") is None else
                      f"{used['used_mib']:.0f}/{used['limit_mib']:.0f}MiB" if used.get("limit_mib") else
                      f"{used['used_mib']:.0f}MiB",
                      "-" if used.get("peak_mib") is None else f"{used['peak_mib']:.0f}MiB",
                      "-" if used.get("oom_kills") is None else str(used["oom_kills"]),
                      duration(r["uptime_seconds"]) + (f" ({r['restarts']} restarts)" if r.get("restarts") else ""),
                      size(r["database_bytes"]),
                      "-" if r["connections"] is None else f"{r['connections']}/{r['connection_limit']}",
                      certificate_summary(r["tls"]), processes_summary(r["processes"]), r["image"] or "-"))
    print_table(table)
    tasks = [(r["name"], task) for r in rows for task in r.get("tasks") or []]
    if tasks:
        click.echo("\ntasks (swarm):")
        print_table([("TENANT", "SLOT", "NODE", "STATE", "CONTAINER", "ERROR")] + [
            (name, task["slot"], task["node"], task["state"], task["container"] or "-", task["error"] or "")
            for name, task in tasks])
    jobs = [(r["name"], job) for r in rows for job in r["schedule"]]
    if jobs:
        click.echo("\nscheduled commands (last run; `tenant logs NAME --schedule` shows every run):")
        for name, job in jobs:
            last = orch.describe_run(job["last"]) if job["last"] else f"{job['command']}  [{job['cron']}]  never run yet"
            click.echo(f"  {name}: {last}")
    if server:
        busiest = max(server.by_database.items(), key=lambda item: item[1], default=("-", 0))
        click.echo(f"\ndatabase server: {server.in_use} of {server.limit} connections in use "
                   f"(busiest: {busiest[0]}, {busiest[1]})")
    memory_advice([(r["name"], (r["memory"] or {}).get("oom_kills"), r["memory_limit"]) for r in rows])


@cli.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", "lines", type=click.IntRange(0), default=100, show_default=True, help="Lines of each log.")
@click.option("--process", "-p", metavar="PROCESS", help="Only this background process's output.")
@click.option("--schedule", is_flag=True, help="The tenant's scheduled runs: start, command, outcome, exit code.")
@click.pass_context
def logs(ctx, name, follow, lines, process, schedule):
    """The tenant's container output, then its Apache access and error logs (or one
    background process's output, or its scheduled runs)."""
    if process and schedule:
        raise ConfigError("give --process or --schedule, not both")
    project = _project(ctx)
    code = orch.logs(project, name, follow, lines, process, schedule)
    if schedule:
        ctx.exit(code)
    # A worker killed for lack of memory is one line above, easily missed ("Perhaps out of memory?").
    used, limit = orch.memory(project, name)
    memory_advice([(name, used.oom_kills if used else None, limit)], f"; `{invoked_as()} status {name}` shows its memory")
    ctx.exit(code)


@cli.command()
@click.argument("name")
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.pass_context
def maintenance(ctx, name, switch):
    """Turn maintenance mode on or off: the tenant's vhost answers 503 with a notice."""
    tenant = orch.maintenance(_project(ctx), name, switch == "on", report)
    click.echo(f"{tenant.name}\tmaintenance {switch}")


@cli.command()
@click.option("--mode", type=click.Choice(["proxy", "wsgi"]), required=True,
              help="proxy: the host's Apache proxies to the tenant containers; "
                   "wsgi: the classic setup, Django under mod_wsgi without containers.")
@click.option("--port", type=click.IntRange(1, 65535), default=80, show_default=True,
              help="Port the vhosts listen on (the Listen directive stays in your Apache config).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="proxy: folder for the vhosts (default compose/apache/host).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="wsgi: root of the classic layout (releases/, current, shared/tenants/).")
@click.option("--release", "version", help="wsgi: version of the release to build and make current.")
@click.option("--python", default="/usr/bin/python3", show_default=True,
              help="wsgi: the Python mod_wsgi was built for; the release's virtualenv uses it.")
@click.option("--user", default="www-data", show_default=True,
              help="wsgi: the user Apache runs as (reads media and static files); each tenant's daemon "
                   "processes run as a user of their own, tk-NAME.")
@click.pass_context
def apache(ctx, mode, port, out, root, version, python, user):
    """Write Apache vhosts for every tenant, for the host's own Apache."""
    project = _project(ctx)
    if mode == "proxy":
        out = out or project.root / "compose" / "apache" / "host"
        files = orch.apache_proxy(project, out, port, report)
        click.echo(f"wrote {len(files)} vhosts to {out}")
        click.echo(f"add to your Apache config:  Include {out}/*.conf   (a2enmod proxy proxy_http headers rewrite)")
        return
    if root is None or version is None:
        raise click.UsageError("--mode wsgi needs --root DIR and --release VERSION")
    tenants = orch.apache_wsgi(project, root, version, port, python, user, report)
    click.echo(f"release {version} is current in {root.resolve()}; {len(tenants)} tenant vhosts in {root.resolve()}/apache")
    click.echo(f"add to your Apache config:  Include {root.resolve()}/apache/*.conf   (a2enmod wsgi)")


@cli.command("set")
@click.argument("name")
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.pass_context
def set_(ctx, name, assignments):
    """Change a tenant: title, hosts, apps, memory, workers, threads, port, release (pin; empty unpins),
    tls (off, auto, or default: the project's), tls_cert and tls_key (a certificate of its own, checked
    now; both empty drop it). Apply with `tenant up NAME`.

    Lists are comma-separated: tenant set acme hosts=acme.localhost,www.acme.example.com

    Processes and schedules are edited in tenants/NAME/tenant.yaml (see docs/reference.md).
    """
    tenant = orch.set_values(_project(ctx), name, assignments)
    click.echo(f"{tenant.name}: tenant.yaml updated; apply it with `{invoked_as()} up {tenant.name}`")


class CommandWithSubcommands(click.Group):
    """A command that also has subcommands: when the first argument names one
    (`tenant backup prune`), that subcommand runs; otherwise the command itself does, with
    its own arguments (`tenant backup acme beta`, `tenant backup --all`). A tenant named like
    a subcommand is given after `--`: `tenant backup -- prune`."""

    allow_interspersed_args = True  # `tenant backup acme --json`, as before it had subcommands

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("invoke_without_command", True)
        kwargs.setdefault("subcommand_metavar", "| COMMAND [ARGS]...")
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            ctx.meta[f"tenantkit.{self.name}.subcommand"] = args
            return []
        return click.Command.parse_args(self, ctx, args)

    def invoke(self, ctx: click.Context):
        args = ctx.meta.pop(f"tenantkit.{self.name}.subcommand", None)
        if args is None:
            return click.Command.invoke(self, ctx)
        name, command, rest = self.resolve_command(ctx, args)
        # A sibling of this command's context, so its usage reads `tenant backup prune`
        # (under this context, click would put [NAMES]... between the two words).
        with command.make_context(f"{ctx.info_name} {name}", rest, parent=ctx.parent) as sub:
            return sub.command.invoke(sub)


@cli.group(cls=CommandWithSubcommands)
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every tenant.")
@click.option("--with-secrets", is_flag=True, help="Include secrets.env (the archive is mode 0600).")
@click.option("--json", "as_json", is_flag=True, help="Print the archive paths as JSON.")
@click.pass_context
def backup(ctx, names, all_, with_secrets, as_json):
    """Archive tenants: database dump, media and tenant folder, with checksums.

    tenant backup acme beta | tenant backup --all: one archive per tenant in the backups
    folder; then backups.keep (when set in tenantkit.yaml) prunes their older archives.
    tenant backup prune: apply a retention now (see `tenant backup prune --help`)."""
    try:
        paths = orch.backup(_project(ctx), names, all_, with_secrets, report)
    except PartlyFailed as partly:  # the archives that were made are listed all the same
        click.echo(json.dumps([str(p) for p in partly.done]) if as_json else "\n".join(map(str, partly.done)))
        raise
    if as_json:
        click.echo(json.dumps([str(p) for p in paths]))
    for path in [] if as_json else paths:
        click.echo(str(path))


@backup.command("prune")
@click.option("--keep", type=click.IntRange(1), metavar="N",
              help="Archives to keep per tenant, newest first (default: backups.keep in tenantkit.yaml).")
@click.option("--removed", is_flag=True,
              help="Also prune archives of removed tenants (the newest, the one `tenant rm` made, always stays).")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print every archive's decision as JSON.")
@click.pass_context
def backup_prune(ctx, keep, removed, dry_run, as_json):
    """Remove old archives: keep the newest N of each tenant.

    Never removed: a tenant's newest archive, a pre-deploy backup `tenant rollback` may
    restore, the archive of a `tenant rm` under way, and archives of removed tenants
    (unless --removed)."""
    decisions = orch.prune_backups(_project(ctx), keep, removed, dry_run, report)
    if as_json:
        click.echo(json.dumps([d.to_dict(dry_run) for d in decisions], indent=2))
        return
    table = [("ACTION", "TENANT", "ARCHIVE", "WHY")]
    table += [(d.to_dict(dry_run)["action"], d.archive.tenant, display_path(d.archive.path), d.why)
              for d in decisions]
    if decisions:
        print_table(table)
    gone = sum(1 for d in decisions if not d.keep)
    click.echo(f"{'would remove' if dry_run else 'removed'} {gone} of {len(decisions)} archive(s)")


@cli.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--keep-data", is_flag=True,
              help="Remove only the running parts (container, network, vhost); keep database and folder.")
@click.pass_context
def rm(ctx, name, yes, keep_data):
    """Remove a tenant: archive it first, then drop its database and delete its folder."""
    project = _project(ctx)
    what = ("its container, network and vhost (data kept)" if keep_data else
            f"archive it, then drop its database and role and delete tenants/{name}/")
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(f"removing {name} needs confirmation: pass --yes")
        click.confirm(f"Remove tenant {name}: {what}?", abort=True, err=True)
    saved = orch.rm(project, name, keep_data, report)
    click.echo(f"removed {name}" + (f"; archive: {saved}" if saved else "; data kept"))


@cli.command()
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--as", "as_name", metavar="NEW", help="Restore under a new name (with new credentials).")
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Host(s) of the restored tenant.")
@click.option("--trust-code", is_flag=True,
              help="Also restore the archive's code (local_settings.py, the tenant's own apps), which runs as "
                   "the tenant: only for archives you made yourself.")
@click.pass_context
def restore(ctx, archive, as_name, hosts, trust_code):
    """Bring a tenant back from an archive made by `tenant backup` or `tenant rm`.

    Archives are checked whole (manifest, checksums, no extra or unsafe member) before
    anything is restored; the database loads as the tenant's own role."""
    project = _project(ctx)
    tenant = orch.restore(project, archive, as_name, hosts, report, trust_code=trust_code)
    click.echo(f"{tenant.name}\t{project.tenant_url(tenant)}")


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--host", "hosts", multiple=True, metavar="HOST", required=True, help="Host of the new tenant.")
@click.pass_context
def clone(ctx, src, dst, hosts):
    """Create DST with a copy of SRC's database and media, and its own credentials."""
    project = _project(ctx)
    tenant = orch.clone(project, src, dst, hosts, report)
    click.echo(f"{tenant.name}\t{project.tenant_url(tenant)}")


@cli.command("import")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--move", is_flag=True, help="Move the media instead of copying it.")
@click.pass_context
def import_(ctx, path, move):
    """Import tenants from the classic layout (PATH/shared/tenants/*/settings.py)."""
    tenants = orch.import_classic(_project(ctx), path, move, report)
    for tenant in tenants:
        click.echo(f"{tenant.name}\t{', '.join(tenant.hosts)}\tdatabase {tenant.names.database}")
    click.echo(f"start them with: {invoked_as()} up {' '.join(t.name for t in tenants)}")


@cli.group()
def release():
    """Build and remove releases: immutable images of the project's code."""


@release.command("build")
@click.argument("version")
@click.option("--force", is_flag=True, help="Rebuild an existing release (releases are otherwise immutable).")
@click.option("--json", "as_json", is_flag=True, help="Print the release record as JSON.")
@click.pass_context
def release_build(ctx, version, force, as_json):
    """Build the image of the current code as release VERSION."""
    record = orch.build_release(_project(ctx), version, force, report)
    click.echo(json.dumps(record, indent=2) if as_json else
               f"release {record['version']}: {record['image']} (source {record['revision'] or 'not a git checkout'})")


@release.command("push")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Print what was pushed as JSON.")
@click.pass_context
def release_push(ctx, version, as_json):
    """Push release VERSION's image to the registry (swarm.registry in tenantkit.yaml).

    Services on a swarm name images by their digest in the registry, so every node runs
    the same bytes; `up` and `deploy` push what they need themselves."""
    record = orch.push_release(_project(ctx), version, report)
    click.echo(json.dumps(record, indent=2) if as_json else f"release {record['version']}: pushed as {record['pushed']}")


def print_removal(outcome: dict, as_json: bool) -> None:
    """What `release rm` or `release prune` removed (or would), and what it kept and why."""
    if as_json:
        click.echo(json.dumps(outcome, indent=2))
        return
    verb = "would remove" if outcome["dry_run"] else "removed"
    table = [("RELEASE", "ACTION", "DETAIL")]
    for r in outcome["removed"]:
        detail = ", ".join(r["untag"]) or "image already gone"
        detail += " (image deleted)" if r["image_deleted"] else ""
        table.append((r["version"], verb, detail + (f"; {display_path(Path(r['assets']))}" if r["assets"] else "")))
    table += [(k["version"], "keep", k["why"]) for k in outcome["kept"]]
    if len(table) > 1:
        print_table(table)
    click.echo(f"{verb} {len(outcome['removed'])} release(s)")


@release.command("rm")
@click.argument("versions", nargs=-1, required=True, metavar="VERSION...")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@click.pass_context
def release_rm(ctx, versions, dry_run, as_json):
    """Remove releases: image tag (the image too when nothing else needs it), assets, record.

    Refused, with nothing removed, for a release a tenant is pinned to, runs (a deploy in
    flight included) or may roll back to, and for the current release."""
    print_removal(orch.remove_releases(_project(ctx), versions, dry_run, report), as_json)


@release.command("prune")
@click.option("--keep", type=click.IntRange(0), required=True, metavar="N",
              help="Newest releases (by build time) to keep, besides those in use.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed and kept as JSON.")
@click.pass_context
def release_prune(ctx, keep, dry_run, as_json):
    """Remove all releases but the N newest and those in use or that a rollback may need."""
    print_removal(orch.prune_releases(_project(ctx), keep, dry_run, report), as_json)


@cli.command("releases")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def releases_(ctx, as_json):
    """List releases and the working tree, which one is current, and which tenants run which.

    Every tenant is in exactly one row, the one whose image it runs; ROLLBACK lists the
    tenants `tenant rollback` would return to that row."""
    project = _project(ctx)
    rows = orch.list_releases(project)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    names = {"working-tree": "(working tree)", "image": "(image)"}
    table = [("", "VERSION", "BUILT", "REVISION", "IMAGE", "TENANTS", "ROLLBACK")]
    table += [("*" if r["current"] else "", r["version"] or names[r["kind"]], r["built"] or "-",
               (r["revision"] or "-")[:12], r["image"], ",".join(r["tenants"]) or "-", ",".join(r["rollback"]) or "-")
              for r in rows]
    print_table(table)
    click.echo("\n* current: what new tenants start on; a `tenant deploy` to all tenants makes its release current"
               + ("\ndev mode is on: every tenant runs the working tree (`tenant dev off` ends it)"
                  if project.dev else ""))


@cli.command()
@click.argument("version")
@click.argument("names", nargs=-1)
@click.option("--keep-going", is_flag=True, help="Carry on with other tenants after one fails.")
@click.option("--jobs", "-j", type=click.IntRange(1, 16), default=2, show_default=True, help="Tenants at a time.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
@click.pass_context
def deploy(ctx, version, names, keep_going, jobs, as_json):
    """Deploy release VERSION to tenants (default: all but pinned ones), without downtime."""
    outcomes = orch.deploy(_project(ctx), version, names, keep_going, jobs, report)
    print_outcomes(outcomes, None, "deploy", as_json)


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
@click.pass_context
def rollback(ctx, names, as_json):
    """Return tenants (default: all that have one) to their previous release."""
    outcomes = orch.rollback(_project(ctx), names, report)
    print_outcomes(outcomes, None, "rollback", as_json)


@cli.command()
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.pass_context
def dev(ctx, switch):
    """Development mode: every tenant runs the working tree with reloading (off: their releases)."""
    project = _project(ctx)
    for tenant in orch.dev(project, switch == "on", report):
        click.echo(f"{tenant.name}\t{project.tenant_url(tenant)}")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Settings checks at a time.")
@click.pass_context
def doctor(ctx, names, as_json, jobs):
    """Check the engine, Compose, network pool, database, proxy, ports, settings and leftovers,
    naming the fix for each problem; changes nothing. Exit 1 when a check failed.

    With NAMES, the checks about tenants (settings, ports, vhosts) look at those only."""
    findings = orch.doctor(_project(ctx), names, jobs, report)
    counts = {status: sum(1 for f in findings if f.status == status) for status in ("ok", "warn", "fail")}
    if as_json:
        click.echo(json.dumps({"ok": counts["fail"] == 0, "counts": counts,
                               "checks": [f.to_dict() for f in findings]}, indent=2))
    else:
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        width = max(len(f.check) for f in findings)
        for f in findings:
            click.echo(f"{click.style(f.status.upper().ljust(4), fg=colours[f.status], bold=f.status != 'ok')}  "
                       f"{f.check.ljust(width)}  {f.message}")
            if f.fix:
                click.echo(f"{'':4}  {'':{width}}  fix: {f.fix}")
        click.echo(f"\n{counts['fail']} failed, {counts['warn']} warning{'' if counts['warn'] == 1 else 's'}, "
                   f"{counts['ok']} ok")
    if counts["fail"]:
        ctx.exit(EXIT_FAILED)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn errors into one line and an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("TENANTKIT_DEBUG") == "1"
    progress.use_bars(sys.stderr.isatty() and os.environ.get("TERM") != "dumb")
    try:
        code = cli.main(args=argv, prog_name="tenant", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.Abort:
        click.echo("tenant: aborted", err=True)
        code = EXIT_FAILED
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"tenant: {exc.format_message()} (see `tenant --help`)", err=True)
        code = EXIT_USAGE
    except ConfigError as exc:
        if debug:
            raise
        click.echo("tenant: " + " ".join(str(exc).split("\n")), err=True)
        code = EXIT_USAGE
    except OperationFailed as exc:
        if debug:
            raise
        click.echo(f"tenant: {exc}", err=True)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # the last resort: never a bare traceback without --debug
        if debug:
            raise
        click.echo(f"tenant: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", err=True)
        code = EXIT_FAILED
    sys.exit(code if isinstance(code, int) else 0)

"""Create and isolate each tenant's PostgreSQL database and role."""
from __future__ import annotations

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

import os
import subprocess
from dataclasses import dataclass

from ..model import ConfigError, Project, TenantNames
from .engine import OperationFailed, compose_command, tail
from .secrets import read_env_file


def admin_password(project: Project) -> str:
    db = project.database
    path = project.db_env_file if db.service else db.admin_password_file
    try:
        if db.service:
            return read_env_file(path)["POSTGRES_PASSWORD"]
        return path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, KeyError):
        raise ConfigError(f"the database admin password is missing from {path}; "
                          "run `tenant render` to generate it (compose db) or create the file") from None


@retry(retry=retry_if_exception_type(psycopg2.OperationalError), stop=stop_after_delay(60),
       wait=wait_fixed(0.5), reraise=True)
def _connect(**params) -> psycopg2.extensions.connection:
    return psycopg2.connect(**params)


def admin_connect(project: Project, dbname: str = "postgres",
                  retry: bool = True) -> psycopg2.extensions.connection:
    """An autocommit superuser connection, retried while the server starts."""
    db = project.database
    connect = _connect if retry else psycopg2.connect
    conn = connect(host=db.admin_host, port=db.admin_port, user=db.admin_user,
                   password=admin_password(project), dbname=dbname, connect_timeout=3)
    conn.autocommit = True
    return conn


def harden_server(conn) -> None:
    """No role but a superuser may connect to the maintenance databases."""
    with conn.cursor() as cur:
        for name in ("postgres", "template1"):
            cur.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))


def provision_database(conn, names: TenantNames, password: str, connection_limit: int = -1) -> bool:
    """Create (or repair) the tenant's role and database; True when the database is new.

    The role is a plain login role that owns only its database; CONNECT is revoked from
    PUBLIC so no other tenant's role can even open it. CONNECTION LIMIT caps what the
    role may hold, so one busy tenant cannot take every connection of the server.
    """
    role, database = sql.Identifier(names.role), sql.Identifier(names.database)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (names.role,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                            "NOREPLICATION CONNECTION LIMIT %s PASSWORD %s").format(role),
                    (connection_limit, password))
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (names.database,))
        created = cur.fetchone() is None
        if created:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0")
                        .format(database, role))
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
        cur.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(database, role))
    return created


def pg_client(project: Project, program: str, *args: str) -> tuple[list[str], dict]:
    """The command (and environment) that runs a PostgreSQL client as the admin user:
    inside the compose db service, or on this host for an external server."""
    db = project.database
    if db.service:
        return [*compose_command(project), "exec", "-T", "db", program, "-U", db.admin_user, *args], {}
    env = {"PGPASSWORD": admin_password(project), "PGHOST": db.host, "PGPORT": str(db.port),
           "PGUSER": db.admin_user}
    return [program, *args], env


def dump_database(project: Project, names: TenantNames, target) -> None:
    """pg_dump (custom format, without owners or grants) of the tenant's database into a file."""
    command, env = pg_client(project, "pg_dump", "-Fc", "--no-owner", "--no-privileges", names.database)
    with open(target, "wb") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env})
    if result.returncode != 0:
        raise OperationFailed(f"pg_dump of {names.database} failed: {tail(result.stderr.decode(errors='replace'))}")


def restore_database(project: Project, names: TenantNames, source) -> None:
    """pg_restore a dump into the tenant's (new, empty) database, as its role, in one transaction."""
    command, env = pg_client(project, "pg_restore", "--no-owner", "--no-privileges", f"--role={names.role}",
                             "--single-transaction", "--exit-on-error", "-d", names.database)
    with open(source, "rb") as dump:
        result = subprocess.run(command, stdin=dump, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})
    if result.returncode != 0:
        raise OperationFailed(f"pg_restore into {names.database} failed: "
                              f"{tail(result.stdout.decode(errors='replace'))}")


def drop_database(conn, names: TenantNames) -> None:
    """Drop the tenant's database (closing its connections) and its role."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (names.database,))
        if cur.fetchone():
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(names.database)))
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (names.role,))
        if cur.fetchone():
            cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(names.role)))


def database_exists(conn, names: TenantNames) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (names.database,))
        return cur.fetchone() is not None


@dataclass(frozen=True)
class Connections:
    """Connections in use on the server, against its limit, and by database."""

    in_use: int
    limit: int
    by_database: dict[str, int]


def connections(conn) -> Connections:
    with conn.cursor() as cur:
        cur.execute("SHOW max_connections")
        limit = int(cur.fetchone()[0])
        cur.execute("SELECT datname, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                    "GROUP BY datname")
        by_database = {name: count for name, count in cur.fetchall() if name}
    return Connections(sum(by_database.values()), limit, by_database)


def database_sizes(conn) -> dict[str, int]:
    """Bytes used by every database on the server, by name."""
    with conn.cursor() as cur:
        cur.execute("SELECT datname, pg_database_size(datname) FROM pg_database WHERE NOT datistemplate")
        return dict(cur.fetchall())


def applied_migrations(project: Project, names: TenantNames) -> set[tuple[str, str]] | None:
    """The (app, name) migrations recorded in the tenant's database; None when it has none yet."""
    try:
        conn = admin_connect(project, names.database, retry=False)
    except psycopg2.OperationalError:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('django_migrations') IS NOT NULL")
            if not cur.fetchone()[0]:
                return None
            cur.execute("SELECT app, name FROM django_migrations")
            return set(cur.fetchall())
    finally:
        conn.close()

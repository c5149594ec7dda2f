"""Create and isolate each tenant's PostgreSQL database and role."""
from __future__ import annotations

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

import hashlib
import os
import subprocess
from dataclasses import dataclass, replace

from ..model import ConfigError, Project, TenantNames
from .engine import OperationFailed, compose_command, tail
from .failpoints import failpoint
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


def _on_swarm(project: Project) -> bool:
    return project.engine == "swarm" and project.database.service


def _swarm_endpoint(project: Project) -> tuple[str, int, str]:
    """The swarm db task's address on this node, its port and its container."""
    from . import engine, swarm
    return swarm.database_endpoint(engine.connect(), project)


def admin_connect(project: Project, dbname: str = "postgres",
                  retry: bool = True) -> psycopg2.extensions.connection:
    """An autocommit superuser connection, retried while the server starts."""
    db = project.database
    host, port = (_swarm_endpoint(project)[:2] if _on_swarm(project) else (db.admin_host, db.admin_port))
    connect = _connect if retry else psycopg2.connect
    conn = connect(host=host, port=port, user=db.admin_user,
                   password=admin_password(project), dbname=dbname, connect_timeout=3)
    conn.autocommit = True
    return conn


def harden_server(conn) -> None:
    """No role but a superuser may connect to the maintenance databases."""
    with conn.cursor() as cur:
        for name in ("postgres", "template1"):
            cur.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))


# COMMENT ON DATABASE of one that is being made (each starts with UNSETTLED_PREFIX):
UNSETTLED_PREFIX = "tenantkit: "
RESTORING = "tenantkit: restore in progress"  # COMMENT ON DATABASE while an archive loads into it
LOADED = "tenantkit: restored"  # a rollback's scratch copy, complete and ready to swap in


def _check_tenant_role(cur, names: TenantNames) -> bool:
    """Whether the tenant's role exists; ConfigError when it exists with powers tenantkit
    never gives a tenant (it is someone else's role, and would be demoted)."""
    cur.execute("SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls "
                "FROM pg_roles WHERE rolname = %s", (names.role,))
    row = cur.fetchone()
    if row and row[0]:
        raise ConfigError(f"the role {names.role!r} exists on the database server with administrative rights, "
                          "so it is not a tenant's role and tenantkit will not change it; give the tenant "
                          "another `database: user` in tenant.yaml")
    return row is not None


def provision_database(conn, names: TenantNames, password: str, connection_limit: int = -1,
                       comment: str | None = None, template: str | None = None,
                       project: Project | None = None) -> str | None:
    """Create (or repair) the tenant's role and database. Returns None when the database
    existed, "created" for a new empty one, "cloned" for a copy of `template` (a ready
    template database of `project`: see make_template), which needs no migrations.

    The role is a plain login role that owns only its database; CONNECT is revoked from
    PUBLIC so no other tenant's role can even open it. CONNECTION LIMIT caps what the
    role may hold, so one busy tenant cannot take every connection of the server. A role
    with administrative rights, or a database another role owns, is refused, never taken
    over. `comment` marks a new database (a restore in progress).
    """
    role, database = sql.Identifier(names.role), sql.Identifier(names.database)
    finish_swap(conn, names)
    with conn.cursor() as cur:
        verb = "ALTER" if _check_tenant_role(cur, names) else "CREATE"
        cur.execute("SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE datname = %s", (names.database,))
        row = cur.fetchone()
        if row and row[1] == CLONING:  # a copy a crash interrupted: new, so nothing is lost
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(database))
            row = None
        if row and row[0] != names.role:
            raise ConfigError(f"the database {names.database!r} exists on the server and belongs to {row[0]!r}, "
                              "not to the tenant's role; give the tenant another `database: name`")
        cur.execute(sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                            "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT %s PASSWORD %s").format(role),
                    (connection_limit, password))
        outcome = None
        if row is None and template and project is not None and not comment:
            _clone(project, cur, names, template)
            outcome = "cloned"
        elif row is None:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0")
                        .format(database, role))
            if comment:
                cur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(database), (comment,))
            outcome = "created"
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
        cur.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(database, role))
    return outcome


# ---------------------------------------------------------------------------
# Template databases: a new tenant's database is a copy of one that a release's migrations
# already ran on (CREATE DATABASE ... TEMPLATE: about 0.05 s, against seconds of migrate).
#
# A template is cut from a tenant database right after its first migrate, before the
# tenant's container ever started, so it holds what the migrations made and nothing a
# tenant wrote. The template database belongs to the admin, CONNECT is revoked from
# PUBLIC, and the objects in it belong to TEMPLATE_ROLE, a role that cannot log in and
# owns nothing else; in a copy, REASSIGN OWNED hands them all (tables, sequences, types,
# functions, whatever the migrations made) to the new tenant's role.

TEMPLATE_ROLE = "tenantkit_template"
TEMPLATE_PREFIX = "tk_tpl_"
CLONING = "tenantkit: copy from a template in progress"


def template_name(project: Project, key: str) -> str:
    """The template database of a key (the image and what else decides the schema)."""
    return TEMPLATE_PREFIX + hashlib.sha256(f"{project.name}\0{key}".encode()).hexdigest()[:24]


def _template_comment(project: Project, image_id: str) -> str:
    return f"tenantkit template: project={project.name} image={image_id}"


def ready_templates(conn, project: Project) -> set[str]:
    """This project's complete template databases (one query)."""
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s AND "
                    "shobj_description(oid, 'pg_database') LIKE %s",
                    (TEMPLATE_PREFIX + "%", _template_comment(project, "") + "%"))
        return {row[0] for row in cur.fetchall()}


def _clone(project: Project, cur, names: TenantNames, template: str) -> None:
    """The tenant's database as a copy of a template, every object handed to its role.
    Marked CLONING until the hand-over commits: provisioning drops such a copy."""
    database = sql.Identifier(names.database)
    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
        database, sql.Identifier(names.role), sql.Identifier(template)))
    cur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(database), (CLONING,))
    failpoint("up", "copied")
    inside = admin_connect(project, names.database, retry=False)
    try:
        inside.autocommit = False
        with inside.cursor() as icur:
            icur.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                sql.Identifier(TEMPLATE_ROLE), sql.Identifier(names.role)))
            icur.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(database))
        inside.commit()
    finally:
        inside.close()


def drop_template(cur, name: str) -> None:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    if cur.fetchone():
        cur.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name)))
        cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def make_template(project: Project, conn, names: TenantNames, template: str, image_id: str) -> bool:
    """Copy a tenant database that was just migrated for the first time into a template.

    False (and nothing made) when the database is in use. The template's objects move
    from the tenant's role to TEMPLATE_ROLE in one transaction, which also gives the
    tenant's database back to its role (REASSIGN OWNED moves databases too)."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TEMPLATE_ROLE,))
        if not cur.fetchone():
            cur.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(TEMPLATE_ROLE)))
        drop_template(cur, template)  # an incomplete one a crash left
        try:
            cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(template), sql.Identifier(names.database)))
        except psycopg2.errors.ObjectInUse:
            return False
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(template)))
        cur.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(sql.Identifier(template)))
    failpoint("up", "template-copied")
    inside = admin_connect(project, template, retry=False)
    try:
        inside.autocommit = False
        with inside.cursor() as icur:
            icur.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                sql.Identifier(names.role), sql.Identifier(TEMPLATE_ROLE)))
            icur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(names.database), sql.Identifier(names.role)))
            icur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(sql.Identifier(template)),
                         (_template_comment(project, image_id),))
        inside.commit()
    finally:
        inside.close()
    return True


def prune_templates(conn, project: Project, keep_images: set[str]) -> list[str]:
    """Drop this project's templates (complete or not) of images not in `keep_images`."""
    with conn.cursor() as cur:
        cur.execute("SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database "
                    "WHERE datname LIKE %s", (TEMPLATE_PREFIX + "%",))
        rows = cur.fetchall()
        prefix = _template_comment(project, "")
        dropped = []
        for name, comment in rows:
            if comment.startswith(prefix) and comment[len(prefix):] not in keep_images:
                drop_template(cur, name)
                dropped.append(name)
    return dropped


def comment_of(conn, database: str) -> str | None:
    with conn.cursor() as cur:
        cur.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (database,))
        row = cur.fetchone()
    return row[0] if row else None


def set_comment(conn, database: str, comment: str | None) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(sql.Identifier(database)), (comment,))


# ---------------------------------------------------------------------------
# Replacing a tenant's database (rollback) without a moment where a crash loses it: the
# archive loads into a scratch database, which is then renamed into place.

def _scratch(names: TenantNames) -> tuple[str, str]:
    """The scratch database a replacement loads into, and the name the old one has while
    they trade places (short: a tenant's database name may already be 63 bytes)."""
    digest = hashlib.sha256(names.database.encode()).hexdigest()[:16]
    return f"tk_new_{digest}", f"tk_old_{digest}"


def _exists(cur, database: str) -> bool:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
    return cur.fetchone() is not None


def _terminate(cur, database: str) -> None:
    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))


def finish_swap(conn, names: TenantNames) -> None:
    """Complete (or undo) a replacement a crash interrupted: a loaded scratch copy goes
    into place, an incomplete one is dropped, and the old database goes once replaced."""
    scratch, old = _scratch(names)
    with conn.cursor() as cur:
        # One look on the common path (nothing was interrupted): it runs at every provisioning.
        cur.execute("SELECT count(*) FROM pg_database WHERE datname IN (%s, %s)", (scratch, old))
        if cur.fetchone()[0] == 0:
            return
        if _exists(cur, scratch):
            if comment_of(conn, scratch) != LOADED:
                cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(scratch)))
            else:
                if _exists(cur, names.database):
                    _terminate(cur, names.database)
                    cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(names.database), sql.Identifier(old)))
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(scratch), sql.Identifier(names.database)))
                cur.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(names.database)))
        if _exists(cur, old) and _exists(cur, names.database):
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(old)))


def replace_database(project: Project, conn, names: TenantNames, password: str, dump,
                     on_step=lambda step: None) -> None:
    """Replace the tenant's database with a dump: load it into a scratch database (as the
    tenant's role), then trade names. A crash anywhere leaves the old database or the new
    one in place, and finish_swap (run by every provisioning) completes the trade."""
    scratch, _ = _scratch(names)
    finish_swap(conn, names)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
            sql.Identifier(scratch), sql.Identifier(names.role)))
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(sql.Identifier(scratch)), (RESTORING,))
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(scratch)))
    restore_database(project, replace(names, database=scratch), dump, password)
    set_comment(conn, scratch, LOADED)
    on_step("restored")
    finish_swap(conn, names)


def pg_client(project: Project, program: str, *args: str) -> tuple[list[str], dict]:
    """The command (and environment) that runs a PostgreSQL client as the admin user:
    inside the compose db service, or on this host for an external server."""
    db = project.database
    if _on_swarm(project):  # inside the db service's task, on this node
        return ["docker", "exec", "-i", _swarm_endpoint(project)[2], program, "-U", db.admin_user, *args], {}
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


def restore_database(project: Project, names: TenantNames, source, password: str) -> None:
    """pg_restore a dump into the tenant's (new, empty) database in one transaction,
    connected as the tenant's own role: a dump is untrusted input, and a superuser
    session (even with --role) could leave its role or run programs on the server."""
    db = project.database
    args = ["--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error", "-d", names.database]
    if _on_swarm(project):
        command = ["docker", "exec", "-i", _swarm_endpoint(project)[2], "pg_restore", "-U", names.role, *args]
        env = {}
    elif db.service:  # inside the db container, over its local socket
        command = [*compose_command(project), "exec", "-T", "db", "pg_restore", "-U", names.role, *args]
        env = {}
    else:
        command = ["pg_restore", *args]
        env = {"PGPASSWORD": password, "PGHOST": db.host, "PGPORT": str(db.port), "PGUSER": names.role}
    with open(source, "rb") as dump:
        result = subprocess.run(command, stdin=dump, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})
    if result.returncode != 0:
        raise OperationFailed(f"pg_restore into {names.database} failed: "
                              f"{tail(result.stdout.decode(errors='replace'))}")


def drop_database(conn, names: TenantNames) -> None:
    """Drop the tenant's database (closing its connections), a test database of its (a
    `tenant test` killed or under way: the role owns it), and its role."""
    drop_test_database(conn, names)
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
    """The (app, name) migrations recorded in the tenant's database; None when it has none
    yet (no database, or no django_migrations table). One query on a new connection."""
    try:
        conn = admin_connect(project, names.database, retry=False)
    except psycopg2.OperationalError:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT app, name FROM django_migrations")
            return set(cur.fetchall())
    except psycopg2.errors.UndefinedTable:
        return None
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Read-only looks for `tenant doctor`: one query each, whatever the number of tenants.

def swap_names(names: TenantNames) -> tuple[str, str]:
    """The scratch databases a replacement of the tenant's database uses (see
    replace_database): they belong to the tenant while a rollback's swap is unfinished."""
    return _scratch(names)


@dataclass(frozen=True)
class Server:
    """What the server says about itself: its version and connection budget."""

    version: str
    version_num: int
    max_connections: int
    reserved: int  # superuser_reserved_connections: not for tenants
    in_use: int


def server(conn) -> Server:
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
                    "current_setting('max_connections')::int, "
                    "current_setting('superuser_reserved_connections')::int, "
                    "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')")
        version, number, limit, reserved, in_use = cur.fetchone()
    return Server(version.split()[0], number, limit, reserved, in_use)


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    owner: str
    comment: str
    is_template: bool
    bytes: int | None  # None for templates (not measured)


def inventory(conn) -> list[DatabaseInfo]:
    """Every database on the server with its owner, comment and size (one query)."""
    with conn.cursor() as cur:
        cur.execute("SELECT d.datname, pg_get_userbyid(d.datdba), coalesce(shobj_description(d.oid, 'pg_database'), ''), "
                    "d.datistemplate, CASE WHEN d.datistemplate OR NOT d.datallowconn THEN NULL "
                    "ELSE pg_database_size(d.oid) END FROM pg_database d ORDER BY d.datname")
        return [DatabaseInfo(*row) for row in cur.fetchall()]


@dataclass(frozen=True)
class RoleInfo:
    name: str
    can_login: bool
    powerful: bool  # superuser, or may create roles or databases: never a tenant's


def login_roles(conn) -> list[RoleInfo]:
    """Every role that can log in, PostgreSQL's own (pg_*) excepted (one query)."""
    with conn.cursor() as cur:
        cur.execute("SELECT rolname, rolcanlogin, rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication "
                    "OR rolbypassrls FROM pg_roles WHERE rolcanlogin AND rolname NOT LIKE 'pg\\_%' ORDER BY rolname")
        return [RoleInfo(*row) for row in cur.fetchall()]


# ---------------------------------------------------------------------------
# `tenant test`: a throwaway database for the project's test suite. A tenant's role may
# not create databases, so tenantkit makes one, owned by the role and closed to others
# like the tenant's own, and drops it afterwards. Its name holds a "." that no tenant's
# database can have, so it never meets one.

TEST_COMMENT = "tenantkit: test database of tenant "


def test_database_name(names: TenantNames) -> str:
    name = f"{names.database}.test"
    if len(name) > 63:  # PostgreSQL's limit: a long name is cut and made unique by a hash
        name = f"{names.database[:46]}_{hashlib.sha256(names.database.encode()).hexdigest()[:8]}.test"
    return name


def create_test_database(conn, names: TenantNames) -> str:
    """A new, empty test database owned by the tenant's role (one a killed run left is
    dropped first); its name."""
    name = test_database_name(names)
    database = sql.Identifier(name)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0")
                    .format(database, sql.Identifier(names.role)))
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(database), (TEST_COMMENT + names.tenant,))
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
        cur.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(database, sql.Identifier(names.role)))
    return name


def drop_test_database(conn, names: TenantNames) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(test_database_name(names))))

"""Create and isolate each tenant's PostgreSQL database and role."""
from __future__ import annotations

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from ..model import ConfigError, Project, TenantNames
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


def admin_connect(project: Project, dbname: str = "postgres") -> psycopg2.extensions.connection:
    """An autocommit superuser connection, retried while the server starts."""
    db = project.database
    conn = _connect(host=db.admin_host, port=db.admin_port, user=db.admin_user,
                    password=admin_password(project), dbname=dbname, connect_timeout=3)
    conn.autocommit = True
    return conn


def harden_server(conn) -> None:
    """No role but a superuser may connect to the maintenance databases."""
    with conn.cursor() as cur:
        for name in ("postgres", "template1"):
            cur.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))


def provision_database(conn, names: TenantNames, password: str) -> bool:
    """Create (or repair) the tenant's role and database; True when the database is new.

    The role is a plain login role that owns only its database; CONNECT is revoked from
    PUBLIC so no other tenant's role can even open it.
    """
    role, database = sql.Identifier(names.role), sql.Identifier(names.database)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (names.role,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                            "NOREPLICATION PASSWORD %s").format(role), (password,))
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (names.database,))
        created = cur.fetchone() is None
        if created:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0")
                        .format(database, role))
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
        cur.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(database, role))
    return created

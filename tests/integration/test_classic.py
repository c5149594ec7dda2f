"""Classic mode: the seed's own setup on the host, Django under mod_wsgi, no containers."""
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest
import requests

from tenantkit.render.classic import daemon_user
from tests.conftest import tenant_cli, write_project
from tests.integration.host_apache import APACHE, HostApache
from tests.integration.conftest import free_port

TENANTS = {"classic_a": "Classic A & Co", "classic_b": "Classic B Ltd"}
USERS = {"classic_a": "tk-classic-a", "classic_b": "tk-classic-b"}
# Hand-written overrides, copied to shared/tenants/NAME by `tenant apache --mode wsgi`.
LOCAL_SETTINGS = {
    "classic_a": "import sys\n"
                 "if 'migrate' in sys.argv:  # who ran the migration\n"
                 "    with open(os.path.join(MEDIA_ROOT, 'migrated-by'), 'w') as _out:\n"
                 "        _out.write(str(os.getuid()))\n",
    "classic_b": "CLASSIC_B_PRIVATE = 'only classic b reads this'\n",
}


def psql(sql: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def host_postgres(tmp_path_factory):
    """The host's PostgreSQL 15 with an admin role for tenantkit."""
    if not Path(APACHE).exists() or not shutil.which("pg_ctlcluster"):
        message = "apache2, mod_wsgi and PostgreSQL are needed on the host: run `make host-services`"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    password = secrets.token_urlsafe(16)
    psql("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tkclassic_admin') "
         "THEN CREATE ROLE tkclassic_admin SUPERUSER LOGIN; END IF; END$$")
    psql(f"ALTER ROLE tkclassic_admin PASSWORD '{password}'")
    path = tmp_path_factory.mktemp("pg") / "admin-password"
    path.write_text(password)
    yield path
    for name in TENANTS:
        psql(f'DROP DATABASE IF EXISTS "{name}"')
        psql(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture(scope="module")
def classic(host_postgres):
    """Two tenants deployed as release 1.0.0 under a private mod_wsgi Apache."""
    root = Path(tempfile.mkdtemp(prefix="tkclassic-"))
    os.chmod(root, 0o755)  # Apache's daemon processes run as www-data
    project = write_project(root / "project", name="tkclassic", database={
        "service": False, "host": "127.0.0.1", "port": 5432, "admin_user": "tkclassic_admin",
        "admin_password_file": str(host_postgres)}, proxy={"mode": "none"})
    for name, title in TENANTS.items():
        assert tenant_cli(project, "new", name, "--host", f"{name.replace('_', '-')}.example.test",
                          "--title", title).code == 0
        (project / "tenants" / name / "local_settings.py").write_text(LOCAL_SETTINGS[name])
    port = free_port()
    apache = HostApache(root / "apache-instance", port, f"{root}/app/apache/*.conf")
    run = tenant_cli(project, "apache", "--mode", "wsgi", "--root", str(root / "app"),
                     "--release", "1.0.0", "--port", str(port))
    assert run.code == 0, run.err
    apache.start()
    yield root / "app", port, apache, project
    apache.stop()
    shutil.rmtree(root, ignore_errors=True)
    for user in USERS.values():
        subprocess.run(["userdel", user], capture_output=True)


def get(port, name, path="/", **kwargs):
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=30, allow_redirects=False,
                        headers={"Host": f"{name.replace('_', '-')}.example.test"}, **kwargs)


def test_the_layout_is_the_seeds(classic):
    app, *_ = classic
    assert os.readlink(app / "current") == "releases/1.0.0"
    assert (app / "current" / "source" / "manage.py").is_file()
    assert os.readlink(app / "current" / "source" / "tenants") == "../../../shared/tenants"
    for name in TENANTS:
        folder = app / "shared" / "tenants" / name
        assert (folder / "settings.py").is_file() and (folder / "wsgi.py").is_file()
        assert (folder / "www" / "content").is_dir()
        assert oct((folder / "secrets.env").stat().st_mode & 0o777) == "0o600"
        tenant_user = pwd.getpwnam(USERS[name])
        assert (folder / "secrets.env").stat().st_uid == tenant_user.pw_uid
        assert (folder / "www" / "content").stat().st_uid == tenant_user.pw_uid
        for private in ("local_settings.py", "settings.py", "wsgi.py"):
            info = (folder / private).stat()
            assert (info.st_uid, info.st_gid, oct(info.st_mode & 0o777)) == (0, tenant_user.pw_gid, "0o640")
    vhost = (app / "apache" / "classic_a.conf").read_text()
    assert f'python-home="{app}/current/python"' in vhost
    assert f'python-path="{app}/shared/tenants/classic_a:{app}/current/source"' in vhost
    assert "WSGIDaemonProcess classic_a user=tk-classic-a group=tk-classic-a " in vhost
    assert "WSGIProcessGroup classic_a" in vhost
    assert "WSGIApplicationGroup %{GLOBAL}" in vhost
    assert f'WSGIScriptAlias / "{app}/shared/tenants/classic_a/wsgi.py"' in vhost
    assert 'Alias "/_assets/"' in vhost and 'Alias "/_content/"' in vhost


def test_the_generated_config_passes_apaches_test(classic):
    *_, apache, _ = classic
    assert "Syntax OK" in apache.check()


def test_each_tenant_answers_on_its_host_from_its_own_database(classic):
    _, port, *_ = classic
    for name, title in TENANTS.items():
        response = get(port, name)
        assert response.status_code == 200, response.text[:500]
        assert f'<h1 id="title">{title.replace("&", "&amp;")}</h1>' in response.text
        assert f'<code id="database">{name}</code>' in response.text
    assert get(port, "unknown").status_code == 421


def test_a_note_added_to_one_classic_tenant_is_absent_from_the_other(classic):
    _, port, *_ = classic
    session = requests.Session()
    headers = {"Host": "classic-a.example.test"}
    session.get(f"http://127.0.0.1:{port}/", headers=headers, timeout=30)
    response = session.post(f"http://127.0.0.1:{port}/notes/", headers=headers, timeout=30,
                            data={"text": "classic a only", "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                            allow_redirects=False)
    assert response.status_code == 302
    assert "classic a only" in get(port, "classic_a").text
    assert "classic a only" not in get(port, "classic_b").text


def test_media_and_assets_are_served_by_apache_from_the_right_folders(classic):
    app, port, *_ = classic
    media = app / "shared" / "tenants" / "classic_a" / "www" / "content" / "hello.txt"
    media.write_text("from classic a\n")
    assert get(port, "classic_a", "/_content/hello.txt").text == "from classic a\n"
    assert get(port, "classic_b", "/_content/hello.txt").status_code == 404
    assert get(port, "classic_a", "/_assets/admin/css/base.css").status_code == 200


def test_manage_py_with_tenant_settings_works_as_in_the_seed(classic):
    app, *_ = classic
    result = subprocess.run([str(app / "current" / "python" / "bin" / "python"), "manage.py", "showmigrations",
                             "notes", "--settings=tenants.classic_b.settings"],
                            cwd=app / "current" / "source", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "[X] 0001_initial" in result.stdout


def test_a_tenant_whose_settings_fail_to_import_fails_loudly_and_alone(classic):
    app, port, apache, _ = classic
    broken = app / "shared" / "tenants" / "classic_b" / "local_settings.py"
    original = broken.read_text()
    broken.write_text("raise RuntimeError('classic b broken on purpose')\n")
    apache.graceful()
    try:
        assert get(port, "classic_b").status_code == 500
        assert get(port, "classic_a").status_code == 200
        errors = (app / "logs" / "classic_b.error.log").read_text()
        assert "RuntimeError: classic b broken on purpose" in errors
    finally:
        broken.write_text(original)
        apache.graceful()
    assert get(port, "classic_b").status_code == 200


def test_each_tenants_daemon_processes_run_as_its_own_user(classic):
    _, port, *_ = classic
    for name in TENANTS:
        assert get(port, name).status_code == 200  # its daemon processes are up
    table = subprocess.run(["ps", "-eo", "user:32,args"], capture_output=True, text=True, check=True).stdout
    for name, user in USERS.items():
        owners = {line.split()[0] for line in table.splitlines() if f"(wsgi:{name})" in line}
        assert owners == {user}, table


def test_the_migration_runs_as_the_tenants_user_not_root(classic):
    app, *_ = classic
    marker = app / "shared" / "tenants" / "classic_a" / "www" / "content" / "migrated-by"
    assert marker.read_text() == str(pwd.getpwnam(USERS["classic_a"]).pw_uid)


def test_a_tenants_user_cannot_read_another_tenants_secrets_or_settings(classic):
    app, port, *_ = classic

    def read_as(user, path):
        return subprocess.run(["runuser", "-u", user, "--", "cat", str(path)], capture_output=True, text=True)

    b = app / "shared" / "tenants" / "classic_b"
    for private in ("secrets.env", "local_settings.py", "settings.py"):
        assert read_as(USERS["classic_b"], b / private).returncode == 0  # its own user can
        for other in (USERS["classic_a"], "www-data"):
            result = read_as(other, b / private)
            assert result.returncode != 0 and "Permission denied" in result.stderr, (other, private)
    assert read_as("www-data", app / "shared" / "tenants" / "classic_a" / "secrets.env").returncode != 0
    assert get(port, "classic_a").status_code == 200 and get(port, "classic_b").status_code == 200


def test_media_left_by_the_shared_user_of_an_older_layout_becomes_the_tenants(classic, tmp_path):
    app, port, _, project = classic
    content = app / "shared" / "tenants" / "classic_b" / "www" / "content"
    upload = content / "old-upload.txt"
    upload.write_text("uploaded under www-data\n")
    outside = tmp_path / "root-owned"
    outside.write_text("not the tenant's\n")
    os.link(outside, content / "linked")  # a hard link is never chowned through
    www = pwd.getpwnam("www-data")
    for path in (content, upload):
        os.chown(path, www.pw_uid, www.pw_gid)
    run = tenant_cli(project, "apache", "--mode", "wsgi", "--root", str(app),
                     "--release", os.readlink(app / "current").split("/")[-1], "--port", str(port))
    assert run.code == 0, run.err
    assert upload.stat().st_uid == content.stat().st_uid == pwd.getpwnam(USERS["classic_b"]).pw_uid
    assert outside.stat().st_uid == 0
    (content / "linked").unlink()


def test_a_tenants_system_user_name_fits_useradd():
    assert daemon_user("classic_a") == "tk-classic-a"
    long_one, long_two = "a" * 39 + "x", "a" * 39 + "y"
    assert len(daemon_user(long_one)) <= 32 and len(daemon_user(long_two)) <= 32
    assert daemon_user(long_one) != daemon_user(long_two)


def test_tenant_credentials_do_not_open_the_other_tenants_database(classic):
    app, *_ = classic
    secrets_text = (app / "shared" / "tenants" / "classic_a" / "secrets.env").read_text()
    password = secrets_text.split("TENANT_DB_PASSWORD=")[1].split()[0]
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        psycopg2.connect(host="127.0.0.1", port=5432, user="classic_a", password=password, dbname="classic_b")


def test_a_release_is_immutable_and_current_moves_to_a_new_one(classic):
    app, port, apache, project = classic
    run = tenant_cli(project, "apache", "--mode", "wsgi", "--root", str(app), "--release", "1.0.1",
                     "--port", str(port))
    assert run.code == 0, run.err
    apache.graceful()
    assert os.readlink(app / "current") == "releases/1.0.1"
    assert (app / "releases" / "1.0.0" / "source" / "manage.py").is_file()
    assert get(port, "classic_b").status_code == 200
    assert "classic a only" in get(port, "classic_a").text  # shared/ is kept across releases


def test_a_bad_release_name_is_refused(classic):
    *_, project = classic
    run = tenant_cli(project, "apache", "--mode", "wsgi", "--root", "/tmp/x", "--release", "../1")
    assert run.code == 2 and "is not a release version" in run.err

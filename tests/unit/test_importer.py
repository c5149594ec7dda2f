"""`tenant import` of classic tenants: nothing unsafe is read, copied, moved or written.

Importing only renders files (no Docker), so these run the real CLI on a fake classic layout.
"""
import os
import stat

import pytest

from tenantkit.act.secrets import read_env_file
from tests.conftest import snapshot, tenant_cli, write_project
from tests.unit.test_cli import assert_refused

NO_ENGINE = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}


@pytest.fixture
def layout(tmp_path):
    """A project with tenant acme, and a classic layout (example_app) to import from."""
    project = write_project(tmp_path / "project", database={
        "service": True, "publish_port": 54329, "admin_user": "tkadmin"})
    assert tenant_cli(project, "new", "acme", "--host", "acme.localhost", env=NO_ENGINE).code == 0
    return project, tmp_path / "example_app"


def classic_tenant(app, name, password="legacy password 1", database=None, user=None, media_root=None,
                   secret_key="legacy-secret-key"):
    """shared/tenants/NAME in the seed's layout, with one media file."""
    folder = app / "shared" / "tenants" / name
    (folder / "www" / "content").mkdir(parents=True)
    (folder / "www" / "content" / "old.txt").write_text(f"{name} media\n")
    media = repr(str(media_root)) if media_root else '"%s/www/content" % TENANT_ROOT'
    (folder / "settings.py").write_text(f'''from main.settings import *
ALLOWED_HOSTS = ["{name}.example.app"]
TENANT_ROOT = "{folder}"
SECRET_KEY = {secret_key!r}
DATABASES['default'] = {{
    'ENGINE': 'django.db.backends.postgresql',
    'NAME': {database or 'shop_' + name!r}, 'USER': {user or 'shop_' + name!r},
    'PASSWORD': {password!r}, 'HOST': 'db',
}}
MEDIA_ROOT = {media}
''')
    return folder


def import_refused(project, app, *words):
    """The import exits 2 with one line naming the problem, and neither tree changes."""
    before = snapshot(project), snapshot(app)
    assert_refused(tenant_cli(project, "import", str(app), env=NO_ENGINE), *words)
    assert (snapshot(project), snapshot(app)) == before
    assert sorted(os.listdir(project / "tenants")) == ["acme"]
    assert not (project / "media").exists() or sorted(os.listdir(project / "media")) == ["acme"]


def test_an_import_copies_media_and_secrets_verbatim(layout):
    project, app = layout
    hostile = 'p$ss #word"\'`\\'
    folder = classic_tenant(app, "legacy", password=hostile, secret_key="k=1 #x $y")
    os.mkdir(folder / "shopapp")
    (folder / "shopapp" / "models.py").write_text("# the tenant's own app\n")
    os.chmod(folder / "shopapp" / "models.py", 0o600)
    (folder / "www" / "content" / "tool").write_text("#!/bin/sh\n")
    os.chmod(folder / "www" / "content" / "tool", 0o4755)
    run = tenant_cli(project, "import", str(app), env=NO_ENGINE)
    assert run.code == 0, run.err
    assert read_env_file(project / "tenants" / "legacy" / "secrets.env") == {
        "TENANT_DB_PASSWORD": hostile, "TENANT_SECRET_KEY": "k=1 #x $y"}
    models = project / "tenants" / "legacy" / "shopapp" / "models.py"
    assert stat.S_IMODE(models.stat().st_mode) == 0o644  # the container's uid reads the tenant folder
    assert (project / "media" / "legacy" / "old.txt").read_text() == "legacy media\n"
    assert not (project / "media" / "legacy" / "tool").stat().st_mode & 0o7000  # no setuid copy
    assert (folder / "www" / "content" / "old.txt").exists()  # copied, not moved
    assert sorted(os.listdir(project / "media")) == ["acme", "legacy"]  # no staging copy left
    assert sorted(os.listdir(project / "tenants")) == ["acme", "legacy"]


def test_move_deletes_only_the_tenants_own_media_after_the_copy(layout):
    project, app = layout
    folder = classic_tenant(app, "legacy")
    assert tenant_cli(project, "import", "--move", str(app), env=NO_ENGINE).code == 0
    assert (project / "media" / "legacy" / "old.txt").read_text() == "legacy media\n"
    assert not (folder / "www" / "content").exists()
    assert (folder / "settings.py").is_file()


@pytest.mark.parametrize("field, value, words", [
    ("user", "postgres", ["'postgres'", "server's own", "settings.py"]),
    ("database", "postgres", ["'postgres'", "server's own"]),
    ("user", "tkadmin", ["'tkadmin'", "server's own"]),  # tenantkit.yaml's admin_user
    ("database", "template1", ["'template1'"]),
    ("user", "pg_monitor", ["'pg_monitor'"]),
    ("database", "acme", ["'acme'", "already tenant 'acme'"]),  # an existing tenant's
    ("user", "acme", ["'acme'", "already tenant 'acme'"]),
])
def test_a_classic_tenant_with_someone_elses_database_is_refused(layout, field, value, words):
    project, app = layout
    classic_tenant(app, "legacy", **{field: value})
    import_refused(project, app, *words)


def test_two_classic_tenants_on_one_database_are_refused(layout):
    project, app = layout
    classic_tenant(app, "one", database="shop", user="shop_one")
    classic_tenant(app, "two", database="shop", user="shop_two")
    import_refused(project, app, "'shop'", "already tenant 'one'")


def test_media_root_in_another_tenants_folder_is_refused(layout):
    project, app = layout
    other = classic_tenant(app, "other")
    classic_tenant(app, "legacy", media_root=other / "www" / "content")
    import_refused(project, app, "MEDIA_ROOT", "not inside", "legacy")


def test_media_root_that_is_the_tenant_folder_itself_is_refused(layout):
    project, app = layout
    folder = app / "shared" / "tenants" / "legacy"
    classic_tenant(app, "legacy", media_root=folder)
    import_refused(project, app, "MEDIA_ROOT")


def test_a_media_folder_that_is_a_symlink_out_of_the_tenant_is_refused(layout, tmp_path):
    project, app = layout
    folder = classic_tenant(app, "legacy")
    (tmp_path / "elsewhere").mkdir()
    (folder / "www" / "content" / "old.txt").unlink()
    (folder / "www" / "content").rmdir()
    os.symlink(tmp_path / "elsewhere", folder / "www" / "content")
    import_refused(project, app, "not inside")


@pytest.mark.parametrize("where", ["www/content/secret", "shopapp/secret", "secret.py"])
def test_a_symlink_to_a_private_file_outside_is_refused(layout, tmp_path, where):
    project, app = layout
    folder = classic_tenant(app, "legacy")
    private = tmp_path / "root-only"
    private.write_text("root's secret\n")
    os.chmod(private, 0o600)
    (folder / where).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(private, folder / where)
    import_refused(project, app, where, "symbolic link")


@pytest.mark.parametrize("where", ["www/content/linked", "local_settings.py"])
def test_a_hard_link_is_refused(layout, tmp_path, where):
    project, app = layout
    folder = classic_tenant(app, "legacy")
    private = tmp_path / "root-only"
    private.write_text("root's secret\n")
    os.link(private, folder / where)
    import_refused(project, app, where, "hard link")


def test_a_fifo_in_the_media_is_refused(layout):
    project, app = layout
    folder = classic_tenant(app, "legacy")
    os.mkfifo(folder / "www" / "content" / "pipe")
    import_refused(project, app, "pipe", "FIFO")


def test_a_leftover_media_folder_is_refused_not_merged(layout):
    project, app = layout
    classic_tenant(app, "legacy")
    (project / "media" / "legacy").mkdir(parents=True)
    (project / "media" / "legacy" / "stale.txt").write_text("stale\n")
    before = snapshot(project), snapshot(app)
    assert_refused(tenant_cli(project, "import", str(app), env=NO_ENGINE), "media/legacy", "move it away")
    assert (snapshot(project), snapshot(app)) == before
    assert not (project / "tenants" / "legacy").exists()


@pytest.mark.parametrize("password", ["pw\nLD_PRELOAD=/tmp/x.so", "pw\r", "pw\x00", " pw", "pw "])
def test_a_password_secrets_env_cannot_hold_is_refused(layout, password):
    project, app = layout
    classic_tenant(app, "legacy", password=password)
    import_refused(project, app, "settings.py", "PASSWORD", "change that password")


def test_a_secret_key_secrets_env_cannot_hold_is_refused(layout):
    project, app = layout
    classic_tenant(app, "legacy", secret_key="key\nLD_PRELOAD=/tmp/x.so")
    import_refused(project, app, "settings.py", "SECRET_KEY")


def test_a_refused_tenant_stops_the_whole_import(layout, tmp_path):
    project, app = layout
    classic_tenant(app, "good")
    folder = classic_tenant(app, "legacy")
    os.symlink("/etc/hostname", folder / "www" / "content" / "host")
    import_refused(project, app, "symbolic link")

"""The shared image's build context: the project's code, and never tenantkit's own files."""
import io
import os
import tarfile

import pytest

from tenantkit.act.build import context_files, make_context
from tenantkit.model import ConfigError, load_project
from tests.conftest import REPO, write_project


@pytest.fixture
def root_project(tmp_path):
    """A project whose source is its own root, holding everything tenantkit keeps there."""
    root = write_project(tmp_path / "project", project__source=".",
                         project__requirements=str(REPO / "image" / "demo" / "requirements.txt"))
    files = {
        "manage.py": "", "main/settings.py": "", "main/templates/index.html": "",
        "tenants/x/secrets.env": "SECRET_KEY=x\n", "tenants/x/tenant.yaml": "",
        "media/x/upload.html": "", "backups/a.tar.gz": "", ".tenantkit/db.env": "PASSWORD=x\n",
        "compose/compose.yaml": "", "compose/apache/sites/x.conf": "", "tenantkit.local.yaml": "{}\n",
        "main/tenantkit.local.yaml": "", ".dockerignore": "# logs stay home\n*.log\n!keep.log\n",
        "drop.log": "", "keep.log": "", "main/deep.log": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    os.symlink("/etc/shadow", root / "shadow")
    os.symlink("/etc", root / "etc")
    return root


def sources(project):
    return {name.removeprefix("source/") for name, _ in context_files(project) if name.startswith("source/")}


def test_a_context_of_the_project_root_holds_the_code_and_none_of_tenantkits_files(root_project):
    names = sources(load_project(root_project))
    assert {"manage.py", "main/settings.py", "main/templates/index.html", "tenantkit.yaml"} <= names
    for name in names:
        assert not name.startswith(("tenants/", "media/", "backups/", ".tenantkit/", "compose/")), name
        assert not name.endswith("tenantkit.local.yaml"), name


def test_the_projects_dockerignore_is_honoured_with_its_exceptions(root_project):
    names = sources(load_project(root_project))
    assert "drop.log" not in names
    assert "keep.log" in names
    assert "main/deep.log" in names  # *.log is the root's only, as Docker reads it


def test_symlinks_are_never_followed(root_project):
    names = sources(load_project(root_project))
    assert "shadow" not in names
    assert not any(name.startswith("etc/") for name in names)


def test_the_backups_folder_is_left_out_whatever_its_name(root_project):
    write_project(root_project, project__source=".", backups="archive-store",
                  project__requirements=str(REPO / "image" / "demo" / "requirements.txt"))
    (root_project / "archive-store").mkdir()
    (root_project / "archive-store" / "acme.tar.gz").write_text("dump")
    project = load_project(root_project)
    assert project.backups_dir == root_project / "archive-store"
    assert not any(name.startswith("archive-store/") for name in sources(project))


def test_a_file_others_cannot_read_is_refused_rather_than_published(root_project):
    (root_project / "main" / "private.py").write_text("TOKEN = 'x'\n")
    os.chmod(root_project / "main" / "private.py", 0o600)
    with pytest.raises(ConfigError, match=r"main/private\.py.*\.dockerignore"):
        context_files(load_project(root_project))
    (root_project / ".dockerignore").write_text("main/private.py\n")
    assert "main/private.py" not in sources(load_project(root_project))


def test_modes_are_kept_and_the_digest_depends_on_content_only(root_project):
    os.chmod(root_project / "manage.py", 0o755)
    os.chmod(root_project / "main" / "settings.py", 0o664)
    (root_project / "deploy.sh").write_text("#!/bin/sh\n")
    os.chmod(root_project / "deploy.sh", 0o744)
    project = load_project(root_project)
    first = make_context(context_files(project), "extra")
    with tarfile.open(fileobj=io.BytesIO(first.data)) as tar:
        modes = {member.name: member.mode for member in tar.getmembers()}
    assert modes["source/manage.py"] == 0o755
    assert modes["source/deploy.sh"] == 0o744
    assert modes["source/main/settings.py"] == 0o644  # never writable by group or others
    os.utime(root_project / "manage.py", (0, 0))
    assert make_context(context_files(project), "extra").digest == first.digest
    (root_project / "main" / "settings.py").write_text("DEBUG = False\n")
    assert make_context(context_files(project), "extra").digest != first.digest

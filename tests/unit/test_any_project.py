"""What lets any Django project in: the Python version as a setting, the wheelhouse per
Python, project-wide tenant settings, the 12-factor variable names."""
import pytest

from tests.conftest import REPO, write_project

from tenantkit.act import wheels
from tenantkit.model import ConfigError, load_project, load_tenants


def images(project_dir, **values):
    write_project(project_dir, images={"app": "tktest/app", "db": "postgres:15", **values})
    return load_project(project_dir)


def test_the_python_version_picks_the_base_image(project_dir):
    assert images(project_dir).images.base == "python:3.11-slim"  # the default, as before
    assert images(project_dir, python="3.13").images.base == "python:3.13-slim"
    # An offline host's bases, one per Debian release, named by version.
    offline = images(project_dir, python="3.13", base="tenantkit/python-base:{python}")
    assert (offline.images.base, offline.images.python) == ("tenantkit/python-base:3.13", "3.13")
    # A base of the user's own, without {python}, is used as it is.
    assert images(project_dir, python="3.12", base="corp/python:3.12").images.base == "corp/python:3.12"


def test_a_python_without_a_base_is_refused_naming_the_ones_that_exist(project_dir):
    with pytest.raises(ConfigError, match=r"images.python: '3.12' has no base image on this host.*"
                                          r"3.11 \(bookworm\), 3.13 \(trixie\)"):
        images(project_dir, python="3.12", base="tenantkit/python-base:{python}")
    with pytest.raises(ConfigError, match=r"'2.7' is not a Python version tenantkit knows: use one of 3.10, "):
        images(project_dir, python="2.7")
    # Unquoted in YAML, 3.10 is the number 3.1: say so rather than build for Python 3.1.
    path = project_dir / "tenantkit.yaml"
    images(project_dir)
    path.write_text(path.read_text().replace("images:\n", "images:\n  python: 3.10\n"))
    with pytest.raises(ConfigError, match=r"tenantkit.yaml:\d+: images.python: '3.1' .*write it in quotes"):
        load_project(project_dir)
    path.write_text(path.read_text().replace("python: 3.10", "python: 3.13"))  # a number, but no doubt
    assert load_project(project_dir).images.python == "3.13"


def test_tenant_defaults_apps_and_the_settings_snippet(project_dir):
    (project_dir).mkdir(parents=True, exist_ok=True)
    (project_dir / "every_tenant.py").write_text("X = TENANT_NAME\n")
    write_project(project_dir, tenant_defaults={"memory": "512m", "apps": ["reports", "reports"]},
                  project={"source": str(REPO / "image" / "demo"), "settings": "main.settings",
                           "requirements": str(REPO / "image" / "demo" / "requirements.txt"),
                           "tenant_settings": "every_tenant.py", "secret_key_env": "APP_SECRET",
                           "database_url_env": "DB_URL"})
    project = load_project(project_dir)
    assert project.defaults.apps == ("reports",)
    assert project.tenant_settings_text == "X = TENANT_NAME\n"
    assert (project.environment.secret_key, project.environment.database_url) == (("APP_SECRET",), "DB_URL")
    # What every tenant's code depends on is part of each tenant's code key.
    before = project.tenant_code
    (project_dir / "every_tenant.py").write_text("X = 2\n")
    assert load_project(project_dir).tenant_code not in ("", before)


def test_a_broken_settings_snippet_is_refused_at_load(project_dir):
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "every_tenant.py").write_text("X = (\n")
    config = {"source": str(REPO / "image" / "demo"), "settings": "main.settings",
              "requirements": str(REPO / "image" / "demo" / "requirements.txt"), "tenant_settings": "every_tenant.py"}
    write_project(project_dir, project=config)
    with pytest.raises(ConfigError, match=r"every_tenant.py:1: .*fix the tenant settings file"):
        load_project(project_dir)
    write_project(project_dir, project={**config, "tenant_settings": "missing.py"})
    with pytest.raises(ConfigError, match=r"project.tenant_settings: .*missing.py cannot be read"):
        load_project(project_dir)
    write_project(project_dir, project={**config, "tenant_settings": None, "secret_key_env": "secret key"})
    with pytest.raises(ConfigError, match=r"project.secret_key_env: 'secret key' is not an environment variable"):
        load_project(project_dir)


def test_tenants_carry_the_projects_code_key(project_dir):
    write_project(project_dir, tenant_defaults={"apps": ["reports"]})
    folder = project_dir / "tenants" / "acme"
    folder.mkdir(parents=True)
    (folder / "tenant.yaml").write_text("hosts: [acme.localhost]\nport: 8101\n")
    project = load_project(project_dir)
    assert load_tenants(project)[0].project_code == project.tenant_code != ""
    # The load cache is keyed by it too: another project-wide app gives another key.
    write_project(project_dir, tenant_defaults={"apps": ["reports", "billing"]})
    project = load_project(project_dir)
    assert load_tenants(project)[0].project_code == project.tenant_code


def test_one_wheel_folder_per_python_and_requirements(project_dir, tmp_path):
    write_project(project_dir, wheelhouse=str(tmp_path / "wheels"))
    project = load_project(project_dir)
    runtime = REPO / "image" / "app" / "runtime.txt"
    files = [project.requirements, runtime]
    eleven, thirteen = wheels.folder_for(project, "3.11", files), wheels.folder_for(project, "3.13", files)
    assert eleven.parent == thirteen.parent == tmp_path / "wheels"
    assert eleven.name.startswith("cp311-") and thirteen.name.startswith("cp313-")
    other = tmp_path / "requirements.txt"
    other.write_text("Django>=6.0\n")
    assert wheels.folder_for(project, "3.13", [other, runtime]) != thirteen
    # A folder already there is used without pip; one filled by hand is used for any Python.
    thirteen.mkdir(parents=True)
    assert wheels.ensure(project, "3.13", files) == thirteen
    (tmp_path / "wheels" / "django-6.0-py3-none-any.whl").write_bytes(b"")
    assert wheels.folder_for(project, "3.11", files) == tmp_path / "wheels"


def test_a_changed_settings_snippet_reaches_every_tenants_settings(project_dir):
    from tests.conftest import tenant_cli
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "every_tenant.py").write_text("SHARED = 'one'\n")
    write_project(project_dir, project={"source": str(REPO / "image" / "demo"), "settings": "main.settings",
                                        "requirements": str(REPO / "image" / "demo" / "requirements.txt"),
                                        "tenant_settings": "every_tenant.py"})
    for name in ("acme", "zed"):
        assert tenant_cli(project_dir, "new", name).code == 0
    assert "SHARED = 'one'" in (project_dir / "tenants" / "zed" / "settings.py").read_text()
    (project_dir / "every_tenant.py").write_text("SHARED = 'two'\n")
    assert tenant_cli(project_dir, "render").code == 0
    for name in ("acme", "zed"):
        text = (project_dir / "tenants" / name / "settings.py").read_text()
        assert "SHARED = 'two'" in text and "SHARED = 'one'" not in text


def test_naming_the_image_never_fetches_wheels_only_building_it_does(project_dir, tmp_path, monkeypatch):
    """Every command renders, and so names the image; only a build may wait on PyPI."""
    from tenantkit.act import build
    write_project(project_dir, wheelhouse=str(tmp_path / "wheels"))
    project = load_project(project_dir)
    fetched = []

    def fetch(project, python, files, report=None):
        fetched.append(python)
        folder = wheels.folder_for(project, python, files)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "django-5.2-py3-none-any.whl").write_bytes(b"wheel")
        return folder

    monkeypatch.setattr(wheels, "ensure", fetch)
    context = build.build_context(project, project.images.base)
    assert fetched == [] and not (tmp_path / "wheels").exists()
    data = context.for_build()
    assert fetched == [project.images.python] and b"wheelhouse/django-5.2-py3-none-any.whl" in data
    # The wheels it got do not change the image's name: their folder's name already did.
    assert build.build_context(project, project.images.base).digest == context.digest
    write_project(project_dir, wheelhouse=str(tmp_path / "wheels"), images={**{"app": "tktest/app"}, "python": "3.13"})
    assert build.build_context(load_project(project_dir), "python:3.11-slim").digest != context.digest

"""A command about one tenant writes that tenant's files only; a render of an unchanged fleet writes nothing."""
from pathlib import Path

from tests.conftest import tenant_cli


def ok(root, *args):
    run = tenant_cli(root, *args)
    assert run.code == 0, run.err
    return run


def generated(root: Path) -> dict[str, int]:
    """Every generated file and its mtime."""
    files = list((root / "compose").rglob("*.*")) + list((root / "tenants").glob("*/settings.py"))
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in files if p.is_file()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in after if before.get(k) != after[k]} | (set(before) - set(after))


def test_new_writes_only_the_new_tenants_files_and_the_stack(project_dir):
    for name in ("acme", "zed"):
        ok(project_dir, "new", name)
    before = generated(project_dir)
    ok(project_dir, "new", "liberty")
    assert changed(before, generated(project_dir)) == {
        "compose/compose.yaml", "compose/tenants/liberty.yaml", "compose/apache/sites/liberty.conf",
        "tenants/liberty/settings.py"}
    assert "- tenants/liberty.yaml" in (project_dir / "compose" / "compose.yaml").read_text()


def test_set_rewrites_only_that_tenant(project_dir):
    for name in ("acme", "zed"):
        ok(project_dir, "new", name)
    before = generated(project_dir)
    ok(project_dir, "set", "zed", "title=Zed & Sons")
    # The vhost too: its maintenance and unavailable pages name the site.
    assert changed(before, generated(project_dir)) == {"compose/tenants/zed.yaml", "tenants/zed/settings.py",
                                                       "compose/apache/sites/zed.conf"}
    before = generated(project_dir)
    ok(project_dir, "set", "zed", "hosts=zed.localhost,www.zed.test")
    assert changed(before, generated(project_dir)) == {
        "compose/tenants/zed.yaml", "compose/apache/sites/zed.conf", "tenants/zed/settings.py"}


def test_a_render_of_an_unchanged_fleet_writes_nothing(project_dir):
    for name in ("acme", "zed"):
        ok(project_dir, "new", name)
    ok(project_dir, "render")
    before = generated(project_dir)
    ok(project_dir, "render")
    assert changed(before, generated(project_dir)) == set()


def test_a_hand_edited_tenant_yaml_is_picked_up(project_dir):
    ok(project_dir, "new", "acme")
    path = project_dir / "tenants" / "acme" / "tenant.yaml"
    path.write_text(path.read_text().replace("title: Acme", "title: Edited By Hand"))
    ok(project_dir, "render")
    assert "SITE_TITLE = 'Edited By Hand'" in (project_dir / "tenants" / "acme" / "settings.py").read_text()


def test_deleted_caches_and_outputs_are_rebuilt(project_dir):
    import shutil
    ok(project_dir, "new", "acme")
    ok(project_dir, "render")
    expected = (project_dir / "compose" / "tenants" / "acme.yaml").read_text()
    shutil.rmtree(project_dir / ".tenantkit" / "cache")
    (project_dir / "compose" / "tenants" / "acme.yaml").unlink()
    ok(project_dir, "render")
    assert (project_dir / "compose" / "tenants" / "acme.yaml").read_text() == expected


def test_a_full_render_removes_files_of_tenants_that_are_gone(project_dir):
    import shutil
    for name in ("acme", "zed"):
        ok(project_dir, "new", name)
    shutil.rmtree(project_dir / "tenants" / "zed")
    ok(project_dir, "render")
    assert not (project_dir / "compose" / "tenants" / "zed.yaml").exists()
    assert not (project_dir / "compose" / "apache" / "sites" / "zed.conf").exists()
    assert "zed" not in (project_dir / "compose" / "compose.yaml").read_text()

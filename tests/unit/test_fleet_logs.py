"""Fleet logs hold whatever tenants print (`manage --all -- diffsettings`: every SECRET_KEY),
so only their owner reads them."""
import stat

from tenantkit.model import Tenant
from tenantkit.orchestration.fleet import Outcome, across, run_dir


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_run_folders_are_private_even_where_an_older_version_left_them_open(project):
    (project.state_dir / "runs").mkdir(parents=True, mode=0o755)
    folder = run_dir(project, "manage")
    assert folder.parent == project.state_dir / "runs"
    assert mode(project.state_dir / "runs") == 0o700
    assert mode(folder) == 0o700


def test_each_tenants_log_is_readable_by_its_owner_only(project):
    tenants = [Tenant(name=name, hosts=(f"{name}.localhost",), title=name, port=8101 + i, memory="256m",
                      workers=1, threads=4, path=project.tenant_dir(name)) for i, name in enumerate(("acme", "zed"))]
    folder = run_dir(project, "manage")

    def work(tenant):
        if tenant.name == "zed":
            raise RuntimeError("no container")
        return Outcome(tenant.name, "ok", 0.1, "SECRET_KEY = 'acme-secret'\n")

    outcomes = across(tenants, work, 2, folder, lambda line: None)
    assert [o.result for o in outcomes] == ["ok", "failed"]
    assert (folder / "acme.log").read_text() == "SECRET_KEY = 'acme-secret'\n"
    assert "no container" in (folder / "zed.log").read_text()
    assert mode(folder / "acme.log") == 0o600
    assert mode(folder / "zed.log") == 0o600

"""Archives: private from their first byte, and refused whole when anything is off."""
import io
import json
import stat
import tarfile

import pytest

from tenantkit.act import archive
from tenantkit.model import ConfigError


def _files(tmp_path):
    dump = tmp_path / "database.dump"
    dump.write_bytes(b"dump")
    tenant = tmp_path / "t"
    tenant.mkdir()
    (tenant / "tenant.yaml").write_text("name: t\n")
    return [("database.dump", dump), ("tenant/tenant.yaml", tenant / "tenant.yaml")]


def test_an_archive_is_private_from_its_first_byte_in_a_private_folder(tmp_path, monkeypatch):
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o755)
    seen = []
    real_add = tarfile.TarFile.add

    def add(self, name, *args, **kwargs):  # while the archive is being written
        seen.append(stat.S_IMODE((backups / ".t.tar.gz.partial").stat().st_mode))
        return real_add(self, name, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "add", add)
    target = archive.write_archive(backups / "t.tar.gz", "t", _files(tmp_path), False, {})
    assert seen and set(seen) == {0o600}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700  # tightened: it holds every tenant's data


def test_a_member_the_manifest_does_not_list_refuses_the_archive(tmp_path):
    target = archive.write_archive(tmp_path / "b" / "t.tar.gz", "t", _files(tmp_path), False, {})
    with tarfile.open(target) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    members["tenant/local_settings.py"] = b"import os\n"
    extra = tmp_path / "extra.tar.gz"
    with tarfile.open(extra, "w:gz") as tar:
        for name in ["tenant/local_settings.py", *[n for n in members if n != "tenant/local_settings.py"]]:
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    assert "tenant/local_settings.py" not in json.loads(members["manifest.json"])["files"]
    with pytest.raises(ConfigError, match="manifest does not list"):
        archive.unpack(extra, tmp_path / "out")


def test_an_archive_that_expands_a_hundredfold_is_a_bomb(tmp_path):
    files = _files(tmp_path)
    files[0][1].write_bytes(b"\0" * (8 << 20))  # 8 MiB of zeros: a few KiB compressed
    target = archive.write_archive(tmp_path / "b" / "t.tar.gz", "t", files, False, {})
    with pytest.raises(ConfigError, match="compression bomb"):
        archive.unpack(target, tmp_path / "out", limit=target.stat().st_size * archive.MAX_RATIO)

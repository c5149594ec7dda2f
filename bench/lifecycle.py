"""Lifecycle figures: no-op `migrate --all` per tenant, and backup/restore of a loaded tenant.

Target (issue 5): migrate --all with nothing to migrate at most 0.1 s per tenant,
amortised. For comparison it also times the naive way: `manage.py migrate` in every
tenant (`tenant manage --all -- migrate`). Then it loads one tenant with DATA_MB of
rows and media and times `tenant backup` and `tenant restore --as` (which includes
starting the restored tenant).

    python bench/lifecycle.py [--tenants 20] [--runs 3] [--data-mb 50]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from common import bench_project, cli


def timed(root: Path, *args: str) -> tuple[float, str]:
    started = time.monotonic()
    out = cli(root, *args)
    return time.monotonic() - started, out


def load_data(root: Path, name: str, megabytes: int) -> None:
    """Half the volume as rows (notes), half as media files."""
    rows = max(1, megabytes * 1024 * 1024 // 2 // 200)
    cli(root, "manage", name, "--", "shell", "-c",
        "from notes.models import Note; "
        f"Note.objects.bulk_create([Note(text=('n%07d ' % i) * 20) for i in range({rows})], batch_size=5000)")
    media = root / "media" / name / "bench"
    media.mkdir(parents=True, exist_ok=True)
    for i in range(max(1, megabytes // 2 // 5)):
        (media / f"file{i}.bin").write_bytes(os.urandom(5 * 1024 * 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-mb", type=int, default=50)
    args = parser.parse_args()
    n = args.tenants
    with bench_project("tklife") as root:
        for i in range(n):
            cli(root, "new", f"m{i:03d}")
        started = time.monotonic()
        cli(root, "up", "--all")
        up_all = time.monotonic() - started
        fast = [timed(root, "migrate", "--all")[0] for _ in range(args.runs)]
        naive = [timed(root, "manage", "--all", "--", "migrate", "--noinput")[0] for _ in range(args.runs)]

        cli(root, "new", "loaded")
        cli(root, "up", "loaded")
        load_data(root, "loaded", args.data_mb)
        backup_s, out = timed(root, "backup", "loaded")
        archive = Path(out.strip())
        restore_s, _ = timed(root, "restore", str(archive), "--as", "restored", "--host", "restored.localhost")
        size = archive.stat().st_size / 2**20
        rows = cli(root, "manage", "restored", "--", "shell", "-c",
                   "from notes.models import Note; print(Note.objects.count())").strip().splitlines()[-1]

    print(f"{n} tenants brought up with one `tenant up --all`: {up_all:.1f} s")
    print(f"migrate --all, nothing to migrate: median {statistics.median(fast):.2f} s for {n} tenants = "
          f"{statistics.median(fast) / n:.3f} s per tenant (target <= 0.1; {args.runs} runs, CLI start included)")
    print(f"naive manage.py migrate in every tenant (4 at a time): median {statistics.median(naive):.2f} s = "
          f"{statistics.median(naive) / n:.3f} s per tenant")
    print(f"backup of a tenant with ~{args.data_mb} MB ({rows} rows + media): {backup_s:.1f} s, archive {size:.1f} MiB")
    print(f"restore of that archive under a new name, until it answers: {restore_s:.1f} s")


if __name__ == "__main__":
    main()

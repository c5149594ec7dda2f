"""Lifecycle figures: no-op `migrate --all` per tenant at each fleet size, and backup/restore.

Target (issue 10): `migrate --all` with nothing to migrate at most 0.03 s per tenant
(the whole command, CLI start included, divided by the tenants), at 20 and at 200
tenants. Beside it, the floor measured in the same run: connect to every tenant
database and read its django_migrations, concurrently (as the command does) and one
after another. The fleet grows from one size to the next in one project. Then, once,
it loads a tenant with DATA_MB of rows and media and times `tenant backup` and
`tenant restore --as` (which includes starting the restored tenant).

    python bench/lifecycle.py [--sizes 20,200] [--runs 3] [--data-mb 50]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import bench_project, cli  # first: it puts tools/ on the path
from tenantkit.act import database, migrations
from tenantkit.model import load_project, load_tenants

TARGET = 0.03  # seconds per tenant


def timed(root: Path, *args: str) -> tuple[float, str]:
    started = time.monotonic()
    out = cli(root, *args)
    return time.monotonic() - started, out


def noop_migrate(root: Path, n: int) -> float:
    """One `migrate --all` (seconds, CLI start included), checked to have had nothing to do."""
    seconds, out = timed(root, "migrate", "--all", "--json")
    results = {o["tenant"]: o["result"] for o in json.loads(out)}
    if len(results) != n or set(results.values()) != {"up-to-date"}:
        raise SystemExit(f"migrate --all was expected to find nothing to do for {n} tenants: {results}")
    return seconds


def read_migrations(project, dbname: str) -> None:
    conn = database.admin_connect(project, dbname, retry=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT app, name FROM django_migrations")
            cur.fetchall()
    finally:
        conn.close()


def query_floor(root: Path, threads: int) -> float:
    """Seconds to connect to every tenant database and read its django_migrations,
    `threads` at a time (in this process: no CLI start)."""
    project = load_project(root)
    names = [t.names.database for t in load_tenants(project)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda name: read_migrations(project, name), names))
    return time.monotonic() - started


def grow(root: Path, n: int) -> float:
    """Create tenants up to `n` and bring them all up; the seconds `up --all` took."""
    present = len(load_tenants(load_project(root)))
    for i in range(present, n):
        cli(root, "new", f"m{i:03d}")
    started = time.monotonic()
    cli(root, "up", "--all")
    return time.monotonic() - started


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


def per_tenant(seconds: float, n: int) -> str:
    return f"{seconds:.2f} s = {seconds / n:.4f} s per tenant"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,200", help="Fleet sizes, comma-separated, growing.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-mb", type=int, default=50)
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    with bench_project("tkmiglife") as root:
        for n in sizes:
            up_all = grow(root, n)
            noop_migrate(root, n)  # a first run may read (and cache) the release's migration graph
            fast = statistics.median(noop_migrate(root, n) for _ in range(args.runs))
            concurrent = statistics.median(query_floor(root, migrations.READERS) for _ in range(args.runs))
            serial = statistics.median(query_floor(root, 1) for _ in range(args.runs))
            verdict = "meets" if fast / n <= TARGET else "MISSES"
            print(f"{n} tenants (brought up with one `tenant up --all` in {up_all:.1f} s):\n"
                  f"  migrate --all, nothing to migrate: {per_tenant(fast, n)} "
                  f"(target <= {TARGET}: {verdict}; median of {args.runs}, CLI start included)\n"
                  f"  floor, one query per database, {migrations.READERS} at a time: {per_tenant(concurrent, n)}\n"
                  f"  the same one after another: {per_tenant(serial, n)}", flush=True)

        cli(root, "new", "loaded")
        cli(root, "up", "loaded")
        load_data(root, "loaded", args.data_mb)
        backup_s, out = timed(root, "backup", "loaded")
        archive = Path(out.strip())
        restore_s, _ = timed(root, "restore", str(archive), "--as", "restored", "--host", "restored.localhost")
        size = archive.stat().st_size / 2**20
        rows = cli(root, "manage", "restored", "--", "shell", "-c",
                   "from notes.models import Note; print(Note.objects.count())").strip().splitlines()[-1]

    print(f"backup of a tenant with ~{args.data_mb} MB ({rows} rows + media): {backup_s:.1f} s, archive {size:.1f} MiB")
    print(f"restore of that archive under a new name, until it answers: {restore_s:.1f} s")


if __name__ == "__main__":
    main()

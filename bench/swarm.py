"""Swarm figures (engine: swarm): deploy time per tenant, and failed requests during it.

On a real single-node swarm (made here with `docker swarm init --advertise-addr 127.0.0.1`
and left at the end when it was not there before) and a real registry on loopback
(Debian's docker-registry), as the integration tests run it: services by digest, DNS
round robin (this kernel has no IPVS).

N tenants are brought up; then release 2 (the demo's code with one changed line, so each
tenant's service really rolls) is deployed to all of them, `--jobs` at a time, under a
bounded request loop through the proxy (one tenant per request in turn). Swarm does each
tenant's rolling update: the new task starts, must pass its healthcheck and stay up for
swarm.update_monitor seconds, then the old one stops.

Targets (issue 11): zero failed requests during the deploy. The issue names no time
target; the figure is reported beside the compose engine's (bench/deploy.py: at most
3 s per tenant, median).

    python bench/swarm.py [--tenants 5] [--jobs 2] [--monitor 3]
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import yaml

from common import bench_project, cli, free_port, timed
from deploy import measured_deploy
from tests.integration.conftest import remove_stack


def registry() -> tuple[subprocess.Popen, str, Path]:
    folder = Path(tempfile.mkdtemp(prefix="tkbregistry-"))
    port = free_port()
    (folder / "config.yml").write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "error"}, "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"}}))
    process = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return process, f"127.0.0.1:{port}", folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--monitor", type=int, default=3, help="swarm.update_monitor: seconds a new task must last")
    args = parser.parse_args()
    client = docker.from_env()
    joined = (client.info().get("Swarm") or {}).get("LocalNodeState") == "active"
    if not joined:
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True)
    process, address, folder = registry()
    try:
        swarm = {"endpoint_mode": "dnsrr", "registry": address, "update_monitor": args.monitor}
        with bench_project("tkbswarm", demo_copy=True, engine="swarm", swarm=swarm) as root:
            name = yaml.safe_load((root / "tenantkit.yaml").read_text())["name"]
            port = yaml.safe_load((root / "tenantkit.yaml").read_text())["proxy"]["port"]
            try:
                names = [f"t{i:02d}" for i in range(args.tenants)]
                for tenant in names:
                    cli(root, "new", tenant)
                up_seconds, _ = timed(root, "up", "--all")
                views = root / "src" / "notes" / "views.py"
                views.write_text(views.read_text() + "\n# release 2\n")
                cli(root, "release", "build", "2")
                push_seconds, _ = timed(root, "release", "push", "2")
                result = measured_deploy(root, "2", names, args.jobs, port)
                views.write_text(views.read_text() + "# release 3\n")
                cli(root, "release", "build", "3")
                single = measured_deploy_one(root, "3", names[0], names, port)
            finally:
                remove_stack(client, name)
    finally:
        process.terminate()
        shutil.rmtree(folder, ignore_errors=True)
        if not joined:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True)
    report(args, up_seconds, push_seconds, result, single)


def measured_deploy_one(root: Path, version: str, tenant: str, names: list[str], port: int) -> dict:
    """`tenant deploy VERSION TENANT`: one tenant's rolling update alone, under the same load."""
    from deploy import request_loop
    from common import tenant_cli
    with request_loop(port, names) as requests:
        started = time.monotonic()
        run = tenant_cli(root, "deploy", version, tenant, "--json")
        elapsed = time.monotonic() - started
    return {"seconds": elapsed, "outcomes": json.loads(run.out), "requests": list(requests)}


def report(args, up_seconds: float, push_seconds: float, result: dict, single: dict) -> None:
    per_tenant = [o["seconds"] for o in result["outcomes"]]
    requests = result["requests"]
    failed = sum(1 for r in requests if r != 200)
    kinds = collections.Counter(r for r in requests if r != 200)
    single_failed = sum(1 for r in single["requests"] if r != 200)
    print(f"swarm: {args.tenants} tenants, deploy --jobs {args.jobs}, swarm.update_monitor {args.monitor} s, "
          "one node, registry on loopback")
    rows = [
        ("up --all (build, push, database, migrations, services)", f"{up_seconds:.1f} s", ""),
        ("release push (one image to the registry)", f"{push_seconds:.1f} s", ""),
        (f"deploy 2 to {args.tenants} tenants (wall clock)", f"{result['seconds']:.1f} s", ""),
        ("  per tenant, median (rolling update, start-first)", f"{statistics.median(per_tenant):.1f} s",
         "(compose engine: <= 3 s)"),
        ("  per tenant, max", f"{max(per_tenant):.1f} s", ""),
        ("  of which swarm.update_monitor", f"{args.monitor} s", ""),
        ("  results", ", ".join(f"{o['tenant']}: {o['result']}" for o in result["outcomes"]), ""),
        ("  requests during it", str(len(requests)), ""),
        ("  failed requests", f"{failed}" + (f" {dict(kinds)}" if kinds else ""), "target: 0"),
        ("deploy 3 to one tenant alone", f"{single['seconds']:.1f} s", ""),
        ("  failed requests", str(single_failed), "target: 0"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, figure, target in rows:
        print(f"  {label.ljust(width)}  {figure:>12}  {target}")
    verdict = "PASS" if failed == 0 and single_failed == 0 else "FAIL"
    print(f"  {verdict}: failed requests during deploys {failed + single_failed} (target 0)")


if __name__ == "__main__":
    main()

"""RiskPredictor at 1, 2 and 4 replicas across a three-node Ray cluster (network-namespace hosts),
against a vanilla one-replica Serve deployment of the same model and the in-process scorer.

The head (no CPUs: Serve's controller and proxy) and two 2-CPU workers are started with
``ray start``; a driver on the head deploys each case and drives a closed-loop load of
one-patient requests through the head's proxy (``serving_risk.load``). Needs root (ip netns).

Usage: python benchmarks/serve_cluster.py [--seconds 15] [--connections 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from serving_risk import MODEL, load, register_model, vanilla_deployment

from _results import machine, table, write_section

REPO = Path(__file__).resolve().parents[1]
REPLICAS = (1, 2, 4)


def in_process(uri: str, rows: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    """The scorer the API uses on a small box: one patient per call, in this process, one caller."""
    from serving.loaded import LoadedModel
    from serving.model_source import RegistryModel

    model = RegistryModel(uri, MODEL).load("1", LoadedModel)
    latencies = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        model.predict([rows[i % len(rows)]])
        latencies.append(time.perf_counter() - started)
        i += 1
    latencies.sort()
    return {"rps": len(latencies) / seconds, "p50": latencies[len(latencies) // 2] * 1e3,
            "p99": latencies[int(len(latencies) * 0.99)] * 1e3, "errors": 0.0}


def drive(head: str, uri: str, rows_path: Path, seconds: float, connections: int) -> dict[str, Any]:
    """On the head host: deploy each case in turn, load it through the proxy, note its replicas' nodes."""
    import asyncio

    import ray
    from ray import serve

    from serving.app import actor_options
    from serving.cluster import ServeCluster
    from serving.risk import RiskPredictor

    rows = json.loads(rows_path.read_text())
    ray.init(address=f"{head}:6380", log_to_driver=False)
    serve.start(http_options={"host": "0.0.0.0", "port": 8000})
    cluster = ServeCluster(f"http://{head}:8265")
    cases: list[tuple[str, str, Any]] = [("vanilla", "vanilla", vanilla_deployment().bind(uri))]
    for n in REPLICAS:
        options = actor_options(0.5, 0.0)["ray_actor_options"]
        cases.append((f"risk x{n}", "risk", RiskPredictor.options(num_replicas=n, ray_actor_options=options)
                      .bind(uri, MODEL, "production", 5.0)))
    results: dict[str, Any] = {}
    for case, app, bound in cases:
        serve.run(bound, name=app, route_prefix=f"/{app}")
        nodes = sorted(r.node_ip or "?" for v in cluster.deployments() if v.application == app for r in v.replicas
                       if r.state == "RUNNING")
        url = f"http://{head}:8000/{app}"
        asyncio.run(load(url, rows, connections, min(5.0, seconds)))  # warm-up, not reported
        results[case] = {**asyncio.run(load(url, rows, connections, seconds)), "nodes": nodes}
        print(case, results[case], file=sys.stderr, flush=True)
        serve.delete(app)
    serve.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--drive", nargs=3, metavar=("HEAD", "URI", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.drive:
        head, uri, rows_path = args.drive
        print(json.dumps(drive(head, uri, Path(rows_path), args.seconds, args.connections)))
        return

    sys.path.insert(0, str(REPO))
    from tests.integration.netns import network, skip_reason
    from tests.integration.raycluster import short_temp_root, start_ray_cluster

    reason = skip_reason()
    if reason:
        sys.exit(f"needs separate network hosts: {reason}")
    work = Path(tempfile.mkdtemp(prefix="bioverse-serve-cluster-"))
    os.environ["BIOVERSE_DATA_DIR"] = str(work)
    uri, rows = register_model(work)
    (work / "rows.json").write_text(json.dumps(rows))
    baseline = in_process(uri, rows, args.seconds)
    load_before = os.getloadavg()[0]
    temp = short_temp_root()
    with network(["head", "worker1", "worker2"]) as net, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, temp, ignore_errors=True)
        cluster = start_ray_cluster(net, temp, workers=("worker1", "worker2"), client="head")
        env = cluster.env(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'benchmarks'}")
        done = cluster.head.run([sys.executable, __file__, "--seconds", str(args.seconds), "--connections",
                                 str(args.connections), "--drive", cluster.head.address, uri, str(work / "rows.json")],
                                timeout=1800, env=env, cwd=REPO / "benchmarks")
        if done.returncode != 0:
            sys.exit(f"the driver on the head failed: {done.stderr[-3000:]}")
        results = json.loads(done.stdout.strip().splitlines()[-1])
        names = {h.address: name for name, h in net.hosts.items()}
    load_after = os.getloadavg()[0]
    base = results["vanilla"]
    rows_out = [["in-process scorer, one caller (`LoadedModel.predict`)", f"{baseline['rps']:.0f}",
                 f"{baseline['rps'] / base['rps']:.2f}", f"{baseline['p50']:.2f}", f"{baseline['p99']:.2f}", "0", "-"]]
    for case, label in [("vanilla", "vanilla one-replica Serve deployment (baseline)"),
                        *[(f"risk x{n}", f"BioVerse RiskPredictor, {n} replica{'s' * (n > 1)}") for n in REPLICAS]]:
        r = results[case]
        placed = ", ".join(f"{names.get(ip, ip)}" for ip in r["nodes"])
        rows_out.append([label, f"{r['rps']:.0f}", f"{r['rps'] / base['rps']:.2f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                         f"{r['errors']:.0f}", placed])
    body = (
        "## Serve across a Ray cluster (`benchmarks/serve_cluster.py`)\n\n"
        f"{machine()}; load average {load_before:.1f} before the cluster, {load_after:.1f} after (shared 2-core vm). "
        "Three Ray nodes, each its own network namespace (head: dashboard, Serve controller and proxy, 0 CPUs; "
        "two workers with 2 logical CPUs each), started with `ray start`; replicas of 0.5 CPU. One patient per request, "
        f"{args.connections} connections from the head host through the head's proxy, {args.seconds:g} s per case "
        "after a 5 s warm-up, cases in the order shown. The in-process row is the scorer called directly in one process (no HTTP), for "
        "reference. **All of it runs on the same two shared cores**: proxy, replicas, the load generator and the "
        "other tenants of the vm, so more replicas add scheduling, not CPU; on separate machines each worker brings "
        "its own cores.\n\n"
        + table(["deployment", "req/s", "vs baseline", "p50 ms", "p99 ms", "errors", "replicas on"], rows_out)
    )
    print(body)
    write_section("serve-cluster", body)


if __name__ == "__main__":
    main()

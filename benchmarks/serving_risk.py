"""RiskPredictor on Ray Serve against a vanilla one-replica Serve deployment of the same model.

Both serve the same registered model over Serve's HTTP proxy in the same Ray instance;
a closed-loop load of 16 concurrent connections hits each in turn.

Usage: python benchmarks/serving_risk.py [--seconds 15] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
from _model import FEATURES, register_production_model

from _results import machine, table, write_section

MODEL = "bench-risk"


def register_model(work: Path) -> tuple[str, list[dict[str, Any]]]:
    """The production model (trained on one synthetic hospital) and rows of another to score."""
    from training.tabular.synth import synthesize_hospitals

    written = synthesize_hospitals(n_hospitals=2, n_patients=4000, seed=3, out_dir=work / "data")
    uri = register_production_model(work=work, name=MODEL, train_path=written[0].path, epochs=2)
    rows = pd.read_csv(written[1].path).head(200)
    features = [{k: (None if pd.isna(v) else (float(v) if not isinstance(v, str) else v)) for k, v in r.items()
                 if k in FEATURES} for r in rows.to_dict("records")]
    return uri, features


async def load(url: str, rows: list[dict[str, Any]], connections: int, seconds: float) -> dict[str, float]:
    """Closed-loop load: each connection sends one single-patient request after another."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(k: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = await client.post(url, json={"instances": [rows[i % len(rows)]]})
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200
            i += connections

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(k, client) for k in range(connections)))
    latencies.sort()
    return {"rps": len(latencies) / seconds, "p50": latencies[len(latencies) // 2] * 1e3,
            "p99": latencies[int(len(latencies) * 0.99)] * 1e3, "errors": float(errors)}


def replica_rss() -> dict[str, float]:
    """Application name -> the largest resident memory (MB) among its replicas' processes."""
    found: dict[str, float] = {}
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith("ray::ServeReplica:"):
            app = title.split(":")[3] if title.count(":") >= 3 else title
            found[app] = max(found.get(app, 0.0), process.memory_info().rss / 2**20)
    return found


def vanilla_deployment() -> Any:
    """The baseline: a textbook one-replica Serve deployment of the same model (a class made
    here, so that Ray ships it by value to any node, also ``benchmarks/serve_cluster.py``'s)."""
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(num_replicas=1)
    class Vanilla:
        """The textbook deployment: load the model, score each request on its own."""

        def __init__(self, tracking_uri: str) -> None:
            import mlflow.pyfunc

            mlflow.set_registry_uri(tracking_uri)
            self.model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")

        async def __call__(self, request: Request) -> dict[str, Any]:
            rows = (await request.json())["instances"]
            frame = pd.DataFrame(rows)
            numeric = frame.select_dtypes("number").columns
            risks = self.model.predict(frame.astype(dict.fromkeys(numeric, float)))["risk"]
            return {"predictions": [{"risk": float(r)} for r in risks]}

    return Vanilla


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="bioverse-serving-"))
    os.environ["BIOVERSE_DATA_DIR"] = str(work)
    uri, rows = register_model(work)

    import ray
    from ray import serve

    from serving.app import build_risk_app

    Vanilla = vanilla_deployment()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    port = 18000 + os.getpid() % 1000
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Vanilla.bind(uri), name="vanilla", route_prefix="/vanilla")
    serve.run(build_risk_app({"tracking_uri": uri, "model_name": MODEL}), name="risk", route_prefix="/risk")
    results = {}
    for name in ("vanilla", "risk", "vanilla", "risk"):  # alternate, keep the second (warm) pass
        results[name] = asyncio.run(load(f"http://127.0.0.1:{port}/{name}", rows, args.connections, args.seconds))
        print(name, results[name], file=sys.stderr)
    rss = replica_rss()
    serve.shutdown()
    ray.shutdown()
    base = results["vanilla"]
    rows_out = [
        [name, f"{r['rps']:.0f}", f"{r['rps'] / base['rps']:.2f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['errors']:.0f}",
         f"{rss.get(app, float('nan')):.0f}"]
        for name, app, r in (("vanilla one-replica Serve deployment (baseline)", "vanilla", base),
                             ("BioVerse RiskPredictor (batched)", "risk", results["risk"]))
    ]
    body = (
        "## Ray Serve risk path (`benchmarks/serving_risk.py`)\n\n"
        f"{machine()}; MLP 64-32, one patient per request, {args.connections} connections, "
        f"{args.seconds:g} s per pass (second pass reported), Serve HTTP proxy on loopback, load generator in the same box. "
        "The baseline scores through the MLflow pyfunc (`predict(DataFrame)`); the RiskPredictor batches requests and "
        "scores with the NumPy scorer. Replica RSS: resident memory of the replica's worker process after the load "
        "(aim: under 2 GB, the small-clinic container limit).\n\n"
        + table(["deployment", "req/s", "vs baseline", "p50 ms", "p99 ms", "errors", "replica RSS MB"], rows_out)
    )
    print(body)
    write_section("serving-risk", body)


if __name__ == "__main__":
    main()

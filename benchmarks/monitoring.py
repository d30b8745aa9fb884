"""Live model monitoring: the cost of drift on a 10,000-prediction window, and what it does to the prediction route.

In process: reading the window (SQLite, PostgreSQL when it answers at 127.0.0.1:5432) against computing
PSI/KS on it, and what binning one prediction inline would cost. Served: POST /v1/twins/{id}/predictions
(uvicorn, wrk) on two identical APIs in the same passes, one scraped on /metrics every second with drift
recomputed at every scrape (monitor_refresh_seconds 0), the other never scraped (no monitoring work at all:
nothing runs on the route either way).

Usage: python benchmarks/monitoring.py [--window 10000] [--seconds 10] [--passes 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
from api_predictions import cpu_seconds, prepare, serve, wrk

from _results import machine, table, write_section
from federation.processes import free_port

MODEL = "bench-api-risk"


def _risk(frame: pd.DataFrame) -> np.ndarray:
    z = 0.05 * (frame["age"].fillna(60) - 60) + 0.02 * (frame["systolic_bp"].fillna(130) - 130) - 1.5
    return 1 / (1 + np.exp(-z.to_numpy(dtype=float)))


def attach_reference(work: Path, uri: str) -> list[str]:
    """A report with a monitoring section (the validation round's functions on the hospital's rows) on version 1."""
    import json

    from mlflow.tracking import MlflowClient

    from training.tabular.contract import DataContract
    from training.tabular.preprocessing import FeatureEncoder, local_statistics
    from training.tabular.reference import local_feature_counts, monitoring_section
    from training.tabular.synth import FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL
    from training.tabular.validation import local_aggregates, merge_aggregates

    frame = pd.read_csv(next((work / "data").glob("hospital-*.csv")))
    contract = DataContract(patient_id="patient_id", label=LABEL, numeric=FEATURES_NUMERIC, categorical=FEATURES_CATEGORICAL)
    encoder = FeatureEncoder.from_statistics(local_statistics(frame, contract), contract)
    risk = _risk(frame)
    agg = local_aggregates(risk, frame[LABEL].to_numpy().astype(int), None, [0.2])
    report = {"overall": {"n": len(frame)},
              "monitoring": monitoring_section(merge_aggregates({"h": agg}), [local_feature_counts(frame, encoder, min_cell=10)])}
    client = MlflowClient(uri, registry_uri=uri)
    client.log_text(client.get_model_version(MODEL, "1").run_id, json.dumps(report), "validation/report.json")
    return [*FEATURES_NUMERIC, *FEATURES_CATEGORICAL]


def seed_window(url: str, work: Path, features: list[str], n: int) -> None:
    """``n`` recorded predictions of version 1 (inputs from the hospital's rows, resampled)."""
    from sqlalchemy import insert

    from platform_api.db import migrate, session_factory
    from platform_api.models import Prediction, Tenant, Twin

    migrate(url)
    frame = pd.read_csv(next((work / "data").glob("hospital-*.csv"))).sample(n=n, replace=True, random_state=1)
    inputs = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in frame[features].to_dict("records")]
    with session_factory(url)() as session:
        if session.get(Tenant, "t1") is None:
            session.add(Tenant(id="t1", name="t1"))
        twin = Twin(tenant_id="t1", patient_id=f"bench-{uuid.uuid4().hex[:8]}")
        session.add(twin)
        session.flush()
        session.execute(insert(Prediction), [
            {"id": str(uuid.uuid4()), "twin_id": twin.id, "tenant_id": "t1", "model_name": MODEL, "model_version": "1",
             "risk": float(r), "inputs": i} for i, r in zip(inputs, _risk(frame), strict=True)])
        session.commit()


def timed(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Median wall seconds of ``fn()`` over ``repeat`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _read(sessions, spec):  # type: ignore[no-untyped-def]
    from platform_api.monitoring import read_window

    with sessions() as session:
        return read_window(session, MODEL, "1", spec)


def in_process(urls: dict[str, str], uri: str, window: int) -> list[list[str]]:
    from experiments.registry_reader import RegistryReader
    from platform_api.db import session_factory
    from platform_api.monitoring import DriftMonitor, WindowSpec, drift_report
    from training.tabular.reference import window_counts

    spec = WindowSpec(size=window, min_predictions=100)
    reference = DriftMonitor(session_factory(urls["SQLite"]), RegistryReader(uri).report, spec).reference(MODEL, "1")
    rows_out: list[list[str]] = []
    for name, url in urls.items():
        sessions = session_factory(url)

        read = functools.partial(_read, sessions, spec)
        rows, risks = read()
        assert len(rows) == window, (name, len(rows))
        t_read = timed(read)
        t_drift = timed(functools.partial(drift_report, MODEL, "1", reference, rows, risks, spec))
        rows_out.append([f"{name}: read the window (baseline)", f"{t_read * 1e3:.1f}", "1.00", f"{t_read / window * 1e6:.1f}"])
        rows_out.append([f"{name}: PSI + KS on it ({len(reference['features'])} features + score)", f"{t_drift * 1e3:.1f}",
                         f"{t_drift / t_read:.2f}", f"{t_drift / window * 1e6:.1f}"])
    rows, _ = read()
    one = [rows[i:i + 1] for i in range(2000)]
    per_call = timed(lambda: [window_counts(reference["features"], r) for r in one], repeat=3) / len(one)
    observe = _inline_binner(reference["features"])
    per_row = timed(lambda: [observe(r) for r in rows[:2000]], repeat=3) / 2000
    rows_out.append(["inline alternative: window_counts on one prediction (vectorised, per call)", f"{per_call * 1e3:.3f}", "",
                     f"{per_call * 1e6:.1f}"])
    rows_out.append(["inline alternative: a per-row binner (bisect, cached lookups)", f"{per_row * 1e3:.4f}", "",
                     f"{per_row * 1e6:.1f}"])
    return rows_out


def _inline_binner(features: dict):  # type: ignore[no-untyped-def]
    """What a scorer-kept window would run per prediction: each input into its slot (pure Python)."""
    import bisect

    from training.categories import CategoryLookup
    from training.tabular.reference import OTHER

    prepared = []
    for column, f in features.items():
        slots = [0] * len(f["counts"])
        if f["kind"] == "numeric":
            prepared.append((column, True, list(f["edges"]), slots))
        else:
            prepared.append((column, False, CategoryLookup([v for v in f["values"] if v != OTHER]), slots))

    def observe(row: dict) -> None:
        for column, numeric, how, slots in prepared:
            v = row.get(column)
            if numeric:
                x = v if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf") else None
                slots[-1 if x is None else bisect.bisect_right(how, x)] += 1
            elif how.is_missing(v):
                slots[-1] += 1
            else:
                code = how.code(v)
                slots[-2 if code is None else code] += 1

    return observe


def _scraper(port: int, token: str, stop: threading.Event, times: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=60)
            if answer.status_code == 200 and "bioverse_model_drift_window_size{" in answer.text:
                times.append(time.perf_counter() - started)
        except httpx.HTTPError:
            pass
        stop.wait(max(0.0, 1.0 - (time.perf_counter() - started)))


def served(env: dict[str, str], token: str, ids: list[str], work: Path, args: argparse.Namespace) -> tuple[list[list[str]], str]:
    script = work / "predict.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Authorization"] = "Bearer ' + token + '"\n'
                      "ids = {" + ",".join(f'"{i}"' for i in ids) + "}\ncounter = 0\n"
                      "request = function()\n  counter = counter + 1\n"
                      '  return wrk.format(nil, "/v1/twins/" .. ids[counter % #ids + 1] .. "/predictions")\nend\n')
    metrics_token = uuid.uuid4().hex
    env = {**env, "BIOVERSE_API_MONITOR_REFRESH_SECONDS": "0", "BIOVERSE_API_MONITOR_WINDOW": str(args.window),
           "BIOVERSE_API_METRICS_TOKEN": metrics_token}
    uvicorn = [str(Path(sys.executable).parent / "uvicorn"), "--log-level", "warning", "--no-access-log", "platform_api.asgi:app"]
    ports = {"plain": free_port(), "scraped": free_port()}
    servers = {}
    try:
        for name, port in ports.items():
            servers[name] = serve([*uvicorn, "--port", str(port)], env, port, "/healthz")
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/twins/{ids[0]}/predictions",
                                headers={"Authorization": f"Bearer {token}"}, timeout=60)
            assert answer.status_code == 201, answer.text
        passes: dict[str, list[dict[str, float]]] = {n: [] for n in servers}
        scrapes: list[float] = []
        for _ in range(args.passes):
            for name, port in ports.items():
                stop = threading.Event()
                thread = threading.Thread(target=_scraper, args=(port, metrics_token, stop, scrapes), daemon=True)
                if name == "scraped":
                    thread.start()
                process = psutil.Process(servers[name].pid)
                before = cpu_seconds(process)
                result = wrk(f"http://127.0.0.1:{port}/", args.seconds, args.connections, script)
                result["cpu_us"] = (cpu_seconds(process) - before) / max(result["requests"], 1) * 1e6
                stop.set()
                if thread.is_alive():
                    thread.join(120)
                passes[name].append(result)
                print(name, result, file=sys.stderr)
    finally:
        for process in servers.values():
            process.terminate()
            process.wait(10)
    kept = {n: runs[1:] for n, runs in passes.items()}
    ratios = [a["rps"] / b["rps"] for a, b in zip(kept["scraped"], kept["plain"], strict=True)]
    cpu = [a["cpu_us"] / b["cpu_us"] for a, b in zip(kept["scraped"], kept["plain"], strict=True)]
    labels = {"plain": "POST predictions, never scraped (baseline)", "scraped": "same, /metrics every 1 s, drift recomputed each scrape"}
    rows = [[labels[n], f"{statistics.median(r['rps'] for r in runs):.0f}", f"{statistics.median(r['p50'] for r in runs):.1f}",
             f"{statistics.median(r['p99'] for r in runs):.1f}", f"{statistics.median(r['cpu_us'] for r in runs):.0f}",
             " / ".join(f"{r['rps']:.0f}" for r in runs)] for n, runs in kept.items()]
    note = (f"Pass by pass the scraped API's throughput is {statistics.median(ratios):.3f}x the other's "
            f"({', '.join(f'{r:.3f}' for r in ratios)}), its CPU per prediction {statistics.median(cpu):.3f}x "
            f"({', '.join(f'{r:.3f}' for r in cpu)}); {len(scrapes)} scrapes, median {statistics.median(scrapes) * 1e3:.0f} ms "
            f"each (the scrape's own answer time, drift included)." if scrapes else "No scrape answered with drift series.")
    return rows, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--passes", type=int, default=3, help="the first is a warm-up")
    parser.add_argument("--skip-served", action="store_true", help="only the in-process numbers")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="bioverse-monitoring-bench-"))
    env, token, ids = prepare(work, 500)
    uri = env["BIOVERSE_TRACKING_URI"]
    features = attach_reference(work, uri)
    urls = {"SQLite": env["BIOVERSE_API_DATABASE_URL"]}
    pg = _postgres()
    if pg is not None:
        urls["PostgreSQL"] = pg[1]
    try:
        for url in urls.values():
            seed_window(url, work, features, args.window)
        compute = in_process(urls, uri, args.window)
        route, note = served(env, token, ids, work, args) if not args.skip_served else ([], "")
    finally:
        if pg is not None:
            _drop_postgres(pg[0])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    body = (
        "## Live model monitoring (`benchmarks/monitoring.py`)\n\n"
        f"{machine()}, load average {load} at the end (1, 5, 15 min). Window: the last {args.window:,} recorded "
        f"predictions of one version, {len(features)} input features (6 numeric, 2 categorical) and the score; "
        "median of 5 timed calls after a warm-up. Reading the window is the baseline of the drift computation.\n\n"
        + table(["step", "ms", "vs read", "us per prediction"], compute)
        + ("\n\nThe prediction route with and without monitoring work beside it (uvicorn, one process each, wrk "
           f"-t2 -c{args.connections} for {args.seconds:g} s, {args.passes} passes over the two APIs in turn, the first a "
           f"warm-up; medians of the others). {note}\n\n"
           + table(["API", "req/s", "p50 ms", "p99 ms", "server CPU us/req", "req/s per pass"], route) if route else "")
    )
    print(body)
    write_section("monitoring", body)


def _postgres() -> tuple[str, str] | None:
    try:
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5)
    except Exception:  # noqa: BLE001  (no PostgreSQL here: SQLite only)
        return None
    name = f"bioverse_bench_{uuid.uuid4().hex[:10]}"
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    return name, f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


def _drop_postgres(name: str) -> None:
    import psycopg2

    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


if __name__ == "__main__":
    main()

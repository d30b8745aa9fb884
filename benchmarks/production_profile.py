"""POST /v1/twins/{id}/predictions on the production profile (platform database and MLflow on PostgreSQL,
artifacts on S3, Feast registry on PostgreSQL and online store on Redis, caches on Redis) against the
embedded profile (SQLite and files), the same model and twins, served the same way, measured with wrk
in the same run.

Needs `wrk` (Debian package), this machine's PostgreSQL (127.0.0.1:5432, trust) and Redis (db 12 is
flushed). Usage: python benchmarks/production_profile.py [--seconds 10] [--connections 16] [--passes 4]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import httpx
import pandas as pd
import psutil
from _model import register_production_model
from api_predictions import cpu_seconds, serve, wrk

from _results import machine, table, write_section
from federation.processes import free_port

MODEL, REDIS_DB = "bench-profile-risk", 12
PROFILE_VARIABLES = ("BIOVERSE_PROFILE", "BIOVERSE_CONFIG")


def prepare(work: Path, twins: int, profile_env: dict[str, str] | None, train_path: Path) -> tuple[dict[str, str], str, list[str]]:
    """Register the model, build the Feast repo and the platform database of one profile; its server's environment,
    an app key and the twins' ids."""
    from feature_store.profile import StoreProfile
    from feature_store.repo import FeatureRepo
    from platform_api.auth import create_key
    from platform_api.db import migrate, session_factory
    from platform_api.models import Twin

    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(PROFILE_VARIABLES) and not k.startswith("BIOVERSE_PRODUCTION_")}
    env |= {**(profile_env or {}), "BIOVERSE_DATA_DIR": str(work), "BIOVERSE_FEATURE_REPO": str(work / "feature_repo"),
            "BIOVERSE_API_MODEL_NAME": MODEL}
    profile = StoreProfile().check() if profile_env else None  # read from this process's environment, set by main()
    if profile is None:
        uri, db_url = f"sqlite:///{work / 'mlflow.db'}", f"sqlite:///{work / 'platform.db'}"
        env |= {"BIOVERSE_TRACKING_URI": uri, "BIOVERSE_API_DATABASE_URL": db_url}
        register_production_model(work=work, name=MODEL, train_path=train_path)
        repo = FeatureRepo(work / "feature_repo").init()
    else:
        uri, db_url = profile.mlflow_tracking_uri() or "", profile.platform_database_url() or ""
        register_production_model(work=work, name=MODEL, train_path=train_path, uri=uri)
        repo = FeatureRepo(work / "feature_repo").init(online_store="redis", redis_url=profile.feast_redis() or "",
                                                       registry=profile.feast_registry_url() or "", project=env["BIOVERSE_FEAST_PROJECT"])
    frame = pd.read_csv(train_path)
    repo.ingest(frame, tenant_id="t1")
    repo.materialize()
    migrate(db_url)
    with session_factory(db_url)() as session:
        token = create_key(session, role="app", tenant_id="t1")
        rows = [Twin(tenant_id="t1", patient_id=p) for p in frame["patient_id"][:twins]]
        session.add_all(rows)
        session.commit()
        ids = [t.id for t in rows]
    return env, token, ids


def lua(token: str, ids: list[str], path: Path) -> Path:
    """A wrk script posting predictions of ``ids`` round-robin."""
    path.write_text('wrk.method = "POST"\nwrk.headers["Authorization"] = "Bearer ' + token + '"\n'
                    "ids = {" + ",".join(f'"{i}"' for i in ids) + "}\ncounter = 0\n"
                    "request = function()\n  counter = counter + 1\n"
                    '  return wrk.format(nil, "/v1/twins/" .. ids[counter % #ids + 1] .. "/predictions")\nend\n')
    return path


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--twins", type=int, default=500)
    parser.add_argument("--passes", type=int, default=4, help="passes over the two servers; the first is a warm-up")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("this benchmark needs wrk: apt-get install wrk")
    warnings.filterwarnings("ignore")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request lines
    os.environ.setdefault("BIOVERSE_GATE_KEY", secrets.token_hex(32))  # both servers serve gate-signed versions
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests.integration
    from tests.integration.production_stores import production_stores
    from training.tabular.synth import synthesize_hospitals

    work = Path(tempfile.mkdtemp(prefix="bioverse-profile-bench-"))
    exit_stack = contextlib.ExitStack()  # the databases, S3 and Redis db 12, released at the end
    stores = exit_stack.enter_context(production_stores(REDIS_DB))
    profile_env = stores.env
    os.environ.update(profile_env)  # prepare() reads the profile from this process's environment
    servers: dict[str, object] = {}
    try:
        (hospital,) = synthesize_hospitals(n_hospitals=1, n_patients=max(args.twins, 200), seed=4, out_dir=work / "data")
        setups = {"embedded": prepare(work / "embedded", args.twins, None, hospital.path),
                  "production": prepare(work / "production", args.twins, profile_env, hospital.path)}
        uvicorn = [str(Path(sys.executable).parent / "uvicorn"), "--log-level", "warning", "--no-access-log"]
        ports = {name: free_port() for name in setups}
        for name, (env, token, ids) in setups.items():
            servers[name] = serve([*uvicorn, "platform_api.asgi:app", "--port", str(ports[name])], env, ports[name], "/healthz")
            answer = httpx.post(f"http://127.0.0.1:{ports[name]}/v1/twins/{ids[0]}/predictions",
                                headers={"Authorization": f"Bearer {token}"}, timeout=60)
            assert answer.status_code == 201, (name, answer.text)
        scripts = {name: lua(token, ids, work / f"{name}.lua") for name, (_, token, ids) in setups.items()}
        passes: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
        for _ in range(args.passes):  # in turn, so a busy moment of the shared machine hits both alike
            for name in setups:
                process = psutil.Process(servers[name].pid)  # type: ignore[attr-defined]
                before = cpu_seconds(process)
                result = wrk(f"http://127.0.0.1:{ports[name]}/", args.seconds, args.connections, scripts[name])
                result["cpu_us"] = (cpu_seconds(process) - before) / max(result["requests"], 1) * 1e6
                passes[name].append(result)
                print(name, result, file=sys.stderr)
        rss = {n: psutil.Process(p.pid).memory_info().rss / 2**20 for n, p in servers.items()}  # type: ignore[attr-defined]
    finally:
        for process in servers.values():
            process.terminate()  # type: ignore[attr-defined]
            process.wait(10)  # type: ignore[attr-defined]
        stored = stores.redis.dbsize()
        exit_stack.close()
        shutil.rmtree(work, ignore_errors=True)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    kept = {n: runs[1:] for n, runs in passes.items()}
    results = {n: sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2] for n, runs in kept.items()}
    ratios = [p["rps"] / e["rps"] for p, e in zip(kept["production"], kept["embedded"], strict=True)]
    cpu_ratios = [p["cpu_us"] / e["cpu_us"] for p, e in zip(kept["production"], kept["embedded"], strict=True)]
    labels = {"embedded": "embedded profile: SQLite platform DB and MLflow, Feast SQLite online store, in-process caches (baseline)",
              "production": "production profile: PostgreSQL platform DB and MLflow, S3 artifacts, Feast SQL registry + Redis "
                            "online store, Redis caches"}
    rows = [[labels[n], f"{r['rps']:.0f}", f"{r['rps'] / results['embedded']['rps']:.2f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
             f"{statistics.median(x['cpu_us'] for x in kept[n]):.0f}", f"{rss[n]:.0f}", f"{r['errors']:.0f}",
             " / ".join(f"{x['rps']:.0f}" for x in kept[n])] for n, r in results.items()]
    body = (
        "## Production profile vs embedded profile (`benchmarks/production_profile.py`)\n\n"
        f"{machine()} (load average {load} at the end: 1, 5, 15 min; the machine is shared with other agents' builds and "
        f"tests, so absolute numbers move; the ratio is the measurement). POST /v1/twins/{{id}}/predictions, the same MLP "
        f"(64-32) and {args.twins} twins round-robin on each profile; uvicorn, one process each, `platform_api.asgi:app`, "
        f"wrk -t2 -c{args.connections} for {args.seconds:g} s per pass, {args.passes} passes over the two servers in turn (the "
        "first a warm-up; the median of the others kept, all listed). PostgreSQL 15 and Redis on this machine (loopback), "
        "S3 = moto's server (artifacts are read once, when the model loads; not on the request path). Server CPU counts the "
        "API process only (PostgreSQL's and Redis's own work is not in it). Pass by pass, the "
        f"production profile's throughput is {statistics.median(ratios):.2f}x the embedded one's "
        f"({', '.join(f'{r:.2f}' for r in ratios)}) and its server CPU per prediction {statistics.median(cpu_ratios):.2f}x "
        f"({', '.join(f'{r:.2f}' for r in cpu_ratios)}). {stored} keys were in the production Redis database at the end.\n\n"
        + table(["profile", "req/s", "vs embedded", "p50 ms", "p99 ms", "server CPU us/req", "RSS MB", "non-2xx",
                 "req/s per kept pass"], rows)
    )
    print(body)
    write_section("production-profile", body)


if __name__ == "__main__":
    main()

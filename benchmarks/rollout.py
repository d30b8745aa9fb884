"""Staged rollouts under constant load: 0 -> 100 % with no failed request, and the time to roll back a failing candidate.

The platform API runs in process (FastAPI's TestClient, Feast's SQLite online store, SQLite
platform database, embedded MLflow). One loader thread sends batch predictions of 20 twins
back to back; a controller thread runs the rollout's step every 0.5 s (what
``bioverse rollout watch`` does). Phases, in one run:

1. baseline: the same load, no rollout (version 1 answers);
2. rollout of version 2 in steps 10, 50, 100 % until it completes (production becomes 2);
3. rollout of version 3, whose weights are NaN (every answer it gives is refused, so its
   error rate is 100 %): the time from the start to the controller's rollback, and until the
   API process no longer routes to it.

Usage: python benchmarks/rollout.py [--seconds 20] [--twins 200]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from _model import register_production_model

from _results import machine, table, write_section

MODEL = "bench-rollout"
BATCH = 20


def register_version(uri: str, train_path: Path, *, broken: bool, epochs: int) -> str:
    """One more approved version with a validation report (``broken``: NaN weights)."""
    import torch
    from mlflow.tracking import MlflowClient

    from experiments.gate import mark_approved
    from experiments.spec import parse_spec
    from experiments.tracking import RunTracker, embedded_artifact_location
    from training.tabular.data import HospitalDataModule
    from training.tabular.hospital import model_hparams
    from training.tabular.local import train_locally
    from training.tabular.models import build_model
    from training.tabular.preprocessing import FeatureEncoder
    from training.tabular.synth import FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL

    spec = parse_spec({"name": f"bench-{MODEL}", "registered_model": MODEL,
                       "data": {"label": LABEL, "numeric": list(FEATURES_NUMERIC), "categorical": list(FEATURES_CATEGORICAL),
                                "hospitals": [{"id": "h", "path": str(train_path)}]},
                       "model": {"kind": "mlp", "hidden": [64, 32]}, "strategy": {"min_hospitals": 1},
                       "privacy": {"enabled": False}})
    dm = HospitalDataModule(train_path, spec.data.contract)
    dm.encoder = FeatureEncoder.from_statistics(dm.statistics(), spec.data.contract)
    model = build_model("mlp", dm.encoder.input_dim, **model_hparams(spec))
    train_locally(model, dm.dataset("train"), epochs=epochs, batch_size=64, dp=None)
    if broken:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    tracker = RunTracker(uri, embedded_artifact_location(uri))
    tracker.start(spec)
    tracker.register(model=model, encoder=dm.encoder, kind="mlp", hparams=model_hparams(spec), model_name=MODEL, tags={})
    tracker.end()
    client = MlflowClient(uri, registry_uri=uri)
    version = str(max(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'")))
    report_sha = attach_report(client, version)
    mark_approved(uri, MODEL, version, report_sha256=report_sha)
    return version


def attach_report(client: Any, version: str) -> str:
    """A stand-in validation report stored with the version, as registration stores one."""
    body = json.dumps({"auroc": 0.7}, sort_keys=True, separators=(",", ":"))
    run_id = client.get_model_version(MODEL, version).run_id
    client.log_text(run_id, body, "validation/report.json")
    client.log_text(run_id, "<p>report</p>", "validation/report.html")
    sha = hashlib.sha256(body.encode()).hexdigest()
    client.set_model_version_tag(MODEL, version, "validation.status", "complete")
    client.set_model_version_tag(MODEL, version, "validation.report_sha256", sha)
    return sha


class Load:
    """Batch predictions back to back from one thread; answers and failures counted."""

    def __init__(self, http: Any, token: str, twins: list[str]) -> None:
        self.http, self.token, self.twins = http, token, twins
        self.ok = self.failed = self.requests = 0
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.started = time.perf_counter()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            batch = [self.twins[(i + k) % len(self.twins)] for k in range(BATCH)]
            i += BATCH
            answer = self.http.post("/v1/predictions/batch", json={"twin_ids": batch},
                                    headers={"Authorization": f"Bearer {self.token}"})
            self.requests += 1
            if answer.status_code == 201:
                self.ok += 1
                for p in answer.json():
                    self.versions[p["model_version"]] = self.versions.get(p["model_version"], 0) + 1
            else:
                self.failed += 1

    def stop(self) -> float:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=300)
        return time.perf_counter() - self.started


def controller_until(service: Any, done: Any, limit: float) -> tuple[Any, float]:
    """Flush this process's counts and run the controller's step every 0.5 s until ``done(state)``."""
    from platform_api import db
    from platform_api.services import get_models

    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        time.sleep(0.5)
        get_models().split.stats.flush()
        with db.session_factory()() as session:
            state = service.step(session, MODEL).state
        if done(state):
            return state, time.perf_counter() - started
    raise SystemExit(f"the rollout did not finish within {limit} s: {state}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of the baseline phase.")
    parser.add_argument("--twins", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("BIOVERSE_GATE_KEY", os.urandom(32).hex())
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        run(Path(tmp), args)


def run(work: Path, args: argparse.Namespace) -> None:
    from feature_store.repo import FeatureRepo
    from training.tabular.synth import synthesize_hospitals

    (hospital,) = synthesize_hospitals(n_hospitals=1, n_patients=max(args.twins, 400), seed=5, out_dir=work / "data")
    uri = register_production_model(work=work, name=MODEL, train_path=hospital.path, epochs=1)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    from experiments.gate import mark_approved

    mark_approved(uri, MODEL, "1", report_sha256=attach_report(client, "1"))
    good = register_version(uri, hospital.path, broken=False, epochs=2)
    broken = register_version(uri, hospital.path, broken=True, epochs=1)
    frame = pd.read_csv(hospital.path)
    repo = FeatureRepo(work / "feature_repo").init()
    repo.ingest(frame, tenant_id="t1")
    repo.materialize()
    for key, value in {"BIOVERSE_DATA_DIR": str(work), "BIOVERSE_FEATURE_REPO": str(repo.repo_dir),
                       "BIOVERSE_API_DATABASE_URL": f"sqlite:///{work / 'platform.db'}", "BIOVERSE_TRACKING_URI": uri,
                       "BIOVERSE_API_MODEL_NAME": MODEL, "BIOVERSE_API_MODEL_POLL_SECONDS": "1"}.items():
        os.environ[key] = value
    from fastapi.testclient import TestClient

    from experiments.rollout_rules import RolloutConfig
    from platform_api import db
    from platform_api.auth import authenticate, create_key
    from platform_api.main import create_app
    from platform_api.rollouts import rollouts_at
    from platform_api.services import get_models
    from platform_api.settings import get_settings

    settings = get_settings()
    service = rollouts_at(settings.resolved_tracking_uri(), settings.resolved_database_url())
    with TestClient(create_app()) as http:
        with db.session_factory()() as session:
            app_key = create_key(session, role="app", tenant_id="t1")
            validator = authenticate(session, create_key(session, role="clinical_validator", tenant_id=None, name="Dr Quinn"))
        twins = [http.post("/v1/twins", json={"patient_id": p}, headers={"Authorization": f"Bearer {app_key}"}).json()["id"]
                 for p in frame["patient_id"][: args.twins]]
        load = Load(http, app_key, twins).start()
        time.sleep(args.seconds)
        base_seconds = load.stop()
        baseline = (load.ok, load.failed, base_seconds, dict(load.versions))

        config = RolloutConfig(steps=[10, 50, 100], min_requests=200, min_seconds=3, rollback_min_requests=20,
                               max_shift_psi=5.0, max_latency_ratio=20.0)
        load = Load(http, app_key, twins).start()
        with db.session_factory()() as session:
            service.start(session, validator, MODEL, good, config)
        state, rollout_seconds = controller_until(service, lambda s: s.state != "running", 900)
        time.sleep(1.5)  # production's follower picks the new version up; the load keeps running
        load_seconds = load.stop()
        rolled = (load.ok, load.failed, load_seconds, dict(load.versions), state.state, rollout_seconds)

        load = Load(http, app_key, twins).start()
        time.sleep(1.0)
        with db.session_factory()() as session:
            service.start(session, validator, MODEL, broken, config)
        began = time.perf_counter()
        state, decided = controller_until(service, lambda s: s.state != "running", 300)
        while get_models().split.current().state.state != "rolled_back" and time.perf_counter() - began < 60:
            time.sleep(0.05)
        unrouted = time.perf_counter() - began
        time.sleep(5.0)  # the load goes on after the rollback, on production alone
        back_seconds = load.stop()
        back = (load.ok, load.failed, back_seconds, dict(load.versions), state.state, decided, unrouted)
    report(baseline, rolled, back, good, broken)


def report(baseline: tuple, rolled: tuple, back: tuple, good: str, broken: str) -> None:
    def rate(ok: int, seconds: float) -> float:
        return ok / seconds if seconds else 0.0

    base_rate, roll_rate, back_rate = rate(baseline[0], baseline[2]), rate(rolled[0], rolled[2]), rate(back[0], back[2])
    rows = [
        ["baseline: no rollout", f"{baseline[0] + baseline[1]}", f"{baseline[1]}", f"{base_rate:.1f}", "1.00",
         ", ".join(f"v{k}: {v}" for k, v in sorted(baseline[3].items())), "-"],
        [f"rollout v{good} 10/50/100 %", f"{rolled[0] + rolled[1]}", f"{rolled[1]}", f"{roll_rate:.1f}",
         f"{roll_rate / base_rate:.2f}" if base_rate else "n/a", ", ".join(f"v{k}: {v}" for k, v in sorted(rolled[3].items())),
         f"{rolled[4]} after {rolled[5]:.1f} s"],
        [f"rollout v{broken} (NaN weights)", f"{back[0] + back[1]}", f"{back[1]}", f"{back_rate:.1f}",
         f"{back_rate / base_rate:.2f}" if base_rate else "n/a", ", ".join(f"v{k}: {v}" for k, v in sorted(back[3].items())),
         f"{back[4]} after {back[5]:.2f} s; unrouted after {back[6]:.2f} s"],
    ]
    headers = ["phase", "requests", "failed", "requests/s", "vs baseline", "answers by version", "outcome"]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    body = "\n\n".join([
        "## Staged rollouts (benchmarks/rollout.py)",
        f"{machine()}; load average {load} (shared 2-core vm). The API in process (TestClient, Feast SQLite, SQLite "
        f"platform DB, embedded MLflow), one loader thread sending batch predictions of {BATCH} twins back to back; "
        "the controller's step every 0.5 s; rules: min 200 candidate requests and 3 s per step, rollback above 5 % "
        "errors from 20 candidate requests on. A failed request is any answer but 201.",
        table(headers, rows),
        "The third phase's throughput includes the rollout's start (registry writes under the platform database's "
        "write lock) and the first request after it loading the candidate in the request path; 1 s of load before "
        "the start and 5 s after the rollback are in it too.",
        "Time to roll back: from the start of the failing candidate's rollout to the controller writing "
        "`rolled_back` (its error rate is judged once it has scored 20 requests), then to this API process no longer "
        "routing to it (its rollout poll, 1 s here). The failing candidate's answers were never returned: production "
        "answered those twins (the `answers by version` column).",
    ])
    print(table(headers, rows))
    write_section("rollout", body)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()

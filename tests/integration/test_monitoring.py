"""Live model monitoring end to end: a reference stored with the version in real MLflow, recorded predictions in a
real database (SQLite, PostgreSQL), drift through the API route, /metrics, the review page and the CLI."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tests.conftest import make_spec
from tests.integration.conftest import attach_report, register_risk_models, review_api, tracking_uri
from training.tabular.data import HospitalDataModule
from training.tabular.federated import validation_report
from training.tabular.hospital import report_subgroups
from training.tabular.preprocessing import FeatureEncoder
from training.tabular.reference import FEATURES_KEY, OTHER, local_feature_counts
from training.tabular.validation import local_aggregates

MODEL = "monitored-risk"
PEOPLE = {"validator": ("clinical_validator", None, "Dr Quinn"), "admin": ("admin", None, "Ada Admin"),
          "app": ("app", "t1", "ward app"), "ds_t1": ("data_scientist", "t1", "Dee"),
          "ds_t2": ("data_scientist", "t2", "Tom")}


def _risk(frame: pd.DataFrame) -> np.ndarray:
    """A fixed risk function of the inputs: the reference's and the window's scores come from one model."""
    z = 0.05 * (frame["age"].fillna(60) - 60) + 0.02 * (frame["systolic_bp"].fillna(130) - 130) - 1.5
    return 1 / (1 + np.exp(-z.to_numpy(dtype=float)))


@pytest.fixture()
def served(tmp_path: Path, hospital_files: list[Path]) -> dict[str, Any]:
    """Two registered versions: 1 with a feature reference (the validation round's path), 2 with an old report."""
    uri = tracking_uri(tmp_path)
    register_risk_models(uri, MODEL, hospital_files, versions=2, production=True)
    spec = make_spec(hospital_files, registered_model=MODEL)
    parts, frames = {}, {}
    first = HospitalDataModule(hospital_files[0], spec.data.contract, seed=1)
    encoder = FeatureEncoder.from_statistics(first.statistics(), spec.data.contract)  # the federation's one encoder
    for path in hospital_files:
        dm = HospitalDataModule(path, spec.data.contract, seed=1)
        test = dm.split.test
        risk = _risk(test)
        parts[path.stem] = {**local_aggregates(risk, test[spec.data.label].to_numpy().astype(int), report_subgroups(test, spec),
                                               spec.validation.thresholds, min_cell=spec.validation.min_cell),
                            FEATURES_KEY: local_feature_counts(test, encoder, min_cell=spec.validation.min_cell)}
        frames[path.stem] = dm.split.train
    _, report = validation_report(spec, parts)  # what the coordinator writes to report.json
    assert set(report["monitoring"]["features"]) == set(spec.data.contract.features)
    client = MlflowClient(uri, registry_uri=uri)
    attach_report(client, MODEL, "1", {**report, "decision": {}}, "<p>report</p>")
    old = {k: v for k, v in report.items() if k != "monitoring"}
    attach_report(client, MODEL, "2", {**old, "decision": {}}, "<p>old report</p>")
    window = pd.concat(frames.values()).sample(n=1500, replace=True, random_state=3)  # their training rows: the same sites
    return {"uri": uri, "window": window, "features": list(spec.data.contract.features)}


def _record(session_factory: Any, version: str, frame: pd.DataFrame, features: list[str], risks: np.ndarray | None = None,
            created_at: Any = None) -> None:
    """Predictions as the API records them: the version, its inputs (None where missing), the risk."""
    from platform_api.models import Prediction, Tenant, Twin

    risks = _risk(frame) if risks is None else risks
    with session_factory() as session:
        if session.get(Tenant, "t1") is None:
            session.add(Tenant(id="t1", name="t1"))
        twin = Twin(tenant_id="t1", patient_id=f"p-{uuid.uuid4().hex[:12]}")
        session.add(twin)
        session.flush()
        for row, risk in zip(frame[features].to_dict("records"), risks, strict=True):
            inputs = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            session.add(Prediction(twin_id=twin.id, tenant_id="t1", model_name=MODEL, model_version=version,
                                   risk=float(risk), inputs=inputs, **({"created_at": created_at} if created_at else {})))
        session.commit()


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"BIOVERSE_API_MONITOR_WINDOW": "1000", "BIOVERSE_API_MONITOR_MIN_PREDICTIONS": "200",
                       "BIOVERSE_API_MONITOR_REFRESH_SECONDS": "0", "BIOVERSE_API_MONITOR_PSI_THRESHOLD": "0.2"}.items():
        monkeypatch.setenv(key, value)


def test_route_metrics_page_and_cli_on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: dict[str, Any]) -> None:
    _env(monkeypatch)
    with review_api(tmp_path, monkeypatch, served["uri"], MODEL, PEOPLE) as (http, keys):
        from platform_api.db import session_factory

        url = f"/v1/registry/models/{MODEL}/versions/1/monitoring"
        assert http.get(url).status_code == 401
        assert http.get(url, headers=_h(keys["app"])).status_code == 403
        empty = http.get(url, headers=_h(keys["validator"])).json()
        assert empty["window"] == 0 and empty["status"].startswith("too few predictions") and not empty["alert"]

        window = served["window"]
        _record(session_factory(), "1", window.iloc[:150], served["features"])
        few = http.get(url, headers=_h(keys["validator"])).json()
        assert few["window"] == 150 and few["status"] == "too few predictions (150 < 200)" and few["features"] is None

        _record(session_factory(), "1", window.iloc[150:1000], served["features"])
        calm = http.get(url, headers=_h(keys["validator"])).json()
        assert calm["status"] == "ok" and calm["window"] == 1000 and calm["feature_reference"] == "ok"
        assert not calm["alert"], calm["drifted"]
        assert http.get(url + "?window=300", headers=_h(keys["validator"])).json()["window"] == 300
        assert http.get(url, headers=_h(keys["ds_t1"])).json()["window"] == 1000  # its tenant's predictions
        other = http.get(url, headers=_h(keys["ds_t2"])).json()  # another tenant's key sees none of t1's counts
        assert other["window"] == 0 and other["features"] is None and other["status"].startswith("too few predictions")
        assert http.get(url + "?window=0", headers=_h(keys["validator"])).status_code == 422
        assert http.get(f"/v1/registry/models/{MODEL}/versions/9/monitoring", headers=_h(keys["validator"])).status_code == 404

        recoded = window.iloc[1000:1500].copy()  # a site sends sex spelt its own way: half the window
        recoded["sex"] = recoded["sex"].map({"F": "female", "M": "male"}).fillna(recoded["sex"])
        _record(session_factory(), "1", recoded, served["features"])
        drift = http.get(url, headers=_h(keys["validator"])).json()
        assert drift["alert"] and drift["drifted"] == ["sex"]
        assert drift["features"]["sex"]["window"][drift["features"]["sex"]["labels"].index(OTHER)] >= 450

        _record(session_factory(), "2", window.iloc[:300], served["features"])  # the old report: no feature reference
        old = http.get(f"/v1/registry/models/{MODEL}/versions/2/monitoring", headers=_h(keys["validator"])).json()
        assert old["features"] is None and "no feature reference" in old["feature_reference"]
        assert old["status"] == "ok" and old["prediction"]["source"] == "calibration bins of the report"

        metrics = http.get("/metrics", headers=_h(keys["admin"])).text
        assert f'bioverse_model_drift_alert{{model_name="{MODEL}",model_version="1"}} 1.0' in metrics
        assert f'bioverse_model_drift_alert{{model_name="{MODEL}",model_version="2"}} 0.0' in metrics
        assert f'bioverse_model_drift_window_size{{model_name="{MODEL}",model_version="1"}} 1000.0' in metrics
        assert f'bioverse_model_drift_feature_reference{{model_name="{MODEL}",model_version="2"}} 0.0' in metrics
        psi_sex = [line for line in metrics.splitlines() if line.startswith("bioverse_model_drift_psi{") and 'feature="sex"' in line]
        assert len(psi_sex) == 1 and float(psi_sex[0].rsplit(" ", 1)[1]) >= 0.2
        assert "bioverse_model_prediction_psi{" in metrics and "bioverse_model_drift_ks{" in metrics

        assert http.get("/review/m/1/monitoring", follow_redirects=False).status_code == 303
        http.post("/review/login", data={"api_key": keys["validator"]})
        page = http.get(f"/review/{MODEL}/1/monitoring")
        assert page.status_code == 200 and "Drift alert: sex" in page.text and "female" not in page.text
        assert "no feature reference" in http.get(f"/review/{MODEL}/2/monitoring").text
        assert http.get(f"/review/{MODEL}/9/monitoring").status_code == 404

        from platform_api.cli import app

        runner = CliRunner()
        alerting = runner.invoke(app, ["monitor", "drift", MODEL, "--version", "1"])
        assert alerting.exit_code == 2, alerting.output
        assert "ALERT" in alerting.output and "sex" in alerting.output
        both = runner.invoke(app, ["monitor", "drift", MODEL, "--window", "300", "--json"])
        assert both.exit_code == 2, both.output  # every served version; 1 alerts
        assert {(r["version"], r["alert"]) for r in json.loads(both.stdout)} == {("1", True), ("2", False)}
        bad = runner.invoke(app, ["monitor", "drift", MODEL, "--version", "x1"])
        assert bad.exit_code == 1 and "--version" in bad.output and "Traceback" not in bad.output
        missing = runner.invoke(app, ["monitor", "drift", MODEL, "--version", "7"])
        assert missing.exit_code == 1 and "no version 7" in missing.output


def test_shifted_mean_on_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: dict[str, Any],
                                    postgres_database: Any) -> None:
    _env(monkeypatch)
    monkeypatch.setenv("BIOVERSE_API_DATABASE_URL", postgres_database.sqlalchemy_url)
    from platform_api.db import migrate, session_factory
    from platform_api.monitoring import get_monitor
    from platform_api.settings import get_settings
    from tests.integration.conftest import clear_platform_caches

    clear_platform_caches()
    try:
        migrate(postgres_database.sqlalchemy_url)
        monkeypatch.setenv("BIOVERSE_TRACKING_URI", served["uri"])
        get_settings.cache_clear()
        window = served["window"]
        _record(session_factory(postgres_database.sqlalchemy_url), "1", window.iloc[:1000], served["features"])
        monitor = get_monitor()
        assert not monitor.version_drift(MODEL, "1")["alert"]
        shifted = window.iloc[:1000].copy()
        shifted["cholesterol"] = shifted["cholesterol"] + shifted["cholesterol"].std()
        _record(session_factory(postgres_database.sqlalchemy_url), "1", shifted, served["features"],
                risks=_risk(shifted))  # cholesterol is not in the risk function: the scores do not move
        drift = monitor.version_drift(MODEL, "1")
        assert drift["window"] == 1000 and drift["drifted"] == ["cholesterol"]
        assert drift["features"]["cholesterol"]["ks_p"] < 1e-6
        assert [(r["model"], r["version"], r["alert"]) for r in monitor.snapshot()] == [(MODEL, "1", True)]

        from datetime import UTC, datetime, timedelta

        from platform_api.monitoring import WindowSpec

        two_hours_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2)
        _record(session_factory(postgres_database.sqlalchemy_url), "2", window.iloc[:300], served["features"],
                created_at=two_hours_ago)
        assert monitor.version_drift(MODEL, "2", WindowSpec(size=1000, minutes=0, min_predictions=200))["window"] == 300
        recent = monitor.version_drift(MODEL, "2", WindowSpec(size=1000, minutes=60, min_predictions=200))
        assert recent["window"] == 0 and recent["status"].startswith("too few predictions")
    finally:
        clear_platform_caches()


def test_a_federated_run_stores_the_reference_in_its_report(tmp_path: Path, hospital_files: list[Path]) -> None:
    """The simulation engine's validation round: hospitals' feature counts reach report.json (its SHA-256 pins them),
    and the registered model's own scores of the held-out rows show no drift against it."""
    import hashlib

    from experiments.registry_reader import RegistryReader
    from platform_api.monitoring import WindowSpec, drift_report, monitoring_reference
    from serving.model_source import RegistryModel
    from tests.conftest import spec_dict
    from tests.integration.conftest import run_experiment_cli
    from training.tabular.data import load_split

    spec = spec_dict(hospital_files, name="monitored", registered_model=MODEL, training={"rounds": 1})
    done, uri, _ = run_experiment_cli(spec, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    reader = RegistryReader(uri)
    report = reader.report(MODEL, "1")
    assert hashlib.sha256(json.dumps(report, sort_keys=True, separators=(",", ":")).encode()).hexdigest() \
        == reader.show(MODEL, "1").report_sha256
    section = report["monitoring"]
    parsed = make_spec(hospital_files, name="monitored", registered_model=MODEL)
    assert set(section["features"]) == set(parsed.data.contract.features)
    n = report["overall"]["n"]
    assert sum(section["score"]["counts"]) == n
    for column, feature in section["features"].items():  # every held-out row once per feature (suppressed: shared)
        assert sum(feature["counts"]) == pytest.approx(n), column

    scorer = RegistryModel(uri, MODEL, require_approval=False).load("1").scorer
    frames = [load_split(h.path, parsed.data.contract, parsed.data.test_fraction, parsed.seed).test for h in parsed.data.hospitals]
    held_out = pd.concat(frames)
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in held_out[list(parsed.data.contract.features)].to_dict("records")]
    drift = drift_report(MODEL, "1", monitoring_reference(report), rows, scorer.score_columns(held_out).tolist(),
                         WindowSpec(size=n, min_predictions=100))
    assert drift["status"] == "ok" and not drift["alert"], drift["drifted"]
    assert drift["prediction"]["psi"] < 0.01  # the same rows and the same model: only the bins' edges differ

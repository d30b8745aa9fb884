"""A real 3-hospital, 2-round DP federation on Flower's simulation engine, tracked in MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score

from tests.conftest import spec_dict

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory, hospitals_dir: Path) -> dict:
    """`bioverse experiment run` from a fresh process, as a data scientist runs it."""
    root = tmp_path_factory.mktemp("cli-run")
    spec = spec_dict(sorted(hospitals_dir.glob("hospital-*.csv")), name="it-cardiac", registered_model="it-cardiac-risk")
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "BIOVERSE_DATA_DIR": str(root / "home"), "FLWR_HOME": str(root / "home" / "flwr")}
    bioverse = Path(sys.executable).parent / "bioverse"
    result = subprocess.run([str(bioverse), "experiment", "run", str(root / "spec.yaml"), "--tracking-uri", uri],
                            capture_output=True, text=True, env=env, timeout=600)
    return {"result": result, "uri": uri, "root": root, "spec": spec, "hospitals": hospitals_dir}


def test_cli_reports_progress_and_the_registered_version(cli_run: dict) -> None:
    result = cli_run["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "federated preprocessing: statistics from 3/3 hospitals" in out
    assert "round 1/2  hospitals 3/3" in out and "round 2/2  hospitals 3/3" in out
    assert "Registered it-cardiac-risk version 1" in out
    assert "Traceback" not in out + result.stderr


def test_epsilon_within_budget_and_metrics_logged_per_round(cli_run: dict) -> None:
    client = MlflowClient(cli_run["uri"])
    experiment = client.get_experiment_by_name("it-cardiac")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["training.rounds"] == "2" and run.data.params["strategy.name"] == "fedavg"
    for metric in ("train_train_loss", "evaluate_auroc", "evaluate_brier", "train_epsilon", "round_seconds"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert [m.step for m in history] == [1, 2], metric
    for hospital in ("hospital-01", "hospital-02", "hospital-03"):
        eps = client.get_metric_history(run.info.run_id, f"{hospital}/train_epsilon")
        assert [m.step for m in eps] == [1, 2]
        assert 0 < eps[0].value < eps[1].value <= 2.0 + 1e-6  # grows per round, within the target
        assert len(client.get_metric_history(run.info.run_id, f"{hospital}/evaluate_auroc")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.json", "participation.json", "summary.json"} <= artifacts


def test_registered_version_carries_tags_and_predicts_well(cli_run: dict) -> None:
    client = MlflowClient(cli_run["uri"], registry_uri=cli_run["uri"])
    version = client.get_model_version("it-cardiac-risk", "1")
    tags = version.tags
    assert tags["experiment"] == "it-cardiac" and tags["rounds"] == "2" and tags["strategy"] == "fedavg"
    assert 0 < float(tags["epsilon"]) <= 2.0 and float(tags["delta"]) == 1e-5
    assert tags["hospitals"] == "hospital-01,hospital-02,hospital-03"
    from federation.processes import launcher_identity

    assert tags["launched_by"] == launcher_identity()  # who launched it may not approve it
    assert {f"schema.hospital-0{i}" for i in (1, 2, 3)} <= set(tags)
    assert len({tags[f"schema.hospital-0{i}"] for i in (1, 2, 3)}) == 1  # same schema everywhere
    mlflow.set_tracking_uri(cli_run["uri"])
    mlflow.set_registry_uri(cli_run["uri"])  # other tests in this process may have set another registry
    model = mlflow.pyfunc.load_model("models:/it-cardiac-risk/1")
    assert model.metadata.signature is not None
    pooled = pd.concat([pd.read_csv(p) for p in sorted(cli_run["hospitals"].glob("hospital-*.csv"))])
    features = pooled.drop(columns=["patient_id", "true_risk", "cardiac_event"])
    numeric = features.select_dtypes("number").columns
    features[numeric] = features[numeric].astype(float)  # the signature takes numbers as double
    risk = model.predict(features)["risk"].to_numpy()
    assert np.all((risk > 0) & (risk < 1))
    model_auc = roc_auc_score(pooled["cardiac_event"], risk)
    oracle_auc = roc_auc_score(pooled["cardiac_event"], pooled["true_risk"])
    assert model_auc > 0.85 * oracle_auc, (model_auc, oracle_auc)


def test_validation_report_from_hospital_aggregates_matches_pooled_data(cli_run: dict) -> None:
    """The report the coordinator built from counts equals a direct computation on the
    pooled held-out rows (which never left the hospitals in the run)."""
    import hashlib
    import json

    from sklearn.linear_model import LogisticRegression

    from experiments.spec import parse_spec
    from serving.model_source import RegistryModel
    from training.tabular.data import load_split

    assert "validation report: aggregates from 3/3 hospitals" in cli_run["result"].stdout
    uri = cli_run["uri"]
    client = MlflowClient(uri, registry_uri=uri)
    tags = client.get_model_version("it-cardiac-risk", "1").tags
    assert tags["validation.status"] == "complete" and tags["validation.hospitals"] == "hospital-01,hospital-02,hospital-03"
    run_id = tags["run_id"]
    stored = {a.path for a in client.list_artifacts(run_id, "validation")}
    assert {f"validation/{n}" for n in ("report.json", "report.html", "model_card.md", "roc.png", "calibration.png",
                                        "decision_curve.png")} <= stored
    raw = Path(client.download_artifacts(run_id, "validation/report.json", str(cli_run["root"]))).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == tags["validation.report_sha256"]
    report = json.loads(raw)

    spec = parse_spec(cli_run["spec"], "spec")
    scorer = RegistryModel(uri, "it-cardiac-risk", require_approval=False).load("1").scorer  # unreviewed: not served
    risks, labels, sizes = [], [], {}
    for hospital in spec.data.hospitals:
        test = load_split(hospital.path, spec.data.contract, spec.data.test_fraction, spec.seed).test
        risks.append(scorer.score_columns(test))
        labels.append(test[spec.data.label].to_numpy().astype(int))
        sizes[hospital.id] = len(test)
    risk, label = np.concatenate(risks), np.concatenate(labels)
    overall = report["overall"]
    assert overall["n"] == len(label) and overall["positives"] == int(label.sum())
    assert overall["auroc"] == pytest.approx(roc_auc_score(label, risk), abs=0.002)
    logit = np.log(risk / (1 - risk)).reshape(-1, 1)
    slope = LogisticRegression(C=1e9, max_iter=1000).fit(logit, label).coef_[0, 0]
    assert overall["calibration_slope"] == pytest.approx(slope, abs=0.02)
    assert overall["brier"] == pytest.approx(float(np.mean((risk - label) ** 2)), abs=1e-6)
    assert {h: c["n"] for h, c in report["subgroups"]["hospital"].items()} == sizes
    assert set(report["subgroups"]["sex"]) >= {"F", "M"}


def test_a_validator_runs_the_report_on_held_out_rows_only(cli_run: dict, tmp_path: Path) -> None:
    """`bioverse registry validate`: the same report, locally, on held-out rows only: a
    training hospital's own file counts only the rows its run held out; a file the registry
    does not know counts whole."""
    import json

    from experiments.spec import parse_spec
    from training.tabular.data import load_split

    data = sorted(cli_run["hospitals"].glob("hospital-*.csv"))[0]
    bioverse = Path(sys.executable).parent / "bioverse"
    env = {**os.environ, "BIOVERSE_DATA_DIR": str(tmp_path / "home")}

    def validate(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bioverse), "registry", "validate", "1", "--data", str(path), "--output",
                               str(tmp_path / path.stem), "--model", "it-cardiac-risk", "--tracking-uri", cli_run["uri"]],
                              capture_output=True, text=True, env=env, timeout=300)

    spec = parse_spec(cli_run["spec"], "spec")
    held_out = len(load_split(data, spec.data.contract, spec.data.test_fraction, spec.seed).test)
    rows = len(pd.read_csv(data))
    done = validate(data)
    assert done.returncode == 0, done.stdout + done.stderr
    said = done.stdout.replace("\n", " ")
    assert (f"scored {held_out} held-out patients (the test rows of the run's split of {data.stem}'s patients "
            f"(seed {spec.seed}), held out from {data.stem}'s training); {rows - held_out} patients excluded") in said
    assert f"({held_out} patients" in said and "AUROC 0." in said
    report = json.loads((tmp_path / data.stem / "report.json").read_text())
    assert report["overall"]["n"] == held_out and (tmp_path / data.stem / "report.html").stat().st_size > 10_000
    mine = tmp_path / "mine.csv"  # a validator's own file: other rows, unknown to the registry
    pd.read_csv(data).head(300).to_csv(mine, index=False)
    own = validate(mine)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "scored 300 held-out patients (every row: not one of this version's training datasets" in own.stdout.replace("\n", " ")
    assert json.loads((tmp_path / "mine" / "report.json").read_text())["overall"]["n"] == 300
    bad = subprocess.run([str(bioverse), "registry", "validate", "1", "--data", str(tmp_path / "missing.csv"),
                          "--model", "it-cardiac-risk", "--tracking-uri", cli_run["uri"]],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

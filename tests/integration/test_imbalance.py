"""Imbalance end to end: a DP run on 90/10 hospitals with balanced class weights and a Youden
threshold chosen on the val part, through a real Flower simulation run by the CLI; the
registered version carries the threshold and its served decisions are not one class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from experiments.gate import download_version
from tests.conftest import LABEL, spec_dict
from training.decision import DECISION_FILE
from training.scoring import RiskScorer

pytestmark = pytest.mark.integration

BIOVERSE = str(Path(sys.executable).parent / "bioverse")


def _ninety_ten(path: Path, seed: int) -> Path:
    """The hospital's file with positives dropped until they are 10% of its patients."""
    frame = pd.read_csv(path)
    negatives, positives = frame[frame[LABEL] == 0], frame[frame[LABEL] == 1]
    keep = positives.sample(n=min(len(positives), len(negatives) // 9), random_state=seed)
    pd.concat([negatives, keep]).sample(frac=1.0, random_state=seed).to_csv(path, index=False)
    return path


def test_balanced_weights_and_a_val_threshold_serve_both_classes(hospital_files: list[Path], tmp_path: Path) -> None:
    paths = [_ninety_ten(p, i) for i, p in enumerate(hospital_files)]
    spec = spec_dict(paths, name="it-imbalance", registered_model="it-imbalance-risk",
                     data={"val_fraction": 0.2}, training={"rounds": 3, "class_weights": "balanced"},
                     strategy={"name": "fedavg", "min_hospitals": 3},
                     validation={"threshold": {"rule": "youden"}})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "BIOVERSE_DATA_DIR": str(tmp_path / "home"), "FLWR_HOME": str(tmp_path / "home" / "flwr")}
    done = subprocess.run([BIOVERSE, "experiment", "run", str(tmp_path / "spec.yaml"), "--tracking-uri", uri],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(uri, registry_uri=uri)
    tags = client.get_model_version("it-imbalance-risk", "1").tags
    assert tags["decision_rule"] == "youden" and tags["decision_source"] == "val"
    threshold = float(tags["decision_threshold"])
    assert 0 < threshold < 1
    assert float(tags["validation.decision_balanced_accuracy"]) > 0.5
    weights = [float(w) for w in client.get_run(tags["run_id"]).data.tags["class_weights"].split(",")]
    assert weights[1] > 5 * weights[0]  # balanced on 90/10 (DP-noised counts): about 1:9

    report = json.loads(Path(client.download_artifacts(tags["run_id"], "validation/report.json", str(tmp_path))).read_text())
    decision = report["decision"]
    assert decision["rule"] == "youden" and decision["threshold"] == pytest.approx(threshold, rel=1e-5)
    assert decision["val"]["n"] > 0 and decision["test"]["n"] == report["overall"]["n"]
    card = Path(client.download_artifacts(tags["run_id"], "validation/model_card.md", str(tmp_path))).read_text()
    assert "Decision threshold" in card and "Sensitivity at threshold" in card

    # the package carries the threshold the scorers serve, and its decisions are not one class
    package = download_version(uri, "it-imbalance-risk", "1", tmp_path / "model") / "artifacts"
    assert (package / DECISION_FILE).exists()
    scorer = RiskScorer.from_files(package)
    assert scorer.threshold == pytest.approx(threshold, rel=1e-5)
    rows = pd.concat([pd.read_csv(p) for p in paths])
    decided = scorer.decision.decide(scorer.score_columns({c: rows[c].to_numpy() for c in scorer.features}))
    y = rows[LABEL].to_numpy() == 1
    balanced_accuracy = (decided[y].mean() + (~decided[~y]).mean()) / 2
    assert 0 < decided.mean() < 1 and balanced_accuracy > 0.55

    shown = subprocess.run([BIOVERSE, "registry", "show", "1", "--model", "it-imbalance-risk", "--tracking-uri", uri],
                           capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"decision: youden threshold {tags['decision_threshold']} (val); on the test part: sensitivity" in shown.stdout

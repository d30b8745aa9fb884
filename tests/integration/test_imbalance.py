"""Imbalance end to end: a DP run on 90/10 hospitals with balanced class weights and a Youden
threshold chosen on the val part, through a real Flower simulation run by the CLI; the
registered version carries the threshold and its served decisions are not one class."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from experiments.gate import download_version
from tests.conftest import LABEL, spec_dict
from tests.integration.conftest import BIOVERSE, run_experiment_cli
from training.artifacts import DECISION_FILE
from training.imaging.scoring import VisionScorer
from training.imaging.synth import synthesize_image_hospitals
from training.tabular.scoring import RiskScorer

pytestmark = pytest.mark.integration



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
    done, uri, env = run_experiment_cli(spec, tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Decision: threshold " in done.stdout and "by youden (val); on the test part: sensitivity" in done.stdout

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
    print(f"tabular: threshold {threshold:.4f}, balanced accuracy {balanced_accuracy:.3f} on all rows, "
          f"{tags['validation.decision_balanced_accuracy']} on the test part")
    assert 0 < decided.mean() < 1 and balanced_accuracy > 0.55

    shown = subprocess.run([BIOVERSE, "registry", "show", "1", "--model", "it-imbalance-risk", "--tracking-uri", uri],
                           capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"decision: youden threshold {tags['decision_threshold']} (val); on the test part: sensitivity" in shown.stdout

    # a validator's `registry validate` shows how the stored threshold decides on the held-out rows it scores
    checked = subprocess.run([BIOVERSE, "registry", "validate", "1", "--data", str(paths[0]), "--output", str(tmp_path / "v"),
                              "--model", "it-imbalance-risk", "--tracking-uri", uri],
                             capture_output=True, text=True, env=env, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"Decision: threshold {threshold:.4g} (youden): sensitivity" in checked.stdout
    local = json.loads((tmp_path / "v" / "report.json").read_text())
    assert local["decision"]["threshold"] == pytest.approx(threshold, rel=1e-5) and local["decision"]["test"]["n"] == local["overall"]["n"]


def test_imbalanced_binary_images_get_a_threshold_and_both_labels_are_served(tmp_path: Path) -> None:
    """Two 90/10 DP image hospitals (.npz: their val arrays are the val part), balanced class
    weights: the version's threshold on p(finding) is chosen on val, and the registered
    package's labels on held-out images are not the majority class only (issue 11 item 4)."""
    npzs = synthesize_image_hospitals(tmp_path / "data", n_hospitals=2, images_per_hospital=600, size=16, channels=1,
                                      classes=("normal", "finding"), layout="npz", seed=4, majority=0.9)
    spec = {"name": "it-imbalance-images", "registered_model": "it-imbalance-xray", "seed": 2,
            "data": {"modality": "images", "classes": ["normal", "finding"], "image_size": 16, "augment": None,
                     "hospitals": [{"id": p.stem, "path": str(p)} for p in npzs]},
            "model": {"kind": "cnn", "width": 8}, "strategy": {"min_hospitals": 2},
            "training": {"rounds": 3, "local_epochs": 2, "batch_size": 32, "learning_rate": 0.01,
                         "class_weights": "balanced"},
            "privacy": {"enabled": True, "target_epsilon": 8.0, "hospital_budget": 20.0}}
    done, uri, _ = run_experiment_cli(spec, tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tags = MlflowClient(uri, registry_uri=uri).get_model_version("it-imbalance-xray", "1").tags
    assert tags["decision_rule"] == "youden" and tags["decision_source"] == "val"
    package = download_version(uri, "it-imbalance-xray", "1", tmp_path / "model") / "artifacts"
    scorer = VisionScorer.from_files(package, device="cpu")
    assert scorer.decision.threshold == pytest.approx(float(tags["decision_threshold"]), rel=1e-5)
    images = np.concatenate([np.load(p)["test_images"] for p in npzs])
    truth = np.concatenate([np.load(p)["test_labels"].reshape(-1) for p in npzs])
    images = images[:, None] if images.ndim == 3 else images
    probs = scorer.predict(images)
    served = scorer.decision.labels(probs)
    assert set(served.tolist()) == {0, 1}  # not the majority class only
    finding = truth == 1

    def balanced_accuracy(labels: np.ndarray) -> float:
        return float((labels[finding].mean() + (1 - labels[~finding]).mean()) / 2)

    print(f"images: threshold {tags['decision_threshold']}: balanced accuracy {balanced_accuracy(served):.3f} "
          f"(argmax {balanced_accuracy(probs.argmax(axis=1)):.3f}) on {len(truth)} held-out images")
    assert balanced_accuracy(served) > 0.5


def test_a_multiclass_image_model_serves_and_reports_the_prior_correction(tmp_path: Path) -> None:
    """Three classes (80/10/10): the version serves the prior-corrected argmax; the report
    gives the balanced accuracy of the labels it serves, from the hospitals' confusion counts."""
    npzs = synthesize_image_hospitals(tmp_path / "data", n_hospitals=2, images_per_hospital=150, size=16, channels=1,
                                      classes=("normal", "nodule", "opacity"), layout="npz", seed=6, majority=0.8)
    spec = {"name": "it-imbalance-multi", "registered_model": "it-imbalance-multi", "seed": 2,
            "data": {"modality": "images", "classes": ["normal", "nodule", "opacity"], "image_size": 16, "augment": None,
                     "hospitals": [{"id": p.stem, "path": str(p)} for p in npzs]},
            "model": {"kind": "cnn", "width": 4}, "strategy": {"min_hospitals": 2},
            "training": {"rounds": 1, "local_epochs": 1, "batch_size": 32}, "privacy": {"enabled": False}}
    done, uri, _ = run_experiment_cli(spec, tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Decision: prior-corrected argmax by prior (prior (more than two classes))" in done.stdout
    client = MlflowClient(uri, registry_uri=uri)
    tags = client.get_model_version("it-imbalance-multi", "1").tags
    assert tags["decision_rule"] == "prior" and "decision_threshold" not in tags
    scale = [float(s) for s in tags["decision_class_scale"].split(",")]
    assert scale[0] < scale[1] and scale[0] < scale[2]  # the majority class is scaled down
    report = json.loads(Path(client.download_artifacts(tags["run_id"], "validation/report.json", str(tmp_path))).read_text())
    served = report["decision"]["test"]
    assert served["n"] == report["overall"]["n"] and len(served["confusion"]) == 3
    assert 0 <= served["balanced_accuracy"] <= 1

"""DP image training that converges, for real: `bioverse experiment run` (Flower simulation,
DP-SGD at epsilon 8) on two small hospitals at 90/10, with the DP defaults for everything
the spec leaves out: the run prints and records them, and the training loss does not rise."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from federation.convergence import LOSS_RISING_TAG, loss_rising
from tests.integration.conftest import run_experiment_cli
from training.imaging.spec import DP_IMAGE_DEFAULTS
from training.imaging.synth import synthesize_image_hospitals

pytestmark = pytest.mark.integration


def test_a_small_imbalanced_dp_image_run_with_the_defaults_does_not_raise_its_loss(tmp_path: Path) -> None:
    folders = synthesize_image_hospitals(tmp_path / "data", n_hospitals=2, images_per_hospital=400, size=16, channels=1,
                                         classes=("normal", "nodule"), layout="folder", seed=4, majority=0.9)
    spec = {"name": "it-dp-defaults", "registered_model": "it-dp-defaults", "seed": 2,
            "data": {"modality": "images", "classes": ["normal", "nodule"], "image_size": 16, "augment": None,
                     "hospitals": [{"id": p.name, "path": str(p)} for p in folders]},
            "model": {"kind": "cnn", "width": 8}, "strategy": {"min_hospitals": 2},
            "training": {"rounds": 4},  # optimiser, learning rate, batch and clipping bound: the DP defaults
            "privacy": {"target_epsilon": 8.0, "hospital_budget": 20.0}}
    result, uri, _ = run_experiment_cli(spec, tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = " ".join(result.stdout.split())
    assert "DP defaults for what the spec leaves out: training.optimizer sgd" in out

    client = MlflowClient(uri, registry_uri=uri)
    run_id = client.get_model_version("it-dp-defaults", "1").run_id
    run = client.get_run(run_id)
    params = run.data.params
    training, privacy = DP_IMAGE_DEFAULTS["training"], DP_IMAGE_DEFAULTS["privacy"]
    assert params["training.optimizer"] == training["optimizer"]
    assert float(params["training.learning_rate"]) == training["learning_rate"]
    assert int(params["training.batch_size"]) == training["batch_size"]
    assert float(params["privacy.max_grad_norm"]) == privacy["max_grad_norm"]
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "train_train_loss"), key=lambda m: m.step)]
    assert len(losses) == 4
    assert loss_rising(losses) is None, losses
    assert losses[-1] <= losses[0] + 0.05, losses
    assert LOSS_RISING_TAG not in run.data.tags

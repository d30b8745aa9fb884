"""Model selection and early stopping on the val part, through a real Flower simulation run by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from federation.ledger import PrivacyLedger
from tests.conftest import spec_dict
from tests.integration.conftest import run_experiment_cli
from training.fingerprint import dataset_fingerprint
from training.selection import selection_epsilon_after, selection_noise_multiplier

pytestmark = pytest.mark.integration



def test_early_stopping_registers_the_best_val_round_and_charges_only_the_rounds_run(
        hospital_files: list[Path], tmp_path: Path) -> None:
    """Two DP hospitals with a val part, 5 rounds planned. A min_delta no round can beat makes
    round 1 the best and round 2 the last (patience 1): the run stops after 2 rounds, the
    version is round 1's model (or round 2's when round 1 won by less than the DP noise),
    and each ledger holds 2 training rounds and 2 val releases."""
    paths = hospital_files[:2]
    spec = spec_dict(paths, name="it-selection", registered_model="it-selection-risk",
                     data={"val_fraction": 0.2}, training={"rounds": 5},
                     privacy={"selection_epsilon": 4.0},  # noise far below the val loss (0.5 made the sum <= 0 now and then)
                     selection={"metric": "loss", "patience": 1, "min_delta": 10.0})
    done, uri, _ = run_experiment_cli(spec, tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = " ".join(done.stdout.split())  # the console wraps long lines
    assert "round 2/5" in out and "round 3/5" not in out
    assert "early stopping after round 2/5: 1 rounds without improvement (patience 1)" in out
    assert "(DP noise sd) from 2 hospitals" in out, out
    assert "val loss is noisy" not in out  # the noise is far below this min_delta

    client = MlflowClient(uri, registry_uri=uri)
    tags = client.get_model_version("it-selection-risk", "1").tags
    run_id = tags["run_id"]
    losses = [m.value for m in client.get_metric_history(run_id, "val_loss")]
    noise = [m.value for m in client.get_metric_history(run_id, "val_loss_noise_sd")]
    assert len(losses) == 2 and len(noise) == 2
    # round 1 is the best (nothing beats it by min_delta 10); it is registered unless it beat the
    # last round by less than the DP noise, and then round 2 is (docs/model-selection.md)
    within_noise = abs(losses[0] - losses[1]) <= 2 * np.sqrt(2) * max(noise)
    assert tags["selection.metric"] == "loss" and tags["selection.stopped_early"] == "true"
    assert tags["selection.rounds_run"] == "2" and int(tags["selection.rounds_run"]) < spec["training"]["rounds"]
    if within_noise:
        assert tags["selection.status"] == "within noise" and tags["selection.round"] == "2"
        assert "Model selection: last round's model registered: round 1 looked best" in out
    else:
        assert tags["selection.status"] == "val" and tags["selection.round"] == "1"
        assert float(tags["selection.value"]) == pytest.approx(losses[0], abs=1e-4)
        assert "Model selection: round 1 had the best val loss" in out
    z = selection_noise_multiplier(epsilon=4.0, delta=1e-5, releases=5)  # calibrated for the 5 rounds planned
    two = selection_epsilon_after(noise_multiplier=z, releases=2, delta=1e-5)  # charged for the 2 run
    assert two < 4.0 and float(tags["selection.epsilon"]) == pytest.approx(two, abs=1e-4)
    assert [m.step for m in client.get_metric_history(run_id, "train_train_loss")] == [1, 2]
    summary = json.loads(Path(client.download_artifacts(run_id, "summary.json", str(tmp_path))).read_text())
    assert summary["selection"]["rounds_run"] == 2 and summary["rounds_run"] == 2
    card = Path(client.download_artifacts(run_id, "validation/model_card.md", str(tmp_path))).read_text()
    assert "2 of 5 (" in card

    for path in paths:
        ledger = PrivacyLedger(tmp_path / "home" / "ledgers" / f"{path.stem}.json", path.stem, dataset_fingerprint(path))
        training, selection = ledger.entry(run_id), ledger.entry(f"{run_id}/selection")
        assert training is not None and training.rounds == 2  # rounds 3-5 never ran, never charged
        assert selection is not None and selection.kind == "selection" and selection.steps == 2
        assert selection.epsilon == pytest.approx(two)


def test_without_dp_the_best_val_round_is_registered_and_the_test_part_is_only_in_the_report(
        hospital_files: list[Path], tmp_path: Path) -> None:
    """Exact val aggregates: round 1 is chosen (min_delta 10), training stops after round 2 of
    4, the per-round metrics are the val part's, and the version's report is on the test part."""
    paths = hospital_files[:2]
    spec = spec_dict(paths, name="it-selection-exact", registered_model="it-selection-exact",
                     data={"val_fraction": 0.2}, training={"rounds": 4}, privacy={"enabled": False},
                     selection={"metric": "auroc", "patience": 1, "min_delta": 10.0})
    done, uri, _ = run_experiment_cli(spec, tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = " ".join(done.stdout.split())
    assert "val AUROC 0." in out and "DP noise" not in out
    assert "Model selection: round 1 had the best val auroc" in out and "stopped after round 2" in out
    client = MlflowClient(uri, registry_uri=uri)
    tags = client.get_model_version("it-selection-exact", "1").tags
    assert tags["selection.status"] == "val" and tags["selection.round"] == "1" and tags["selection.rounds_run"] == "2"
    run_id = tags["run_id"]
    val = client.get_metric_history(run_id, "val_auroc")
    assert [m.step for m in val] == [1, 2] and float(tags["selection.value"]) == pytest.approx(val[0].value, abs=1e-4)
    assert client.get_metric_history(run_id, "evaluate_auroc") == []  # no round scored the test part
    assert [m.step for m in client.get_metric_history(run_id, "evaluate_val_auroc")] == [1, 2]
    assert tags["validation.status"] == "complete"  # the test part, once, for the report

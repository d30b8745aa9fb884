"""A 3-hospital DP run with secure aggregation (SecAgg+) on the simulation engine, from the CLI to a registered model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import spec_dict

pytestmark = pytest.mark.integration


def test_secure_aggregation_run_registers_a_model(tmp_path: Path, hospitals_dir: Path) -> None:
    spec = spec_dict(sorted(hospitals_dir.glob("hospital-*.csv")), name="it-secagg", registered_model="it-secagg-risk",
                     strategy={"name": "fedavgm", "secure_aggregation": True})
    spec["training"]["rounds"] = 2
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "BIOVERSE_DATA_DIR": str(tmp_path / "home"), "FLWR_HOME": str(tmp_path / "home" / "flwr")}
    bioverse = Path(sys.executable).parent / "bioverse"
    result = subprocess.run([str(bioverse), "experiment", "run", str(tmp_path / "spec.yaml"), "--tracking-uri", uri],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round 1/2  hospitals 3/3" in result.stdout and "round 2/2  hospitals 3/3" in result.stdout
    assert "Registered it-secagg-risk version 1" in result.stdout

    client = MlflowClient(uri, registry_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("it-secagg").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["strategy.secure_aggregation"] == "True"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_hospitals")] == [3.0, 3.0]
    for hospital in ("hospital-01", "hospital-02", "hospital-03"):  # metrics travel in the clear, per hospital
        assert len(client.get_metric_history(run.info.run_id, f"{hospital}/train_epsilon")) == 2
    auroc = client.get_metric_history(run.info.run_id, "evaluate_auroc")
    assert auroc[-1].value > 0.7  # the securely aggregated model learned
    assert client.get_model_version("it-secagg-risk", "1").tags["secure_aggregation"] == "true"
    logs = "".join(p.read_text() for p in (tmp_path / "home").rglob("flwr-run.log"))
    if logs:  # where the launcher keeps the ServerApp's log
        assert logs.count("securely aggregated 3 hospitals' updates") == 2

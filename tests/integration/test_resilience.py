"""Ledger refusals, hospitals dropping out, and failed runs that register nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from federation.errors import LaunchError
from federation.ledger import PrivacyLedger
from tests.conftest import make_spec
from tests.integration.conftest import participation, tracking_uri

pytestmark = pytest.mark.integration


def test_hospital_past_its_budget_refuses_and_the_round_goes_on(
    hospital_files: list[Path], tmp_path: Path, launch: Callable[..., dict[str, Any]]
) -> None:
    ledger_path = tmp_path / "ledgers" / "hospital-02.json"
    PrivacyLedger(ledger_path, "hospital-02").charge(run="earlier-run", experiment="old", epsilon=9.5, delta=1e-5, steps=100, budget=10)
    before = ledger_path.read_bytes()
    summary = launch(make_spec(hospital_files, name="refusal"))
    for round_ in (1, 2):
        assert participation(summary, round_) == {"hospital-01": "ok", "hospital-02": "refused", "hospital-03": "ok"}
        reason = summary["participation"][str(round_)]["train"]["hospital-02"]["reason"]
        assert "privacy budget exhausted: 9.500 spent in earlier runs" in reason
    assert summary["model_version"] == "1"
    assert set(summary["epsilon"]) == {"hospital-01", "hospital-03"}
    assert ledger_path.read_bytes() == before  # the refusing hospital spent nothing
    uri = tracking_uri(tmp_path)
    tags = MlflowClient(uri, registry_uri=uri).get_model_version("test-cardiac-risk", "1").tags
    assert float(tags["epsilon"]) <= 2.0
    for hospital in ("hospital-01", "hospital-03"):
        spent = PrivacyLedger(tmp_path / "ledgers" / f"{hospital}.json", hospital).entry(summary["run_id"])
        assert spent is not None and spent.epsilon == pytest.approx(summary["epsilon"][hospital])


def test_hospital_that_drops_out_does_not_fail_the_run(
    hospital_files: list[Path], launch: Callable[..., dict[str, Any]]
) -> None:
    def drop_hospital_03(event: dict[str, Any]) -> None:
        if event["event"] == "train" and event["round"] == 1:
            hospital_files[2].unlink()  # the site's data disappears mid-run

    spec = make_spec(hospital_files, name="dropout", training={"rounds": 3})
    summary = launch(spec, on_event=drop_hospital_03)
    assert participation(summary, 1) == {"hospital-01": "ok", "hospital-02": "ok", "hospital-03": "ok"}
    for round_ in (2, 3):
        statuses = participation(summary, round_)
        assert statuses["hospital-01"] == statuses["hospital-02"] == "ok"
        assert statuses["hospital-03"] == "error"
        assert "file not found" in summary["participation"][str(round_)]["train"]["hospital-03"]["reason"]
    assert summary["model_version"] == "1"


def test_too_few_hospitals_fails_the_run_and_registers_nothing(
    hospital_files: list[Path], tmp_path: Path, launch: Callable[..., dict[str, Any]]
) -> None:
    hospital_files[1].write_text("patient_id,age\np1,50\n")
    spec = make_spec(hospital_files, name="too-few", strategy={"min_hospitals": 3})
    events: list[dict[str, Any]] = []
    with pytest.raises(LaunchError) as info:
        launch(spec, on_event=events.append)
    assert "2 hospitals sent statistics, the minimum is 3" in str(info.value)
    assert "hospital-02.csv, column 'systolic_bp': missing required column" in str(info.value)
    client = MlflowClient(tracking_uri(tmp_path), registry_uri=tracking_uri(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("too-few").experiment_id])
    assert run.info.status == "FAILED"
    assert client.search_registered_models() == [] or not client.search_model_versions("name='test-cardiac-risk'")
    assert events[-1]["event"] == "error"

"""``registry validate`` as a library (experiments.registry_validate), with a stand-in registry and scorer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from experiments.registry_validate import run_local_validation, select_local_validation
from experiments.review_records import VersionInfo
from tests.conftest import spec_dict
from training.decision import Decision
from training.errors import LocalValidationError
from training.tabular.held_out import unknown_category_lines


class _Registry:
    """``show`` and ``client.download_artifacts`` of a registry holding one version trained under ``spec``."""

    def __init__(self, spec: dict[str, Any], run_id: str | None = "run-1") -> None:
        self.spec, self.run_id = spec, run_id
        self.client = SimpleNamespace(download_artifacts=self._download)

    def show(self, name: str, version: str) -> VersionInfo:
        return VersionInfo(name=name, version=version, created=datetime.now(UTC), review_status="pending",
                           validation_status="complete", auroc=None, calibration_slope=None, epsilon=None, aliases=(),
                           launched_by=None, run_id=self.run_id, experiment="exp", decided_by=None, decided_at=None,
                           rationale=None)

    def _download(self, run_id: str, path: str, into: str) -> str:
        target = Path(into) / path
        target.write_text(json.dumps(self.spec))
        return str(target)


class _Scorer:
    decision = Decision.default()

    def score_columns(self, frame: pd.DataFrame) -> np.ndarray:
        return np.clip(frame["age"].to_numpy(dtype=float) / 100, 0.01, 0.99)

    def unknown_counts(self, frame: pd.DataFrame) -> dict[str, dict[str, int]]:
        return {"sex": {"X": 2}}


def test_a_validators_file_is_scored_and_its_report_written(hospital_files: list[Path], tmp_path: Path) -> None:
    mine = tmp_path / "mine.csv"
    pd.read_csv(hospital_files[0]).head(300).to_csv(mine, index=False)
    registry = _Registry(spec_dict(hospital_files))
    selection = select_local_validation(registry, "cardiac", "3", mine)  # type: ignore[arg-type]
    assert selection.sentence().startswith(f"cardiac version 3 on {mine}: scored 300 held-out patients (every row")
    result = run_local_validation(selection, _Scorer(), tmp_path / "out")
    assert result.report["overall"]["n"] == 300 and "report.html" in result.written
    assert result.summary.startswith("(300 patients, ") and ": AUROC " in result.summary
    assert result.warnings == ["sex: 2 values unknown to the model, scored as other: 'X' (2)"]
    assert json.loads((tmp_path / "out" / "unknown_categories.json").read_text()) == {"sex": {"X": 2}}
    assert "local: mine.csv, scored 300 held-out patients" in result.written["model_card.md"].read_text()


def test_a_bad_part_or_a_version_without_a_run_is_refused(hospital_files: list[Path]) -> None:
    with pytest.raises(LocalValidationError, match="--part must be one of test, val, all"):
        select_local_validation(_Registry({}), "cardiac", "3", hospital_files[0], "everything")  # type: ignore[arg-type]
    with pytest.raises(LocalValidationError, match="has no training run"):
        select_local_validation(_Registry({}, run_id=None), "cardiac", "3", hospital_files[0])  # type: ignore[arg-type]


def test_unknown_category_lines_name_five_examples() -> None:
    (line,) = unknown_category_lines({"smoking": {str(k): 1 for k in range(7)}})
    assert line == "smoking: 7 values unknown to the model, scored as other: '0' (1), '1' (1), '2' (1), '3' (1), '4' (1) and 2 more"

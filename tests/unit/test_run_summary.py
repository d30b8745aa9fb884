"""The run summary the CLI prints takes its per-hospital columns and validation line from the modality."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from platform_api.reporting import render_summary

BASE: dict[str, Any] = {"experiment": "e", "rounds": 3, "strategy": "fedavg", "epsilon": {"h1": 0.5, "h2": 0.7},
                        "delta": 1e-5, "registered_model": "m", "model_version": "4", "run_id": "r1",
                        "seconds": {"total": 12.0, "setup": 2.0}, "tracking_uri": "sqlite:///x.db"}
TABULAR = {**BASE, "modality": "tabular", "hospital_metrics": {"h1": {"auroc": 0.8, "auprc": 0.5, "brier": 0.1}},
           "validation": {"validation.status": "complete", "validation.auroc": 0.81, "validation.calibration_slope": 0.9,
                          "validation.brier": 0.12, "validation.n": 300, "validation.report_sha256": "ab" * 32}}
# no "modality" key: a summary written before summaries named it (class counts meant images)
IMAGES = {**BASE, "class_counts": {"h1": [1, 2]},
          "hospital_metrics": {"h1": {"val-accuracy": 0.8, "val-auroc": 0.9, "val-loss": 0.4}},
          "validation": {"validation.status": "complete", "validation.accuracy": 0.8, "validation.balanced_accuracy": 0.7,
                         "validation.auroc": 0.9, "validation.ece": 0.05, "validation.n": 120,
                         "validation.report_sha256": "cd" * 32}}


def _printed(summary: dict[str, Any]) -> str:
    buffer = io.StringIO()
    render_summary(Console(file=buffer, width=400, color_system=None), summary)
    return buffer.getvalue()


@pytest.mark.parametrize(("summary", "header", "row", "validation"), [
    (TABULAR, "┃ hospital ┃ held-out AUROC ┃ AUPRC ┃ Brier ┃ epsilon spent ┃",
     "│ h1       │          0.800 │ 0.500 │ 0.100 │         0.500 │",
     "Validation report (pending clinical review): AUROC 0.81, calibration slope 0.9, Brier 0.12 on 300 held-out "
     "patients; report sha256 abababababab"),
    (IMAGES, "┃ hospital ┃ val accuracy ┃ macro AUROC ┃  loss ┃ epsilon spent ┃",
     "│ h1       │        0.800 │       0.900 │ 0.400 │         0.500 │",
     "Validation report (pending clinical review): accuracy 0.8, balanced accuracy 0.7, macro AUROC 0.9, ECE 0.05 "
     "on 120 held-out images; report sha256 cdcdcdcdcdcd"),
])
def test_the_summary_shows_the_modality_s_metrics(summary: dict[str, Any], header: str, row: str, validation: str) -> None:
    lines = _printed(summary).splitlines()
    assert header in lines and row in lines and validation in lines

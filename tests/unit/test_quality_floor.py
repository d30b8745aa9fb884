"""Issue 10 item 18 (the rule): which validation reports are below the quality floor."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from experiments.quality import quality_warning
from platform_api.reporting import render_summary
from training.imaging.validation import build_multiclass_report, local_multiclass_aggregates, merge_multiclass_aggregates
from training.tabular.validation import build_report, local_aggregates, merge_aggregates


def _binary(risk: np.ndarray, label: np.ndarray) -> dict:
    return build_report(merge_aggregates({"h1": local_aggregates(risk, label, {}, [0.1, 0.2, 0.3], min_cell=10)}),
                        thresholds=[0.1, 0.2, 0.3])


def test_a_useful_binary_model_passes_and_useless_ones_are_named() -> None:
    rng = np.random.default_rng(0)
    risk = rng.uniform(0, 1, 800)
    label = (risk > rng.uniform(0, 1, 800)).astype(int)
    assert quality_warning(_binary(risk, label)) is None
    noise = quality_warning(_binary(rng.uniform(0, 1, 800), label))
    assert noise is not None and "95% CI reaches 0.5" in noise
    inverted = quality_warning(_binary(1 - risk, label))  # the probe: AUROC 0.45, slope -1.99
    assert inverted is not None and "negative calibration slope" in inverted
    constant = quality_warning(_binary(np.full(800, 0.05), label))
    assert constant is not None and "all predictions in one class at every decision threshold" in constant


def test_multiclass_floor() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 600)
    good = np.full((600, 3), 0.1)
    good[np.arange(600), labels] = 0.8
    report = lambda p: build_multiclass_report(merge_multiclass_aggregates(  # noqa: E731
        {"h1": local_multiclass_aggregates(p, labels, ["a", "b", "c"], {}, min_cell=10)}))
    assert quality_warning(report(good)) is None
    random = quality_warning(report(rng.dirichlet([1, 1, 1], 600)))
    assert random is not None and "macro AUROC" in random and "balanced accuracy" in random
    one = np.tile([0.2, 0.5, 0.3], (600, 1)) + rng.normal(0, 0.01, (600, 3))
    single = quality_warning(report(one / one.sum(axis=1, keepdims=True)))
    assert single is not None and "every image predicted b" in single


def test_the_cli_summary_prints_the_warning() -> None:
    console = Console(record=True, width=300)
    summary = {"experiment": "e", "rounds": 1, "strategy": "fedavg", "hospital_metrics": {}, "epsilon": {"h1": 1.0},
               "statistics_epsilon": {"h1": 0.5},
               "delta": 1e-5, "registered_model": "m", "model_version": "3", "run_id": "r", "validation": {},
               "quality_warning": "no better than the trivial model on the federated validation: x", "candidate": False,
               "seconds": {"total": 1.0, "setup": 0.1}, "tracking_uri": "sqlite:///x.db"}
    render_summary(console, summary)
    text = console.export_text()
    assert "QUALITY WARNING: no better than the trivial model" in text and "not given the candidate alias" in text
    assert "epsilon 1.000, delta 1e-05 in training + epsilon 0.500 for the statistics round" in text


def test_a_tabular_summary_with_class_counts_is_not_worded_as_images() -> None:
    """Tabular runs report label counts too (for class weights): the table is still a risk model's."""
    console = Console(record=True, width=300)
    summary = {"experiment": "e", "modality": "tabular", "rounds": 1, "strategy": "fedavg",
               "hospital_metrics": {"h1": {"auroc": 0.8, "auprc": 0.4, "brier": 0.1}}, "epsilon": {},
               "class_counts": {"h1": [90, 10]}, "delta": 0.0, "registered_model": "m", "model_version": "3",
               "run_id": "r", "validation": {"validation.status": "complete", "validation.n": "40",
                                             "validation.auroc": "0.8000", "validation.report_sha256": "ab" * 32},
               "seconds": {"total": 1.0, "setup": 0.1}, "tracking_uri": "sqlite:///x.db"}
    render_summary(console, summary)
    text = console.export_text()
    assert "AUPRC" in text and "held-out patients" in text
    assert "images" not in text and "macro AUROC" not in text

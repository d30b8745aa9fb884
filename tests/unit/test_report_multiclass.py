"""The multi-class validation report rendered: plots, model card, HTML, canonical JSON (experiments.report)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from experiments.report import model_card, render_html, render_plots, write_report_artifacts
from training.imaging.validation import (
    build_multiclass_report,
    local_multiclass_aggregates,
    local_multiclass_report,
    merge_multiclass_aggregates,
)
from training.report_render import canonical_json, is_multiclass, report_sha256
from training.validation_cells import report_hash

CLASSES = ["normal", "nodule", "opacity"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
META: dict[str, Any] = {
    "model_name": "chest-xray", "version": "3", "task": "multiclass", "classes": CLASSES, "model_kind": "resnet18",
    "hparams": {"width": 32}, "strategy": "fedavg", "rounds": 10, "privacy": {"epsilon": 4.0, "delta": 1e-5, "accountant": "rdp"},
    "input": "64x64 greyscale chest X-ray", "created": "2025-05-01T10:20:30+00:00", "run_id": "abc123",
    "schema_fingerprints": {"hospital-01": "sha256:aa11"}, "caveats": ["Synthetic demonstration data."],
}


def site(seed: int, n: int, prevalence: list[float], signal: float) -> tuple[np.ndarray, np.ndarray, dict[str, list[Any]]]:
    rng = np.random.default_rng(seed)
    y = rng.choice(len(CLASSES), size=n, p=prevalence)
    logits = rng.normal(0.0, 1.0, (n, len(CLASSES)))
    logits[np.arange(n), y] += signal
    posterior = signal * logits + np.log(prevalence)  # the Bayes posterior: a calibrated model
    probs = np.exp(posterior) / np.exp(posterior).sum(axis=1, keepdims=True)
    return probs, y, {"sex": rng.choice(["F", "M"], size=n).tolist(), "scanner": rng.choice(["a", "b", "<c>"], size=n, p=[0.6, 0.395, 0.005]).tolist()}


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    sites = {"hospital-01": site(1, 900, [0.5, 0.3, 0.2], 2.2), "hospital-02": site(2, 700, [0.6, 0.2, 0.2], 2.0),
             "hospital-03": site(3, 500, [0.7, 0.2, 0.1], 0.6)}  # hospital-03: much weaker discrimination
    aggs = {h: local_multiclass_aggregates(p, y, CLASSES, g) for h, (p, y, g) in sites.items()}
    return build_multiclass_report(merge_multiclass_aggregates(aggs))


@pytest.fixture(scope="module")
def artifacts(report: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    meta = {**META, "intended_use": "<script>alert(1)</script> adults only"}
    return write_report_artifacts(report, meta, tmp_path_factory.mktemp("report"))


def test_all_artifacts_written_and_hash_matches_report_json(report: dict[str, Any], artifacts: dict[str, Path]) -> None:
    assert is_multiclass(report)
    assert set(artifacts) == {"report.json", "roc.png", "confusion.png", "calibration.png", "model_card.md", "report.html"}
    raw = artifacts["report.json"].read_bytes()
    assert raw == canonical_json(report) and json.loads(raw) == report
    assert report_sha256(report) == hashlib.sha256(raw).hexdigest() == report_hash(report)
    assert report_sha256(report) in artifacts["report.html"].read_text()
    assert report_sha256(report) in artifacts["model_card.md"].read_text()


def test_pngs_are_valid_images_of_the_expected_size(artifacts: dict[str, Path]) -> None:
    import matplotlib.image as mpimg

    for name in ("roc.png", "confusion.png", "calibration.png"):
        data = artifacts[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 15_000, name
        img = mpimg.imread(artifacts[name])
        assert img.shape[:2] == (495, 660), (name, img.shape)  # 6 x 4.5 in at 110 dpi, as the binary plots
        assert img[..., :3].std() > 0.05, name


def test_html_shows_per_class_confusion_and_subgroups(report: dict[str, Any], artifacts: dict[str, Path]) -> None:
    page = artifacts["report.html"].read_text()
    overall = report["overall"]
    assert "chest-xray v3" in page and "Multi-class classification into 3 classes: normal, nodule, opacity" in page
    lo, hi = overall["auroc_ci95"]
    assert f"{overall['auroc']:.3f} ({lo:.3f}–{hi:.3f})" in page
    nodule = overall["per_class"]["nodule"]
    assert f"<td>nodule</td><td class=\"num\">{nodule['support']:,}</td>" in page
    assert f"{nodule['sensitivity']:.3f}" in page and f"{nodule['ppv']:.3f}" in page
    diagonal = overall["confusion"][1][1]
    assert f'<span class="cnt">{diagonal:,}</span>' in page and 'class="num diag"' in page
    for row in ("hospital-01", "hospital-03", "F", "M", "a"):
        assert f"<td>{row}</td>" in page, row
    assert "&lt;c&gt;" in page and "<c>" not in page  # the suppressed scanner value, escaped, among the caveats
    assert "badge warn" in page and "macro AUROC" in page and "below overall" in page
    assert page.count('src="data:image/png;base64,') == 3
    assert page.index('alt="ROC curves (one-vs-rest)"') < page.index('alt="Confusion matrix"') < page.index('alt="Calibration (top-label)"')
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for b64 in page.split('src="data:image/png;base64,')[1:]:
        assert base64.b64decode(b64.split('"', 1)[0]).startswith(PNG_MAGIC)


def test_model_card_sections_flags_and_defaults(report: dict[str, Any], artifacts: dict[str, Path]) -> None:
    card = artifacts["model_card.md"].read_text()
    for section in ("## Model details", "## Intended use", "## Out-of-scope use", "## Population", "## Metrics",
                    "## Per class", "## Confusion matrix", "## Subgroups", "## Caveats", "## Provenance"):
        assert section in card, section
    assert "![Confusion matrix](confusion.png)" in card and "decision_curve" not in card
    lines = card.splitlines()
    counts = report["overall"]["confusion"][0]
    row = next(line for line in lines if line.startswith("| normal |") and "%)" in line)
    assert all(f"{c:,} (" in row for c in counts)
    subgroup_lines = card.split("## Subgroups", 1)[1].split("## Caveats", 1)[0].splitlines()
    weak = next(line for line in subgroup_lines if line.startswith("| hospital-03 |"))
    assert "⚠" in weak and "macro AUROC" in weak
    strong = next(line for line in subgroup_lines if line.startswith("| hospital-01 |"))
    assert "⚠" not in strong
    assert "ε = 4.00, δ = 1e-05 (rdp accountant)" in card and "sha256:aa11" in card and "64x64 greyscale chest X-ray" in card
    assert "Synthetic demonstration data." in card and "hospital-03:scanner=<c>" not in card
    assert "<script" not in card
    default = model_card(report, {})
    assert "not a diagnosis" in default and "(normal, nodule, opacity)" in default and "none of them" in default
    assert "| Training | Federated learning |" in default  # no privacy in meta: no DP claim
    mismatch = model_card(report, {"classes": ["normal", "mass", "opacity"]})
    assert "declared classes (normal, mass, opacity) differ" in mismatch


def test_degenerate_reports_render_na(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    y = np.zeros(30, dtype=int)  # one class only: no AUROC anywhere
    probs = np.full((30, 3), 1 / 3)
    probs[:, 0] += rng.uniform(0, 0.1, 30)
    probs /= probs.sum(axis=1, keepdims=True)
    rep = local_multiclass_report(probs, y, CLASSES, None)
    paths = write_report_artifacts(rep, {}, tmp_path / "one")
    card = paths["model_card.md"].read_text()
    assert "| Macro AUROC (95% CI) | n/a |" in card and "No validation images of class nodule, opacity" in card
    assert "AUROC not computable" in card and ">n/a</td>" in paths["report.html"].read_text()
    empty = local_multiclass_report(np.zeros((0, 3)), np.zeros(0, dtype=int), CLASSES, None)
    paths = write_report_artifacts(empty, {}, tmp_path / "empty")
    assert all(paths[p].read_bytes().startswith(PNG_MAGIC) for p in ("roc.png", "confusion.png", "calibration.png"))
    assert "| Accuracy | n/a |" in paths["model_card.md"].read_text()


def test_many_classes_grow_the_confusion_plot(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    names = [f"organ-{i:02d}" for i in range(11)]
    rng = np.random.default_rng(5)
    y = rng.integers(0, 11, 600)
    logits = rng.normal(0, 1, (600, 11))
    logits[np.arange(600), y] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    plots = render_plots(local_multiclass_report(probs, y, names, None), tmp_path)
    height, width = mpimg.imread(plots["confusion.png"]).shape[:2]
    assert width > 660 and height > 495


def test_render_html_takes_named_images(report: dict[str, Any], tmp_path: Path) -> None:
    plots = render_plots(report, tmp_path)
    assert set(plots) == {"roc.png", "confusion.png", "calibration.png"}
    page = render_html(report, META, {"calibration": plots["calibration.png"].read_bytes(), "roc.png": plots["roc.png"]})
    assert page.count("data:image/png;base64,") == 2
    assert page.index('alt="ROC curves (one-vs-rest)"') < page.index('alt="Calibration (top-label)"')
    with pytest.raises(ValueError):
        render_html(report, META, {"roc": '"><script>alert(1)</script>'})


def test_review_page_rows_follow_the_task(report: dict[str, Any]) -> None:
    from platform_api import review_ui
    rows = {key: label for label, key in review_ui._rows(report)}
    assert {"accuracy", "balanced_accuracy", "auroc", "ece", "brier"} <= set(rows) and "positives" not in rows
    assert review_ui._cell(report, "balanced_accuracy") == f"{report['overall']['balanced_accuracy']:.3f}"
    assert review_ui._rows({"overall": {}}) == review_ui._ROWS and review_ui._rows(None) == review_ui._ROWS

"""The validation report renderer: plots, model card, self-contained HTML, canonical JSON."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from experiments.report import model_card, render_html, render_plots, write_report_artifacts
from training.report_render import canonical_json, report_sha256

THRESHOLDS = [0.1, 0.2, 0.3]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- a realistic fixture report


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    order = np.argsort(p)
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    pos = int(y.sum())
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def _cell(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    n, pos = len(y), int(y.sum())
    both = 0 < pos < n
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.digitize(p, edges) - 1, 0, 9)
    curve = []
    for b in range(10):
        m = idx == b
        curve.append({"mean_predicted": float(p[m].mean()) if m.any() else float((edges[b] + edges[b + 1]) / 2),
                      "observed": float(y[m].mean()) if m.any() else None, "n": int(m.sum())})
    ece = sum(c["n"] / n * abs(c["mean_predicted"] - c["observed"]) for c in curve if c["observed"] is not None)
    at = []
    for t in THRESHOLDS:
        pred = p >= t
        tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
        tn, fn = int((~pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())
        w = t / (1 - t)
        at.append({"threshold": t, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
                   "sensitivity": tp / pos if pos else None, "specificity": tn / (n - pos) if n - pos else None,
                   "ppv": tp / (tp + fp) if tp + fp else None, "npv": tn / (tn + fn) if tn + fn else None,
                   "net_benefit": tp / n - fp / n * w, "net_benefit_treat_all": pos / n - (n - pos) / n * w})
    ts = np.round(np.arange(0.01, 0.51, 0.01), 2)
    model_nb = [float(((p >= t) & (y == 1)).sum() / n - ((p >= t) & (y == 0)).sum() / n * t / (1 - t)) for t in ts]
    treat_all = [float(pos / n - (n - pos) / n * t / (1 - t)) for t in ts]
    grid = np.linspace(1, 0, 60)
    fpr = [float(((p >= t) & (y == 0)).sum() / max(n - pos, 1)) for t in grid]
    tpr = [float(((p >= t) & (y == 1)).sum() / max(pos, 1)) for t in grid]
    auroc = _auroc(y, p) if both else None
    se = math.sqrt(auroc * (1 - auroc) / min(pos, n - pos)) if auroc is not None else None
    return {
        "n": n, "positives": pos, "prevalence": pos / n,
        "auroc": auroc, "auroc_ci95": [auroc - 1.96 * se, min(1.0, auroc + 1.96 * se)] if auroc is not None else None,
        "auprc": float(np.mean(y[np.argsort(-p)][: max(pos, 1)])) if both else None,
        "brier": float(np.mean((p - y) ** 2)), "ece": float(ece),
        "calibration_intercept": 0.03 if both else None, "calibration_slope": 0.97 if both else None,
        "calibration_curve": curve, "at_thresholds": at,
        "decision_curve": {"threshold": [float(t) for t in ts], "model": model_nb, "treat_all": treat_all},
        "roc": {"fpr": fpr, "tpr": tpr}, "pr": {"recall": tpr[1:], "precision": [0.5] * (len(tpr) - 1)},
    }


def make_report(seed: int = 7) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    hospitals = ["hospital-01", "hospital-02", "hospital-03"]
    hosp = np.repeat(np.arange(3), [1400, 1100, 900])
    n = len(hosp)
    age = rng.integers(30, 90, n)
    sex = rng.choice(["F", "M"], n)
    logit = -2.6 + 0.045 * (age - 60) + 0.35 * (sex == "M") + 0.3 * hosp + rng.normal(0, 1.0, n)
    risk = 1 / (1 + np.exp(-logit))
    y = (rng.random(n) < risk).astype(int)
    p = np.clip(1 / (1 + np.exp(-(logit + rng.normal(0, 0.8, n)))), 0.001, 0.999)
    bands = np.select([age < 50, age < 60, age < 70, age < 80], ["<50", "50-59", "60-69", "70-79"], ">=80")
    subgroups = {
        "hospital": {h: _cell(y[hosp == i], p[hosp == i]) for i, h in enumerate(hospitals)},
        "sex": {s: _cell(y[sex == s], p[sex == s]) for s in ("F", "M")},
        "age_band": {b: _cell(y[bands == b], p[bands == b]) for b in ("<50", "50-59", "60-69", "70-79", ">=80")},
    }
    subgroups["sex"]["M"]["calibration_slope"] = 0.6  # miscalibrated: must be flagged
    subgroups["age_band"]["<50"] = _cell(np.zeros(40, dtype=int), p[:40])  # no events: metrics None
    return {"thresholds": THRESHOLDS, "overall": _cell(y, p), "subgroups": subgroups,
            "suppressed": ["age_band=>=80@hospital-03"], "hospitals": hospitals}


META: dict[str, Any] = {
    "model_name": "cardiac-risk", "version": "7", "experiment": "cardiac-fed", "run_id": "0123abcd4567ef89",
    "created": "2025-05-01T10:20:30+00:00", "privacy": {"epsilon": 3.0, "delta": 1e-5, "accountant": "rdp"},
    "strategy": "fedavg", "rounds": 20, "hospitals": ["hospital-01", "hospital-02", "hospital-03"],
    "schema_fingerprints": {"hospital-01": "sha256:aa11", "hospital-02": "sha256:bb22", "hospital-03": "sha256:cc33"},
    "code_version": "3f9c2e1", "model_kind": "mlp", "hparams": {"hidden": [32, 16], "dropout": 0.1},
    "features": ["age", "sex", "systolic_bp", "cholesterol"], "label": "cardiac_event within the follow-up",
    "caveats": ["Synthetic demonstration data."],
}


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return make_report()


@pytest.fixture(scope="module")
def artifacts(report: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    meta = {**META, "intended_use": "<script>alert(1)</script> adults only"}
    return write_report_artifacts(report, meta, tmp_path_factory.mktemp("report"))


# ---------------------------------------------------------------- tests


def test_all_artifacts_written_and_hash_matches_report_json(report: dict[str, Any], artifacts: dict[str, Path]) -> None:
    assert set(artifacts) == {"report.json", "roc.png", "calibration.png", "decision_curve.png", "model_card.md", "report.html"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in artifacts.values())
    raw = artifacts["report.json"].read_bytes()
    assert report_sha256(report) == hashlib.sha256(raw).hexdigest()
    assert json.loads(raw) == json.loads(json.dumps(report))
    assert raw == canonical_json(report) and b", " not in raw and b'": ' not in raw
    assert report_sha256(report) in artifacts["report.html"].read_text()
    assert report_sha256(report) in artifacts["model_card.md"].read_text()


def test_pngs_are_valid_images_of_the_expected_size(artifacts: dict[str, Path]) -> None:
    import matplotlib.image as mpimg

    for name in ("roc.png", "calibration.png", "decision_curve.png"):
        data = artifacts[name].read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 15_000, name  # lines and text, not a blank canvas
        img = mpimg.imread(artifacts[name])
        assert img.shape[:2] == (495, 660), (name, img.shape)  # 6 x 4.5 in at 110 dpi
        assert img[..., :3].std() > 0.05, name


def test_html_is_self_contained_and_escaped(report: dict[str, Any], artifacts: dict[str, Path]) -> None:
    page = artifacts["report.html"].read_text()
    assert "cardiac-risk v7" in page
    overall = report["overall"]
    assert f"{overall['auroc']:.3f} ({overall['auroc_ci95'][0]:.3f}–{overall['auroc_ci95'][1]:.3f})" in page
    for row in ("hospital-02", "50-59", "70-79", "&gt;=80", "&lt;50"):
        assert f"<td>{row}</td>" in page, row
    assert page.count('src="data:image/png;base64,') == 3
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "n/a" in page  # the <50 band has no events: AUROC and slope are n/a
    assert "badge warn" in page and "calibration slope 0.60 outside" in page
    assert "age_band=&gt;=80@hospital-03" in page  # suppressed cell among the caveats
    for b64 in page.split('src="data:image/png;base64,')[1:]:
        assert base64.b64decode(b64.split('"', 1)[0]).startswith(PNG_MAGIC)


def test_model_card_sections_flags_and_na(report: dict[str, Any], artifacts: dict[str, Path]) -> None:
    card = artifacts["model_card.md"].read_text()
    for section in ("## Model details", "## Intended use", "## Out-of-scope use", "## Population", "## Metrics", "## Subgroups", "## Caveats", "## Provenance"):
        assert section in card, section
    subgroup_lines = card.split("## Subgroups", 1)[1].split("## Caveats", 1)[0].splitlines()
    male = next(line for line in subgroup_lines if line.startswith("| M |"))
    assert "⚠" in male and "calibration slope 0.60 outside 0.8–1.2" in male
    female = next(line for line in subgroup_lines if line.startswith("| F |"))
    assert "⚠" not in female
    young = next(line for line in subgroup_lines if line.startswith("| <50 |"))
    assert young.count("n/a") >= 3  # AUROC, slope, intercept
    assert "ε = 3.00, δ = 1e-05 (rdp accountant)" in card and "fedavg" in card and "sha256:bb22" in card
    assert "age_band=>=80@hospital-03" in card and "Synthetic demonstration data." in card
    assert "<script" not in card and "&lt;script>" in card
    assert "not a diagnosis" in model_card(report, META)  # the default intended use


def test_all_none_metrics_render_na_and_do_not_crash(tmp_path: Path) -> None:
    empty_cell: dict[str, Any] = {
        "n": 12, "positives": 0, "prevalence": 0.0, "auroc": None, "auroc_ci95": None, "auprc": None, "brier": None,
        "ece": None, "calibration_intercept": None, "calibration_slope": None,
        "calibration_curve": [{"mean_predicted": 0.05 + i / 10, "observed": None, "n": 0} for i in range(10)],
        "at_thresholds": [{"threshold": 0.1, "tp": 0, "fp": 0, "tn": 12, "fn": 0, "sensitivity": None, "specificity": 1.0,
                           "ppv": None, "npv": 1.0, "net_benefit": 0.0, "net_benefit_treat_all": None}],
        "decision_curve": {"threshold": [], "model": [], "treat_all": []}, "roc": {"fpr": [], "tpr": []}, "pr": {"recall": [], "precision": []},
    }
    rep = {"thresholds": [0.1], "overall": empty_cell, "subgroups": {"hospital": {"hospital-01": copy.deepcopy(empty_cell)}}, "suppressed": [], "hospitals": ["hospital-01"]}
    paths = write_report_artifacts(rep, {}, tmp_path)
    card = paths["model_card.md"].read_text()
    assert "| AUROC (95% CI) | n/a |" in card and "| Calibration slope | n/a |" in card
    assert "AUROC not computable" in card
    assert ">n/a</td>" in paths["report.html"].read_text()
    assert all(paths[p].read_bytes().startswith(PNG_MAGIC) for p in ("roc.png", "calibration.png", "decision_curve.png"))


def test_canonical_json_refuses_nan_and_writes_nothing(report: dict[str, Any], tmp_path: Path) -> None:
    bad = copy.deepcopy(report)
    bad["overall"]["auroc"] = float("nan")
    with pytest.raises(ValueError):
        canonical_json(bad)
    with pytest.raises(ValueError):
        report_sha256({"x": float("inf")})
    with pytest.raises(ValueError):
        write_report_artifacts(bad, META, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert canonical_json({"b": np.int64(1), "a": np.float64(0.5)}) == b'{"a":0.5,"b":1}'


def test_render_html_takes_base64_bytes_or_paths(report: dict[str, Any], tmp_path: Path) -> None:
    plots = render_plots(report, tmp_path)
    b64 = {"decision_curve": base64.b64encode(plots["decision_curve.png"].read_bytes()).decode(), "roc.png": plots["roc.png"].read_bytes()}
    page = render_html(report, META, b64)
    assert page.count("data:image/png;base64,") == 2
    assert page.index('alt="ROC curves"') < page.index('alt="Decision curve"')
    with pytest.raises(ValueError):
        render_html(report, META, {"roc": '"><script>alert(1)</script>'})
    assert "data:image" not in render_html(report, META, {})


def test_renders_training_validation_output_and_hashes_agree(tmp_path: Path) -> None:
    from training.tabular.validation import local_report
    from training.validation_cells import age_band, report_hash

    rng = np.random.default_rng(3)
    age = rng.integers(30, 92, 2000)
    logit = -2.4 + 0.05 * (age - 60) + rng.normal(0, 1, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-logit))).astype(int)
    risk = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.7, 2000))))
    rep = local_report(risk, y, {"age_band": [age_band(a) for a in age]}, [0.1, 0.2])
    paths = write_report_artifacts(rep, META, tmp_path)
    assert report_sha256(rep) == report_hash(rep) == hashlib.sha256(paths["report.json"].read_bytes()).hexdigest()
    assert "70-79" in paths["report.html"].read_text()

"""Federated multi-class validation report: built from hospital aggregates, it matches the pooled computation."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from training.imaging.validation import (
    MULTICLASS_SCHEMA,
    build_multiclass_report,
    local_multiclass_aggregates,
    local_multiclass_report,
    merge_multiclass_aggregates,
)
from training.tabular.validation import local_report
from training.validation_cells import report_hash

CLASSES = ["normal", "nodule", "opacity", "effusion"]
TOL_AUROC = 0.002
EXACT = 1e-12


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_site(seed: int, n: int, prevalence: list[float], signal: float, temperature: float) -> dict[str, Any]:
    """One hospital's held-out predictions: informative, over/under-confident by ``temperature``."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(CLASSES), size=n, p=prevalence)
    logits = rng.normal(0.0, 1.0, (n, len(CLASSES)))
    logits[np.arange(n), y] += signal
    probs = softmax(logits / temperature)
    sex = rng.choice(["F", "M", None], size=n, p=[0.48, 0.48, 0.04]).tolist()
    scanner = rng.choice(["vendor-a", "vendor-b", "vendor-c"], size=n, p=[0.6, 0.395, 0.005]).tolist()
    return {"probs": probs, "labels": y, "subgroups": {"sex": sex, "scanner": scanner}}


@pytest.fixture(scope="module")
def federation() -> dict[str, Any]:
    sites = {
        "hospital-01": make_site(1, 1500, [0.55, 0.2, 0.15, 0.1], 2.0, 0.8),
        "hospital-02": make_site(2, 1100, [0.4, 0.3, 0.2, 0.1], 1.6, 1.3),
        "hospital-03": make_site(3, 700, [0.7, 0.1, 0.15, 0.05], 1.2, 1.0),
    }
    aggregates = {hid: local_multiclass_aggregates(s["probs"], s["labels"], CLASSES, s["subgroups"]) for hid, s in sites.items()}
    merged = merge_multiclass_aggregates(aggregates)
    report = build_multiclass_report(merged)
    return {"sites": sites, "aggregates": aggregates, "merged": merged, "report": report}


def pooled_cells(fed: dict[str, Any]):
    """(report cell, probs, labels) for the overall cell and every reported subgroup cell."""
    sites, report = fed["sites"], fed["report"]
    probs = np.concatenate([s["probs"] for s in sites.values()])
    labels = np.concatenate([s["labels"] for s in sites.values()])
    yield report["overall"], probs, labels
    for hid, site in sites.items():
        yield report["subgroups"]["hospital"][hid], site["probs"], site["labels"]
    for group in ("sex", "scanner"):
        for value, cell in report["subgroups"][group].items():
            # A hospital that suppressed the cell contributes none of its patients to it.
            mask = np.concatenate([
                (np.array(site["subgroups"][group], dtype=object) == value) & (f"{group}={value}" in fed["aggregates"][hid]["cells"])
                for hid, site in sites.items()
            ])
            yield cell, probs[mask], labels[mask]


def test_report_matches_pooled_sklearn(federation: dict[str, Any]) -> None:
    checked = 0
    labels_all = list(range(len(CLASSES)))
    for cell, p, y in pooled_cells(federation):
        pred = p.argmax(axis=1)
        assert cell["n"] == y.size
        assert cell["accuracy"] == accuracy_score(y, pred)
        assert cell["balanced_accuracy"] == balanced_accuracy_score(y, pred)
        assert cell["confusion"] == confusion_matrix(y, pred, labels=labels_all).tolist()
        recall = recall_score(y, pred, labels=labels_all, average=None, zero_division=np.nan)
        precision = precision_score(y, pred, labels=labels_all, average=None, zero_division=np.nan)
        f1 = f1_score(y, pred, labels=labels_all, average=None, zero_division=np.nan)
        for j, name in enumerate(CLASSES):
            m = cell["per_class"][name]
            assert m["support"] == int((y == j).sum())
            assert m["sensitivity"] == recall[j]
            assert m["ppv"] == precision[j]
            assert m["f1"] == pytest.approx(f1[j], abs=EXACT)
            specificity = recall_score(y != j, pred != j)  # one-vs-rest: "not j" is the positive label
            assert m["specificity"] == pytest.approx(specificity, abs=EXACT)
            assert m["auroc"] == pytest.approx(roc_auc_score(y == j, p[:, j]), abs=TOL_AUROC)
            lo, hi = m["auroc_ci95"]
            assert lo < m["auroc"] < hi
        assert cell["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=TOL_AUROC)
        assert cell["brier"] == pytest.approx(brier_score_loss(y, p, labels=labels_all), rel=EXACT)
        assert cell["log_loss"] == pytest.approx(log_loss(y, p, labels=labels_all), rel=EXACT)
        conf = p.max(axis=1)
        idx = np.minimum((conf * 10).astype(int), 9)
        ece = sum(abs((pred == y)[idx == b].sum() - conf[idx == b].sum()) for b in range(10)) / y.size
        assert cell["ece"] == pytest.approx(ece, abs=EXACT)
        curve = [(b["mean_confidence"], b["accuracy"], b["n"]) for b in cell["calibration_curve"]]
        direct = [(conf[idx == b].mean(), (pred == y)[idx == b].mean(), int((idx == b).sum())) for b in range(10) if (idx == b).any()]
        assert curve == [pytest.approx(d, abs=EXACT) for d in direct]
        checked += 1
    assert checked == 7  # overall, 3 hospitals, sex F and M, scanner vendor-a


def test_macro_interval_is_conservative_and_contains_estimate(federation: dict[str, Any]) -> None:
    overall = federation["report"]["overall"]
    lo, hi = overall["auroc_ci95"]
    assert lo < overall["auroc"] < hi
    widths = [m["auroc_ci95"][1] - m["auroc_ci95"][0] for m in overall["per_class"].values()]
    assert hi - lo == pytest.approx(float(np.mean(widths)), rel=1e-9)  # mean of the class SEs (no clipping here)


def test_report_shape_and_json(federation: dict[str, Any]) -> None:
    report = federation["report"]
    assert report["task"] == "multiclass" and report["classes"] == CLASSES
    assert report["hospitals"] == ["hospital-01", "hospital-02", "hospital-03"]
    assert list(report["subgroups"]) == ["hospital", "scanner", "sex"]
    assert set(report["overall"]) == {"n", "accuracy", "balanced_accuracy", "auroc", "auroc_ci95", "brier", "log_loss",
                                      "ece", "per_class", "confusion", "calibration_curve"}
    assert list(report["overall"]["per_class"]) == CLASSES
    text = json.dumps(report, allow_nan=False)  # no NaN anywhere
    assert json.loads(text) == report
    roc = report["overall"]["per_class"]["nodule"]["roc"]
    assert 2 <= len(roc["fpr"]) <= 200 and roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0


def test_aggregates_hold_counts_and_sums_only(federation: dict[str, Any]) -> None:
    agg = federation["aggregates"]["hospital-01"]
    assert agg["schema"] == MULTICLASS_SCHEMA and agg["classes"] == CLASSES
    for cell in agg["cells"].values():
        assert set(cell) == {"n", "support", "confusion", "hist_pos", "hist_neg", "sum_brier", "sum_log_loss", "calibration_bins"}
        assert all(isinstance(v, int) for row in cell["hist_pos"] + cell["hist_neg"] + cell["confusion"] for v in row)
        assert [len(h) for h in cell["hist_pos"]] == [2400] * len(CLASSES)
        assert [sum(h) for h in cell["hist_pos"]] == cell["support"]
        assert [sum(a) + sum(b) for a, b in zip(cell["hist_pos"], cell["hist_neg"])] == [cell["n"]] * len(CLASSES)
    json.dumps(agg, allow_nan=False)


def test_small_cells_and_complementary_suppression() -> None:
    site = make_site(5, 200, [0.4, 0.3, 0.2, 0.1], 1.5, 1.0)
    # a: 150, b: 42, c: 8 (small); without complementary suppression b would reveal c = 200 - 150 - 42.
    group = ["a"] * 150 + ["b"] * 42 + ["c"] * 8
    agg = local_multiclass_aggregates(site["probs"], site["labels"], CLASSES, {"site": group}, min_cell=10)
    assert set(agg["cells"]) == {"all", "site=a"} and agg["suppressed"] == ["site=b", "site=c"]
    # Patients with no value count as uncovered too: 5 of them would be recoverable from a and b.
    group = ["a"] * 150 + ["b"] * 45 + [None] * 5
    agg = local_multiclass_aggregates(site["probs"], site["labels"], CLASSES, {"site": group}, min_cell=10)
    assert set(agg["cells"]) == {"all", "site=a"} and agg["suppressed"] == ["site=b"]
    # Big enough everywhere: nothing suppressed; "all" is reported even when tiny.
    agg = local_multiclass_aggregates(site["probs"][:5], site["labels"][:5], CLASSES, {"site": ["a"] * 5}, min_cell=10)
    assert set(agg["cells"]) == {"all"} and agg["suppressed"] == ["site=a"]
    merged = merge_multiclass_aggregates({"h1": agg})
    assert merged["suppressed"] == ["h1:site=a"] and set(merged["cells"]) == {"all", "hospital=h1"}


def test_federation_suppresses_the_rare_scanner(federation: dict[str, Any]) -> None:
    suppressed = federation["report"]["suppressed"]
    for hid in federation["aggregates"]:
        rare = sum(v == "vendor-c" for v in federation["sites"][hid]["subgroups"]["scanner"])
        assert 0 < rare < 10
        # vendor-c is small, and vendor-b would reveal it by subtraction: both withheld.
        assert f"{hid}:scanner=vendor-c" in suppressed and f"{hid}:scanner=vendor-b" in suppressed
    assert list(federation["report"]["subgroups"]["scanner"]) == ["vendor-a"]
    assert all(":" in s for s in suppressed)  # prefixed with the hospital id


def test_merge_is_order_independent(federation: dict[str, Any]) -> None:
    aggs = federation["aggregates"]
    reversed_parts = dict(reversed(list(aggs.items())))
    assert merge_multiclass_aggregates(reversed_parts) == federation["merged"]
    regional = [merge_multiclass_aggregates({h: aggs[h]}) for h in aggs]
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        merged = merge_multiclass_aggregates([regional[i] for i in order])
        assert json.dumps(merged, sort_keys=True) == json.dumps(federation["merged"], sort_keys=True)
    assert report_hash(build_multiclass_report(merge_multiclass_aggregates(regional[::-1]))) == report_hash(federation["report"])
    # Nested merges: counts are identical; float sums agree up to the rounding of the partial sums.
    two = merge_multiclass_aggregates([regional[2], regional[0]])
    nested = merge_multiclass_aggregates([two, regional[1]])
    for name, cell in federation["merged"]["cells"].items():
        other = nested["cells"][name]
        for key in ("n", "support", "confusion", "hist_pos", "hist_neg"):
            assert other[key] == cell[key], (name, key)
        assert other["calibration_bins"]["n"] == cell["calibration_bins"]["n"]
        assert other["calibration_bins"]["correct"] == cell["calibration_bins"]["correct"]
        for key in ("sum_brier", "sum_log_loss"):
            assert other[key] == pytest.approx(cell[key], rel=1e-15, abs=0), (name, key)
        assert other["calibration_bins"]["sum_conf"] == pytest.approx(cell["calibration_bins"]["sum_conf"], rel=1e-15, abs=0)


def test_merge_refuses_incompatible_aggregates(federation: dict[str, Any]) -> None:
    site = federation["sites"]["hospital-03"]
    other = local_multiclass_aggregates(site["probs"], site["labels"], ["a", "b", "c", "d"], None)
    with pytest.raises(ValueError, match="classes"):
        merge_multiclass_aggregates({"h1": federation["aggregates"]["hospital-01"], "h2": other})
    coarse = local_multiclass_aggregates(site["probs"], site["labels"], CLASSES, None, hist_bins=100)
    with pytest.raises(ValueError, match="histogram"):
        merge_multiclass_aggregates({"h1": federation["aggregates"]["hospital-01"], "h2": coarse})
    binary = local_report(site["probs"][:, 1], site["labels"] == 1, None, [0.5])
    with pytest.raises(ValueError, match="schema"):
        merge_multiclass_aggregates([binary])
    with pytest.raises(ValueError, match="twice"):
        merge_multiclass_aggregates([federation["merged"], federation["merged"]])
    with pytest.raises(ValueError, match="already merged"):
        merge_multiclass_aggregates({"x": federation["merged"]})
    with pytest.raises(ValueError, match="nothing"):
        merge_multiclass_aggregates([])
    with pytest.raises(ValueError, match="schema"):
        build_multiclass_report({"schema": "bioverse.validation.aggregates/1"})


@pytest.mark.parametrize(
    ("probs", "labels", "classes", "message"),
    [
        ([[0.5, 0.5]], [0], ["a"], "at least two"),
        ([[0.5, 0.5]], [0], ["a", "a"], "unique"),
        ([[0.5, 0.5]], [0], "ab", "string"),
        ([[0.2, 0.3, 0.5]], [0], ["a", "b"], "shape"),
        ([[0.5, 0.6]], [0], ["a", "b"], "sum to 1"),
        ([[1.5, -0.5]], [0], ["a", "b"], "within"),
        ([[np.nan, 1.0]], [0], ["a", "b"], "finite"),
        ([[0.5, 0.5]], [2], ["a", "b"], "class indices"),
        ([[0.5, 0.5]], [0.5], ["a", "b"], "class indices"),
        ([[0.5, 0.5]], ["a"], ["a", "b"], "class indices"),
        ([[0.5, 0.5]], [0, 1], ["a", "b"], "length"),
    ],
)
def test_malformed_input_is_refused(probs: Any, labels: Any, classes: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        local_multiclass_aggregates(probs, labels, classes, None)


def test_reserved_or_misaligned_subgroups_are_refused() -> None:
    p, y = np.full((3, 2), 0.5), np.array([0, 1, 0])
    for name in ("all", "hospital", "a=b", ""):
        with pytest.raises(ValueError, match="invalid subgroup"):
            local_multiclass_aggregates(p, y, ["a", "b"], {name: ["x"] * 3})
    with pytest.raises(ValueError, match="2 values for 3"):
        local_multiclass_aggregates(p, y, ["a", "b"], {"sex": ["F", "M"]})


def test_two_classes_match_the_binary_report() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 800)
    p1 = 1 / (1 + np.exp(-(1.4 * (y - 0.5) * 2 + rng.normal(0, 1.2, 800))))
    probs = np.column_stack([1 - p1, p1])
    multi = local_multiclass_report(probs, y, ["negative", "positive"], None)
    binary = local_report(p1, y, None, [0.5])
    positive = multi["overall"]["per_class"]["positive"]
    assert positive["auroc"] == binary["overall"]["auroc"]
    assert positive["auroc_ci95"] == pytest.approx(binary["overall"]["auroc_ci95"], abs=EXACT)
    assert multi["overall"]["auroc"] == pytest.approx(binary["overall"]["auroc"], abs=1e-3)
    assert multi["overall"]["brier"] == pytest.approx(2 * binary["overall"]["brier"], rel=1e-9)  # sum over both classes


def test_absent_class_and_empty_subgroup_values_are_none_not_nan() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 60)  # class 2 never occurs
    probs = softmax(rng.normal(0, 1, (60, 3)) + 2 * np.eye(3)[y])
    report = local_multiclass_report(probs, y, ["a", "b", "c"], None)
    c = report["overall"]["per_class"]["c"]
    assert c["support"] == 0 and c["auroc"] is None and c["sensitivity"] is None and c["roc"] == {"fpr": [], "tpr": []}
    assert c["specificity"] is not None
    overall = report["overall"]
    assert overall["auroc"] == pytest.approx(np.mean([overall["per_class"][k]["auroc"] for k in ("a", "b")]))
    assert overall["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)), abs=EXACT)
    json.dumps(report, allow_nan=False)
    empty = local_multiclass_report(np.zeros((0, 3)), np.zeros(0, dtype=int), ["a", "b", "c"], None)
    assert empty["overall"]["n"] == 0 and empty["overall"]["accuracy"] is None and empty["overall"]["auroc"] is None
    json.dumps(empty, allow_nan=False)

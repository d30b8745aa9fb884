"""Federated validation report: the report built from hospital aggregates matches the pooled computation."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq
from scipy.special import expit, logit
from scipy.stats import norm, rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from training.tabular.synth import LABEL, TRUE_RISK, synthesize_hospitals
from training.tabular.validation import build_report, local_aggregates, local_report, merge_aggregates
from training.validation_cells import AGE_BANDS, age_band, report_hash

THRESHOLDS = [0.05, 0.1, 0.2, 0.3]
TOL_AUROC = 0.002
TOL_AUPRC = 0.005
TOL_BRIER = 1e-9
TOL_CALIBRATION = 0.02
TOL_ECE = 0.005
EXACT = 1e-12


def subgroups_of(frame: pd.DataFrame) -> dict[str, list[str | None]]:
    return {"sex": frame["sex"].tolist(), "age_band": [age_band(a) for a in frame["age"]]}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("validation")
    sites = synthesize_hospitals(n_hospitals=3, n_patients=6000, seed=13, out_dir=Path(out))
    frames: dict[str, pd.DataFrame] = {}
    for site in sites:
        frame = pd.read_csv(site.path)
        # A deliberately miscalibrated model: too extreme (slope < 1) and too high (intercept < 0).
        frame["risk"] = expit(1.3 * logit(frame[TRUE_RISK].to_numpy()) + 0.2)
        frame["hospital"] = site.hospital_id
        frames[site.hospital_id] = frame
    aggregates = {hid: local_aggregates(f["risk"].to_numpy(), f[LABEL].to_numpy(), subgroups_of(f), THRESHOLDS)
                  for hid, f in frames.items()}
    merged = merge_aggregates(aggregates)
    report = build_report(merged, thresholds=THRESHOLDS)
    pooled = pd.concat(frames.values(), ignore_index=True)
    pooled["age_band"] = [age_band(a) for a in pooled["age"]]
    return {"frames": frames, "aggregates": aggregates, "merged": merged, "report": report, "pooled": pooled}


def cells_with_data(report: dict[str, Any], pooled: pd.DataFrame):
    yield report["overall"], pooled
    for group, column in (("hospital", "hospital"), ("sex", "sex"), ("age_band", "age_band")):
        for value, cell in report["subgroups"][group].items():
            yield cell, pooled[pooled[column] == value]


def calibration_in_the_large(p: np.ndarray, y: np.ndarray) -> float:
    offset = logit(p)
    return brentq(lambda a: float(expit(a + offset).sum() - y.sum()), -20, 20, xtol=1e-12)


def direct_ece(p: np.ndarray, y: np.ndarray) -> float:
    idx = np.minimum((p * 10).astype(int), 9)
    return sum(abs(y[idx == k].sum() - p[idx == k].sum()) for k in range(10)) / p.size


def exact_delong_ci(p: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    pos, neg = p[y == 1], p[y == 0]
    m, n = pos.size, neg.size
    ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (ranks[:m] - rankdata(pos)) / n
    v01 = 1.0 - (ranks[m:] - rankdata(neg)) / m
    auc = v10.mean()
    se = math.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
    return auc, auc - 1.959963984540054 * se, auc + 1.959963984540054 * se


# --------------------------------------------------------------------------- against the pooled data


def test_report_shape(federation: dict[str, Any]) -> None:
    report = federation["report"]
    assert set(report) == {"thresholds", "overall", "subgroups", "suppressed", "hospitals"}
    assert report["hospitals"] == sorted(federation["frames"])
    assert report["suppressed"] == []
    assert set(report["subgroups"]) == {"hospital", "sex", "age_band"}
    assert list(report["subgroups"]["age_band"]) == list(AGE_BANDS)
    assert set(report["subgroups"]["sex"]) == {"F", "M"}
    assert set(report["overall"]) == {
        "n", "positives", "prevalence", "auroc", "auroc_ci95", "auprc", "brier", "ece", "calibration_intercept",
        "calibration_slope", "calibration_curve", "at_thresholds", "decision_curve", "roc", "pr"}


def test_discrimination_and_brier_match_pooled(federation: dict[str, Any]) -> None:
    cells = list(cells_with_data(federation["report"], federation["pooled"]))
    assert len(cells) == 1 + 3 + 2 + 5
    for cell, data in cells:
        y, p = data[LABEL].to_numpy(), data["risk"].to_numpy()
        assert cell["n"] == len(data) and cell["positives"] == int(y.sum())
        assert cell["prevalence"] == pytest.approx(y.mean(), abs=EXACT)
        assert cell["auroc"] == pytest.approx(roc_auc_score(y, p), abs=TOL_AUROC)
        assert cell["auprc"] == pytest.approx(average_precision_score(y, p), abs=TOL_AUPRC)
        assert cell["brier"] == pytest.approx(brier_score_loss(y, p), abs=TOL_BRIER)


def test_calibration_matches_pooled(federation: dict[str, Any]) -> None:
    for cell, data in cells_with_data(federation["report"], federation["pooled"]):
        y, p = data[LABEL].to_numpy(), data["risk"].to_numpy()
        fit = LogisticRegression(C=1e12, tol=1e-10, max_iter=10_000).fit(logit(p)[:, None], y)
        assert cell["calibration_slope"] == pytest.approx(fit.coef_[0, 0], abs=TOL_CALIBRATION)
        assert cell["calibration_intercept"] == pytest.approx(calibration_in_the_large(p, y), abs=TOL_CALIBRATION)
        assert cell["ece"] == pytest.approx(direct_ece(p, y), abs=TOL_ECE)
    overall = federation["report"]["overall"]
    # The miscalibration built into the model is visible: slope about 1/1.3; with mostly low risks the
    # stretched model under-predicts on average, so calibration-in-the-large is positive.
    pooled = federation["pooled"]
    assert 0.65 < overall["calibration_slope"] < 0.9
    assert pooled["risk"].mean() < pooled[LABEL].mean() and overall["calibration_intercept"] > 0.05


def test_calibration_curve_and_ece_are_exact(federation: dict[str, Any]) -> None:
    pooled = federation["pooled"]
    y, p = pooled[LABEL].to_numpy(), pooled["risk"].to_numpy()
    overall = federation["report"]["overall"]
    assert overall["ece"] == pytest.approx(direct_ece(p, y), abs=1e-12)
    idx = np.minimum((p * 10).astype(int), 9)
    expected = [(p[idx == k].mean(), y[idx == k].mean(), int((idx == k).sum())) for k in range(10) if (idx == k).any()]
    got = [(b["mean_predicted"], b["observed"], b["n"]) for b in overall["calibration_curve"]]
    assert len(got) == len(expected)
    for (mp, ob, n), (emp, eob, en) in zip(got, expected):
        assert n == en and mp == pytest.approx(emp, abs=1e-12) and ob == pytest.approx(eob, abs=1e-12)


def test_threshold_rows_are_exact(federation: dict[str, Any]) -> None:
    for cell, data in cells_with_data(federation["report"], federation["pooled"]):
        y, p = data[LABEL].to_numpy(), data["risk"].to_numpy()
        n, prevalence = len(y), y.mean()
        assert [row["threshold"] for row in cell["at_thresholds"]] == THRESHOLDS
        for row in cell["at_thresholds"]:
            t = row["threshold"]
            flag = p >= t
            tp, fp = int((flag & (y == 1)).sum()), int((flag & (y == 0)).sum())
            tn, fn = int((~flag & (y == 0)).sum()), int((~flag & (y == 1)).sum())
            assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (tp, fp, tn, fn)
            assert row["sensitivity"] == pytest.approx(tp / (tp + fn), abs=EXACT)
            assert row["specificity"] == pytest.approx(tn / (tn + fp), abs=EXACT)
            assert row["ppv"] == pytest.approx(tp / (tp + fp), abs=EXACT)
            assert row["npv"] == pytest.approx(tn / (tn + fn), abs=EXACT)
            assert row["net_benefit"] == pytest.approx(tp / n - fp / n * t / (1 - t), abs=EXACT)
            assert row["net_benefit_treat_all"] == pytest.approx(prevalence - (1 - prevalence) * t / (1 - t), abs=EXACT)


def test_decision_roc_and_pr_curves(federation: dict[str, Any]) -> None:
    pooled = federation["pooled"]
    y, p = pooled[LABEL].to_numpy(), pooled["risk"].to_numpy()
    overall = federation["report"]["overall"]
    curve = overall["decision_curve"]
    assert len(curve["threshold"]) == len(curve["model"]) == len(curve["treat_all"]) == 99
    for t, model, treat_all in zip(curve["threshold"], curve["model"], curve["treat_all"]):
        flag = p >= t
        exact = (flag & (y == 1)).sum() / y.size - (flag & (y == 0)).sum() / y.size * t / (1 - t)
        assert model == pytest.approx(exact, abs=0.002)
        assert treat_all == pytest.approx(y.mean() - (1 - y.mean()) * t / (1 - t), abs=EXACT)
    roc, pr = overall["roc"], overall["pr"]
    assert 10 < len(roc["fpr"]) <= 200 and len(roc["fpr"]) == len(roc["tpr"])
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(overall["auroc"], abs=0.005)
    assert 10 < len(pr["recall"]) <= 200 and len(pr["recall"]) == len(pr["precision"])
    assert pr["recall"][-1] == 1.0 and pr["precision"][-1] == pytest.approx(y.mean())


def test_auroc_ci_matches_exact_delong(federation: dict[str, Any]) -> None:
    for cell, data in cells_with_data(federation["report"], federation["pooled"]):
        auc, lo, hi = exact_delong_ci(data["risk"].to_numpy(), data[LABEL].to_numpy())
        got_lo, got_hi = cell["auroc_ci95"]
        assert got_lo < cell["auroc"] < got_hi
        assert got_lo == pytest.approx(lo, abs=TOL_AUROC) and got_hi == pytest.approx(hi, abs=TOL_AUROC)


def test_auroc_ci_coverage() -> None:
    rng = np.random.default_rng(7)
    shift = 1.2
    true_auc = norm.cdf(shift / math.sqrt(2))
    reps, covered = 300, 0
    for _ in range(reps):
        y = np.r_[np.ones(60, dtype=int), np.zeros(140, dtype=int)]
        score = rng.normal(0.0, 1.0, y.size) + shift * y
        report = build_report(local_aggregates(expit(score - 1.5), y, None, [0.5]))
        lo, hi = report["overall"]["auroc_ci95"]
        covered += lo <= true_auc <= hi
    assert 0.90 <= covered / reps <= 0.985


# --------------------------------------------------------------------------- privacy, merging, edge cases


def test_aggregates_carry_no_patient_rows(federation: dict[str, Any]) -> None:
    agg = federation["aggregates"]["hospital-01"]
    text = json.dumps(agg, allow_nan=False)
    assert "patient_id" not in text and "h01-" not in text
    cell = agg["cells"]["all"]
    assert set(cell) == {"n", "positives", "hist_pos", "hist_neg", "sum_p", "sum_p2", "sum_py", "sum_y",
                         "confusion", "calibration_bins"}
    assert len(cell["hist_pos"]) == 2400 and sum(cell["hist_pos"]) + sum(cell["hist_neg"]) == cell["n"]
    assert set(agg["cells"]) == {"all", "sex=F", "sex=M", *(f"age_band={b}" for b in AGE_BANDS)}


def test_small_cells_are_suppressed() -> None:
    rng = np.random.default_rng(3)
    n = 60
    p = rng.uniform(0.05, 0.6, n)
    y = (rng.uniform(size=n) < p).astype(int)
    sex = ["F"] * 30 + ["M"] * 26 + ["X"] * 4      # X is small; its complement would reveal it
    site = ["a"] * 45 + ["b"] * 15                  # every cell large enough
    agg = local_aggregates(p, y, {"sex": sex, "site": site}, [0.2])
    assert agg["suppressed"] == ["sex=M", "sex=X"]  # primary (X) and complementary (smallest reported, M)
    assert set(agg["cells"]) == {"all", "sex=F", "site=a", "site=b"}
    # Missing values count in the complement too: 5 patients with no value would be all - sum(cells).
    agg = local_aggregates(p, y, {"site": ["a"] * 40 + ["b"] * 15 + [None] * 5}, [0.2])
    assert agg["suppressed"] == ["site=b"] and set(agg["cells"]) == {"all", "site=a"}
    # The whole-set cell is always reported, however small.
    tiny = local_aggregates(p[:4], y[:4], {"sex": sex[:4]}, [0.2])
    assert tiny["cells"]["all"]["n"] == 4 and tiny["suppressed"] == ["sex=F"]

    merged = merge_aggregates({"h1": local_aggregates(p, y, {"sex": sex}, [0.2]),
                               "h2": local_aggregates(p, y, {"sex": ["F"] * 60}, [0.2])})
    assert merged["suppressed"] == ["h1:sex=M", "h1:sex=X"]
    report = build_report(merged, thresholds=[0.2])
    assert report["suppressed"] == ["h1:sex=M", "h1:sex=X"]
    assert set(report["subgroups"]["sex"]) == {"F"} and report["subgroups"]["sex"]["F"]["n"] == 90
    assert report["subgroups"]["hospital"]["h1"]["n"] == 60


def test_report_is_strict_json_and_no_positive_cells_are_none() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(0.01, 0.9, 200)
    y = (rng.uniform(size=200) < p).astype(int)
    group = np.where(np.arange(200) < 30, "none", "some").tolist()
    y[:30] = 0  # no events in the "none" cell
    report = local_report(p, y, {"cohort": group}, [0.1, 0.5])
    json.dumps(report, allow_nan=False)
    cell = report["subgroups"]["cohort"]["none"]
    assert cell["positives"] == 0 and cell["prevalence"] == 0.0
    for key in ("auroc", "auroc_ci95", "auprc", "calibration_intercept", "calibration_slope"):
        assert cell[key] is None
    assert cell["brier"] is not None and cell["ece"] is not None
    assert all(row["sensitivity"] is None for row in cell["at_thresholds"])
    assert cell["roc"] == {"fpr": [], "tpr": []} and cell["pr"] == {"recall": [], "precision": []}
    assert report["subgroups"]["hospital"]["local"]["n"] == 200

    empty = build_report(local_aggregates([], [], None, [0.1]))
    json.dumps(empty, allow_nan=False)
    assert empty["overall"]["n"] == 0 and empty["overall"]["auroc"] is None and empty["overall"]["brier"] is None


def test_separated_data_has_no_calibration_slope() -> None:
    p = np.r_[np.full(20, 0.1), np.full(20, 0.9)]
    y = np.r_[np.zeros(20, dtype=int), np.ones(20, dtype=int)]
    cell = local_report(p, y, None, [0.5])["overall"]
    assert cell["auroc"] == 1.0 and cell["calibration_slope"] is None
    assert cell["calibration_intercept"] == pytest.approx(0.0, abs=1e-9)


def test_merge_is_order_independent(federation: dict[str, Any]) -> None:
    aggregates = federation["aggregates"]
    backwards = {hid: aggregates[hid] for hid in reversed(list(aggregates))}
    assert merge_aggregates(backwards) == federation["merged"]
    assert report_hash(build_report(merge_aggregates(backwards), thresholds=THRESHOLDS)) == \
        report_hash(federation["report"])
    # Regional merges merged again give the same counts (float sums within rounding).
    ids = sorted(aggregates)
    two_level = merge_aggregates([merge_aggregates({ids[2]: aggregates[ids[2]]}),
                                  merge_aggregates({i: aggregates[i] for i in ids[:2]})])
    assert two_level["hospitals"] == ids
    for name, cell in federation["merged"]["cells"].items():
        assert two_level["cells"][name]["hist_pos"] == cell["hist_pos"]
        assert two_level["cells"][name]["sum_p"] == pytest.approx(cell["sum_p"], rel=1e-12)
    with pytest.raises(ValueError, match="twice"):
        merge_aggregates([federation["merged"], merge_aggregates({ids[0]: aggregates[ids[0]]})])
    other = local_aggregates([0.2, 0.4], [0, 1], None, [0.5])
    with pytest.raises(ValueError, match="thresholds"):
        merge_aggregates({"x": other, **aggregates})


def test_report_hash_is_canonical(federation: dict[str, Any]) -> None:
    report = federation["report"]
    digest = report_hash(report)
    assert digest == hashlib.sha256(
        json.dumps(report, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert report_hash(json.loads(json.dumps(report))) == digest
    assert report_hash(dict(reversed(list(report.items())))) == digest
    assert report_hash({**report, "thresholds": [0.05]}) != digest


def test_build_report_only_accepts_declared_thresholds(federation: dict[str, Any]) -> None:
    subset = build_report(federation["merged"], thresholds=[0.2])
    assert [row["threshold"] for row in subset["overall"]["at_thresholds"]] == [0.2]
    assert subset["overall"]["at_thresholds"][0] == federation["report"]["overall"]["at_thresholds"][2]
    with pytest.raises(ValueError, match="not declared"):
        build_report(federation["merged"], thresholds=[0.15])


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        local_aggregates([0.2, 1.2], [0, 1], None, [0.5])
    with pytest.raises(ValueError):
        local_aggregates([0.2, 0.3], [0, 2], None, [0.5])
    with pytest.raises(ValueError):
        local_aggregates([0.2, 0.3], [0, 1], None, [1.0])
    with pytest.raises(ValueError):
        local_aggregates([0.2, 0.3], [0, 1], {"hospital": ["a", "b"]}, [0.5])
    with pytest.raises(ValueError):
        local_aggregates([0.2, 0.3], [0, 1], {"sex": ["F"]}, [0.5])


@pytest.mark.parametrize(("age", "band"), [
    (None, None), (float("nan"), None), (18, "<50"), (49.9, "<50"), (50, "50-59"), (59.5, "50-59"),
    (60, "60-69"), (79, "70-79"), (80, ">=80"), (95, ">=80"),
])
def test_age_band(age: Any, band: str | None) -> None:
    assert age_band(age) == band

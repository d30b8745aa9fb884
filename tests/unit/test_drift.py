"""Drift statistics and the monitoring reference: PSI, binned KS, hospital counts, served windows, drift reports."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from platform_api.monitoring import NO_FEATURE_REFERENCE, WindowSpec, drift_report, monitoring_reference
from training.drift import binned_ks, numeric_bins, psi
from training.tabular.preprocessing import FeatureEncoder
from training.tabular.reference import (
    MISSING,
    OTHER,
    calibration_score_reference,
    local_feature_counts,
    merge_feature_counts,
    monitoring_section,
    score_reference,
    window_counts,
)
from training.tabular.validation import local_aggregates, merge_aggregates

ENCODER = FeatureEncoder(("age", "bp"), ("sex", "smoking"), (60.0, 130.0), (10.0, 15.0),
                         (("F", "M"), ("current", "former", "never")))


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.normal(60, 10, n), "bp": rng.normal(130, 15, n), "sex": rng.choice(["F", "M"], n),
                          "smoking": rng.choice(["never", "former", "current"], n, p=[0.5, 0.3, 0.2])})
    frame.loc[frame.index[:n // 50], "bp"] = np.nan
    return frame


def _risk(frame: pd.DataFrame) -> np.ndarray:
    z = 0.08 * (frame["age"] - 60) + 0.03 * (frame["bp"].fillna(130) - 130) + 0.5 * (frame["smoking"] == "current") - 2
    return 1 / (1 + np.exp(-z.to_numpy()))


@pytest.fixture(scope="module")
def reference() -> dict:
    """A two-hospital reference built as the validation round builds it."""
    parts = {}
    for hospital, seed in (("a", 1), ("b", 2)):
        frame = _frame(3000, seed)
        risk = _risk(frame)
        label = (np.random.default_rng(seed).random(risk.size) < risk).astype(int)
        parts[hospital] = {**local_aggregates(risk, label, None, [0.2]),
                           "features": local_feature_counts(frame, ENCODER, min_cell=10)}
    features = [p.pop("features") for p in parts.values()]
    return monitoring_reference({"monitoring": monitoring_section(merge_aggregates(parts), features)})


def _window(frame: pd.DataFrame) -> tuple[list[dict], list[float]]:
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in frame.to_dict("records")]
    return rows, _risk(frame).tolist()


SPEC = WindowSpec(size=2000, min_predictions=100, threshold=0.2)


def test_psi_zero_for_identical_shares_and_grows_with_shift() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    assert psi([50, 50], [90, 10]) > psi([50, 50], [60, 40]) > 0
    assert psi([0, 10], [10, 0]) > 10  # empty bins are floored, not infinite
    assert psi([0, 0], [1, 2]) is None and psi([1, 2], [0, 0]) is None
    with pytest.raises(ValueError, match="bins"):
        psi([1, 2], [1, 2, 3])


def test_binned_ks_is_the_exact_statistic_at_the_edges_and_a_lower_bound() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 4000), rng.normal(0.3, 1, 500)
    edges = np.linspace(-2, 2, 9)
    d, p = binned_ks(numeric_bins(a, edges), numeric_bins(b, edges))
    exact = ks_2samp(a, b)
    assert d <= exact.statistic + 1e-12 and d > 0.6 * exact.statistic
    assert p < 0.01 and exact.pvalue < 0.01
    same = binned_ks(numeric_bins(a, edges), numeric_bins(rng.normal(0, 1, 500), edges))
    assert same is not None and same[1] > 0.01
    assert binned_ks([0, 0], [1, 1]) is None


def test_hospital_counts_suppress_small_slots_and_their_complement() -> None:
    frame = _frame(400, 5)
    frame.loc[frame.index[:3], "sex"] = "X"  # 3 patients with a value outside the vocabulary: under min_cell
    counts = local_feature_counts(frame, ENCODER, min_cell=10)["features"]
    sex = counts["sex"]
    assert sex["values"] == ["F", "M", OTHER]
    other = sex["values"].index(OTHER)
    assert sex["counts"][other] is None  # 3 < 10: suppressed
    assert sex["counts"][-1] == 0  # no missing sex: nothing to hide
    # complementary: the 3 must not be recoverable as n - (F + M); one of F/M is suppressed too
    assert sum(c is None for c in sex["counts"]) >= 2
    assert all(c is None or c == 0 or c >= 10 for f in counts.values() for c in f["counts"])


def test_merge_sums_slots_and_shares_each_hospitals_hidden_remainder() -> None:
    small = _frame(300, 1)
    small.loc[small.index[:4], "sex"] = None  # 4 missing: suppressed, and the smallest of F/M with them
    a = local_feature_counts(small, ENCODER, min_cell=10)
    b = local_feature_counts(_frame(300, 2), ENCODER, min_cell=10)
    merged = merge_feature_counts([a, b])["features"]
    assert a["features"]["sex"]["counts"].count(None) == 2 and merged["sex"]["suppressed"] == 2
    hidden = 300 - sum(c or 0 for c in a["features"]["sex"]["counts"])
    expected = [(hidden / 2 if x is None else x) + y for x, y in zip(a["features"]["sex"]["counts"], b["features"]["sex"]["counts"])]
    assert merged["sex"]["counts"] == pytest.approx(expected)
    for column in merged:  # every row of both hospitals once per feature
        assert sum(merged[column]["counts"]) == pytest.approx(600)
    other = local_feature_counts(_frame(300, 3), FeatureEncoder(("age", "bp"), ("sex", "smoking"), (50.0, 130.0),
                                                                (10.0, 15.0), (("F", "M"), ("current", "former", "never"))), min_cell=10)
    assert "age" not in merge_feature_counts([a, other])["features"]  # different edges: not added up
    assert merge_feature_counts([]) is None


def test_window_counts_take_none_nan_strings_and_absent_keys_as_missing() -> None:
    features = local_feature_counts(_frame(300, 1), ENCODER, min_cell=10)["features"]
    rows = [{"age": None, "bp": float("nan"), "sex": None, "smoking": " never "}, {"age": "old", "bp": float("inf")},
            {"age": 61.0, "bp": 130, "sex": "f", "smoking": "NEVER"}, {"age": True, "sex": "female", "smoking": 3}]
    counts = window_counts(features, rows)
    assert counts["age"][-1] == 3 and counts["bp"][-1] == 3  # None, "old", True / NaN, inf, absent
    assert sum(counts["age"]) == 4 and sum(counts["bp"]) == 4
    sex = dict(zip([*features["sex"]["values"], MISSING], counts["sex"]))
    assert sex == {"F": 1, "M": 0, OTHER: 1, MISSING: 2}  # "f" is F (case), "female" another spelling: other
    smoking = dict(zip([*features["smoking"]["values"], MISSING], counts["smoking"]))
    assert smoking["never"] == 2 and smoking[OTHER] == 1 and smoking[MISSING] == 1


def test_score_reference_coarsens_the_histogram_exactly() -> None:
    risk = np.random.default_rng(4).beta(2, 8, 5000)
    agg = local_aggregates(risk, (risk > 0.3).astype(int), None, [0.5])
    score = score_reference(agg["cells"]["all"], agg["histogram"])
    assert sum(score["counts"]) == 5000
    assert score["counts"] == numeric_bins(risk, score["edges"]).tolist()
    assert 8 <= len(score["counts"]) <= 10 and max(score["counts"]) < 5000 * 0.15
    old = calibration_score_reference({"overall": {"calibration_curve": [{"mean_predicted": 0.05, "n": 7, "observed": 0},
                                                                         {"mean_predicted": 0.95, "n": 3, "observed": 1}]}})
    assert old["counts"] == [7, 0, 0, 0, 0, 0, 0, 0, 0, 3]


def test_window_from_the_reference_distribution_does_not_alert(reference: dict) -> None:
    rows, risks = _window(_frame(2000, 9))
    d = drift_report("m", "1", reference, rows, risks, SPEC)
    assert d["status"] == "ok" and d["feature_reference"] == "ok"
    assert not d["alert"] and d["drifted"] == []
    assert set(d["features"]) == {"age", "bp", "sex", "smoking"}
    assert all(c["psi"] < 0.05 for c in d["features"].values()) and d["prediction"]["psi"] < 0.05


def test_a_shifted_mean_alerts_on_that_feature_only(reference: dict) -> None:
    frame = _frame(2000, 9)
    rows, risks = _window(frame)  # scores as served before the shift: only the input moved
    for row in rows:
        row["age"] += 10  # one standard deviation
    d = drift_report("m", "1", reference, rows, risks, SPEC)
    assert d["alert"] and d["drifted"] == ["age"]
    assert d["features"]["age"]["ks"] > 0.3 and d["features"]["age"]["ks_p"] < 1e-6


def test_a_site_spelling_categories_differently_alerts_on_that_feature(reference: dict) -> None:
    rows, risks = _window(_frame(2000, 9))
    for row in rows:
        row["sex"] = {"F": "female", "M": "male"}[row["sex"]]
    d = drift_report("m", "1", reference, rows, risks, SPEC)
    assert d["drifted"] == ["sex"]
    assert d["features"]["sex"]["window"][d["features"]["sex"]["labels"].index(OTHER)] == 2000


def test_shifted_scores_alert_on_the_prediction(reference: dict) -> None:
    rows, risks = _window(_frame(2000, 9))
    d = drift_report("m", "1", reference, rows, [min(r * 3, 1.0) for r in risks], SPEC)
    assert d["drifted"] == ["prediction"]


def test_empty_and_small_windows_report_too_few_predictions(reference: dict) -> None:
    for n in (0, 99):
        rows, risks = _window(_frame(max(n, 1), 9).head(n))
        d = drift_report("m", "1", reference, rows, risks, SPEC)
        assert d["status"].startswith("too few predictions") and d["window"] == n
        assert d["features"] is None and d["prediction"] is None and not d["alert"]


def test_none_and_nan_inputs_and_scores_count_as_missing(reference: dict) -> None:
    rows, risks = _window(_frame(500, 9))
    for row in rows[:250]:
        row["bp"] = None if len(row) % 2 else float("nan")
        row.pop("smoking")
    risks[0] = float("nan")
    d = drift_report("m", "1", reference, rows, risks, SPEC)
    assert d["features"]["bp"]["window"][-1] >= 250 and d["features"]["smoking"]["window"][-1] == 250
    assert set(d["drifted"]) == {"bp", "smoking"}  # half the rows missing a value is drift
    assert d["prediction"]["window"][-1] == 1


def test_a_version_without_feature_reference_says_so() -> None:
    old = monitoring_reference({"overall": {"calibration_curve": [{"mean_predicted": 0.15, "n": 900, "observed": 0.1},
                                                                  {"mean_predicted": 0.35, "n": 100, "observed": 0.3}]}})
    assert old["features"] is None
    d = drift_report("m", "1", old, [{"age": 60}] * 200, [0.12] * 180 + [0.31] * 20, SPEC)
    assert d["feature_reference"] == NO_FEATURE_REFERENCE and d["features"] is None
    assert d["status"] == "ok" and d["prediction"]["psi"] < 0.05 and not d["alert"]
    none = drift_report("m", "1", monitoring_reference(None), [{}] * 200, [0.1] * 200, SPEC)
    assert none["status"] == "no reference" and not none["alert"]

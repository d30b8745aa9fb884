"""Decision thresholds: rules on known ROC counts, exact rates on test histograms, the prior
fallback, and the threshold travelling in the package to the scorers (0.5/argmax without)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.gate import artifact_digest
from experiments.spec import parse_spec
from federation.imbalance import choose_decision, decision_section, federation_class_weights
from tests.conftest import make_spec
from tests.unit.test_spec_images import image_spec_dict
from training.artifacts import DECISION_FILE
from training.decision import Decision, choose_threshold, decision_on_scores, prior_decision, rates_at
from training.imaging.hospital import served_confusion
from training.imaging.package import save_vision_package_files
from training.imaging.preprocessing import ImagePreprocessor
from training.imaging.scoring import VisionScorer
from training.imaging.validation import local_multiclass_aggregates, merge_multiclass_aggregates
from training.imaging.vision import SmallCNN
from training.imbalance import resolve_class_weights
from training.report_render import decision_rows
from training.tabular.models import build_model
from training.tabular.package import save_package_files
from training.tabular.preprocessing import FeatureEncoder
from training.tabular.scoring import RiskScorer
from training.tabular.validation import local_aggregates, merge_aggregates
from training.validation_cells import HIST_BINS, LOGIT_RANGE

HIST = {"bins": 10, "logit_min": -5.0, "logit_max": 5.0}  # bin width 1 on the logit scale


def _expit(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_youden_picks_the_cut_maximising_j_in_the_middle_of_a_tie() -> None:
    # positives in bins 6..8, negatives in bins 1..4 (5 is empty): any cut in 5..6 separates them
    hp = [0, 0, 0, 0, 0, 0, 4, 3, 3, 0]
    hn = [0, 5, 5, 5, 5, 0, 0, 0, 0, 0]
    d = choose_threshold(hp, hn, HIST, rule="youden")
    assert d is not None and d.rule == "youden" and d.source == "val"
    assert d.threshold == pytest.approx(_expit(1.0))  # cut 6 (the run is cuts 5, 6: its upper middle)
    assert d.val == {"n": 30, "positives": 10, "sensitivity": 1.0, "specificity": 1.0}


def test_youden_on_overlapping_classes() -> None:
    hp = [0, 0, 1, 1, 2, 2, 2, 2, 0, 0]  # 10 positives
    hn = [2, 2, 2, 2, 1, 1, 0, 0, 0, 0]  # 10 negatives
    d = choose_threshold(hp, hn, HIST, rule="youden")
    # J at cut c: sens(c) + spec(c) - 1; cut 4 -> 8/10 + 8/10 - 1 = 0.6, the maximum
    assert d is not None and d.threshold == pytest.approx(_expit(-1.0))
    assert d.val["sensitivity"] == pytest.approx(0.8) and d.val["specificity"] == pytest.approx(0.8)


def test_sensitivity_rule_takes_the_highest_threshold_reaching_the_target() -> None:
    hp = [0, 0, 1, 1, 2, 2, 2, 2, 0, 0]
    hn = [2, 2, 2, 2, 1, 1, 0, 0, 0, 0]
    d = choose_threshold(hp, hn, HIST, rule="sensitivity", target=0.9)
    assert d is not None and d.threshold == pytest.approx(_expit(-2.0))  # cut 3: sensitivity 9/10
    assert d.val["sensitivity"] == pytest.approx(0.9) and d.val["specificity"] == pytest.approx(0.6)
    assert choose_threshold(hp, hn, HIST, rule="sensitivity", target=1.0).threshold == pytest.approx(_expit(-3.0))


def test_no_rule_without_both_classes_and_fixed_is_kept() -> None:
    assert choose_threshold([0] * 10, [1] * 10, HIST, rule="youden") is None
    d = choose_threshold([0] * 10, [1] * 10, HIST, rule="fixed", value=0.3)
    assert d is not None and d.threshold == 0.3 and d.source == "spec"
    with pytest.raises(ValueError, match="target"):
        choose_threshold([1] * 10, [1] * 10, HIST, rule="sensitivity")


def test_rates_at_a_chosen_threshold_are_exact_on_real_aggregates() -> None:
    rng = np.random.default_rng(0)
    y_val, y_test = rng.random(3000) < 0.1, rng.random(2000) < 0.1
    p_val = 1 / (1 + np.exp(-(rng.normal(size=3000) + 1.5 * y_val - 2)))
    p_test = 1 / (1 + np.exp(-(rng.normal(size=2000) + 1.5 * y_test - 2)))
    val = local_aggregates(p_val, y_val.astype(int), None, [0.5])
    test = local_aggregates(p_test, y_test.astype(int), None, [0.5])
    d = choose_threshold(val["cells"]["all"]["hist_pos"], val["cells"]["all"]["hist_neg"], val["histogram"], rule="youden")
    assert d is not None and 0.02 < d.threshold < 0.5  # far below 0.5 at 10% prevalence
    rates = rates_at(d, test["cells"]["all"]["hist_pos"], test["cells"]["all"]["hist_neg"], test["histogram"])
    decided = p_test >= d.threshold
    assert rates["tp"] == int((decided & y_test).sum()) and rates["fp"] == int((decided & ~y_test).sum())
    assert rates["sensitivity"] == pytest.approx((decided & y_test).sum() / y_test.sum())
    assert rates["balanced_accuracy"] > 0.6
    assert val["histogram"] == {"bins": HIST_BINS, "logit_min": LOGIT_RANGE[0], "logit_max": LOGIT_RANGE[1]}


def test_prior_decision_is_the_training_prior_and_balanced_weights_give_one_half() -> None:
    d = prior_decision([900, 100], None, "no val part")
    assert d.rule == "prior" and d.threshold == pytest.approx(0.1) and "no val part" in d.source
    assert prior_decision([900, 100], [1000 / 1800, 1000 / 200], "no val part").threshold == pytest.approx(0.5)
    multi = prior_decision([800, 150, 50], None, "more than two classes")
    assert multi.threshold is None and multi.class_scale is not None
    probs = np.array([[0.7, 0.25, 0.05], [0.85, 0.05, 0.10]])
    assert multi.labels(probs).tolist() == [1, 2]  # argmax would say class 0 twice
    assert Decision.default().labels(probs).tolist() == [0, 0]
    assert prior_decision(None, None, "x").threshold == 0.5


def test_decision_round_trips_and_tags() -> None:
    d = Decision(rule="sensitivity", threshold=0.1234567, target=0.8, val={"n": 5})
    assert Decision.from_json(d.to_json()) == d
    assert d.tags() == {"decision_rule": "sensitivity", "decision_source": "val", "decision_threshold": "0.123457"}


def _risk_package(tmp_path: Path, decision: Decision | None) -> Path:
    encoder = FeatureEncoder(("a",), (), (0.0,), (1.0,), ())
    torch.manual_seed(0)
    save_package_files(tmp_path, build_model("logistic", encoder.input_dim), encoder, "logistic", {}, decision=decision)
    return tmp_path


def test_risk_scorer_uses_the_stored_threshold_and_old_packages_use_one_half(tmp_path: Path) -> None:
    new = RiskScorer.from_files(_risk_package(tmp_path / "new", Decision(rule="youden", threshold=0.17)))
    assert new.threshold == 0.17 and new.decision.rule == "youden"
    old = RiskScorer.from_files(_risk_package(tmp_path / "old", None))
    assert not (tmp_path / "old" / DECISION_FILE).exists()
    assert old.threshold == 0.5 and old.decision.rule == "default"


def test_the_decision_is_covered_by_the_artifact_digest(tmp_path: Path) -> None:
    package = _risk_package(tmp_path, Decision(rule="youden", threshold=0.17))
    before = artifact_digest(package)
    (package / DECISION_FILE).write_text(Decision(rule="fixed", threshold=0.9).to_json())
    assert artifact_digest(package) != before  # a changed threshold no longer verifies against the approval


def test_vision_scorer_labels_with_the_stored_rule(tmp_path: Path) -> None:
    pre = ImagePreprocessor(size=8, channels=1, mean=(0.5,), std=(0.25,), classes=("normal", "finding"))
    torch.manual_seed(0)
    model = SmallCNN(1, 2, width=4)
    save_vision_package_files(tmp_path / "new", model, pre, "cnn", {"width": 4},
                              decision=Decision(rule="youden", threshold=0.2))
    save_vision_package_files(tmp_path / "old", model, pre, "cnn", {"width": 4})
    probs = np.array([[0.75, 0.25], [0.9, 0.1]])
    new = VisionScorer.from_files(tmp_path / "new", device="cpu")
    assert [r["label"] for r in new.describe(probs)] == ["finding", "normal"]
    old = VisionScorer.from_files(tmp_path / "old", device="cpu")
    assert [r["label"] for r in old.describe(probs)] == ["normal", "normal"]


def _scores(n: int, prevalence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    return 1 / (1 + np.exp(-(rng.normal(size=n) + 2.0 * y - 2.5))), y


def test_coordinator_chooses_on_val_and_reports_exact_test_rates_for_a_risk_model() -> None:
    spec = make_spec([Path("a.csv"), Path("b.csv")], validation={"threshold": {"rule": "sensitivity", "target": 0.8}},
                     training={"class_weights": "balanced"})
    counts = {"a": [900, 100], "b": [450, 50]}
    weights = federation_class_weights(spec, counts)
    assert weights == pytest.approx([1500 / 2700, 1500 / 300])
    val = {h: local_aggregates(*_scores(400, 0.1, i), None, [0.5]) for i, h in enumerate("ab")}
    decision = choose_decision(spec, val, [1350, 150], weights)
    assert decision.rule == "sensitivity" and decision.val["sensitivity"] >= 0.8
    p, y = _scores(3000, 0.1, 7)
    section = decision_section(decision, merge_aggregates({"a": local_aggregates(p, y, None, [0.5])}), multiclass=False)
    decided = p >= decision.threshold
    assert section["test"]["tp"] == int((decided & (y == 1)).sum()) and section["test"]["n"] == 3000
    assert choose_decision(spec, {}, [1350, 150], weights).rule == "prior"  # no val part: the trained-under prior
    assert choose_decision(spec, {}, [1350, 150], weights).threshold == pytest.approx(0.5)


def test_coordinator_thresholds_a_binary_image_model_and_prior_corrects_more_classes() -> None:
    binary = parse_spec(image_spec_dict(data={**image_spec_dict()["data"], "classes": ["normal", "finding"]}))
    p, y = _scores(600, 0.1, 3)
    val = {"a": local_aggregates(p, y, None, [0.5])}  # hospitals send val histograms of p(finding)
    decision = choose_decision(binary, val, [540, 60], None)
    assert decision.rule == "youden" and decision.threshold is not None and decision.threshold < 0.5
    probs = np.column_stack([1 - p, p])
    test = merge_multiclass_aggregates({"a": local_multiclass_aggregates(probs, y, ["normal", "finding"], None)})
    section = decision_section(decision, test, multiclass=True)
    assert section["test"]["tp"] == int(((p >= decision.threshold) & (y == 1)).sum())
    three = parse_spec(image_spec_dict())
    multi = choose_decision(three, {}, [800, 150, 50], resolve_class_weights({"opacity": 2.0}, ["normal", "nodule", "opacity"], None))
    assert multi.rule == "prior" and multi.threshold is None and multi.class_scale is not None
    assert "decision_class_scale" in multi.tags()


def test_decision_on_a_validators_scores_is_exact() -> None:
    p, y = _scores(500, 0.2, 5)
    section = decision_on_scores(Decision(rule="youden", threshold=0.3), p, y)
    assert section["test"]["tp"] == int(((p >= 0.3) & (y == 1)).sum()) and section["test"]["n"] == 500
    two = decision_on_scores(Decision(rule="youden", threshold=0.3), np.column_stack([1 - p, p]), y)
    assert two["test"] == section["test"]
    multi = decision_on_scores(prior_decision([5, 3, 2], None, "x"), np.full((4, 3), 1 / 3), np.zeros(4))
    assert "test" not in multi and multi["rule"] == "prior"


def test_a_multiclass_report_shows_the_served_labels_balanced_accuracy() -> None:
    decision = prior_decision([800, 150, 50], None, "more than two classes")
    probs = np.array([[0.7, 0.25, 0.05], [0.85, 0.05, 0.10], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    labels = np.array([1, 2, 0, 1])
    per_hospital = [served_confusion(probs[:2], labels[:2], decision.class_scale),
                    served_confusion(probs[2:], labels[2:], decision.class_scale)]
    assert np.sum(per_hospital, axis=0).tolist() == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    section = decision_section(decision, {}, multiclass=True, served_confusion=per_hospital)
    assert section["test"] == {"n": 4, "accuracy": 1.0, "balanced_accuracy": 1.0,
                               "confusion": [[1, 0, 0], [0, 2, 0], [0, 0, 1]]}
    rows = {name: value for name, value, _ in decision_rows({"decision": section})}
    assert rows["Decision rule"] == "prior-corrected argmax" and rows["Balanced accuracy (served labels)"] == "1.000"

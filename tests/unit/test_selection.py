"""Model selection on the val part: aggregates, their DP release and ledger charge, the chosen round, early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from experiments.errors import SpecError
from experiments.spec_sections import StrategySpec
from federation.errors import BudgetExceededError
from federation.ledger import PrivacyLedger
from federation.selection import NO_VAL_PART, RoundSelection, charge_selection, selection_noise
from federation.site import Site
from federation.strategy import build_strategy, selection_parts
from tests.conftest import make_spec
from training.selection import (
    LOSS_CLIP,
    EarlyStopping,
    merge_selection_aggregates,
    noise_selection_aggregates,
    selection_aggregates,
    selection_epsilon_after,
    selection_noise_multiplier,
    selection_noise_sd,
    selection_value,
)


def _scores(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, y


@pytest.mark.parametrize("k", [2, 4])
def test_metrics_from_aggregates_match_the_pooled_rows(k: int) -> None:
    probs, y = _scores(3000, k, seed=k)
    parts = {"a": selection_aggregates(probs[:1000], y[:1000], "loss"), "b": selection_aggregates(probs[1000:], y[1000:], "loss")}
    loss = np.minimum(-np.log(probs[np.arange(len(y)), y]), LOSS_CLIP).mean()
    assert selection_value(merge_selection_aggregates(parts)) == pytest.approx(loss)
    auroc = selection_value(merge_selection_aggregates({
        "a": selection_aggregates(probs[:1000], y[:1000], "auroc"), "b": selection_aggregates(probs[1000:], y[1000:], "auroc")}))
    exact = roc_auc_score(y, probs[:, 1]) if k == 2 else roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert auroc == pytest.approx(exact, abs=0.01)  # 32 bins on the logit scale
    bacc = selection_value(merge_selection_aggregates({
        "a": selection_aggregates(probs[:1000], y[:1000], "balanced_accuracy"),
        "b": selection_aggregates(probs[1000:], y[1000:], "balanced_accuracy")}))
    assert bacc == pytest.approx(balanced_accuracy_score(y, probs.argmax(axis=1)))


def test_parts_of_another_metric_are_refused_and_no_rows_give_no_value() -> None:
    probs, y = _scores(50, 2, seed=0)
    with pytest.raises(ValueError, match="b: selection aggregates of another kind"):
        merge_selection_aggregates({"a": selection_aggregates(probs, y, "loss"), "b": selection_aggregates(probs, y, "auroc")})
    assert selection_value(selection_aggregates(probs[:0], y[:0], "loss")) is None
    assert selection_value(selection_aggregates(probs[y == 1], y[y == 1], "auroc")) is None  # one class only
    assert selection_value(None) is None


@pytest.mark.parametrize(("metric", "coordinates"), [("loss", 2), ("auroc", 1), ("balanced_accuracy", 1)])
def test_dp_release_noise_is_calibrated_to_the_sensitivity(metric: str, coordinates: int) -> None:
    probs, y = _scores(200, 2, seed=3)
    exact = selection_aggregates(probs, y, metric)
    z = selection_noise_multiplier(epsilon=1.0, delta=1e-5, releases=5)
    # five releases at z spend epsilon 1 under the RDP accountant, like DP-SGD steps at sampling rate 1
    assert selection_epsilon_after(noise_multiplier=z, releases=5, delta=1e-5) == pytest.approx(1.0, rel=0.02)
    assert selection_epsilon_after(noise_multiplier=z, releases=2, delta=1e-5) < 1.0
    scale = z * np.sqrt(coordinates)
    rng = np.random.default_rng(0)
    draws = [noise_selection_aggregates(exact, noise_multiplier=z, rng=rng) for _ in range(400)]
    assert draws[0]["dp"]["noise_scale"] == pytest.approx(scale)
    assert draws[0]["dp"]["sensitivity"] == pytest.approx(np.sqrt(coordinates))
    if metric == "loss":
        assert np.std([d["n"] - exact["n"] for d in draws]) == pytest.approx(scale, rel=0.15)
        assert np.std([d["loss_sum"] - exact["loss_sum"] for d in draws]) == pytest.approx(scale * LOSS_CLIP, rel=0.15)
    elif metric == "auroc":
        noise = np.array([np.subtract(d["hist"]["1"]["pos"], exact["hist"]["1"]["pos"]) for d in draws])
        assert noise.std() == pytest.approx(scale, rel=0.1)
    else:
        noise = np.array([np.subtract(d["confusion"], exact["confusion"]) for d in draws])
        assert noise.std() == pytest.approx(scale, rel=0.1)
    # four one-vs-rest histograms a row touches in a 4-class model
    p4, y4 = _scores(50, 4, seed=1)
    release = noise_selection_aggregates(selection_aggregates(p4, y4, "auroc"), noise_multiplier=z, rng=rng)
    assert release["dp"]["sensitivity"] == pytest.approx(2.0)


def test_the_noise_sd_of_a_merged_value_is_estimated_and_shrinks_with_more_rows() -> None:
    z = selection_noise_multiplier(epsilon=1.0, delta=1e-5, releases=5)
    sds = []
    for n in (300, 3000):
        probs, y = _scores(n, 2, seed=5)
        parts = {h: noise_selection_aggregates(selection_aggregates(probs, y, "loss"), noise_multiplier=z,
                                           rng=np.random.default_rng(seed)) for seed, h in enumerate("ab")}
        merged = merge_selection_aggregates(parts)
        sd = selection_noise_sd(merged, [p["dp"]["noise_scale"] for p in parts.values()])
        # delta method: sqrt(2 hospitals) * z * sqrt(2) * sqrt(LOSS_CLIP^2 + loss^2) / rows
        loss = selection_value(selection_aggregates(probs, y, "loss"))
        expected = np.sqrt(2) * z * np.sqrt(2) * np.sqrt(LOSS_CLIP ** 2 + loss ** 2) / (2 * n)
        assert sd == pytest.approx(expected, rel=0.35)
        sds.append(sd)
    assert sds[1] < sds[0] / 5
    assert selection_noise_sd(merged, []) is None  # no DP: exact


def test_best_round_is_kept_and_patience_stops() -> None:
    stop = EarlyStopping(higher_is_better=False, patience=2)
    assert [stop.observe(r, v) for r, v in enumerate([0.7, 0.6, 0.65, 0.61], start=1)] == [True, True, False, False]
    assert stop.best_round == 2 and stop.best_value == 0.6 and stop.should_stop


def test_min_delta_min_rounds_and_rounds_without_a_value() -> None:
    stop = EarlyStopping(higher_is_better=True, patience=1, min_delta=0.01, min_rounds=3)
    stop.observe(1, 0.80)
    stop.observe(2, 0.805)  # better, but not by more than min_delta
    assert stop.best_round == 1 and stop.stale == 1 and not stop.should_stop  # min_rounds not reached
    stop.observe(3, 0.9)
    assert stop.best_round == 3 and not stop.should_stop
    stop.observe(4, None)
    assert stop.should_stop and stop.best_round == 3
    never = EarlyStopping(higher_is_better=True, patience=1)
    never.observe(1, None)
    never.observe(2, None)
    assert not never.should_stop  # nothing to keep yet: no reason to stop
    assert not EarlyStopping(higher_is_better=True, patience=None).should_stop


def _parts(values: dict[str, tuple[float, float]]) -> dict[str, dict]:
    return {h: {"schema": "bioverse.selection.aggregates/1", "metric": "loss", "classes": 2, "n": n, "loss_sum": s}
            for h, (n, s) in values.items()}


def test_round_selection_keeps_the_best_round_model_and_tags_it(hospital_files: list[Path]) -> None:
    spec = make_spec(hospital_files, data={"val_fraction": 0.2}, training={"rounds": 6},
                     selection={"metric": "loss", "patience": 2}) if _has_val_fraction() else None
    if spec is None:
        pytest.skip("data.val_fraction not in the spec yet (H1)")
    selection = RoundSelection(spec)
    losses = {1: 0.7, 2: 0.5, 3: 0.55, 4: 0.52}
    stops = []
    for r, loss in losses.items():
        arrays = ArrayRecord({"w": torch.full((2,), float(r))})
        stops.append(selection.observe(r, _parts({"a": (100, 100 * loss), "b": (50, 50 * loss)}), arrays).value)
    assert stops[1] == pytest.approx(0.5)
    assert selection.should_stop and selection.stopped_early
    assert torch.equal(selection.best_state["w"], torch.full((2,), 2.0))
    tags = selection.tags()
    assert tags["selection.round"] == "2" and tags["selection.metric"] == "loss" and tags["selection.value"] == "0.5000"
    assert tags["selection.stopped_early"] == "true" and tags["selection.rounds_run"] == "4"
    assert "round 2 had the best val loss" in selection.reason() and "patience 2" in selection.reason()
    assert selection.rounds_text() == "4 of 6 (round 2's model, best val loss 0.5000; stopped early)"


def _has_val_fraction() -> bool:
    from training.tabular.spec import DataSpec

    return "val_fraction" in DataSpec.model_fields


def test_without_val_parts_the_last_round_stands_and_says_why(hospital_files: list[Path]) -> None:
    selection = RoundSelection(make_spec(hospital_files))
    for r in (1, 2):
        selection.observe(r, {}, ArrayRecord({"w": torch.zeros(1)}))
    assert not selection.chosen and not selection.should_stop
    tags = selection.tags()
    assert tags["selection.status"] == "not possible" and NO_VAL_PART in tags["selection.reason"]
    assert tags["selection.round"] == "2" and tags["selection.stopped_early"] == "false"
    assert selection.rounds_text() == "2 (the last round's model; no selection on val)"


def test_each_release_is_charged_to_the_ledger_and_refused_past_the_budget(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files, training={"rounds": 4}, privacy={"selection_epsilon": 0.8})
    z = selection_noise(spec)
    site = Site(hospital_id="h1", data_path=hospital_files[0], ledger_path=tmp_path / "ledger.json", budget=1.0,
                dataset_id="ds-1")
    for _ in range(3):
        charged = charge_selection(site, spec, "run-9")
    ledger = PrivacyLedger(tmp_path / "ledger.json", "h1", "ds-1")
    entry = ledger.entry("run-9/selection")
    three = selection_epsilon_after(noise_multiplier=z, releases=3, delta=spec.privacy.target_delta)
    assert entry is not None and entry.kind == "selection" and entry.steps == 3
    assert entry.epsilon == pytest.approx(three) and charged["selection-epsilon"] == pytest.approx(three)
    assert three < 0.8  # three of four rounds' releases cost less than the run's selection_epsilon
    charge_selection(site, spec, "run-9")
    assert ledger.entry("run-9/selection").epsilon == pytest.approx(0.8, rel=0.02)
    ledger.charge(run="other", experiment="x", epsilon=0.3, delta=1e-5, steps=1, budget=2.0)  # a site that had more
    with pytest.raises(BudgetExceededError):
        charge_selection(site, spec, "run-9")  # 0.3 + a fifth release > 1.0
    assert ledger.entry("run-9/selection").steps == 4  # nothing charged


def test_spec_refuses_selection_that_cannot_work(hospital_files: list[Path]) -> None:
    with pytest.raises(SpecError, match="selection.min_rounds: 3 is more than training.rounds"):
        make_spec(hospital_files, selection={"min_rounds": 3})
    with pytest.raises(SpecError, match="selection.patience: early stopping needs a val part"):
        make_spec(hospital_files, selection={"patience": 2})
    with pytest.raises(SpecError, match="selection.metric"):
        make_spec(hospital_files, selection={"metric": "accuracy"})
    assert make_spec(hospital_files).selection.metric == "loss"


class _Observer:
    def __init__(self, stop_after: int) -> None:
        self.stop_after = stop_after
        self.seen: list[tuple[int, dict]] = []

    def on_round(self, *args: object) -> None:
        pass

    def on_selection(self, server_round: int, parts: dict, arrays: ArrayRecord | None) -> bool:
        self.seen.append((server_round, parts))
        return server_round >= self.stop_after


@pytest.mark.usefixtures("flower_task_identity")
def test_strategy_sends_nothing_after_early_stopping() -> None:
    observer = _Observer(stop_after=1)
    strategy = build_strategy(StrategySpec(min_hospitals=1), observer=observer, min_available=1, learning_rate=0.01)
    sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type=MessageType.EVALUATE)
    part = {"schema": "bioverse.selection.aggregates/1", "metric": "loss", "classes": 2, "n": 10.0, "loss_sum": 5.0}
    reply = Message(RecordDict({"site": ConfigRecord({"hospital-id": "h1", "status": "ok", "reason": ""}),
                                "metrics": MetricRecord({"num-examples": 10.0, "val-loss": 0.5}),
                                "selection": ConfigRecord({"aggregates": json.dumps(part)})}), reply_to=sent)
    assert selection_parts([reply], {}) == {"h1": part}
    strategy.aggregate_evaluate(1, [reply])
    assert observer.seen == [(1, {"h1": part})] and strategy.stopped_after == 1
    assert list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), None)) == []
    assert strategy.aggregate_train(2, []) == (None, None)
    assert list(strategy.configure_evaluate(2, ArrayRecord(), ConfigRecord(), None)) == []
    assert strategy.aggregate_evaluate(2, []) is None and len(observer.seen) == 1


@pytest.mark.usefixtures("flower_task_identity")
def test_a_round_where_some_hospitals_evaluate_on_val_and_others_on_test_aggregates() -> None:
    observer = _Observer(stop_after=99)
    strategy = build_strategy(StrategySpec(min_hospitals=1), observer=observer, min_available=1, learning_rate=0.01)
    sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type=MessageType.EVALUATE)
    replies = [Message(RecordDict({"site": ConfigRecord({"hospital-id": h, "status": "ok", "reason": ""}),
                                   "metrics": MetricRecord(m)}), reply_to=sent)
               for h, m in (("h1", {"num-examples": 10.0, "val-auroc": 0.8}), ("h2", {"num-examples": 30.0, "auroc": 0.7}))]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics["val-auroc"] == 0.8 and metrics["auroc"] == 0.7 and metrics["num-examples"] == 40


@pytest.mark.usefixtures("flower_task_identity")
def test_a_hospital_releases_noised_val_aggregates_charged_and_never_scores_its_test_rows(
        hospital_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from federation import client_app, selection
    from training.tabular.hospital import model_hparams
    from training.tabular.models import build_model
    from training.tabular.preprocessing import FeatureEncoder, merge_statistics

    spec = make_spec(hospital_files, data={"val_fraction": 0.2}, training={"rounds": 4}, selection={"metric": "auroc"})
    run_config = {"spec": json.dumps(spec.model_dump(mode="json")), "ledger-dir": str(tmp_path / "ledgers"),
                  "tracking-uri": "", "progress-file": ""}
    from flwr.app import Context

    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(),
                  run_config=run_config)
    stats = client_app.statistics(Message(RecordDict({"config": ConfigRecord({"run-key": "r"})}), dst_node_id=7,
                                          message_type=MessageType.QUERY), ctx)
    encoder = FeatureEncoder.from_statistics(merge_statistics([json.loads(stats.content["statistics"]["stats"])]),
                                             spec.data.contract)
    model = build_model(spec.model.kind, encoder.input_dim, **model_hparams(spec))

    def no_test_rows(**kwargs: object) -> None:
        raise AssertionError("the test part was scored during a round")

    monkeypatch.setattr(selection, "evaluate_global", no_test_rows)
    message = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                  "config": ConfigRecord({"encoder": encoder.to_json(), "run-key": "run-5"})}),
                      dst_node_id=7, message_type=MessageType.EVALUATE)
    reply = client_app.evaluate(message, ctx)
    assert reply.content["site"]["status"] == "ok", reply.content["site"]["reason"]
    release = json.loads(reply.content["selection"]["aggregates"])
    one = selection_epsilon_after(noise_multiplier=selection_noise(spec), releases=1, delta=spec.privacy.target_delta)
    assert release["metric"] == "auroc" and release["dp"]["noise_multiplier"] == pytest.approx(selection_noise(spec))
    metrics = reply.content["metrics"]
    assert metrics["selection-epsilon"] == pytest.approx(one)
    assert set(metrics) == {"num-examples", "selection-epsilon", "budget-left", "handler-seconds"}  # nothing exact
    ledger = PrivacyLedger(tmp_path / "ledgers" / "hospital-01.json", "hospital-01")
    assert ledger.entry("run-5/selection").epsilon == pytest.approx(one)


def test_an_image_hospital_selects_on_its_npz_val_part_without_dp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.spec import parse_spec
    from federation import selection
    from federation.selection import evaluate_round
    from training.imaging.preprocessing import ImagePreprocessor

    classes = ("normal", "nodule", "opacity")
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in {"train": 12, "val": 30, "test": 9}.items():
        arrays[f"{part}_images"] = rng.integers(0, 255, (n, 16, 16), dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(n) % 3).reshape(n, 1).astype(np.uint8)
    np.savez(tmp_path / "site.npz", **arrays)
    spec = parse_spec({
        "name": "img", "strategy": {"min_hospitals": 1}, "model": {"kind": "cnn", "width": 4},
        "training": {"rounds": 3}, "privacy": {"enabled": False},
        "selection": {"metric": "balanced_accuracy", "patience": 1},
        "data": {"modality": "images", "classes": list(classes), "image_size": 16, "augment": None,
                 "hospitals": [{"id": "h1", "path": str(tmp_path / "site.npz")}]}})
    site = Site("h1", tmp_path / "site.npz", 50.0, tmp_path / "ledger.json")
    pre = ImagePreprocessor(16, 1, (0.5,), (0.25,), classes)
    monkeypatch.setattr(selection, "evaluate_global", lambda **kwargs: pytest.fail("the test part was scored"))
    metrics, release = evaluate_round(site=site, spec=spec, encoder=pre, state=spec.modality.build_model(spec, pre).state_dict(),
                                      run_key="r")
    assert release is not None and release["metric"] == "balanced_accuracy" and "dp" not in release
    assert np.sum(release["confusion"]) == 30 and np.sum(release["confusion"], axis=1).tolist() == [10.0, 10.0, 10.0]
    assert metrics["num-examples"] == 30 and metrics["val-balanced_accuracy"] == pytest.approx(selection_value(release))
    assert 0 <= metrics["val-accuracy"] <= 1 and "val-auroc" in metrics
    assert not (tmp_path / "ledger.json").exists()  # without DP nothing is charged


def test_a_round_selection_warns_when_dp_noise_can_decide_the_round(hospital_files: list[Path]) -> None:
    probs, y = _scores(200, 2, seed=7)
    z = selection_noise_multiplier(epsilon=0.5, delta=1e-5, releases=5)
    parts = {h: noise_selection_aggregates(selection_aggregates(probs, y, "loss"), noise_multiplier=z,
                                           rng=np.random.default_rng(seed)) for seed, h in enumerate("ab")}
    for min_delta, warns in ((0.0, True), (5.0, False)):
        spec = make_spec(hospital_files, data={"val_fraction": 0.2}, training={"rounds": 5},
                         selection={"patience": 2, "min_delta": min_delta})
        selection = RoundSelection(spec)
        choice = selection.observe(1, parts, ArrayRecord({"w": torch.zeros(1)}))
        assert choice.noise_sd is not None and 0.05 < choice.noise_sd < 5.0
        assert (selection.noise_warning() is not None) is warns
        assert ("warning" in selection.summary()) is warns
        if warns:
            assert "the chosen round may be chance: raise privacy.selection_epsilon" in selection.noise_warning()


def test_the_selection_epsilon_of_a_round_is_the_largest_hospital_s() -> None:
    from federation.strategy import aggregate_metrics

    out = aggregate_metrics([RecordDict({"m": MetricRecord({"num-examples": 10.0, "selection-epsilon": 0.2})}),
                             RecordDict({"m": MetricRecord({"num-examples": 90.0, "selection-epsilon": 0.4})})], "num-examples")
    assert out["selection-epsilon"] == 0.4


def test_a_malformed_release_is_left_out_not_fatal(hospital_files: list[Path]) -> None:
    selection = RoundSelection(make_spec(hospital_files, data={"val_fraction": 0.2}))
    good = _parts({"a": (100, 50.0)})
    bad = {"b": {**good["a"], "metric": "auroc"}, "c": {"schema": "bioverse.selection.aggregates/1", "metric": "loss"},
           "0": {**good["a"], "classes": 3}}
    choice = selection.observe(1, {**bad, **good}, ArrayRecord({"w": torch.zeros(1)}))
    assert choice.value == pytest.approx(0.5) and list(choice.hospitals) == ["a"]


def test_under_dp_an_earlier_round_must_beat_the_last_by_more_than_the_noise(hospital_files: list[Path]) -> None:
    spec = make_spec(hospital_files, data={"val_fraction": 0.2}, training={"rounds": 3})
    for gap, registered in ((0.01, "3"), (3.0, "1")):
        selection = RoundSelection(spec)
        for r, loss in ((1, 0.50), (2, 0.50 + gap), (3, 0.50 + gap)):
            parts = {h: {**p, "dp": {"noise_scale": 40.0}} for h, p in _parts({"a": (400, 400 * loss)}).items()}
            selection.observe(r, parts, ArrayRecord({"w": torch.full((1,), float(r))}))
        margin = selection.noise_margin
        assert margin is not None and 0.05 < margin < 3.0
        assert selection.tags()["selection.round"] == registered
        if registered == "3":
            assert selection.within_noise and not selection.chosen
            assert selection.tags()["selection.status"] == "within noise"
            assert "round 1 looked best" in selection.reason() and "by less than the DP noise" in selection.reason()
        else:
            assert selection.chosen and torch.equal(selection.best_state["w"], torch.ones(1))


def test_noisy_val_metrics_do_not_stop_training_early(hospital_files: list[Path]) -> None:
    spec = make_spec(hospital_files, data={"val_fraction": 0.2}, training={"rounds": 5}, selection={"patience": 1})
    selection = RoundSelection(spec)
    for r, loss in ((1, 0.5), (2, 0.6), (3, 0.7)):
        parts = {h: {**p, "dp": {"noise_scale": 40.0}} for h, p in _parts({"a": (400, 400 * loss)}).items()}
        selection.observe(r, parts, ArrayRecord({"w": torch.zeros(1)}))
    assert not selection.should_stop and selection.stop_suppressed
    assert "early stopping held back" in selection.reason()

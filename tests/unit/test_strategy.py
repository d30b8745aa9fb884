"""Strategy aggregation: worst-case privacy, NaN-tolerant metrics, spec-chosen strategies."""

from __future__ import annotations

import math

import pytest
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, FedYogi

from experiments.spec_sections import StrategySpec
from federation.strategy import aggregate_metrics, build_strategy


class _Sink:
    def on_round(self, *args: object) -> None:
        pass


def _reply(**metrics: float) -> RecordDict:
    return RecordDict({"metrics": MetricRecord(metrics)})


def test_epsilon_is_the_maximum_and_losses_are_weighted() -> None:
    out = aggregate_metrics(
        [_reply(**{"num-examples": 100, "epsilon": 1.0, "train-loss": 0.2, "budget-left": 3.0}),
         _reply(**{"num-examples": 300, "epsilon": 2.5, "train-loss": 0.6, "budget-left": 1.0})],
        "num-examples",
    )
    assert out["epsilon"] == 2.5 and out["budget-left"] == 1.0
    assert out["train-loss"] == pytest.approx(0.5) and out["num-examples"] == 400


def test_nan_metrics_are_skipped_not_propagated() -> None:
    out = aggregate_metrics([_reply(**{"num-examples": 10, "auroc": math.nan}), _reply(**{"num-examples": 30, "auroc": 0.8})], "num-examples")
    assert out["auroc"] == pytest.approx(0.8)


@pytest.mark.parametrize(("name", "base"), [("fedavg", FedAvg), ("fedprox", FedProx), ("fedadam", FedAdam), ("fedyogi", FedYogi)])
def test_spec_picks_the_flower_strategy(name: str, base: type) -> None:
    strategy = build_strategy(StrategySpec(name=name, min_hospitals=3), observer=_Sink(), min_available=3, learning_rate=0.01)
    assert isinstance(strategy, base) and strategy.min_train_nodes == 3
    if name == "fedprox":
        assert strategy.proximal_mu == 0.01

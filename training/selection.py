"""Model selection on the val part: per-round aggregates, their DP release, early stopping.

What each metric releases and how it is noised: docs/model-selection.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.privacy import epsilon_after, noise_for_budget

__all__ = [
    "HIGHER_IS_BETTER",
    "LOSS_CLIP",
    "SCHEMA",
    "SCORE_BINS",
    "SELECTION_METRICS",
    "EarlyStopping",
    "merge_selection_aggregates",
    "noise_selection_aggregates",
    "selection_aggregates",
    "selection_epsilon_after",
    "selection_noise_multiplier",
    "selection_noise_sd",
    "selection_sensitivity",
    "selection_value",
]

SCHEMA = "bioverse.selection.aggregates/1"
SELECTION_METRICS = ("loss", "auroc", "balanced_accuracy")
HIGHER_IS_BETTER = {"loss": False, "auroc": True, "balanced_accuracy": True}
#: Per-row cross-entropy is clipped to this many nats before summing (bounds one row's
#: effect; 4 nats = a probability of 0.018 for the true class). Smaller means less DP noise.
LOSS_CLIP = 4.0
#: Histogram bins of predicted probabilities on the logit scale, over LOGIT_RANGE.
SCORE_BINS = 32
LOGIT_RANGE = (-8.0, 8.0)


def _check(metric: str) -> None:
    if metric not in SELECTION_METRICS:
        raise ValueError(f"selection metric must be one of {', '.join(SELECTION_METRICS)}, got {metric!r}")


def _one_vs_rest(k: int) -> list[int]:
    """The classes AUROC averages over: class 1 only for a binary model (class 0 is its mirror)."""
    return [1] if k == 2 else list(range(k))


def _bins(p: np.ndarray) -> np.ndarray:
    lo, hi = LOGIT_RANGE
    p = np.clip(p, 1e-300, 1.0)
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-np.minimum(p, 1 - 1e-16))
    return np.clip(np.floor((z - lo) / ((hi - lo) / SCORE_BINS)), 0, SCORE_BINS - 1).astype(np.int64)


def selection_aggregates(probs: np.ndarray, labels: np.ndarray, metric: str) -> dict[str, Any]:
    """A hospital's exact aggregates of its val rows for ``metric`` (counts and sums only).

    Args:
        probs: ``(N, K)`` class probabilities (a binary risk model: ``[1 - p, p]``).
        labels: ``(N,)`` true class indices.
        metric: ``loss``, ``auroc`` or ``balanced_accuracy``.
    """
    _check(metric)
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"probs must be (N, K) aligned with labels, got {probs.shape} and {y.shape}")
    n, k = probs.shape
    agg: dict[str, Any] = {"schema": SCHEMA, "metric": metric, "classes": k}
    if metric == "loss":
        picked = np.clip(probs[np.arange(n), y], 1e-300, 1.0) if n else np.zeros(0)
        agg.update(n=float(n), loss_sum=float(np.minimum(-np.log(picked), LOSS_CLIP).sum()))
    elif metric == "auroc":
        hist = {}
        for c in _one_vs_rest(k):
            b = _bins(probs[:, c])
            hist[str(c)] = {"pos": np.bincount(b[y == c], minlength=SCORE_BINS).astype(float).tolist(),
                            "neg": np.bincount(b[y != c], minlength=SCORE_BINS).astype(float).tolist()}
        agg["hist"] = hist
    else:
        confusion = np.zeros((k, k))
        np.add.at(confusion, (y, probs.argmax(axis=1) if n else y), 1.0)
        agg["confusion"] = confusion.tolist()
    return agg


def selection_sensitivity(metric: str, classes: int) -> int:
    """How many unit-bounded coordinates one row changes (the release's L2 sensitivity is
    the square root): ``n`` and ``loss_sum / LOSS_CLIP`` (loss), one histogram cell per
    one-vs-rest class (auroc), one confusion cell (balanced_accuracy)."""
    _check(metric)
    if metric == "loss":
        return 2
    if metric == "auroc":
        return len(_one_vs_rest(classes))
    return 1


def selection_noise_multiplier(*, epsilon: float, delta: float, releases: int) -> float:
    """The noise multiplier of each of ``releases`` Gaussian releases that together spend
    ``(epsilon, delta)`` under the RDP accountant (as DP-SGD's steps, at sampling rate 1)."""
    return noise_for_budget(target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=releases)


def selection_epsilon_after(*, noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon spent by ``releases`` releases at ``noise_multiplier`` (RDP composition)."""
    return epsilon_after(noise_multiplier=noise_multiplier, sample_rate=1.0, steps=releases, delta=delta)


def noise_selection_aggregates(agg: Mapping[str, Any], *, noise_multiplier: float,
                               rng: np.random.Generator | None = None) -> dict[str, Any]:
    """The Gaussian-mechanism release of :func:`selection_aggregates`.

    With every coordinate divided by its bound (:data:`LOSS_CLIP` for the loss sum, 1
    otherwise) one row moves the release by at most ``sqrt(k)`` in L2
    (:func:`selection_sensitivity`), so each coordinate gets noise of standard deviation
    ``noise_multiplier * sqrt(k) * bound``.
    """
    metric, k = str(agg["metric"]), int(agg["classes"])
    sensitivity = math.sqrt(selection_sensitivity(metric, k))
    scale = noise_multiplier * sensitivity
    rng = rng if rng is not None else np.random.default_rng()
    out: dict[str, Any] = {"schema": SCHEMA, "metric": metric, "classes": k}
    if metric == "loss":
        out["n"] = float(agg["n"] + rng.normal(0, scale))
        out["loss_sum"] = float(agg["loss_sum"] + rng.normal(0, scale * LOSS_CLIP))
    elif metric == "auroc":
        out["hist"] = {c: {side: (np.asarray(h[side]) + rng.normal(0, scale, SCORE_BINS)).tolist() for side in ("pos", "neg")}
                       for c, h in agg["hist"].items()}
    else:
        confusion = np.asarray(agg["confusion"], dtype=float)
        out["confusion"] = (confusion + rng.normal(0, scale, confusion.shape)).tolist()
    out["dp"] = {"noise_multiplier": noise_multiplier, "noise_scale": scale, "sensitivity": sensitivity}
    return out


def merge_selection_aggregates(parts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The sum of the hospitals' aggregates (None without any).

    Raises:
        ValueError: parts of another schema, metric or number of classes.
    """
    if not parts:
        return None
    first = next(iter(parts.values()))
    metric, k = str(first["metric"]), int(first["classes"])
    for hospital, part in parts.items():
        if part.get("schema") != SCHEMA or part.get("metric") != metric or int(part.get("classes", -1)) != k:
            raise ValueError(f"{hospital}: selection aggregates of another kind ({part.get('metric')}, {part.get('schema')})")
    out: dict[str, Any] = {"schema": SCHEMA, "metric": metric, "classes": k, "hospitals": len(parts)}
    if metric == "loss":
        out["n"] = sum(float(p["n"]) for p in parts.values())
        out["loss_sum"] = sum(float(p["loss_sum"]) for p in parts.values())
    elif metric == "auroc":
        out["hist"] = {c: {side: np.sum([np.asarray(p["hist"][c][side], dtype=float) for p in parts.values()], axis=0).tolist()
                           for side in ("pos", "neg")} for c in first["hist"]}
    else:
        out["confusion"] = np.sum([np.asarray(p["confusion"], dtype=float) for p in parts.values()], axis=0).tolist()
    return out


def _binned_auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    pos, neg = np.clip(pos, 0, None), np.clip(neg, 0, None)  # noised counts: negative is noise
    p, q = pos.sum(), neg.sum()
    if p <= 0 or q <= 0:
        return None
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (p * q))


def selection_value(agg: Mapping[str, Any] | None) -> float | None:
    """The selection metric from (merged, possibly noised) aggregates; None when undefined
    (no rows, or a class without rows)."""
    if agg is None:
        return None
    metric = str(agg["metric"])
    if metric == "loss":
        n, total = float(agg["n"]), float(agg["loss_sum"])
        return None if n < 1 or total <= 0 else total / n  # a noised sum <= 0 says nothing but noise
    if metric == "auroc":
        values = [_binned_auroc(np.asarray(h["pos"], dtype=float), np.asarray(h["neg"], dtype=float))
                  for h in agg["hist"].values()]
        known = [v for v in values if v is not None]
        return float(np.mean(known)) if known else None
    confusion = np.clip(np.asarray(agg["confusion"], dtype=float), 0, None)
    rows = confusion.sum(axis=1)
    recalls = [confusion[i, i] / rows[i] for i in range(len(rows)) if rows[i] >= 1]
    return float(np.mean(recalls)) if recalls else None


def selection_noise_sd(agg: Mapping[str, Any] | None, noise_scales: list[float], *, draws: int = 200,
                       rng: np.random.Generator | None = None) -> float | None:
    """How much the DP noise alone moves :func:`selection_value` of merged aggregates: the
    standard deviation of the value over ``draws`` fresh noise draws with the hospitals'
    noise scales (a parametric bootstrap; post-processing, no privacy cost). None without
    noise or without a value."""
    if agg is None or not noise_scales or selection_value(agg) is None:
        return None
    rng = rng if rng is not None else np.random.default_rng(0)
    scale = math.sqrt(sum(s * s for s in noise_scales))  # the merged release's noise per unit bound
    values = [selection_value(noise_selection_aggregates(agg, noise_multiplier=scale / math.sqrt(
        selection_sensitivity(str(agg["metric"]), int(agg["classes"]))), rng=rng)) for _ in range(draws)]
    known = [v for v in values if v is not None]
    return float(np.std(known)) if len(known) > 1 else None


@dataclass
class EarlyStopping:
    """Keeps the best round by the selection metric and says when patience has run out.

    A round improves on the best when its value is better by more than ``min_delta``;
    a round without a value (no val aggregates) does not improve. Training stops when
    ``patience`` rounds in a row have not improved and at least ``min_rounds`` ran (never
    before some round had a value).

    Args:
        higher_is_better: True for AUROC and balanced accuracy, False for loss.
        patience: Rounds without improvement before stopping; None never stops early.
        min_rounds: Rounds that always run.
        min_delta: The smallest change that counts as an improvement.
    """

    higher_is_better: bool
    patience: int | None = None
    min_rounds: int = 1
    min_delta: float = 0.0
    best_round: int | None = None
    best_value: float | None = None
    stale: int = 0
    last_round: int = 0
    history: dict[int, float | None] = field(default_factory=dict)

    def observe(self, server_round: int, value: float | None) -> bool:
        """Record a round's value; True when it is the new best."""
        self.history[server_round] = value
        self.last_round = server_round
        if value is None or not math.isfinite(value):
            self.stale += 1
            return False
        if self.best_value is None:
            better = True
        elif self.higher_is_better:
            better = value > self.best_value + self.min_delta
        else:
            better = value < self.best_value - self.min_delta
        if better:
            self.best_round, self.best_value, self.stale = server_round, value, 0
        else:
            self.stale += 1
        return better

    @property
    def should_stop(self) -> bool:
        """Patience has run out (and ``min_rounds`` have run)."""
        return (self.patience is not None and self.best_round is not None and self.last_round >= self.min_rounds
                and self.stale >= self.patience)

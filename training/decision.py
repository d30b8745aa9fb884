"""Decision rules of a registered model: a threshold chosen on federated validation histograms, or a prior correction.

Rules ``youden``, ``sensitivity``, ``fixed`` and ``prior`` (argmax of ``p_k / pi_k``), and why the rates at a
chosen threshold are exact: docs/imbalance.md ("The decision threshold").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["Decision", "choose_threshold", "decision_on_scores", "prior_decision", "rates_at"]

@dataclass(frozen=True)
class Decision:
    """How a model's scores become a decision.

    Attributes:
        rule: ``youden``, ``sensitivity``, ``fixed`` or ``prior`` (see the module docstring).
        threshold: For binary models: ``decision = score >= threshold`` (the risk, or the
            second class's probability). None for multi-class models.
        class_scale: For multi-class models: the label is ``argmax_k p_k * class_scale[k]``.
        source: What the threshold was chosen on (``val``, ``prior``, ``spec``) and, for
            ``prior``, why.
        target: The rule's target (sensitivity), if any.
        val: Rates at the threshold on the val aggregates (n, sensitivity, specificity).
    """

    rule: str
    threshold: float | None = None
    class_scale: tuple[float, ...] | None = None
    source: str = "val"
    target: float | None = None
    val: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise for the model package and the report."""
        d = asdict(self)
        d["class_scale"] = list(self.class_scale) if self.class_scale is not None else None
        return json.dumps(d, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Decision:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        scale = d.get("class_scale")
        return cls(rule=str(d["rule"]), threshold=None if d.get("threshold") is None else float(d["threshold"]),
                   class_scale=None if scale is None else tuple(float(s) for s in scale),
                   source=str(d.get("source", "val")), target=d.get("target"), val=dict(d.get("val") or {}))

    @classmethod
    def default(cls) -> Decision:
        """What a package registered before decision rules serves: 0.5 / the argmax."""
        return cls(rule="default", threshold=0.5, source="package without a decision rule")

    def decide(self, risk: np.ndarray) -> np.ndarray:
        """Binary decisions ``risk >= threshold`` (0.5 without one)."""
        return np.asarray(risk, dtype=float) >= (0.5 if self.threshold is None else self.threshold)

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """Class index per row of ``(N, K)`` probabilities under this rule."""
        probs = np.asarray(probs, dtype=float)
        if probs.ndim != 2 or probs.shape[0] == 0:
            return np.zeros(probs.shape[:1], dtype=np.int64)
        if probs.shape[1] == 2 and self.threshold is not None:
            return (probs[:, 1] >= self.threshold).astype(np.int64)
        if self.class_scale is not None and len(self.class_scale) == probs.shape[1]:
            return (probs * np.asarray(self.class_scale)[None, :]).argmax(axis=1)
        return probs.argmax(axis=1)

    def tags(self) -> dict[str, str]:
        """Version tags: ``decision_rule`` and ``decision_threshold`` (binary models)."""
        tags = {"decision_rule": self.rule, "decision_source": self.source}
        if self.threshold is not None:
            tags["decision_threshold"] = f"{self.threshold:.6g}"
        if self.class_scale is not None:
            tags["decision_class_scale"] = ",".join(f"{s:.4g}" for s in self.class_scale)
        return tags


def _expit(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _edges(histogram: Mapping[str, Any]) -> tuple[int, float, float]:
    return int(histogram["bins"]), float(histogram["logit_min"]), float(histogram["logit_max"])


def _cut_rates(hist_pos: Sequence[float], hist_neg: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity of ``bin >= c`` for every cut ``c`` in ``0..bins``."""
    hp, hn = np.asarray(hist_pos, dtype=float), np.asarray(hist_neg, dtype=float)
    tp = np.concatenate([np.cumsum(hp[::-1])[::-1], [0.0]])
    fp = np.concatenate([np.cumsum(hn[::-1])[::-1], [0.0]])
    return tp / max(hp.sum(), 1.0), 1.0 - fp / max(hn.sum(), 1.0)


def _threshold_at(cut: int, histogram: Mapping[str, Any]) -> float:
    bins, lo, hi = _edges(histogram)
    return _expit(lo + cut * (hi - lo) / bins)


def _cut_of(threshold: float, histogram: Mapping[str, Any]) -> int:
    """The cut whose lower edge is the threshold (nearest edge for a threshold between edges)."""
    bins, lo, hi = _edges(histogram)
    z = math.log(threshold) - math.log1p(-threshold)
    return int(min(max(round((z - lo) / ((hi - lo) / bins)), 0), bins))


def choose_threshold(hist_pos: Sequence[float], hist_neg: Sequence[float], histogram: Mapping[str, Any], *,
                     rule: str, target: float | None = None, value: float | None = None) -> Decision | None:
    """Choose a threshold on val aggregates by ``rule``.

    Args:
        hist_pos, hist_neg: Score histograms of patients with and without the event (summed
            over hospitals), as :func:`training.tabular.validation.local_aggregates` bins them.
        histogram: The histogram's ``{"bins", "logit_min", "logit_max"}``.
        rule: ``youden``, ``sensitivity`` or ``fixed``.
        target: The sensitivity to reach (``sensitivity``).
        value: The threshold (``fixed``).

    Returns:
        The decision, or None when the val aggregates hold no positive or no negative
        patient (no rule can be applied: the caller falls back to :func:`prior_decision`).

    Raises:
        ValueError: an unknown rule or a missing target/value.
    """
    n_pos, n_neg = float(np.sum(hist_pos)), float(np.sum(hist_neg))
    sens, spec = _cut_rates(hist_pos, hist_neg)
    if rule == "fixed":
        if value is None:
            raise ValueError("the fixed rule needs a value")
        cut, threshold = _cut_of(value, histogram), float(value)
    elif n_pos == 0 or n_neg == 0:
        return None
    elif rule == "youden":
        j = sens + spec - 1.0
        ties = set(np.flatnonzero(j >= j.max() - 1e-12).tolist())
        start = end = min(ties)
        while end + 1 in ties:  # the first run of tied cut-offs: take its middle
            end += 1
        cut = (start + end + 1) // 2
        threshold = _threshold_at(cut, histogram)
    elif rule == "sensitivity":
        if target is None:
            raise ValueError("the sensitivity rule needs a target")
        reach = np.flatnonzero(sens >= target - 1e-12)
        cut = int(reach.max())
        threshold = _threshold_at(cut, histogram)
    else:
        raise ValueError(f"unknown threshold rule {rule!r}")
    val = {"n": int(n_pos + n_neg), "positives": int(n_pos),
           "sensitivity": float(sens[cut]) if n_pos else None, "specificity": float(spec[cut]) if n_neg else None}
    return Decision(rule=rule, threshold=threshold, source="val" if rule != "fixed" else "spec", target=target, val=val)


def rates_at(decision: Decision, hist_pos: Sequence[float], hist_neg: Sequence[float],
             histogram: Mapping[str, Any]) -> dict[str, Any]:
    """Confusion counts, sensitivity, specificity and balanced accuracy of ``score >= threshold``
    from (test) histograms: exact for a chosen threshold (a bin edge), within one bin for a
    fixed one."""
    assert decision.threshold is not None
    cut = _cut_of(decision.threshold, histogram)
    hp, hn = np.asarray(hist_pos, dtype=float), np.asarray(hist_neg, dtype=float)
    tp, fp = int(hp[cut:].sum()), int(hn[cut:].sum())
    fn, tn = int(hp.sum()) - tp, int(hn.sum()) - fp
    sens = tp / (tp + fn) if tp + fn else None
    spec = tn / (tn + fp) if tn + fp else None
    return {"threshold": decision.threshold, "n": tp + fp + tn + fn, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "sensitivity": sens, "specificity": spec,
            "balanced_accuracy": (sens + spec) / 2 if sens is not None and spec is not None else None}


def decision_on_scores(decision: Decision, scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The report's ``decision`` section computed on one data set's scores (a validator's own
    file): the rule and, for a threshold, exact confusion counts, sensitivity, specificity
    and balanced accuracy of ``score >= threshold``.

    Args:
        decision: The version's rule.
        scores: Risks ``(N,)``, or class probabilities ``(N, K)`` (a binary model's second column
            is thresholded).
        labels: True classes (0/1 for a risk model).
    """
    section: dict[str, Any] = {"rule": decision.rule, "source": decision.source, "threshold": decision.threshold,
                               "target": decision.target, "val": decision.val or None,
                               "class_scale": list(decision.class_scale) if decision.class_scale else None}
    scores, y = np.asarray(scores, dtype=float), np.asarray(labels).reshape(-1).astype(int)
    if scores.ndim == 2 and scores.shape[1] != 2:
        return section
    if decision.threshold is None:
        return section
    risk = scores[:, 1] if scores.ndim == 2 else scores
    decided, positive = risk >= decision.threshold, y == 1
    tp, fp = int((decided & positive).sum()), int((decided & ~positive).sum())
    fn, tn = int(positive.sum()) - tp, int((~positive).sum()) - fp
    sens = tp / (tp + fn) if tp + fn else None
    spec = tn / (tn + fp) if tn + fp else None
    section["test"] = {"threshold": decision.threshold, "n": int(y.size), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
                       "sensitivity": sens, "specificity": spec,
                       "balanced_accuracy": (sens + spec) / 2 if sens is not None and spec is not None else None}
    return section


def prior_decision(counts: Sequence[float] | None, class_weights: Sequence[float] | None, reason: str) -> Decision:
    """The prior-corrected argmax (see the module docstring): the rule where no threshold
    can be chosen on val data. Without counts, the plain argmax (0.5 for two classes)."""
    if not counts:
        return Decision(rule="prior", threshold=0.5, source=f"prior ({reason}; no class counts: argmax)")
    weights = list(class_weights) if class_weights else [1.0] * len(counts)
    mass = [max(float(c), 1.0) * w for c, w in zip(counts, weights, strict=True)]
    prior = [m / sum(mass) for m in mass]
    if len(prior) == 2:
        return Decision(rule="prior", threshold=prior[1], source=f"prior ({reason})")
    scale = [1.0 / (p * len(prior)) for p in prior]
    return Decision(rule="prior", class_scale=tuple(scale), source=f"prior ({reason})")

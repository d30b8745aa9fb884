"""Model selection on the val part: each round's release at a hospital, the coordinator's choice.

Releases are noised and charged under ``<run>/selection`` with DP on (docs/model-selection.md).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from sklearn.metrics import roc_auc_score

from experiments.spec import ExperimentSpec
from federation.hospital import evaluate_global, site_ledger, val_scores
from federation.site import Site
from training.metrics import risk_metrics
from training.modality import Preprocessor
from training.selection import (
    HIGHER_IS_BETTER,
    EarlyStopping,
    merge_selection_aggregates,
    noise_selection_aggregates,
    selection_aggregates,
    selection_epsilon_after,
    selection_noise_multiplier,
    selection_noise_sd,
    selection_value,
)

__all__ = ["NOISE_MARGIN", "NO_VAL_PART", "RoundChoice", "RoundSelection", "charge_selection", "evaluate_round", "selection_noise"]

log = logging.getLogger(__name__)

#: Why no round could be chosen when no hospital has val rows.
NO_VAL_PART = "no val part: set data.val_fraction or a split column"
#: Under DP an earlier round is chosen over the last only when it is better by more than
#: this many standard deviations of the difference of two noised values.
NOISE_MARGIN = 2.0


def selection_noise(spec: ExperimentSpec) -> float:
    """The noise multiplier of each round's release: ``training.rounds`` releases together
    spend ``privacy.selection_epsilon`` at ``privacy.target_delta`` (RDP accountant)."""
    return selection_noise_multiplier(epsilon=spec.privacy.selection_epsilon, delta=spec.privacy.target_delta,
                                      releases=spec.training.rounds)


def charge_selection(site: Site, spec: ExperimentSpec, run_key: str) -> dict[str, float]:
    """Charge the ledger for one more val release, under the run's ``<run>/selection``:
    the epsilon of all this run's releases so far (RDP composition), so rounds never run
    are never charged. Every release is charged, a repeated one too (fresh noise could be
    averaged away).

    Raises:
        BudgetExceededError: the release would exceed the budget; nothing is charged.
    """
    ledger = site_ledger(site)
    key = f"{run_key}/selection"
    previous = ledger.entry(key)
    releases = (previous.steps if previous else 0) + 1
    delta = spec.privacy.target_delta
    total = selection_epsilon_after(noise_multiplier=selection_noise(spec), releases=releases, delta=delta)
    ledger.charge(run=key, experiment=spec.name, epsilon=total, delta=delta, steps=releases,
                  budget=site.budget, kind="selection")
    return {"selection-epsilon": total, "budget-left": site.budget - ledger.spent()}


def _exact_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Exact metrics of the val rows (no DP only): a risk model's, or an image model's
    accuracy and macro one-vs-rest AUROC."""
    if probs.shape[1] == 2:
        found = risk_metrics(labels, probs[:, 1])
    else:
        found = {"accuracy": float((probs.argmax(axis=1) == labels).mean())}
        aucs = [roc_auc_score(labels == k, probs[:, k]) for k in range(probs.shape[1]) if 0 < (labels == k).sum() < len(labels)]
        found["auroc"] = float(np.mean(aucs)) if aucs else math.nan
    # NaN where undefined: every hospital sends the same keys (aggregation skips NaN)
    return {f"val-{k}": float(v) for k, v in found.items()}


def evaluate_round(*, site: Site, spec: ExperimentSpec, encoder: Preprocessor, state: dict[str, torch.Tensor],
                   run_key: str) -> tuple[dict[str, float], dict[str, Any] | None]:
    """A round's evaluation at a hospital: on its val rows when it has some, else (no
    selection possible) on its test rows as before.

    Returns the metrics (``val-*`` keys on the val part, the same keys at every hospital)
    and the selection release (None without val rows). With DP on only the noised release
    leaves (and its noised row count, which weights the hospital).

    Raises:
        BudgetExceededError: with DP, the hospital's budget cannot pay for the release.
    """
    started = time.perf_counter()
    scored = val_scores(site=site, spec=spec, encoder=encoder, state=state)
    if scored is None:
        return evaluate_global(site=site, spec=spec, encoder=encoder, state=state), None
    probs, labels = scored
    metric = spec.selection.metric
    exact = selection_aggregates(probs, labels, metric)
    if spec.privacy.enabled:
        # only the noised release leaves; the coordinator computes each hospital's value from it
        metrics = charge_selection(site, spec, run_key)
        release = noise_selection_aggregates(exact, noise_multiplier=selection_noise(spec))
        metrics["num-examples"] = max(_rows(release), 1.0)
    else:
        release = exact
        value = selection_value(release)
        metrics = {"num-examples": float(len(labels)), **_exact_metrics(probs, labels),
                   f"val-{metric}": math.nan if value is None else value}
    metrics["handler-seconds"] = time.perf_counter() - started
    return metrics, release


def _rows(release: dict[str, Any]) -> float:
    """The (noised) number of val rows a release speaks for."""
    if "n" in release:
        return float(release["n"])
    if "confusion" in release:
        return float(np.sum(release["confusion"]))
    first = next(iter(release["hist"].values()))
    return float(np.sum(first["pos"]) + np.sum(first["neg"]))


@dataclass
class RoundChoice:
    """One round's merged selection value and the hospitals it came from."""

    server_round: int
    value: float | None
    hospitals: dict[str, float | None]
    improved: bool
    noise_sd: float | None = None  # how much DP noise alone moves the value (None without DP)


class RoundSelection:
    """The coordinator's model selection: merges each round's val releases, keeps the best
    round's model, decides early stopping.

    Args:
        spec: The experiment (its ``selection`` section).
    """

    def __init__(self, spec: ExperimentSpec) -> None:
        self.spec = spec
        self.metric = spec.selection.metric
        self.classes = len(spec.modality.class_names(spec))
        self.stopping = EarlyStopping(
            higher_is_better=HIGHER_IS_BETTER[self.metric], patience=spec.selection.patience,
            min_rounds=spec.selection.min_rounds, min_delta=spec.selection.min_delta,
        )
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_early = False
        self.rounds_with_val = 0
        #: Each hospital's epsilon spent on val releases in this run (DP only).
        self.epsilon: dict[str, float] = {}
        #: The largest DP noise standard deviation of a round's value so far (None without DP).
        self.noise_sd: float | None = None
        #: Patience ran out but the val metric was noisier than min_delta: training went on.
        self.stop_suppressed = False

    def observe(self, server_round: int, parts: dict[str, dict[str, Any]], arrays: ArrayRecord | None) -> RoundChoice:
        """Record one round: ``parts`` are the hospitals' releases, ``arrays`` the round's
        global model (a copy is kept when the round is the best so far)."""
        parts = self._usable(parts)
        merged = merge_selection_aggregates(parts)
        value = selection_value(merged)
        if parts:
            self.rounds_with_val += 1
        scales = [float(p["dp"]["noise_scale"]) for p in parts.values() if "dp" in p]
        noise_sd = selection_noise_sd(merged, scales)
        if noise_sd is not None:
            self.noise_sd = max(self.noise_sd or 0.0, noise_sd)
        improved = self.stopping.observe(server_round, value)
        if improved and arrays is not None:
            self.best_state = arrays.to_torch_state_dict()
        if parts and self.stopping.should_stop and server_round < self.spec.training.rounds:
            if self.noise_warning() is None:
                self.stopped_early = True
            else:  # "no improvement" would be the noise's verdict, not the model's
                self.stop_suppressed = True
        return RoundChoice(server_round, value, {h: selection_value(p) for h, p in sorted(parts.items())}, improved,
                           noise_sd)

    def _usable(self, parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The releases of the spec's metric that add up; a malformed one is left out with a
        warning rather than failing the run."""
        usable: dict[str, dict[str, Any]] = {}
        for hospital, part in sorted(parts.items()):
            try:
                if part.get("metric") != self.metric or part.get("classes") != self.classes:
                    raise ValueError(f"metric {part.get('metric')!r} over {part.get('classes')!r} classes, "
                                     f"not {self.metric!r} over {self.classes}")
                merge_selection_aggregates({**usable, hospital: part})
                selection_value(part)
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                log.warning("%s: selection aggregates left out (%s)", hospital, err)
                continue
            usable[hospital] = part
        return usable

    @property
    def should_stop(self) -> bool:
        """Training stops now (patience ran out before the last round)."""
        return self.stopped_early

    @property
    def noise_margin(self) -> float | None:
        """How far apart two rounds' values must be to tell them apart under DP: NOISE_MARGIN
        standard deviations of the difference of two noised values (None without DP)."""
        return None if self.noise_sd is None else NOISE_MARGIN * math.sqrt(2) * self.noise_sd

    @property
    def within_noise(self) -> bool:
        """The best round beats the last one by less than the DP noise: the last round's model
        is registered instead (a chance winner is no better choice than the latest model)."""
        s, margin = self.stopping, self.noise_margin
        last = s.history.get(s.last_round)
        return (margin is not None and s.best_round is not None and s.best_round != s.last_round
                and last is not None and s.best_value is not None and abs(s.best_value - last) <= margin)

    @property
    def chosen(self) -> bool:
        """Whether a round was chosen on val (else the last round's model stands)."""
        return self.best_state is not None and self.stopping.best_round is not None and not self.within_noise

    def reason(self) -> str:
        """Which round was chosen and why, as one line."""
        s = self.stopping
        suppressed = (f"; early stopping held back: the val {self.metric} is noisier than selection.min_delta"
                      if self.stop_suppressed else "")
        if self.within_noise:
            return (f"last round's model registered: round {s.best_round} looked best (val {self.metric} "
                    f"{s.best_value:.4f}) but beat round {s.last_round} ({s.history[s.last_round]:.4f}) by less than "
                    f"the DP noise ({self.noise_margin:.4f})" + suppressed)
        if not self.chosen:
            return (f"last round's model registered: {NO_VAL_PART}" if self.rounds_with_val == 0
                    else f"last round's model registered: no round had a val {self.metric}")
        text = f"round {s.best_round} had the best val {self.metric} ({s.best_value:.4f})"
        if self.stopped_early:
            text += (f"; stopped after round {s.last_round}: {s.stale} rounds without improving it"
                     f" by more than {s.min_delta:g} (patience {s.patience})")
        return text + suppressed

    def noise_warning(self) -> str | None:
        """A warning when DP noise alone moves the val metric by more than ``min_delta``
        (and 0.01): improvements may be chance."""
        limit = max(self.spec.selection.min_delta, 0.01)
        if self.noise_sd is None or self.noise_sd <= limit:
            return None
        return (f"val {self.metric} is noisy: DP noise alone moves it by {self.noise_sd:.3f} (sd) per round, more than "
                f"{limit:g}; the chosen round may be chance: raise privacy.selection_epsilon, the val part or "
                "selection.min_delta")

    def rounds_text(self) -> str:
        """The model card's rounds: how many ran and which round's model this is."""
        s, planned = self.stopping, self.spec.training.rounds
        run = f"{s.last_round} of {planned}" if s.last_round != planned else str(planned)
        if self.within_noise:
            return f"{run} (the last round's model; no round beat it by more than the DP noise on val)"
        if not self.chosen:
            return f"{run} (the last round's model; no selection on val)"
        return f"{run} (round {s.best_round}'s model, best val {self.metric} {s.best_value:.4f}" + \
            ("; stopped early)" if self.stopped_early else ")")

    def tags(self) -> dict[str, str]:
        """The version's ``selection.*`` tags."""
        if not self.chosen:
            status = "not possible" if self.rounds_with_val == 0 else "within noise" if self.within_noise else "no value"
            return {"selection.status": status, "selection.reason": self.reason(), "selection.metric": self.metric,
                    "selection.round": str(self.stopping.last_round), "selection.rounds_run": str(self.stopping.last_round),
                    "selection.stopped_early": str(self.stopped_early).lower(),
                    **({"selection.epsilon": f"{max(self.epsilon.values()):.4f}"} if self.epsilon else {})}
        s = self.stopping
        return {"selection.status": "val", "selection.metric": self.metric, "selection.round": str(s.best_round),
                "selection.value": f"{s.best_value:.4f}", "selection.stopped_early": str(self.stopped_early).lower(),
                "selection.rounds_run": str(s.last_round), "selection.reason": self.reason(),
                **({"selection.epsilon": f"{max(self.epsilon.values()):.4f}"} if self.epsilon else {})}

    def summary(self) -> dict[str, Any]:
        """What the run summary says about the choice."""
        s = self.stopping
        return {"metric": self.metric, "chosen": self.chosen, "round": s.best_round if self.chosen else s.last_round,
                "value": s.best_value if self.chosen else None, "noise_sd": self.noise_sd,
                **({"warning": warning} if (warning := self.noise_warning()) else {}),
                "stopped_early": self.stopped_early,
                "rounds_run": s.last_round, "history": {str(r): v for r, v in sorted(s.history.items())},
                "reason": self.reason()}

"""A hospital's site glue around its modality's local work: ledger, site policy and charging."""

from __future__ import annotations

import json
from typing import Any

from experiments.spec import ExperimentSpec
from federation.errors import FederationError, SitePolicyRefusal
from federation.ledger import LedgerEntry, PrivacyLedger
from federation.site import Site
from training.dp_loop import sample_rate, steps_per_epoch
from training.fingerprint import dataset_fingerprint
from training.modality import VAL_KEY, LocalRound, Preprocessor, RoundOutcome
from training.privacy import DPConfig, epsilon_after
from training.tabular.validation import local_aggregates

__all__ = [
    "charge_round", "charge_statistics", "encoder_from_config", "evaluate_global", "site_dataset", "site_ledger",
    "site_statistics", "train_round", "val_scores", "validation_aggregates",
]


def site_dataset(site: Site) -> str:
    """The dataset the hospital's budget belongs to: the node config's ``dataset-id``, else
    the fingerprint of its data file or folder."""
    if site.dataset_id:
        return site.dataset_id
    try:
        return dataset_fingerprint(site.data_path)
    except (OSError, ValueError) as err:
        raise FederationError(f"{site.hospital_id}: cannot fingerprint {site.data_path}: {err}") from err


def site_ledger(site: Site) -> PrivacyLedger:
    """The hospital's privacy ledger, for the dataset it protects in this run."""
    return PrivacyLedger(site.ledger_path, site.hospital_id, site_dataset(site))


def charge_statistics(site: Site, spec: ExperimentSpec, run_key: str) -> dict[str, float]:
    """Charge the ledger for one DP statistics release (``privacy.statistics_epsilon``).

    Every release is charged again (noise drawn afresh each time could be averaged
    away), under the run's ``<run>/statistics`` entry.

    Raises:
        BudgetExceededError: the release would exceed the budget; nothing is charged.
    """
    ledger = site_ledger(site)
    key = f"{run_key}/statistics"
    previous = ledger.entry(key)
    epsilon = spec.privacy.statistics_epsilon + (previous.epsilon if previous else 0.0)
    releases = (previous.steps if previous else 0) + 1
    ledger.charge(run=key, experiment=spec.name, epsilon=epsilon, delta=releases * spec.privacy.target_delta,
                  steps=releases, budget=site.budget, kind="statistics")
    return {"epsilon": epsilon, "budget-left": site.budget - ledger.spent()}


def site_statistics(site: Site, spec: ExperimentSpec, run_key: str = "") -> dict[str, Any]:
    """The modality's statistics of the hospital's training part, its fingerprint and dataset.

    With DP on (the spec's ``privacy.enabled``) the statistics are noised and charged to
    the ledger first; without, exact.

    Raises:
        BudgetExceededError: the hospital's budget for this dataset cannot pay for them.
        SitePolicyRefusal: the site's policy (node config ``statistics=refuse``) sends none.
    """
    if site.statistics == "refuse":
        raise SitePolicyRefusal(site.hospital_id, "the statistics round (node config statistics=refuse)")
    found = spec.modality.local_statistics(
        spec, site, lambda: charge_statistics(site, spec, run_key or "unnamed-run")["epsilon"])
    return {**found, "dataset": site_dataset(site)}


def charge_round(site: Site, spec: ExperimentSpec, n: int, run_key: str,
                 server_round: int | None = None) -> tuple[float | None, dict[str, float]]:
    """Charge the hospital's privacy ledger for one round over ``n`` training examples.

    The noise is calibrated once per run, so that ``rounds`` rounds spend the spec's target
    epsilon; the ledger keeps this run's running total (steps and epsilon), so a restarted
    hospital resumes its accounting where it was. Charges are idempotent per run and
    ``server_round``: a round the ledger already holds (a resumed coordinator asking it
    again, whose first reply never left) is not charged again. Returns the run's noise
    multiplier (None without DP) and the round's privacy metrics.

    Raises:
        BudgetExceededError: the round would exceed the hospital's budget; nothing charged.
    """
    dp = spec.privacy.dp_config
    if not dp.enabled:
        return None, {}
    batch = spec.training.batch_size
    q = sample_rate(n, batch)
    round_steps = spec.training.local_epochs * steps_per_epoch(n, batch)
    ledger = site_ledger(site)
    previous = ledger.entry(run_key)
    noise, calibration = _calibrated(dp, previous, q, round_steps * spec.training.rounds)
    if previous is not None and server_round is not None and previous.last_round >= server_round:
        return noise, {"epsilon": previous.epsilon, "noise-multiplier": noise, "budget-left": site.budget - ledger.spent()}
    steps = (previous.steps if previous else 0) + round_steps
    epsilon = epsilon_after(noise_multiplier=noise, sample_rate=q, steps=steps, delta=dp.target_delta, accountant=dp.accountant)
    ledger.charge(run=run_key, experiment=spec.name, epsilon=epsilon, delta=dp.target_delta, steps=steps, budget=site.budget,
                  rounds=(previous.rounds if previous else 0) + 1, last_round=server_round or 0,
                  calibrated=(noise, calibration))
    return noise, {"epsilon": epsilon, "noise-multiplier": noise, "budget-left": site.budget - ledger.spent()}


def _calibrated(dp: DPConfig, previous: LedgerEntry | None, q: float, total_steps: int) -> tuple[float, str]:
    """The run's noise multiplier and what it was calibrated for: the one its ledger entry holds
    when that was calibrated for the same target, sample rate and steps (the search is most of
    a train task's CPU time, and every task is a fresh process), else searched now."""
    calibration = json.dumps({"epsilon": dp.target_epsilon, "sigma": dp.noise_multiplier, "delta": dp.target_delta,
                              "q": q, "steps": total_steps, "accountant": dp.accountant}, sort_keys=True)
    if previous is not None and previous.noise_multiplier is not None and previous.calibration == calibration:
        return previous.noise_multiplier, calibration
    return dp.noise_multiplier_for(sample_rate=q, total_steps=total_steps), calibration


def train_round(*, site: Site, spec: ExperimentSpec, encoder: Preprocessor, state: dict[str, Any], run_key: str,
                server_round: int, proximal_mu: float, class_weights: list[float] | None = None,
                clip_bound: float | None = None) -> RoundOutcome:
    """Charge the privacy ledger for this round, then train locally with DP-SGD.

    ``clip_bound`` (adaptive clipping) is the bound the hospitals ended the last round
    with, on average (the coordinator's ``clip-bound``); the first round starts from
    ``privacy.max_grad_norm``. ``class_weights`` (one per class, from the coordinator)
    weight each example's loss.

    Raises:
        BudgetExceededError: the round would exceed the hospital's budget; nothing trained.
    """
    plan = LocalRound(server_round=server_round, proximal_mu=proximal_mu, class_weights=class_weights,
                      clip_bound=clip_bound)
    return spec.modality.train_round(spec, site, encoder, state, plan, lambda n: charge_round(site, spec, n, run_key, server_round))


def evaluate_global(*, site: Site, spec: ExperimentSpec, encoder: Preprocessor, state: dict[str, Any]) -> dict[str, float]:
    """Metrics of the global model on the hospital's held-out part."""
    return spec.modality.evaluate(spec, site, encoder, state)


def val_scores(*, site: Site, spec: ExperimentSpec, encoder: Preprocessor, state: dict[str, Any]) -> tuple[Any, Any] | None:
    """Class probabilities ``(N, K)`` and labels of the global model on the hospital's val
    part; None when it has none. Never the test part."""
    return spec.modality.val_scores(spec, site, encoder, state)


def validation_aggregates(*, site: Site, spec: ExperimentSpec, encoder: Preprocessor, state: dict[str, Any],
                          class_scale: list[float] | None = None) -> dict[str, Any]:
    """The final model's validation aggregates on the hospital's held-out part (counts
    only: no patient row leaves the hospital).

    A binary model's aggregates also carry, under ``VAL_KEY``, the overall histograms of its
    scores on the val part (no subgroups), from which the coordinator chooses the decision
    threshold (:mod:`federation.imbalance`)."""
    aggregates = spec.modality.validation_aggregates(spec, site, encoder, state, class_scale)
    val = val_scores(site=site, spec=spec, encoder=encoder, state=state)
    if val is not None and val[0].shape[1] == 2:
        probs, labels = val
        aggregates[VAL_KEY] = local_aggregates(probs[:, 1], (labels == 1).astype(int), None, spec.validation.thresholds,
                                               min_cell=spec.validation.min_cell)
    return aggregates


def encoder_from_config(config: dict[str, Any], spec: ExperimentSpec) -> Preprocessor:
    """The federation's preprocessor, as the coordinator sent it in the round's config."""
    return spec.modality.preprocessor_from_json(spec, str(config["encoder"]))

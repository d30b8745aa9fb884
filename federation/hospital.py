"""What a hospital does for the coordinator: statistics, DP training rounds, evaluation.

Each entry point serves both modalities: tabular risk models here, image classifiers in
:mod:`federation.hospital_images` (the spec's ``data.modality`` decides).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from experiments.spec import ExperimentSpec
from federation.errors import FederationError, SitePolicyRefusal
from federation.imbalance import VAL_KEY
from federation.ledger import PrivacyLedger
from federation.site import Site
from training.categories import outside_declared
from training.tabular.contract import schema_fingerprint
from training.tabular.data import HospitalDataModule
from training.dp_statistics import dp_table_statistics
from training.fingerprint import dataset_fingerprint
from training.imaging.data import ImagePreprocessor
from training.dp_loop import LocalTrainingResult, sample_rate, steps_per_epoch
from training.tabular.local import evaluate_model, train_locally
from training.tabular.models import RiskModel, build_model
from training.tabular.preprocessing import FeatureEncoder
from training.privacy import DPConfig, epsilon_after
from training.tabular.validation import local_aggregates
from training.validation_cells import age_band
from training.imaging.vision import VisionModel, build_vision_model

__all__ = [
    "Preprocessor", "RoundOutcome", "build_spec_model", "charge_round", "clip_metrics", "encoder_from_config", "evaluate_global",
    "charge_statistics", "model_hparams", "report_subgroups", "site_dataset", "site_ledger", "site_statistics",
    "round_dp_config", "train_round", "val_scores", "validation_aggregates",
]

#: What the federation's statistics round builds and every round carries: the tabular
#: feature encoder, or the image preprocessor (size, channels, normalisation, classes).
Preprocessor = FeatureEncoder | ImagePreprocessor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundOutcome:
    """A finished local round: new weights and what it cost."""

    state: dict[str, torch.Tensor]
    metrics: dict[str, float]


def model_hparams(spec: ExperimentSpec) -> dict[str, Any]:
    """Hyperparameters of the spec's model, as :func:`training.tabular.models.build_model` takes them."""
    hparams: dict[str, Any] = {"lr": spec.training.learning_rate, "optimizer": spec.training.optimizer}
    if spec.model.kind == "mlp":
        hparams.update(hidden=tuple(spec.model.hidden), dropout=spec.model.dropout)
    if spec.is_imaging and spec.model.width is not None:
        hparams["width"] = spec.model.width
    return hparams


def build_spec_model(spec: ExperimentSpec, encoder: Preprocessor) -> RiskModel | VisionModel:
    """A fresh model of the spec's kind, shaped by the federation's encoder/preprocessor."""
    if isinstance(encoder, ImagePreprocessor):
        return build_vision_model(spec.model.kind, encoder.channels, encoder.num_classes, **model_hparams(spec))
    return build_model(spec.model.kind, encoder.input_dim, **model_hparams(spec))


def _data(site: Site, spec: ExperimentSpec, encoder: FeatureEncoder | None = None) -> HospitalDataModule:
    dm = HospitalDataModule(
        site.data_path, spec.data.contract, spec.training.batch_size, spec.data.test_fraction, spec.seed,
        val_fraction=getattr(spec.data, "val_fraction", 0.0),
    )
    dm.encoder = encoder
    return dm


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
    """Sufficient statistics and schema fingerprint of the hospital's training rows.

    With DP on (the spec's ``privacy.enabled``) the statistics are noised
    (:mod:`training.dp_statistics`) and charged to the ledger first; without, exact.

    Raises:
        BudgetExceededError: the hospital's budget for this dataset cannot pay for them.
        SitePolicyRefusal: the site's policy (node config ``statistics=refuse``) sends none.
    """
    if site.statistics == "refuse":
        raise SitePolicyRefusal(site.hospital_id, "the statistics round (node config statistics=refuse)")
    if spec.is_imaging:
        from federation import hospital_images

        return hospital_images.site_statistics(site, spec, run_key)
    dm = _data(site, spec)
    _log_undeclared(site, dm)
    if spec.privacy.enabled:
        charged = charge_statistics(site, spec, run_key or "unnamed-run")
        assert not spec.is_imaging
        stats = dp_table_statistics(dm.split.train, spec.data.contract, dict(spec.data.ranges),  # type: ignore[union-attr]
                                    epsilon=spec.privacy.statistics_epsilon, delta=spec.privacy.target_delta)
        stats["dp"]["spent"] = charged["epsilon"]
    else:
        stats = dm.statistics()
    return {
        "stats": stats,
        "fingerprint": schema_fingerprint(dm.split.train, spec.data.contract),
        "dataset": site_dataset(site),
    }


def _log_undeclared(site: Site, dm: HospitalDataModule) -> None:
    """The site's own log names its training values outside the declared lists, every one
    with its count (the coordinator's report names only values with enough patients)."""
    contract = dm.contract
    for column in contract.categorical:
        counts = dm.split.train[column].dropna().value_counts()
        outside = outside_declared({str(v): int(n) for v, n in counts.items()}, contract.declared(column))
        if outside:
            log.warning("%s: %s: values outside the declared list (encoded as other): %s", site.hospital_id, column,
                        ", ".join(f"{v!r} ({n})" for v, n in sorted(outside.items(), key=lambda kv: -kv[1])))


def _model(spec: ExperimentSpec, encoder: FeatureEncoder, state: dict[str, torch.Tensor]) -> RiskModel:
    model = build_model(spec.model.kind, encoder.input_dim, **model_hparams(spec))
    model.load_state_dict(state)
    return model


def round_dp_config(spec: ExperimentSpec, clip_bound: float | None) -> DPConfig:
    """The spec's DP settings for one round: with adaptive clipping, starting from the
    coordinator's ``clip_bound`` when it sent one (a positive finite number)."""
    dp = spec.privacy.dp_config
    if dp.enabled and dp.clipping == "adaptive" and clip_bound is not None and math.isfinite(clip_bound) and clip_bound > 0:
        return replace(dp, max_grad_norm=clip_bound)
    return dp


def clip_metrics(result: LocalTrainingResult) -> dict[str, float]:
    """The round's final adaptive clipping bound as the ``clip-bound`` metric (none for fixed)."""
    return {"clip-bound": result.clip_bound} if result.clip_bound is not None else {}


def charge_round(site: Site, spec: ExperimentSpec, n: int, run_key: str) -> tuple[float | None, dict[str, float]]:
    """Charge the hospital's privacy ledger for one round over ``n`` training examples.

    Returns the run's noise multiplier (None without DP) and the round's privacy metrics.

    Raises:
        BudgetExceededError: the round would exceed the hospital's budget; nothing charged.
    """
    dp = spec.privacy.dp_config
    if not dp.enabled:
        return None, {}
    batch = spec.training.batch_size
    q = sample_rate(n, batch)
    round_steps = spec.training.local_epochs * steps_per_epoch(n, batch)
    noise = dp.noise_multiplier_for(sample_rate=q, total_steps=round_steps * spec.training.rounds)
    ledger = site_ledger(site)
    previous = ledger.entry(run_key)
    steps = (previous.steps if previous else 0) + round_steps
    epsilon = epsilon_after(noise_multiplier=noise, sample_rate=q, steps=steps, delta=dp.target_delta, accountant=dp.accountant)
    ledger.charge(run=run_key, experiment=spec.name, epsilon=epsilon, delta=dp.target_delta, steps=steps, budget=site.budget,
                  rounds=(previous.rounds if previous else 0) + 1)
    return noise, {"epsilon": epsilon, "noise-multiplier": noise, "budget-left": site.budget - ledger.spent()}


def train_round(
    *,
    site: Site,
    spec: ExperimentSpec,
    encoder: Preprocessor,
    state: dict[str, torch.Tensor],
    run_key: str,
    server_round: int,
    proximal_mu: float,
    class_weights: list[float] | None = None,
    clip_bound: float | None = None,
) -> RoundOutcome:
    """Charge the privacy ledger for this round, then train locally with DP-SGD.

    ``clip_bound`` (adaptive clipping) is the bound the hospitals ended the last round
    with, on average (the coordinator's ``clip-bound``); the first round starts from
    ``privacy.max_grad_norm``.

    ``class_weights`` (one per class, from the coordinator: the spec's, or ``balanced`` from
    the statistics round's federation-wide counts) weight each example's loss.

    The noise is calibrated once per run, so that ``rounds`` rounds spend the spec's
    target epsilon; the ledger keeps this run's running total (steps and epsilon), so a
    restarted hospital resumes its accounting where it was.

    Raises:
        BudgetExceededError: the round would exceed the hospital's budget; nothing trained.
    """
    if isinstance(encoder, ImagePreprocessor):
        from federation import hospital_images

        return hospital_images.train_round(site=site, spec=spec, preprocessor=encoder, state=state, run_key=run_key,
                                           server_round=server_round, proximal_mu=proximal_mu,
                                           class_weights=class_weights, clip_bound=clip_bound)
    started = time.perf_counter()
    dm = _data(site, spec, encoder)
    train_data = dm.dataset("train")
    n, batch = len(train_data), spec.training.batch_size
    dp = round_dp_config(spec, clip_bound)
    noise, privacy = charge_round(site, spec, n, run_key)
    metrics: dict[str, float] = {"num-examples": float(n), **privacy}
    model = _model(spec, encoder, state)
    result = train_locally(
        model,
        train_data,
        epochs=spec.training.local_epochs,
        batch_size=batch,
        dp=dp,
        noise_multiplier=noise,
        proximal_mu=proximal_mu,
        seed=spec.seed * 100_003 + server_round,
        class_weights=class_weights,
    )
    metrics.update({"train-loss": result.loss, "train-seconds": result.seconds, "steps": float(result.steps),
                    "handler-seconds": time.perf_counter() - started, **clip_metrics(result)})
    log.info("%s round %d: loss %.4f eps %s", site.hospital_id, server_round, result.loss, metrics.get("epsilon"))
    return RoundOutcome(model.state_dict(), metrics)


def evaluate_global(*, site: Site, spec: ExperimentSpec, encoder: Preprocessor, state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Metrics of the global model on the hospital's held-out rows."""
    if isinstance(encoder, ImagePreprocessor):
        from federation import hospital_images

        return hospital_images.evaluate_global(site=site, spec=spec, preprocessor=encoder, state=state)
    started = time.perf_counter()
    dm = _data(site, spec, encoder)
    test = dm.dataset("test")
    model = _model(spec, encoder, state)
    metrics = evaluate_model(model, test)
    return {"num-examples": float(len(test)), **metrics, "handler-seconds": time.perf_counter() - started}


def validation_aggregates(*, site: Site, spec: ExperimentSpec, encoder: Preprocessor,
                          state: dict[str, torch.Tensor], class_scale: list[float] | None = None) -> dict[str, Any]:
    """The final model's validation aggregates on the hospital's held-out rows: binned
    score counts, exact sums and confusion counts, overall and per subgroup (small cells
    suppressed). Counts only: no patient row leaves the hospital.

    A binary model's aggregates also carry, under ``"val"``, the overall histograms of its
    scores on the val rows (no subgroups), from which the coordinator chooses the decision
    threshold (:mod:`federation.imbalance`). A multi-class image model's carry, under
    ``"served_confusion"``, the confusion matrix of the labels ``class_scale`` (the prior
    correction the coordinator sends) serves on the test images."""
    if isinstance(encoder, ImagePreprocessor):
        from federation import hospital_images

        aggregates = hospital_images.validation_aggregates(site=site, spec=spec, preprocessor=encoder, state=state,
                                                           class_scale=class_scale)
    else:
        test = _data(site, spec, encoder).split.test
        model = _model(spec, encoder, state)
        risk = model.predict_proba(torch.from_numpy(encoder.encode(test))).numpy().astype(float)
        label = test[spec.data.label].to_numpy().astype(int)
        aggregates = local_aggregates(risk, label, report_subgroups(test, spec), spec.validation.thresholds,
                                      min_cell=spec.validation.min_cell)
    val = val_scores(site=site, spec=spec, encoder=encoder, state=state)
    if val is not None and val[0].shape[1] == 2:
        probs, labels = val
        aggregates[VAL_KEY] = local_aggregates(probs[:, 1], (labels == 1).astype(int), None, spec.validation.thresholds,
                                               min_cell=spec.validation.min_cell)
    return aggregates


def val_scores(*, site: Site, spec: ExperimentSpec, encoder: Preprocessor,
               state: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray] | None:
    """Class probabilities ``(N, K)`` and labels of the global model on the hospital's val
    rows (a risk model's as ``[1 - p, p]``); None when it has no val rows. Never the test rows."""
    if isinstance(encoder, ImagePreprocessor):
        from federation import hospital_images

        return hospital_images.val_scores(site=site, spec=spec, preprocessor=encoder, state=state)
    val = getattr(_data(site, spec, encoder).split, "val", None)
    if val is None or len(val) == 0:
        return None
    risk = _model(spec, encoder, state).predict_proba(torch.from_numpy(encoder.encode(val))).numpy().astype(float)
    return np.column_stack([1.0 - risk, risk]), val[spec.data.label].to_numpy().astype(np.int64)


def report_subgroups(frame: pd.DataFrame, spec: ExperimentSpec) -> dict[str, list[str | None]]:
    """Each patient's subgroup per the spec's ``validation.subgroups``: a categorical
    column's value, or the age band of a numeric one (None where missing)."""
    subgroups: dict[str, list[str | None]] = {}
    for column in spec.validation.subgroup_columns(spec.data):
        values = frame[column]
        if column in spec.data.numeric:
            subgroups[f"{column}_band" if column != "age" else "age_band"] = [age_band(v) for v in values]
        else:
            subgroups[column] = [None if pd.isna(v) else str(v) for v in values]
    return subgroups


def encoder_from_config(config: dict[str, Any], spec: ExperimentSpec) -> Preprocessor:
    """The federation's encoder (tabular) or image preprocessor, as the coordinator sent it."""
    if spec.is_imaging:
        return ImagePreprocessor.from_json(str(config["encoder"]))
    return FeatureEncoder.from_json(str(config["encoder"]))

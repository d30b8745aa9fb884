"""A hospital's tabular work: statistics, DP training rounds, evaluation and validation aggregates."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from training.categories import outside_declared
from training.local_rounds import clip_metrics, round_dp_config, round_seed
from training.modality import LocalRound, LocalSite, RoundCharge, RoundOutcome, StatisticsCharge
from training.tabular.contract import schema_fingerprint
from training.tabular.data import HospitalDataModule
from training.tabular.dp_statistics import dp_table_statistics
from training.tabular.local import evaluate_model, train_locally
from training.tabular.models import RiskModel, build_model
from training.tabular.preprocessing import FeatureEncoder
from training.tabular.reference import FEATURES_KEY, local_feature_counts
from training.tabular.validation import local_aggregates
from training.validation_cells import age_band

__all__ = ["evaluate", "local_statistics", "model_hparams", "report_subgroups", "train_round", "val_scores",
           "validation_aggregates"]

log = logging.getLogger(__name__)


def model_hparams(spec: Any) -> dict[str, Any]:
    """Hyperparameters of the spec's model, as :func:`training.tabular.models.build_model` takes them."""
    return {"lr": spec.training.learning_rate, "optimizer": spec.training.optimizer, **spec.model.hparams()}


def _data(site: LocalSite, spec: Any, encoder: FeatureEncoder | None = None) -> HospitalDataModule:
    dm = HospitalDataModule(site.data_path, spec.data.contract, spec.training.batch_size, spec.data.test_fraction,
                            spec.seed, val_fraction=spec.data.val_fraction)
    dm.encoder = encoder
    return dm


def _model(spec: Any, encoder: FeatureEncoder, state: dict[str, torch.Tensor]) -> RiskModel:
    model = build_model(spec.model.kind, encoder.input_dim, **model_hparams(spec))
    model.load_state_dict(state)
    return model


def local_statistics(spec: Any, site: LocalSite, charge: StatisticsCharge) -> dict[str, Any]:
    """Sufficient statistics and schema fingerprint of the site's training rows: noised
    (:mod:`training.tabular.dp_statistics`) and charged first with DP on; exact without."""
    dm = _data(site, spec)
    _log_undeclared(site, dm)
    if spec.privacy.enabled:
        spent = charge()
        stats = dp_table_statistics(dm.split.train, spec.data.contract, dict(spec.data.ranges),
                                    epsilon=spec.privacy.statistics_epsilon, delta=spec.privacy.target_delta)
        stats["dp"]["spent"] = spent
    else:
        stats = dm.statistics()
    return {"stats": stats, "fingerprint": schema_fingerprint(dm.split.train, spec.data.contract)}


def _log_undeclared(site: LocalSite, dm: HospitalDataModule) -> None:
    """The site's own log names its training values outside the declared lists, every one
    with its count (the coordinator's report names only values with enough patients)."""
    contract = dm.contract
    for column in contract.categorical:
        counts = dm.split.train[column].dropna().value_counts()
        outside = outside_declared({str(v): int(n) for v, n in counts.items()}, contract.declared(column))
        if outside:
            log.warning("%s: %s: values outside the declared list (encoded as other): %s", site.hospital_id, column,
                        ", ".join(f"{v!r} ({n})" for v, n in sorted(outside.items(), key=lambda kv: -kv[1])))


def train_round(spec: Any, site: LocalSite, encoder: FeatureEncoder, state: dict[str, torch.Tensor], plan: LocalRound,
                charge: RoundCharge) -> RoundOutcome:
    """Charge the round, then train the risk model on the site's training rows with DP-SGD."""
    started = time.perf_counter()
    train_data = _data(site, spec, encoder).dataset("train")
    n = len(train_data)
    dp = round_dp_config(spec, plan.clip_bound)
    noise, privacy = charge(n)
    metrics: dict[str, float] = {"num-examples": float(n), **privacy}
    model = _model(spec, encoder, state)
    result = train_locally(model, train_data, epochs=spec.training.local_epochs, batch_size=spec.training.batch_size,
                           dp=dp, noise_multiplier=noise, proximal_mu=plan.proximal_mu,
                           seed=round_seed(spec, plan.server_round), class_weights=plan.class_weights)
    metrics.update({"train-loss": result.loss, "train-seconds": result.seconds, "steps": float(result.steps),
                    "handler-seconds": time.perf_counter() - started, **clip_metrics(result.clip_bound)})
    log.info("%s round %d: loss %.4f eps %s", site.hospital_id, plan.server_round, result.loss, metrics.get("epsilon"))
    return RoundOutcome(model.state_dict(), metrics)


def evaluate(spec: Any, site: LocalSite, encoder: FeatureEncoder, state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Metrics of the global model on the site's held-out rows."""
    started = time.perf_counter()
    test = _data(site, spec, encoder).dataset("test")
    metrics = evaluate_model(_model(spec, encoder, state), test)
    return {"num-examples": float(len(test)), **metrics, "handler-seconds": time.perf_counter() - started}


def validation_aggregates(spec: Any, site: LocalSite, encoder: FeatureEncoder,
                          state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Binned score counts, exact sums and confusion counts of the final model on the site's
    held-out rows, overall and per subgroup (small cells suppressed), and under ``FEATURES_KEY`` the
    rows counted per feature slot for the monitoring reference (:mod:`training.tabular.reference`)."""
    test = _data(site, spec, encoder).split.test
    model = _model(spec, encoder, state)
    risk = model.predict_proba(torch.from_numpy(encoder.encode(test))).numpy().astype(float)
    label = test[spec.data.label].to_numpy().astype(int)
    aggregates = local_aggregates(risk, label, report_subgroups(test, spec), spec.validation.thresholds,
                                  min_cell=spec.validation.min_cell)
    aggregates[FEATURES_KEY] = local_feature_counts(test, encoder, min_cell=spec.validation.min_cell)  # monitoring reference
    return aggregates


def val_scores(spec: Any, site: LocalSite, encoder: FeatureEncoder,
               state: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray] | None:
    """Class probabilities ``[1 - p, p]`` and labels on the site's val rows; None without any."""
    val = getattr(_data(site, spec, encoder).split, "val", None)
    if val is None or len(val) == 0:
        return None
    risk = _model(spec, encoder, state).predict_proba(torch.from_numpy(encoder.encode(val))).numpy().astype(float)
    return np.column_stack([1.0 - risk, risk]), val[spec.data.label].to_numpy().astype(np.int64)


def report_subgroups(frame: pd.DataFrame, spec: Any) -> dict[str, list[str | None]]:
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

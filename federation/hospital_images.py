"""What a hospital does for an image classifier: pixel statistics, DP training rounds,
evaluation and validation aggregates on its own images (which never leave it).

Called through :mod:`federation.hospital`, which dispatches on the spec's modality.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.spec import ExperimentSpec, ImageDataSpec
from federation.hospital import (
    RoundOutcome,
    build_spec_model,
    charge_round,
    charge_statistics,
    clip_metrics,
    round_dp_config,
    site_dataset,
)
from federation.imbalance import SERVED_KEY, served_confusion
from federation.site import Site
from training.imaging.data import (
    ImageDataError,
    ImagePreprocessor,
    ImageSplit,
    class_counts,
    image_fingerprint,
    load_image_split,
    pixel_statistics,
)
from training.dp_statistics import dp_pixel_statistics
from training.validation_cells import age_band
from training.imaging.validation import local_multiclass_aggregates
from training.imaging.batches import Augment
from training.imaging.local import evaluate_vision, predict_vision, train_vision_locally
from training.imaging.vision import VisionModel

__all__ = ["evaluate_global", "image_subgroups", "site_statistics", "train_round", "val_scores", "validation_aggregates"]

log = logging.getLogger(__name__)


def _data(spec: ExperimentSpec) -> ImageDataSpec:
    assert isinstance(spec.data, ImageDataSpec)
    return spec.data


def _split(site: Site, spec: ExperimentSpec) -> ImageSplit:
    data = _data(spec)
    return load_image_split(site.data_path, data.contract, data.test_fraction, spec.seed,
                            val_fraction=data.val_fraction)


def _model(spec: ExperimentSpec, preprocessor: ImagePreprocessor, state: dict[str, torch.Tensor]) -> VisionModel:
    model = build_spec_model(spec, preprocessor)
    model.load_state_dict(state)
    assert isinstance(model, VisionModel)
    return model


def site_statistics(site: Site, spec: ExperimentSpec, run_key: str = "") -> dict[str, Any]:
    """Pixel sums (for the pooled normalisation) and class counts of the training images:
    noised and charged to the ledger with DP on, exact without."""
    split = _split(site, spec)
    data = _data(spec)
    if spec.privacy.enabled:
        charged = charge_statistics(site, spec, run_key or "unnamed-run")
        stats = dp_pixel_statistics(split.train_images, split.train_labels, len(data.classes),
                                    epsilon=spec.privacy.statistics_epsilon, delta=spec.privacy.target_delta)
        stats["dp"]["spent"] = charged["epsilon"]
    else:
        stats = {"pixels": pixel_statistics(split.train_images),
                 "classes": class_counts(split.train_labels, len(data.classes))}
    return {"stats": stats, "fingerprint": image_fingerprint(data.contract), "dataset": site_dataset(site)}


def train_round(*, site: Site, spec: ExperimentSpec, preprocessor: ImagePreprocessor, state: dict[str, torch.Tensor],
                run_key: str, server_round: int, proximal_mu: float, class_weights: list[float] | None = None,
                clip_bound: float | None = None) -> RoundOutcome:
    """Charge the privacy ledger, then train on the local images (GPU when present), each
    image's loss weighted by its class's ``class_weights`` (None: unweighted); adaptive
    clipping starts from ``clip_bound`` (see :func:`federation.hospital.train_round`)."""
    started = time.perf_counter()
    split = _split(site, spec)
    n = len(split.train_labels)
    noise, privacy = charge_round(site, spec, n, run_key)
    model = _model(spec, preprocessor, state)
    augment = _data(spec).augment
    result = train_vision_locally(
        model,
        split.train_images,
        split.train_labels,
        mean=preprocessor.mean,
        std=preprocessor.std,
        epochs=spec.training.local_epochs,
        batch_size=spec.training.batch_size,
        dp=round_dp_config(spec, clip_bound),
        noise_multiplier=noise,
        proximal_mu=proximal_mu,
        augment=Augment(**augment.model_dump()) if augment is not None else None,
        seed=spec.seed * 100_003 + server_round,
        class_weights=class_weights,
    )
    metrics = {"num-examples": float(n), **privacy, "train-loss": result.loss, "train-seconds": result.seconds,
               "steps": float(result.steps), "images-per-second": n * spec.training.local_epochs / max(result.seconds, 1e-9),
               "handler-seconds": time.perf_counter() - started, **clip_metrics(result)}
    log.info("%s round %d: loss %.4f eps %s", site.hospital_id, server_round, result.loss, privacy.get("epsilon"))
    return RoundOutcome(model.state_dict(), metrics)


def evaluate_global(*, site: Site, spec: ExperimentSpec, preprocessor: ImagePreprocessor,
                    state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss, accuracy and macro AUROC of the global model on the held-out images."""
    started = time.perf_counter()
    split = _split(site, spec)
    model = _model(spec, preprocessor, state)
    metrics = evaluate_vision(model, split.test_images, split.test_labels, mean=preprocessor.mean, std=preprocessor.std)
    # every hospital answers the same keys (Flower refuses to aggregate otherwise): a held-out
    # part with one class only (a small, imbalanced site) has no AUROC, sent as NaN and skipped
    metrics.setdefault("auroc", math.nan)
    return {"num-examples": float(len(split.test_labels)), **metrics, "handler-seconds": time.perf_counter() - started}


def validation_aggregates(*, site: Site, spec: ExperimentSpec, preprocessor: ImagePreprocessor,
                          state: dict[str, torch.Tensor], class_scale: list[float] | None = None) -> dict[str, Any]:
    """Multi-class validation aggregates on the held-out images (counts only); with
    ``class_scale``, also the confusion matrix of the prior-corrected labels (``served_confusion``)."""
    split = _split(site, spec)
    model = _model(spec, preprocessor, state)
    probs = predict_vision(model, split.test_images, mean=preprocessor.mean, std=preprocessor.std)
    aggregates = local_multiclass_aggregates(probs, split.test_labels, list(preprocessor.classes),
                                             image_subgroups(split, spec, site.data_path), min_cell=spec.validation.min_cell)
    if class_scale is not None and len(class_scale) == probs.shape[1]:
        aggregates[SERVED_KEY] = served_confusion(probs, split.test_labels, class_scale)
    return aggregates


def val_scores(*, site: Site, spec: ExperimentSpec, preprocessor: ImagePreprocessor,
               state: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray] | None:
    """Class probabilities and labels of the global model on the val images; None without any."""
    split = _split(site, spec)
    images, labels = getattr(split, "val_images", None), getattr(split, "val_labels", None)
    if images is None or labels is None or len(labels) == 0:
        return None
    probs = predict_vision(_model(spec, preprocessor, state), images, mean=preprocessor.mean, std=preprocessor.std)
    return probs, np.asarray(labels, dtype=np.int64)


def image_subgroups(split: ImageSplit, spec: ExperimentSpec, source: Path) -> dict[str, list[str | None]]:
    """Each held-out image's subgroup per ``validation.subgroups`` (metadata columns): the
    value, or the age band of ``age`` (None where missing).

    Raises:
        ImageDataError: an age that is not a number, naming the hospital's data (``source``).
    """
    subgroups: dict[str, list[str | None]] = {}
    for column in spec.validation.subgroup_columns(_data(spec)):
        values = (split.test_metadata or {}).get(column, ())
        if column == "age":
            try:
                subgroups["age_band"] = [None if v is None else age_band(float(v)) for v in values]
            except ValueError as err:
                raise ImageDataError(source, f"column 'age' holds a value that is not a number ({err})") from err
        else:
            subgroups[column] = list(values)
    return subgroups

"""A hospital's image work: pixel statistics, DP training rounds, evaluation and validation aggregates."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.decision import Decision
from training.errors import ImageDataError
from training.imaging.batches import Augment
from training.imaging.data import image_fingerprint, load_image_split
from training.imaging.dp_statistics import dp_pixel_statistics
from training.imaging.local import evaluate_vision, predict_vision, train_vision_locally
from training.imaging.preprocessing import ImagePreprocessor, class_counts, pixel_statistics
from training.imaging.splits import ImageSplit
from training.imaging.validation import local_multiclass_aggregates
from training.imaging.vision import VisionModel, build_vision_model
from training.local_rounds import clip_metrics, round_dp_config, round_seed
from training.modality import SERVED_KEY, LocalRound, LocalSite, RoundCharge, RoundOutcome, StatisticsCharge
from training.validation_cells import age_band

__all__ = ["evaluate", "image_subgroups", "local_statistics", "model_hparams", "served_confusion", "train_round",
           "val_scores", "validation_aggregates"]

log = logging.getLogger(__name__)


def model_hparams(spec: Any) -> dict[str, Any]:
    """Hyperparameters of the spec's image model, as :func:`build_vision_model` takes them."""
    return {"lr": spec.training.learning_rate, "optimizer": spec.training.optimizer, **spec.model.hparams()}


def build_model(spec: Any, preprocessor: ImagePreprocessor) -> VisionModel:
    """A fresh image classifier of the spec's kind, shaped by the federation's preprocessor."""
    return build_vision_model(spec.model.kind, preprocessor.channels, preprocessor.num_classes, **model_hparams(spec))


def _split(site: LocalSite, spec: Any) -> ImageSplit:
    data = spec.data
    return load_image_split(site.data_path, data.contract, data.test_fraction, spec.seed, val_fraction=data.val_fraction)


def _model(spec: Any, preprocessor: ImagePreprocessor, state: dict[str, torch.Tensor]) -> VisionModel:
    model = build_model(spec, preprocessor)
    model.load_state_dict(state)
    return model


def local_statistics(spec: Any, site: LocalSite, charge: StatisticsCharge) -> dict[str, Any]:
    """Pixel sums (for the pooled normalisation) and class counts of the training images:
    noised and charged first with DP on, exact without."""
    split = _split(site, spec)
    classes = len(spec.data.classes)
    if spec.privacy.enabled:
        spent = charge()
        stats = dp_pixel_statistics(split.train_images, split.train_labels, classes,
                                    epsilon=spec.privacy.statistics_epsilon, delta=spec.privacy.target_delta)
        stats["dp"]["spent"] = spent
    else:
        stats = {"pixels": pixel_statistics(split.train_images), "classes": class_counts(split.train_labels, classes)}
    return {"stats": stats, "fingerprint": image_fingerprint(spec.data.contract)}


def train_round(spec: Any, site: LocalSite, preprocessor: ImagePreprocessor, state: dict[str, torch.Tensor],
                plan: LocalRound, charge: RoundCharge) -> RoundOutcome:
    """Charge the round, then train on the local images (GPU when present), each image's
    loss weighted by its class's weight (None: unweighted)."""
    started = time.perf_counter()
    split = _split(site, spec)
    n = len(split.train_labels)
    noise, privacy = charge(n)
    model = _model(spec, preprocessor, state)
    augment = spec.data.augment
    result = train_vision_locally(
        model, split.train_images, split.train_labels, mean=preprocessor.mean, std=preprocessor.std,
        epochs=spec.training.local_epochs, batch_size=spec.training.batch_size,
        dp=round_dp_config(spec, plan.clip_bound), noise_multiplier=noise, proximal_mu=plan.proximal_mu,
        augment=Augment(**augment.model_dump()) if augment is not None else None,
        seed=round_seed(spec, plan.server_round), class_weights=plan.class_weights,
    )
    metrics = {"num-examples": float(n), **privacy, "train-loss": result.loss, "train-seconds": result.seconds,
               "steps": float(result.steps), "images-per-second": n * spec.training.local_epochs / max(result.seconds, 1e-9),
               "handler-seconds": time.perf_counter() - started, **clip_metrics(result.clip_bound)}
    log.info("%s round %d: loss %.4f eps %s", site.hospital_id, plan.server_round, result.loss, privacy.get("epsilon"))
    return RoundOutcome(model.state_dict(), metrics)


def evaluate(spec: Any, site: LocalSite, preprocessor: ImagePreprocessor, state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss, accuracy and macro AUROC of the global model on the held-out images."""
    started = time.perf_counter()
    split = _split(site, spec)
    model = _model(spec, preprocessor, state)
    metrics = evaluate_vision(model, split.test_images, split.test_labels, mean=preprocessor.mean, std=preprocessor.std)
    # every hospital answers the same keys (Flower refuses to aggregate otherwise): a held-out
    # part with one class only (a small, imbalanced site) has no AUROC, sent as NaN and skipped
    metrics.setdefault("auroc", math.nan)
    return {"num-examples": float(len(split.test_labels)), **metrics, "handler-seconds": time.perf_counter() - started}


def validation_aggregates(spec: Any, site: LocalSite, preprocessor: ImagePreprocessor, state: dict[str, torch.Tensor],
                          class_scale: list[float] | None) -> dict[str, Any]:
    """Multi-class validation aggregates on the held-out images (counts only); with
    ``class_scale``, also the confusion matrix of the prior-corrected labels (``SERVED_KEY``)."""
    split = _split(site, spec)
    model = _model(spec, preprocessor, state)
    probs = predict_vision(model, split.test_images, mean=preprocessor.mean, std=preprocessor.std)
    aggregates = local_multiclass_aggregates(probs, split.test_labels, list(preprocessor.classes),
                                             image_subgroups(split, spec, site.data_path), min_cell=spec.validation.min_cell)
    if class_scale is not None and len(class_scale) == probs.shape[1]:
        aggregates[SERVED_KEY] = served_confusion(probs, split.test_labels, class_scale)
    return aggregates


def val_scores(spec: Any, site: LocalSite, preprocessor: ImagePreprocessor,
               state: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray] | None:
    """Class probabilities and labels of the global model on the val images; None without any."""
    split = _split(site, spec)
    images, labels = getattr(split, "val_images", None), getattr(split, "val_labels", None)
    if images is None or labels is None or len(labels) == 0:
        return None
    probs = predict_vision(_model(spec, preprocessor, state), images, mean=preprocessor.mean, std=preprocessor.std)
    return probs, np.asarray(labels, dtype=np.int64)


def served_confusion(probs: np.ndarray, labels: np.ndarray, class_scale: Sequence[float]) -> list[list[int]]:
    """A hospital's confusion matrix (rows: true class) of the labels the prior correction
    serves (``argmax_k p_k * class_scale[k]``); counts only, like the validation aggregates."""
    k = len(class_scale)
    served = Decision(rule="prior", class_scale=tuple(class_scale)).labels(probs)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    return np.bincount(y * k + served, minlength=k * k).reshape(k, k).tolist()


def image_subgroups(split: ImageSplit, spec: Any, source: Path) -> dict[str, list[str | None]]:
    """Each held-out image's subgroup per ``validation.subgroups`` (metadata columns): the
    value, or the age band of ``age`` (None where missing).

    Raises:
        ImageDataError: an age that is not a number, naming the hospital's data (``source``).
    """
    subgroups: dict[str, list[str | None]] = {}
    for column in spec.validation.subgroup_columns(spec.data):
        values = (split.test_metadata or {}).get(column, ())
        if column == "age":
            try:
                subgroups["age_band"] = [None if v is None else age_band(float(v)) for v in values]
            except ValueError as err:
                raise ImageDataError(source, f"column 'age' holds a value that is not a number ({err})") from err
        else:
            subgroups[column] = list(values)
    return subgroups

"""The coordinator's image work: the federation's preprocessor and the multi-class validation report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.imaging.preprocessing import ImagePreprocessor
from training.imaging.validation import build_multiclass_report, merge_multiclass_aggregates

__all__ = ["federated_preprocessor", "report_meta", "validation_report"]


def federated_preprocessor(spec: Any, stats: list[Mapping[str, Any]]) -> ImagePreprocessor:
    """Size, channels and classes from the spec; the normalisation given there or pooled from the pixel sums."""
    data = spec.data
    return ImagePreprocessor.from_statistics(
        [s["pixels"] for s in stats], size=data.image_size, channels=data.channels, classes=tuple(data.classes),
        mean=None if data.mean is None else tuple(data.mean), std=None if data.std is None else tuple(data.std),
    )


def validation_report(parts: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The merged multi-class validation aggregates and the report built from them (``modality``: images)."""
    merged = merge_multiclass_aggregates(parts)
    return merged, {**build_multiclass_report(merged), "modality": "images"}


def report_meta(spec: Any, preprocessor: ImagePreprocessor, class_counts: Mapping[str, list[int]]) -> dict[str, Any]:
    """The model card's task, classes, input (size, colour, normalisation) and class counts."""
    colour = "grayscale" if preprocessor.channels == 1 else "RGB"
    norm = ", ".join(f"{m:.3f}/{s:.3f}" for m, s in zip(preprocessor.mean, preprocessor.std, strict=True))
    return {"task": "multiclass", "classes": list(spec.data.classes), "modality": "images",
            "input": f"{preprocessor.size}x{preprocessor.size} {colour} images, normalised per channel (mean/std {norm})"
                     + ("; augmented in training" if spec.data.augment is not None else ""),
            "class_counts": dict(sorted(class_counts.items()))}

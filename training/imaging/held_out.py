"""``registry validate`` for images: the held-out images of a validator's data, scored and reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.errors import LocalValidationError
from training.held_out import HeldOut, LocalScores, Part, metric_text, refuse_all, training_hospital
from training.imaging.data import load_image_split
from training.imaging.splits import ImageSplit

__all__ = ["held_out_images", "score_held_out_images"]


def _csv_header(path: Path) -> list[str]:
    csv = path / "labels.csv" if path.is_dir() else path
    try:
        return list(pd.read_csv(csv, nrows=0, dtype=str).columns)
    except Exception:  # noqa: BLE001 - the loader names an unreadable file properly
        return []


def _gather(split: ImageSplit, parts: tuple[str, ...]) -> dict[str, Any]:
    """The ``test_*`` fields of a split holding ``parts`` of it (images, labels, metadata, patients)."""
    chosen = [split.part(p) for p in parts]
    ids = [getattr(split, f"{p}_patients") for p in parts]
    metadata = None if split.test_metadata is None else {
        c: tuple(v for _, _, m in chosen for v in (m or {}).get(c, ())) for c in split.test_metadata}
    return {"test_images": np.concatenate([images for images, _, _ in chosen]),
            "test_labels": np.concatenate([labels for _, labels, _ in chosen]),
            "test_metadata": metadata,
            "test_patients": None if any(i is None for i in ids) else tuple(p for i in ids for p in i)}


def held_out_images(path: Path | str, spec: Any, tags: dict[str, str],
                    part: Part = "test") -> tuple[ImageSplit, HeldOut]:
    """The images of ``path`` to score for ``registry validate``, as the ``test_*`` part of a split.

    * a ``.npz``: its ``test_*`` arrays (``--part val``: ``val_*``);
    * a folder whose ``labels.csv`` has the spec's split column: the images marked test;
    * one of the version's training datasets otherwise: the patients its run held out
      (the spec's ``test_fraction``, ``val_fraction`` and seed);
    * any other folder: every image (a validator's own data).

    ``part="all"`` scores every image, refused for a training dataset.

    Raises:
        LocalValidationError: the part asked for is empty or would hold training images.
        ImageDataError: the images break the contract.
    """
    data = spec.data
    source = Path(path)
    hospital = training_hospital(source, spec, tags)
    contract = data.contract
    is_npz = source.suffix.lower() == ".npz"
    has_column = not is_npz and data.split_column is not None and data.split_column in _csv_header(source)
    own = not is_npz and not has_column and hospital is None  # a validator's own folder: not split at all
    split = load_image_split(source, contract, data.test_fraction, spec.seed, val_fraction=data.val_fraction,
                             unsplit=own)
    total = sum(split.counts().values())
    if is_npz:
        origin = "the .npz"
    elif has_column:
        origin = f"labels.csv column '{data.split_column}'"
    elif hospital is not None:
        origin = f"the run's split of {hospital}'s patients (seed {spec.seed})"
    else:
        origin = None
    if part == "all" or origin is None:
        refuse_all(path, hospital, "images")
        if origin is None and part == "val":
            raise LocalValidationError(f"{path}: has no val part (not a .npz, no split column, not a training dataset "
                                       "of this version); leave --part out to score every image")
        parts = ("test",) if own else ("train", "val", "test")  # an unsplit folder holds everything in test
        what = ("every image: not one of this version's training datasets and no split in it" if origin is None
                else f"every part of {origin}, --part all")
    else:
        parts = (part,)
        if len(split.part(part)[1]) == 0:
            raise LocalValidationError(f"{path}: the {part} part of {origin} holds no images")
        what = f"the {part} part of {origin}"
        if hospital is not None:
            what += f", held out from {hospital}'s training"
    selected = dataclasses.replace(split, **_gather(split, parts))
    scored = len(selected.test_labels)
    return selected, HeldOut(scored, total - scored, what, hospital)


def score_held_out_images(spec: Any, split: ImageSplit, source: Path, scorer: Any) -> LocalScores:
    """Score the selected images (the split's ``test_*`` part) with the version's ``scorer``: the multi-class report."""
    from training.decision import decision_on_scores
    from training.imaging.hospital import image_subgroups
    from training.imaging.validation import local_multiclass_report

    classes = list(spec.data.classes)
    probs = scorer.predict(split.test_images)
    report = local_multiclass_report(probs, split.test_labels, classes, image_subgroups(split, spec, source),
                                     min_cell=spec.validation.min_cell)
    report["decision"] = decision_on_scores(scorer.decision, probs, split.test_labels)
    overall = report["overall"]
    summary = (f"({overall['n']} images): accuracy {metric_text(overall['accuracy'])}, balanced accuracy "
               f"{metric_text(overall['balanced_accuracy'])}, macro AUROC {metric_text(overall['auroc'])}, "
               f"ECE {metric_text(overall['ece'])}")
    return LocalScores(report, {"task": "multiclass", "classes": classes}, summary)

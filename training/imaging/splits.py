"""A hospital's images in three parts (train, val, test) and the rules that split them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from training.errors import ImageDataError
from training.split_parts import PART_NAMES, PARTS

__all__ = ["ImageSplit", "SplitSource", "column_split", "name_some", "patient_split", "split_values"]

_MAX_NAMED = 5

#: Where a split came from: the ``.npz`` file's parts, the ``labels.csv`` split column,
#: ``test_fraction``/``val_fraction`` of the patients at random, or none (``unsplit``: every
#: image in the test part, for a validator's own images).
SplitSource = Literal["npz", "column", "fraction", "unsplit"]

#: Spellings of a split column's values (after trimming and lower-casing).


@dataclass(frozen=True)
class ImageSplit:
    """A hospital's images as uint8 (N, C, H, W) arrays with int64 class indices, in three
    parts: train (trained on), val (model selection, never trained on) and test (held out).

    ``*_patients`` hold the patient id of each image (aligned with the images); None for a
    ``.npz`` file, which has no patient ids. ``*_metadata`` hold the contract's metadata
    columns of each part's images (None: no metadata). The val part is empty (zero images)
    when the data has none; ``source`` says where the split came from.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_patients: tuple[str, ...] | None
    test_patients: tuple[str, ...] | None
    test_metadata: dict[str, tuple[str | None, ...]] | None = None
    train_metadata: dict[str, tuple[str | None, ...]] | None = None
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    val_patients: tuple[str, ...] | None = None
    val_metadata: dict[str, tuple[str | None, ...]] | None = None
    source: SplitSource = "fraction"

    def __post_init__(self) -> None:
        if self.val_images is None:
            object.__setattr__(self, "val_images", np.zeros((0, *self.train_images.shape[1:]), np.uint8))
        if self.val_labels is None:
            object.__setattr__(self, "val_labels", np.zeros(0, np.int64))

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[str | None, ...]] | None]:
        """Images, labels and metadata of ``train``, ``val`` or ``test``."""
        if name not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}, got {name!r}")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels"), getattr(self, f"{name}_metadata")

    def counts(self) -> dict[str, int]:
        """Images per part: ``{"train": n, "val": n, "test": n}``."""
        return {name: len(self.part(name)[1]) for name in PARTS}


def name_some(items: Sequence[str], limit: int = _MAX_NAMED) -> str:
    """``"a, b, c"`` or ``"a, b, c, d, e and 7 more"``."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def split_values(csv_path: Path, values: pd.Series, column: str) -> np.ndarray:
    """The split column canonicalised to train/val/test; a blank or other value is refused."""
    canonical = values.str.lower().map(PART_NAMES)
    bad = np.flatnonzero(canonical.isna().to_numpy())
    if bad.size:
        row, raw = int(bad[0]) + 1, values.iloc[int(bad[0])]
        more = f" ({bad.size - 1} more row(s) too)" if bad.size > 1 else ""
        raise ImageDataError(csv_path, f"split value {raw!r} is not train, val or test{more}", column=column, row=row)
    return canonical.to_numpy(str)


def column_split(frame: pd.DataFrame, csv_path: Path, column: str) -> np.ndarray:
    """Each row's part from the split column: no patient in two parts, train and test not empty."""
    per_patient = frame.groupby("patient", sort=False)["part"].unique()
    straddling = [f"{p} ({', '.join(sorted(v))})" for p, v in per_patient.items() if len(v) > 1]
    if straddling:
        raise ImageDataError(csv_path, f"{len(straddling)} patient(s) in more than one part: {name_some(straddling)}",
                             column=column)
    for part in ("train", "test"):
        if not (frame["part"] == part).any():
            raise ImageDataError(csv_path, f"no image marked {part}; the training and the test part need images",
                                 column=column)
    return frame["part"].to_numpy(str)


def _hold_out(patients: np.ndarray, strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The patients held out (``fraction`` of them), stratified by class where possible."""
    try:
        _, out = train_test_split(patients, test_size=fraction, random_state=seed, stratify=strata)
    except ValueError:  # a class with a single patient, or fewer held-out patients than classes
        _, out = train_test_split(patients, test_size=fraction, random_state=seed)
    return np.asarray(out)


def patient_split(frame: pd.DataFrame, csv_path: Path, test_fraction: float, val_fraction: float,
                  seed: int) -> np.ndarray:
    """Each row's part: whole patients held out (test, then val), stratified by their usual label.

    The test patients do not depend on ``val_fraction``: adding a val part only moves
    training patients.
    """
    usual = pd.crosstab(frame["patient"], frame["label"]).idxmax(axis=1)  # ties: the lowest class
    needed = 3 if val_fraction > 0 else 2
    if len(usual) < needed:
        raise ImageDataError(csv_path, f"{len(usual)} patient(s); a split in {needed} parts needs at least {needed}")
    patients, strata = usual.index.to_numpy(), usual.to_numpy()
    test = set(_hold_out(patients, strata, test_fraction, seed).tolist())
    part = np.where(frame["patient"].isin(test).to_numpy(), "test", "train").astype(object)
    if val_fraction > 0:
        rest = ~np.isin(patients, list(test))
        if rest.sum() < 2:
            raise ImageDataError(csv_path, f"{int(rest.sum())} patient(s) left after the test part; "
                                 "val_fraction needs at least two")
        share = min(val_fraction / (1.0 - test_fraction), 0.5 if rest.sum() == 2 else 1 - 1 / rest.sum())
        val = set(_hold_out(patients[rest], strata[rest], share, seed + 1).tolist())
        part[frame["patient"].isin(val).to_numpy()] = "val"
    return part.astype(str)

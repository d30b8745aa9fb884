"""What ``bioverse registry validate`` scores: only data the version did not train on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from experiments.errors import LocalValidationError
from experiments.spec import ExperimentSpec
from training.fingerprint import dataset_fingerprint
from training.imaging.data import load_image_split
from training.imaging.spec import ImageDataSpec
from training.imaging.splits import ImageSplit
from training.tabular.contract import DataContract, load_hospital_table
from training.tabular.data import load_split
from training.tabular.spec import DataSpec

__all__ = ["PARTS", "HeldOut", "Part", "held_out_images", "held_out_rows", "training_hospital"]

Part = Literal["test", "val", "all"]
#: The parts ``registry validate --part`` accepts; ``test`` is the default.
PARTS: tuple[str, ...] = ("test", "val", "all")


@dataclass(frozen=True)
class HeldOut:
    """Which rows of a validator's file were scored, and why.

    Attributes:
        scored: Rows (patients or images) scored.
        excluded: Rows of the file left out (the parts the version trained or selected on).
        what: What was scored, in words (``the test part of the .npz``).
        hospital: The version's training hospital whose data the file is, if it is one.
    """

    scored: int
    excluded: int
    what: str
    hospital: str | None = None

    def sentence(self, unit: str) -> str:
        """``scored 120 held-out images (the test part of the .npz); 380 excluded``."""
        excluded = f"; {self.excluded} {unit} excluded" if self.excluded else "; none excluded"
        return f"scored {self.scored} held-out {unit} ({self.what}){excluded}"


def training_hospital(path: Path | str, spec: ExperimentSpec, tags: dict[str, str]) -> str | None:
    """The version's training hospital whose data ``path`` is, or None.

    Matched by content first (the version's ``dataset.<hospital>`` tags hold each
    hospital's :func:`~training.fingerprint.dataset_fingerprint`; a ``labels.csv`` stands
    for its folder), then by the path the run's spec gave the hospital. A hospital that
    named its dataset with ``dataset-id`` is recognised by path only.
    """
    source = Path(path).resolve()
    candidates = [source, source.parent] if source.name.lower() == "labels.csv" else [source]
    datasets = {tag.removeprefix("dataset."): value for tag, value in tags.items() if tag.startswith("dataset.")}
    if datasets:
        for candidate in candidates:
            try:
                fingerprint = dataset_fingerprint(candidate)
            except (OSError, ValueError):
                continue
            found = sorted(h for h, d in datasets.items() if d == fingerprint)
            if found:
                return found[0]
    for hospital in spec.data.hospitals:
        if hospital.path is not None and Path(hospital.path).resolve() in candidates:
            return hospital.id
    return None


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


def _refuse_all(path: Path | str, hospital: str | None, unit: str) -> None:
    if hospital is not None:
        raise LocalValidationError(f"{path}: {hospital} trained this version on part of it; --part all would score "
                                   f"the model on its own training {unit}; use --part test or --part val")


def held_out_images(path: Path | str, spec: ExperimentSpec, tags: dict[str, str],
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
    assert isinstance(data, ImageDataSpec)
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
        _refuse_all(path, hospital, "images")
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


def held_out_rows(path: Path | str, spec: ExperimentSpec, tags: dict[str, str],
                  part: Part = "test") -> tuple[pd.DataFrame, HeldOut]:
    """The rows of a CSV/Parquet file to score for ``registry validate`` (same rules as
    :func:`held_out_images`: the split column's test rows, the part a training hospital's
    run held out, or every row of a validator's own file).

    Raises:
        LocalValidationError: the part asked for is empty or would hold training rows.
        DataContractError: the file breaks the data contract.
    """
    data = spec.data
    assert isinstance(data, DataSpec)
    source = Path(path)
    hospital = training_hospital(source, spec, tags)
    column = data.split_column
    has_column = column is not None and column in _table_columns(source)
    if not has_column and hospital is None:
        if part == "val":
            raise LocalValidationError(f"{path}: has no val part (no split column, not a training dataset of this "
                                       "version); leave --part out to score every row")
        frame = load_hospital_table(source, _without_split(data))
        return frame, HeldOut(len(frame), 0, "every row: not one of this version's training datasets and no split "
                                             "column in it", None)
    split = load_split(source, data.contract, data.test_fraction, spec.seed, val_fraction=data.val_fraction)
    parts = {"train": split.train, "val": split.val, "test": split.test}
    total = sum(len(p) for p in parts.values())
    origin = f"column '{column}'" if has_column else f"the run's split of {hospital}'s patients (seed {spec.seed})"
    if part == "all":
        _refuse_all(path, hospital, "rows")
        frame = pd.concat(list(parts.values()), ignore_index=True)
        return frame, HeldOut(len(frame), 0, f"every part of {origin}, --part all", hospital)
    frame = parts[part].reset_index(drop=True)
    if frame.empty:
        raise LocalValidationError(f"{path}: the {part} part of {origin} holds no rows")
    what = f"the {part} rows of {origin}" + (f", held out from {hospital}'s training" if hospital is not None else "")
    return frame, HeldOut(len(frame), total - len(frame), what, hospital)


def _table_columns(path: Path) -> list[str]:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, nrows=0, dtype=str).columns)
    except Exception:  # noqa: BLE001 - the loader names an unreadable file properly
        return []


def _without_split(data: DataSpec) -> DataContract:
    contract = data.contract
    if contract.split_column is None:
        return contract
    return dataclasses.replace(contract, split_column=None)

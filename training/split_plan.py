"""Which hospital each patient of a dataset goes to (``bioverse data split``): random, stratified or by a column."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.categories import canonical
from training.errors import DataSplitError
from training.split_parts import PART_NAMES, PARTS

__all__ = ["UNSAFE_ID_CHARS", "SplitOptions", "assign_units", "column_values", "label_mix", "part_counts", "plan_hospitals"]


#: Characters a hospital id may not hold (replaced by ``-``).
UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SplitOptions:
    """How to split.

    Attributes:
        hospitals: How many hospitals (``random``/``stratified``); with a column, None or
            the number of its distinct values.
        by: ``random``, ``stratified`` or the name of a column.
        seed: Same seed, same hospitals.
        label: The label column (tables: stratification and class mix; ``labels.csv``:
            default ``label``).
        patient_id: The patient id column; None: ``patient_id`` if the data has it, else
            every row is its own patient.
        split_column: The column naming each row's part; None: ``split`` if present.
        image_column: The ``labels.csv`` column naming each image file.
        prefix: Hospital ids are ``<prefix>-01``, ``<prefix>-02``, ... (random, stratified).
    """

    hospitals: int | None = None
    by: str = "random"
    seed: int = 0
    label: str | None = None
    patient_id: str | None = None
    split_column: str | None = None
    image_column: str = "image"
    prefix: str = "hospital"


def _text(value: object) -> str | None:
    """A cell as canonical text (``4.0`` and ``4`` alike); None when blank or missing."""
    value = canonical(value)
    return None if value is None else str(value)


def column_values(frame: pd.DataFrame, path: Path, name: str, option: str, *, blank_ok: bool = False) -> list[str | None]:
    if name not in frame.columns:
        raise DataSplitError(path, f"{option}: no column {name!r} (columns: {', '.join(map(str, frame.columns[:12]))})")
    values = [_text(v) for v in frame[name].tolist()]
    if not blank_ok and None in values:
        raise DataSplitError(path, "empty cell", column=name, row=values.index(None) + 1)
    return values


def _parts(frame: pd.DataFrame, path: Path, column: str) -> list[str]:
    values = column_values(frame, path, column, "--split-column")
    parts = [PART_NAMES.get(v.casefold()) for v in values if v is not None]
    if None in parts:
        row = parts.index(None)
        raise DataSplitError(path, f"split value {values[row]!r} is not train, val or test", column=column, row=row + 1)
    return parts  # type: ignore[return-value]


def assign_units(units: int, strata: Sequence[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """Hospital index of each unit: shuffled, then dealt in turn within each stratum, the
    turn carried over between strata, so hospitals differ by at most one unit per stratum."""
    order = rng.permutation(units)
    keys = np.asarray(strata, dtype=object)[order]
    order = order[np.argsort(keys, kind="stable")]  # shuffled within each stratum
    out = np.empty(units, dtype=np.int64)
    out[order] = np.arange(units) % n
    return out


def _hospital_ids(values: Sequence[str], path: Path, column: str) -> dict[str, str]:
    ids: dict[str, str] = {}
    for value in sorted(set(values)):
        hid = UNSAFE_ID_CHARS.sub("-", value).strip("-._")[:100] or "blank"
        if not hid[0].isalnum():
            hid = f"h{hid}"
        if hid in ids.values():
            raise DataSplitError(path, f"values {value!r} and {next(k for k, v in ids.items() if v == hid)!r} both make "
                              f"hospital id {hid!r}", column=column)
        ids[value] = hid
    return ids


def _check_parts(ids: list[str], part_of: np.ndarray, hospital_of: np.ndarray, source: Path) -> None:
    for h, hid in enumerate(ids):
        mine = part_of[hospital_of == h]
        for part in ("train", "test"):
            if not (mine == part).any():
                total = int((part_of == part).sum())
                raise DataSplitError(source, f"{hid} would get no {part} rows ({total} {part} row(s) in all): use fewer hospitals")


def plan_hospitals(frame: pd.DataFrame, path: Path, options: SplitOptions, *, label: str | None, patient_id: str | None,
          split_column: str | None) -> tuple[list[str], np.ndarray, list[str | None], list[str] | None]:
    """Hospital ids and each row's hospital index; each row's label text and part."""
    rows = len(frame)
    if rows == 0:
        raise DataSplitError(path, "no rows")
    labels = column_values(frame, path, label, "--label", blank_ok=options.by != "stratified") if label else [None] * rows
    parts = _parts(frame, path, split_column) if split_column else None
    patients = column_values(frame, path, patient_id, "--patient-id") if patient_id else [str(i) for i in range(rows)]
    unit_index = pd.factorize(pd.Series(patients, dtype=object))[0]
    units = int(unit_index.max()) + 1
    first = pd.Series(np.arange(rows)).groupby(unit_index).first().to_numpy()  # each patient's first row
    if options.by in ("random", "stratified"):
        n = options.hospitals
        if n is None or n < 1:
            raise DataSplitError(path, f"--hospitals: give how many hospitals to make (--by {options.by})")
        if n > units:
            raise DataSplitError(path, f"--hospitals: {n} hospitals but only {units} patients")
        if options.by == "stratified" and label is None:
            raise DataSplitError(path, "--label: name the label column to stratify by")
        strata = [(parts[r] if parts else "") + "|" + (str(labels[r]) if options.by == "stratified" else "") for r in first]
        rng = np.random.default_rng(options.seed)
        ids = [f"{options.prefix}-{h + 1:0{max(2, len(str(n)))}d}" for h in range(n)]
        hospital_of = assign_units(units, strata, n, rng)[unit_index]
    else:
        centre = column_values(frame, path, options.by, "--by")
        pairs = pd.DataFrame({"patient": unit_index, "centre": centre}).drop_duplicates()
        straddling = pairs[pairs["patient"].duplicated()]
        if len(straddling):
            who = patients[int(np.flatnonzero(unit_index == straddling["patient"].iloc[0])[0])]
            raise DataSplitError(path, f"patient {who!r} appears under two values of {options.by!r}; a patient stays in one hospital",
                        column=options.by)
        names = _hospital_ids([c for c in centre if c is not None], path, options.by)
        if options.hospitals is not None and options.hospitals != len(names):
            raise DataSplitError(path, f"--hospitals: {options.hospitals} given but column {options.by!r} has {len(names)} values")
        ids = list(names.values())
        index = {v: i for i, v in enumerate(names)}
        hospital_of = np.asarray([index[c] for c in centre], dtype=np.int64)  # type: ignore[index]
    if parts is not None:
        _check_parts(ids, np.asarray(parts, dtype=object), hospital_of, path)
    return ids, hospital_of, labels, parts


def label_mix(labels: Sequence[str | None]) -> dict[str, int]:
    counts = pd.Series([("missing" if v is None else v) for v in labels], dtype=object).value_counts()
    return {str(k): int(counts[k]) for k in sorted(counts.index, key=str)}


def part_counts(parts: Sequence[str] | None) -> dict[str, int] | None:
    return None if parts is None else {p: sum(1 for v in parts if v == p) for p in PARTS}

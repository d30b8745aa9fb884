"""The hospital data contract: which columns a site's file must hold, checked on load."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from training.categories import canonical, canonical_series
from training.errors import DataContractError
from training.split_parts import PART_NAMES

__all__ = ["DataContract", "load_hospital_table", "missing_code_counts", "schema_fingerprint"]


_READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_TRUE = {"1", "1.0", "true", "yes", "y"}
_FALSE = {"0", "0.0", "false", "no", "n"}


@dataclass(frozen=True)
class DataContract:
    """Columns an experiment expects in every hospital's file.

    Attributes:
        patient_id: Column with a unique, non-empty patient identifier.
        label: Binary outcome column (0/1, true/false, yes/no); None for files that only
            feed features (the feature store needs no outcomes).
        numeric: Numeric feature columns; missing values allowed.
        categorical: Categorical feature columns; missing values allowed.
        categories: Declared values per categorical column, as ``(column, values)`` pairs
            (canonical spellings); other columns take any value.
        missing_codes: Values that mean missing, as ``(column, codes)`` pairs.
        split_column: A column naming each row's part (train, val or test), or None.
    """

    patient_id: str
    label: str | None
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = field(default=())
    categories: tuple[tuple[str, tuple[str, ...]], ...] = ()
    missing_codes: tuple[tuple[str, tuple[str | float, ...]], ...] = ()
    split_column: str | None = None

    def declared(self, column: str) -> tuple[str, ...] | None:
        """The declared values of a categorical column, or None when any value is allowed."""
        return next((values for c, values in self.categories if c == column), None)

    def codes(self, column: str) -> tuple[str | float, ...]:
        """The values that mean missing in a column (none by default)."""
        return next((values for c, values in self.missing_codes if c == column), ())

    @property
    def features(self) -> tuple[str, ...]:
        """All feature columns, numeric first."""
        return self.numeric + self.categorical

    @property
    def required(self) -> tuple[str, ...]:
        """Every column the file must hold."""
        return ((self.patient_id, *self.features) + ((self.label,) if self.label else ())
                + ((self.split_column,) if self.split_column else ()))


def _read(path: Path) -> pd.DataFrame:
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise DataContractError(path, "unsupported file type; use .csv or .parquet")
    if not path.is_file():
        raise DataContractError(path, "file not found")
    try:
        if kind == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=True, na_values=[""])
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError as err:
        raise DataContractError(path, "file is empty") from err
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable file
        raise DataContractError(path, f"unreadable: {type(err).__name__}: {err}") from err


def _first_bad_row(mask: pd.Series) -> int:
    """1-based data row (header excluded) of the first True in ``mask``."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1


def _is_code(raw: pd.Series, codes: tuple[str | float, ...], *, numeric: bool) -> pd.Series:
    """Rows whose value is one of the missing codes: numbers compared as numbers (numeric
    columns), everything else by canonical spelling (case-insensitive)."""
    if not codes:
        return pd.Series(False, index=raw.index)
    texts = {str(canonical(c)).casefold() for c in codes if canonical(c) is not None}
    hit = canonical_series(raw).map(lambda v: v is not None and v.casefold() in texts).astype(bool)
    numbers = [float(c) for c in codes if _as_float(c) is not None]
    if numeric and numbers:
        values = pd.to_numeric(raw, errors="coerce")
        hit |= values.isin(numbers).fillna(False).astype(bool)
    return hit


def _as_float(value: str | float) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def missing_code_counts(path: Path | str, contract: DataContract) -> dict[str, int]:
    """How many values of each column the contract's missing codes turn into missing (for
    ``bioverse data check``); columns without codes are left out."""
    frame = _read(Path(path))
    counts = {}
    for column, codes in contract.missing_codes:
        if column in frame.columns:
            counts[column] = int(_is_code(frame[column], codes, numeric=column in contract.numeric).sum())
    return counts


def respelled_counts(path: Path | str, contract: DataContract) -> dict[str, dict[str, tuple[str, int]]]:
    """Per categorical column, the raw spellings that canonicalisation rewrote (for ``bioverse
    data check``: ``' M '`` or ``'3.0'`` become ``'M'`` and ``'3'``), each with its canonical
    value and count; columns whose values are all written canonically are left out."""
    frame = _read(Path(path))
    found: dict[str, dict[str, tuple[str, int]]] = {}
    for column in contract.categorical:
        if column not in frame.columns:
            continue
        raw = frame[column].dropna().astype(str)
        canon = canonical_series(raw, contract.declared(column))
        changed = canon.notna() & (canon != raw)
        if changed.any():
            pairs = pd.DataFrame({"raw": raw[changed], "canon": canon[changed]}).value_counts()
            found[column] = {r: (str(c), int(n)) for (r, c), n in pairs.items()}
    return found


def _numeric(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna()
    if bad.any():
        row = _first_bad_row(bad)
        raise DataContractError(
            path, f"expected a number, got {raw[bad].iloc[0]!r}", column=column, row=row
        )
    infinite = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
    if infinite.any():
        raise DataContractError(
            path, "infinite value", column=column, row=_first_bad_row(pd.Series(infinite))
        )
    return values.astype(float)


def _label(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    raw = frame[column]
    if raw.isna().any():
        raise DataContractError(path, "label is missing", column=column, row=_first_bad_row(raw.isna()))
    text = raw.astype(str).str.strip().str.lower()
    positive, negative = text.isin(_TRUE), text.isin(_FALSE)
    bad = ~(positive | negative)
    if bad.any():
        raise DataContractError(
            path,
            f"label must be binary (0/1, true/false, yes/no), got {raw[bad].iloc[0]!r}",
            column=column,
            row=_first_bad_row(bad),
        )
    return positive.astype(np.int64)


def _split(path: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    values = canonical_series(frame[column])
    parts = values.map(lambda v: PART_NAMES.get(v.casefold()) if v is not None else None)
    bad = parts.isna()
    if bad.any():
        row = _first_bad_row(bad)
        raise DataContractError(path, f"split must be train, val or test, got {frame[column].iloc[row - 1]!r}",
                                column=column, row=row)
    return parts.astype(object)


def load_hospital_table(path: Path | str, contract: DataContract) -> pd.DataFrame:
    """Read one hospital's file and check it against the contract.

    Args:
        path: A CSV or Parquet file holding one hospital's patients.
        contract: The columns the experiment expects.

    Returns:
        A frame with exactly the contract's columns: the patient id as string, numeric
        features as float (NaN where missing, missing codes included), categorical
        features as canonical strings (:mod:`training.categories`; None where missing),
        the split column as ``train``/``val``/``test`` and the label as int 0/1.

    Raises:
        DataContractError: naming the file, and the column and row at fault.
    """
    path = Path(path)
    frame = _read(path)
    if frame.empty:
        raise DataContractError(path, "file has no rows")
    missing = [c for c in contract.required if c not in frame.columns]
    if missing:
        raise DataContractError(path, "missing required column", column=missing[0])
    out = pd.DataFrame(index=frame.index)
    ids = frame[contract.patient_id]
    if ids.isna().any():
        raise DataContractError(
            path, "patient id is empty", column=contract.patient_id, row=_first_bad_row(ids.isna())
        )
    ids = ids.astype(str)
    duplicated = ids.duplicated()
    if duplicated.any():
        raise DataContractError(
            path,
            f"duplicate patient id {ids[duplicated].iloc[0]!r}",
            column=contract.patient_id,
            row=_first_bad_row(duplicated),
        )
    out[contract.patient_id] = ids
    for column, codes in contract.missing_codes:  # before anything else: a code is a missing value
        if column in frame.columns:
            hit = _is_code(frame[column], codes, numeric=column in contract.numeric)
            if hit.any():
                frame[column] = frame[column].astype(object).where(~hit, None)
    for column in contract.numeric:
        out[column] = _numeric(path, frame, column)
    for column in contract.categorical:
        out[column] = canonical_series(frame[column], contract.declared(column))
    if contract.split_column:
        out[contract.split_column] = _split(path, frame, contract.split_column)
    if contract.label is None:
        return out.reset_index(drop=True)
    out[contract.label] = _label(path, frame, contract.label)
    if out[contract.label].nunique() < 2:
        raise DataContractError(
            path, "label has a single class; a hospital needs both outcomes", column=contract.label
        )
    return out.reset_index(drop=True)


def schema_fingerprint(frame: pd.DataFrame, contract: DataContract) -> str:
    """A short, stable fingerprint of a hospital's schema: columns, kinds and categories.

    It changes when a column, its type or its set of category values changes, never with
    the number of rows or the numeric values, so the registry can tell which sites fed a
    model with which schema without holding any patient data.
    """
    description = {
        "patient_id": contract.patient_id,
        "label": contract.label,
        "numeric": list(contract.numeric),
        "categorical": {
            c: sorted(str(v) for v in frame[c].dropna().unique()) for c in contract.categorical
        },
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return digest[:16]

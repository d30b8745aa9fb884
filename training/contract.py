"""The hospital data contract: which columns a site's file must hold, checked on load."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from training.errors import DataContractError

__all__ = ["DataContract", "load_hospital_table", "schema_fingerprint"]

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
    """

    patient_id: str
    label: str | None
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = field(default=())

    @property
    def features(self) -> tuple[str, ...]:
        """All feature columns, numeric first."""
        return self.numeric + self.categorical

    @property
    def required(self) -> tuple[str, ...]:
        """Every column the file must hold."""
        return (self.patient_id, *self.features) + ((self.label,) if self.label else ())


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


def load_hospital_table(path: Path | str, contract: DataContract) -> pd.DataFrame:
    """Read one hospital's file and check it against the contract.

    Args:
        path: A CSV or Parquet file holding one hospital's patients.
        contract: The columns the experiment expects.

    Returns:
        A frame with exactly the contract's columns: the patient id as string, numeric
        features as float (NaN where missing), categorical features as string (None where
        missing) and the label as int 0/1.

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
    for column in contract.numeric:
        out[column] = _numeric(path, frame, column)
    for column in contract.categorical:
        values = frame[column]
        out[column] = values.where(values.isna(), values.astype(str)).astype(object)
        out.loc[values.isna(), column] = None
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

"""Raw feature columns (NumPy, pandas, Arrow, lists) read as numbers and as category codes, as the encoder reads them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from training.categories import CategoryLookup
from training.errors import ScoringInputError

__all__ = ["MISSING_CODE", "OTHER_CODE", "as_series", "category_codes", "category_slot", "number_rows", "numbers"]

#: Category codes beside a vocabulary index: a value outside the vocabulary, and a missing value.
OTHER_CODE, MISSING_CODE = -1, -2


def _is_arrow(values: Any) -> bool:
    return type(values).__module__.startswith("pyarrow")


def number_rows(values: Any, column: str) -> Callable[[int, int], np.ndarray]:
    """A numeric column as a function giving rows [a, b) as numbers (see :func:`numbers`);
    NumPy and Arrow columns are read a slice at a time, anything else converted once."""
    if _is_arrow(values):
        import pyarrow as pa

        if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
            return lambda a, b: values.slice(a, b - a).to_numpy(zero_copy_only=False)
    elif isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        return lambda a, b: values[a:b]
    whole = numbers(values, column)
    return lambda a, b: whole[a:b]


def numbers(values: Any, column: str) -> np.ndarray:
    """One numeric column as numbers (NaN = missing) that cast to the float64 values
    ``DataFrame.to_numpy(dtype=float64)`` gives."""
    import pandas as pd

    if _is_arrow(values):
        import pyarrow as pa

        if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
            return values.to_numpy(zero_copy_only=False)  # null -> NaN; the caller casts to float64
        values = values.to_pandas()
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        return values
    try:
        return pd.to_numeric(pd.Series(values), errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as err:
        raise ScoringInputError(f"{column}: expected numbers ({err})") from err


def category_slot(lookup: CategoryLookup, value: Any) -> int:
    """A raw value's index in the vocabulary, OTHER_CODE or MISSING_CODE (as the encoder finds it)."""
    if value is None:
        return MISSING_CODE
    found = lookup.exact.get(value) if isinstance(value, str) else None
    if found is not None:
        return found
    if lookup.is_missing(value):
        return MISSING_CODE
    found = lookup.code(value)
    return OTHER_CODE if found is None else found


def as_series(values: Any) -> Any:
    import pandas as pd

    if _is_arrow(values):
        values = values.to_pandas()
    return values if isinstance(values, pd.Series) else pd.Series(values)


def _code_table(values: Any, lookup: CategoryLookup) -> np.ndarray:
    """Codes of distinct values (matched as the encoder matches them), plus a last entry
    for missing, so that index -1 (a null) reads as missing."""
    import pandas as pd

    distinct = pd.Series(values, dtype=object) if not isinstance(values, pd.Series) else values
    absent = distinct.isna().to_numpy()
    codes = [MISSING_CODE if a else category_slot(lookup, v) for a, v in zip(absent, distinct.to_numpy(), strict=True)]
    return np.asarray(codes + [MISSING_CODE], dtype=np.int64)


def category_codes(values: Any, lookup: CategoryLookup) -> np.ndarray:
    """One categorical column -> index in the vocabulary, OTHER_CODE or MISSING_CODE, per row."""
    import pandas as pd

    if _is_arrow(values):
        import pyarrow as pa
        import pyarrow.compute as pc

        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        if all(pa.types.is_dictionary(c.type) or pa.types.is_string(c.type) or pa.types.is_large_string(c.type)
               for c in chunks):
            parts = []
            for chunk in chunks:
                if not pa.types.is_dictionary(chunk.type):
                    chunk = pc.dictionary_encode(chunk)
                table = _code_table(chunk.dictionary.to_pandas(), lookup)
                index = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                parts.append(table[index])
            return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        values = values.to_pandas()
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if isinstance(series.dtype, pd.CategoricalDtype):
        return _code_table(series.cat.categories.to_series(), lookup)[series.cat.codes.to_numpy()]
    index, distinct = pd.factorize(series, use_na_sentinel=True)  # each distinct value matched once
    return _code_table(pd.Series(distinct, dtype=object), lookup)[index]

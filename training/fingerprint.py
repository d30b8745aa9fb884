"""The fingerprint of the data a hospital protects: what its privacy budget belongs to."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["dataset_fingerprint"]

#: Table suffixes and the pandas reader of each (pandas is imported on first use: spec parsing reaches this module).
_TABLES = {".csv": "read_csv", ".parquet": "read_parquet", ".pq": "read_parquet"}


def dataset_fingerprint(path: Path | str) -> str:
    """SHA-256 (hex) identifying the dataset at ``path``.

    A table (CSV or Parquet) is fingerprinted by its content, not its bytes: every
    column (sorted by name), numbers as float64 and everything else as text, each row
    hashed, the row hashes sorted. The same rows exported as CSV or Parquet, in any row or
    column order, give the same fingerprint; any changed, added or removed row or column
    gives another. An image folder or ``.npz`` is fingerprinted by its files' bytes
    (relative path and SHA-256 of each file, sorted), so a re-encoded image is new data.

    Cached per (path, size, modification time): a hospital computes it once per file
    version, not once per round.
    """
    path = Path(path).resolve()
    stat = path.stat()
    return _cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached(path: str, size: int, mtime: int) -> str:
    where = Path(path)
    reader = _TABLES.get(where.suffix.lower())
    if reader is not None and where.is_file():
        import pandas as pd

        return _table_fingerprint(getattr(pd, reader)(where))
    return _bytes_fingerprint(where)


def _canonical(column: pd.Series) -> pd.Series:
    import pandas as pd

    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column.astype("float64")
    return column.map(lambda v: None if pd.isna(v) else str(v)).astype("object")


def _table_fingerprint(frame: pd.DataFrame) -> str:
    import pandas as pd

    columns = sorted(str(c) for c in frame.columns)
    canonical = pd.DataFrame({c: _canonical(frame[c]).to_numpy() for c in columns})
    rows = np.sort(pd.util.hash_pandas_object(canonical, index=False).to_numpy(dtype=np.uint64))
    digest = hashlib.sha256("\x1f".join(columns).encode())
    digest.update(rows.tobytes())
    return digest.hexdigest()


def _bytes_fingerprint(where: Path) -> str:
    files = sorted(p for p in where.rglob("*") if p.is_file()) if where.is_dir() else [where]
    digest = hashlib.sha256()
    for file in files:
        inner = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                inner.update(block)
        name = file.relative_to(where).as_posix() if where.is_dir() else ""
        digest.update(f"{name}\x00{inner.hexdigest()}\n".encode())
    return digest.hexdigest()

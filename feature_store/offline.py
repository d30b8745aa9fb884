"""The offline store's point-in-time read: every twin's current features at one instant, straight from the Parquet files.

The rules are Feast's historical retrieval at one instant; how the read stays fast (a million
twins in about half a second) is in docs/features.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.errors import FeatureDataError, FeatureQueryError, FeatureRepoError

__all__ = ["KEYS", "TwinFeatures", "read_current_features", "utc_micros"]

KEYS = ("tenant_id", "patient_id")
_NEVER = np.iinfo(np.int64).min  # a null ``created`` loses every tie
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

@dataclass(frozen=True, eq=False)
class TwinFeatures:
    """Every twin's current features: keys and one column per feature (null = missing)."""

    tenant_id: pa.Array  # dictionary of strings (few tenants)
    patient_id: pa.Array  # string
    columns: dict[str, pa.Array | pa.ChunkedArray]
    seconds: dict[str, float] = field(default_factory=dict)  # read, join

    def __len__(self) -> int:
        return len(self.patient_id)

    def to_pandas(self) -> Any:
        """As a DataFrame (keys, then features; numbers as float, categories as object)."""
        import pandas as pd

        data = {}
        for name, values in {"tenant_id": self.tenant_id, "patient_id": self.patient_id, **self.columns}.items():
            if pa.types.is_dictionary(values.type):
                values = values.cast(values.type.value_type)
            data[name] = values.to_pandas()
        return pd.DataFrame(data)


@dataclass(eq=False)
class _View:
    name: str
    tenant: np.ndarray  # int32 index into the shared tenant list
    patient: pa.Array
    when: np.ndarray  # event_timestamp, int64 microseconds
    created: np.ndarray  # int64 microseconds, _NEVER when null
    features: dict[str, pa.ChunkedArray]
    ttl: timedelta | None

    def __len__(self) -> int:
        return len(self.patient)


def read_current_features(repo_dir: Path, features: Sequence[str], *, tenant: str | None = None,
                          as_of: datetime | None = None) -> TwinFeatures:
    """Each twin's current value of ``features`` in the offline store of the Feast repo ``repo_dir``.

    Per feature view, the rows with ``as_of - ttl <= event_timestamp <= as_of`` count; among a
    twin's rows the newest ``event_timestamp`` wins, then the newest ``created``, then the later
    row of the file. The views are outer-joined on ``(tenant_id, patient_id)``: a view without
    a current row for a twin leaves its features missing. ``tenant`` keeps one tenant's rows.

    Raises:
        FeatureQueryError: ``as_of`` has no time zone.
        FeatureRepoError: ``repo_dir`` holds no Feast repo, or a feature belongs to no view.
        FeatureDataError: the store holds no current row (for ``tenant``).
    """
    from feature_store.definitions import VIEWS, build_definitions, offline_path

    repo_dir = Path(repo_dir)
    if not (repo_dir / "feature_store.yaml").exists():
        raise FeatureRepoError(f"{repo_dir}: no Feast repo here; run `bioverse features init` and ingest first")
    data_dir = repo_dir / "data"
    unknown = [f for f in features if not any(f in cols for cols in VIEWS.values())]
    if unknown:
        raise FeatureRepoError(f"{unknown[0]}: the model needs a feature no feature view holds "
                               f"({', '.join(c for cols in VIEWS.values() for c in cols)})")
    started = time.perf_counter()
    definitions = build_definitions(data_dir)
    as_of_us = utc_micros(as_of or datetime.now(UTC))
    tenants: dict[str, int] = {}
    views: list[_View] = []
    for view, cols in VIEWS.items():
        path = offline_path(data_dir, view)
        same = views[0] if views and _same_keys(offline_path(data_dir, views[0].name), path) else None
        views.append(_read_view(view, path, [f for f in features if f in cols], tenant, tenants,
                                definitions[view].ttl or None, keys_of=same))
    read = time.perf_counter() - started
    twins = _join(views, list(tenants), as_of_us)
    twins.seconds.update(read=read, join=time.perf_counter() - started - read)
    if not len(twins) and tenant is not None:
        raise FeatureDataError(f"{data_dir}: the offline store holds no current features of tenant {tenant!r}")
    if not len(twins):
        raise FeatureDataError(f"{data_dir}: the offline store holds no current features; "
                               "ingest hospital files with `bioverse features ingest` first")
    return twins


def _read_view(name: str, path: Path, features: list[str], tenant: str | None, tenants: dict[str, int],
               ttl: timedelta | None, keys_of: _View | None = None) -> _View:
    """One view's rows: keys, timestamps and ``features`` (string columns as dictionaries).

    ``keys_of``: a view whose file stores the same keys (:func:`_same_keys`); they are not read again.
    """
    if not path.exists():
        empty = pa.chunked_array([], pa.float32())
        return _View(name, np.empty(0, np.int32), pa.array([], pa.string()), np.empty(0, np.int64),
                     np.empty(0, np.int64), dict.fromkeys(features, empty), ttl)
    schema = pq.read_schema(path)
    missing = [c for c in (*KEYS, "event_timestamp", *features) if c not in schema.names]
    if missing:
        raise FeatureDataError(f"{path}: no column {missing[0]!r}; is this BioVerse's offline store?")
    columns = [*KEYS, "event_timestamp", *(["created"] if "created" in schema.names else []), *features]
    if keys_of is not None:
        columns = columns[len(KEYS):]
    strings = [c for c in columns if c != "patient_id" and pa.types.is_string(schema.field(c).type)]
    table = pq.read_table(path, columns=columns, read_dictionary=strings,
                          filters=[("tenant_id", "=", tenant)] if tenant is not None else None)
    when = _timestamps(table["event_timestamp"])
    created = _timestamps(table["created"]) if "created" in table.column_names else np.full(len(table), _NEVER)
    if keys_of is not None and len(keys_of) == len(table):
        return _View(name, keys_of.tenant, keys_of.patient, when, created, {c: table[c] for c in features}, ttl)
    if keys_of is not None:  # cannot happen for equal key bytes; read them after all
        return _read_view(name, path, features, tenant, tenants, ttl)
    patient = table["patient_id"]
    patient = patient.combine_chunks() if patient.num_chunks != 1 else patient.chunk(0)
    if patient.null_count:
        raise FeatureDataError(f"{path}: rows without a patient_id")
    return _View(name, _tenant_codes(table["tenant_id"], tenants, path), patient.cast(pa.string()), when, created,
                 {c: table[c] for c in features}, ttl)


def _same_keys(reference: Path, path: Path) -> bool:
    """Whether two offline files store their key columns as identical bytes.

    Then their keys are equal row for row, and the second file's need not be decoded: the
    usual case, since ingest writes every view with the same keys, in the same order, with
    the same writer. Anything else (a push appended rows, another layout) answers False and
    the keys are read and compared as values.
    """
    try:
        if not (reference.exists() and path.exists()):
            return False
        meta = pq.read_metadata(reference), pq.read_metadata(path)
        if meta[0].num_row_groups != meta[1].num_row_groups or meta[0].num_rows != meta[1].num_rows:
            return False
        index = [{m.schema.column(i).name: i for i in range(m.num_columns)} for m in meta]
        with open(reference, "rb") as one, open(path, "rb") as two:
            for group in range(meta[0].num_row_groups):
                for key in KEYS:
                    chunks = [m.row_group(group).column(ix[key]) for m, ix in zip(meta, index, strict=True)]
                    described = {(c.physical_type, c.compression, c.encodings, c.total_compressed_size,
                                  c.num_values, str(m.schema.column(ix[key]).logical_type))
                                 for c, m, ix in zip(chunks, meta, index, strict=True)}
                    if len(described) != 1:
                        return False
                    content = []
                    for handle, c in zip((one, two), chunks, strict=True):
                        handle.seek(c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset)
                        content.append(handle.read(c.total_compressed_size))
                    if content[0] != content[1]:
                        return False
        return True
    except (OSError, KeyError, pa.ArrowException):
        return False


def _tenant_codes(column: pa.ChunkedArray, tenants: dict[str, int], path: Path) -> np.ndarray:
    """Tenant ids as indices into ``tenants`` (shared by every view; grows as new ids appear)."""
    parts = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        if chunk.null_count:
            raise FeatureDataError(f"{path}: rows without a tenant_id")
        table = np.asarray([tenants.setdefault(str(t), len(tenants)) for t in chunk.dictionary.to_pylist()] or [0],
                           dtype=np.int32)
        parts.append(table[chunk.indices.to_numpy(zero_copy_only=False)])
    return np.concatenate(parts) if parts else np.empty(0, np.int32)


def _timestamps(column: pa.ChunkedArray) -> np.ndarray:
    """UTC microseconds as int64 (null -> _NEVER)."""
    values = column.cast(pa.timestamp("us", tz="UTC"), safe=False).cast(pa.int64())
    return (values.fill_null(_NEVER) if values.null_count else values).to_numpy()


def utc_micros(when: datetime) -> int:
    """Microseconds since the epoch, exactly.

    Raises:
        FeatureQueryError: ``when`` has no time zone.
    """
    if when.tzinfo is None:
        raise FeatureQueryError("as_of needs a time zone")
    return (when - _EPOCH) // timedelta(microseconds=1)


def _join(views: list[_View], tenants: list[str], as_of: int) -> TwinFeatures:
    """Newest current row of each twin in each view, outer-joined on (tenant, patient).

    Twins are numbered from the first non-empty view (the reference): its longest prefix of
    provably distinct keys (:func:`_distinct_prefix`) are twins 0, 1, ... with no hashing.
    Another view's run of rows with the reference's keys in the same order (:func:`_aligned`)
    takes the same numbers. Only the remaining rows (pushes, later ingests, rows in another
    order: the "tail") are hashed and matched, and only their twins need a choice of row.
    """
    ref = next((v for v in views if len(v)), views[0])
    head = _distinct_prefix(ref.tenant, ref.patient)  # rows [0, head) of ref are twins 0 .. head-1
    aligned = {v.name: (0, 0) if v is ref else _aligned(v, ref) for v in views}  # rows [at, at + n) = ref's [0, n)
    spans = []  # (view, first row, end): rows whose twins the tail matching decides
    for view in views:
        at, n = aligned[view.name]
        spans += [(view, 0, at), (view, head if view is ref else at + n, len(view))]
    spans = [(v, lo, hi) for v, lo, hi in spans if hi > lo]
    tail_tenant = np.concatenate([v.tenant[lo:hi] for v, lo, hi in spans]) if spans else np.empty(0, np.int32)
    tail_patient = pa.chunked_array([v.patient.slice(lo, hi - lo) for v, lo, hi in spans], pa.string())
    tail_codes, new_first = _match(ref.tenant[:head], ref.patient.slice(0, head), tail_tenant, tail_patient, len(tenants))
    count = head + len(new_first)

    extra: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {v.name: [] for v in views}  # (rows, twins) off the block
    offset = 0
    for view, lo, hi in spans:
        extra[view.name].append((np.arange(lo, hi), tail_codes[offset:offset + hi - lo]))
        offset += hi - lo
    ref_tail = extra[ref.name][0][1] if extra[ref.name] else tail_codes[:0]  # twins of ref's rows [head, len)
    rows = {}
    for view in views:
        at, n = aligned[view.name] if view is not ref else (0, head)
        if n > head:  # rows aligned with ref's tail rows share their twins
            extra[view.name].append((np.arange(at + head, at + n), ref_tail[:n - head]))
            n = head
        rows[view.name] = _newest(view, at, n, extra[view.name], count, as_of)
    present = np.zeros(count, dtype=bool)
    for view in views:
        r = rows[view.name]
        if r is None:
            present[:len(view)] = True
        else:
            present |= r >= 0
    keep = None if present.all() else np.flatnonzero(present)  # twins whose every row is out of date

    tenant_codes = ref.tenant[:head]
    patient: pa.Array | pa.ChunkedArray = ref.patient if head == len(ref) else ref.patient.slice(0, head)
    if len(new_first):
        tenant_codes = np.concatenate([tenant_codes, tail_tenant[new_first]])
        patient = pa.chunked_array([patient, tail_patient.take(pa.array(new_first))], pa.string())
    if keep is not None:
        tenant_codes, patient = tenant_codes[keep], patient.take(pa.array(keep))
    columns = {}
    for view in views:
        r = rows[view.name]
        if r is None and (keep is not None or len(view) != count):
            r = np.arange(count)
            r[len(view):] = -1
        if r is not None and keep is not None:
            r = r[keep]
        index = None if r is None else pa.array(r, mask=r < 0)  # null: no current row, the features missing
        for name, column in view.features.items():
            columns[name] = column if index is None else column.take(index)
    tenant_id = pa.DictionaryArray.from_arrays(pa.array(tenant_codes, pa.int32()), pa.array(tenants or [""], pa.string()))
    if isinstance(patient, pa.ChunkedArray):
        patient = patient.combine_chunks()
    return TwinFeatures(tenant_id, patient, columns)


def _aligned(view: _View, ref: _View) -> tuple[int, int]:
    """Where ``view`` holds ref's keys in ref's order: (first row, count), as an O(n) check of
    the two places they are found: from the top (ingest appends) and at the bottom (a Feast
    push puts its rows first)."""
    for at in {0, max(len(view) - len(ref), 0)}:
        n = min(len(view) - at, len(ref))
        if n > 0 and np.array_equal(view.tenant[at:at + n], ref.tenant[:n]) \
                and view.patient.slice(at, n).equals(ref.patient.slice(0, n)):
            return at, n
    return 0, 0


def _distinct_prefix(tenant: np.ndarray, patient: pa.Array) -> int:
    """Length of the longest prefix whose keys are provably distinct, in O(n) and without
    hashing: each tenant's rows in one run, patient ids strictly increasing within it (as
    hospital files sorted by patient id ingest)."""
    n = len(patient)
    if n < 2:
        return n
    increasing = pc.less(patient.slice(0, n - 1), patient.slice(1)).to_numpy(zero_copy_only=False)  # row i < i + 1
    boundary = tenant[1:] != tenant[:-1]
    ok = increasing | boundary
    if boundary.any():  # a tenant run after another tenant's must be that tenant's first
        starts = np.flatnonzero(boundary)  # row i + 1 starts a run
        runs = np.concatenate([tenant[:1], tenant[starts + 1]])
        _, first = np.unique(runs, return_index=True)
        again = np.ones(len(runs), dtype=bool)
        again[first] = False
        ok[starts[again[1:]]] = False
    return n if ok.all() else int(np.argmin(ok)) + 1


def _match(head_tenant: np.ndarray, head_patient: pa.Array, tenant: np.ndarray, patient: pa.ChunkedArray,
           tenants: int) -> tuple[np.ndarray, np.ndarray]:
    """Twin codes of the tail rows (tenant, patient): a head row's index when the key is
    there (the head's keys are distinct), else len(head) + k for the k-th new key (in order
    of first appearance). Returns the codes and each new key's first tail row."""
    if not len(tenant):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    encoded = pc.dictionary_encode(patient)  # hashes the tail only
    distinct = encoded.chunk(0).dictionary
    pair = np.concatenate([c.indices.to_numpy() for c in encoded.chunks]).astype(np.int64) * tenants + tenant
    hit = pc.index_in(head_patient, value_set=distinct).fill_null(-1).to_numpy(zero_copy_only=False)
    head_rows = np.flatnonzero(hit >= 0)  # head rows whose patient id is also in the tail
    head_pair = hit[head_rows].astype(np.int64) * tenants + head_tenant[head_rows]
    order = np.argsort(head_pair, kind="stable")
    known = head_pair[order]
    codes = np.full(len(pair), -1, dtype=np.int64)
    if len(known):
        at = np.minimum(np.searchsorted(known, pair), len(known) - 1)
        found = known[at] == pair
        codes[found] = head_rows[order[at[found]]]
    new = np.flatnonzero(codes < 0)
    if not len(new):
        return codes, np.empty(0, np.int64)
    _, first, inverse = np.unique(pair[new], return_index=True, return_inverse=True)
    by_appearance = np.argsort(first, kind="stable")
    rank = np.empty_like(by_appearance)
    rank[by_appearance] = np.arange(len(by_appearance))
    codes[new] = len(head_tenant) + rank[inverse.reshape(-1)]
    return codes, new[first[by_appearance]]


def _newest(view: _View, at: int, n: int, extra: list[tuple[np.ndarray, np.ndarray]], count: int,
            as_of: int) -> np.ndarray | None:
    """Each twin's newest current row of ``view`` (-1: none), or None when row i is twin i's
    one and current row. Rows [at, at + n) are twins 0 .. n-1; ``extra`` pairs more rows
    with their twins, and only those twins are looked at twice."""
    lo = as_of - view.ttl // timedelta(microseconds=1) if view.ttl else _NEVER
    when = view.when
    current = None if not len(when) or (when.min() >= lo and when.max() <= as_of) else (when >= lo) & (when <= as_of)
    more = sum(len(r) for r, _ in extra)
    if current is None and not more and at == 0 and n == len(view):
        return None
    best = np.full(count, -1, dtype=np.int64)
    best[:n] = np.arange(at, at + n)
    if current is not None:
        best[:n][~current[at:at + n]] = -1
    if not more:
        return best
    rows = np.concatenate([r for r, _ in extra])
    twins = np.concatenate([t for _, t in extra])
    if current is not None:
        rows, twins = rows[current[rows]], twins[current[rows]]
    base = best[twins]  # the block's row of each twin met again, if any, competes too
    rows, twins = np.concatenate([base[base >= 0], rows]), np.concatenate([twins[base >= 0], twins])
    which, local = np.unique(twins, return_inverse=True)
    local = local.reshape(-1)
    newest = np.full(len(which), _NEVER, dtype=np.int64)
    np.maximum.at(newest, local, when[rows])
    tied = when[rows] == newest[local]
    rows, local = rows[tied], local[tied]
    latest = np.full(len(which), _NEVER, dtype=np.int64)
    np.maximum.at(latest, local, view.created[rows])
    tied = view.created[rows] == latest[local]
    winner = np.full(len(which), -1, dtype=np.int64)
    np.maximum.at(winner, local[tied], rows[tied])  # a tie left: the later row of the file
    best[which] = winner
    return best

"""A Feast repository for patients' features: create, apply, ingest, materialize, read, push."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from feature_store.contract import check_category, check_number, check_observation, check_observed_at
from feature_store.definitions import CATEGORIES, RANGES, VIEWS, build_definitions, offline_path
from feature_store.errors import (
    FeatureDataError,
    FeatureRepoError,
    FeatureStoreError,
    FeatureStoreUnavailable,
    FeatureValueError,
)

__all__ = ["ONLINE_FEATURES", "FeatureRepo", "PushResult"]

log = logging.getLogger(__name__)
KEYS = ("tenant_id", "patient_id")
_TS = "__ts"  # Feast's suffix of a feature's event time in OnlineResponse.to_dict(include_event_timestamps=True)
#: Feature references an app reads for a twin: every raw feature and the derived ones.
ONLINE_FEATURES: tuple[str, ...] = tuple(f"{v}:{c}" for v, cols in VIEWS.items() for c in cols) + (
    "derived:glucose_mmol_l", "derived:hypertensive", "derived:obese")

_DEFINITIONS_SHIM = '''"""BioVerse's feature definitions (feature_store/definitions.py), offline data in ./data."""

from pathlib import Path

from feature_store.definitions import build_definitions

globals().update(build_definitions(Path(__file__).resolve().parent / "data"))
'''


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class FeatureRepo:
    """The Feast repo in ``repo_dir``: ``feature_store.yaml``, ``definitions.py`` and ``data/``.

    Args:
        repo_dir: The repository folder; ``feast`` commands work there as usual.
    """

    def __init__(self, repo_dir: Path) -> None:
        self.repo_dir = Path(repo_dir).resolve()
        self.data_dir = self.repo_dir / "data"
        self._store: Any = None
        self._push_lock = threading.Lock()  # read-compare-write of event times, one at a time per process

    # ---- set-up ----
    def init(self, *, online_store: str = "sqlite", redis_url: str = "127.0.0.1:6379", project: str = "bioverse",
             registry: str = "") -> FeatureRepo:
        """Write the repo's config and definitions (idempotent), then ``feast apply``; ``registry``
        is a SQL registry's SQLAlchemy URL (empty: the file ``data/registry.db``)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if online_store == "sqlite":
            online: dict[str, Any] = {"type": "sqlite", "path": str(self.data_dir / "online.db")}
        elif online_store == "redis":
            online = {"type": "redis", "connection_string": redis_url}
        else:
            raise FeatureRepoError(f"online store must be sqlite or redis, not {online_store!r}")
        config = {
            "project": project,
            "registry": {"registry_type": "sql", "path": registry, "cache_ttl_seconds": 60,
                         "sqlalchemy_config_kwargs": {"pool_pre_ping": True}} if registry
            else {"path": str(self.data_dir / "registry.db"), "cache_ttl_seconds": 60},
            "provider": "local",
            "online_store": online,
            "offline_store": {"type": "file"},
            "entity_key_serialization_version": 3,
        }
        (self.repo_dir / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (self.repo_dir / "definitions.py").write_text(_DEFINITIONS_SHIM)
        self._store = None
        self.apply()
        return self

    @property
    def store(self) -> Any:
        """The ``feast.FeatureStore`` of this repo."""
        if self._store is None:
            if not (self.repo_dir / "feature_store.yaml").exists():
                raise FeatureRepoError(f"{self.repo_dir}: no Feast repo here; run `bioverse features init` first")
            from feast import FeatureStore

            with _quiet():
                self._store = FeatureStore(repo_path=str(self.repo_dir))
        return self._store

    def apply(self) -> None:
        """Register the entities, views and sources (``feast apply``)."""
        objects = build_definitions(self.data_dir)
        for view in VIEWS:  # Feast wants a source file to exist before it reads its schema
            path = offline_path(self.data_dir, view)
            if not path.exists():
                self._write_parquet(self._empty(view), path)
        with _quiet():
            self.store.apply(list(objects.values()))

    # ---- offline ----
    @staticmethod
    def _empty(view: str) -> pd.DataFrame:
        columns = {k: pd.Series(dtype="string") for k in KEYS}
        for c in VIEWS[view]:
            columns[c] = pd.Series(dtype="string" if c in ("sex", "smoking") else "float32")
        columns["event_timestamp"] = pd.Series(dtype="datetime64[us, UTC]")
        columns["created"] = pd.Series(dtype="datetime64[us, UTC]")
        return pd.DataFrame(columns)

    @staticmethod
    def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".parquet.tmp")
        os.close(fd)
        try:
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def ingest(self, frame: pd.DataFrame, *, tenant_id: str, observed_at: datetime | None = None) -> int:
        """Add a hospital's rows (patient id and raw features) to the offline store.

        Rows are keyed by ``(tenant_id, patient_id)``; ``observed_at`` (default: now) is
        their event time. A row already there with the same key and time is replaced.

        Returns:
            The number of patients ingested.

        Raises:
            FeatureValueError: a value breaks its feature's contract (not finite, outside its
                plausible range, not a declared category); nothing is written.
        """
        if "patient_id" not in frame.columns:
            raise FeatureDataError("rows need a patient_id column")
        if not tenant_id:
            raise FeatureDataError("a tenant id is required")
        _check_rows(frame)
        when = _utc(observed_at, allow_future=True)
        base = pd.DataFrame({"tenant_id": tenant_id, "patient_id": frame["patient_id"].astype(str)})
        base["event_timestamp"] = when
        base["created"] = pd.Timestamp(datetime.now(UTC))
        for view, columns in VIEWS.items():
            present = [c for c in columns if c in frame.columns]
            if not present:
                continue
            rows = base.copy()
            for c in columns:
                values = frame[c] if c in frame.columns else pd.Series(index=frame.index, dtype=float)
                rows[c] = values.astype("string") if c in ("sex", "smoking") else pd.to_numeric(values).astype("float32")
            path = offline_path(self.data_dir, view)
            existing = pd.read_parquet(path) if path.exists() else self._empty(view)
            merged = pd.concat([existing, rows[existing.columns]], ignore_index=True)
            merged = merged.drop_duplicates(subset=[*KEYS, "event_timestamp"], keep="last")
            self._write_parquet(merged, path)
        return len(base)

    # ---- online ----
    def materialize(self, end: datetime | None = None) -> None:
        """Load the latest offline values into the online store (``feast materialize-incremental``)."""
        with _quiet(), _online_store_errors():
            self.store.materialize_incremental(end_date=end or datetime.now(UTC))

    def online_features(self, tenant_id: str, patient_ids: Sequence[str], features: Sequence[str] = ONLINE_FEATURES) -> list[dict[str, Any]]:
        """Current features of patients of one tenant, one dict per patient (None where unknown)."""
        rows = [{"tenant_id": tenant_id, "patient_id": str(p)} for p in patient_ids]
        with _quiet(), _online_store_errors():
            result = self.store.get_online_features(features=list(features), entity_rows=rows).to_dict()
        names = [f.split(":")[1] for f in features]
        out = []
        for i, patient in enumerate(patient_ids):
            values = {n: _plain(result[n][i]) for n in names}
            out.append({"tenant_id": tenant_id, "patient_id": str(patient), **values})
        return out

    def push(self, *, tenant_id: str, patient_id: str, values: dict[str, Any], observed_at: datetime | None = None) -> PushResult:
        """Push new vitals or labs: to the offline history always, and to the online store
        unless it holds a newer observation of that view (last write by event time).

        Every value is checked against its feature's contract first; nothing is written if
        one fails. A partial observation keeps the view's other current values online; when
        it is backdated (older than the online row), its offline row holds only what it observed.

        Raises:
            FeatureDataError: a value names no pushable feature.
            FeatureValueError: a value is not finite, not a number or not plausible.
            FeatureStoreUnavailable: the online store did not answer.
        """
        from feast.data_source import PushMode

        pushable = {c: v for v, cols in VIEWS.items() if v != "demographics" for c in cols}
        unknown = sorted(set(values) - set(pushable))
        if unknown:
            raise FeatureDataError(f"{unknown[0]}: not an observable feature (one of {', '.join(sorted(pushable))})")
        checked = check_observation(values)
        when = _utc(observed_at)
        result = PushResult(observed_at=when.to_pydatetime())
        with self._push_lock:
            for view in sorted({pushable[c] for c in checked}):
                columns = VIEWS[view]
                current, newest = self._current_row(tenant_id, patient_id, view)
                online = newest is None or int(when.timestamp()) >= newest
                row: dict[str, Any] = {"tenant_id": tenant_id, "patient_id": patient_id, "event_timestamp": when,
                                       "created": pd.Timestamp.now(tz="UTC")}
                for c in columns:  # online: keep the view's other current values; offline-only: only what was observed
                    value = checked.get(c, current.get(c) if online else None)
                    row[c] = None if value is None else float(value)
                frame = pd.DataFrame([row])
                for c in columns:
                    frame[c] = frame[c].astype("float32")
                with _quiet(), _online_store_errors():
                    self.store.push(f"{view}_push", frame, to=PushMode.ONLINE_AND_OFFLINE if online else PushMode.OFFLINE)
                if online:
                    result.updated_views.append(view)
                else:
                    stamp = datetime.fromtimestamp(newest, UTC).isoformat()  # type: ignore[arg-type]
                    result.offline_only_views.append(view)
                    for c in columns:
                        if c in checked:
                            result.not_applied[c] = f"a newer observation (at {stamp}) is current; kept in the history only"
        return result

    def _current_row(self, tenant_id: str, patient_id: str, view: str) -> tuple[dict[str, Any], int | None]:
        """The view's online values of a patient and their event time (Unix seconds; None if none)."""
        features = [f"{view}:{c}" for c in VIEWS[view]]
        rows = [{"tenant_id": tenant_id, "patient_id": patient_id}]
        with _quiet(), _online_store_errors():
            result = self.store.get_online_features(features=features, entity_rows=rows).to_dict(include_event_timestamps=True)
        values = {c: _plain(result[c][0]) for c in VIEWS[view]}
        stamps = [result.get(f"{c}{_TS}", [0])[0] or 0 for c in VIEWS[view]]
        newest = max(stamps) if any(stamps) else None
        return values, newest


@dataclass
class PushResult:
    """What an observation changed.

    Attributes:
        observed_at: Its event time, in UTC.
        updated_views: Views whose online row it became.
        offline_only_views: Views that hold a newer observation online: it is only in the history.
        not_applied: feature -> why its value is not the current one.
    """

    observed_at: datetime
    updated_views: list[str] = field(default_factory=list)
    offline_only_views: list[str] = field(default_factory=list)
    not_applied: dict[str, str] = field(default_factory=dict)


def _utc(when: datetime | None, *, allow_future: bool = False) -> pd.Timestamp:
    """An aware, plausible time in UTC (now if None); see :func:`check_observed_at`."""
    return pd.Timestamp(check_observed_at(when, allow_future=allow_future))


@contextlib.contextmanager
def _online_store_errors() -> Iterator[None]:
    """A store that does not answer (Redis down, SQLite file unreadable) as FeatureStoreUnavailable."""
    try:
        yield
    except FeatureStoreError:
        raise
    except (OSError, sqlite3.Error) as err:
        raise FeatureStoreUnavailable(f"the online feature store does not answer: {type(err).__name__}") from err
    except Exception as err:
        if type(err).__module__.startswith("redis"):
            raise FeatureStoreUnavailable(f"the online feature store does not answer: {type(err).__name__}") from err
        raise


def _check_rows(frame: pd.DataFrame) -> None:
    """Refuse the first value (missing ones aside) that breaks its feature's contract."""
    for column in (c for cols in VIEWS.values() for c in cols if c in frame.columns):
        values = frame[column]
        known = values.notna()
        if column in CATEGORIES:
            bad = known & ~values.astype(str).isin(CATEGORIES[column])
        else:
            numbers = pd.to_numeric(values, errors="coerce").astype(float)
            bad = known & ~numbers.between(*RANGES[column])
        if bad.any():
            first = bad.idxmax()
            raw = values[first]
            try:
                check_category(column, raw) if column in CATEGORIES else check_number(column, _number(raw))
            except FeatureValueError as err:
                raise FeatureValueError(column, f"patient {frame['patient_id'][first]}: {str(err).split(': ', 1)[1]}") from None
            raise FeatureValueError(column, f"patient {frame['patient_id'][first]}: {raw!r} is not acceptable")


def _number(raw: Any) -> Any:
    """A CSV cell as a number where it reads as one (so the error says what is wrong with it)."""
    try:
        return float(raw)
    except (TypeError, ValueError):
        return raw


def _plain(value: Any) -> Any:
    """Feast values as plain Python (NaN -> None)."""
    if value is None:
        return None
    if isinstance(value, float):
        return None if value != value else float(f"{value:.7g}")  # float32 storage, shown as stored
    return value

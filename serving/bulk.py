"""Bulk scoring: every twin's current features, from the offline store, through a registered model.

``bioverse score`` (:func:`score_offline_store`) writes one risk per twin to Parquet:
``tenant_id, patient_id, risk, decision, model_name, model_version, scored_at`` (docs/serving.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.errors import FeatureRepoError
from feature_store.offline import TwinFeatures, read_current_features, utc_micros
from serving.loaded import LoadedModel
from serving.model_source import RegistryModel

__all__ = ["BulkScoreResult", "score_offline_store", "write_scores"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BulkScoreResult:
    """What :func:`score_offline_store` did and how long each phase took (seconds)."""

    rows: int
    model_name: str
    model_version: str
    output: Path
    seconds: dict[str, float]  # model, read, join, score, write
    unknown_categories: dict[str, int] = field(default_factory=dict)  # rows per feature scored as "other"

    @property
    def data_seconds(self) -> float:
        """From reading the store to the renamed output file (the model load excluded)."""
        return sum(v for k, v in self.seconds.items() if k != "model")

    @property
    def predictions_per_second(self) -> float:
        """Twins scored per second of :attr:`data_seconds`."""
        return self.rows / self.data_seconds if self.data_seconds else float("inf")


def write_scores(path: Path, twins: TwinFeatures, risk: np.ndarray, *, model_name: str, model_version: str,
                 scored_at: datetime, threshold: float = 0.5) -> None:
    """Write the scores as Parquet, atomically (a temporary file in the same folder, then a rename).

    Repeated values (tenant, model, version, time) go out as Arrow dictionaries, which the writer
    stores as Parquet dictionary pages without hashing a string per row; unique ones
    (patient ids, risks) are stored plain. Readers see plain string columns.
    """
    n = len(twins)
    once = pa.array(np.zeros(n, dtype=np.int8))
    when = pa.array([utc_micros(scored_at)], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    tenant = twins.tenant_id if pa.types.is_dictionary(twins.tenant_id.type) else twins.tenant_id.dictionary_encode()
    table = pa.table({
        "tenant_id": tenant,
        "patient_id": twins.patient_id,
        "risk": pa.array(risk, pa.float64()),
        "decision": pa.array(np.asarray(risk) >= threshold, pa.bool_()),
        "model_name": pa.DictionaryArray.from_arrays(once, pa.array([model_name])),
        "model_version": pa.DictionaryArray.from_arrays(once, pa.array([str(model_version)])),
        "scored_at": pa.DictionaryArray.from_arrays(once, when),
    })
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic(path) as tmp:
        pq.write_table(table, tmp, compression="snappy",
                       use_dictionary=["tenant_id", "model_name", "model_version", "scored_at"],
                       store_schema=False,  # no Arrow schema: the dictionaries read back as plain columns
                       write_statistics=False)  # min/max of a million strings: a third of the write, for no use


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(name)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def score_offline_store(*, tracking_uri: str, model: str, feature_repo: Path, output: Path, alias: str = "production",
                        tenant: str | None = None, as_of: datetime | None = None,
                        threads: int | None = None) -> BulkScoreResult:
    """Score every twin's current features with ``models:/<model>@<alias>`` into ``output`` (Parquet).

    Raises:
        ModelNotReadyError: no such model or alias.
        FeatureRepoError: no Feast repo in ``feature_repo``.
        FeatureDataError: no current features (for ``tenant``).
    """
    started = time.perf_counter()
    if not (Path(feature_repo) / "feature_store.yaml").exists():  # before the slower registry round trip
        raise FeatureRepoError(f"{feature_repo}: no Feast repo here; run `bioverse features init` and ingest first")
    registered = RegistryModel(tracking_uri, model, alias).load_current(LoadedModel)
    seconds = {"model": time.perf_counter() - started}
    scored_at = as_of or datetime.now(UTC)
    twins = read_current_features(feature_repo, registered.scorer.features, tenant=tenant, as_of=scored_at)
    seconds.update(twins.seconds)
    started = time.perf_counter()
    unknown: dict[str, int] = {}
    risk = registered.scorer.score_columns(twins.columns, threads=threads or len(os.sched_getaffinity(0)), unknown=unknown)
    seconds["score"] = time.perf_counter() - started
    started = time.perf_counter()
    write_scores(output, twins, risk, model_name=registered.name, model_version=registered.version, scored_at=scored_at,
                 threshold=registered.scorer.threshold)
    seconds["write"] = time.perf_counter() - started
    log.info("scored %d twins with %s v%s into %s", len(twins), registered.name, registered.version, output)
    if unknown:
        log.warning("categories %s v%s never learned, scored as other (rows per feature): %s", registered.name,
                    registered.version, unknown)
    return BulkScoreResult(len(twins), registered.name, registered.version, Path(output), seconds, unknown)

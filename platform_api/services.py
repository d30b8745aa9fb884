"""What the API scores with: patients' features (Feast, TTL-cached), the served model, the prediction cache, the recorders."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from experiments.errors import TrackingError
from experiments.terminology import ModelTerminology, version_terminology
from feature_store.errors import FeatureRepoError
from feature_store.repo import FeatureRepo, PushResult
from feature_store.settings import get_settings as feature_settings
from platform_api.auth import principal_cache, signing_key
from platform_api.cache import LocalCache, TTLStore, make_cache
from platform_api.db import get_engine
from platform_api.recorder import Recorder
from platform_api.settings import get_settings
from serving.errors import UnapprovedVersion
from serving.follow import AliasFollower
from serving.loaded import LoadedModel
from serving.model_source import RegistryModel
from serving.rollout_stats import StatsBuffer
from serving.routing import TrafficSplit

log = logging.getLogger(__name__)

__all__ = [
    "FeatureService",
    "ModelService",
    "TerminologyService",
    "close_recorders",
    "get_features",
    "get_models",
    "get_prediction_cache",
    "get_recorder",
    "get_terminology",
    "get_twin_index",
    "reset",
]


class FeatureService:
    """Current features of a tenant's patients, cached for the twin-state TTL."""

    def __init__(self, repo: FeatureRepo, cache: TTLStore) -> None:
        self.repo = repo
        self.cache = cache

    @staticmethod
    def _key(tenant_id: str, patient_id: str) -> str:
        return f"{tenant_id}|{patient_id}"

    def cached(self, tenant_id: str, patient_ids: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The patients' cached features, and the patients not in the cache."""
        keys = {self._key(tenant_id, p): p for p in dict.fromkeys(patient_ids)}
        hits = self.cache.get_many(keys)
        found = {keys[k]: v for k, v in hits.items()}
        return found, [p for k, p in keys.items() if k not in hits]

    def fetch(self, tenant_id: str, patient_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Read the patients from the online store (blocking) and cache them."""
        if not (self.repo.repo_dir / "feature_store.yaml").exists():
            raise FeatureRepoError("the feature store is not set up: run `bioverse features init` and ingest data")
        rows = self.repo.online_features(tenant_id, list(patient_ids))
        fresh = {r["patient_id"]: {k: v for k, v in r.items() if k not in ("tenant_id", "patient_id")} for r in rows}
        self.cache.set_many({self._key(tenant_id, p): v for p, v in fresh.items()})
        return fresh

    def current(self, tenant_id: str, patient_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """patient id -> features (None where unknown), from the cache or the online store."""
        found, missing = self.cached(tenant_id, patient_ids)
        if missing:
            found.update(self.fetch(tenant_id, missing))
        return found

    def observe(self, tenant_id: str, patient_id: str, values: dict[str, float], observed_at: datetime | None) -> PushResult:
        """Push new observations to Feast (last write by event time) and drop the patient's cached state."""
        if not (self.repo.repo_dir / "feature_store.yaml").exists():
            raise FeatureRepoError("the feature store is not set up: run `bioverse features init` and ingest data")
        result = self.repo.push(tenant_id=tenant_id, patient_id=patient_id, values=values, observed_at=observed_at)
        self.cache.delete(self._key(tenant_id, patient_id))
        return result


class ModelService(AliasFollower[LoadedModel]):
    """The API's risk model: :class:`serving.follow.AliasFollower` checked on request, at most
    every ``poll`` seconds (no thread), with the gate's refusals reported to ``on_refused``
    (the API audits them) and the garbage collector frozen after each load (the model lives
    as long as the process). ``split`` routes a rollout's share of traffic to its candidate
    (:mod:`serving.routing`), counting each version's calls in ``stats``."""

    def __init__(self, source: RegistryModel, poll: float, on_refused: Callable[[str, str], None] | None = None,
                 stats: StatsBuffer | None = None) -> None:
        super().__init__(source, LoadedModel, poll_seconds=poll, on_refused=on_refused,
                         on_loaded=lambda _model: gc.freeze(), background=False)
        self.split = TrafficSplit(self, stats=stats)


class TerminologyService:
    """Model version -> its codes for FHIR output (its run's spec and its registry tags),
    read once per version: a registered version never changes."""

    def __init__(self, tracking_uri: str, client: Any = None) -> None:
        self.tracking_uri = tracking_uri
        self._client = client  # an MlflowClient, made on first use
        self._known: dict[tuple[str, str], ModelTerminology] = {}
        self._lock = threading.Lock()

    def of(self, name: str, version: str) -> ModelTerminology:
        """The version's terminology; a version gone from the registry, or one whose logged
        spec has an unusable ``fhir`` section, gets the defaults (logged).

        Raises:
            TrackingError: the registry or its artifact store did not answer.
        """
        key = (str(name), str(version))
        known = self._known.get(key)
        if known is not None:
            return known
        from mlflow.exceptions import MlflowException

        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        try:
            terminology = version_terminology(self._client, *key)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise TrackingError(f"the registry did not answer for {key[0]} version {key[1]}: {err.message}") from err
            log.warning("%s version %s is not in the registry: FHIR output without its codes", *key)
            terminology = ModelTerminology()
        except ValueError as err:
            log.error("%s version %s: %s; FHIR output without its codes", *key, err)
            terminology = ModelTerminology()
        with self._lock:
            return self._known.setdefault(key, terminology)


@functools.cache
def get_features() -> FeatureService:
    """The process's feature service."""
    settings = get_settings()
    return FeatureService(FeatureRepo(feature_settings().repo_dir),
                          make_cache(settings.cache_url, "twin-state", settings.twin_cache_seconds))


@functools.cache
def get_models() -> ModelService:
    """The process's model service."""
    settings = get_settings()
    source = RegistryModel(settings.resolved_tracking_uri(), settings.model_name, settings.model_alias)
    stats = StatsBuffer(get_engine(settings.resolved_database_url()))  # rollouts' per-version counts
    return ModelService(source, settings.model_poll_seconds, on_refused=_audit_refusal, stats=stats)


@functools.cache
def get_terminology() -> TerminologyService:
    """The process's model terminology lookup (codes of the FHIR output)."""
    return TerminologyService(get_settings().resolved_tracking_uri())


def _audit_refusal(version: str, reason: str) -> None:
    """Append the gate's refusal to the audit log (actor ``gate``, role ``system``)."""
    from experiments.review_records import audit_action
    from platform_api.audit import audited
    from platform_api.auth import Principal
    from platform_api.db import session_factory

    settings = get_settings()
    gate = Principal("gate", "system", None)
    with session_factory(settings.resolved_database_url())() as session, contextlib.suppress(UnapprovedVersion), \
            audited(session, gate, audit_action("serve-refused", settings.model_name, version)):
        raise UnapprovedVersion(reason)


@functools.cache
def get_prediction_cache() -> TTLStore:
    """Twin id -> its latest prediction (the deployment guide's 300 s prediction cache)."""
    settings = get_settings()
    return make_cache(settings.cache_url, "prediction", settings.prediction_cache_seconds)


@functools.cache
def get_twin_index() -> LocalCache:
    """(tenant, twin id) -> patient id: a twin's identity never changes, so the hot path
    skips the twin lookup for twin-state TTL seconds (in-process)."""
    return LocalCache(get_settings().twin_cache_seconds)


_recorders: dict[str, Recorder] = {}
_recorders_lock = threading.Lock()


def get_recorder(url: str) -> Recorder:
    """The process's group-committing writer of predictions and audit events for a database."""
    recorder = _recorders.get(url)
    if recorder is None:
        with _recorders_lock:
            recorder = _recorders.setdefault(url, Recorder(get_engine(url)))
    return recorder


def close_recorders() -> None:
    """Commit what the recorders hold and stop them (the app's shutdown)."""
    with _recorders_lock:
        recorders = list(_recorders.values())
        _recorders.clear()
    for recorder in recorders:
        recorder.close()
    if get_models.cache_info().currsize and (stats := get_models().split.stats) is not None:
        stats.flush()  # the rollout counts this process holds


def reset() -> None:
    """Forget the process's services (tests; a settings change): stops the recorders first."""
    close_recorders()
    if get_models.cache_info().currsize and (stats := get_models().split.stats) is not None:
        stats.close()
    from platform_api.vision import get_vision

    for cached in (get_features, get_models, get_prediction_cache, get_terminology, get_twin_index, principal_cache, signing_key, get_vision):
        cached.cache_clear()

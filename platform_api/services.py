"""What the API scores with: patients' current features (Feast, TTL-cached) and the model
(``models:/<name>@<alias>``, scored in-process and re-resolved every few seconds)."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cachetools import TTLCache

from feature_store.errors import FeatureRepoError
from feature_store.repo import FeatureRepo
from feature_store.settings import get_settings as feature_settings
from platform_api.settings import get_settings
from serving.model_source import LoadedModel, RegistryModel

__all__ = ["FeatureService", "ModelService", "get_features", "get_models"]


class FeatureService:
    """Current features of a tenant's patients, cached for ``ttl`` seconds (twin state)."""

    def __init__(self, repo: FeatureRepo, ttl: float) -> None:
        self.repo = repo
        self._cache: TTLCache[tuple[str, str], dict[str, Any]] = TTLCache(maxsize=100_000, ttl=ttl)
        self._lock = threading.Lock()

    def current(self, tenant_id: str, patient_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """patient id -> features (None where unknown), from the cache or the online store."""
        with self._lock:
            found = {p: self._cache[(tenant_id, p)] for p in patient_ids if (tenant_id, p) in self._cache}
        missing = [p for p in dict.fromkeys(patient_ids) if p not in found]
        if missing:
            if not (self.repo.repo_dir / "feature_store.yaml").exists():
                raise FeatureRepoError("the feature store is not set up: run `bioverse features init` and ingest data")
            rows = self.repo.online_features(tenant_id, missing)
            fresh = {r["patient_id"]: {k: v for k, v in r.items() if k not in ("tenant_id", "patient_id")} for r in rows}
            with self._lock:
                for patient, values in fresh.items():
                    self._cache[(tenant_id, patient)] = values
            found.update(fresh)
        return found

    def observe(self, tenant_id: str, patient_id: str, values: dict[str, float], observed_at: datetime | None) -> list[str]:
        """Push new observations to Feast and drop the patient's cached state."""
        updated = self.repo.push(tenant_id=tenant_id, patient_id=patient_id, values=values, observed_at=observed_at)
        with self._lock:
            self._cache.pop((tenant_id, patient_id), None)
        return updated


class ModelService:
    """The served model version, re-resolved from the registry at most every ``poll`` seconds.

    A new version is loaded beside the old one and swapped in with one assignment, so
    requests in flight keep the version they started with.
    """

    def __init__(self, source: RegistryModel, poll: float) -> None:
        self.source = source
        self.poll = poll
        self._model: LoadedModel | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def current(self) -> LoadedModel:
        """The model the alias points at (raises ModelNotReadyError if none)."""
        model = self._model
        if model is not None and time.monotonic() - self._checked < self.poll:
            return model
        with self._lock:
            if self._model is None or time.monotonic() - self._checked >= self.poll:
                version = self.source.current_version()
                if self._model is None or self._model.version != version:
                    self._model = self.source.load(version)
                self._checked = time.monotonic()
            return self._model


@functools.cache
def get_features() -> FeatureService:
    """The process's feature service."""
    return FeatureService(FeatureRepo(feature_settings().repo_dir), get_settings().twin_cache_seconds)


@functools.cache
def get_models() -> ModelService:
    """The process's model service."""
    settings = get_settings()
    source = RegistryModel(settings.resolved_tracking_uri(), settings.model_name, settings.model_alias)
    return ModelService(source, settings.model_poll_seconds)

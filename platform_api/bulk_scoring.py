"""Bulk scoring of the offline store with the platform's defaults: model, alias, MLflow, Feast repo, output file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.settings import get_settings as experiment_settings
from feature_store.settings import get_settings as feature_settings
from platform_api.settings import get_settings as api_settings

if TYPE_CHECKING:
    from serving.bulk import BulkScoreResult

__all__ = ["score_twins"]


def score_twins(*, output: Path | None = None, model: str | None = None, alias: str | None = None,
                tracking_uri: str | None = None, feature_repo: Path | None = None,
                tenant: str | None = None) -> BulkScoreResult:
    """Score every twin's current features (``tenant``'s only, if given) with the registered model
    under the alias, each left out taken from the API's settings; the scores go to ``output``
    (default: ``<data dir>/scores/<model>-<UTC time>.parquet``).

    Raises:
        ModelNotReadyError: no such model or alias.
        FeatureRepoError: no Feast repo.
        FeatureDataError: no current features (for ``tenant``).
    """
    from serving.bulk import score_offline_store

    settings = api_settings()
    name = model or settings.model_name
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = output or experiment_settings().data_dir / "scores" / f"{name}-{stamp}.parquet"
    return score_offline_store(tracking_uri=tracking_uri or settings.resolved_tracking_uri(), model=name,
                               alias=alias or settings.model_alias, feature_repo=feature_repo or feature_settings().repo_dir,
                               output=target, tenant=tenant)

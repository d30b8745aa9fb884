"""The Feast repo the settings name, ready to use."""

from __future__ import annotations

from feature_store.repo import FeatureRepo
from feature_store.settings import get_settings

__all__ = ["configured_repo"]


def configured_repo(*, init: bool = False) -> FeatureRepo:
    """The repo at ``BIOVERSE_FEATURE_REPO``, created (definitions applied) when ``init`` or when it has none yet;
    its online store comes from ``BIOVERSE_ONLINE_STORE`` and ``BIOVERSE_REDIS_URL``, its registry from
    ``BIOVERSE_FEAST_REGISTRY`` (or the production profile, feature_store/profile.py)."""
    settings = get_settings()
    repo = FeatureRepo(settings.repo_dir)
    if init or not (repo.repo_dir / "feature_store.yaml").exists():
        repo.init(online_store=settings.online_store, redis_url=settings.redis_url, project=settings.feast_project,
                  registry=settings.feast_registry)
    return repo

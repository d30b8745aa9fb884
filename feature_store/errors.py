"""Errors raised by the feature store layer.

Hierarchy::

    FeatureStoreError
    ├── FeatureRepoError      the Feast repo is missing or its config is wrong
    └── FeatureDataError      observations or ingested rows are unusable
"""

from __future__ import annotations

__all__ = ["FeatureDataError", "FeatureRepoError", "FeatureStoreError"]


class FeatureStoreError(Exception):
    """Base class of every error raised by :mod:`feature_store`."""


class FeatureRepoError(FeatureStoreError):
    """The Feast repository cannot be created, read or applied."""


class FeatureDataError(FeatureStoreError):
    """Rows or observations that the feature views cannot take."""

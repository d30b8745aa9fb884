"""Errors raised by the feature store layer.

Hierarchy::

    FeatureStoreError
    ├── FeatureRepoError          the Feast repo is missing or its config is wrong
    │   └── FeatureStoreUnavailable   the online store does not answer (an outage)
    ├── FeatureDataError          observations or ingested rows are unusable
    │   └── FeatureValueError         one feature's value breaks its declared contract
    ├── FeatureQueryError         a read's parameters are unusable (also a ValueError)
    ├── ProfileError              the store profile is half-configured (feature_store/profile.py)
    └── StoredValueError          a value already in the store breaks its feature's contract
"""

from __future__ import annotations

__all__ = ["FeatureDataError", "FeatureQueryError", "FeatureRepoError", "FeatureStoreError", "FeatureStoreUnavailable", "FeatureValueError",
           "ProfileError", "StoredValueError"]


class FeatureStoreError(Exception):
    """Base class of every error raised by :mod:`feature_store`."""


class FeatureRepoError(FeatureStoreError):
    """The Feast repository cannot be created, read or applied."""


class FeatureStoreUnavailable(FeatureRepoError):
    """The online store (SQLite file, Redis) did not answer a read or a write."""


class FeatureDataError(FeatureStoreError):
    """Rows or observations that the feature views cannot take."""


class FeatureValueError(FeatureDataError):
    """A value that is not finite, not plausible or not one of the declared categories.

    Attributes:
        feature: The feature's name.
    """

    def __init__(self, feature: str, message: str) -> None:
        super().__init__(f"{feature}: {message}")
        self.feature = feature


class FeatureQueryError(FeatureStoreError, ValueError):
    """A read asked for something the store cannot answer (a point in time without a zone)."""


class StoredValueError(FeatureStoreError):
    """Values read from the store that break their features' contracts (written before the
    contract existed, or around it); nothing is scored on them.

    Attributes:
        problems: feature -> what is wrong with its stored value.
    """

    def __init__(self, subject: str, problems: dict[str, str]) -> None:
        detail = "; ".join(f"{f}: {why}" for f, why in sorted(problems.items()))
        super().__init__(f"{subject}: stored features break their contract ({detail}); record a new observation")
        self.subject = subject
        self.problems = problems


class ProfileError(FeatureStoreError):
    """The store profile (``BIOVERSE_PROFILE``, ``BIOVERSE_CONFIG``) is missing or misstates a setting."""

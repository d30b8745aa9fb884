"""Errors raised by the serving layer.

Hierarchy::

    ServingError
    ├── ModelNotReadyError     no model version carries the alias being served
    │   └── UnapprovedVersion  the alias points at a version without a valid approval
    └── PredictionInputError   a request's features are unusable
"""

from __future__ import annotations

__all__ = ["ModelNotReadyError", "PredictionInputError", "ServingError", "UnapprovedVersion"]


class ServingError(Exception):
    """Base class of every error raised by :mod:`serving`."""


class ModelNotReadyError(ServingError):
    """The registry has no version under the served alias (nothing approved yet)."""


class PredictionInputError(ServingError):
    """Features that the model cannot score (unknown column, wrong type)."""


class UnapprovedVersion(ModelNotReadyError):
    """The served alias points at a version the review gate did not approve (moved by hand)."""

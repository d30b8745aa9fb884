"""Errors raised by the experiments layer.

Hierarchy::

    ExperimentError
    ├── SpecError          an experiment spec is unreadable or invalid
    ├── TrackingError      MLflow tracking or the registry failed
    └── LocalValidationError  a validator's file has nothing held out to score
"""

from __future__ import annotations

__all__ = ["ExperimentError", "LocalValidationError", "SpecError", "TrackingError"]


class ExperimentError(Exception):
    """Base class of every error raised by :mod:`experiments`."""


class SpecError(ExperimentError):
    """An experiment spec that cannot be read or does not validate.

    The message names the file and the field at fault, e.g.
    ``spec.yaml: training.rounds: must be greater than 0``.
    """


class TrackingError(ExperimentError):
    """MLflow tracking or model registration failed; nothing was registered."""


class LocalValidationError(ExperimentError):
    """``registry validate`` cannot score the part asked for: it is empty, or it holds data
    the version was trained on (the message names the file and the part)."""

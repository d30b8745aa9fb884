"""Errors raised by the experiments layer.

Hierarchy::

    ExperimentError
    ├── SpecError             an experiment spec is unreadable or invalid
    │   └── FhirSectionError  a logged spec's fhir section is invalid (also a ValueError)
    ├── TrackingError         MLflow tracking or the registry failed
    ├── SecretKeyError        a secret key file that cannot be used
    ├── ReceiptInvalid        a read receipt that is missing, forged, expired or someone else's
    └── ReviewError           a review or promotion refused, in one line
        ├── VersionNotFound, NotPending, NotApproved, NothingToRollBack
        ├── SelfApproval, LauncherUnknown, WrongScope      who decides
        ├── ReportMissing, ReportStale, ReportNotRead      what they read
        └── RationaleRequired, RationaleTooLong
"""

from __future__ import annotations

__all__ = [
    "ExperimentError",
    "FhirSectionError",
    "LauncherUnknown",
    "NotApproved",
    "NotPending",
    "NothingToRollBack",
    "RationaleRequired",
    "RationaleTooLong",
    "ReceiptInvalid",
    "ReportMissing",
    "ReportNotRead",
    "ReportStale",
    "ReviewError",
    "SecretKeyError",
    "SelfApproval",
    "SpecError",
    "TrackingError",
    "VersionNotFound",
    "WrongScope",
]


class ExperimentError(Exception):
    """Base class of every error raised by :mod:`experiments`."""


class SpecError(ExperimentError):
    """An experiment spec that cannot be read or does not validate.

    The message names the file and the field at fault, e.g.
    ``spec.yaml: training.rounds: must be greater than 0``.
    """


class FhirSectionError(SpecError, ValueError):
    """The ``fhir`` section of a version's logged spec does not validate (names the field, e.g.
    ``fhir.outcome: ...``); also a ``ValueError`` for callers that catch one."""


class TrackingError(ExperimentError):
    """MLflow tracking or model registration failed; nothing was registered."""


class SecretKeyError(ExperimentError):
    """A secret key file that exists but cannot be used (unreadable, too short, too open)."""


class ReceiptInvalid(ExperimentError):
    """A read receipt that is missing, forged, expired, or bound to another reader or version."""


class ReviewError(ExperimentError):
    """A review or promotion refused; the message says why, in one line."""


class VersionNotFound(ReviewError):
    """No such registered model or version."""


class NotPending(ReviewError):
    """The version was already approved or rejected (perhaps by another validator just now)."""


class SelfApproval(ReviewError):
    """The validator launched the experiment that produced the version."""


class LauncherUnknown(ReviewError):
    """The version does not record who launched it, so independence cannot be checked."""


class ReportMissing(ReviewError):
    """Approval without the version's validation report."""


class ReportStale(ReviewError):
    """The report changed since registration, or is not the one the validator read."""


class NotApproved(ReviewError):
    """Promotion (or rollback) to a version that is not approved."""


class NothingToRollBack(ReviewError):
    """No earlier approved version to move ``production`` back to."""


class ReportNotRead(ReviewError):
    """No valid read receipt: the validator has not been shown to have fetched the report."""


class WrongScope(ReviewError):
    """The validator's key is bound to a tenant, and the model is another tenant's or platform-wide."""


class RationaleRequired(ReviewError):
    """The rationale is missing or shorter than ``experiments.registry.MIN_RATIONALE`` characters."""


class RationaleTooLong(ReviewError):
    """The rationale is longer than ``experiments.registry.MAX_RATIONALE`` characters."""

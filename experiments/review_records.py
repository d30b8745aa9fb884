"""The review workflow's records and refusals: :class:`VersionInfo`, :class:`Decision` and the
:class:`ReviewError` family (re-exported by :mod:`experiments.registry`, which raises them).

Hierarchy::

    ReviewError (ExperimentError)   a review or promotion refused, in one line
    ├── VersionNotFound, NotPending, NotApproved, NothingToRollBack
    ├── SelfApproval, LauncherUnknown, WrongScope      who decides
    ├── ReportMissing, ReportStale, ReportNotRead      what they read
    └── RationaleRequired, RationaleTooLong
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from experiments.errors import ExperimentError

__all__ = ["Decision", "LauncherUnknown", "NotApproved", "NotPending", "NothingToRollBack", "RationaleRequired", "RationaleTooLong", "ReportMissing", "ReportNotRead", "ReportStale", "ReviewError", "SelfApproval", "VersionInfo", "VersionNotFound", "WrongScope", "audit_action"]


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
    """The rationale is missing or shorter than :data:`MIN_RATIONALE` characters."""


class RationaleTooLong(ReviewError):
    """The rationale is longer than :data:`MAX_RATIONALE` characters."""


@dataclass(frozen=True)
class VersionInfo:
    """A registered version as the review workflow sees it (metrics are None when absent)."""

    name: str
    version: str
    created: datetime
    review_status: str
    validation_status: str
    auroc: float | None
    calibration_slope: float | None
    epsilon: float | None
    aliases: tuple[str, ...]
    launched_by: str | None
    run_id: str | None
    experiment: str | None
    decided_by: str | None
    decided_at: str | None
    rationale: str | None
    report_sha256: str | None = None  # the version's validation.report_sha256 tag
    tags: dict[str, str] = field(default_factory=dict)
    quality_warning: str | None = None  # tag validation.quality_warning, set at registration
    gate_warning: str | None = None  # "production alias without approval" when the alias was moved by hand


@dataclass(frozen=True)
class Decision:
    """One review or alias decision, for the caller's audit log.

    ``action``: approve | reject | promote | rollback; ``outcome``: approved | rejected |
    promoted | rolled back | unchanged; ``previous``: the version that held ``production``
    before (promote and rollback).
    """

    action: str
    name: str
    version: str
    actor: str
    at: str
    rationale: str | None
    report_sha256: str | None
    outcome: str
    previous: str | None = None

    @property
    def audit_action(self) -> str:
        """The audit log's ``action`` for this decision."""
        return audit_action(self.action, self.name, self.version)

    def as_dict(self) -> dict[str, Any]:
        """The record as plain JSON-able values."""
        return asdict(self)


def audit_action(action: str, name: str, version: str) -> str:
    """``registry.<action> <name>/<version>``, at most 64 characters (the audit log's column)."""
    room = 64 - len(f"registry.{action} /{version}")
    short = name if len(name) <= room else f"{name[: max(room - 3, 0)]}..."
    return f"registry.{action} {short}/{version}"[:64]

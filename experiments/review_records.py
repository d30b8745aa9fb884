"""The review workflow's records: a version as the registry shows it, and a review decision."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Decision", "VersionInfo", "audit_action"]


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

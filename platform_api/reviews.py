"""The one review-decision service: a decision through the registry's gate, audited as its decider."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from experiments.errors import ReviewError
from experiments.review_records import VersionInfo, audit_action
from platform_api.audit import audited

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from experiments.registry import ModelRegistry
    from experiments.review_records import Decision
    from platform_api.auth import Principal

__all__ = ["ReviewOverview", "ReviewService"]


@dataclass(frozen=True)
class ReviewOverview:
    """What awaits review: every model's pending versions, those whose production alias was
    moved by hand (``gate_warning``), and every version of the served model, newest first."""

    pending: list[VersionInfo]
    gated: list[VersionInfo]
    versions: list[VersionInfo]


class ReviewService:
    """Approve, reject, promote and roll back versions of a registry, each decision (or its
    refusal, with the error's name as outcome) appended to the platform's audit log.

    The CLI, the JSON API and the review page all decide through this class, so none of
    them can do what the others cannot. The gate itself lives in :mod:`experiments.registry`.
    """

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def approve(self, session: Session, who: Principal, name: str, version: str, *, rationale: str,
                receipt: str) -> Decision:
        """Approve a pending version with the validator's read receipt of its current report."""
        return self._audited(session, who, "approve", (name, version), lambda: self.registry.approve(
            name, version, validator=who.identity, rationale=rationale, receipt=receipt))

    def reject(self, session: Session, who: Principal, name: str, version: str, *, rationale: str,
               receipt: str | None) -> Decision:
        """Reject a pending version (it can never be promoted)."""
        return self._audited(session, who, "reject", (name, version), lambda: self.registry.reject(
            name, version, validator=who.identity, rationale=rationale, receipt=receipt))

    def promote(self, session: Session, who: Principal, name: str, version: str) -> Decision:
        """Give an approved version the ``production`` alias."""
        return self._audited(session, who, "promote", (name, version),
                             lambda: self.registry.promote(name, version, actor=who.identity.display))

    def rollback(self, session: Session, who: Principal, name: str, to_version: str | None) -> Decision:
        """Move ``production`` back to ``to_version`` (default: the previous approved production version)."""
        return self._audited(session, who, "rollback", (name, to_version or "previous"),
                             lambda: self.registry.rollback(name, actor=who.identity.display, to_version=to_version))

    def overview(self, served: str) -> ReviewOverview:
        """Every registered model's pending and hand-moved versions, and the served model's versions."""
        names: list[str] = []
        token: str | None = None
        while True:
            page = self.registry.client.search_registered_models(page_token=token)
            names.extend(m.name for m in page)
            token = page.token
            if not token:
                break
        every = {name: self._versions(name) for name in sorted(set(names))}
        flat = [v for versions in every.values() for v in versions]
        return ReviewOverview(pending=[v for v in flat if v.review_status == "pending"],
                              gated=[v for v in flat if v.gate_warning],
                              versions=every.get(served) or self._versions(served))

    def _versions(self, name: str) -> list[VersionInfo]:
        try:
            return self.registry.versions(name)
        except ReviewError:  # no such model yet
            return []

    @staticmethod
    def _audited(session: Session, who: Principal, action: str, target: tuple[str, str],
                 decide: Callable[[], Decision]) -> Decision:
        with audited(session, who, audit_action(action, *target)):
            return decide()

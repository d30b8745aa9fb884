"""What ``bioverse data check`` found at one hospital, and across hospitals (any modality)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SiteCheck", "SitesReview"]


@dataclass(frozen=True)
class SiteCheck:
    """One hospital's data, checked against its contract (it met it).

    Attributes:
        hospital: The hospital id.
        lines: What was read, one line each (split, class or outcome mix, canonicalised values).
        warnings: Warnings about this hospital alone (a tiny held-out part).
        detail: The modality's own findings, for its review across hospitals (tabular: a ``TableCheck``).
    """

    hospital: str
    lines: list[str]
    warnings: list[str] = field(default_factory=list)
    detail: Any = None


@dataclass(frozen=True)
class SitesReview:
    """Findings across the checked hospitals (tabular: vocabularies that disagree).

    Attributes:
        problems: Findings the spec refuses (the check fails).
        warnings: Findings the spec tolerates (shown).
    """

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

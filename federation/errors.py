"""Errors raised by the federation layer.

Hierarchy::

    FederationError
    ├── BudgetExceededError    a hospital's privacy ledger refuses to train
    ├── LedgerError            a privacy ledger is unreadable, another hospital's, or a run
    │                          was charged on another dataset
    ├── SitePolicyRefusal      a hospital's policy refuses a release (e.g. statistics)
    ├── SiteConfigError        a hospital's node config is incomplete or wrong
    ├── AuditLogError          a hospital's audit log cannot be read or written
    ├── CoordinatorCheckError  a hospital cannot reach or trust its coordinator
    ├── TooFewHospitalsError   fewer hospitals answered than the spec's minimum
    ├── CertificateError       a certificate or node key is missing, garbled, expired or
    │                          does not match (CA, address)
    ├── CoordinatorError       the coordinator's folder, proxy or SuperLink is unusable
    ├── VocabularyError        a hospital's categorical values are not shared (policy refuse)
    ├── ResumeError            a run cannot be resumed (unknown, finished, no checkpoint)
    └── LaunchError            the Flower engine could not start or run the app
"""

from __future__ import annotations

__all__ = [
    "AuditLogError",
    "BudgetExceededError",
    "CertificateError",
    "CoordinatorCheckError",
    "CoordinatorError",
    "FederationError",
    "LaunchError",
    "LedgerError",
    "ResumeError",
    "SiteConfigError",
    "SitePolicyRefusal",
    "TooFewHospitalsError",
    "VocabularyError",
]


class FederationError(Exception):
    """Base class of every error raised by :mod:`federation`."""


class BudgetExceededError(FederationError):
    """Training would take a hospital past its privacy budget; it refuses."""

    def __init__(self, hospital_id: str, spent: float, requested: float, budget: float) -> None:
        self.hospital_id = hospital_id
        self.spent, self.requested, self.budget = spent, requested, budget
        super().__init__(
            f"privacy budget exhausted: {spent:.3f} spent in earlier runs + {requested:.3f} "
            f"for this run > budget {budget:.3f}"
        )


class LedgerError(FederationError):
    """A hospital's privacy ledger cannot be used: unreadable, written by another hospital, or
    holding this run's charges against another dataset. Nothing is charged."""


class SitePolicyRefusal(FederationError):
    """A hospital's own policy refuses a release, whatever its budget."""

    def __init__(self, hospital_id: str, what: str) -> None:
        self.hospital_id = hospital_id
        super().__init__(f"{hospital_id}'s policy refuses {what}")


class SiteConfigError(FederationError):
    """A hospital's node config (or the simulation's hospital list) is unusable."""


class AuditLogError(FederationError):
    """A hospital's audit log cannot be read or written (nothing is released unaudited)."""


class CoordinatorCheckError(FederationError):
    """A hospital cannot reach its coordinator, or the certificate it shows is not to be trusted."""


class TooFewHospitalsError(FederationError):
    """Fewer hospitals answered a round than the experiment's minimum."""


class LaunchError(FederationError):
    """The Flower engine failed to start or the run failed."""


class VocabularyError(FederationError):
    """A hospital reported categorical values no other hospital has, or values outside the
    declared list, and the spec's ``data.unknown_categories`` is ``refuse``."""


class CertificateError(FederationError):
    """A certificate or a node key is missing, garbled, expired, or does not match its CA or
    the address dialled."""


class CoordinatorError(FederationError):
    """The coordinator's folder, reverse proxy or SuperLink cannot be set up or started."""


class ResumeError(FederationError):
    """A run cannot be resumed: unknown, already finished or still running, without a
    checkpoint, or resumed with another spec than it ran."""

"""What a hospital's privacy ledger adds up to, per dataset the budget protects."""

from __future__ import annotations

from pathlib import Path

from federation.ledger import ANY_DATASET, LedgerEntry, PrivacyLedger

__all__ = ["spent_per_dataset"]


def spent_per_dataset(path: Path, hospital_id: str, entries: list[LedgerEntry]) -> dict[str, float]:
    """Total epsilon spent on each dataset named in ``entries`` (sorted), as the ledger counts it
    (runs charged across every dataset count against each); ``ANY_DATASET`` alone when none is named."""
    datasets = sorted({e.dataset for e in entries} - {ANY_DATASET}) or [ANY_DATASET]
    return {dataset: PrivacyLedger(path, hospital_id, None if dataset == ANY_DATASET else dataset).spent()
            for dataset in datasets}

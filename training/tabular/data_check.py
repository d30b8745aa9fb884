"""``bioverse data check`` for tables: a hospital's split, missing codes and categories."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from training.categories import VocabularyFinding, vocabulary_findings
from training.site_check import SiteCheck, SitesReview
from training.tabular.contract import missing_code_counts, respelled_counts
from training.tabular.data import HospitalSplit, load_split

__all__ = ["SMALL_TEST_PART", "TableCheck", "check_site", "check_table", "review_sites", "vocabulary_report"]

#: A held-out part smaller than this gets a warning: its AUROC and calibration are noise.
SMALL_TEST_PART = 30


@dataclass(frozen=True)
class TableCheck:
    """What ``data check`` found in one hospital's table (it met the contract).

    Attributes:
        hospital: The hospital id.
        split: Its train/val/test parts, as a run would split them.
        missing_codes: Per column with missing codes, how many values they turned missing.
        categories: Per categorical column, each canonical value's count (all rows).
        respelled: Per categorical column, each raw spelling canonicalisation rewrote, with
            its canonical value and count (``' M '`` -> ``M``, ``3.0`` -> ``3``).
    """

    hospital: str
    split: HospitalSplit
    missing_codes: dict[str, int]
    categories: dict[str, dict[str, int]]
    respelled: dict[str, dict[str, tuple[str, int]]]

    def lines(self, data: Any) -> list[str]:
        """The summary lines ``data check`` prints for this hospital."""
        split = self.split
        rows = pd.concat([split.train, split.val, split.test])
        origin = (f"column '{data.split_column}'" if split.source == "column"
                  else f"random, test_fraction {data.test_fraction:g}, val_fraction {data.val_fraction:g}")
        lines = [f"{self.hospital}: ok, {len(rows)} patients: train {len(split.train)}, val {len(split.val)}, "
                 f"test {len(split.test)} (split from {origin}), prevalence {rows[data.label].mean():.1%}"]
        if self.missing_codes:
            turned = ", ".join(f"{c} {n}" for c, n in sorted(self.missing_codes.items()))
            lines.append(f"{self.hospital}: missing codes turned values into missing: {turned}")
        for column, spellings in sorted(self.respelled.items()):
            shown = sorted(spellings.items(), key=lambda item: -item[1][1])
            named = ", ".join(f"{raw!r} -> {canon!r} ({n})" for raw, (canon, n) in shown[:5])
            more = f" and {len(shown) - 5} more spellings" if len(shown) > 5 else ""
            lines.append(f"{self.hospital}: {column} read as canonical values: {named}{more}")
        return lines

    def warnings(self) -> list[str]:
        """Warnings about this hospital alone (a tiny held-out part)."""
        if len(self.split.test) < SMALL_TEST_PART:
            return [f"{self.hospital}: only {len(self.split.test)} held-out (test) patients: its validation "
                    "numbers will be noisy"]
        return []


def check_table(data: Any, hospital: Any, seed: int) -> TableCheck:
    """Load and split one hospital's table as a run would, and count what it holds (``data``: the
    spec's tabular ``data`` section, ``hospital``: one of its hospitals, with a path).

    Raises:
        DataContractError: the file breaks the contract (naming file, column and row).
    """
    assert hospital.path is not None
    contract = data.contract
    split = load_split(hospital.path, contract, data.test_fraction, seed, data.val_fraction)
    rows = pd.concat([split.train, split.val, split.test])
    categories = {c: {str(v): int(n) for v, n in rows[c].dropna().value_counts().items()} for c in contract.categorical}
    return TableCheck(hospital.id, split, missing_code_counts(hospital.path, contract), categories,
                      respelled_counts(hospital.path, contract))


def vocabulary_report(checks: list[TableCheck], data: Any) -> list[VocabularyFinding]:
    """Per hospital and column, values outside the declared list and values no other
    checked hospital has (every value named: the check runs where the files are)."""
    contract = data.contract
    return vocabulary_findings({c.hospital: c.categories for c in checks},
                               {column: contract.declared(column) for column in contract.categorical})


def check_site(spec: Any, hospital: Any) -> SiteCheck:
    """``data check`` of one hospital's table (``spec``: an ``ExperimentSpec``; the hospital has a path).

    Raises:
        DataContractError: the file breaks the contract (naming file, column and row).
    """
    table = check_table(spec.data, hospital, spec.seed)
    return SiteCheck(hospital.id, table.lines(spec.data), table.warnings(), table)


def review_sites(spec: Any, checks: list[SiteCheck]) -> SitesReview:
    """Vocabulary findings across the checked tables: problems under ``data.unknown_categories: refuse``,
    warnings otherwise."""
    findings = [f.describe() for f in vocabulary_report([c.detail for c in checks], spec.data)] if checks else []
    if spec.data.unknown_categories == "refuse":
        return SitesReview(problems=[f"{f} (data.unknown_categories: refuse)" for f in findings])
    return SitesReview(warnings=findings)

"""Canonical category values: one spelling per category, whichever way a site wrote it.

The canonicalisation rule and how :class:`CategoryLookup` matches a value are in docs/data.md.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CategoryLookup", "VocabularyFinding", "canonical", "canonical_series", "declared_spelling", "outside_declared",
           "vocabulary_findings"]

_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_SPACES = re.compile(r"\s+")


def _number_text(number: Decimal) -> str:
    if number.is_zero():
        return "0"
    normal = number.normalize()
    if abs(normal.adjusted()) > 40:  # 1e999999 must not become a million digits
        return str(normal)
    if normal == normal.to_integral_value():
        return str(int(normal))
    return format(normal, "f")


def _pandas_missing(value: Any) -> bool:
    """``pd.NA`` or ``pd.NaT`` (without importing pandas: such a value exists only once pandas is loaded)."""
    pd = sys.modules.get("pandas")
    return pd is not None and (value is pd.NA or value is pd.NaT)


def canonical(value: Any) -> str | None:
    """The canonical spelling of one category value, or None for missing.

    Examples:
        ``canonical(" 4.0 ") == "4"``, ``canonical(2.50) == "2.5"``,
        ``canonical("  chest   pain ") == "chest pain"``, ``canonical("") is None``.
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return _number_text(Decimal(repr(float(value))))
    if _pandas_missing(value):
        return None
    text = _SPACES.sub(" ", str(value)).strip()
    if not text:
        return None
    if _NUMBER.match(text):
        try:
            return _number_text(Decimal(text))
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            return text
    return text


def declared_spelling(value: str | None, declared: Sequence[str] | None) -> str | None:
    """``value`` in the declared list's spelling when it matches one case-insensitively
    (the value as given otherwise, or when nothing is declared)."""
    if value is None or not declared:
        return value
    for item in declared:
        if item.casefold() == value.casefold():
            return item
    return value


def canonical_series(values: pd.Series, declared: Sequence[str] | None = None) -> pd.Series:
    """Canonicalise a column (object dtype, None where missing), once per distinct value."""
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(values)
    absent = series.isna().to_numpy()
    if absent.all():
        return pd.Series([None] * len(series), index=series.index, dtype=object)
    present = series[~absent]
    codes, distinct = pd.factorize(present, use_na_sentinel=True)
    mapped = np.asarray([declared_spelling(canonical(v), declared) for v in distinct], dtype=object)
    out = np.full(len(series), None, dtype=object)
    out[~absent] = mapped[codes]
    return pd.Series(out, index=series.index, dtype=object)


def outside_declared(counts: Mapping[str, float], declared: Iterable[str] | None) -> dict[str, float]:
    """The values (with their counts) of ``counts`` that are not in the declared list;
    nothing when no list is declared."""
    if declared is None:
        return {}
    allowed = set(declared)
    return {v: c for v, c in counts.items() if v not in allowed}


@dataclass(frozen=True)
class VocabularyFinding:
    """One hospital's categorical values in one column that the others do not share.

    Attributes:
        site: The hospital.
        column: The categorical column.
        site_only: Values no other hospital reported, with this hospital's count.
        undeclared: Values outside the column's declared list, with their count.
        rare: How many further such values are not named (fewer patients than the
            naming threshold: rare values identify people).
    """

    site: str
    column: str
    site_only: dict[str, float] = field(default_factory=dict)
    undeclared: dict[str, float] = field(default_factory=dict)
    rare: int = 0

    def describe(self, examples: int = 5) -> str:
        """One line: ``site: column: ...`` with counts and up to ``examples`` values per kind."""
        def named(values: dict[str, float]) -> str:
            ordered = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
            text = ", ".join(f"{v!r} ({c:.0f})" for v, c in ordered[:examples])
            return text + (f" and {len(ordered) - examples} more" if len(ordered) > examples else "")

        parts = []
        if self.undeclared:
            parts.append(f"{len(self.undeclared)} value{'s' * (len(self.undeclared) > 1)} outside the declared list: "
                         f"{named(self.undeclared)}")
        if self.site_only:
            parts.append(f"{len(self.site_only)} value{'s' * (len(self.site_only) > 1)} seen at no other hospital: "
                         f"{named(self.site_only)}")
        if self.rare:
            parts.append(f"{self.rare} rare value{'s' * (self.rare > 1)} not named")
        return f"{self.site}: {self.column}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        """JSON form (the run's ``vocabulary.json``)."""
        return {"site": self.site, "column": self.column, "site_only": self.site_only, "undeclared": self.undeclared,
                "rare": self.rare}


def vocabulary_findings(counts: Mapping[str, Mapping[str, Mapping[str, float]]],
                        declared: Mapping[str, Sequence[str] | None], *, min_count: float = 1) -> list[VocabularyFinding]:
    """Per hospital and column, the values seen at no other hospital (when two or more
    report) and the values outside the declared list.

    Args:
        counts: hospital -> column -> canonical value -> count (the statistics round's
            ``categorical``; exact, or DP-noised with rare values already suppressed).
        declared: column -> declared values (None: any value allowed).
        min_count: Values with a smaller count are counted in ``rare``, never named.
    """
    findings = []
    sites = sorted(counts)
    for site in sites:
        for column in sorted(counts[site]):
            here = counts[site][column]
            elsewhere: set[str] = set()
            for other in sites:
                if other != site:
                    elsewhere |= set(counts[other].get(column, {}))
            allowed = declared.get(column)
            undeclared = outside_declared(here, allowed)
            only = {v: c for v, c in here.items() if len(sites) > 1 and v not in elsewhere and v not in undeclared}
            flagged = set(only) | set(undeclared)
            rare = sum(1 for v in flagged if here[v] < min_count)
            finding = VocabularyFinding(site, column, {v: c for v, c in only.items() if c >= min_count},
                                        {v: c for v, c in undeclared.items() if c >= min_count}, rare)
            if finding.site_only or finding.undeclared or finding.rare:
                findings.append(finding)
    return findings


class CategoryLookup:
    """Finds a raw value's slot in a column's vocabulary (see the module docstring).

    Args:
        vocabulary: The column's values, in slot order.
    """

    def __init__(self, vocabulary: Sequence[str]) -> None:
        self.exact: dict[str, int] = {v: i for i, v in enumerate(vocabulary)}
        self._canonical: dict[str, int] = {}
        folded: dict[str, list[int]] = {}
        for i, v in enumerate(vocabulary):
            c = canonical(v)
            if c is not None:
                self._canonical.setdefault(c, i)
                folded.setdefault(c.casefold(), []).append(i)
        self._folded = {k: v[0] for k, v in folded.items() if len(set(v)) == 1}

    def __len__(self) -> int:
        return len(self.exact)

    def code(self, value: Any) -> int | None:
        """The slot of a present value, or None when it falls into ``__other``."""
        found = self.exact.get(value) if isinstance(value, str) else None
        if found is not None:
            return found
        c = canonical(value)
        if c is None:
            return None
        found = self._canonical.get(c)
        return found if found is not None else self._folded.get(c.casefold())

    def is_missing(self, value: Any) -> bool:
        """True for a value the encoder treats as missing."""
        return canonical(value) is None

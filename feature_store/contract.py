"""Input contracts of the features: finite, plausible numbers and declared categories."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from feature_store.definitions import CATEGORIES, RANGES, UNITS
from feature_store.errors import FeatureValueError

__all__ = ["CLOCK_SKEW", "EARLIEST", "check_category", "check_number", "check_observation", "check_observed_at", "violations"]

#: How far ahead of this machine's clock an observation time may be.
CLOCK_SKEW = timedelta(minutes=5)
#: No observation is older than this.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)


def check_number(feature: str, value: Any) -> float:
    """``value`` as a float, if it is a finite number within the feature's plausible range.

    Raises:
        FeatureValueError: not a number (booleans and strings included), not finite, or
            outside the range declared with the feature.
    """
    if feature not in RANGES:
        raise FeatureValueError(feature, "not a numeric feature")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FeatureValueError(feature, f"must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise FeatureValueError(feature, f"must be a finite number, not {number}")
    low, high = RANGES[feature]
    if not low <= number <= high:
        raise FeatureValueError(feature, f"{number:g} is outside the plausible range {low:g} to {high:g} {UNITS[feature]}")
    return number


def check_category(feature: str, value: Any) -> str:
    """``value`` if it is one of the feature's declared values.

    Raises:
        FeatureValueError: anything else.
    """
    allowed = CATEGORIES.get(feature)
    if allowed is None:
        raise FeatureValueError(feature, "not a categorical feature")
    if not isinstance(value, str) or value not in allowed:
        raise FeatureValueError(feature, f"{str(value)[:40]!r} is not one of {', '.join(allowed)}")
    return value


def check_observation(values: Mapping[str, Any]) -> dict[str, float]:
    """Every value checked (``check_number``); the first bad one raises, naming its feature."""
    return {feature: check_number(feature, value) for feature, value in values.items()}


def check_observed_at(when: datetime | None, *, now: datetime | None = None, allow_future: bool = False) -> datetime:
    """An observation's event time in UTC (``now`` if None).

    ``allow_future`` is for offline batches (``ingest``): a row dated ahead is kept in the
    offline store and becomes current at its time (materialization and bulk scoring never
    read a row before its time); a push into the online store may not be dated ahead.

    Raises:
        FeatureValueError: a naive time (no zone: refused, not guessed), a time more than
            ``CLOCK_SKEW`` in the future (it would stay "newest" for ever) unless
            ``allow_future``, or one before 1900.
    """
    now = now or datetime.now(UTC)
    if when is None:
        return now
    if when.tzinfo is None or when.utcoffset() is None:
        raise FeatureValueError("observed_at", "a time zone is required (for example 2026-01-31T08:00:00Z)")
    utc = when.astimezone(UTC)
    if utc > now + CLOCK_SKEW and not allow_future:
        raise FeatureValueError("observed_at", f"{utc.isoformat()} is in the future (this server's clock: {now.isoformat()})")
    if utc < EARLIEST:
        raise FeatureValueError("observed_at", f"{utc.isoformat()} is before {EARLIEST.year}")
    return utc


def violations(values: Mapping[str, Any]) -> dict[str, str]:
    """Stored values that break their contract: feature -> why (unknown values are fine).

    Only features with a declared contract are looked at (derived ones are not).
    """
    problems = {}
    for feature, value in values.items():
        if value is None or (feature not in RANGES and feature not in CATEGORIES):
            continue
        try:
            if feature in RANGES:
                check_number(feature, value)
            else:
                check_category(feature, value)
        except FeatureValueError as err:
            problems[feature] = str(err).split(": ", 1)[1]
    return problems

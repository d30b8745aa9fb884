"""Staged rollouts' rules: the config, per-version live statistics and the step decision (docs/rollouts.md)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["LATENCY_EDGES_MS", "RISK_BINS", "RolloutConfig", "Verdict", "VersionStats", "decide"]

#: Upper edges of the latency histogram's buckets (milliseconds; the last bucket is open).
LATENCY_EDGES_MS: tuple[float, ...] = tuple(round(0.01 * 1.5 ** i, 4) for i in range(30))
#: Risk histogram: ten equal bins over [0, 1].
RISK_BINS = 10


class RolloutConfig(BaseModel):
    """How a rollout moves: steps, how long and how much traffic each needs, and the rules.

    Attributes:
        steps: Percent of prediction traffic on the candidate at each step, rising, ending at 100.
        min_requests: Requests the candidate must score in a step (and the current version
            in the whole rollout) before the step is judged.
        min_seconds: Seconds a step lasts at least.
        max_error_increase: Advance only if candidate error rate <= current's + this.
        max_latency_ratio: Advance only if candidate p99 <= this x current's p99.
        max_shift_psi: Advance only if the PSI between the two risk distributions is below this.
        rollback_error_rate: Roll back at once when the candidate's error rate exceeds this
            (judged from ``rollback_min_requests`` candidate requests on, without waiting).
        rollback_min_requests: Candidate requests before the rollback rule is judged.
        shadow: Start with a shadow step: the candidate scores every request too, its
            answers never returned, its metrics compared (share 0).
    """

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field(default=[10, 50, 100], min_length=1, max_length=20)
    min_requests: int = Field(default=100, ge=1, le=10_000_000)
    min_seconds: float = Field(default=60.0, ge=0, le=7 * 86_400)
    max_error_increase: float = Field(default=0.01, ge=0, le=1)
    max_latency_ratio: float = Field(default=2.0, gt=0, le=1000)
    max_shift_psi: float = Field(default=0.2, gt=0, le=100)
    rollback_error_rate: float = Field(default=0.05, ge=0, le=1)
    rollback_min_requests: int = Field(default=20, ge=1, le=10_000_000)
    shadow: bool = False

    @field_validator("steps")
    @classmethod
    def _rising_to_100(cls, steps: list[int]) -> list[int]:
        if any(not 1 <= s <= 100 for s in steps):
            raise ValueError("each step is a percentage from 1 to 100")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError("steps must rise")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100")
        return steps


@dataclass
class VersionStats:
    """Requests, errors, latency and risk histograms of one version (mergeable counts)."""

    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    risks: list[int] = field(default_factory=lambda: [0] * RISK_BINS)

    def observe(self, seconds: float, risks: list[float] | None, failed: int = 1) -> None:
        """One scoring call of ``len(risks)`` rows (``None``: a call of ``failed`` rows that failed)."""
        slot = bisect.bisect_left(LATENCY_EDGES_MS, seconds * 1000.0)
        if risks is None:
            self.requests += failed
            self.errors += failed
            self.latency[slot] += failed
            return
        self.requests += len(risks)
        self.latency[slot] += len(risks)
        for r in risks:
            self.risks[min(max(int(r * RISK_BINS), 0), RISK_BINS - 1)] += 1

    def merge(self, other: VersionStats) -> VersionStats:
        """Add ``other``'s counts into this one (returns self)."""
        self.requests += other.requests
        self.errors += other.errors
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        self.risks = [a + b for a, b in zip(self.risks, other.risks, strict=True)]
        return self

    @property
    def error_rate(self) -> float:
        """Failed requests / requests (0 with none)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float:
        """The 99th percentile latency: the upper edge of its bucket (ms; 0 with none)."""
        total = sum(self.latency)
        if not total:
            return 0.0
        seen, want = 0, math.ceil(0.99 * total)
        for i, n in enumerate(self.latency):
            seen += n
            if seen >= want:
                return LATENCY_EDGES_MS[min(i, len(LATENCY_EDGES_MS) - 1)]
        return LATENCY_EDGES_MS[-1]

    def psi(self, other: VersionStats) -> float:
        """Population stability index of this risk distribution against ``other``'s (0: same)."""
        a, b = sum(self.risks), sum(other.risks)
        if not a or not b:
            return 0.0
        eps = 1e-4
        return float(sum((p - q) * math.log(p / q) for p, q in
                         ((max(x / a, eps), max(y / b, eps)) for x, y in zip(self.risks, other.risks, strict=True))))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able counts and the derived figures."""
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 6),
                "p99_ms": self.p99_ms, "risk_histogram": list(self.risks)}


@dataclass(frozen=True)
class Verdict:
    """What the controller does with a step: ``hold`` (wait), ``advance``, ``complete``,
    ``pause`` (a rule failed) or ``rollback`` (the error rate is over the limit)."""

    action: str
    reason: str


def decide(config: RolloutConfig, *, last_step: bool, step_seconds: float, current: VersionStats,
           candidate: VersionStats) -> Verdict:
    """Judge a running step: the candidate's statistics in this step against the current
    version's over the whole rollout.

    Args:
        config: The rollout's rules.
        last_step: This step is the last (100 %): passing it completes the rollout.
        step_seconds: How long the step has run.
        current: The current (production) version's statistics.
        candidate: The candidate's statistics in this step.
    """
    if candidate.requests >= config.rollback_min_requests and candidate.error_rate > config.rollback_error_rate:
        return Verdict("rollback", f"candidate error rate {candidate.error_rate:.3f} over {config.rollback_error_rate} "
                                   f"({candidate.errors}/{candidate.requests} requests)")
    waiting = []
    if step_seconds < config.min_seconds:
        waiting.append(f"{step_seconds:.0f}/{config.min_seconds:.0f} s")
    if candidate.requests < config.min_requests:
        waiting.append(f"candidate {candidate.requests}/{config.min_requests} requests")
    if current.requests < config.min_requests:
        waiting.append(f"current {current.requests}/{config.min_requests} requests")
    if waiting:
        return Verdict("hold", "waiting: " + ", ".join(waiting))
    failed = []
    if candidate.error_rate > current.error_rate + config.max_error_increase:
        failed.append(f"error rate {candidate.error_rate:.3f} > current {current.error_rate:.3f} + {config.max_error_increase}")
    if current.p99_ms > 0 and candidate.p99_ms > config.max_latency_ratio * current.p99_ms:
        failed.append(f"p99 {candidate.p99_ms:.3g} ms > {config.max_latency_ratio} x current {current.p99_ms:.3g} ms")
    shift = candidate.psi(current)
    if shift >= config.max_shift_psi:
        failed.append(f"prediction shift PSI {shift:.3f} >= {config.max_shift_psi}")
    if failed:
        return Verdict("pause", "; ".join(failed))
    summary = (f"error {candidate.error_rate:.3f} vs {current.error_rate:.3f}, p99 {candidate.p99_ms:.3g} vs "
               f"{current.p99_ms:.3g} ms, PSI {shift:.3f}")
    return Verdict("complete" if last_step else "advance", summary)

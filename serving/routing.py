"""Routing prediction traffic between production and a rollout's candidate: one function for the API and Serve."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from experiments.rollout import RolloutState, read_rollout
from serving.errors import ServingError
from serving.follow import AliasFollower
from serving.loaded import LoadedModel
from serving.rollout_stats import StatsBuffer

__all__ = ["Route", "TrafficSplit", "route_bucket", "to_candidate"]

log = logging.getLogger(__name__)


def route_bucket(rollout_id: str, key: str) -> float:
    """Where ``key`` (a twin id) falls in [0, 100) for a rollout: stable for the rollout, so a
    patient keeps its version through a step and, as the share only rises, through the rollout."""
    digest = hashlib.sha256(f"{rollout_id}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100.0


def to_candidate(state: RolloutState | None, key: str | None) -> bool:
    """Does the request for ``key`` go to the rollout's candidate? (No key: never.)"""
    return state is not None and key is not None and state.share > 0 and route_bucket(state.id, key) < state.share


@dataclass(frozen=True)
class Route:
    """A snapshot of where traffic goes: production, the rollout (if any) and its loaded candidate."""

    production: LoadedModel
    state: RolloutState | None
    candidate: LoadedModel | None
    stats: StatsBuffer | None

    def pick(self, key: str | None) -> LoadedModel:
        """The version that answers for ``key``."""
        if self.candidate is not None and self.state is not None and (
                self.state.state == "complete" or to_candidate(self.state, key)):
            return self.candidate  # complete: until production's follower has loaded it
        return self.production

    @property
    def shadow(self) -> LoadedModel | None:
        """The candidate scoring unreturned beside production (shadow step), else None."""
        return self.candidate if self.state is not None and self.state.shadow else None

    def score(self, model: LoadedModel, rows: Sequence[dict[str, Any]]) -> list[float] | None:
        """Score ``rows`` with ``model``, counted for the rollout. A candidate that fails (an
        exception or a risk outside [0, 1]) is counted as failed and answers None: the caller
        scores the rows with production instead.

        Raises:
            ServingError: production's own refusal (a bad input), as without a rollout.
        """
        if model is self.production:
            return self._timed(model, rows)
        try:
            return self._timed(model, rows, fallible=True)
        except Exception as err:  # noqa: BLE001 - the candidate failing must not fail the request
            log.warning("candidate %s failed (%s: %s); production %s answers", model.version, type(err).__name__, err,
                        self.production.version)
            return None

    def score_shadow(self, rows: Sequence[dict[str, Any]]) -> None:
        """Score ``rows`` with the shadow candidate for its statistics only."""
        shadow = self.shadow
        if shadow is None:
            return
        try:
            self._timed(shadow, [{k: r.get(k) for k in shadow.features} for r in rows], fallible=True)
        except Exception:  # noqa: BLE001 - counted; a shadow answer is never returned
            log.debug("shadow candidate %s failed", shadow.version, exc_info=True)

    def _timed(self, model: LoadedModel, rows: Sequence[dict[str, Any]], *, fallible: bool = False) -> list[float]:
        started = time.perf_counter()
        try:
            risks = [float(r) for r in model.predict(rows)]
            if fallible and not all(math.isfinite(r) and 0.0 <= r <= 1.0 for r in risks):
                raise ServingError(f"{model.name} version {model.version} answered a risk outside [0, 1]")
        except Exception:
            self._observe(model, time.perf_counter() - started, None, len(rows))
            raise
        self._observe(model, time.perf_counter() - started, risks)
        return risks

    def _observe(self, model: LoadedModel, seconds: float, risks: list[float] | None, failed: int = 1) -> None:
        state = self.state
        if self.stats is not None and state is not None and state.active:
            self.stats.observe((state.id, state.step, model.version), seconds, risks, failed)


class TrafficSplit:
    """Production (an :class:`AliasFollower`) plus the model's rollout, read from the registry
    at most every ``poll_seconds``; the candidate is loaded through the same gate as production.

    Args:
        production: The follower of ``production``.
        stats: Where per-version counts go (None: not counted).
        poll_seconds: How often the rollout tag is re-read.
    """

    def __init__(self, production: AliasFollower[LoadedModel], *, stats: StatsBuffer | None = None,
                 poll_seconds: float | None = None) -> None:
        self.production = production
        self.stats = stats
        self.poll_seconds = production.poll_seconds if poll_seconds is None else poll_seconds
        self._route: Route | None = None
        self._checked = 0.0
        self._failed: str | None = None  # a candidate version that could not be loaded
        self._lock = threading.Lock()

    def fresh(self) -> Route | None:
        """The route if both production and the rollout were checked within the poll (no I/O)."""
        route, model = self._route, self.production.fresh()
        if route is None or model is None or time.monotonic() - self._checked >= self.poll_seconds:
            return None
        return route if route.production is model else Route(model, route.state, route.candidate, self.stats)

    def current(self) -> Route:
        """The route, re-read if stale (may block on the registry and on loading a candidate).

        Raises:
            ModelNotReadyError: production cannot be served.
        """
        return self.fresh() or self.refresh(only_if_stale=True)

    def refresh(self, *, only_if_stale: bool = False) -> Route:
        """Re-read production and the rollout now."""
        with self._lock:
            if only_if_stale and (route := self.fresh()) is not None:
                return route
            model = self.production.current()
            state = read_rollout(self.production.source.client, self.production.source.name)
            candidate = self._candidate(state, model)
            self._route = Route(model, state, candidate, self.stats)
            self._checked = time.monotonic()
            return self._route

    def _candidate(self, state: RolloutState | None, production: LoadedModel) -> LoadedModel | None:
        if state is None or not (state.active or state.state == "complete"):
            return None
        if state.state == "complete" and production.version == state.version:
            return None  # production's follower has it now
        old = self._route.candidate if self._route is not None else None
        if old is not None and old.version == state.version:
            return old
        if state.version == self._failed:
            return None
        try:
            return self.production.source.load(state.version, LoadedModel)  # the gate, as for production
        except ServingError as err:
            self._failed = state.version
            log.error("rollout of %s version %s: the candidate cannot be served here (%s); production answers",
                      state.model, state.version, err)
            return None

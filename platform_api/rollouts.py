"""The one rollout service: start, pause, resume, abort and the controller's step, each audited (docs/rollouts.md)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from experiments.review_records import audit_action
from experiments.rollout import RolloutError, RolloutRegistry, RolloutState
from experiments.rollout_rules import RolloutConfig, Verdict, VersionStats, decide
from platform_api.audit import audited, lock_chain
from platform_api.auth import Principal
from serving.rollout_stats import read_stats

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

__all__ = ["CONTROLLER", "RolloutService", "RolloutStatus", "rollouts_at"]

#: Who the controller's automatic steps are audited as.
CONTROLLER = Principal("rollout-controller", "system", None)


@dataclass(frozen=True)
class RolloutStatus:
    """A rollout, the two versions' live statistics and what the rules say now."""

    state: RolloutState
    current: VersionStats
    candidate: VersionStats
    verdict: Verdict | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: the state, share, both versions' figures and the verdict."""
        s = self.state
        return {"id": s.id, "model": s.model, "version": s.version, "current_version": s.current, "state": s.state,
                "step": s.step_label, "share": s.share, "shadow": s.shadow, "started_by": s.started_by,
                "step_started": s.step_started, "updated": s.updated, "reason": s.reason, "config": s.config,
                "current": self.current.as_dict(), "candidate": self.candidate.as_dict(),
                "candidate_vs_current_psi": round(self.candidate.psi(self.current), 6),
                "verdict": None if self.verdict is None else {"action": self.verdict.action, "reason": self.verdict.reason}}


class RolloutService:
    """Rollouts of one registry, every change appended to the platform's audit chain.

    Every write holds the chain lock (this process's and the database's: PostgreSQL's
    advisory lock, SQLite's write lock) from its check to its audit event, so two starts
    from two API processes or CLIs cannot both pass the "no active rollout" check. The CLI,
    the JSON API and the review page all go through this class.
    """

    def __init__(self, registry: RolloutRegistry, engine: Engine) -> None:
        self.registry = registry
        self.engine = engine

    def start(self, session: Session, who: Principal, name: str, version: str, config: RolloutConfig) -> RolloutState:
        """Start rolling out an approved version (refused: not approved, another rollout active, ...)."""
        return self._locked(session, who, ("start", name, version), lambda: self.registry.start(
            name, version, config=config, actor=who.identity.display))

    def pause(self, session: Session, who: Principal, name: str) -> RolloutState:
        """Hold the running rollout at its step (traffic stays split; the controller stops advancing)."""
        return self._change(session, who, name, "pause", ("running",), "paused")

    def resume(self, session: Session, who: Principal, name: str) -> RolloutState:
        """Let a paused rollout's step be judged again."""
        return self._change(session, who, name, "resume", ("paused",), "running")

    def abort(self, session: Session, who: Principal, name: str) -> RolloutState:
        """End the rollout now: production takes all traffic again."""
        return self._change(session, who, name, "abort", ("running", "paused"), "aborted")

    def status(self, name: str) -> RolloutStatus:
        """The model's latest rollout with both versions' statistics and the rules' verdict (nothing written).

        Raises:
            RolloutError: the model was never rolled out.
        """
        state = self.registry.rollout(name)
        if state is None:
            raise RolloutError(f"{name} has no rollout")
        return self._status(state)

    def step(self, session: Session, name: str) -> RolloutStatus:
        """The controller's step: judge the running rollout and advance, complete, pause or
        roll back as its rules say (audited as ``rollout-controller``); nothing to do otherwise."""
        state = self.registry.rollout(name)
        if state is None or state.state != "running":
            return self.status(name)
        verdict = self._status(state).verdict
        if verdict is None or verdict.action == "hold":
            return self._status(state)
        moves: dict[str, Callable[[RolloutState], RolloutState]] = {
            "advance": lambda s: self.registry.move(s, to="running", reason=verdict.reason, next_step=True),
            "complete": lambda s: self.registry.complete(s, actor=CONTROLLER.key_id, reason=verdict.reason),
            "pause": lambda s: self.registry.move(s, to="paused", reason=verdict.reason),
            "rollback": lambda s: self.registry.move(s, to="rolled_back", reason=verdict.reason),
        }

        def apply() -> RolloutState:
            fresh = self.registry.active(name)
            if fresh.id != state.id or fresh.step != state.step or fresh.state != "running":
                return fresh  # another controller or a person moved it meanwhile
            return moves[verdict.action](fresh)

        moved = self._locked(session, CONTROLLER, (verdict.action, name, state.version), apply)
        return self._status(moved)

    def _status(self, state: RolloutState) -> RolloutStatus:
        counts = read_stats(self.engine, state.id)
        current = VersionStats()
        for (_, version), stats in counts.items():
            if version == state.current:
                current.merge(stats)
        candidate = counts.get((state.step, state.version), VersionStats())
        verdict = None
        if state.state == "running":
            verdict = decide(state.rules, last_step=state.last_step, step_seconds=time.time() - state.step_started,
                             current=current, candidate=candidate)
        return RolloutStatus(state, current, candidate, verdict)

    def _change(self, session: Session, who: Principal, name: str, action: str, allowed: tuple[str, ...],
                to: str) -> RolloutState:
        def change() -> RolloutState:
            state = self.registry.rollout(name)
            if state is None or state.state not in allowed:
                now = "no rollout" if state is None else f"the rollout of version {state.version} is {state.state}"
                raise RolloutError(f"{name}: cannot {action}: {now}")
            return self.registry.move(state, to=to, reason=f"{action} by {who.identity.display}")

        target = self.registry.rollout(name)
        return self._locked(session, who, (action, name, target.version if target else "none"), change)

    @staticmethod
    def _locked(session: Session, who: Principal, what: tuple[str, str, str], change: Callable[[], RolloutState]) -> RolloutState:
        """Run ``change`` holding the chain lock, audited as ``registry.rollout.<action> <model>/<version>``."""
        action, name, version = what
        with audited(session, who, audit_action(f"rollout.{action}", name, version), writes=True):
            lock_chain(session)  # across processes: one rollout change at a time
            return change()


@functools.cache
def rollouts_at(tracking_uri: str, database_url: str) -> RolloutService:
    """One rollout service per registry and platform database (the API's routes and page)."""
    from platform_api.db import get_engine

    return RolloutService(RolloutRegistry(tracking_uri), get_engine(database_url))

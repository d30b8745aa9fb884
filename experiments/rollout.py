"""A staged rollout's state, kept as a registered-model tag in the MLflow registry (docs/rollouts.md)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.errors import NotApproved, ReviewError
from experiments.gate import approval_problem
from experiments.registry import ModelRegistry
from experiments.registry_reader import APPROVED, PENDING, PRODUCTION_ALIAS
from experiments.rollout_rules import RolloutConfig

__all__ = ["ACTIVE", "ROLLOUT_TAG", "RolloutConflict", "RolloutError", "RolloutRegistry", "RolloutState", "read_rollout"]

#: Registered-model tag holding the model's rollout (JSON of :class:`RolloutState`).
ROLLOUT_TAG = "rollout.state"
#: States in which the candidate takes traffic.
ACTIVE = ("running", "paused")


class RolloutError(ReviewError):
    """A rollout request the registry refuses (no rollout, wrong state, bad version)."""


class RolloutConflict(RolloutError):
    """Another rollout of the model is active."""


@dataclass(frozen=True)
class RolloutState:
    """One rollout of ``model`` from ``current`` (production) to ``version`` (the candidate).

    ``step`` indexes ``config["steps"]``; -1 is the shadow step. ``state``: running, paused,
    rolled_back, aborted or complete. ``step_started``: epoch seconds.
    """

    id: str
    model: str
    version: str
    current: str
    state: str
    step: int
    step_started: float
    started_by: str
    config: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    updated: float = 0.0

    @property
    def rules(self) -> RolloutConfig:
        """The rollout's config."""
        return RolloutConfig.model_validate(self.config)

    @property
    def active(self) -> bool:
        """The candidate takes traffic (running or paused)."""
        return self.state in ACTIVE

    @property
    def share(self) -> int:
        """Percent of requests routed to the candidate now (0 in shadow and once ended)."""
        if not self.active or self.step < 0:
            return 0
        return int(self.config["steps"][self.step])

    @property
    def shadow(self) -> bool:
        """The candidate scores every request beside the current version, unreturned."""
        return self.active and self.step < 0

    @property
    def last_step(self) -> bool:
        """This step is the last one (100 %)."""
        return self.step == len(self.config["steps"]) - 1

    @property
    def step_label(self) -> str:
        """``shadow`` or ``2/3 (50%)``."""
        if self.step < 0:
            return "shadow"
        return f"{self.step + 1}/{len(self.config['steps'])} ({self.config['steps'][self.step]}%)"

    def to_json(self) -> str:
        """The tag value."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RolloutState:
        """Parse a tag value (unknown keys ignored)."""
        raw = json.loads(text)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def read_rollout(client: MlflowClient, name: str) -> RolloutState | None:
    """The model's latest rollout, or None (no model, no tag, or an unreadable one)."""
    try:
        tags = client.get_registered_model(name).tags or {}
    except MlflowException:
        return None
    text = tags.get(ROLLOUT_TAG)
    if not text:
        return None
    try:
        return RolloutState.from_json(text)
    except (ValueError, TypeError, KeyError):
        return None


class RolloutRegistry(ModelRegistry):
    """Starts and moves rollouts in the registry. Callers serialise writes per model
    (:class:`platform_api.rollouts.RolloutService` holds the platform database's chain lock)."""

    def rollout(self, name: str) -> RolloutState | None:
        """The model's latest rollout (None: never rolled out)."""
        return read_rollout(self.client, name)

    def check_rollable(self, name: str, version: str) -> str:
        """The production version a rollout of ``version`` would start from.

        Raises:
            NotApproved: the version has no valid validator approval (the gate promotion uses).
            RolloutConflict: a rollout of the model is active.
            RolloutError: the version is already production, or there is no production version.
        """
        mv = self._version(name, version)
        tags = dict(mv.tags)
        status = tags.get("review_status", PENDING)
        if status != APPROVED:
            raise NotApproved(f"{name} version {version} is {status}; only an approved version can be rolled out")
        if (problem := approval_problem(tags, name, str(version), source=str(mv.source), scope=None)) is not None:
            raise NotApproved(f"{problem}; it cannot be rolled out")
        self._check_report(mv, tags.get("review.report_sha256") or None, required=True)
        existing = self.rollout(name)
        if existing is not None and existing.active:
            raise RolloutConflict(f"{name} already has a {existing.state} rollout of version {existing.version} "
                                  f"(step {existing.step_label}); abort it first")
        current = self._aliases(name).get(PRODUCTION_ALIAS)
        if current is None:
            raise RolloutError(f"{name} has no production version to roll out from: promote the first version")
        if current == str(version):
            raise RolloutError(f"{name} version {version} is already in production")
        return current

    def start(self, name: str, version: str, *, config: RolloutConfig, actor: str) -> RolloutState:
        """Start a rollout of an approved version (see :meth:`check_rollable` for refusals)."""
        current = self.check_rollable(name, version)
        now = time.time()
        state = RolloutState(id=uuid.uuid4().hex[:16], model=name, version=str(version), current=current,
                             state="running", step=-1 if config.shadow else 0, step_started=now, started_by=actor,
                             config=config.model_dump(), reason="started", updated=now)
        self._save(state)
        return state

    def active(self, name: str) -> RolloutState:
        """The model's active rollout.

        Raises:
            RolloutError: none is active.
        """
        state = self.rollout(name)
        if state is None or not state.active:
            raise RolloutError(f"{name} has no active rollout" + (f" (the last one is {state.state})" if state else ""))
        return state

    def move(self, state: RolloutState, *, to: str, reason: str, next_step: bool = False) -> RolloutState:
        """Save ``state`` moved to ``to`` (and to its next step, timer restarted, with ``next_step``)."""
        now = time.time()
        moved = replace(state, state=to, reason=reason[:1000], updated=now,
                        step=state.step + 1 if next_step else state.step,
                        step_started=now if next_step else state.step_started)
        self._save(moved)
        return moved

    def complete(self, state: RolloutState, *, actor: str, reason: str) -> RolloutState:
        """The candidate becomes ``production`` through :meth:`promote` (the gate re-checked), and the rollout ends."""
        self.promote(state.model, state.version, actor=actor)
        return self.move(state, to="complete", reason=reason)

    def _save(self, state: RolloutState) -> None:
        self._call("tag registered model", self.client.set_registered_model_tag, state.model, ROLLOUT_TAG, state.to_json())

"""The API's background rollout controller: every few seconds, ``RolloutService.step`` for the served model (docs/rollouts.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from experiments.rollout import RolloutError

__all__ = ["RolloutController", "start_controller"]

log = logging.getLogger(__name__)


class RolloutController:
    """A daemon thread that judges the model's running rollout every ``every`` seconds.

    Each tick runs one controller step (advance, complete, pause or roll back, audited as
    ``rollout-controller``) and does nothing when the model has no running rollout. Several
    API processes may each run one: a step re-reads the rollout under the chain lock and
    leaves it alone if another moved it. A failing tick (registry or database down) is
    logged and retried at the next one; it never stops the thread.
    """

    def __init__(self, step: Callable[[], object], every: float) -> None:
        self._step = step
        self.every = every
        self.ticks = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-controller", daemon=True)

    def start(self) -> RolloutController:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the tick in progress; a tick stuck on a dependency is left to die with
        the process (the thread is a daemon, and a step's writes are one transaction)."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._step()
            except RolloutError:
                pass  # the rollout ended between the read and the step
            except Exception as err:  # noqa: BLE001 - a dependency down must not end the controller
                self.failures += 1
                log.warning("rollout controller: step failed (%s: %s); retrying in %.1f s",
                            type(err).__name__, err, self.every)
            self.ticks += 1


def start_controller(tracking_uri: str, database_url: str, model: str, every: float) -> RolloutController | None:
    """Start the controller for ``model`` (None when ``every`` is 0: rollouts advance only
    by ``bioverse rollout watch`` or ``POST .../rollout/step``)."""
    if every <= 0:
        return None
    from platform_api.db import session_factory
    from platform_api.rollouts import rollouts_at
    from platform_api.services import get_models

    service = rollouts_at(tracking_uri, database_url)
    sessions = session_factory(database_url)

    def step() -> None:
        state = service.registry.rollout(model)
        if state is None or state.state != "running":
            return  # one registry read a tick while nothing rolls out
        if get_models.cache_info().currsize and (stats := get_models().split.stats) is not None:
            stats.flush()  # judge this process's latest counts too
        with sessions() as session:
            service.step(session, model)

    return RolloutController(step, every).start()

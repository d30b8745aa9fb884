"""The API's rollout controller thread: it keeps stepping through failures and stops when asked."""

from __future__ import annotations

import threading

from experiments.rollout import RolloutError
from platform_api.rollout_controller import RolloutController, start_controller


def test_a_failing_step_is_retried_and_stop_ends_the_thread() -> None:
    calls: list[int] = []
    enough = threading.Event()

    def step() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("registry down")
        if len(calls) == 2:
            raise RolloutError("ended meanwhile")
        if len(calls) >= 4:
            enough.set()

    controller = RolloutController(step, every=0.01).start()
    assert enough.wait(10)
    controller.stop()
    assert not controller._thread.is_alive()
    assert controller.failures == 1  # the RolloutError is not a failure
    settled = len(calls)
    assert enough.wait(0.05) and len(calls) == settled  # stopped: no more steps


def test_zero_seconds_starts_no_controller() -> None:
    assert start_controller("sqlite:///unused.db", "sqlite:///unused.db", "m", 0) is None

"""Adaptive poll intervals for the SuperNode's Fleet pulls and reply waits (see docs/deployment-performance.md)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

__all__ = ["Backoff", "PollClock", "fast_object_pulls", "fleet_backoff_from_env"]

#: Flower 1.42's fixed sleeps in ``flwr.supernode.start_client_internal``.
FLEET_IDLE_SLEEP = 3.0
REPLY_WAIT_SLEEP = 0.5


@dataclass
class Backoff:
    """Waits that start at ``first`` seconds and grow by ``factor`` per call up to ``ceiling``;
    ``reset`` starts over (after activity)."""

    first: float = 0.05
    factor: float = 1.5
    ceiling: float = 0.5
    _current: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.ceiling or self.factor < 1:
            raise ValueError(f"bad backoff: first={self.first}, factor={self.factor}, ceiling={self.ceiling}")
        self._current = self.first

    def next(self) -> float:
        """The wait to sleep now; the following one is longer (up to the ceiling)."""
        wait = self._current
        self._current = min(self._current * self.factor, self.ceiling)
        return wait

    def reset(self) -> None:
        """Activity happened: poll soon again."""
        self._current = self.first


def fleet_backoff_from_env() -> Backoff:
    """The SuperNode's Fleet pull backoff; ``BIOVERSE_FLEET_POLL_MAX`` (seconds) bounds it."""
    ceiling = float(os.environ.get("BIOVERSE_FLEET_POLL_MAX", "0.5"))
    return Backoff(first=min(0.05, ceiling), factor=1.5, ceiling=ceiling)


class PollClock:
    """Stands in for the ``time`` module of Flower's SuperNode loop: its fixed 3 s sleep after an
    empty Fleet pull becomes ``fleet`` backoff, its 0.5 s waits for a local reply become
    ``reply_wait``; every other attribute and sleep is the real ``time`` module's."""

    def __init__(self, fleet: Backoff, reply_wait: float = 0.02, real: ModuleType = time) -> None:
        self.fleet = fleet
        self.reply_wait = reply_wait
        self._real = real

    def sleep(self, seconds: float) -> None:
        """Sleep as the SuperNode asked, shortened where it polls."""
        self._real.sleep(self.interval(seconds))

    def interval(self, seconds: float) -> float:
        """How long a requested sleep of ``seconds`` actually lasts."""
        if seconds == FLEET_IDLE_SLEEP:
            return self.fleet.next()
        if seconds == REPLY_WAIT_SLEEP:
            return self.reply_wait
        return seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


#: Flower 1.42's retry backoff for an object that is not there yet (``flwr.supercore.constant``:
#: first wait 1 s, doubling to 10 s, at most 500 tries and 7200 s in all).
OBJECT_PULL_BACKOFF = (1, 10)


def fast_object_pulls(first: float = 0.02, ceiling: float = 0.5) -> bool:
    """Retry a not-yet-available Flower object after ``first`` seconds (doubling up to ``ceiling``)
    instead of Flower's 1 s (up to 10 s), in this process.

    A message's body travels as separate objects pushed after the message itself: the SuperNode
    that sees a new message, the ClientApp that pulls its task input and the ServerApp that pulls
    a reply often ask for an object a few milliseconds before it is stored, and each such miss cost
    a full second. Flower's overall limit (``max_time``, 2 h) stays; the number of tries grows so
    that the shorter waits do not give up sooner. Returns False (and changes nothing) where
    Flower's pull functions are not the ones expected."""
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    for function in functions:
        defaults = function.__kwdefaults__ or {}
        if (defaults.get("initial_backoff"), defaults.get("backoff_cap")) not in (OBJECT_PULL_BACKOFF, (first, ceiling)):
            return False
    for function in functions:
        function.__kwdefaults__.update(initial_backoff=first, backoff_cap=ceiling,
                                       max_tries_per_object=int(function.__kwdefaults__["max_time"] / first) + 1)
    return True

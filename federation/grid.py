"""A Grid wrapper that waits for replies with adaptive polling instead of fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["DelegatingGrid", "ResponsiveGrid"]


class DelegatingGrid(Grid):
    """A Flower grid that passes every call to the grid it wraps; subclasses override what they change."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run: Any) -> None:  # noqa: D102 - delegated
        self._grid.set_run(run)

    @property
    def run(self) -> Any:  # noqa: D102 - delegated
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # noqa: D102 - delegated
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102 - delegated
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102 - delegated
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102 - delegated
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:  # noqa: D102 - delegated
        return self._grid.send_and_receive(messages, timeout=timeout)


class ResponsiveGrid(DelegatingGrid):
    """Delegates to Flower's grid, but ``send_and_receive`` polls for replies every 10 ms,
    backing off to 0.5 s while nothing arrives.

    Flower 1.42's grids sleep a fixed 0.1 s (simulation) or 3 s (deployment) between
    pulls, which on short rounds is most of the coordinator's overhead.
    """

    def __init__(self, grid: Grid, first_wait: float = 0.01, max_wait: float = 0.5) -> None:
        super().__init__(grid)
        self.first_wait = first_wait
        self.max_wait = max_wait

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` and collect replies until all arrive or ``timeout`` passes."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = self.first_wait
        while waiting and (deadline is None or time.monotonic() < deadline):
            arrived = list(self.pull_messages(waiting))
            if arrived:
                replies.extend(arrived)
                waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
                wait = self.first_wait
                continue
            time.sleep(wait)
            wait = min(wait * 1.5, self.max_wait)
        return replies

"""Progress events from the coordinator, as JSON lines a launcher can follow live."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

__all__ = ["ProgressLog", "read_events"]

log = logging.getLogger(__name__)


class ProgressLog:
    """Append-only JSONL of run events (``start``, ``round``, ``done``, ``error``...).

    A missing path makes it a no-op, so the apps run the same under plain ``flwr run``.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        """Append one event, flushed so a follower sees it at once."""
        line = json.dumps({"event": event, "time": time.time(), **fields}, default=str)
        log.info("progress %s", line)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete events written after byte ``offset``; returns them and the new offset."""
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1
    events = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
    return events, offset + end

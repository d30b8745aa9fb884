"""The privacy ledger a hospital keeps on its own side: epsilon spent per run, persistent."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import BudgetExceededError, FederationError

__all__ = ["LedgerEntry", "PrivacyLedger"]


@dataclass(frozen=True)
class LedgerEntry:
    """What one run has spent at this hospital so far."""

    run: str
    experiment: str
    epsilon: float
    delta: float
    steps: int
    updated: float


class PrivacyLedger:
    """Epsilon spent per run at one hospital, in a JSON file the hospital owns.

    Runs compose by basic composition: the hospital's total is the sum of the runs'
    epsilons (and deltas). Every change is made under an exclusive file lock and written
    to a temporary file that atomically replaces the ledger, so a crash never leaves a
    half-written ledger and two runs at one hospital cannot both spend the last budget.

    Args:
        path: The ledger file (created on first charge).
        hospital_id: The hospital it belongs to; a ledger of another hospital is refused.
    """

    def __init__(self, path: Path | str, hospital_id: str) -> None:
        self.path = Path(path)
        self.hospital_id = hospital_id

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"hospital_id": self.hospital_id, "runs": {}}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            raise FederationError(f"privacy ledger {self.path} is unreadable: {err}") from err
        if data.get("hospital_id") != self.hospital_id:
            raise FederationError(
                f"privacy ledger {self.path} belongs to {data.get('hospital_id')!r}, not {self.hospital_id!r}"
            )
        return data

    def _write(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def entries(self) -> list[LedgerEntry]:
        """Every run recorded, oldest first."""
        with self._locked():
            runs = self._read()["runs"]
        return sorted((LedgerEntry(run=k, **v) for k, v in runs.items()), key=lambda e: e.updated)

    def entry(self, run: str) -> LedgerEntry | None:
        """This run's entry, if it has spent anything here."""
        return next((e for e in self.entries() if e.run == run), None)

    def spent(self, *, excluding: str | None = None) -> float:
        """Total epsilon spent, optionally leaving one run out."""
        return sum(e.epsilon for e in self.entries() if e.run != excluding)

    def charge(self, *, run: str, experiment: str, epsilon: float, delta: float, steps: int, budget: float) -> LedgerEntry:
        """Record that ``run`` has now spent ``epsilon`` in total here, if the budget allows.

        Called before training: the hospital pays for a round before it trains, so a
        crash in training can only over-count, never under-count.

        Raises:
            BudgetExceededError: earlier runs plus this run's new total exceed the budget;
                nothing is written.
        """
        with self._locked():
            data = self._read()
            others = sum(v["epsilon"] for k, v in data["runs"].items() if k != run)
            if others + epsilon > budget + 1e-9:
                raise BudgetExceededError(self.hospital_id, others, epsilon, budget)
            record = {"experiment": experiment, "epsilon": epsilon, "delta": delta, "steps": steps, "updated": time.time()}
            data["runs"][run] = record
            self._write(data)
        return LedgerEntry(run=run, **record)

"""The privacy ledger a hospital keeps on its own side: epsilon spent per run and dataset, persistent."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import BudgetExceededError, LedgerError

__all__ = ["ANY_DATASET", "CHARGES", "LedgerEntry", "PrivacyLedger"]

#: The dataset of a charge recorded without a fingerprint (ledgers written before budgets
#: belonged to datasets): nobody knows which data it touched, so it counts against all.
ANY_DATASET = "*"

#: Where this context hears of its charges: every :meth:`PrivacyLedger.charge` made while it
#: holds a list appends ``(run, epsilon added)`` to it (the site guard audits a request's charge so).
CHARGES: ContextVar[list[tuple[str, float]] | None] = ContextVar("bioverse_ledger_charges", default=None)


@dataclass(frozen=True)
class LedgerEntry:
    """What one run has spent at this hospital so far, on one dataset.

    ``kind`` is ``training`` (DP-SGD rounds) or ``statistics`` (the DP statistics round);
    ``rounds`` counts the training rounds charged (a round is charged before it trains,
    so a run that died shows the rounds it paid for); ``last_round`` is the last training
    round charged (a round asked again is not charged again: charges are idempotent per
    run and round). ``noise_multiplier`` is the noise the run's training was calibrated to
    and ``calibration`` what it was calibrated for (target, delta, sample rate, steps,
    accountant), so later rounds reuse it instead of searching again.
    """

    run: str
    experiment: str
    epsilon: float
    delta: float
    steps: int
    updated: float
    dataset: str = ANY_DATASET
    kind: str = "training"
    rounds: int = 0
    last_round: int = 0
    noise_multiplier: float | None = None
    calibration: str = ""


class PrivacyLedger:
    """Epsilon spent per run at one hospital, per dataset, in a JSON file the hospital owns.

    A budget belongs to (hospital, dataset): the dataset is the fingerprint the hospital
    computes of the data it protects (:func:`training.fingerprint.dataset_fingerprint`),
    so runs on other data do not drain it, and every run on the same data does, whatever
    the experiment. Runs (training and statistics releases) compose by basic composition:
    a dataset's total is the sum of its runs' epsilons, plus every charge recorded
    without a dataset (:data:`ANY_DATASET`, e.g. from a ledger written before datasets).
    Every change is made under an exclusive file lock and written to a temporary file
    that atomically replaces the ledger, so a crash never leaves a half-written ledger and
    two runs at one hospital cannot both spend the last budget.

    Args:
        path: The ledger file (created on first charge).
        hospital_id: The hospital it belongs to; a ledger of another hospital is refused.
        dataset: The dataset's fingerprint; None reads and charges across all datasets
            (the conservative view).
    """

    def __init__(self, path: Path | str, hospital_id: str, dataset: str | None = None) -> None:
        self.path = Path(path)
        self.hospital_id = hospital_id
        self.dataset = dataset

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
            raise LedgerError(f"privacy ledger {self.path} is unreadable: {err}") from err
        if data.get("hospital_id") != self.hospital_id:
            raise LedgerError(
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

    def _counts(self, record: dict[str, Any]) -> bool:
        """Whether a record counts against this ledger's dataset."""
        dataset = record.get("dataset", ANY_DATASET)
        return self.dataset is None or dataset in (ANY_DATASET, self.dataset)

    @staticmethod
    def _entry(run: str, record: dict[str, Any]) -> LedgerEntry:
        fields = {"experiment", "epsilon", "delta", "steps", "updated", "dataset", "kind", "rounds", "last_round",
                  "noise_multiplier", "calibration"}
        return LedgerEntry(run=run, **{k: v for k, v in record.items() if k in fields})

    def entries(self, *, every_dataset: bool = False) -> list[LedgerEntry]:
        """Every run that counts against this dataset (or every run at all), oldest first."""
        with self._locked():
            runs = self._read()["runs"]
        return sorted((self._entry(k, v) for k, v in runs.items() if every_dataset or self._counts(v)),
                      key=lambda e: e.updated)

    def entry(self, run: str) -> LedgerEntry | None:
        """This run's entry, if it has spent anything here."""
        return next((e for e in self.entries(every_dataset=True) if e.run == run), None)

    def spent(self, *, excluding: str | None = None) -> float:
        """Total epsilon spent on this dataset, optionally leaving one run out."""
        return sum(e.epsilon for e in self.entries() if e.run != excluding)

    def charge(self, *, run: str, experiment: str, epsilon: float, delta: float, steps: int, budget: float,
               kind: str = "training", rounds: int = 0, last_round: int = 0,
               calibrated: tuple[float, str] | None = None) -> LedgerEntry:
        """Record that ``run`` has now spent ``epsilon`` in total on this dataset, if the budget allows.

        Called before training: the hospital pays for a round before it trains, so a
        crash in training can only over-count, never under-count. ``calibrated`` (noise
        multiplier, what it was calibrated for) is kept with the entry.

        Raises:
            BudgetExceededError: earlier runs on this dataset plus this run's new total
                exceed the budget; nothing is written.
            LedgerError: the run was recorded against another dataset.
        """
        dataset = self.dataset or ANY_DATASET
        with self._locked():
            data = self._read()
            previous = data["runs"].get(run)
            if previous is not None and previous.get("dataset", ANY_DATASET) != dataset:
                raise LedgerError(f"run {run} was charged on another dataset at {self.hospital_id}")
            others = sum(v["epsilon"] for k, v in data["runs"].items() if k != run and self._counts(v))
            if others + epsilon > budget + 1e-9:
                raise BudgetExceededError(self.hospital_id, others, epsilon, budget)
            record = {"experiment": experiment, "epsilon": epsilon, "delta": delta, "steps": steps,
                      "updated": time.time(), "dataset": dataset, "kind": kind, "rounds": rounds}
            if last_round:
                record["last_round"] = last_round
            if calibrated is not None:
                record["noise_multiplier"], record["calibration"] = calibrated
            data["runs"][run] = record
            data["version"] = 2
            self._write(data)
        heard = CHARGES.get()
        if heard is not None:
            heard.append((run, epsilon - (previous["epsilon"] if previous else 0.0)))
        return self._entry(run, record)
